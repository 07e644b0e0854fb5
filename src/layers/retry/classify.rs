//! Sorting an attempt's outcome into the classes the policy reacts to.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::config::OperationPolicy;
use crate::context::RetryAfterHint;
use crate::error::{classify, CoolingDown, Kind, RateLimitTimeout};
use crate::layers::retry_after::hint_from_headers;

/// What kind of outcome an attempt had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A response the policy does not retry by status: 1xx, 2xx, 3xx.
    Success,
    /// A throttling status (429), or our own cool-down / rate-limit wait errors.
    Throttled,
    /// A connect, read or tower timeout, or a timeout status (408).
    Timeout,
    /// A retryable server error status (500, 502, 503, 504).
    ServerError,
    /// The connection could not be made (refused, unreachable, DNS failure).
    Connect,
    /// The connection broke: reset, aborted, incomplete message, canceled.
    Reset,
    /// 409 Conflict: retryable only with an Idempotency-Key.
    Conflict,
    /// Any other client error status or error: not retried.
    Permanent,
}

impl Class {
    /// A few words for reasons and logs.
    pub fn describe(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Throttled => "throttled",
            Class::Timeout => "timed out",
            Class::ServerError => "server error",
            Class::Connect => "connect error",
            Class::Reset => "connection reset",
            Class::Conflict => "conflict",
            Class::Permanent => "not retryable",
        }
    }
}

/// The class of a response, and its wait hint (the [`RetryAfterHint`] extension, or the
/// headers parsed here when the Retry-After layer is not in the stack).
pub(crate) fn classify_response<B>(policy: &OperationPolicy, res: &Response<B>) -> (Class, Option<Duration>) {
    let status = res.status();
    let code = status.as_u16();
    let class = if policy.throttle_statuses.contains(&code) {
        Class::Throttled
    } else if policy.timeout_statuses.contains(&code) {
        Class::Timeout
    } else if policy.server_error_statuses.contains(&code) {
        Class::ServerError
    } else if status == StatusCode::CONFLICT {
        Class::Conflict
    } else if status.is_client_error() || status.is_server_error() {
        Class::Permanent
    } else {
        Class::Success
    };
    if matches!(class, Class::Success | Class::Permanent) {
        return (class, None);
    }
    let hint = match res.extensions().get::<RetryAfterHint>() {
        Some(h) => Some(h.delay),
        None => hint_from_headers(status, res.headers(), SystemTime::now()),
    };
    (class, hint)
}

/// How deep the source chain of an error is searched.
/// The retry class of an error, and the wait it names (a [`CoolingDown`]'s end, a
/// [`RateLimitTimeout`]'s wait): [`crate::error::classify`] decides, this maps.
pub(crate) fn classify_error(err: &(dyn StdError + 'static)) -> (Class, Option<Duration>) {
    let class = match classify(err) {
        Kind::CoolingDown | Kind::RateLimited => Class::Throttled,
        Kind::ReadTimeout | Kind::Timeout | Kind::ConnectTimeout => Class::Timeout,
        Kind::Connect => Class::Connect,
        Kind::Reset | Kind::Truncated | Kind::Canceled => Class::Reset,
        _ => Class::Permanent,
    };
    let hint = match class {
        Class::Throttled => throttle_hint(err),
        _ => None,
    };
    (class, hint)
}

/// The wait a throttling error names, from the first [`CoolingDown`] or
/// [`RateLimitTimeout`] in the chain.
fn throttle_hint(err: &(dyn StdError + 'static)) -> Option<Duration> {
    std::iter::successors(Some(err), |&e| e.source())
        .take(16)
        .find_map(|e| {
            if let Some(c) = e.downcast_ref::<CoolingDown>() {
                Some(c.until.saturating_duration_since(Instant::now()))
            } else {
                e.downcast_ref::<RateLimitTimeout>().map(|r| r.wait)
            }
        })
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::context::PartitionKey;
    use crate::error::BoxError;
    use crate::service::ReadTimeout;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrap(#[source] BoxError);

    fn class_of(e: BoxError) -> Class {
        classify_error(&*e).0
    }

    #[tokio::test(start_paused = true)]
    async fn errors() {
        let reset = || -> BoxError { Box::new(io::Error::new(io::ErrorKind::ConnectionReset, "reset")) };
        assert_eq!(class_of(reset()), Class::Reset);
        assert_eq!(class_of(Box::new(Wrap(reset()))), Class::Reset);
        assert_eq!(
            class_of(Box::new(ReadTimeout {
                after: Duration::from_secs(1)
            })),
            Class::Timeout
        );
        assert_eq!(
            class_of(Box::new(tower::timeout::error::Elapsed::new())),
            Class::Timeout
        );
        assert_eq!(
            class_of(Box::new(io::Error::new(io::ErrorKind::ConnectionRefused, "no"))),
            Class::Connect
        );
        assert_eq!(class_of("some other failure".into()), Class::Permanent);
        let p = PartitionKey::new("p", "h");
        let until = Instant::now() + Duration::from_secs(7);
        assert_eq!(
            classify_error(&CoolingDown {
                partition: p.clone(),
                until
            }),
            (Class::Throttled, Some(Duration::from_secs(7)))
        );
        let rl = RateLimitTimeout {
            partition: p,
            wait: Duration::from_secs(3),
            max_wait: Duration::from_secs(1),
        };
        assert_eq!(
            classify_error(&Wrap(Box::new(rl))),
            (Class::Throttled, Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn responses() {
        let policy = OperationPolicy::standard();
        let res = |code: u16| Response::builder().status(code).body(()).unwrap();
        for (code, class) in [
            (200, Class::Success),
            (304, Class::Success),
            (404, Class::Permanent),
            (409, Class::Conflict),
            (408, Class::Timeout),
            (429, Class::Throttled),
            (500, Class::ServerError),
            (501, Class::Permanent),
            (503, Class::ServerError),
        ] {
            assert_eq!(classify_response(&policy, &res(code)).0, class, "{code}");
        }
        let mut r = res(429);
        r.headers_mut().insert("retry-after", "4".parse().unwrap());
        assert_eq!(classify_response(&policy, &r).1, Some(Duration::from_secs(4)));
        // the extension (from the Retry-After layer) wins
        r.extensions_mut().insert(RetryAfterHint {
            delay: Duration::from_secs(2),
        });
        assert_eq!(classify_response(&policy, &r).1, Some(Duration::from_secs(2)));
    }

    /// One classification, four readings: each kind of error pinned to its
    /// [`Kind`], retry class, reason code, retryability and telemetry `error.type`. The
    /// reason codes are the runner's, so this runs with the `runner` feature.
    #[cfg(feature = "runner")]
    #[tokio::test(start_paused = true)]
    async fn one_classification_pins_every_reading() {
        use crate::error::{Deferred, FailedOver};
        use crate::layers::telemetry::RetryBudgetExhausted;
        use crate::reason::{classify_error as reason_of, ReasonCode};
        use crate::service::{TooManyRedirects, UnsupportedRedirectScheme};

        let p = PartitionKey::new("p", "h");
        let io = |k: io::ErrorKind| -> BoxError { Box::new(io::Error::from(k)) };
        let deferred = Deferred {
            operation: crate::context::OperationType::Download,
            status: None,
            retry_after: None,
            attempts: 1,
            reason: "r".into(),
        };
        let failed_over = FailedOver {
            operation: crate::context::OperationType::Download,
            status: None,
            retry_after: None,
            attempts: 1,
            reason: "r".into(),
        };
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        let cases: Vec<(BoxError, Kind, Class, ReasonCode, bool, &str)> = vec![
            (
                Box::new(deferred),
                Kind::Deferred,
                Class::Permanent,
                ReasonCode::Deferred,
                false,
                "deferred",
            ),
            (
                Box::new(failed_over),
                Kind::FailedOver,
                Class::Permanent,
                ReasonCode::FailedOver,
                false,
                "failed_over",
            ),
            (
                Box::new(CoolingDown {
                    partition: p.clone(),
                    until: Instant::now(),
                }),
                Kind::CoolingDown,
                Class::Throttled,
                ReasonCode::CoolingDown,
                false,
                "cooling_down",
            ),
            (
                Box::new(RateLimitTimeout {
                    partition: p,
                    wait: Duration::ZERO,
                    max_wait: Duration::ZERO,
                }),
                Kind::RateLimited,
                Class::Throttled,
                ReasonCode::RateLimited,
                false,
                "rate_limit_timeout",
            ),
            (
                Box::new(RetryBudgetExhausted),
                Kind::RetryBudgetExhausted,
                Class::Permanent,
                ReasonCode::Other,
                false,
                "retry_budget_exhausted",
            ),
            (
                Box::new(ReadTimeout {
                    after: Duration::from_secs(1),
                }),
                Kind::ReadTimeout,
                Class::Timeout,
                ReasonCode::Timeout,
                true,
                "read_timeout",
            ),
            (
                Box::new(tower::timeout::error::Elapsed::new()),
                Kind::Timeout,
                Class::Timeout,
                ReasonCode::Timeout,
                true,
                "timeout",
            ),
            // tokio's Elapsed was "other" for the reason code and telemetry before
            (
                Box::new(elapsed),
                Kind::Timeout,
                Class::Timeout,
                ReasonCode::Timeout,
                true,
                "timeout",
            ),
            (
                io(io::ErrorKind::TimedOut),
                Kind::Timeout,
                Class::Timeout,
                ReasonCode::Timeout,
                true,
                "timeout",
            ),
            (
                Box::new(TooManyRedirects { max: 1 }),
                Kind::TooManyRedirects,
                Class::Permanent,
                ReasonCode::RedirectRefused,
                false,
                "too_many_redirects",
            ),
            (
                Box::new(UnsupportedRedirectScheme { scheme: "ftp".into() }),
                Kind::UnsupportedRedirectScheme,
                Class::Permanent,
                ReasonCode::RedirectRefused,
                false,
                "unsupported_redirect_scheme",
            ),
            (
                io(io::ErrorKind::ConnectionRefused),
                Kind::Connect,
                Class::Connect,
                ReasonCode::ConnectError,
                true,
                "connect_error",
            ),
            // NotConnected was a connect error for retry only before
            (
                io(io::ErrorKind::NotConnected),
                Kind::Connect,
                Class::Connect,
                ReasonCode::ConnectError,
                true,
                "connect_error",
            ),
            (
                io(io::ErrorKind::ConnectionReset),
                Kind::Reset,
                Class::Reset,
                ReasonCode::Truncated,
                true,
                "connection_reset",
            ),
            (
                io(io::ErrorKind::BrokenPipe),
                Kind::Reset,
                Class::Reset,
                ReasonCode::Truncated,
                true,
                "connection_reset",
            ),
            (
                io(io::ErrorKind::UnexpectedEof),
                Kind::Truncated,
                Class::Reset,
                ReasonCode::Truncated,
                true,
                "incomplete_message",
            ),
            (
                io(io::ErrorKind::PermissionDenied),
                Kind::Other,
                Class::Permanent,
                ReasonCode::Other,
                false,
                "_OTHER",
            ),
            (
                "some other failure".into(),
                Kind::Other,
                Class::Permanent,
                ReasonCode::Other,
                false,
                "_OTHER",
            ),
        ];
        for (err, kind, class, reason, transient, name) in cases {
            let wrapped = Wrap(Box::new(Wrap(err)));
            let what = format!("{wrapped:?}");
            assert_eq!(classify(&wrapped), kind, "{what}");
            assert_eq!(classify_error(&wrapped).0, class, "{what}");
            assert_eq!(reason_of(&wrapped), (reason, transient), "{what}");
            assert_eq!(kind.is_transient(), transient, "{what}");
            assert_eq!(kind.as_str(), name, "{what}");
        }
    }
}
