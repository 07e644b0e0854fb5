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

/// A provider's allowance (its credits for the day) is spent until a reset hours away, as
/// the provider's 429 said (see [`Learner::quota_paused_until`](crate::layers::learning::Learner::quota_paused_until)):
/// no slower rate brings it back sooner, so nothing is sent to it until then and its works
/// wait for a later run. Made by the resolvers' calls when their partition is paused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}'s allowance is spent; it resets in {} (not asked until then)", .partition.provider(), crate::layers::learning::in_words(.until.saturating_duration_since(Instant::now())))]
pub struct QuotaSpent {
    /// The partition whose allowance is spent.
    pub partition: PartitionKey,
    /// When it resets (this process's clock).
    pub until: Instant,
    /// When it resets, as wall-clock time (for what the user is told).
    pub resets_at: std::time::SystemTime,
    /// Whether this call's request was sent (it is the 429 that said so), or the call was
    /// refused before sending because the pause was already known.
    pub sent: bool,
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

/// What kind of failure an error is: the one classification behind the retry layer's
/// classes, the runner's [`ReasonCode`](crate::reason::ReasonCode) and telemetry's
/// `error.type`, so the three cannot drift apart. Found by [`classify`].
///
/// # Example
///
/// ```
/// use contentdownload::error::{classify, BoxError, Kind};
///
/// let err: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
/// assert_eq!(classify(&*err), Kind::Reset);
/// assert!(classify(&*err).is_transient());
/// assert_eq!(classify(&*err).as_str(), "connection_reset");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The retry layer put the operation off ([`Deferred`]).
    Deferred,
    /// The retry layer gave the operation up for the next resolver ([`FailedOver`]).
    FailedOver,
    /// Not sent: the partition is cooling down ([`CoolingDown`]).
    CoolingDown,
    /// Not sent: the partition's next slot is past the maximum wait ([`RateLimitTimeout`]).
    RateLimited,
    /// Not sent: the provider's allowance is spent until a reset hours away ([`QuotaSpent`]).
    QuotaSpent,
    /// The retry budget is spent
    /// ([`RetryBudgetExhausted`](crate::layers::telemetry::RetryBudgetExhausted)).
    RetryBudgetExhausted,
    /// No body bytes for the read timeout ([`ReadTimeout`](crate::service::ReadTimeout)).
    ReadTimeout,
    /// A timeout: tower's or tokio's `Elapsed`, hyper's, or an I/O `TimedOut`.
    Timeout,
    /// More redirects than allowed ([`TooManyRedirects`](crate::service::TooManyRedirects)).
    TooManyRedirects,
    /// A redirect to a scheme other than http/https
    /// ([`UnsupportedRedirectScheme`](crate::service::UnsupportedRedirectScheme)).
    UnsupportedRedirectScheme,
    /// No connection: DNS, refused, TLS, not connected
    /// ([`ConnectFailed`](crate::service::ConnectFailed) and what it wraps).
    Connect,
    /// The connect timeout passed.
    ConnectTimeout,
    /// The connection was reset, aborted or closed mid-exchange.
    Reset,
    /// The message ended early (hyper's incomplete message, an unexpected EOF).
    Truncated,
    /// hyper canceled the request (its connection went away before it was sent).
    Canceled,
    /// Another HTTP protocol error.
    Http,
    /// Anything else.
    Other,
}

impl Kind {
    /// The low-cardinality name telemetry records as `error.type` (`_OTHER` for
    /// [`Kind::Other`], as the semantic conventions ask).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Deferred => "deferred",
            Kind::FailedOver => "failed_over",
            Kind::CoolingDown => "cooling_down",
            Kind::RateLimited => "rate_limit_timeout",
            Kind::QuotaSpent => "quota_spent",
            Kind::RetryBudgetExhausted => "retry_budget_exhausted",
            Kind::ReadTimeout => "read_timeout",
            Kind::Timeout => "timeout",
            Kind::TooManyRedirects => "too_many_redirects",
            Kind::UnsupportedRedirectScheme => "unsupported_redirect_scheme",
            Kind::Connect | Kind::ConnectTimeout => "connect_error",
            Kind::Reset => "connection_reset",
            Kind::Truncated => "incomplete_message",
            Kind::Canceled => "canceled",
            Kind::Http => "http_error",
            Kind::Other => "_OTHER",
        }
    }

    /// Whether sending the same request again may succeed: timeouts, connect failures,
    /// resets and truncated or canceled exchanges. (Throttling is not transient in this
    /// sense: it asks for a wait, which the caller reads from the error.)
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Kind::ReadTimeout
                | Kind::Timeout
                | Kind::Connect
                | Kind::ConnectTimeout
                | Kind::Reset
                | Kind::Truncated
                | Kind::Canceled
        )
    }
}

/// How deep [`classify`] looks into a source chain.
const MAX_CHAIN: usize = 16;

/// Classifies an error of the stack or of a body by walking its source chain, outermost
/// first: the first error that says what happened decides. A hyper error that says
/// nothing more specific lets the walk go on to its source, and is [`Kind::Http`] if
/// nothing below does either.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Kind {
    use crate::layers::telemetry::RetryBudgetExhausted;
    use crate::service::{ConnectCause, ConnectFailed, ReadTimeout, TooManyRedirects, UnsupportedRedirectScheme};
    use std::io::ErrorKind;

    let mut fallback = Kind::Other;
    let mut current = Some(err);
    for _ in 0..MAX_CHAIN {
        let Some(e) = current else { break };
        // reqwest's own timeouts (per request, `Client::timeout`, `read_timeout`) carry a
        // private marker error: only `is_timeout` tells them (the reqwest adapter's attempts)
        #[cfg(feature = "reqwest")]
        if let Some(r) = e.downcast_ref::<reqwest::Error>().filter(|r| r.is_timeout()) {
            return if r.is_connect() {
                Kind::ConnectTimeout
            } else {
                Kind::Timeout
            };
        }
        let kind = if e.is::<Deferred>() {
            Some(Kind::Deferred)
        } else if e.is::<FailedOver>() {
            Some(Kind::FailedOver)
        } else if e.is::<CoolingDown>() {
            Some(Kind::CoolingDown)
        } else if e.is::<RateLimitTimeout>() {
            Some(Kind::RateLimited)
        } else if e.is::<QuotaSpent>() {
            Some(Kind::QuotaSpent)
        } else if e.is::<RetryBudgetExhausted>() {
            Some(Kind::RetryBudgetExhausted)
        } else if e.is::<ReadTimeout>() {
            Some(Kind::ReadTimeout)
        } else if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            Some(Kind::Timeout)
        } else if e.is::<TooManyRedirects>() {
            Some(Kind::TooManyRedirects)
        } else if e.is::<UnsupportedRedirectScheme>() {
            Some(Kind::UnsupportedRedirectScheme)
        } else if let Some(c) = e.downcast_ref::<ConnectFailed>() {
            Some(if c.cause == ConnectCause::TimedOut {
                Kind::ConnectTimeout
            } else {
                Kind::Connect
            })
        } else if let Some(c) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            c.is_connect().then(|| {
                if chain_has_timed_out(e.source()) {
                    Kind::ConnectTimeout
                } else {
                    Kind::Connect
                }
            })
        } else if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                Some(Kind::Timeout)
            } else if h.is_incomplete_message() {
                Some(Kind::Truncated)
            } else if h.is_canceled() {
                Some(Kind::Canceled)
            } else if h.is_closed() || h.is_body_write_aborted() {
                Some(Kind::Reset)
            } else {
                fallback = Kind::Http;
                None
            }
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::TimedOut => Some(Kind::Timeout),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => Some(Kind::Reset),
                ErrorKind::UnexpectedEof => Some(Kind::Truncated),
                ErrorKind::ConnectionRefused | ErrorKind::NotConnected | ErrorKind::AddrNotAvailable => {
                    Some(Kind::Connect)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(kind) = kind {
            return kind;
        }
        current = e.source();
    }
    fallback
}

/// Whether an I/O `TimedOut` is somewhere in the chain from `current` down.
fn chain_has_timed_out(mut current: Option<&(dyn std::error::Error + 'static)>) -> bool {
    for _ in 0..MAX_CHAIN {
        let Some(e) = current else { return false };
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
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
