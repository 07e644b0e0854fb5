//! Wiring helpers: export the telemetry layer's spans and metrics with OpenTelemetry.
//!
//! The layer emits `tracing` spans and records to the `opentelemetry` metrics API; a program
//! chooses where they go. [`tracing_layer`] turns any OpenTelemetry tracer into a
//! `tracing-subscriber` layer; with the `otlp` feature, [`otlp::init`] builds OTLP/HTTP
//! exporters for both spans and metrics.
//!
//! # Example
//!
//! ```
//! use contentdownload::layers::telemetry::otel;
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! // Any OpenTelemetry tracer works; the no-op one here stands in for an SDK tracer.
//! let tracer = opentelemetry::trace::noop::NoopTracer::new();
//! let subscriber = tracing_subscriber::registry().with(otel::tracing_layer(tracer));
//! let _guard = tracing::subscriber::set_default(subscriber);
//! ```

use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// A `tracing-subscriber` layer that exports spans through `tracer`.
///
/// It uses the `otel.name`, `otel.kind` and `otel.status_code` fields the telemetry layer
/// sets, so attempt spans are exported as client spans named after the method, as the HTTP
/// semantic conventions ask. Source locations and thread names are left out of the
/// attributes.
pub fn tracing_layer<S, T>(tracer: T) -> OpenTelemetryLayer<S, T>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
}

/// OTLP/HTTP (protobuf) export of spans and metrics (feature `otlp`).
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp {
    use std::fmt;
    use std::time::Duration;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
    use opentelemetry_sdk::Resource;
    use tracing::Subscriber;
    use tracing_opentelemetry::OpenTelemetryLayer;
    use tracing_subscriber::registry::LookupSpan;

    use super::super::metrics::TelemetryMetrics;

    pub use opentelemetry_otlp::ExporterBuildError;

    /// Where and how to export.
    #[derive(Clone, Debug)]
    pub struct OtlpConfig {
        /// The collector's OTLP/HTTP base URL (`http://localhost:4318`). `None` uses the
        /// `OTEL_EXPORTER_OTLP_ENDPOINT` environment variable or the exporter's default.
        pub endpoint: Option<String>,
        /// The `service.name` resource attribute.
        pub service_name: String,
        /// How often metrics are pushed.
        pub metrics_interval: Duration,
    }

    impl Default for OtlpConfig {
        fn default() -> Self {
            OtlpConfig {
                endpoint: None,
                service_name: "contentdownload".into(),
                metrics_interval: Duration::from_secs(60),
            }
        }
    }

    /// The tracer and meter providers built by [`init`]; call
    /// [`shutdown`](OtlpGuard::shutdown) at exit so buffered spans and metrics are sent.
    pub struct OtlpGuard {
        tracer_provider: SdkTracerProvider,
        meter_provider: SdkMeterProvider,
    }

    impl fmt::Debug for OtlpGuard {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("OtlpGuard").finish_non_exhaustive()
        }
    }

    /// Builds a batching span exporter and a periodic metric exporter, both over OTLP/HTTP.
    ///
    /// The HTTP client is a blocking one, used from the SDK's own background threads, so
    /// this works with or without a tokio runtime. Nothing is sent until spans or metrics
    /// exist.
    ///
    /// # Errors
    ///
    /// An invalid `endpoint` (the error names it).
    pub fn init(config: &OtlpConfig) -> Result<OtlpGuard, ExporterBuildError> {
        // The exporter's reqwest client needs a process-wide rustls provider when another
        // part of the build (the `reqwest` feature) turned off reqwest's bundled one. Ring
        // is the provider this crate uses; an already installed one is kept.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let mut spans = SpanExporter::builder().with_http();
        let mut metrics = MetricExporter::builder().with_http();
        if let Some(endpoint) = &config.endpoint {
            let base = endpoint.trim_end_matches('/');
            spans = spans.with_endpoint(format!("{base}/v1/traces"));
            metrics = metrics.with_endpoint(format!("{base}/v1/metrics"));
        }
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans.build()?)
            .with_resource(resource.clone())
            .build();
        let reader = PeriodicReader::builder(metrics.build()?)
            .with_interval(config.metrics_interval)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        Ok(OtlpGuard {
            tracer_provider,
            meter_provider,
        })
    }

    impl OtlpGuard {
        /// A tracer for [`tracing_layer`](OtlpGuard::tracing_layer) or your own use.
        pub fn tracer(&self) -> Tracer {
            self.tracer_provider.tracer("contentdownload")
        }

        /// A `tracing-subscriber` layer exporting spans over OTLP.
        pub fn tracing_layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
        where
            S: Subscriber + for<'span> LookupSpan<'span>,
        {
            super::tracing_layer(self.tracer())
        }

        /// Telemetry instruments exporting over OTLP, for
        /// [`TelemetryLayer::metrics`](super::super::TelemetryLayer::metrics).
        pub fn metrics(&self) -> TelemetryMetrics {
            use opentelemetry::metrics::MeterProvider as _;
            TelemetryMetrics::new(&self.meter_provider.meter("contentdownload"))
        }

        /// Also makes these providers the global ones (`opentelemetry::global`).
        pub fn install_global(&self) {
            opentelemetry::global::set_tracer_provider(self.tracer_provider.clone());
            opentelemetry::global::set_meter_provider(self.meter_provider.clone());
        }

        /// Sends what is buffered and stops both exporters.
        ///
        /// This blocks until the exports are done (or time out): from async code, call it
        /// inside `tokio::task::spawn_blocking`.
        ///
        /// # Errors
        ///
        /// When the collector could not be reached or did not answer in time (the message
        /// says which exporter).
        pub fn shutdown(self) -> Result<(), String> {
            let traces = self.tracer_provider.shutdown();
            let metrics = self.meter_provider.shutdown();
            match (traces, metrics) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), _) => Err(format!("could not shut down the OTLP span exporter: {e}")),
                (_, Err(e)) => Err(format!("could not shut down the OTLP metric exporter: {e}")),
            }
        }
    }
}
