#![cfg(all(feature = "simulator", feature = "ledger"))]
//! The idempotency layer against the loopback simulator: keys, headers, retries, and the
//! ledger gate (SQLite, and PostgreSQL when available).

mod ledger_support;

use std::future::Ready;
use std::time::Duration;

use bytes::Bytes;
use contentdownload::context::{IdempotencyKey, OperationType, RequestContextExt, WorkId};
use contentdownload::error::BoxError;
use contentdownload::layers::idempotency::{
    canonical_url, derive_key, AlreadyFinalized, ClaimStore, IdempotencyLayer, LeasedElsewhere, LedgerJob,
};
use contentdownload::ledger::{Claim, JobResult, JobState, Ledger, LedgerConfig, NewJob};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::retry::{Policy, RetryLayer};
use tower::{Service, ServiceBuilder, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A stand-in for the retry layer: resend on 5xx, at most `left` more times, at once.
#[derive(Clone)]
struct RetryOn5xx {
    left: u32,
}

impl Policy<Req, Response<ResponseBody>, BoxError> for RetryOn5xx {
    type Future = Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Response<ResponseBody>, BoxError>) -> Option<Ready<()>> {
        let again = matches!(result, Ok(res) if res.status().is_server_error()) && self.left > 0;
        again.then(|| {
            self.left -= 1;
            std::future::ready(())
        })
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut b = Request::builder().method(req.method().clone()).uri(req.uri().clone());
        *b.headers_mut()? = req.headers().clone();
        let mut copy = b.body(req.body().clone()).ok()?;
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

fn client() -> HttpClient {
    HttpClient::new(&HttpConfig::default()).expect("client builds")
}

/// idempotency → retry → client, the order of the real stack.
fn stack(
    layer: IdempotencyLayer,
) -> impl Service<Req, Response = Response<ResponseBody>, Error = BoxError, Future: Send> + Clone {
    ServiceBuilder::new()
        .layer(layer)
        .layer(RetryLayer::new(RetryOn5xx { left: 3 }))
        .service(client())
}

fn request(method: &str, url: &str, work: &str) -> Req {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::default())
        .unwrap();
    req.set_work_id(WorkId::new(work));
    req
}

async fn sqlite_ledger() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await.unwrap();
    (ledger, dir)
}

#[tokio::test]
async fn post_carries_the_header_and_retries_reuse_the_key() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/orders",
        [Reply::status(503), Reply::status(502), Reply::ok().body("done")],
    );
    sim.on("/paper.pdf", [Reply::ok()]);
    let svc = stack(IdempotencyLayer::new());

    let res = svc
        .clone()
        .oneshot(request("POST", &sim.url("/orders"), "W1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = sim.requests_to("/orders");
    assert_eq!(seen.len(), 3, "two retries");
    let url = canonical_url(&sim.uri("/orders"));
    let key = derive_key(OperationType::Download, Some(&WorkId::new("W1")), &url);
    for r in &seen {
        assert_eq!(
            r.header("idempotency-key"),
            Some(format!("\"{}\"", key.as_str()).as_str())
        );
    }

    // a GET is keyed too, but carries no header
    svc.clone()
        .oneshot(request("GET", &sim.url("/paper.pdf"), "W1"))
        .await
        .unwrap();
    assert_eq!(sim.requests_to("/paper.pdf")[0].header("idempotency-key"), None);
}

#[tokio::test]
async fn with_a_ledger_retries_are_one_job_finalized_once() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/orders", [Reply::status(503), Reply::ok().body("done")]);
    let (ledger, _dir) = sqlite_ledger().await;
    let svc = stack(IdempotencyLayer::with_ledger(ledger.clone(), "run", "worker-1"));

    let res = svc
        .clone()
        .oneshot(request("POST", &sim.url("/orders"), "W1"))
        .await
        .unwrap();
    let seen = sim.requests_to("/orders");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("idempotency-key"), seen[1].header("idempotency-key"));
    let ticket = res
        .extensions()
        .get::<LedgerJob>()
        .cloned()
        .expect("the response names its job");
    assert_eq!(ticket.state, JobState::Finalized);
    let job = ledger.get(ticket.job).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts),
        (JobState::Finalized, 1),
        "one logical operation, one lease"
    );
    assert_eq!(job.result.outcome.as_deref(), Some("http_200"));
    assert_eq!(
        seen[0].header("idempotency-key"),
        Some(format!("\"{}\"", job.key.as_str()).as_str())
    );
    assert_eq!(ledger.counts(Some("run")).await.unwrap().total(), 1);
}

#[tokio::test]
async fn a_finalized_key_makes_no_request() {
    for t in ledger_support::backends("a_finalized_key_makes_no_request").await {
        let sim = Simulator::start().await.unwrap();
        sim.on("/a.pdf", [Reply::ok().body("%PDF-1.7 ...")]);
        let first = stack(IdempotencyLayer::with_ledger(t.ledger.clone(), "run", "worker-1"));
        first.oneshot(request("GET", &sim.url("/a.pdf"), "W7")).await.unwrap();
        assert_eq!(sim.count("/a.pdf"), 1);

        // another worker (a restarted run) asks for the same operation
        let second = stack(IdempotencyLayer::with_ledger(t.ledger.clone(), "run-2", "worker-2"));
        let err = second
            .oneshot(request("GET", &sim.url("/a.pdf"), "W7"))
            .await
            .unwrap_err();
        let done = err
            .downcast_ref::<AlreadyFinalized>()
            .unwrap_or_else(|| panic!("{}: {err}", t.name));
        assert_eq!(done.state(), JobState::Finalized);
        assert_eq!(done.result().outcome.as_deref(), Some("http_200"));
        assert_eq!(sim.count("/a.pdf"), 1, "{}: no request for a finalized key", t.name);
    }
}

#[tokio::test]
async fn a_key_leased_by_a_live_worker_is_not_run() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/a.pdf", [Reply::ok()]);
    let (ledger, _dir) = sqlite_ledger().await;
    let url = canonical_url(&sim.uri("/a.pdf"));
    let key = derive_key(OperationType::Download, Some(&WorkId::new("W1")), &url);
    let other = NewJob {
        run_id: "run".into(),
        work_id: WorkId::new("W1"),
        key: key.clone(),
        canonical_url: url,
    };
    assert!(matches!(
        ledger.claim(&other, "other", Duration::from_secs(60)).await.unwrap(),
        Claim::Leased(_)
    ));

    let svc = stack(IdempotencyLayer::with_ledger(ledger.clone(), "run", "me"));
    let err = svc
        .clone()
        .oneshot(request("GET", &sim.url("/a.pdf"), "W1"))
        .await
        .unwrap_err();
    let busy = err.downcast_ref::<LeasedElsewhere>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!((busy.key.clone(), busy.owner.as_deref()), (key, Some("other")));
    assert_eq!(sim.count("/a.pdf"), 0);

    // once that worker's lease has expired (it died), the key runs here
    ledger.clock().advance(Duration::from_secs(61));
    svc.oneshot(request("GET", &sim.url("/a.pdf"), "W1")).await.unwrap();
    assert_eq!(sim.count("/a.pdf"), 1);
}

#[tokio::test]
async fn failures_are_recorded_and_run_again() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/gone", [Reply::status(404), Reply::ok()]);
    sim.on("/busy", [Reply::status(429).retry_after_secs(5)]);
    let (ledger, _dir) = sqlite_ledger().await;
    let svc = stack(IdempotencyLayer::with_ledger(ledger.clone(), "run", "w"));

    let res = svc
        .clone()
        .oneshot(request("GET", &sim.url("/gone"), "W1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let failed = ledger
        .get(res.extensions().get::<LedgerJob>().unwrap().job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.result.reason.as_deref(), Some("HTTP 404 Not Found"));

    let res = svc
        .clone()
        .oneshot(request("GET", &sim.url("/busy"), "W2"))
        .await
        .unwrap();
    let job = res.extensions().get::<LedgerJob>().unwrap().clone();
    assert_eq!(job.state, JobState::Deferred);
    assert_eq!(ledger.get(job.job).await.unwrap().unwrap().state, JobState::Deferred);

    // a transport error is recorded too, and reaches the caller unchanged
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/x", closed.local_addr().unwrap());
    drop(closed);
    let err = svc.clone().oneshot(request("GET", &dead_url, "W3")).await.unwrap_err();
    assert!(err.downcast_ref::<AlreadyFinalized>().is_none());
    let key = derive_key(OperationType::Download, Some(&WorkId::new("W3")), &dead_url);
    let job = ledger.get_by_key(&key).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.result.outcome.as_deref()),
        (JobState::Failed, Some("error"))
    );

    // asking again for a failed operation runs it again
    let res = svc.oneshot(request("GET", &sim.url("/gone"), "W1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let done = ledger.get(failed.id).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Finalized, 2));
}

#[tokio::test]
async fn finishing_can_be_left_to_the_caller() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/a.pdf", [Reply::ok().stream(4096)]);
    let (ledger, _dir) = sqlite_ledger().await;
    let layer = IdempotencyLayer::with_ledger(ledger.clone(), "run", "w").finalize_on_response(false);
    let mut req = request("GET", &sim.url("/a.pdf"), "W1");
    req.set_idempotency_key(IdempotencyKey::new("caller-key"));
    let res = stack(layer).oneshot(req).await.unwrap();
    let ticket = res.extensions().get::<LedgerJob>().unwrap().clone();
    assert_eq!(
        (ticket.state, ticket.key.as_str(), &*ticket.owner),
        (JobState::Leased, "caller-key", "w")
    );
    assert_eq!(ledger.get(ticket.job).await.unwrap().unwrap().state, JobState::Leased);
    // the caller stores the body, then finalizes
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let result = JobResult {
        bytes: Some(body.len() as i64),
        ..JobResult::outcome("pdf")
    };
    ledger
        .finish(ticket.job, &ticket.owner, JobState::Finalized, &result)
        .await
        .unwrap();
    assert_eq!(ledger.get(ticket.job).await.unwrap().unwrap().result.bytes, Some(4096));
}

/// The caller who took over finishing gives a job back through the ledger's `ClaimStore`
/// side (`release`), and the next request for the same key runs again; `complete` then
/// settles it, and a third request is not sent.
#[tokio::test]
async fn a_released_job_runs_again_and_a_completed_one_does_not() {
    for t in ledger_support::backends("a_released_job_runs_again_and_a_completed_one_does_not").await {
        let sim = Simulator::start().await.unwrap();
        sim.on(
            "/a.pdf",
            [Reply::ok().body("%PDF-1.7 first"), Reply::ok().body("%PDF-1.7 second")],
        );
        let layer = IdempotencyLayer::with_ledger(t.ledger.clone(), "run", "w").finalize_on_response(false);
        let svc = stack(layer);

        let res = svc
            .clone()
            .oneshot(request("GET", &sim.url("/a.pdf"), "W1"))
            .await
            .unwrap();
        let first = res.extensions().get::<LedgerJob>().unwrap().clone();
        ClaimStore::release(&t.ledger, first.job, first.owner.clone())
            .await
            .unwrap();
        assert_eq!(
            t.ledger.get(first.job).await.unwrap().unwrap().state,
            JobState::Planned,
            "{}",
            t.name
        );

        let res = svc
            .clone()
            .oneshot(request("GET", &sim.url("/a.pdf"), "W1"))
            .await
            .unwrap();
        let again = res.extensions().get::<LedgerJob>().unwrap().clone();
        assert_eq!((again.job, again.state), (first.job, JobState::Leased), "{}", t.name);
        ClaimStore::complete(
            &t.ledger,
            again.job,
            again.owner,
            JobState::Finalized,
            JobResult::outcome("pdf"),
        )
        .await
        .unwrap();
        // releasing what is no longer held is the ledger's error, boxed
        let err = ClaimStore::release(&t.ledger, first.job, first.owner)
            .await
            .unwrap_err();
        assert!(err.is::<contentdownload::ledger::LedgerError>(), "{}: {err}", t.name);

        let err = svc.oneshot(request("GET", &sim.url("/a.pdf"), "W1")).await.unwrap_err();
        let done = err
            .downcast_ref::<AlreadyFinalized>()
            .unwrap_or_else(|| panic!("{}: {err}", t.name));
        assert_eq!(done.result.outcome.as_deref(), Some("pdf"));
        assert_eq!(sim.count("/a.pdf"), 2, "{}: sent twice, not three times", t.name);
    }
}

mod with_the_contextual_retry_layer {
    use super::*;
    use contentdownload::error::Deferred;
    use contentdownload::layers::retry::{ContextualRetryLayer, RetryConfig};

    /// The real stack order: idempotency → contextual retry → client; backoff of `base_ms`.
    fn stack(
        layer: IdempotencyLayer,
        base_ms: u64,
    ) -> impl Service<Req, Response = Response<ResponseBody>, Error = BoxError, Future: Send> + Clone {
        let mut config = RetryConfig::default();
        for op in OperationType::ALL {
            let p = config.policy_mut(op);
            p.jitter = false;
            p.backoff_base_ms = base_ms;
            p.backoff_cap_ms = base_ms * 4;
        }
        ServiceBuilder::new()
            .layer(layer)
            .layer(ContextualRetryLayer::new(config).expect("valid retry config"))
            .service(client())
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_resent_with_the_same_key() {
        let sim = Simulator::start().await.unwrap();
        sim.on("/orders", [Reply::status(503), Reply::status(503), Reply::ok()]);
        let res = stack(IdempotencyLayer::new(), 200)
            .oneshot(request("POST", &sim.url("/orders"), "W1"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let seen = sim.requests_to("/orders");
        // the retry layer resends a POST only because it carries the key
        assert_eq!(seen.len(), 3);
        let key = seen[0].header("idempotency-key").expect("the header is set");
        assert!(key.starts_with('"') && key.ends_with('"') && key.len() == 66, "{key}");
        assert!(seen.iter().all(|r| r.header("idempotency-key") == Some(key)));
    }

    #[tokio::test]
    async fn with_a_ledger_retries_are_one_job_and_a_deferral_is_recorded() {
        let sim = Simulator::start().await.unwrap();
        sim.on("/a.pdf", [Reply::status(503), Reply::status(502), Reply::ok()]);
        sim.on("/check", [Reply::status(429)]);
        let (ledger, _dir) = sqlite_ledger().await;
        // a 1 ms backoff: the test does not wait on it, the retry layer does
        let svc = stack(IdempotencyLayer::with_ledger(ledger.clone(), "run", "w"), 1);

        let res = svc
            .clone()
            .oneshot(request("GET", &sim.url("/a.pdf"), "W1"))
            .await
            .unwrap();
        assert_eq!(sim.count("/a.pdf"), 3);
        let job = ledger
            .get(res.extensions().get::<LedgerJob>().unwrap().job)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Finalized, 1));

        let mut validate = request("HEAD", &sim.url("/check"), "W2");
        validate.set_operation(OperationType::Validate);
        let err = svc.oneshot(validate).await.unwrap_err();
        assert!(err.downcast_ref::<Deferred>().is_some(), "{err}");
        let key = derive_key(
            OperationType::Validate,
            Some(&WorkId::new("W2")),
            &canonical_url(&sim.uri("/check")),
        );
        let job = ledger.get_by_key(&key).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.result.outcome.as_deref()),
            (JobState::Deferred, Some("deferred"))
        );
    }
}
