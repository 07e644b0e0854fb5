//! The overhead benchmark: throughput and per-request latency on loopback of (a) the bare
//! shared `HttpClient`, (b) the full `Stack` with generous limits, (c) a plain reqwest
//! client, (d) reqwest with `reqwest-retry`, against the same simulator route at
//! concurrency 1 and 64, in one run, as ratios to (a); and (e) reqwest with this crate's
//! adapter (`ContentDownloadMiddleware`, sharing (b)'s stack state).
//!
//! Run in release mode: `cargo run --release --example overhead_bench --features simulator,reqwest`
//! (it needs no runner: `--no-default-features` builds it too).
//! `OVERHEAD_REQUESTS=<n>` sets the requests per measurement at concurrency 64 and any
//! other above 1 (default 8000; a quarter of that at concurrency 1). Every count is
//! bounded. `OVERHEAD_ROWS=ab` runs only the rows whose letters are given (for profiling
//! one client at a time); `OVERHEAD_ROUNDS=<n>` (default 5) sets how many interleaved
//! rounds are measured; `OVERHEAD_CONCURRENCY=1` (a comma-separated list, default `1,64`)
//! the concurrencies.
//!
//! Each ratio is the median of the rounds' ratios; the column beside it gives their lowest
//! and highest. When that range is wider than the gap being judged (on a shared 2-core VM,
//! three runs of rows a and b gave rounds between 0.61 and 1.03), the wall times cannot
//! settle it: count instructions instead (`valgrind --tool=callgrind`, as the `layer_cost`
//! example shows). Instructions are not the whole cost either: each request runs the
//! stack's code once, cold, after hyper, tokio and the kernel have filled the caches. With
//! `--cache-sim=yes --branch-sim=yes` (`OVERHEAD_ROWS=a`, then `b`, each with
//! `OVERHEAD_CONCURRENCY=1 OVERHEAD_ROUNDS=1` at `OVERHEAD_REQUESTS` 8000 and 16000, the
//! difference over 2000 requests), row (b) ran 6.1k instructions per request more than row
//! (a), and with them about 490 more instruction-cache misses, 340 more data-cache misses
//! and 110 more mispredicted branches. On a first-generation EPYC that cost about 7 µs of
//! user CPU per request (GNU `time`, each row alone, 50,000 requests at concurrency 1: the
//! median of eight alternating pairs, which ranged from -2 to 12 µs), where those
//! instructions at the bare client's own pace (44.6k in 31 µs) would take about 4 µs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contentdownload::adapters::reqwest::{install_crypto_provider, ContentDownloadMiddleware};
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig};
use contentdownload::service::{HttpClient, HttpConfig, HttpService, Stack, StackConfig};
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
    tput_ratio: f64,
    /// The lowest and highest of the rounds' throughput ratios: how far one round can be
    /// trusted on this machine.
    tput_range: (f64, f64),
    p50: f64,
    p99: f64,
    p50_ratio: f64,
}

#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The clients compared, each sending `GET url` and reading the whole body.
enum Client {
    Bare(HttpClient),
    Stack(HttpService),
    Reqwest(reqwest::Client),
    Middleware(reqwest_middleware::ClientWithMiddleware),
}

impl Client {
    async fn measure(&self, url: &str, concurrency: usize, n: usize) -> Result<(f64, Vec<Duration>), BoxError> {
        let url: Arc<str> = Arc::from(url);
        match self {
            Client::Bare(c) => {
                let c = c.clone();
                measure(concurrency, n, move || {
                    let (u, c) = (url.clone(), c.clone());
                    async move {
                        let req = http::Request::get(&*u).body(Full::<Bytes>::default())?;
                        Ok(c.oneshot(req).await?.into_body().collect().await?.to_bytes().len())
                    }
                })
                .await
            }
            Client::Stack(s) => {
                let s = s.clone();
                measure(concurrency, n, move || {
                    let (u, s) = (url.clone(), s.clone());
                    async move {
                        let req = http::Request::get(&*u)
                            .extension(Provider::new("bench"))
                            .body(Full::<Bytes>::default())?;
                        Ok(s.oneshot(req).await?.into_body().collect().await?.to_bytes().len())
                    }
                })
                .await
            }
            Client::Reqwest(c) => {
                let c = c.clone();
                measure(concurrency, n, move || {
                    let (u, c) = (url.clone(), c.clone());
                    async move { Ok(c.get(&*u).send().await?.bytes().await?.len()) }
                })
                .await
            }
            Client::Middleware(c) => {
                let c = c.clone();
                measure(concurrency, n, move || {
                    let (u, c) = (url.clone(), c.clone());
                    async move {
                        let res = c.get(&*u).with_extension(Provider::new("bench")).send().await?;
                        Ok(res.bytes().await?.len())
                    }
                })
                .await
            }
        }
    }
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
    // (at least one request each: a concurrency above the request count still measures)
    let per_worker = (total / concurrency).max(1);
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
    let rounds: usize = std::env::var("OVERHEAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .clamp(1, 50);
    let clients: Vec<(char, &'static str, Client)> = [
        ('a', "(a) bare HttpClient", Client::Bare(bare)),
        ('b', "(b) full Stack", Client::Stack(stack_svc)),
        ('c', "(c) reqwest", Client::Reqwest(plain)),
        ('d', "(d) reqwest + reqwest-retry", Client::Middleware(retrying)),
        ('e', "(e) reqwest + this adapter", Client::Middleware(adapted)),
    ]
    .into_iter()
    .filter(|(letter, _, _)| selected.contains(*letter))
    .collect();

    // Rounds interleave the clients, so that a slow spell of a shared machine hits every
    // client alike; ratios are taken within a round, then the median over the rounds.
    let mut rows = Vec::new();
    let concurrencies: Vec<usize> = match std::env::var("OVERHEAD_CONCURRENCY") {
        Err(_) => vec![1, 64],
        Ok(list) => list
            .split(',')
            .map(|c| match c.trim().parse::<usize>() {
                Ok(c) if (1..=1024).contains(&c) => Ok(c),
                _ => Err(format!("OVERHEAD_CONCURRENCY: {c:?} is not a number from 1 to 1024")),
            })
            .collect::<Result<_, _>>()?,
    };
    for concurrency in concurrencies {
        let n = if concurrency == 1 { total / 4 } else { total };
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); clients.len()];
        for _ in 0..rounds {
            for (i, (_, _, client)) in clients.iter().enumerate() {
                let (rps, lat) = client.measure(&url, concurrency, n).await?;
                samples[i].push(Sample {
                    rps,
                    p50: pct(&lat, 0.5),
                    p99: pct(&lat, 0.99),
                });
            }
        }
        for (i, (_, name, _)) in clients.iter().enumerate() {
            let ratio =
                |f: fn(&Sample) -> f64| median((0..rounds).map(|r| f(&samples[i][r]) / f(&samples[0][r])).collect());
            let per_round: Vec<f64> = (0..rounds).map(|r| samples[i][r].rps / samples[0][r].rps).collect();
            rows.push(Row {
                name,
                concurrency,
                rps: median(samples[i].iter().map(|s| s.rps).collect()),
                tput_ratio: ratio(|s| s.rps),
                tput_range: (
                    per_round.iter().copied().fold(f64::INFINITY, f64::min),
                    per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ),
                p50: median(samples[i].iter().map(|s| s.p50.as_secs_f64()).collect()),
                p99: median(samples[i].iter().map(|s| s.p99.as_secs_f64()).collect()),
                p50_ratio: ratio(|s| s.p50.as_secs_f64()),
            });
        }
    }

    println!(
        "loopback, {BODY_LEN}-byte bodies, {} requests at each concurrency above 1 and {} at 1 per client and \
         round (after a warm-up), {rounds} interleaved rounds; medians, ratios to the first client within each \
         round, and the rounds' lowest and highest ratio",
        total,
        total / 4
    );
    println!(
        "{:<28} {:>5} {:>10} {:>9} {:>13} {:>10} {:>10} {:>9}",
        "client", "conc", "req/s", "tput/(a)", "rounds' range", "p50 µs", "p99 µs", "p50/(a)"
    );
    for r in &rows {
        println!(
            "{:<28} {:>5} {:>10.0} {:>9.3} {:>13} {:>10.1} {:>10.1} {:>9.3}",
            r.name,
            r.concurrency,
            r.rps,
            r.tput_ratio,
            format!("{:.3}–{:.3}", r.tput_range.0, r.tput_range.1),
            r.p50 * 1e6,
            r.p99 * 1e6,
            r.p50_ratio
        );
    }
    Ok(())
}
