//! Wraps a user's own `hyper_util::client::legacy::Client` (plain HTTP connector) with the
//! crate's layers in a tower `ServiceBuilder` — telemetry, contextual retry, Retry-After
//! cool-down, provider learning and rate limiting — and calls a local simulator that first
//! throttles (429 + `Retry-After: 1`) and then answers.
//!
//! ```sh
//! cargo run --example wrap_hyper_client --features simulator
//! cargo run --example wrap_hyper_client --no-default-features --features simulator   # the layers alone, no runner
//! ```

use std::time::Instant;

use bytes::Bytes;
use contentdownload::context::{OperationType, PartitionKey, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
use contentdownload::layers::retry::ContextualRetryLayer;
use contentdownload::layers::retry_after::RetryAfterLayer;
use contentdownload::layers::telemetry::TelemetryLayer;
use contentdownload::simulator::{Reply, Simulator};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();

    let sim = Simulator::start().await?;
    sim.on(
        "/works/*",
        [
            Reply::status(429).retry_after_secs(1),
            Reply::json(&serde_json::json!({"title": "A paper"})),
        ],
    );

    // The user's own client: nothing from this crate.
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let limiter = RateLimiter::new(RateLimitConfig {
        default: Quota::new(10.0, 2),
        ..RateLimitConfig::default()
    })?;
    let learner = Learner::new(limiter.clone(), LearningPolicy::default())?;
    let svc = ServiceBuilder::new()
        .layer(TelemetryLayer::operation())
        .layer(ContextualRetryLayer::contextual())
        .layer(TelemetryLayer::attempt())
        .layer(RetryAfterLayer::new())
        .layer(ProviderLearningLayer::new(learner.clone()))
        .layer(RateLimitLayer::new(limiter))
        .service(client);

    for id in 1..=3 {
        let started = Instant::now();
        let req = Request::get(sim.url(&format!("/works/{id}")))
            .extension(OperationType::Download)
            .extension(Provider::new("sim"))
            .body(Full::default())?;
        let response = svc.clone().oneshot(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "work {id}: status {status} in {:.2} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&body)
        );
    }
    let key = PartitionKey::new("sim", sim.addr().to_string());
    println!(
        "server saw {} requests; learned rate for sim: {:.1} req/s",
        sim.count("/works/*"),
        learner.rate(&key)
    );
    Ok(())
}
