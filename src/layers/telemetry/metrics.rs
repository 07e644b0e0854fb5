//! Metrics through the `opentelemetry` API: request durations, counters of what the
//! resilience layers did, and the learned rate per partition.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use opentelemetry::KeyValue;

use crate::context::PartitionKey;

/// Bucket boundaries (seconds) for `http.client.request.duration`, as the OpenTelemetry
/// HTTP semantic conventions advise.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The instrument names, so dashboards and tests do not retype them.
pub mod names {
    /// Histogram, seconds: one measurement per HTTP attempt, until its body ended.
    pub const REQUEST_DURATION: &str = "http.client.request.duration";
    /// Counter: HTTP attempts sent.
    pub const ATTEMPTS: &str = "contentdownload.attempts";
    /// Counter: attempts that were resends (attempt number 2 and up).
    pub const RETRIES: &str = "contentdownload.retries";
    /// Counter: attempts answered 429 Too Many Requests.
    pub const THROTTLED: &str = "contentdownload.throttled";
    /// Counter: operations that ended [`Deferred`](crate::error::Deferred).
    pub const DEFERRALS: &str = "contentdownload.deferrals";
    /// Counter: operations that ended [`FailedOver`](crate::error::FailedOver).
    pub const FAILOVERS: &str = "contentdownload.failovers";
    /// Counter: operations whose retries stopped because the retry budget was empty.
    pub const BUDGET_EXHAUSTED: &str = "contentdownload.retry.budget_exhausted";
    /// Counter: attempts held by a partition's cool-down (`outcome` = `waited`), or refused
    /// because the cool-down was too long (`outcome` = `refused`).
    pub const COOLDOWN_WAITS: &str = "contentdownload.cooldown.waits";
    /// Counter: attempt records not written because the record buffer was full.
    pub const RECORDS_DROPPED: &str = "contentdownload.records.dropped";
    /// Gauge, requests per second: the learned rate of each partition.
    pub const LEARNED_RATE: &str = "contentdownload.learning.rate";
}

/// The retry layer's signal that it stopped retrying because the partition's retry budget
/// was empty; the operation placement of [`TelemetryLayer`](super::TelemetryLayer) counts it
/// on `contentdownload.retry.budget_exhausted`.
///
/// The retry layer passes it up in one of two ways: as a **response extension** on the
/// response it returns (`response.extensions_mut().insert(RetryBudgetExhausted)`), or, when
/// it returns an error, as that error or anywhere in its [`source`](std::error::Error::source)
/// chain.
///
/// # Example
///
/// ```
/// use contentdownload::layers::telemetry::RetryBudgetExhausted;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(RetryBudgetExhausted);
/// assert!(response.extensions().get::<RetryBudgetExhausted>().is_some());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("the retry budget of this partition is exhausted; no more retries until earlier requests succeed")]
pub struct RetryBudgetExhausted;

/// A function that reports the current learned rate (requests per second) of each partition.
pub type RateSource = Arc<dyn Fn() -> Vec<(PartitionKey, f64)> + Send + Sync>;

/// The instruments the telemetry layer records to, made once from a [`Meter`].
///
/// Cloning is cheap and every clone shares the instruments and the registered rate
/// sources (behind an `Arc`), so one value can be given to both placements of
/// [`TelemetryLayer`](super::TelemetryLayer): the operation placement records deferrals,
/// failovers and budget exhaustion, the attempt placement records the rest, so nothing is
/// counted twice.
///
/// # Example
///
/// ```
/// use contentdownload::context::PartitionKey;
/// use contentdownload::layers::telemetry::{TelemetryLayer, TelemetryMetrics};
///
/// let metrics = TelemetryMetrics::global();
/// // The learning layer publishes its rates through a callback, read at each collection.
/// metrics.register_rate_source(|| vec![(PartitionKey::new("crossref", "api.crossref.org"), 12.5)]);
/// let attempt = TelemetryLayer::attempt().metrics(metrics.clone());
/// let operation = TelemetryLayer::operation().metrics(metrics);
/// # let _ = (attempt, operation);
/// ```
#[derive(Clone)]
pub struct TelemetryMetrics {
    inner: Arc<Instruments>,
}

struct Instruments {
    duration: Histogram<f64>,
    attempts: Counter<u64>,
    retries: Counter<u64>,
    throttled: Counter<u64>,
    deferrals: Counter<u64>,
    failovers: Counter<u64>,
    budget_exhausted: Counter<u64>,
    cooldown_waits: Counter<u64>,
    records_dropped: Counter<u64>,
    rate_sources: Arc<Mutex<Vec<RateSource>>>,
    _learned_rate: ObservableGauge<f64>,
}

impl fmt::Debug for TelemetryMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources = self.inner.rate_sources.lock().map_or(0, |s| s.len());
        f.debug_struct("TelemetryMetrics")
            .field("rate_sources", &sources)
            .finish()
    }
}

impl TelemetryMetrics {
    /// Instruments from the global meter provider (`opentelemetry::global`), under the
    /// meter name `contentdownload`. With no provider installed they record nothing.
    pub fn global() -> Self {
        TelemetryMetrics::new(&opentelemetry::global::meter("contentdownload"))
    }

    /// Instruments from the given meter.
    pub fn new(meter: &Meter) -> Self {
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        let rate_sources: Arc<Mutex<Vec<RateSource>>> = Arc::default();
        let sources = Arc::clone(&rate_sources);
        let learned_rate = meter
            .f64_observable_gauge(names::LEARNED_RATE)
            .with_unit("{request}/s")
            .with_description("The learned request rate of each (provider, host) partition")
            .with_callback(move |observer| {
                // Copy the list out so a source never runs under the lock.
                let list: Vec<RateSource> = sources.lock().unwrap_or_else(PoisonError::into_inner).clone();
                for source in list {
                    for (key, rate) in source() {
                        observer.observe(rate, &partition_attributes(&key));
                    }
                }
            })
            .build();
        TelemetryMetrics {
            inner: Arc::new(Instruments {
                duration: meter
                    .f64_histogram(names::REQUEST_DURATION)
                    .with_unit("s")
                    .with_description("Duration of HTTP client requests, until the response body ended")
                    .with_boundaries(DURATION_BUCKETS.to_vec())
                    .build(),
                attempts: counter(names::ATTEMPTS, "HTTP attempts sent"),
                retries: counter(names::RETRIES, "HTTP attempts that were resends"),
                throttled: counter(names::THROTTLED, "HTTP attempts answered 429 Too Many Requests"),
                deferrals: counter(names::DEFERRALS, "Operations deferred for a later pass"),
                failovers: counter(names::FAILOVERS, "Operations failed over to another resolver"),
                budget_exhausted: counter(names::BUDGET_EXHAUSTED, "Operations whose retry budget was empty"),
                cooldown_waits: counter(names::COOLDOWN_WAITS, "Attempts held or refused by a cool-down"),
                records_dropped: counter(names::RECORDS_DROPPED, "Attempt records dropped on a full buffer"),
                rate_sources,
                _learned_rate: learned_rate,
            }),
        }
    }

    /// Registers a source of learned rates, read at every metrics collection and reported
    /// on the `contentdownload.learning.rate` gauge with the attributes
    /// `contentdownload.provider` and `server.address`. The learning layer calls this once.
    pub fn register_rate_source<F>(&self, source: F)
    where
        F: Fn() -> Vec<(PartitionKey, f64)> + Send + Sync + 'static,
    {
        self.inner
            .rate_sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(source));
    }

    pub(crate) fn request_duration(&self, seconds: f64, attributes: &[KeyValue]) {
        self.inner.duration.record(seconds, attributes);
    }

    pub(crate) fn attempt(&self, attributes: &[KeyValue], resend: bool, throttled: bool) {
        self.inner.attempts.add(1, attributes);
        if resend {
            self.inner.retries.add(1, attributes);
        }
        if throttled {
            self.inner.throttled.add(1, attributes);
        }
    }

    pub(crate) fn cooldown(&self, attributes: &[KeyValue], outcome: &'static str) {
        let mut attrs = attributes.to_vec();
        attrs.push(KeyValue::new("outcome", outcome));
        self.inner.cooldown_waits.add(1, &attrs);
    }

    pub(crate) fn deferral(&self, attributes: &[KeyValue]) {
        self.inner.deferrals.add(1, attributes);
    }

    pub(crate) fn failover(&self, attributes: &[KeyValue]) {
        self.inner.failovers.add(1, attributes);
    }

    pub(crate) fn budget_exhausted(&self, attributes: &[KeyValue]) {
        self.inner.budget_exhausted.add(1, attributes);
    }

    pub(crate) fn records_dropped(&self, count: u64) {
        self.inner.records_dropped.add(count, &[]);
    }
}

fn partition_attributes(key: &PartitionKey) -> [KeyValue; 2] {
    [
        KeyValue::new("contentdownload.provider", key.provider().as_str().to_owned()),
        KeyValue::new("server.address", key.host().to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_sources_are_kept_and_debug_counts_them() {
        let metrics = TelemetryMetrics::new(&opentelemetry::global::meter("test"));
        metrics.register_rate_source(Vec::new);
        metrics.register_rate_source(|| vec![(PartitionKey::new("p", "h"), 1.0)]);
        assert_eq!(format!("{metrics:?}"), "TelemetryMetrics { rate_sources: 2 }");
        let attrs = partition_attributes(&PartitionKey::new("crossref", "API.crossref.org"));
        assert_eq!(attrs[1].value.as_str(), "api.crossref.org");
    }
}
