//! Reading the signals a response carries: throttling, and the rate a provider advertises.
//!
//! Recognised headers (names case-insensitive):
//! - `X-Rate-Limit-Limit: 50` + `X-Rate-Limit-Interval: 1s` (Crossref): a ceiling of 50/1 s.
//! - `RateLimit-Policy` (IETF httpapi draft), both the older `10;w=1, 100;w=60` form and
//!   the newer `"default";q=100;w=60` form: the ceiling is the most restrictive quota per
//!   window. A policy without a window is ignored.
//! - `RateLimit` (`"default";r=0;t=30`, or the older `limit=10, remaining=0, reset=30`),
//!   `RateLimit-Remaining` / `RateLimit-Reset`, and `X-RateLimit-Remaining` /
//!   `X-RateLimit-Reset`: when remaining is 0, hold until the reset (delta seconds, or a
//!   Unix time when it is that large), capped at 900 s.
//! - OpenAlex's credits (its API proxy, GitHub `ourresearch/openalex-api-proxy` @
//!   4faf1368d729f1288aebe85d3f1513f5698db9d3, `src/index.ts`, the 429 it builds when a
//!   request costs more than is left; pyalex's pull request #101 reads the same): besides
//!   `Retry-After`, `X-RateLimit-Remaining` (credits left, which may be above 0 when a
//!   search costs 10 and 5 are left), `X-RateLimit-Credits-Required` (this request's cost),
//!   `X-RateLimit-Onetime-Remaining` (prepaid credits) and `X-RateLimit-Reset` (seconds to
//!   midnight UTC); later versions add the same in dollars (`X-RateLimit-Remaining-USD`,
//!   `X-RateLimit-Prepaid-Remaining-USD`, `X-RateLimit-Cost-Required-USD`). Left + prepaid
//!   below the cost is a spent allowance until the reset, however near; OpenAlex's
//!   per-second limit (100/s) answers 429 with credits left, which is a rate signal.
//! - `X-RateLimit-Limit` sets a ceiling only together with a window
//!   (`X-RateLimit-Interval` or `X-RateLimit-Window`): a bare limit says nothing about a
//!   rate (GitHub's is per hour, others per minute).
//!
//! Garbage values are ignored, never an error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use crate::context::RetryAfterHint;

// Header names as constants: a lookup by `&str` parses and hashes the name on every
// response, and this runs on every response of every request.
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
static X_RATE_LIMIT_INTERVAL: HeaderName = HeaderName::from_static("x-rate-limit-interval");
static X_RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-rate-limit-limit");
static X_RATELIMIT_INTERVAL: HeaderName = HeaderName::from_static("x-ratelimit-interval");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_RATELIMIT_WINDOW: HeaderName = HeaderName::from_static("x-ratelimit-window");
static X_RATELIMIT_CREDITS_REQUIRED: HeaderName = HeaderName::from_static("x-ratelimit-credits-required");
static X_RATELIMIT_ONETIME_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-onetime-remaining");
static X_RATELIMIT_COST_REQUIRED_USD: HeaderName = HeaderName::from_static("x-ratelimit-cost-required-usd");
static X_RATELIMIT_REMAINING_USD: HeaderName = HeaderName::from_static("x-ratelimit-remaining-usd");
static X_RATELIMIT_PREPAID_REMAINING_USD: HeaderName = HeaderName::from_static("x-ratelimit-prepaid-remaining-usd");

/// Longest hold a reset header may ask for, as for Retry-After.
const MAX_HOLD: Duration = Duration::from_secs(900);

/// A spent quota whose reset is further away than this is an allowance (credits for the
/// day), not a rate: no slower rate brings it back sooner.
pub(super) const QUOTA_SPENT_AFTER: Duration = Duration::from_secs(600);

/// The longest pause for a spent allowance (a daily quota resets within a day; two allow for
/// clocks and time zones).
pub(super) const MAX_QUOTA_PAUSE: Duration = Duration::from_secs(48 * 3600);

/// Unix times are told from delta-seconds by size: nothing sends a 30-year delta.
const UNIX_TIME_THRESHOLD: u64 = 1_000_000_000;

/// What a response tells the learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// 429, or 503 with a Retry-After.
    Throttled,
    /// Any other status below 500: the provider accepted the request at this rate.
    Accepted,
    /// A 5xx without Retry-After: says nothing about the rate.
    Neutral,
}

pub(super) fn classify(status: StatusCode, headers: &HeaderMap, hint: Option<&RetryAfterHint>) -> Signal {
    if status == StatusCode::TOO_MANY_REQUESTS {
        Signal::Throttled
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        if hint.is_some() || has_retry_after(headers) {
            Signal::Throttled
        } else {
            Signal::Neutral
        }
    } else if status.is_server_error() {
        Signal::Neutral
    } else {
        Signal::Accepted
    }
}

/// Whether `Retry-After` holds a valid value (delta-seconds or an HTTP-date). Checked
/// here so that learning does not depend on the Retry-After layer being in the stack.
fn has_retry_after(headers: &HeaderMap) -> bool {
    let Some(value) = header_str(headers, &RETRY_AFTER) else {
        return false;
    };
    value.parse::<u64>().is_ok() || httpdate::parse_http_date(value).is_ok()
}

/// Advertised limits found in a response.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Advertised {
    /// The provider's rate in requests per second.
    pub(super) ceiling: Option<f64>,
    /// The quota is spent: no requests for this long.
    pub(super) exhausted_for: Option<Duration>,
    /// The allowance is spent until a reset more than [`QUOTA_SPENT_AFTER`] away: the
    /// provider is paused this long (at most two days), and its 429 is no rate signal.
    pub(super) quota_spent: Option<Duration>,
}

/// Whether a header of that name may advertise a limit: every name read here starts so.
fn is_rate_header(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.starts_with(b"ratelimit") || name.starts_with(b"x-rate")
}

#[cfg(test)]
pub(super) fn parse(headers: &HeaderMap, now: SystemTime) -> Advertised {
    parse_with(headers, || now)
}

/// [`parse`], reading the wall clock (`now`) only when a header is there to read.
pub(super) fn parse_with(headers: &HeaderMap, now: impl FnOnce() -> SystemTime) -> Advertised {
    // most responses advertise nothing: one pass over the names instead of a dozen lookups
    if !headers.keys().any(is_rate_header) {
        return Advertised::default();
    }
    let now = now();
    let mut ceiling = crossref(headers);
    if let Some(policy) = headers
        .get_all(&RATELIMIT_POLICY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .fold(None, |acc: Option<f64>, v| match (acc, ietf_policy(v)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    {
        ceiling = Some(ceiling.map_or(policy, |c| c.min(policy)));
    }
    if ceiling.is_none() {
        ceiling = x_ratelimit(headers);
    }
    let exhausted = exhausted(headers, now);
    let credits = credits_spent(headers, now);
    Advertised {
        ceiling,
        exhausted_for: exhausted.or(credits).map(|d| d.min(MAX_HOLD)),
        quota_spent: exhausted
            .filter(|d| *d > QUOTA_SPENT_AFTER)
            .or(credits)
            .map(|d| d.min(MAX_QUOTA_PAUSE)),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn positive(v: f64) -> Option<f64> {
    (v.is_finite() && v > 0.0).then_some(v)
}

/// `1s`, `60s`, `1m`, `1h`, `500ms`, or bare seconds.
fn interval(value: &str) -> Option<f64> {
    let v = value.trim();
    let (num, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = num.trim().parse().ok()?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        _ => return None,
    };
    positive(secs)
}

fn crossref(headers: &HeaderMap) -> Option<f64> {
    let limit: f64 = header_str(headers, &X_RATE_LIMIT_LIMIT)?.parse().ok()?;
    let window = interval(header_str(headers, &X_RATE_LIMIT_INTERVAL)?)?;
    positive(limit / window)
}

fn x_ratelimit(headers: &HeaderMap) -> Option<f64> {
    let limit: f64 = header_str(headers, &X_RATELIMIT_LIMIT)?.parse().ok()?;
    let window = header_str(headers, &X_RATELIMIT_INTERVAL).or_else(|| header_str(headers, &X_RATELIMIT_WINDOW))?;
    positive(limit / interval(window)?)
}

/// `key=value` parameters of a structured-field item (`;`-separated), plus its bare
/// leading member.
fn params(item: &str) -> (Option<&str>, impl Iterator<Item = (&str, &str)>) {
    let mut parts = item.split(';').map(str::trim);
    let first = parts.next().filter(|f| !f.contains('='));
    let rest = item.split(';').map(str::trim).filter_map(|p| {
        let (k, v) = p.split_once('=')?;
        Some((k.trim(), v.trim().trim_matches('"')))
    });
    (first, rest)
}

/// The most restrictive quota/window of a `RateLimit-Policy` value.
fn ietf_policy(value: &str) -> Option<f64> {
    value
        .split(',')
        .filter_map(|item| {
            let (first, params) = params(item);
            let mut quota = first.and_then(|f| f.parse::<f64>().ok());
            let mut window = None;
            for (k, v) in params {
                match k {
                    "q" => quota = v.parse().ok(),
                    "w" => window = v.parse::<f64>().ok(),
                    _ => {}
                }
            }
            positive(quota? / positive(window?)?)
        })
        .reduce(f64::min)
}

/// How long the quota stays spent, when a remaining count of 0 comes with a reset (not
/// capped).
fn exhausted(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let (remaining, reset) = ietf_remaining_reset(headers)
        .or_else(|| separate(headers, &RATELIMIT_REMAINING, &RATELIMIT_RESET))
        .or_else(|| separate(headers, &X_RATELIMIT_REMAINING, &X_RATELIMIT_RESET))?;
    if remaining != 0 {
        return None;
    }
    let reset = if reset >= UNIX_TIME_THRESHOLD {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        reset.checked_sub(now)?
    } else {
        reset
    };
    (reset > 0).then(|| Duration::from_secs(reset))
}

/// OpenAlex's spent credits (see the module docs): what is left (daily plus prepaid, in
/// credits or in dollars) is less than this request costs. Until `X-RateLimit-Reset`, or
/// `Retry-After` in seconds when there is no reset; at least a second.
fn credits_spent(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let number = |name: &HeaderName| {
        header_str(headers, name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
    };
    let short = |left: Option<f64>, prepaid: Option<f64>, cost: Option<f64>| match (left, cost) {
        (Some(left), Some(cost)) => cost > 0.0 && left + prepaid.unwrap_or(0.0).max(0.0) < cost,
        _ => false,
    };
    let spent = short(
        number(&X_RATELIMIT_REMAINING),
        number(&X_RATELIMIT_ONETIME_REMAINING),
        number(&X_RATELIMIT_CREDITS_REQUIRED),
    ) || short(
        number(&X_RATELIMIT_REMAINING_USD),
        number(&X_RATELIMIT_PREPAID_REMAINING_USD),
        number(&X_RATELIMIT_COST_REQUIRED_USD),
    );
    if !spent {
        return None;
    }
    let reset = header_str(headers, &X_RATELIMIT_RESET)
        .and_then(|v| v.parse::<u64>().ok())
        .map(|reset| {
            if reset >= UNIX_TIME_THRESHOLD {
                let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                reset.saturating_sub(now)
            } else {
                reset
            }
        })
        .or_else(|| header_str(headers, &RETRY_AFTER)?.parse::<u64>().ok())?;
    Some(Duration::from_secs(reset.max(1)))
}

fn separate(headers: &HeaderMap, remaining: &HeaderName, reset: &HeaderName) -> Option<(u64, u64)> {
    let remaining = header_str(headers, remaining)?.parse().ok()?;
    let reset = header_str(headers, reset)?.parse().ok()?;
    Some((remaining, reset))
}

/// `RateLimit: "default";r=0;t=30` or `RateLimit: limit=10, remaining=0, reset=30`.
fn ietf_remaining_reset(headers: &HeaderMap) -> Option<(u64, u64)> {
    let value = header_str(headers, &RATELIMIT)?;
    let (mut remaining, mut reset) = (None, None);
    for item in value.split(',') {
        let (_, params) = params(item);
        for (k, v) in params {
            match k {
                "r" | "remaining" => remaining = remaining.or(v.parse().ok()),
                "t" | "reset" => reset = reset.or(v.parse().ok()),
                _ => {}
            }
        }
    }
    Some((remaining?, reset?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn crossref_limit_and_interval() {
        let h = headers(&[("x-rate-limit-limit", "50"), ("x-rate-limit-interval", "1s")]);
        assert_eq!(parse(&h, at(0)).ceiling, Some(50.0));
        let h = headers(&[("x-rate-limit-limit", "120"), ("x-rate-limit-interval", "1m")]);
        assert_eq!(parse(&h, at(0)).ceiling, Some(2.0));
        let h = headers(&[("x-rate-limit-limit", "50")]);
        assert_eq!(parse(&h, at(0)).ceiling, None);
        let h = headers(&[("x-rate-limit-limit", "lots"), ("x-rate-limit-interval", "1s")]);
        assert_eq!(parse(&h, at(0)).ceiling, None);
        let h = headers(&[("x-rate-limit-limit", "50"), ("x-rate-limit-interval", "0s")]);
        assert_eq!(parse(&h, at(0)).ceiling, None);
    }

    #[test]
    fn ietf_policy_both_drafts() {
        let h = headers(&[("ratelimit-policy", "10;w=1, 100;w=60")]);
        assert!((parse(&h, at(0)).ceiling.unwrap() - 100.0 / 60.0).abs() < 1e-9);
        let h = headers(&[("ratelimit-policy", "\"default\";q=100;w=10")]);
        assert_eq!(parse(&h, at(0)).ceiling, Some(10.0));
        let h = headers(&[("ratelimit-policy", "\"burst\";q=100")]);
        assert_eq!(parse(&h, at(0)).ceiling, None);
        let h = headers(&[("ratelimit-policy", ";;=,,;w=")]);
        assert_eq!(parse(&h, at(0)).ceiling, None);
    }

    #[test]
    fn remaining_zero_holds_until_reset() {
        let h = headers(&[("ratelimit", "\"default\";r=0;t=30")]);
        assert_eq!(parse(&h, at(0)).exhausted_for, Some(Duration::from_secs(30)));
        let h = headers(&[("ratelimit", "limit=10, remaining=0, reset=7")]);
        assert_eq!(parse(&h, at(0)).exhausted_for, Some(Duration::from_secs(7)));
        let h = headers(&[("ratelimit", "\"default\";r=3;t=30")]);
        assert_eq!(parse(&h, at(0)).exhausted_for, None);
        let h = headers(&[
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000045"),
        ]);
        let adv = parse(&h, at(1_700_000_000));
        assert_eq!(adv.exhausted_for, Some(Duration::from_secs(45)));
        assert_eq!(adv.ceiling, None, "no window, no rate");
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "99999")]);
        assert_eq!(parse(&h, at(0)).exhausted_for, Some(MAX_HOLD));
        assert_eq!(
            parse(&h, at(0)).quota_spent,
            Some(Duration::from_secs(99999)),
            "an allowance"
        );
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "600")]);
        assert_eq!(parse(&h, at(0)).quota_spent, None, "ten minutes is a rate window");
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "9999999")]);
        assert_eq!(parse(&h, at(0)).quota_spent, Some(MAX_QUOTA_PAUSE));
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "-5")]);
        assert_eq!(parse(&h, at(0)).exhausted_for, None);
        let h = headers(&[("x-ratelimit-limit", "60"), ("x-ratelimit-window", "60s")]);
        assert_eq!(parse(&h, at(0)).ceiling, Some(1.0));
    }

    #[test]
    fn openalex_credits_spent() {
        // the 429 of OpenAlex's proxy for a search (10 credits) with 5 left, 3 h to midnight
        let h = headers(&[
            ("retry-after", "10800"),
            ("x-ratelimit-limit", "10000"),
            ("x-ratelimit-remaining", "5"),
            ("x-ratelimit-onetime-remaining", "0"),
            ("x-ratelimit-credits-required", "10"),
            ("x-ratelimit-reset", "10800"),
        ]);
        assert_eq!(parse(&h, at(0)).quota_spent, Some(Duration::from_secs(10800)));
        assert_eq!(parse(&h, at(0)).exhausted_for, Some(MAX_HOLD));
        // prepaid credits cover it: not spent (a per-second 429)
        let h = headers(&[
            ("x-ratelimit-remaining", "5"),
            ("x-ratelimit-onetime-remaining", "500"),
            ("x-ratelimit-credits-required", "10"),
            ("x-ratelimit-reset", "10800"),
        ]);
        assert_eq!(parse(&h, at(0)).quota_spent, None);
        // the dollar form, reset near: still the allowance
        let h = headers(&[
            ("x-ratelimit-remaining-usd", "0"),
            ("x-ratelimit-prepaid-remaining-usd", "0"),
            ("x-ratelimit-cost-required-usd", "0.001"),
            ("x-ratelimit-reset", "300"),
        ]);
        assert_eq!(parse(&h, at(0)).quota_spent, Some(Duration::from_secs(300)));
        // no reset: Retry-After
        let h = headers(&[
            ("retry-after", "7200"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-credits-required", "1"),
        ]);
        assert_eq!(parse(&h, at(0)).quota_spent, Some(Duration::from_secs(7200)));
        // OpenAlex's per-second limit: credits left
        let h = headers(&[
            ("retry-after", "1"),
            ("x-ratelimit-remaining", "9000"),
            ("x-ratelimit-credits-required", "1"),
            ("x-ratelimit-reset", "10800"),
        ]);
        assert_eq!(parse(&h, at(0)).quota_spent, None);
        assert_eq!(parse(&h, at(0)).exhausted_for, None);
    }

    #[test]
    fn throttle_signals() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &none, None), Signal::Throttled);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &none, None), Signal::Neutral);
        let ra = headers(&[("retry-after", "3")]);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &ra, None), Signal::Throttled);
        let date = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &date, None),
            Signal::Throttled
        );
        let junk = headers(&[("retry-after", "soon")]);
        assert_eq!(classify(StatusCode::SERVICE_UNAVAILABLE, &junk, None), Signal::Neutral);
        let hint = RetryAfterHint {
            delay: Duration::from_secs(1),
        };
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &none, Some(&hint)),
            Signal::Throttled
        );
        assert_eq!(classify(StatusCode::NOT_FOUND, &none, None), Signal::Accepted);
        assert_eq!(classify(StatusCode::BAD_GATEWAY, &none, None), Signal::Neutral);
    }

    proptest::proptest! {
        #[test]
        fn any_header_values_parse_without_panic(
            limit in "\\PC{0,12}",
            interval in "\\PC{0,8}",
            policy in "[0-9a-z\"=;, .-]{0,40}",
            ratelimit in "[0-9a-z\"=;, .-]{0,40}",
            remaining in "-?[0-9]{0,12}",
            reset in "-?[0-9]{0,20}",
            now in 0u64..4_000_000_000,
        ) {
            let mut h = HeaderMap::new();
            for (name, value) in [
                ("x-rate-limit-limit", &limit),
                ("x-rate-limit-interval", &interval),
                ("ratelimit-policy", &policy),
                ("ratelimit", &ratelimit),
                ("x-ratelimit-remaining", &remaining),
                ("x-ratelimit-reset", &reset),
                ("retry-after", &reset),
            ] {
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    h.insert(name, v);
                }
            }
            let adv = parse(&h, at(now));
            if let Some(c) = adv.ceiling {
                proptest::prop_assert!(c.is_finite() && c > 0.0);
            }
            if let Some(d) = adv.exhausted_for {
                proptest::prop_assert!(d > Duration::ZERO && d <= MAX_HOLD);
            }
            let _ = classify(StatusCode::SERVICE_UNAVAILABLE, &h, None);
        }
    }
}
