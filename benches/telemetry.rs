//! The telemetry layer's overhead per request, against an in-process service that answers at
//! once with a 1 KiB body (so the layer's own cost is not hidden behind network time):
//! bare service; the layer with no subscriber (nothing listening); with an OpenTelemetry
//! subscriber (spans built and exported to a no-op exporter); and with spans, metrics and
//! attempt records all on.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use contentdownload::context::{AttemptNumber, OperationType, Provider, WorkId};
use contentdownload::layers::telemetry::{otel, JsonlSink, RecordWriter, TelemetryLayer, TelemetryMetrics};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::testing::trace::NoopSpanExporter;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{Layer, Service, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

static BODY: [u8; 1024] = [b'x'; 1024];

fn request() -> Request<()> {
    Request::get("https://api.unpaywall.org/v2/10.1038/nature12373?email=me@example.org")
        .extension(OperationType::Resolve)
        .extension(Provider::new("unpaywall"))
        .extension(WorkId::new("W2741809807"))
        .extension(AttemptNumber(2))
        .body(())
        .expect("valid request")
}

fn inner() -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(|_req: Request<()>| async { Ok(Response::new(Full::new(Bytes::from_static(&BODY)))) })
}

async fn one<S, B>(svc: S) -> usize
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.oneshot(request()).await.expect("the service answers");
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
    let svc = inner();
    let attempt = TelemetryLayer::attempt().layer(inner());
    let both = TelemetryLayer::operation().layer(TelemetryLayer::attempt().layer(inner()));

    let mut group = c.benchmark_group("telemetry");
    group.bench_function("bare service", |b| b.to_async(&rt).iter(|| one(black_box(svc.clone()))));
    group.bench_function("attempt layer, no subscriber", |b| {
        b.to_async(&rt).iter(|| one(black_box(attempt.clone())))
    });
    group.bench_function("operation + attempt layers, no subscriber", |b| {
        b.to_async(&rt).iter(|| one(black_box(both.clone())))
    });

    // An active subscriber: tracing-opentelemetry over the SDK, exporting to a no-op exporter.
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(NoopSpanExporter::new())
        .build();
    let subscriber = tracing_subscriber::registry().with(otel::tracing_layer(tracer_provider.tracer("bench")));
    let guard = tracing::subscriber::set_default(subscriber);
    group.bench_function("attempt layer, otel subscriber", |b| {
        b.to_async(&rt).iter(|| one(black_box(attempt.clone())))
    });
    group.bench_function("operation + attempt layers, otel subscriber", |b| {
        b.to_async(&rt).iter(|| one(black_box(both.clone())))
    });

    // Everything on: spans, metrics to an SDK meter, records serialised on the writer thread.
    let reader = PeriodicReader::builder(InMemoryMetricExporter::default())
        .with_interval(std::time::Duration::from_secs(3600))
        .build();
    let meter_provider = SdkMeterProvider::builder().with_reader(reader).build();
    let metrics = TelemetryMetrics::new(&meter_provider.meter("bench"));
    let writer = RecordWriter::spawn(JsonlSink::new(std::io::sink()), 65_536);
    let full = TelemetryLayer::attempt()
        .metrics(metrics)
        .records(writer.clone())
        .layer(inner());
    group.bench_function("attempt layer, otel subscriber + metrics + records", |b| {
        b.to_async(&rt).iter(|| one(black_box(full.clone())))
    });
    group.finish();
    drop(guard);
    if writer.dropped() > 0 {
        eprintln!(
            "note: {} records were dropped on a full buffer during the bench",
            writer.dropped()
        );
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
