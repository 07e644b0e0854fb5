//! Starts a local server that throttles at a rate the client does not know, drives it
//! through the rate limiter and the learner, and prints second by second the client's
//! learned rate, the 429s and the goodput as it learns; half-way through the server
//! loosens and the rate recovers.
//!
//! ```sh
//! cargo run --example learning_demo --features simulator          # 20 s
//! cargo run --example learning_demo --features simulator -- 6     # 6 s
//! cargo run --example learning_demo --no-default-features --features simulator   # the layers alone, no runner
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contentdownload::context::{PartitionKey, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
use contentdownload::service::{HttpClient, HttpConfig};
use contentdownload::simulator::{Reply, Simulator, Throttle};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

/// The server's hidden rate, then the rate it loosens to (requests per second).
const HIDDEN_RATE: f64 = 20.0;
const LOOSER_RATE: f64 = 50.0;
/// The client's configured (optimistic) rate.
const CLIENT_RATE: f64 = 100.0;
const WORKERS: usize = 8;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let secs: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("the duration must be a whole number of seconds, got {arg:?}"))?,
        None => 20,
    };
    let secs = secs.max(2);

    let sim = Simulator::start().await?;
    sim.on("/api/*", [Reply::ok().body("ok")]);
    sim.throttle("/api/*", Throttle::new(HIDDEN_RATE, 5));

    let limiter = RateLimiter::new(RateLimitConfig {
        default: Quota::new(CLIENT_RATE, 1),
        ..RateLimitConfig::default()
    })?;
    let learner = Learner::new(limiter.clone(), LearningPolicy::default())?;
    let svc = ServiceBuilder::new()
        .layer(ProviderLearningLayer::new(learner.clone()))
        .layer(RateLimitLayer::new(limiter))
        .service(HttpClient::new(&HttpConfig::default())?);
    let key = PartitionKey::new("sim", sim.addr().to_string());

    let ok = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (svc, ok, throttled, errors) = (svc.clone(), ok.clone(), throttled.clone(), errors.clone());
        let url = sim.url(&format!("/api/{w}"));
        workers.push(tokio::spawn(async move {
            // bounded in time (the deadline) and in count
            for _ in 0..100_000 {
                if Instant::now() >= end {
                    break;
                }
                let Ok(req) = Request::get(&url).extension(Provider::new("sim")).body(Full::default()) else {
                    break;
                };
                match svc.clone().oneshot(req).await {
                    Ok(res) => {
                        let status = res.status();
                        let _ = res.into_body().collect().await;
                        if status == 429 {
                            throttled.fetch_add(1, Ordering::Relaxed);
                        } else {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    println!("server throttles at a hidden {HIDDEN_RATE}/s; client starts at {CLIENT_RATE}/s with {WORKERS} workers");
    println!("  t  learned/s  429s  goodput/s");
    let loosen_at = secs / 2;
    let mut rate_before_loosening = learner.rate(&key);
    let mut lowest = f64::MAX;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for t in 1..=secs {
        ticker.tick().await;
        let rate = learner.rate(&key);
        lowest = lowest.min(rate);
        println!(
            "{t:>3}  {rate:>9.1}  {:>4}  {:>9}",
            throttled.swap(0, Ordering::Relaxed),
            ok.swap(0, Ordering::Relaxed)
        );
        if t == loosen_at {
            rate_before_loosening = rate;
            sim.set_throttle_rate("/api/*", LOOSER_RATE);
            println!("server loosens to {LOOSER_RATE}/s");
        }
    }
    for w in workers {
        w.await?;
    }
    let final_rate = learner.rate(&key);
    println!("learned: lowest rate {lowest:.1}/s (server allowed {HIDDEN_RATE}/s)");
    println!(
        "recovery: {rate_before_loosening:.1}/s before the server loosened, {final_rate:.1}/s at the end ({})",
        if final_rate > rate_before_loosening {
            "recovering"
        } else {
            "not yet"
        }
    );
    println!("transport errors: {}", errors.load(Ordering::Relaxed));
    Ok(())
}
