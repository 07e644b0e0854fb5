//! Per-request state: the span, the clocks and counters, and what is reported at the end.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use opentelemetry::KeyValue;
use tokio::time::Instant;
use tracing::Span;

use super::attributes::{error_type, find, make_span, method_name, server_port};
use super::layer::{Config, Placement};
use super::metrics::RetryBudgetExhausted;
use super::metrics::TelemetryMetrics;
use super::record::{AttemptRecord, SCHEMA_VERSION};
use super::writer::RecordWriter;
use crate::context::{
    AttemptNumber, CooldownWait, OperationType, Provider, RateLimitWait, RequestContextExt, RetryAfterHint, WorkId,
};
use crate::error::{BoxError, CoolingDown, Deferred, FailedOver};

/// Whether no span can be seen: no subscriber was ever set and `log` is off. A dependency
/// (sqlx) switches on tracing's `log` feature, and with it tracing evaluates every field of
/// a span as long as no subscriber was ever set, to hand them to `log`; checking first keeps
/// the layer free when nobody listens.
pub(crate) fn tracing_is_silent() -> bool {
    !tracing::dispatcher::has_been_set() && log::max_level() == log::LevelFilter::Off
}

/// How a request ended.
#[derive(Clone, Copy)]
pub(crate) enum End<'a> {
    /// The body ended (or there was none).
    Complete,
    /// The request failed, before or during the body.
    Error(&'a BoxError),
    /// The future or the body was dropped first.
    Dropped,
}

/// Everything measured about one request, from `call` until its body ends.
pub(crate) struct Tracker {
    span: Span,
    start: Instant,
    placement: Placement,
    attempt: u32,
    head: Option<Duration>,
    first_byte: Option<Duration>,
    bytes: u64,
    status: Option<StatusCode>,
    ratelimit_wait: Option<Duration>,
    cooldown_wait: Option<Duration>,
    retry_after: Option<Duration>,
    budget_exhausted: bool,
    /// Only when metrics or records are configured: the owned copies they need.
    report: Option<Report>,
}

struct Report {
    config: Arc<Config>,
    started_at: SystemTime,
    operation: OperationType,
    method: Method,
    host: String,
    port: Option<u16>,
    scheme: Option<&'static str>,
    provider: Provider,
    work_id: Option<WorkId>,
    /// The redacted URL, only when records are written.
    url: Option<String>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("placement", &self.placement)
            .field("attempt", &self.attempt)
            .field("status", &self.status)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Opens the span and starts the clock; `None` when nothing listens (no enabled span,
    /// no metrics, no records), so an unobserved request costs no allocation and no clock read.
    pub(crate) fn start<B>(req: &Request<B>, config: &Arc<Config>) -> Option<Box<Tracker>> {
        let placement = config.placement;
        let reporting = config.metrics.is_some() || config.records.is_some();
        if !reporting && tracing_is_silent() {
            // (before any span is made: a disabled span still costs its making and its drop)
            return None;
        }
        let span = if tracing_is_silent() {
            Span::none()
        } else {
            make_span(placement, req, config)
        };
        if span.is_disabled() && !reporting {
            return None;
        }
        let attempt = AttemptNumber::of(req);
        if attempt > 1 && placement.sees_attempts() {
            span.record("http.request.resend_count", i64::from(attempt - 1));
        }
        let report = reporting.then(|| Report {
            config: Arc::clone(config),
            started_at: SystemTime::now(),
            operation: req.operation(),
            method: req.method().clone(),
            host: req.uri().host().unwrap_or_default().to_owned(),
            port: server_port(req.uri()),
            scheme: match req.uri().scheme_str() {
                Some("https") => Some("https"),
                Some("http") => Some("http"),
                _ => None,
            },
            provider: req.provider(),
            work_id: req.work_id().cloned(),
            url: config
                .records
                .as_ref()
                .map(|_| config.redactor.redact(req.uri()).to_string()),
        });
        Some(Box::new(Tracker {
            span,
            start: crate::context::clock::now(),
            placement,
            attempt,
            head: None,
            first_byte: None,
            bytes: 0,
            status: None,
            ratelimit_wait: None,
            cooldown_wait: None,
            retry_after: None,
            budget_exhausted: false,
            report,
        }))
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The response head arrived.
    pub(crate) fn on_head<B>(&mut self, response: &Response<B>) {
        self.head = Some(self.start.elapsed());
        let status = response.status();
        self.status = Some(status);
        self.span
            .record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_client_error() || status.is_server_error() {
            self.span.record("error.type", status.as_str());
            self.span.record("otel.status_code", "error");
        }
        let ext = response.extensions();
        self.ratelimit_wait = ext.get::<RateLimitWait>().map(|w| w.0);
        self.cooldown_wait = ext.get::<CooldownWait>().map(|w| w.0);
        self.retry_after = ext.get::<RetryAfterHint>().map(|h| h.delay);
        self.budget_exhausted = ext.get::<RetryBudgetExhausted>().is_some();
        if let Some(wait) = self.ratelimit_wait {
            if self.placement.sees_attempts() {
                self.span.record("contentdownload.ratelimit.wait_ms", duration_ms(wait));
            }
        }
    }

    /// Body data went through.
    pub(crate) fn on_data(&mut self, len: usize) {
        if self.first_byte.is_none() && len > 0 {
            self.first_byte = Some(self.start.elapsed());
        }
        self.bytes += len as u64;
    }

    /// Reports the request: closes the span, records metrics, sends the attempt record.
    pub(crate) fn finish(self: Box<Self>, end: End<'_>) {
        let elapsed = self.start.elapsed();
        let error_type: Option<&str> = match end {
            End::Error(err) => Some(error_type(err)),
            _ => self
                .status
                .as_ref()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .map(StatusCode::as_str),
        };
        if self.head.is_some() {
            self.span
                .record("http.response.body.size", i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
        if let End::Error(_) = end {
            self.span.record("error.type", error_type);
            self.span.record("otel.status_code", "error");
        }
        let Some(report) = &self.report else {
            return;
        };
        if let Some(metrics) = &report.config.metrics {
            self.record_metrics(metrics, report, end, error_type, elapsed);
        }
        if let Some(writer) = &report.config.records {
            self.send_record(writer, report, end, error_type, elapsed);
        }
    }

    fn record_metrics(
        &self,
        metrics: &TelemetryMetrics,
        report: &Report,
        end: End<'_>,
        error_type: Option<&str>,
        elapsed: Duration,
    ) {
        let counter_attrs = [
            KeyValue::new("contentdownload.operation", report.operation.as_str()),
            KeyValue::new("contentdownload.provider", report.provider.as_str().to_owned()),
        ];
        if self.placement.sees_attempts() {
            let mut attrs = Vec::with_capacity(6);
            attrs.push(KeyValue::new("http.request.method", method_name(&report.method)));
            attrs.push(KeyValue::new("server.address", report.host.clone()));
            if let Some(scheme) = report.scheme {
                attrs.push(KeyValue::new("url.scheme", scheme));
            }
            if let Some(port) = report.port {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
            if let Some(status) = self.status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
            }
            if let Some(ty) = error_type {
                attrs.push(KeyValue::new("error.type", ty.to_owned()));
            }
            metrics.request_duration(elapsed.as_secs_f64(), &attrs);
            let throttled = self.status == Some(StatusCode::TOO_MANY_REQUESTS);
            metrics.attempt(&counter_attrs, self.attempt > 1, throttled);
            if self.cooldown_wait.is_some_and(|w| !w.is_zero()) {
                metrics.cooldown(&counter_attrs, "waited");
            }
            if let End::Error(err) = end {
                if find::<CoolingDown>(err).is_some() {
                    metrics.cooldown(&counter_attrs, "refused");
                }
            }
        }
        if self.placement.sees_operations() {
            if let End::Error(err) = end {
                if find::<Deferred>(err).is_some() {
                    metrics.deferral(&counter_attrs);
                }
                if find::<FailedOver>(err).is_some() {
                    metrics.failover(&counter_attrs);
                }
            }
            let exhausted = match end {
                End::Error(err) => find::<RetryBudgetExhausted>(err).is_some(),
                _ => self.budget_exhausted,
            };
            if exhausted {
                metrics.budget_exhausted(&counter_attrs);
            }
        }
    }

    fn send_record(
        &self,
        writer: &RecordWriter,
        report: &Report,
        end: End<'_>,
        error_type: Option<&str>,
        elapsed: Duration,
    ) {
        let reason = match (error_type, &end) {
            (Some(ty), _) => Some(ty.to_owned()),
            (None, End::Dropped) if self.head.is_some() => Some("body_dropped".to_owned()),
            (None, End::Dropped) => Some("canceled".to_owned()),
            (None, _) => None,
        };
        let record = AttemptRecord {
            schema_version: SCHEMA_VERSION,
            timestamp_ms: report
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            run_id: report.config.run_id.as_deref().map(str::to_owned),
            work_id: report.work_id.as_ref().map(|w| w.as_str().to_owned()),
            operation: report.operation,
            provider: report.provider.as_str().to_owned(),
            method: report.method.as_str().to_owned(),
            url: report.url.clone().unwrap_or_default(),
            status: self.status.map(|s| s.as_u16()),
            reason,
            attempt: self.attempt,
            elapsed_us: micros(elapsed),
            head_us: self.head.map(micros),
            ttfb_us: self.first_byte.map(micros),
            bytes: self.bytes,
            ratelimit_wait_us: self.ratelimit_wait.map(micros),
            cooldown_wait_us: self.cooldown_wait.map(micros),
            retry_after_us: self.retry_after.map(micros),
        };
        if !writer.try_write(record) {
            if let Some(metrics) = &report.config.metrics {
                metrics.records_dropped(1);
            }
        }
    }
}

/// Holds a tracker and reports it as [`End::Dropped`] if it is dropped unreported.
///
/// The tracker is boxed so that an unobserved request (no tracker) carries one word in its
/// future and body, not the whole state.
#[derive(Debug)]
pub(crate) struct Guard(Option<Box<Tracker>>);

impl Guard {
    pub(crate) fn new(tracker: Option<Box<Tracker>>) -> Self {
        Guard(tracker)
    }

    pub(crate) fn get(&self) -> Option<&Tracker> {
        self.0.as_deref()
    }

    pub(crate) fn get_mut(&mut self) -> Option<&mut Tracker> {
        self.0.as_deref_mut()
    }

    pub(crate) fn take(&mut self) -> Option<Box<Tracker>> {
        self.0.take()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.finish(End::Dropped);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds as an `i64`: span integers are recorded signed, because
/// tracing-opentelemetry exports unsigned values as strings.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
