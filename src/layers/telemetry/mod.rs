//! Telemetry emission: OpenTelemetry-aligned `tracing` spans, metrics and attempt records
//! for every request, measured as the response body streams.
//!
//! [`TelemetryLayer`] goes in the stack twice: [`TelemetryLayer::operation`] outside the
//! retry layer (one span per logical operation) and [`TelemetryLayer::attempt`] inside it
//! (one client span per HTTP attempt).
//!
//! # Spans
//!
//! Attributes follow the OpenTelemetry HTTP client semantic conventions:
//! `http.request.method`, `url.full` (query values of `email`, `mailto`, `api_key`, `key`,
//! `token`, `access_token`, `sig`, `X-Amz-*` and the other [`DEFAULT_SENSITIVE_PARAMS`]
//! replaced by `REDACTED`, also in URLs nested in query values, userinfo dropped; see
//! [`Redactor`]), `server.address`,
//! `server.port`, `http.response.status_code`, `error.type` (the status code for a 4xx/5xx,
//! else an error class such as `connect_error`, `read_timeout`, `deferred`),
//! `http.request.resend_count` (on resent attempts: [`AttemptNumber`](crate::context::AttemptNumber)
//! − 1) and `http.response.body.size`; plus `contentdownload.operation`,
//! `contentdownload.provider`, `contentdownload.work_id`, and
//! `contentdownload.ratelimit.wait_ms` (from [`RateLimitWait`](crate::context::RateLimitWait)).
//!
//! Fields other layers fill in with `tracing::Span::current().record(..)`:
//! `contentdownload.retry.decision` on the operation span (the retry layer: `retry`,
//! `defer`, `failover`, `fail`, `done`) and `contentdownload.learning.rate` on the attempt
//! span (the learning layer).
//!
//! With [`otel::tracing_layer`], operation spans are exported under the operation's name
//! (`resolve`) and attempt spans as client spans under the method's name (`GET`).
//!
//! # Metrics, records
//!
//! [`TelemetryMetrics`] (see [`names`] for the instruments) and [`RecordWriter`] with a
//! [`RecordSink`] ([`JsonlSink`], [`CsvSink`], [`MemorySink`]) are opt-in. The attempt
//! placement records `http.client.request.duration` (with `http.request.method`,
//! `server.address`, `server.port`, `url.scheme`, `http.response.status_code`, `error.type`)
//! and counts attempts, retries (attempt number > 1), 429s and cool-down waits (a
//! [`CooldownWait`](crate::context::CooldownWait) on the response, or a
//! [`CoolingDown`](crate::error::CoolingDown) error); the operation placement counts
//! [`Deferred`](crate::error::Deferred) and [`FailedOver`](crate::error::FailedOver) errors
//! and [`RetryBudgetExhausted`] markers. Counters carry `contentdownload.operation` and
//! `contentdownload.provider`. The learned-rate gauge reads whatever sources were given to
//! [`TelemetryMetrics::register_rate_source`].
//!
//! # Timing
//!
//! The span, the duration metric and the record cover the request until its response body
//! ended or was dropped: the body is wrapped in [`TelemetryBody`], which counts bytes and
//! the time to the first byte as frames pass, without buffering.
//!
//! # Cost
//!
//! With no subscriber enabled for the spans, no metrics and no records, a request costs a
//! callsite check and a body wrapper: no clock read, no allocation (the redacted URL is only
//! formatted when a span or a record needs it).
//!
//! # Example
//!
//! ```
//! use contentdownload::context::{AttemptNumber, OperationType};
//! use contentdownload::layers::telemetry::{MemorySink, RecordWriter, TelemetryLayer};
//! use http_body_util::BodyExt;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! let sink = MemorySink::new();
//! let writer = RecordWriter::spawn(sink.clone(), 1024);
//! let svc = ServiceBuilder::new()
//!     .layer(TelemetryLayer::attempt().records(writer.clone()))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("hello"))))
//!     });
//! let req = http::Request::get("https://api.example.org/x?api_key=secret")
//!     .extension(OperationType::Resolve)
//!     .extension(AttemptNumber(2))
//!     .body(())?;
//! let body = svc.oneshot(req).await?.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"hello");
//! writer.flush().await?;
//! let records = sink.records();
//! assert_eq!(records[0].url, "https://api.example.org/x?api_key=REDACTED");
//! assert_eq!((records[0].attempt, records[0].bytes), (2, 5));
//! # Ok(()) }
//! ```

mod attributes;
mod body;
#[cfg(feature = "csv")]
mod csv_sink;
pub mod future;
mod layer;
mod metrics;
pub mod otel;
mod record;
mod redact;
mod service;
mod state;
pub(crate) use self::state::tracing_is_silent;
#[cfg(test)]
mod tests;
mod writer;

pub use self::body::TelemetryBody;
#[cfg(feature = "csv")]
#[cfg_attr(docsrs, doc(cfg(feature = "csv")))]
pub use self::csv_sink::CsvSink;
pub use self::layer::{Placement, TelemetryLayer};
pub use self::metrics::{names, RateSource, RetryBudgetExhausted, TelemetryMetrics, DURATION_BUCKETS};
pub use self::record::{AttemptRecord, JsonlSink, MemorySink, RecordSink, SCHEMA_VERSION};
pub use self::redact::{
    redacted, shareable, RedactedUri, RedactedUrl, Redactor, DEFAULT_SENSITIVE_PARAMS, MAX_NESTING, REDACTED,
};
pub use self::service::Telemetry;
pub use self::writer::RecordWriter;
