//! The layers around an arbitrary `tower::Service<http::Request<B>>` — here a
//! `tower::service_fn` that answers 429 (with `Retry-After: 1`) and then 200 — with no
//! network at all: Retry-After is honoured and the retry policy follows the operation type
//! (a `Download` is retried; a `Resolve` that is throttled fails over at once).
//!
//! ```sh
//! cargo run --example any_tower_service --features simulator
//! cargo run --example any_tower_service --no-default-features --features simulator   # the layers alone, no runner
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::{BoxError, FailedOver};
use contentdownload::layers::retry::ContextualRetryLayer;
use contentdownload::layers::retry_after::RetryAfterLayer;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

/// A service that is not an HTTP client at all: the first call to each host gets a 429
/// with `Retry-After: 1`, later calls a 200.
fn flaky_service(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let response = if n == 0 {
            Response::builder()
                .status(429)
                .header("retry-after", "1")
                .body(Full::new(Bytes::from_static(b"slow down")))
        } else {
            Response::builder()
                .status(200)
                .body(Full::new(Bytes::from(format!("hello from {}", req.uri()))))
        };
        async move { Ok::<_, Infallible>(response.unwrap_or_default()) }
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. A download: 429 + Retry-After: 1, then 200. The retry waits for the hint.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(ContextualRetryLayer::contextual())
        .layer(RetryAfterLayer::new())
        .service(flaky_service(calls.clone()));
    let started = Instant::now();
    let req = Request::get("http://files.example.org/paper.pdf")
        .extension(OperationType::Download)
        .extension(Provider::new("files"))
        .body(Full::default())?;
    let response = svc.clone().oneshot(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "download: status {status} after {} calls in {:.1} s (Retry-After honoured): {}",
        calls.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&body)
    );

    // 2. A resolve: the same 429 is not slept on; the caller gets a typed FailedOver and can
    //    try the next resolver.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(ContextualRetryLayer::contextual())
        .layer(RetryAfterLayer::new())
        .service(flaky_service(calls.clone()));
    let req = Request::get("http://api.example.org/works/10.1000/x")
        .extension(OperationType::Resolve)
        .extension(Provider::new("resolver"))
        .body(Full::default())?;
    match svc.oneshot(req).await {
        Err(e) => match e.downcast_ref::<FailedOver>() {
            Some(failed_over) => println!(
                "resolve: failed over after {} call(s): {failed_over}",
                calls.load(Ordering::SeqCst)
            ),
            None => println!("resolve: error {e}"),
        },
        Ok(response) => println!("resolve: status {}", response.status()),
    }
    Ok(())
}
