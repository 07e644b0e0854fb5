//! The reqwest-middleware adapter against the simulator: the same 429 / Retry-After /
//! learning scenarios as the tower stack.
#![cfg(all(feature = "simulator", feature = "reqwest"))]

use std::time::Duration;

use contentdownload::adapters::reqwest::{client_builder, install_crypto_provider, ContentDownloadMiddleware};
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::{Deferred, FailedOver};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig};
use contentdownload::service::{HttpConfig, StackConfig};
use contentdownload::simulator::{Reply, Simulator, Throttle};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::time::Instant;

fn client(config: StackConfig) -> (ClientWithMiddleware, ContentDownloadMiddleware) {
    install_crypto_provider();
    let middleware = ContentDownloadMiddleware::new(&config).unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(middleware.clone())
        .build();
    (client, middleware)
}

async fn get(
    client: &ClientWithMiddleware,
    url: &str,
    op: OperationType,
    provider: &str,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .get(url)
        .with_extension(op)
        .with_extension(Provider::new(provider))
        .send()
        .await
}

#[tokio::test(start_paused = true)]
async fn a_429_then_200_is_retried_and_the_body_streams_through() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/f.pdf", [Reply::status(429), Reply::ok().body("payload")]);
    let (client, _) = client(StackConfig::default());
    let res = get(&client, &sim.url("/f.pdf"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.url().as_str(),
        sim.url("/f.pdf"),
        "the response names the URL it came from"
    );
    assert_eq!(res.content_length(), Some(7), "the body's size comes through the stack");
    assert_eq!(res.text().await.unwrap(), "payload");
    assert_eq!(sim.count("/f.pdf"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_one_line_client_is_polite_and_retries() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/w", [Reply::status(503), Reply::ok().body("done")]);
    let client = contentdownload::adapters::reqwest::client(&StackConfig {
        http: HttpConfig {
            mailto: Some("you@example.org".into()),
            ..HttpConfig::default()
        },
        ..StackConfig::default()
    })
    .unwrap();
    let res = get(&client, &sim.url("/w"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    let seen = sim.requests_to("/w");
    assert_eq!(seen.len(), 2, "the 503 was retried");
    for request in seen {
        let ua = request.headers["user-agent"].to_str().unwrap().to_owned();
        assert!(
            ua.starts_with("contentdownload/") && ua.ends_with("(+mailto:you@example.org)"),
            "{ua}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/f.pdf", [Reply::status(429).retry_after_secs(2), Reply::ok()]);
    let (client, _) = client(StackConfig::default());
    let start = Instant::now();
    let res = get(&client, &sim.url("/f.pdf"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(sim.count("/f.pdf"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_cool_down_is_shared_by_the_next_request_to_the_provider() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/head", [Reply::status(429).retry_after_secs(3)]);
    sim.on("/other", [Reply::ok()]);
    let (client, _) = client(StackConfig::default());
    let start = Instant::now();
    // A Validate 429 is deferred at once (typed), but the provider's cool-down starts.
    let err = get(&client, &sim.url("/head"), OperationType::Validate, "pub")
        .await
        .unwrap_err();
    match &err {
        reqwest_middleware::Error::Middleware(e) => assert!(e.downcast_ref::<Deferred>().is_some(), "{e}"),
        other => panic!("expected a Deferred, got {other}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    let res = get(&client, &sim.url("/other"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(start.elapsed() >= Duration::from_secs(3), "{:?}", start.elapsed());
    assert_eq!(sim.count("/other"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_resolve_429_fails_over_with_a_typed_error_and_is_learned() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/v2/*", [Reply::status(429)]);
    let (client, middleware) = client(StackConfig::default());
    let err = get(&client, &sim.url("/v2/10.1/x"), OperationType::Resolve, "unpaywall")
        .await
        .unwrap_err();
    match &err {
        reqwest_middleware::Error::Middleware(e) => assert!(e.downcast_ref::<FailedOver>().is_some(), "{e}"),
        other => panic!("expected a FailedOver, got {other}"),
    }
    assert_eq!(sim.count("/v2/*"), 1);
    let status = middleware
        .stack()
        .learner()
        .unwrap()
        .status("unpaywall", &sim.addr().to_string())
        .expect("the 429 was observed");
    assert_eq!(status.throttles, 1);
}

#[tokio::test(start_paused = true)]
async fn learning_lowers_the_rate_against_a_throttled_route() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/api/*", [Reply::ok().body("ok")]);
    sim.throttle("/api/*", Throttle::new(10.0, 2));
    let (client, middleware) = client(StackConfig {
        rate_limit: RateLimitConfig {
            default: Quota::new(100.0, 1),
            ..RateLimitConfig::default()
        },
        ..StackConfig::default()
    });
    let until = Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let url = sim.url(&format!("/api/{w}"));
        workers.push(tokio::spawn(async move {
            // bounded: at most 100/s × 10 s in total
            for _ in 0..1000 {
                if Instant::now() >= until {
                    break;
                }
                let _ = get(&client, &url, OperationType::Download, "sim").await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let status = middleware
        .stack()
        .learner()
        .unwrap()
        .status("sim", &sim.addr().to_string())
        .expect("the partition was observed");
    assert!(status.throttles > 0, "{status:?}");
    assert!(
        status.rate < 50.0,
        "the rate stayed near the configured 100/s: {status:?}"
    );
}

/// Counts the requests that reach it: a middleware after ours in the chain.
#[derive(Clone, Default)]
struct Counter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Counter {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        next.run(req, extensions).await
    }
}

#[tokio::test(start_paused = true)]
async fn every_attempt_goes_through_the_rest_of_the_chain() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/f.pdf", [Reply::status(503), Reply::status(503), Reply::ok()]);
    install_crypto_provider();
    let counter = Counter::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ContentDownloadMiddleware::new(&StackConfig::default()).unwrap())
        .with(counter.clone())
        .build();
    let res = get(&client, &sim.url("/f.pdf"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(sim.count("/f.pdf"), 3);
}

/// The one-line client's reqwest leaves redirects to the stack: a 429 from the host a
/// redirect leads to is that host's (its partition throttled and cooled, not the origin's).
#[tokio::test(start_paused = true)]
async fn the_one_line_client_follows_redirects_hop_by_hop() {
    let origin = Simulator::start().await.unwrap();
    let cdn = Simulator::start().await.unwrap();
    origin.on("/doi", [Reply::redirect(302, &cdn.url("/f.pdf"))]);
    cdn.on(
        "/f.pdf",
        [Reply::status(429).retry_after_secs(1), Reply::ok().body("payload")],
    );
    let config = StackConfig::default();
    // what `client(&config)` builds, keeping a handle on the middleware's state
    let middleware = ContentDownloadMiddleware::new(&config).unwrap();
    let client = ClientBuilder::new(client_builder(&config.http).build().unwrap())
        .with(middleware.clone())
        .build();
    let res = get(&client, &origin.url("/doi"), OperationType::Download, "pub")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().as_str(), cdn.url("/f.pdf"));
    assert_eq!(res.text().await.unwrap(), "payload");
    assert_eq!(cdn.count("/f.pdf"), 2, "the CDN's 429 was retried");
    let learner = middleware.stack().learner().unwrap();
    let origin_key = origin.addr().to_string();
    let cdn_key = cdn.addr().to_string();
    let origin_status = learner.status("pub", &origin_key).expect("the origin was asked");
    assert_eq!(
        origin_status.throttles, 0,
        "the CDN's 429 was put on the origin: {origin_status:?}"
    );
    let cdn_status = learner
        .status(&cdn_key, &cdn_key)
        .expect("the CDN hop is its own partition");
    assert_eq!(cdn_status.throttles, 1, "{cdn_status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_redirected_response_names_the_url_it_came_from() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/old", [Reply::redirect(301, "/new")]);
    sim.on("/new", [Reply::ok().body("moved")]);
    install_crypto_provider();
    // reqwest following the redirect itself, and the stack's redirect layer following it
    // (reqwest told not to): either way the caller sees the last reply's URL
    let by_reqwest = reqwest::Client::new();
    let by_stack = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for inner in [by_reqwest, by_stack] {
        let client = ClientBuilder::new(inner)
            .with(ContentDownloadMiddleware::new(&StackConfig::default()).unwrap())
            .build();
        let res = get(&client, &sim.url("/old"), OperationType::Download, "pub")
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.url().as_str(), sim.url("/new"));
        assert_eq!(res.text().await.unwrap(), "moved");
        // and a request that was not redirected names its own
        let res = get(&client, &sim.url("/new"), OperationType::Download, "pub")
            .await
            .unwrap();
        assert_eq!(res.url().as_str(), sim.url("/new"));
    }
    assert_eq!(sim.count("/old"), 2);
}

/// The first attempt is the caller's own `reqwest::Request`, the resends new ones: each
/// carries the method, the body, the caller's headers and reqwest's per-request timeout.
#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_method_body_headers_and_timeout_of_the_request() {
    use contentdownload::context::IdempotencyKey;
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/q",
        [
            // the caller's request: answered too late for its timeout (a timeout, retried)
            Reply::ok().body("first").delay(Duration::from_secs(60)),
            // a resend: too late again (so resends carry the timeout as well)
            Reply::ok().body("second").delay(Duration::from_secs(60)),
            Reply::ok().body("third"),
        ],
    );
    let (client, _) = client(StackConfig::default());
    let res = client
        .post(sim.url("/q"))
        .header("x-caller", "kept")
        .body("query=1")
        .timeout(Duration::from_secs(5))
        .with_extension(OperationType::Resolve)
        .with_extension(Provider::new("p"))
        .with_extension(IdempotencyKey::new("k-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().as_str(), sim.url("/q"));
    assert_eq!(res.text().await.unwrap(), "third", "the slow replies were timed out");
    let seen = sim.requests_to("/q");
    assert_eq!(seen.len(), 3);
    for (i, request) in seen.iter().enumerate() {
        assert_eq!(request.method, http::Method::POST, "attempt {i}");
        assert_eq!(request.body, "query=1", "attempt {i}");
        assert_eq!(request.header("x-caller"), Some("kept"), "attempt {i}");
    }
}
