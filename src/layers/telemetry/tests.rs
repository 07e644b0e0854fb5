//! Unit tests of the service, future and body with tower-test mocks.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use tokio_test::assert_ready_ok;
use tower_test::mock;

use super::attributes::error_type;
use super::layer::TelemetryLayer;
use super::record::MemorySink;
use super::state::Tracker;
use super::writer::RecordWriter;
use crate::context::{AttemptNumber, CooldownWait, RateLimitWait, RetryAfterHint};
use crate::error::{BoxError, Deferred};

fn recording() -> (TelemetryLayer, MemorySink, RecordWriter) {
    let sink = MemorySink::new();
    let writer = RecordWriter::spawn(sink.clone(), 16);
    (TelemetryLayer::attempt().records(writer.clone()), sink, writer)
}

#[test]
fn nothing_listening_means_nothing_tracked() {
    let layer = TelemetryLayer::attempt();
    let config = std::sync::Arc::new(layer.config_for_tests());
    let req = Request::get("https://h.example/x?token=abc").body(()).unwrap();
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        assert!(Tracker::start(&req, &config).is_none());
    });
    let (with_records, _, _) = recording();
    let config = std::sync::Arc::new(with_records.config_for_tests());
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        assert!(Tracker::start(&req, &config).is_some(), "records need tracking");
    });
}

#[tokio::test]
async fn a_canceled_attempt_is_recorded() {
    let (layer, sink, writer) = recording();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::get("http://h.example/slow").body(()).unwrap());
    let (_req, _send) = handle
        .next_request()
        .await
        .expect("the request reached the inner service");
    drop(fut);
    writer.flush().await.unwrap();
    let records = sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason.as_deref(), Some("canceled"));
    assert_eq!((records[0].status, records[0].head_us), (None, None));
}

#[tokio::test]
async fn an_empty_body_is_complete_without_being_read() {
    let (layer, sink, writer) = recording();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let req = Request::head("http://h.example/x")
        .extension(AttemptNumber(3))
        .body(())
        .unwrap();
    let fut = svc.call(req);
    let (_req, send) = handle.next_request().await.unwrap();
    let mut res = Response::new(Full::default());
    res.extensions_mut().insert(RateLimitWait(Duration::from_millis(2)));
    res.extensions_mut().insert(CooldownWait(Duration::from_millis(3)));
    res.extensions_mut().insert(RetryAfterHint {
        delay: Duration::from_secs(4),
    });
    send.send_response(res);
    let res = fut.await.unwrap();
    writer.flush().await.unwrap();
    let records = sink.records();
    assert_eq!(records.len(), 1, "reported while the response is still held");
    let r = &records[0];
    assert_eq!(
        (r.method.as_str(), r.attempt, r.status, r.bytes),
        ("HEAD", 3, Some(200), 0)
    );
    assert_eq!(r.reason, None);
    assert_eq!(
        (r.ratelimit_wait_us, r.cooldown_wait_us, r.retry_after_us),
        (Some(2_000), Some(3_000), Some(4_000_000))
    );
    drop(res);
    writer.flush().await.unwrap();
    assert_eq!(sink.records().len(), 1, "reported once");
}

#[tokio::test]
async fn a_body_error_is_recorded_with_its_class() {
    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, BoxError>>>;
    let (layer, sink, writer) = recording();
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<StreamBody<Frames>>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::get("http://h.example/x").body(()).unwrap());
    let (_req, send) = handle.next_request().await.unwrap();
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"12345"))),
        Err(Box::new(io::Error::from(io::ErrorKind::ConnectionReset))),
    ];
    send.send_response(Response::new(StreamBody::new(futures_util::stream::iter(frames))));
    let err = fut.await.unwrap().into_body().collect().await.unwrap_err();
    assert!(err.downcast_ref::<io::Error>().is_some());
    writer.flush().await.unwrap();
    let records = sink.records();
    assert_eq!(records[0].reason.as_deref(), Some("connection_reset"));
    assert_eq!(records[0].bytes, 5);
    assert!(records[0].ttfb_us.is_some());
}

#[derive(Debug, thiserror::Error)]
#[error("wrapped")]
struct Wrapper(#[source] super::RetryBudgetExhausted);

#[test]
fn error_classes() {
    let deferred: BoxError = Box::new(Deferred {
        operation: crate::context::OperationType::Validate,
        status: None,
        retry_after: None,
        attempts: 1,
        reason: "x".into(),
    });
    assert_eq!(error_type(&deferred), "deferred");
    let wrapped: BoxError = Box::new(Wrapper(super::RetryBudgetExhausted));
    assert_eq!(error_type(&wrapped), "retry_budget_exhausted");
    let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
    assert_eq!(error_type(&elapsed), "timeout");
    let reset: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
    assert_eq!(error_type(&reset), "connection_reset");
    let other: BoxError = "something else".into();
    assert_eq!(error_type(&other), "_OTHER");
}

#[tokio::test]
async fn a_dropped_record_is_counted_on_the_metric() {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let metrics = super::TelemetryMetrics::new(&provider.meter("unit"));
    let writer = RecordWriter::spawn(MemorySink::new(), 4);
    writer.close().await.unwrap();
    let layer = TelemetryLayer::attempt().metrics(metrics).records(writer.clone());
    let (mut svc, mut handle) = mock::spawn_layer::<Request<()>, Response<Full<Bytes>>, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Request::get("http://h.example/x").body(()).unwrap());
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::from_static(b"abc"))));
    fut.await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(writer.dropped(), 1);

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let dropped: u64 = exported
        .last()
        .into_iter()
        .flat_map(|rm| rm.scope_metrics())
        .flat_map(|sm| sm.metrics())
        .filter(|m| m.name() == super::names::RECORDS_DROPPED)
        .map(|m| match m.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum.data_points().map(|p| p.value()).sum::<u64>(),
            other => panic!("unexpected data {other:?}"),
        })
        .sum();
    assert_eq!(dropped, 1);
}
