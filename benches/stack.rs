//! The whole `Stack`'s own cost per request, with each gate switched off in turn (and the
//! optional global in-flight cap switched on), against
//! an in-process inner service that answers at once with a 1 KiB body (so the layers' cost
//! is not hidden behind network time). `bare` is the inner service alone.
//!
//! `cargo bench --bench stack`

use std::hint::black_box;

use bytes::Bytes;
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig};
use contentdownload::service::{HttpService, PipelineBody, Stack, StackConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

static BODY: [u8; 1024] = [b'x'; 1024];

fn request() -> Request<Full<Bytes>> {
    Request::get("https://api.unpaywall.org/v2/10.1038/nature12373?email=me@example.org")
        .extension(Provider::new("unpaywall"))
        .body(Full::default())
        .expect("valid request")
}

fn inner() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<PipelineBody>,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let body: PipelineBody = Full::new(Bytes::from_static(&BODY))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok::<_, BoxError>(Response::new(body))
    })
}

fn stack(tweak: impl FnOnce(&mut StackConfig)) -> HttpService {
    let mut config = StackConfig {
        rate_limit: RateLimitConfig {
            default: Quota::new(1e9, 1_000_000_000),
            ..RateLimitConfig::default()
        },
        ..StackConfig::default()
    };
    tweak(&mut config);
    Stack::new(&config)
        .expect("a valid stack")
        .service_with(OperationType::Download, inner())
}

async fn one(svc: HttpService) -> usize {
    let res = svc.oneshot(request()).await.expect("the stack answers");
    res.into_body()
        .collect()
        .await
        .expect("the body reads")
        .to_bytes()
        .len()
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("stack");
    let bare = inner();
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let res = bare.clone().oneshot(request()).await.expect("answers");
            black_box(res.into_body().collect().await.expect("reads").to_bytes().len())
        })
    });
    let variants: [(&str, HttpService); 5] = [
        ("full", stack(|_| {})),
        ("no_idempotency", stack(|c| c.idempotency = false)),
        ("no_learning", stack(|c| c.provider_learning = false)),
        ("standard_retry", stack(|c| c.contextual_retry = false)),
        ("global_cap_1024", stack(|c| c.rate_limit.max_in_flight = Some(1024))),
    ];
    for (name, svc) in variants {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async { black_box(one(svc.clone()).await) })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
