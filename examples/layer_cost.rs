//! The per-request cost of each layer alone and of the whole `Stack`, around an in-process
//! service that answers at once with a 1 KiB body, on a single-threaded runtime: a harness
//! for instruction counts, which are stable on a shared machine where wall time is not.
//!
//! ```text
//! cargo build --release --example layer_cost
//! for n in 1000 3000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/lc.$n \
//!     target/release/examples/layer_cost retry $n
//! done
//! # (instructions at 3000 − instructions at 1000) / 2000 = instructions per request
//! ```
//!
//! `layer_cost [ROW] [REQUESTS]`: `ROW` is one of `bare`, `operation_telemetry`,
//! `attempt_telemetry`, `idempotency`, `retry`, `redirect` (the stack's redirect step),
//! `retry_after`, `learning`, `rate_limit`,
//! `stack` (the default), or `all` (each in turn); `REQUESTS` (default 1000, at most
//! 1,000,000) bounds the loop. Each row is type-erased the way the stack's service is (a
//! `BoxCloneSyncService` and one boxed body), so that `bare` is the baseline of every other
//! row. It prints the wall time per request, which on a shared machine is only a rough guide.
//!
//! `LAYER_COST_SUBSCRIBER=runner` installs the runner's log subscriber first (`fmt` to
//! standard error with the runner's default filter, which leaves the telemetry layer's spans
//! out, or `RUST_LOG`); by default none listens. With
//! `RUST_LOG=warn,contentdownload=info` the spans are logged: about 68,000 instructions per
//! request for `stack` instead of about 10,000 (release build with LTO; 9,800 with no
//! subscriber).

use std::time::Instant;

use bytes::Bytes;
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::BoxError;
use contentdownload::layers::idempotency::IdempotencyLayer;
use contentdownload::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
use contentdownload::layers::retry::ContextualRetryLayer;
use contentdownload::layers::retry_after::RetryAfterLayer;
use contentdownload::layers::telemetry::TelemetryLayer;
use contentdownload::service::{HttpService, PipelineBody, RedirectLayer, Stack, StackConfig};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};

static BODY: [u8; 1024] = [b'x'; 1024];

fn request() -> Request<Full<Bytes>> {
    Request::get("https://api.unpaywall.org/v2/10.1038/nature12373?email=me@example.org")
        .extension(Provider::new("unpaywall"))
        .body(Full::default())
        .expect("a valid request")
}

#[derive(Clone, Copy)]
struct Inner;

impl tower::Service<Request<Full<Bytes>>> for Inner {
    type Response = Response<PipelineBody>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<PipelineBody>, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        let body = Full::new(Bytes::from_static(&BODY))
            .map_err(|never| match never {})
            .boxed_unsync();
        std::future::ready(Ok(Response::new(body)))
    }
}

fn limiter() -> RateLimiter {
    RateLimiter::new(RateLimitConfig {
        default: Quota::new(1e9, 1_000_000_000),
        ..RateLimitConfig::default()
    })
    .expect("a valid limiter")
}

/// One layer around `Inner`, its body boxed again when the layer changes its type.
fn alone<L>(layer: L) -> HttpService
where
    L: Layer<Inner>,
    L::Service: tower::Service<Request<Full<Bytes>>, Error = BoxError> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Request<Full<Bytes>>>>::Future: Send + 'static,
    <L::Service as tower::Service<Request<Full<Bytes>>>>::Response: IntoPipeline,
{
    HttpService::new(layer.layer(Inner).map_response(IntoPipeline::into_pipeline))
}

trait IntoPipeline {
    fn into_pipeline(self) -> Response<PipelineBody>;
}

impl IntoPipeline for Response<PipelineBody> {
    fn into_pipeline(self) -> Response<PipelineBody> {
        self
    }
}

impl<B> IntoPipeline for Response<contentdownload::layers::telemetry::TelemetryBody<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn into_pipeline(self) -> Response<PipelineBody> {
        self.map(|b| b.map_err(Into::into).boxed_unsync())
    }
}

fn service(row: &str) -> Result<HttpService, BoxError> {
    Ok(match row {
        "bare" => HttpService::new(Inner),
        "operation_telemetry" => alone(TelemetryLayer::operation()),
        "attempt_telemetry" => alone(TelemetryLayer::attempt()),
        "idempotency" => alone(IdempotencyLayer::new()),
        "retry" => alone(ContextualRetryLayer::default()),
        "redirect" => alone(RedirectLayer::new(10)),
        "retry_after" => alone(RetryAfterLayer::new()),
        "learning" => alone(ProviderLearningLayer::new(Learner::new(
            limiter(),
            LearningPolicy::default(),
        )?)),
        "rate_limit" => alone(RateLimitLayer::new(limiter())),
        "stack" => Stack::new(&StackConfig {
            rate_limit: RateLimitConfig {
                default: Quota::new(1e9, 1_000_000_000),
                ..RateLimitConfig::default()
            },
            ..StackConfig::default()
        })?
        .service_with(OperationType::Download, Inner),
        other => return Err(format!("unknown row {other:?}").into()),
    })
}

const ROWS: [&str; 10] = [
    "bare",
    "operation_telemetry",
    "attempt_telemetry",
    "idempotency",
    "retry",
    "redirect",
    "retry_after",
    "learning",
    "rate_limit",
    "stack",
];

fn main() -> std::process::ExitCode {
    if std::env::var("LAYER_COST_SUBSCRIBER").is_ok_and(|v| v == "runner") {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,contentdownload=info,contentdownload::layers::telemetry=warn")
        });
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let row = args.next().unwrap_or_else(|| "stack".into());
    let n = match args.next().map(|v| v.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) => n.clamp(1, 1_000_000),
        Some(Err(e)) => {
            eprintln!("layer_cost: REQUESTS must be a whole number: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rows: Vec<&str> = if row == "all" {
        ROWS.to_vec()
    } else {
        vec![row.as_str()]
    };
    for row in rows {
        if let Err(e) = measure(row, n) {
            eprintln!("layer_cost: {row}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

fn measure(row: &str, n: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let svc = service(row)?;
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            let res = svc.clone().oneshot(request()).await?;
            let len = res.into_body().collect().await?.to_bytes().len();
            if len != BODY.len() {
                return Err(BoxError::from(format!("short body: {len} bytes")));
            }
        }
        Ok::<_, BoxError>(start.elapsed())
    })?;
    println!(
        "{row}: {n} requests, {:.2} µs each (wall time; use callgrind for instructions)",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}
