//! The whole decision table with tower-test mocks and the paused clock.

use std::time::Duration;

use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::context::{AttemptNumber, OperationType, Provider};
use crate::error::{BoxError, Deferred, FailedOver};
use crate::service::ReadTimeout;

type Res = Response<&'static str>;

#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// status with `Retry-After: 1`
    Hinted(u16),
    Timeout,
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Deferred,
    FailedOver,
    Timeout,
    Reset,
}

struct Run {
    outcome: Outcome,
    attempts: Vec<u32>,
    elapsed: Duration,
    error: Option<BoxError>,
}

fn no_jitter(mut config: RetryConfig) -> RetryConfig {
    for op in OperationType::ALL {
        config.policy_mut(op).jitter = false;
    }
    config.standard.jitter = false;
    // the budget has its own test; here it must not hide a policy's own limits
    config.budget.enabled = false;
    config
}

async fn run<B>(layer: &ContextualRetryLayer, req: Request<B>, answer: Answer) -> Run
where
    B: CloneBody + Send + 'static,
{
    let (mock, mut handle) = mock::pair::<Request<B>, Res>();
    let svc = layer.layer(mock);
    let started = Instant::now();
    let task = tokio::spawn(svc.oneshot(req));
    let mut attempts = Vec::new();
    // bounded: no policy here allows more than 10 attempts
    for _ in 0..10 {
        let Some((req, send)) = handle.next_request().await else {
            break;
        };
        attempts.push(AttemptNumber::of(&req));
        match answer {
            Answer::Status(code) => send.send_response(Response::builder().status(code).body("").unwrap()),
            Answer::Hinted(code) => send.send_response(
                Response::builder()
                    .status(code)
                    .header("retry-after", "1")
                    .body("")
                    .unwrap(),
            ),
            Answer::Timeout => send.send_error(ReadTimeout {
                after: Duration::from_secs(60),
            }),
            Answer::Reset => send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")),
        }
    }
    let result = task.await.expect("the retry future does not panic");
    let elapsed = started.elapsed();
    let (outcome, error) = match result {
        Ok(res) => (Outcome::Status(res.status().as_u16()), None),
        Err(e) if e.is::<Deferred>() => (Outcome::Deferred, Some(e)),
        Err(e) if e.is::<FailedOver>() => (Outcome::FailedOver, Some(e)),
        Err(e) if e.is::<ReadTimeout>() => (Outcome::Timeout, Some(e)),
        Err(e) if e.is::<std::io::Error>() => (Outcome::Reset, Some(e)),
        Err(e) => panic!("unexpected error: {e}"),
    };
    Run {
        outcome,
        attempts,
        elapsed,
        error,
    }
}

fn get(op: OperationType, key: bool) -> Request<&'static str> {
    let mut b = Request::get("https://provider.example/x").extension(op);
    if key {
        b = b.header("idempotency-key", "\"k1\"");
    }
    b.body("").unwrap()
}

/// `(answer, key, Outcome, attempts)` for one operation.
type Row = (Answer, bool, Outcome, u32);

fn table(op: OperationType) -> Vec<Row> {
    use Answer as A;
    use Outcome as O;
    let (n, give_up) = match op {
        OperationType::Download => (6, None),
        OperationType::Validate => (3, Some(O::Deferred)),
        OperationType::ManifestFetch => (5, Some(O::Deferred)),
        OperationType::Resolve => (3, Some(O::FailedOver)),
        OperationType::Extract => (4, None),
    };
    let exhausted = |o: O| give_up.unwrap_or(o);
    let (throttle, throttle_n) = match op {
        OperationType::Validate | OperationType::ManifestFetch => (O::Deferred, 1),
        OperationType::Resolve => (O::FailedOver, 1),
        _ => (O::Status(429), n),
    };
    let (timeout, timeout_n) = match op {
        OperationType::Validate | OperationType::ManifestFetch => (O::Deferred, 1),
        _ => (exhausted(O::Timeout), n),
    };
    vec![
        (A::Status(429), false, throttle, throttle_n),
        (A::Hinted(429), false, throttle, throttle_n),
        (A::Status(503), false, exhausted(O::Status(503)), n),
        (A::Status(500), false, exhausted(O::Status(500)), n),
        (A::Status(404), false, O::Status(404), 1),
        (A::Status(409), true, exhausted(O::Status(409)), n),
        (A::Status(409), false, O::Status(409), 1),
        (A::Timeout, false, timeout, timeout_n),
        (A::Reset, false, exhausted(O::Reset), n),
        (A::Status(200), false, O::Status(200), 1),
    ]
}

#[tokio::test(start_paused = true)]
async fn the_whole_decision_table() {
    let layer = ContextualRetryLayer::new(no_jitter(RetryConfig::default())).unwrap();
    for op in OperationType::ALL {
        for (answer, key, expected, n) in table(op) {
            let case = format!("{op} × {answer:?} (key: {key})");
            let run = run(&layer, get(op, key), answer).await;
            assert_eq!(run.outcome, expected, "{case}");
            assert_eq!(run.attempts, (1..=n).collect::<Vec<_>>(), "{case}: attempt numbers");
            // the hint replaces the backoff: n - 1 waits of exactly 1 s
            if matches!(answer, Answer::Hinted(_)) {
                assert_eq!(run.elapsed, Duration::from_secs(u64::from(n - 1)), "{case}");
            }
            if let Some(e) = &run.error {
                if let Some(d) = e.downcast_ref::<Deferred>() {
                    assert_eq!((d.operation, d.attempts), (op, n), "{case}");
                }
                if let Some(f) = e.downcast_ref::<FailedOver>() {
                    assert_eq!((f.operation, f.attempts), (op, n), "{case}");
                }
            }
        }
    }
}

/// A status below 400 listed by a policy is retried like any listed status (a response below
/// 400 skips the lists only when none of them names such a status).
#[tokio::test(start_paused = true)]
async fn a_listed_status_below_400_is_retried() {
    let mut config = no_jitter(RetryConfig::default());
    config.resolve.server_error_statuses.push(203);
    let layer = ContextualRetryLayer::new(config).unwrap();
    let run = run(&layer, get(OperationType::Resolve, false), Answer::Status(203)).await;
    assert_eq!(run.outcome, Outcome::FailedOver);
    assert_eq!(run.attempts, vec![1, 2, 3]);
    // the other operations' policies list none: a 203 is their success
    let run = super::tests::run(&layer, get(OperationType::Download, false), Answer::Status(203)).await;
    assert_eq!(run.outcome, Outcome::Status(203));
    assert_eq!(run.attempts, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_from_200ms() {
    let layer = ContextualRetryLayer::new(no_jitter(RetryConfig::default())).unwrap();
    let run = run(&layer, get(OperationType::Download, false), Answer::Status(503)).await;
    // 200 + 400 + 800 + 1600 + 3200
    assert_eq!(run.elapsed, Duration::from_millis(6200));
    let jittered = ContextualRetryLayer::contextual();
    let run = super::tests::run(&jittered, get(OperationType::Download, false), Answer::Status(503)).await;
    assert!(
        run.elapsed >= Duration::from_millis(3100) && run.elapsed <= Duration::from_millis(6200),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_past_the_deadline_ends_retries_at_once() {
    let layer = ContextualRetryLayer::contextual();
    let hinted = |code: u16, secs: &str| {
        Response::builder()
            .status(code)
            .header("retry-after", secs)
            .body("")
            .unwrap()
    };
    // Download: 60 s deadline, hint 120 s: the 429 comes back after one request, no sleep
    let (mock, mut handle) = mock::pair::<Request<&'static str>, Res>();
    let started = Instant::now();
    let task = tokio::spawn(layer.layer(mock).oneshot(get(OperationType::Download, false)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(hinted(429, "120"));
    let res = task.await.unwrap().unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(handle.next_request().await.is_none());

    // Validate: a 503 with a 900 s hint defers at once, carrying the hint
    let (mock, mut handle) = mock::pair::<Request<&'static str>, Res>();
    let task = tokio::spawn(layer.layer(mock).oneshot(get(OperationType::Validate, false)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(hinted(503, "3600"));
    let err = task.await.unwrap().unwrap_err();
    let deferred = err.downcast_ref::<Deferred>().expect("Deferred");
    assert_eq!(deferred.retry_after, Some(Duration::from_secs(900)));
    assert_eq!(deferred.status, Some(http::StatusCode::SERVICE_UNAVAILABLE));
    assert!(deferred.reason.contains("deadline"), "{}", deferred.reason);
}

#[tokio::test(start_paused = true)]
async fn unsafe_methods_need_a_key() {
    let layer = ContextualRetryLayer::contextual();
    let post = |key: bool| {
        let mut b = Request::builder().method(Method::POST).uri("https://p.example/x");
        if key {
            b = b.extension(crate::context::IdempotencyKey::new("k"));
        }
        b.body("payload").unwrap()
    };
    let once = run(&layer, post(false), Answer::Status(503)).await;
    assert_eq!((once.outcome, once.attempts.len()), (Outcome::Status(503), 1));
    let keyed = run(&layer, post(true), Answer::Status(503)).await;
    assert_eq!((keyed.outcome, keyed.attempts.len()), (Outcome::Status(503), 6));
    // PUT is idempotent: retried without a key
    let put = Request::put("https://p.example/x").body("payload").unwrap();
    assert_eq!(run(&layer, put, Answer::Reset).await.attempts.len(), 6);
    // a Resolve POST without a key that meets a 503 fails over instead of resending
    let mut resolve = post(false);
    resolve.extensions_mut().insert(OperationType::Resolve);
    let r = run(&layer, resolve, Answer::Status(503)).await;
    assert_eq!((r.outcome, r.attempts.len()), (Outcome::FailedOver, 1));
    let reason = r.error.unwrap().downcast::<FailedOver>().unwrap().reason;
    assert!(reason.contains("Idempotency-Key"), "{reason}");
}

/// A streaming body: cannot be replayed.
struct Stream;

impl CloneBody for Stream {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_cloned_is_sent_once() {
    let layer = ContextualRetryLayer::contextual();
    let req = Request::get("https://p.example/x").body(Stream).unwrap();
    let run = run(&layer, req, Answer::Status(503)).await;
    assert_eq!((run.outcome, run.attempts.len()), (Outcome::Status(503), 1));
}

#[tokio::test(start_paused = true)]
async fn standard_policy_ignores_the_operation() {
    let layer = ContextualRetryLayer::standard();
    for op in OperationType::ALL {
        let run = run(&layer, get(op, false), Answer::Status(429)).await;
        assert_eq!((run.outcome, run.attempts.len()), (Outcome::Status(429), 4), "{op}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_per_partition() {
    let mut config = no_jitter(RetryConfig::default());
    config.budget = BudgetConfig {
        enabled: true,
        ttl_secs: 10,
        min_retries_per_sec: 0,
        retry_ratio: 0.2,
    };
    let layer = ContextualRetryLayer::new(config).unwrap();
    let mut total = 0;
    for _ in 0..10 {
        total += run(&layer, get(OperationType::Download, false), Answer::Status(503))
            .await
            .attempts
            .len();
    }
    // 10 first attempts buy 2 retries (20%)
    assert_eq!(total, 12);
    // another provider on the same host has its own budget (none saved up yet)
    let mut other = get(OperationType::Download, false);
    other.extensions_mut().insert(Provider::new("other"));
    assert_eq!(run(&layer, other, Answer::Status(503)).await.attempts.len(), 1);
    assert_eq!(layer.budgets().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn cooling_down_and_rate_limit_errors_are_throttling_with_a_hint() {
    use crate::context::PartitionKey;
    use crate::error::CoolingDown;
    let layer = ContextualRetryLayer::new(no_jitter(RetryConfig::default())).unwrap();
    let (mock, mut handle) = mock::pair::<Request<&'static str>, Res>();
    let started = Instant::now();
    let task = tokio::spawn(layer.layer(mock).oneshot(get(OperationType::Download, false)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(CoolingDown {
        partition: PartitionKey::new("p", "h"),
        until: Instant::now() + Duration::from_secs(3),
    });
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(3), "waited the cool-down");
    assert_eq!(req.extensions().get::<AttemptNumber>(), Some(&AttemptNumber(2)));
    send.send_response(Response::new(""));
    assert_eq!(task.await.unwrap().unwrap().status(), 200);

    // a Resolve that meets a cool-down fails over at once
    let (mock, mut handle) = mock::pair::<Request<&'static str>, Res>();
    let task = tokio::spawn(layer.layer(mock).oneshot(get(OperationType::Resolve, false)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(CoolingDown {
        partition: PartitionKey::new("p", "h"),
        until: Instant::now() + Duration::from_secs(3),
    });
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<FailedOver>().map(|f| f.retry_after),
        Some(Some(Duration::from_secs(3)))
    );
}

mod span_field {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::Instrument;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// Collects every value recorded as `contentdownload.retry.decision`.
    #[derive(Clone, Default)]
    struct Decisions(Arc<Mutex<Vec<String>>>);

    impl Visit for Decisions {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == DECISION_FIELD {
                self.0.lock().unwrap().push(value.to_owned());
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Decisions {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            attrs.record(&mut self.clone());
        }
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            values.record(&mut self.clone());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_are_recorded_on_the_current_span() {
        let decisions = Decisions::default();
        let subscriber = tracing_subscriber::registry().with(decisions.clone());
        let _guard = tracing::subscriber::set_default(subscriber);

        let layer = ContextualRetryLayer::contextual();
        let (mock, mut handle) = mock::pair::<Request<&'static str>, Res>();
        let span = tracing::info_span!("operation", "contentdownload.retry.decision" = tracing::field::Empty);
        let call = layer
            .layer(mock)
            .oneshot(get(OperationType::Validate, false))
            .instrument(span);
        let answer = async {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::builder().status(503).body("").unwrap());
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::builder().status(429).body("").unwrap());
        };
        let (result, ()) = tokio::join!(call, answer);
        assert!(result.unwrap_err().is::<Deferred>());
        assert_eq!(*decisions.0.lock().unwrap(), ["retry", "defer"]);
    }
}
