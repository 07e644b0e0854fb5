//! The decision for one attempt: [`Reaction`] (configured), [`Decision`] (made), and
//! [`CloneBody`], which says whether a request can be sent again.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::classify::Class;
use super::config::OperationPolicy;

/// What a policy does about one class of failure (configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// Retry after a backoff (or the server's hint), while attempts, time and budget last;
    /// then the policy's `give_up`.
    Retry,
    /// Stop and tell the caller to queue the work for later:
    /// [`Deferred`](crate::error::Deferred).
    Defer,
    /// Stop and tell the caller to try the next provider:
    /// [`FailedOver`](crate::error::FailedOver).
    Failover,
    /// Stop and hand back the response or error as it is.
    Fail,
}

/// The decision made after one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the request again after this delay.
    Retry(Duration),
    /// Stop: the caller gets [`Deferred`](crate::error::Deferred).
    Defer,
    /// Stop: the caller gets [`FailedOver`](crate::error::FailedOver).
    Failover,
    /// Stop: the caller gets the last response or error as it is.
    Fail,
    /// The attempt succeeded (or was not a failure the policy retries): the caller gets it.
    Done,
}

impl Decision {
    /// The value recorded as `contentdownload.retry.decision`: `"retry"`, `"defer"`,
    /// `"failover"`, `"fail"` or `"done"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Retry(_) => "retry",
            Decision::Defer => "defer",
            Decision::Failover => "failover",
            Decision::Fail => "fail",
            Decision::Done => "done",
        }
    }

    fn stop(reaction: Reaction) -> Decision {
        match reaction {
            Reaction::Defer => Decision::Defer,
            Reaction::Failover => Decision::Failover,
            Reaction::Fail | Reaction::Retry => Decision::Fail,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a request can be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resendable {
    /// A copy is in hand (or can be made).
    Yes,
    /// It cannot, and why.
    No(NotResendable),
}

/// Why a request cannot be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotResendable {
    /// A method that is not idempotent, without an Idempotency-Key: sent once.
    UnsafeWithoutKey,
    /// The request's body cannot be cloned: sent once.
    BodyNotCloneable,
    /// The body of a resent request could not be cloned again: not resent once more.
    NoCopyLeft,
}

impl NotResendable {
    /// In words, as the "giving up" log line says it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotResendable::UnsafeWithoutKey => "an unsafe method without an Idempotency-Key is sent once",
            NotResendable::BodyNotCloneable => "the request body cannot be cloned, so it is sent once",
            NotResendable::NoCopyLeft => "the request body cannot be cloned, so it is not resent",
        }
    }
}

/// Why a retry that the class called for did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GaveUp {
    /// The request cannot be resent (unsafe method without a key, or a body that cannot
    /// be cloned).
    NotResendable(NotResendable),
    /// `max_attempts` reached.
    Attempts(u32),
    /// The wait would end past the deadline.
    Deadline { wait: Duration },
    /// The partition's retry budget is empty.
    Budget,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GaveUp::NotResendable(why) => f.write_str(why.as_str()),
            GaveUp::Attempts(n) => write!(f, "all {n} attempts used"),
            GaveUp::Deadline { wait } => write!(f, "a wait of {}ms would pass the deadline", wait.as_millis()),
            GaveUp::Budget => f.write_str("the partition's retry budget is used up"),
        }
    }
}

/// The facts about the attempt that the decision needs besides its class.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    /// 1-based number of the attempt just made.
    pub(crate) number: u32,
    /// Time since the first attempt was sent.
    pub(crate) elapsed: Duration,
    /// The request carries an Idempotency-Key.
    pub(crate) has_key: bool,
    /// Whether the request can be sent again.
    pub(crate) resendable: Resendable,
}

impl OperationPolicy {
    /// The reaction the policy has to a class.
    pub(crate) fn reaction(&self, class: Class, has_key: bool) -> Option<Reaction> {
        Some(match class {
            Class::Success => return None,
            Class::Throttled => self.on_throttle,
            Class::Timeout => self.on_timeout,
            Class::ServerError => self.on_server_error,
            Class::Connect => self.on_connect_error,
            Class::Reset => self.on_reset,
            Class::Conflict if has_key => self.on_conflict_with_key,
            Class::Conflict | Class::Permanent => Reaction::Fail,
        })
    }

    /// Decides what follows an attempt (before the budget, which the caller checks for a
    /// `Retry`). A server hint replaces the computed backoff.
    pub(crate) fn decide(&self, class: Class, hint: Option<Duration>, attempt: Attempt) -> (Decision, Option<GaveUp>) {
        let reaction = match self.reaction(class, attempt.has_key) {
            None => return (Decision::Done, None),
            Some(Reaction::Retry) => Reaction::Retry,
            Some(other) => return (Decision::stop(other), None),
        };
        debug_assert_eq!(reaction, Reaction::Retry);
        let give_up = |why| (Decision::stop(self.give_up), Some(why));
        if attempt.number >= self.max_attempts {
            return give_up(GaveUp::Attempts(self.max_attempts));
        }
        if let Resendable::No(why) = attempt.resendable {
            return give_up(GaveUp::NotResendable(why));
        }
        let wait = match hint {
            Some(h) if self.honour_retry_after => h,
            _ => self.backoff().delay(attempt.number),
        };
        if attempt.elapsed.saturating_add(wait) > self.max_total_time() {
            return give_up(GaveUp::Deadline { wait });
        }
        (Decision::Retry(wait), None)
    }

    /// The decision when a retry is called for but the budget refuses it.
    pub(crate) fn budget_refused(&self) -> (Decision, Option<GaveUp>) {
        (Decision::stop(self.give_up), Some(GaveUp::Budget))
    }

    /// The policy's backoff.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.backoff_base_ms),
            Duration::from_millis(self.backoff_cap_ms),
            self.jitter,
        )
    }
}

/// A request body that may be copied so the request can be sent again.
///
/// The retry layer keeps a copy of every request it may retry; a body whose
/// `try_clone_body` returns `None` (a stream) is sent once. Buffered bodies (`Full`,
/// `Empty`, `Bytes`, `String`, `Vec<u8>`, `()`, `&'static str`) clone cheaply; hyper's
/// streaming `Incoming` and the boxed bodies of `http-body-util` never do. Implement it
/// for your own body type to use the layer.
pub trait CloneBody: Sized {
    /// A copy of the body for another attempt, or `None` if it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! clone_body {
    ($($ty:ty),* $(,)?) => {
        $(impl CloneBody for $ty {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        })*
    };
}

clone_body!((), Bytes, String, Vec<u8>, &'static str);

impl<D: Clone> CloneBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> CloneBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl CloneBody for hyper::body::Incoming {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> CloneBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> CloneBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

/// A copy of the request (method, URI, version, headers, extensions, body) for another
/// attempt, or `None` when the body cannot be replayed.
pub(crate) fn clone_request<B: CloneBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    // (an empty map's clone still walks its three vectors; most requests carry no header
    // here, the client adds its own below)
    if !req.headers().is_empty() {
        *copy.headers_mut() = req.headers().clone();
    }
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32, elapsed_ms: u64) -> Attempt {
        Attempt {
            number,
            elapsed: Duration::from_millis(elapsed_ms),
            has_key: false,
            resendable: Resendable::Yes,
        }
    }

    #[test]
    fn hints_replace_backoff_and_the_deadline_ends_retries() {
        let p = OperationPolicy::download();
        let hint = Some(Duration::from_secs(2));
        assert_eq!(
            p.decide(Class::Throttled, hint, attempt(1, 0)).0,
            Decision::Retry(Duration::from_secs(2))
        );
        let (d, why) = p.decide(Class::Throttled, Some(Duration::from_secs(900)), attempt(1, 0));
        assert_eq!(d, Decision::Fail);
        assert!(matches!(why, Some(GaveUp::Deadline { .. })));
        let r = OperationPolicy::resolve();
        // a Resolve whose 5xx hint passes the deadline fails over at once
        assert_eq!(
            r.decide(Class::ServerError, Some(Duration::from_secs(900)), attempt(1, 0))
                .0,
            Decision::Failover
        );
        let mut ignore = OperationPolicy::download();
        ignore.honour_retry_after = false;
        ignore.jitter = false;
        assert_eq!(
            ignore.decide(Class::Throttled, hint, attempt(2, 0)).0,
            Decision::Retry(Duration::from_millis(400))
        );
    }

    #[test]
    fn attempts_and_resendability() {
        let p = OperationPolicy::download();
        assert_eq!(p.decide(Class::Reset, None, attempt(6, 0)).1, Some(GaveUp::Attempts(6)));
        let mut a = attempt(1, 0);
        a.resendable = Resendable::No(NotResendable::UnsafeWithoutKey);
        assert_eq!(
            p.decide(Class::Reset, None, a),
            (
                Decision::Fail,
                Some(GaveUp::NotResendable(NotResendable::UnsafeWithoutKey))
            )
        );
        assert_eq!(p.decide(Class::Success, None, a).0, Decision::Done);
        assert_eq!(p.decide(Class::Permanent, None, attempt(1, 0)).0, Decision::Fail);
        assert_eq!(p.decide(Class::Conflict, None, attempt(1, 0)).0, Decision::Fail);
        let mut keyed = attempt(1, 0);
        keyed.has_key = true;
        assert!(matches!(p.decide(Class::Conflict, None, keyed).0, Decision::Retry(_)));
    }

    #[test]
    fn requests_with_buffered_bodies_clone_with_their_context() {
        let req = Request::post("https://example.org/x")
            .header("idempotency-key", "\"k\"")
            .extension(crate::context::OperationType::Resolve)
            .body(http_body_util::Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let copy = clone_request(&req).unwrap();
        assert_eq!(copy.method(), req.method());
        assert_eq!(copy.uri(), req.uri());
        assert_eq!(copy.headers(), req.headers());
        assert_eq!(
            copy.extensions().get::<crate::context::OperationType>(),
            Some(&crate::context::OperationType::Resolve)
        );
    }
}
