//! [`TelemetryLayer`]: configuration of the telemetry middleware.

use std::sync::Arc;

use tower_layer::Layer;

use super::metrics::TelemetryMetrics;
use super::redact::Redactor;
use super::service::Telemetry;
use super::writer::RecordWriter;

/// Where a [`TelemetryLayer`] sits in the stack, which decides the span it opens and the
/// metrics it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Outside the retry layer: one span per logical operation (named after the
    /// [`OperationType`](crate::context::OperationType)), which carries
    /// `contentdownload.retry.decision`; counts deferrals, failovers and budget exhaustion.
    Operation,
    /// Inside the retry layer: one client span per HTTP attempt (named after the method),
    /// with `http.request.resend_count` on resends; records the request duration and counts
    /// attempts, retries, 429s and cool-down waits.
    Attempt,
    /// For a stack without a retry layer: one client span per request that does both jobs.
    Standalone,
}

impl Placement {
    /// Whether this placement observes single HTTP attempts.
    pub(crate) fn sees_attempts(self) -> bool {
        matches!(self, Placement::Attempt | Placement::Standalone)
    }

    /// Whether this placement observes whole operations (the retry layer's outcome).
    pub(crate) fn sees_operations(self) -> bool {
        matches!(self, Placement::Operation | Placement::Standalone)
    }
}

/// Emits OpenTelemetry-aligned `tracing` spans, metrics and attempt records for every
/// request through it.
///
/// Place it twice around the retry layer: [`TelemetryLayer::operation`] outside and
/// [`TelemetryLayer::attempt`] inside (or [`TelemetryLayer::standalone`] once in a stack
/// without retries). Metrics and attempt records are off until configured with
/// [`metrics`](TelemetryLayer::metrics) and [`records`](TelemetryLayer::records); records
/// are usually configured on the attempt placement only, where there is one per attempt.
///
/// # Example
///
/// ```
/// use contentdownload::layers::telemetry::{RecordWriter, MemorySink, TelemetryLayer, TelemetryMetrics};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let metrics = TelemetryMetrics::global();
/// let records = RecordWriter::spawn(MemorySink::new(), 1024);
/// let stack = ServiceBuilder::new()
///     .layer(TelemetryLayer::operation().metrics(metrics.clone()))
///     // .layer(retry layer)
///     .layer(TelemetryLayer::attempt().metrics(metrics).records(records).run_id("run-42"))
///     .service(tower::service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
///     }));
/// # let _ = stack;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    config: Config,
}

/// What every service built by one layer shares (behind an `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) placement: Placement,
    pub(crate) redactor: Redactor,
    pub(crate) metrics: Option<TelemetryMetrics>,
    pub(crate) records: Option<RecordWriter>,
    pub(crate) run_id: Option<Arc<str>>,
}

impl TelemetryLayer {
    /// A layer for the given placement, with the default [`Redactor`], no metrics and no
    /// attempt records.
    pub fn new(placement: Placement) -> Self {
        TelemetryLayer {
            config: Config {
                placement,
                redactor: Redactor::default(),
                metrics: None,
                records: None,
                run_id: None,
            },
        }
    }

    /// A layer for outside the retry layer ([`Placement::Operation`]).
    pub fn operation() -> Self {
        TelemetryLayer::new(Placement::Operation)
    }

    /// A layer for inside the retry layer ([`Placement::Attempt`]).
    pub fn attempt() -> Self {
        TelemetryLayer::new(Placement::Attempt)
    }

    /// A layer for a stack without a retry layer ([`Placement::Standalone`]).
    pub fn standalone() -> Self {
        TelemetryLayer::new(Placement::Standalone)
    }

    /// Records metrics to these instruments.
    pub fn metrics(mut self, metrics: TelemetryMetrics) -> Self {
        self.config.metrics = Some(metrics);
        self
    }

    /// Sends an [`AttemptRecord`](super::AttemptRecord) per request to this writer.
    pub fn records(mut self, writer: RecordWriter) -> Self {
        self.config.records = Some(writer);
        self
    }

    /// Tags attempt records with this run id.
    pub fn run_id(mut self, run_id: impl Into<Arc<str>>) -> Self {
        self.config.run_id = Some(run_id.into());
        self
    }

    /// Uses this redactor for `url.full` and the records' URL.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.config.redactor = redactor;
        self
    }

    /// The placement.
    pub fn placement(&self) -> Placement {
        self.config.placement
    }

    #[cfg(test)]
    pub(crate) fn config_for_tests(&self) -> Config {
        self.config.clone()
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry::from_config(inner, Arc::new(self.config.clone()))
    }
}
