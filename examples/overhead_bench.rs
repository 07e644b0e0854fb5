//! The overhead benchmark: throughput and per-request latency on loopback of (a) the bare
//! shared `HttpClient`, (b) the full `Stack` with generous limits, (c) a plain reqwest
//! client, (d) reqwest with `reqwest-retry`, against the same simulator route at
//! concurrency 1 and 64, in one run, as ratios to (a); and (e) reqwest with this crate's
//! adapter (`ContentDownloadMiddleware`, sharing (b)'s stack state).
//!
//! Run in release mode: `cargo run --release --example overhead_bench --features simulator,reqwest`.
//! `OVERHEAD_REQUESTS=<n>` sets the requests per measurement at concurrency 64 (default
//! 8000; a quarter of that at concurrency 1). Every count is bounded. `OVERHEAD_ROWS=ab`
//! runs only the rows whose letters are given (for profiling one client at a time).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contentdownload::adapters::reqwest::{install_crypto_provider, ContentDownloadMiddleware};
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig};
use contentdownload::service::{HttpClient, HttpConfig, Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use http_body_util::{BodyExt, Full};
use reqwest_retry::policies::ExponentialBackoff;
use reqwest_retry::RetryTransientMiddleware;
use tower::ServiceExt;

const BODY_LEN: usize = 1024;

struct Row {
    name: &'static str,
    concurrency: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `total` requests with `concurrency` workers; returns (requests/s, sorted latencies).
async fn measure<F, Fut>(concurrency: usize, total: usize, send: F) -> Result<(f64, Vec<Duration>), BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<usize, BoxError>> + Send,
{
    let send = Arc::new(send);
    // warm-up: open the pool's connections
    let mut warm = Vec::new();
    for _ in 0..concurrency {
        let send = send.clone();
        warm.push(tokio::spawn(async move { send().await }));
    }
    for w in warm {
        w.await??;
    }
    let per_worker = total / concurrency;
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let send = send.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                let len = send().await?;
                if len != BODY_LEN {
                    return Err(BoxError::from(format!("short body: {len} bytes")));
                }
                lat.push(t.elapsed());
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut all = Vec::with_capacity(per_worker * concurrency);
    for w in workers {
        all.extend(w.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok((all.len() as f64 / elapsed.as_secs_f64(), all))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    install_crypto_provider();
    let total: usize = std::env::var("OVERHEAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8000)
        .clamp(64, 1_000_000);
    let sim = Simulator::start().await?;
    sim.on("/bench", [Reply::ok().body(vec![b'x'; BODY_LEN])]);
    let url = sim.url("/bench");

    let bare = HttpClient::new(&HttpConfig::default())?;
    let generous = Quota::new(1_000_000.0, 1_000_000);
    let stack = Stack::new(&StackConfig {
        rate_limit: RateLimitConfig {
            default: generous,
            ..RateLimitConfig::default()
        },
        ..StackConfig::default()
    })?;
    let stack_svc = stack.service(OperationType::Download);
    let plain = reqwest::Client::new();
    let retrying = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(3),
        ))
        .build();
    let adapted = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(ContentDownloadMiddleware::from_stack(&stack))
        .build();

    let selected = std::env::var("OVERHEAD_ROWS").unwrap_or_else(|_| "abcde".into());
    let wants = |row: char| selected.contains(row);
    let mut rows = Vec::new();
    for concurrency in [1usize, 64] {
        let n = if concurrency == 1 { total / 4 } else { total };
        if wants('a') {
            let (u, c) = (url.clone(), bare.clone());
            let (rps, lat) = measure(concurrency, n, move || {
                let (u, c) = (u.clone(), c.clone());
                async move {
                    let req = http::Request::get(u.as_str()).body(Full::<Bytes>::default())?;
                    let body = c.oneshot(req).await?.into_body().collect().await?.to_bytes();
                    Ok(body.len())
                }
            })
            .await?;
            rows.push(Row {
                name: "(a) bare HttpClient",
                concurrency,
                rps,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
            });
        }

        if wants('b') {
            let (u, s) = (url.clone(), stack_svc.clone());
            let (rps, lat) = measure(concurrency, n, move || {
                let (u, s) = (u.clone(), s.clone());
                async move {
                    let req = http::Request::get(u.as_str())
                        .extension(Provider::new("bench"))
                        .body(Full::<Bytes>::default())?;
                    let body = s.oneshot(req).await?.into_body().collect().await?.to_bytes();
                    Ok(body.len())
                }
            })
            .await?;
            rows.push(Row {
                name: "(b) full Stack",
                concurrency,
                rps,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
            });
        }

        if wants('c') {
            let (u, c) = (url.clone(), plain.clone());
            let (rps, lat) = measure(concurrency, n, move || {
                let (u, c) = (u.clone(), c.clone());
                async move { Ok(c.get(u.as_str()).send().await?.bytes().await?.len()) }
            })
            .await?;
            rows.push(Row {
                name: "(c) reqwest",
                concurrency,
                rps,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
            });
        }

        if wants('d') {
            let (u, c) = (url.clone(), retrying.clone());
            let (rps, lat) = measure(concurrency, n, move || {
                let (u, c) = (u.clone(), c.clone());
                async move { Ok(c.get(u.as_str()).send().await?.bytes().await?.len()) }
            })
            .await?;
            rows.push(Row {
                name: "(d) reqwest + reqwest-retry",
                concurrency,
                rps,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
            });
        }

        if wants('e') {
            let (u, c) = (url.clone(), adapted.clone());
            let (rps, lat) = measure(concurrency, n, move || {
                let (u, c) = (u.clone(), c.clone());
                async move {
                    let res = c.get(u.as_str()).with_extension(Provider::new("bench")).send().await?;
                    Ok(res.bytes().await?.len())
                }
            })
            .await?;
            rows.push(Row {
                name: "(e) reqwest + this adapter",
                concurrency,
                rps,
                p50: pct(&lat, 0.5),
                p99: pct(&lat, 0.99),
            });
        }
    }

    println!(
        "loopback, {BODY_LEN}-byte bodies, {} requests at concurrency 64 and {} at 1 (after a warm-up)",
        total,
        total / 4
    );
    println!(
        "{:<28} {:>5} {:>10} {:>9} {:>10} {:>10} {:>9}",
        "client", "conc", "req/s", "tput/(a)", "p50 µs", "p99 µs", "p50/(a)"
    );
    for conc in [1usize, 64] {
        let Some(base) = rows.iter().find(|r| r.concurrency == conc) else {
            continue;
        };
        let (base_rps, base_p50) = (base.rps, base.p50.as_secs_f64());
        for r in rows.iter().filter(|r| r.concurrency == conc) {
            println!(
                "{:<28} {:>5} {:>10.0} {:>9.3} {:>10.1} {:>10.1} {:>9.3}",
                r.name,
                r.concurrency,
                r.rps,
                r.rps / base_rps,
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                r.p50.as_secs_f64() / base_p50
            );
        }
    }
    Ok(())
}
