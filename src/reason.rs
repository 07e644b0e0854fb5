//! [`ReasonCode`]: why a work or an attempt ended the way it did. One enum for the
//! manifest, the attempt records and the summary.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a work or an attempt ended as it did. Serialised in snake_case
/// (`"html_landing_page"`), the form the manifest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonCode {
    /// The work was already downloaded (finalized in the ledger, or the file exists): skipped.
    AlreadyDownloaded,
    /// No resolver found a candidate URL.
    NoCandidates,
    /// Every candidate was tried and none gave a valid PDF.
    AllCandidatesFailed,
    /// The server answered with a non-success status.
    HttpStatus,
    /// The server answered 429 and the operation could not wait.
    Throttled,
    /// The payload does not start with `%PDF-` within its first KiB.
    NotPdf,
    /// The payload is an HTML or XML page (a landing page, a login wall), whatever its
    /// content type said.
    HtmlLandingPage,
    /// The payload is smaller than the minimum PDF size (1 KiB).
    TooSmall,
    /// The payload does not end with `%%EOF` within its last 2 KiB.
    MissingEof,
    /// The payload ends in HTML.
    HtmlTail,
    /// The payload is larger than the configured maximum.
    TooLarge,
    /// The body ended before its declared length, or the connection was cut.
    Truncated,
    /// Connecting, or waiting for the server, timed out.
    Timeout,
    /// The connection could not be made.
    ConnectError,
    /// The operation was deferred to the second pass (a Defer decision or a long cool-down).
    Deferred,
    /// A resolver failed over to the next one.
    FailedOver,
    /// The provider is cooling down (Retry-After) beyond the wait bound.
    CoolingDown,
    /// The rate limiter's wait bound was exceeded.
    RateLimited,
    /// The provider's allowance (its credits for the day) is spent until a reset hours away:
    /// the work waits for a run after the reset (the summary and `status` say when).
    QuotaSpent,
    /// The per-work fallback budget (time, attempts) ran out.
    BudgetExhausted,
    /// A resolver answered something that could not be used.
    ResolverError,
    /// The URL is not a usable http(s) URL.
    InvalidUrl,
    /// Too many redirects, or a redirect to another scheme.
    RedirectRefused,
    /// The page's site does not allow us by its robots.txt (or its robots.txt could not be
    /// had: a server error counts as "disallow all" for the run); the page was not fetched.
    RobotsDisallowed,
    /// Writing the file failed (a full disk, permissions).
    IoError,
    /// Another worker holds the work's lease.
    LeasedElsewhere,
    /// Another worker (a sibling process on the same input) tried the work since this run
    /// started, and it failed there (its reason is in the detail), or the work came up
    /// again in this run after failing: skipped here, tried again by a later run. The
    /// attempt that failed counts the failure.
    FailedElsewhere,
    /// The run was interrupted (Ctrl-C) before the work finished.
    Cancelled,
    /// Anything else.
    Other,
}

impl ReasonCode {
    /// The snake_case name, as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::AlreadyDownloaded => "already_downloaded",
            ReasonCode::NoCandidates => "no_candidates",
            ReasonCode::AllCandidatesFailed => "all_candidates_failed",
            ReasonCode::HttpStatus => "http_status",
            ReasonCode::Throttled => "throttled",
            ReasonCode::NotPdf => "not_pdf",
            ReasonCode::HtmlLandingPage => "html_landing_page",
            ReasonCode::TooSmall => "too_small",
            ReasonCode::MissingEof => "missing_eof",
            ReasonCode::HtmlTail => "html_tail",
            ReasonCode::TooLarge => "too_large",
            ReasonCode::Truncated => "truncated",
            ReasonCode::Timeout => "timeout",
            ReasonCode::ConnectError => "connect_error",
            ReasonCode::Deferred => "deferred",
            ReasonCode::FailedOver => "failed_over",
            ReasonCode::CoolingDown => "cooling_down",
            ReasonCode::RateLimited => "rate_limited",
            ReasonCode::QuotaSpent => "quota_spent",
            ReasonCode::BudgetExhausted => "budget_exhausted",
            ReasonCode::ResolverError => "resolver_error",
            ReasonCode::InvalidUrl => "invalid_url",
            ReasonCode::RedirectRefused => "redirect_refused",
            ReasonCode::RobotsDisallowed => "robots_disallowed",
            ReasonCode::IoError => "io_error",
            ReasonCode::LeasedElsewhere => "leased_elsewhere",
            ReasonCode::FailedElsewhere => "failed_elsewhere",
            ReasonCode::Cancelled => "cancelled",
            ReasonCode::Other => "other",
        }
    }
}

impl ReasonCode {
    /// How much this reason tells about why a work has no PDF, for choosing the reason a
    /// work's outcome keeps when several sources failed: the highest wins, the first one
    /// of equal rank stays. From most to least informative:
    ///
    /// 1. `io_error` (100): our own disk or folder failed (a full disk); no source can help
    ///    until it is fixed, so it must not hide behind a source's failure.
    /// 2. Content checks of a payload a server really sent (90): `html_landing_page`,
    ///    `not_pdf`, `too_small`, `missing_eof`, `html_tail`, `too_large`.
    /// 3. `http_status` (80): the server answered, with a status (in the detail); then
    ///    `throttled` (75).
    /// 4. The server refused where to go (70 `redirect_refused`, 68 `robots_disallowed`,
    ///    65 `invalid_url`).
    /// 5. A server that answered badly (60 `truncated`, 55 `timeout`), a source that put
    ///    the work off (50 `deferred`, `cooling_down`, `rate_limited`, `quota_spent`), a
    ///    spent budget (45).
    /// 6. A resolver's unusable answer (40 `resolver_error`), anything else (35 `other`).
    /// 7. No server reached (20 `connect_error`): typically a fallback (the Wayback
    ///    Machine) out of reach, which says nothing about the publisher's answer.
    /// 8. Nothing to try (15 `all_candidates_failed`, 10 `no_candidates`, 5 `failed_over`),
    ///    and the reasons that are not failures (0).
    pub const fn informativeness(self) -> u8 {
        use ReasonCode::*;
        match self {
            IoError => 100,
            HtmlLandingPage | NotPdf | TooSmall | MissingEof | HtmlTail | TooLarge => 90,
            HttpStatus => 80,
            Throttled => 75,
            RedirectRefused => 70,
            RobotsDisallowed => 68,
            InvalidUrl => 65,
            Truncated => 60,
            Timeout => 55,
            Deferred | CoolingDown | RateLimited | QuotaSpent => 50,
            BudgetExhausted => 45,
            ResolverError => 40,
            Other => 35,
            ConnectError => 20,
            AllCandidatesFailed => 15,
            NoCandidates => 10,
            FailedOver => 5,
            AlreadyDownloaded | LeasedElsewhere | FailedElsewhere | Cancelled => 0,
        }
    }

    /// Whether a work that ended with this reason may succeed in a later run: the network,
    /// a server or our disk failed, or a provider asked us to wait. `status` is the HTTP
    /// status for [`HttpStatus`](ReasonCode::HttpStatus): 5xx, 408 and 429 may pass, any
    /// other status (404, 410, 403) is the server's answer. The answers that will not change
    /// (a content check, no candidates, a refused redirect) are `false`. The runner exits
    /// with 3 when any work failed or was deferred for a reason that may pass.
    pub const fn may_succeed_later(self, status: Option<u16>) -> bool {
        use ReasonCode::*;
        match self {
            HttpStatus => match status {
                Some(s) => s >= 500 || s == 408 || s == 429,
                None => true,
            },
            IoError | Truncated | Timeout | ConnectError | Deferred | CoolingDown | RateLimited | QuotaSpent
            | Throttled | BudgetExhausted | ResolverError | FailedOver | LeasedElsewhere | Cancelled | Other => true,
            AlreadyDownloaded | NoCandidates | AllCandidatesFailed | NotPdf | HtmlLandingPage | TooSmall
            | MissingEof | HtmlTail | TooLarge | InvalidUrl | RedirectRefused | RobotsDisallowed
            // the worker that tried it speaks for it (its own exit status)
            | FailedElsewhere => false,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: the summary's `{reason:<22}` columns need the width honoured
        f.pad(self.as_str())
    }
}

/// Classifies an error of the stack or of a body: the reason code, and whether trying the
/// same request again may help. [`crate::error::classify`] decides (walking the source
/// chain); a [`RobotsDisallowed`](crate::resolvers::RobotsDisallowed) anywhere in the
/// chain is `robots_disallowed`.
pub fn classify_error(err: &(dyn std::error::Error + 'static)) -> (ReasonCode, bool) {
    use crate::error::Kind;

    if std::iter::successors(Some(err), |&e| e.source())
        .take(16)
        .any(|e| e.is::<crate::resolvers::RobotsDisallowed>())
    {
        return (ReasonCode::RobotsDisallowed, false);
    }
    let kind = crate::error::classify(err);
    let reason = match kind {
        Kind::Deferred => ReasonCode::Deferred,
        Kind::FailedOver => ReasonCode::FailedOver,
        Kind::CoolingDown => ReasonCode::CoolingDown,
        Kind::RateLimited => ReasonCode::RateLimited,
        Kind::QuotaSpent => ReasonCode::QuotaSpent,
        Kind::ReadTimeout | Kind::Timeout => ReasonCode::Timeout,
        Kind::TooManyRedirects | Kind::UnsupportedRedirectScheme => ReasonCode::RedirectRefused,
        Kind::Connect | Kind::ConnectTimeout => ReasonCode::ConnectError,
        Kind::Reset | Kind::Truncated | Kind::Canceled => ReasonCode::Truncated,
        _ => ReasonCode::Other,
    };
    (reason, kind.is_transient())
}

/// When the provider behind `err` expects us back, if the error says: a
/// [`Deferred`]'s Retry-After, a [`CoolingDown`]'s end (with its partition's host), a
/// [`RateLimitTimeout`]'s wait (with its host), a [`QuotaSpent`]'s reset (with its host). Walks the source chain; relative waits
/// count from `now`.
pub(crate) fn retry_hint(
    err: &(dyn std::error::Error + 'static),
    now: tokio::time::Instant,
) -> (Option<String>, Option<tokio::time::Instant>) {
    use crate::error::{CoolingDown, Deferred, QuotaSpent, RateLimitTimeout};

    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(d) = e.downcast_ref::<Deferred>() {
            return (None, d.retry_after.and_then(|w| now.checked_add(w)));
        }
        if let Some(c) = e.downcast_ref::<CoolingDown>() {
            return (Some(c.partition.host().to_owned()), Some(c.until));
        }
        if let Some(r) = e.downcast_ref::<RateLimitTimeout>() {
            return (Some(r.partition.host().to_owned()), now.checked_add(r.wait));
        }
        if let Some(q) = e.downcast_ref::<QuotaSpent>() {
            return (Some(q.partition.host().to_owned()), Some(q.until));
        }
        current = e.source();
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use tokio::time::Instant;

    use super::*;
    use crate::context::{OperationType, PartitionKey};
    use crate::error::{CoolingDown, Deferred, RateLimitTimeout};

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] crate::error::BoxError);

    #[test]
    fn hints_are_found_in_the_source_chain() {
        let now = Instant::now();
        let deferred = Deferred {
            operation: OperationType::Validate,
            status: Some(StatusCode::TOO_MANY_REQUESTS),
            retry_after: Some(Duration::from_secs(30)),
            attempts: 1,
            reason: "throttled".into(),
        };
        let wrapped = Wrapped(Box::new(deferred.clone()));
        assert_eq!(retry_hint(&wrapped, now), (None, Some(now + Duration::from_secs(30))));
        let unhinted = Deferred {
            retry_after: None,
            ..deferred
        };
        assert_eq!(retry_hint(&unhinted, now), (None, None));
        let cooling = CoolingDown {
            partition: PartitionKey::new("p", "API.example.org:8443"),
            until: now + Duration::from_secs(7),
        };
        assert_eq!(
            retry_hint(&cooling, now),
            (Some("api.example.org:8443".into()), Some(now + Duration::from_secs(7)))
        );
        let limited = RateLimitTimeout {
            partition: PartitionKey::new("p", "h"),
            wait: Duration::from_secs(3),
            max_wait: Duration::from_secs(1),
        };
        assert_eq!(
            retry_hint(&limited, now),
            (Some("h".into()), Some(now + Duration::from_secs(3)))
        );
        assert_eq!(retry_hint(&std::io::Error::other("x"), now), (None, None));
    }

    #[test]
    fn a_width_pads_the_name() {
        // the summary's table: `no_candidates980000` ran the name into the count
        assert_eq!(format!("[{:<16}]", ReasonCode::NoCandidates), "[no_candidates   ]");
    }

    #[test]
    fn serde_name_is_as_str() {
        for r in [
            ReasonCode::HtmlLandingPage,
            ReasonCode::AlreadyDownloaded,
            ReasonCode::Other,
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.as_str()));
        }
    }

    #[test]
    fn the_reason_that_matters_is_the_most_informative() {
        use ReasonCode::*;
        // (kept, over): the first beats the second whichever came first
        let table = [
            (HttpStatus, ConnectError),
            (HtmlLandingPage, ConnectError),
            (NotPdf, HttpStatus),
            (TooSmall, Timeout),
            (MissingEof, ResolverError),
            (IoError, HtmlLandingPage),
            (IoError, ConnectError),
            (HttpStatus, Truncated),
            (Truncated, ConnectError),
            (Timeout, ConnectError),
            (RedirectRefused, ConnectError),
            (ConnectError, NoCandidates),
            (ConnectError, FailedOver),
            (ResolverError, NoCandidates),
            (NoCandidates, FailedOver),
        ];
        for (kept, over) in table {
            assert!(
                kept.informativeness() > over.informativeness(),
                "{kept} must beat {over}"
            );
        }
    }

    #[test]
    fn what_a_later_run_may_fix() {
        use ReasonCode::*;
        for r in [
            ConnectError,
            Timeout,
            Truncated,
            Deferred,
            CoolingDown,
            RateLimited,
            QuotaSpent,
            Throttled,
            IoError,
        ] {
            assert!(r.may_succeed_later(None), "{r}");
        }
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(HttpStatus.may_succeed_later(Some(s)), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 451] {
            assert!(!HttpStatus.may_succeed_later(Some(s)), "{s}");
        }
        for r in [
            NoCandidates,
            AllCandidatesFailed,
            NotPdf,
            HtmlLandingPage,
            TooSmall,
            MissingEof,
            HtmlTail,
            TooLarge,
            RedirectRefused,
            InvalidUrl,
            AlreadyDownloaded,
        ] {
            assert!(!r.may_succeed_later(None), "{r}");
        }
    }
}
