//! Token acquire on the fast path (the bucket has a token): one key, many keys, and one
//! key contended by 8 tasks; plus the whole `RateLimit` service around a no-op inner.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use contentdownload::context::{PartitionKey, Provider};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
use criterion::{criterion_group, criterion_main, Criterion};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A rate no benchmark can exhaust, so every acquire takes the fast path.
fn unlimited() -> RateLimiter {
    RateLimiter::new(RateLimitConfig {
        default: Quota::new(1e9, 1_000_000),
        ..RateLimitConfig::default()
    })
    .expect("valid config")
}

fn acquire(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/acquire");

    let limiter = unlimited();
    let key = PartitionKey::new("crossref", "api.crossref.org");
    group.bench_function("one_key", |b| {
        b.iter(|| black_box(limiter.reserve(black_box(&key))).expect("fast path"))
    });

    let limiter = unlimited();
    let keys: Vec<PartitionKey> = (0..10_000)
        .map(|i| PartitionKey::new(format!("p{}", i % 7), format!("host{i}.example.org")))
        .collect();
    let mut i = 0;
    group.bench_function("10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.reserve(&keys[i])).expect("fast path")
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let limiter = unlimited();
    group.bench_function("one_key_8_tasks", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(8);
            runtime.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let limiter = limiter.clone();
                        let key = key.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                black_box(limiter.reserve(&key)).expect("fast path");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
                // time per acquire, all tasks together
                start.elapsed().mul_f64(iters as f64 / (per_task * 8) as f64)
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("rate_limit/service");
    let inner = service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) });
    let mut svc = RateLimitLayer::new(unlimited()).layer(inner);
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    group.bench_function("call_fast_path", |b| {
        b.iter(|| {
            current.block_on(async {
                let req = http::Request::get("https://api.crossref.org/works")
                    .extension(Provider::new("crossref"))
                    .body(())
                    .expect("request");
                let svc = svc.ready().await.expect("ready");
                black_box(svc.call(req).await.expect("response"))
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = acquire
}
criterion_main!(benches);
