//! The retry layer's overhead on a request that succeeds the first time, against a mock
//! inner service that answers at once: what every successful request pays for the
//! policy lookup, the request copy kept for a retry, the budget deposit and the
//! classification. The Retry-After layer is measured the same way.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;

use bytes::Bytes;
use contentdownload::context::{OperationType, Provider};
use contentdownload::layers::retry::{ContextualRetryLayer, RetryConfig};
use contentdownload::layers::retry_after::RetryAfterLayer;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

type Req = Request<Full<Bytes>>;

/// The mock inner service: a ready 200 with an empty body.
#[derive(Clone, Copy)]
struct Ok200;

impl Service<Req> for Ok200 {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        black_box(&req);
        ready(Ok(Response::new(())))
    }
}

fn request() -> Req {
    Request::get("https://api.crossref.org/works/10.1000/xyz?mailto=me@example.org")
        .header("accept", "application/json")
        .header("user-agent", "contentdownload-bench")
        .extension(OperationType::Resolve)
        .extension(Provider::new("crossref"))
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("first_time_success");

    group.bench_function("bare mock", |b| {
        b.to_async(&rt)
            .iter(|| async { Ok200.oneshot(black_box(request())).await.map(|r| r.status()) })
    });

    let contextual = ContextualRetryLayer::contextual().layer(Ok200);
    group.bench_function("contextual retry (budget on)", |b| {
        b.to_async(&rt).iter(|| async {
            contextual
                .clone()
                .oneshot(black_box(request()))
                .await
                .map(|r| r.status())
        })
    });

    let mut config = RetryConfig::default();
    config.budget.enabled = false;
    let no_budget = ContextualRetryLayer::new(config).expect("valid").layer(Ok200);
    group.bench_function("contextual retry (budget off)", |b| {
        b.to_async(&rt).iter(|| async {
            no_budget
                .clone()
                .oneshot(black_box(request()))
                .await
                .map(|r| r.status())
        })
    });

    let retry_after = RetryAfterLayer::new().layer(Ok200);
    group.bench_function("retry-after", |b| {
        b.to_async(&rt).iter(|| async {
            retry_after
                .clone()
                .oneshot(black_box(request()))
                .await
                .map(|r| r.status())
        })
    });

    let both = ContextualRetryLayer::contextual().layer(RetryAfterLayer::new().layer(Ok200));
    group.bench_function("contextual retry + retry-after", |b| {
        b.to_async(&rt)
            .iter(|| async { both.clone().oneshot(black_box(request())).await.map(|r| r.status()) })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
