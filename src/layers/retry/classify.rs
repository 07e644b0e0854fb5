//! Sorting an attempt's outcome into the classes the policy reacts to.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};
use tokio::time::Instant;

use super::config::OperationPolicy;
use crate::context::RetryAfterHint;
use crate::error::{CoolingDown, RateLimitTimeout};
use crate::layers::retry_after::hint_from_headers;
use crate::service::ReadTimeout;

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
const MAX_CHAIN: usize = 16;

/// The class of an error, and its wait hint ([`CoolingDown`] and [`RateLimitTimeout`] say
/// how long). The error's source chain is walked, so a hyper error inside a hyper-util
/// error inside a `BoxError` is found.
pub(crate) fn classify_error(err: &(dyn StdError + 'static)) -> (Class, Option<Duration>) {
    let mut cur = Some(err);
    let mut depth = 0;
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CoolingDown>() {
            return (
                Class::Throttled,
                Some(c.until.saturating_duration_since(Instant::now())),
            );
        }
        if let Some(r) = e.downcast_ref::<RateLimitTimeout>() {
            return (Class::Throttled, Some(r.wait));
        }
        if e.is::<ReadTimeout>() || e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            return (Class::Timeout, None);
        }
        if let Some(c) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if c.is_connect() {
                let timed_out = chain_has_io(e.source(), |k| k == io::ErrorKind::TimedOut);
                return (if timed_out { Class::Timeout } else { Class::Connect }, None);
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return (Class::Timeout, None);
            }
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() || h.is_body_write_aborted() {
                return (Class::Reset, None);
            }
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(class) = io_class(io.kind()) {
                return (class, None);
            }
        }
        depth += 1;
        if depth >= MAX_CHAIN {
            break;
        }
        cur = e.source();
    }
    (Class::Permanent, None)
}

fn io_class(kind: io::ErrorKind) -> Option<Class> {
    use io::ErrorKind::*;
    match kind {
        TimedOut => Some(Class::Timeout),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Some(Class::Reset),
        ConnectionRefused | NotConnected | AddrNotAvailable => Some(Class::Connect),
        _ => None,
    }
}

fn chain_has_io(mut cur: Option<&(dyn StdError + 'static)>, pred: impl Fn(io::ErrorKind) -> bool) -> bool {
    for _ in 0..MAX_CHAIN {
        let Some(e) = cur else { return false };
        if e.downcast_ref::<io::Error>().is_some_and(|io| pred(io.kind())) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PartitionKey;
    use crate::error::BoxError;

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
}
