//! Error types shared by several layers.
//!
//! Layers that add a failure mode return [`BoxError`] (as tower does); the values below
//! are what can be found inside it with [`downcast_ref`](std::error::Error). They are
//! defined here, not in one layer, because another layer reacts to them: the retry layer
//! classifies [`CoolingDown`] and [`RateLimitTimeout`], the telemetry layer counts
//! [`Deferred`] and [`FailedOver`], and the pipeline matches on all four.
//!
//! # Example
//!
//! ```
//! use contentdownload::error::{BoxError, Deferred, FailedOver};
//!
//! fn next_step(err: &BoxError) -> &'static str {
//!     if err.downcast_ref::<Deferred>().is_some() {
//!         "queue the work for the second pass"
//!     } else if err.downcast_ref::<FailedOver>().is_some() {
//!         "try the next resolver"
//!     } else {
//!         "record the failure"
//!     }
//! }
//! # let err: BoxError = "x".into();
//! # assert_eq!(next_step(&err), "record the failure");
//! ```

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::context::{OperationType, PartitionKey};

/// The boxed error every layer of this crate returns, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A partition is cooling down after the provider asked for a pause (Retry-After), and the
/// wait would be longer than the configured maximum, so the request was not sent.
///
/// Retry, defer or fail over after [`until`](CoolingDown::until).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{partition} is cooling down for another {}ms (provider asked for a pause); not sent", remaining_ms(*.until))]
pub struct CoolingDown {
    /// The partition that is cooling down.
    pub partition: PartitionKey,
    /// When the cool-down ends.
    pub until: Instant,
}

/// Waiting for a rate-limit token would take longer than the configured maximum wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit for {partition}: the next slot is {}ms away, over the maximum wait of {}ms", .wait.as_millis(), .max_wait.as_millis())]
pub struct RateLimitTimeout {
    /// The partition whose bucket is empty.
    pub partition: PartitionKey,
    /// How long the request would have had to wait.
    pub wait: Duration,
    /// The configured maximum wait.
    pub max_wait: Duration,
}

/// The retry layer decided the operation should be queued and tried later (for example a
/// `Validate` that met a 429): not a failure of the work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} deferred after {attempts} attempt(s): {reason}")]
pub struct Deferred {
    /// The operation that was deferred.
    pub operation: OperationType,
    /// The status of the last response, if there was one.
    pub status: Option<StatusCode>,
    /// How long the provider asked us to wait, if it said.
    pub retry_after: Option<Duration>,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why, in a few words.
    pub reason: String,
}

/// The retry layer decided the caller should try another resolver (for example a
/// `Resolve` that met a 429).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed over after {attempts} attempt(s): {reason}")]
pub struct FailedOver {
    /// The operation that failed over.
    pub operation: OperationType,
    /// The status of the last response, if there was one.
    pub status: Option<StatusCode>,
    /// How long the provider asked us to wait, if it said.
    pub retry_after: Option<Duration>,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why, in a few words.
    pub reason: String,
}

fn remaining_ms(until: Instant) -> u128 {
    until.saturating_duration_since(Instant::now()).as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let p = PartitionKey::new("crossref", "api.crossref.org");
        let e = RateLimitTimeout {
            partition: p.clone(),
            wait: Duration::from_millis(1500),
            max_wait: Duration::from_secs(1),
        };
        assert_eq!(
            e.to_string(),
            "rate limit for crossref@api.crossref.org: the next slot is 1500ms away, over the maximum wait of 1000ms"
        );
        let d = Deferred {
            operation: OperationType::Validate,
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            retry_after: None,
            attempts: 1,
            reason: "throttled (429)".into(),
        };
        assert_eq!(d.to_string(), "validate deferred after 1 attempt(s): throttled (429)");
        let boxed: BoxError = Box::new(d);
        assert!(boxed.downcast_ref::<Deferred>().is_some());
    }
}
