//! Contextual retry (over the Retry-After layer and the shared client) against the
//! loopback simulator, on a paused clock.
#![cfg(feature = "simulator")]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use contentdownload::context::{AttemptNumber, CooldownWait, OperationType, RetryAfterHint};
use contentdownload::error::{BoxError, CoolingDown, Deferred, FailedOver};
use contentdownload::layers::retry::{ContextualRetryLayer, RetryConfig};
use contentdownload::layers::retry_after::RetryAfterLayer;
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<Request<Full<Bytes>>, Response<ResponseBody>, BoxError>;

fn stack_with(retry: ContextualRetryLayer, retry_after: RetryAfterLayer, http: HttpConfig) -> Stack {
    let client = HttpClient::new(&http).expect("client builds");
    BoxCloneService::new(ServiceBuilder::new().layer(retry).layer(retry_after).service(client))
}

fn no_jitter() -> ContextualRetryLayer {
    let mut config = RetryConfig::default();
    for op in OperationType::ALL {
        config.policy_mut(op).jitter = false;
    }
    ContextualRetryLayer::new(config).expect("valid config")
}

fn stack() -> (Stack, RetryAfterLayer) {
    let retry_after = RetryAfterLayer::new();
    (
        stack_with(no_jitter(), retry_after.clone(), HttpConfig::default()),
        retry_after,
    )
}

fn req(method: Method, url: &str, op: OperationType) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .extension(op)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request")
}

async fn send(stack: &Stack, r: Request<Full<Bytes>>) -> Result<Response<ResponseBody>, BoxError> {
    stack.clone().oneshot(r).await
}

#[tokio::test(start_paused = true)]
async fn two_503s_then_200_takes_three_requests() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/flaky",
        [Reply::status(503), Reply::status(503), Reply::ok().body("done")],
    );
    let (stack, _) = stack();
    let started = Instant::now();
    let res = send(&stack, req(Method::GET, &sim.url("/flaky"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = sim.requests_to("/flaky");
    assert_eq!(seen.len(), 3);
    // backoff 200 ms, then 400 ms
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(200));
    assert_eq!(seen[2].at - seen[1].at, Duration::from_millis(400));
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_and_holds_the_whole_provider() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/a", [Reply::status(429).retry_after_secs(2), Reply::ok()]);
    sim.on("/b", [Reply::ok()]);
    let (stack, retry_after) = stack();

    let first = tokio::spawn(
        stack
            .clone()
            .oneshot(req(Method::GET, &sim.url("/a"), OperationType::Download)),
    );
    // wait (without moving the clock) until the 429 has started the cool-down
    let mut spins = 0;
    while retry_after.cooldowns().active().is_empty() {
        spins += 1;
        assert!(spins < 100_000, "the 429 never started a cool-down");
        tokio::task::yield_now().await;
    }
    let cooled_at = Instant::now();
    let second = send(&stack, req(Method::GET, &sim.url("/b"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let waited = second
        .extensions()
        .get::<CooldownWait>()
        .expect("the second request waited")
        .0;
    assert_eq!(waited, Duration::from_secs(2));
    let b = sim.requests_to("/b");
    assert_eq!(b.len(), 1);
    assert!(
        b[0].at >= cooled_at + Duration::from_secs(2),
        "sent during the cool-down"
    );

    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let a = sim.requests_to("/a");
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[1].at - a[0].at,
        Duration::from_secs(2),
        "the hint replaced the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date() {
    let sim = Simulator::start().await.unwrap();
    let at = SystemTime::now() + Duration::from_secs(4);
    sim.on("/date", [Reply::status(503).retry_after_date(at), Reply::ok()]);
    let (stack, _) = stack();
    let res = send(&stack, req(Method::GET, &sim.url("/date"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = sim.requests_to("/date");
    assert_eq!(seen.len(), 2);
    // the date has whole seconds and the wall clock moved on a little: 3 or 4 s
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(3) && gap <= Duration::from_secs(4),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_hour_long_hint_is_capped_and_ends_the_retries() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/busy", [Reply::status(429).retry_after_secs(3600)]);
    let (stack, retry_after) = stack();
    let started = Instant::now();
    // Download: the capped 900 s hint is past its 60 s deadline: the 429 comes back at once
    let res = send(&stack, req(Method::GET, &sim.url("/busy"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        res.extensions().get::<RetryAfterHint>().map(|h| h.delay),
        Some(Duration::from_secs(900))
    );
    assert_eq!(sim.count("/busy"), 1);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

    // the provider is cooling down for 900 s: a Validate to it defers without a request
    let err = send(&stack, req(Method::GET, &sim.url("/other"), OperationType::Validate))
        .await
        .unwrap_err();
    let deferred = err.downcast_ref::<Deferred>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(deferred.attempts, 1);
    assert!(deferred.retry_after >= Some(Duration::from_secs(899)));
    // and a Download gets the CoolingDown error itself, with the instant it ends
    let err = send(&stack, req(Method::GET, &sim.url("/other"), OperationType::Download))
        .await
        .unwrap_err();
    let cooling = err.downcast_ref::<CoolingDown>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(retry_after.cooldowns().active()[0].1, cooling.until);
    assert_eq!(sim.count("/other"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_resolve_that_meets_429_fails_over_after_one_request() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/v2/*", [Reply::status(429)]);
    let (stack, _) = stack();
    let err = send(
        &stack,
        req(Method::GET, &sim.url("/v2/10.1000/x"), OperationType::Resolve),
    )
    .await
    .unwrap_err();
    let failover = err.downcast_ref::<FailedOver>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(failover.operation, OperationType::Resolve);
    assert_eq!(failover.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(failover.attempts, 1);
    assert_eq!(sim.count("/v2/*"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_key_is_sent_once() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/submit", [Reply::status(503)]);
    let (stack, _) = stack();
    let res = send(&stack, req(Method::POST, &sim.url("/submit"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sim.count("/submit"), 1);

    // with a key it is resent, with the same key and body
    sim.on("/keyed", [Reply::status(503), Reply::ok()]);
    let mut keyed = req(Method::POST, &sim.url("/keyed"), OperationType::Download);
    keyed
        .headers_mut()
        .insert("idempotency-key", http::HeaderValue::from_static("\"op-1\""));
    assert_eq!(send(&stack, keyed).await.unwrap().status(), StatusCode::OK);
    let seen = sim.requests_to("/keyed");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("idempotency-key"), Some("\"op-1\""));
        assert_eq!(&s.body[..], b"{}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_timeout_is_retried() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/slow", [Reply::ok().stall(), Reply::ok().body("late")]);
    let http = HttpConfig {
        read_timeout_ms: 1_000,
        ..HttpConfig::default()
    };
    let stack = stack_with(no_jitter(), RetryAfterLayer::new(), http);
    let res = send(&stack, req(Method::GET, &sim.url("/slow"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let seen = sim.requests_to("/slow");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].at - seen[0].at, Duration::from_millis(1_200));
}

#[tokio::test(start_paused = true)]
async fn connect_errors_are_retried_until_attempts_run_out() {
    // a port nobody listens on: connection refused
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (stack, _) = stack();
    let started = Instant::now();
    let err = send(
        &stack,
        req(Method::GET, &format!("http://{addr}/x"), OperationType::Download),
    )
    .await
    .unwrap_err();
    // named (host:port and cause), with hyper-util's error as its source
    let named = err
        .downcast_ref::<contentdownload::service::ConnectFailed>()
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    let client_err = std::error::Error::source(named)
        .and_then(|s| s.downcast_ref::<hyper_util::client::legacy::Error>())
        .unwrap_or_else(|| panic!("unexpected source: {named:?}"));
    assert!(client_err.is_connect(), "{client_err:?}");
    assert_eq!(named.cause, contentdownload::service::ConnectCause::Refused, "{named}");
    // six attempts: backoffs of 200, 400, 800, 1600 and 3200 ms
    assert_eq!(started.elapsed(), Duration::from_millis(6_200));
}

#[tokio::test(start_paused = true)]
async fn every_attempt_carries_its_number() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/n", [Reply::status(500), Reply::status(502), Reply::ok()]);
    // a layer below the retry layer sees the AttemptNumber extension on each resend (the
    // first attempt carries none: absent means 1)
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(no_jitter())
        .map_request(move |r: Request<Full<Bytes>>| {
            record.lock().unwrap().push((
                r.extensions().get::<AttemptNumber>().map(|a| a.0),
                AttemptNumber::of(&r),
            ));
            r
        })
        .service(client);
    let res = svc
        .oneshot(req(Method::GET, &sim.url("/n"), OperationType::Extract))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), [(None, 1), (Some(2), 2), (Some(3), 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_connect_timeout_is_a_timeout() {
    let listener = contentdownload::simulator::UnresponsiveListener::bind().unwrap();
    let url = format!("http://{}/x", listener.addr().unwrap());
    let (stack, _) = stack();
    let started = Instant::now();
    // Validate defers on a timeout: one attempt, ended by the 10 s connect timeout
    let err = send(&stack, req(Method::GET, &url, OperationType::Validate))
        .await
        .unwrap_err();
    let deferred = err.downcast_ref::<Deferred>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(deferred.attempts, 1);
    assert_eq!(deferred.reason, "timed out");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_before_the_response_is_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // a bare loopback server: the first connection is closed after reading the request
    // (hyper reports an incomplete message), the second one is answered
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for n in 0..2 {
            let (mut conn, _) = listener.accept().await?;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await?;
            if n == 1 {
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await?;
            }
            conn.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let (stack, _) = stack();
    let started = Instant::now();
    let res = send(
        &stack,
        req(Method::GET, &format!("http://{addr}/x"), OperationType::Download),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // resent by this layer after its first backoff (not by hyper's pool)
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    server.await.unwrap().unwrap();
}
