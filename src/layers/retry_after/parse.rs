//! Parsing the provider's "come back later" hints: `Retry-After`, the IETF `RateLimit`
//! field's `t=` and `X-RateLimit-Reset`.
//!
//! Every function here takes the current wall-clock time as an argument (HTTP-dates are
//! wall-clock), so tests can fix it, and returns `None` — never panics — for anything it
//! cannot use.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode};

/// The longest hint honoured: larger values are capped to this.
pub const MAX_HINT: Duration = Duration::from_secs(900);

/// Values beyond this are treated as nonsense (a misconfigured server, a year-9999 date)
/// and give no hint at all, rather than the 900 s cap.
const ABSURD: u64 = 366 * 24 * 3600;

/// Above this an `X-RateLimit-Reset` value is read as a Unix timestamp (as GitHub and many
/// others send it) rather than as seconds from now; no provider asks for a 30-year delay.
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date in
/// IMF-fixdate, obsolete RFC 850 or asctime form (parsed by the `httpdate` crate).
///
/// Returns the delay capped at [`MAX_HINT`]; `None` for garbage, negative numbers, dates
/// in the past, or values over a year.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use contentdownload::layers::retry_after::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("Sun Nov  6 08:49:37 1994", now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after("3600", now), Some(Duration::from_secs(900)));
/// assert_eq!(parse_retry_after("-5", now), None);
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return from_secs(value.parse::<u64>().ok()?);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    until(at, now)
}

/// Parses an `X-RateLimit-Reset` value: seconds from now, or (above 10^9) a Unix
/// timestamp in seconds. Fractions are rounded up to the next whole second.
pub fn parse_rate_limit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let secs = parse_whole_secs(value)?;
    if secs > EPOCH_THRESHOLD {
        until(SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))?, now)
    } else {
        from_secs(secs)
    }
}

/// Parses the reset time of an IETF `RateLimit` field: the `t=` parameter of the
/// structured-field form (`"default";r=0;t=30`) or `reset=` of the older drafts
/// (`limit=100, remaining=0, reset=30`), in seconds from now.
///
/// The field is a structured-field list, but only one integer parameter is needed, so
/// this scans the `;`/`,`-separated items instead of pulling in a full parser.
pub fn parse_rate_limit_field(value: &str) -> Option<Duration> {
    param(value, &["t", "reset"]).and_then(from_secs)
}

/// Whether a `RateLimit` / `X-RateLimit-Remaining` value says the quota is used up.
// Header names as constants: a lookup by `&str` parses the name on every response.
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whether a header of that name is one of the rate-limit fields read here.
fn is_rate_field(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.starts_with(b"ratelimit") || name.starts_with(b"x-ratelimit")
}

fn exhausted(headers: &HeaderMap) -> bool {
    // Most responses carry neither field: one pass over the few names a response has is
    // cheaper than two lookups, each hashing a name that is not a standard header (~330
    // instructions per response in `overhead_bench` (b) under callgrind).
    if !headers.keys().any(is_rate_field) {
        return false;
    }
    let field = headers
        .get(&RATELIMIT)
        .and_then(as_str)
        .and_then(|v| param(v, &["r", "remaining"]));
    let legacy = headers
        .get(&X_RATELIMIT_REMAINING)
        .and_then(as_str)
        .and_then(|v| v.trim().parse::<u64>().ok());
    field == Some(0) || legacy == Some(0)
}

/// The hint a response carries, if any.
///
/// `Retry-After` counts on any response. The rate-limit fields (`RateLimit: t=`, then
/// `X-RateLimit-Reset`) describe the quota window of every response, so they count only
/// when the response is a 429 or 503, or when they say the quota is used up
/// (`r=0` / `X-RateLimit-Remaining: 0`).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use contentdownload::layers::retry_after::hint_from_headers;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("ratelimit", "\"default\";r=0;t=12".parse().unwrap());
/// let hint = hint_from_headers(http::StatusCode::OK, &headers, SystemTime::now());
/// assert_eq!(hint, Some(Duration::from_secs(12)));
/// ```
pub fn hint_from_headers(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    hint_from_headers_at(status, headers, || now)
}

/// [`hint_from_headers`] reading the clock only when a date has to be compared with it
/// (the layer asks on every response, and nearly none carries a hint).
pub(crate) fn hint_from_headers_at(
    status: StatusCode,
    headers: &HeaderMap,
    now: impl Fn() -> SystemTime,
) -> Option<Duration> {
    // Nearly no response carries a field read here: one pass over its few names settles it,
    // instead of a `Retry-After` lookup and then that pass (in `exhausted`) anyway.
    if !headers
        .keys()
        .any(|name| name == http::header::RETRY_AFTER || is_rate_field(name))
    {
        return None;
    }
    if let Some(hint) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(as_str)
        .and_then(|v| parse_retry_after(v, now()))
    {
        return Some(hint);
    }
    let throttled = status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    if !throttled && !exhausted(headers) {
        return None;
    }
    headers
        .get(&RATELIMIT)
        .and_then(as_str)
        .and_then(parse_rate_limit_field)
        .or_else(|| {
            headers
                .get(&X_RATELIMIT_RESET)
                .and_then(as_str)
                .and_then(|v| parse_rate_limit_reset(v, now()))
        })
}

fn as_str(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

fn from_secs(secs: u64) -> Option<Duration> {
    if secs > ABSURD {
        return None;
    }
    Some(Duration::from_secs(secs).min(MAX_HINT))
}

fn until(at: SystemTime, now: SystemTime) -> Option<Duration> {
    let delay = at.duration_since(now).ok()?;
    if delay.is_zero() {
        return None;
    }
    // a date is whole seconds; round the sub-second part of `now` up, not down
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    from_secs(secs)
}

/// Whole seconds from `"30"` or `"29.2"` (rounded up); `None` for anything else.
fn parse_whole_secs(value: &str) -> Option<u64> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = int.parse::<u64>().ok()?;
    Some(secs.saturating_add(u64::from(frac.bytes().any(|b| b != b'0'))))
}

/// The first integer parameter named one of `names` in a `;`/`,`-separated list.
fn param(value: &str, names: &[&str]) -> Option<u64> {
    value.split([';', ',']).find_map(|item| {
        let (name, v) = item.split_once('=')?;
        let name = name.trim();
        if !names.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            return None;
        }
        let v = v.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse::<u64>().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("900", now), Some(MAX_HINT));
        assert_eq!(parse_retry_after("901", now), Some(MAX_HINT));
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
        assert_eq!(parse_retry_after("40000000", now), None);
        for bad in ["", " ", "-1", "+3", "1.5", "1e3", "12abc", "0x10"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let now = at(784_111_777 - 60); // 08:48:37
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_retry_after(form, now), Some(Duration::from_secs(60)), "{form}");
        }
        // past and present: no hint
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777)),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_800)),
            None
        );
        // far future: capped; absurd: none
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 10:49:37 GMT", now), Some(MAX_HINT));
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now), None);
        assert_eq!(parse_retry_after("Sun, 32 Nov 1994 08:49:37 GMT", now), None);
    }

    #[test]
    fn sub_second_now_rounds_up() {
        let now = at(100) + Duration::from_millis(300);
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(at(103)), now),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn rate_limit_reset_delta_and_epoch() {
        let now = at(1_700_000_000);
        assert_eq!(parse_rate_limit_reset("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_rate_limit_reset("29.2", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_rate_limit_reset("1700000045", now), Some(Duration::from_secs(45)));
        assert_eq!(parse_rate_limit_reset("1699999999", now), None);
        assert_eq!(parse_rate_limit_reset("-3", now), None);
        assert_eq!(parse_rate_limit_reset("x", now), None);
        assert_eq!(parse_rate_limit_reset(".5", now), None);
    }

    #[test]
    fn ietf_field() {
        assert_eq!(
            parse_rate_limit_field("\"default\";r=0;t=30"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_rate_limit_field("limit=100, remaining=0, reset=7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_rate_limit_field("\"default\";r=0;t=-1"), None);
        assert_eq!(parse_rate_limit_field("\"default\";r=0"), None);
    }

    #[test]
    fn rate_limit_fields_count_only_when_throttled_or_exhausted() {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", HeaderValue::from_static("20"));
        assert_eq!(hint_from_headers(StatusCode::OK, &h, now), None);
        assert_eq!(
            hint_from_headers(StatusCode::TOO_MANY_REQUESTS, &h, now),
            Some(Duration::from_secs(20))
        );
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert_eq!(
            hint_from_headers(StatusCode::OK, &h, now),
            Some(Duration::from_secs(20))
        );
        // Retry-After wins over the rate-limit fields
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            hint_from_headers(StatusCode::TOO_MANY_REQUESTS, &h, now),
            Some(Duration::from_secs(3))
        );
        // a header value that is not UTF-8 is no hint
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_bytes(b"\xff1").unwrap());
        assert_eq!(hint_from_headers(StatusCode::TOO_MANY_REQUESTS, &h, now), None);
    }
}
