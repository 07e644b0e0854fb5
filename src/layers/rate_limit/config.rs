//! Configuration of the rate limiter: a [`Quota`] per provider (or host) and a default.

use std::collections::HashMap;
use std::time::Duration;

use super::keys::{check_key, normalize_rate_key, RateKeys};

/// The smallest rate a bucket accepts (one request every ~17 minutes); lower values,
/// including zero, are raised to it so that a bucket always refills.
pub const MIN_RATE: f64 = 0.001;

/// A token bucket's shape: `rate` tokens per second refill, `burst` tokens of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Refill rate in requests per second (> 0).
    pub rate: f64,
    /// Capacity: how many requests may go back to back after an idle period (≥ 1).
    pub burst: u32,
}

impl Quota {
    /// A quota of `rate` requests per second with a burst of `burst`.
    pub const fn new(rate: f64, burst: u32) -> Quota {
        Quota { rate, burst }
    }

    /// A quota of `rate` requests per second with no burst (requests evenly spaced).
    pub const fn per_second(rate: f64) -> Quota {
        Quota { rate, burst: 1 }
    }

    fn validate(&self, field: &str) -> Result<(), RateLimitConfigError> {
        if !self.rate.is_finite() || self.rate < MIN_RATE {
            return Err(RateLimitConfigError::new(
                format!("{field}.rate"),
                format!(
                    "must be a finite number of requests per second ≥ {MIN_RATE}, got {}",
                    self.rate
                ),
            ));
        }
        if self.burst == 0 {
            return Err(RateLimitConfigError::new(
                format!("{field}.burst"),
                "must be at least 1 (1 means no burst)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Configuration of a [`RateLimiter`](super::RateLimiter).
///
/// `providers` is keyed by *rate keys*: a provider name (`crossref`), a host, which covers
/// that host on any port (`127.0.0.1`, `api.crossref.org`, `[::1]`), or a `host:port`
/// (`127.0.0.1:8080`, `[::1]:8080`). Keys are case-insensitive. A partition takes the
/// quota of the most specific key that names it:
///
/// 1. `host:port`, when the partition's host carries a port (the URI wrote one);
/// 2. the provider name;
/// 3. the host, whatever its port;
/// 4. otherwise `default`.
///
/// A provider name sits above a bare host because it is the narrower choice: one provider
/// (an API) is one service, while a host may serve several (a CDN, a loopback test server),
/// and the provider's quota is the one its operators publish. A `host:port` names one
/// server exactly and wins over both.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// The quota of partitions that `providers` does not name. Default: 5 req/s, burst 5.
    pub default: Quota,
    /// Quotas by rate key: a provider name, a host (any port) or `host:port`.
    pub providers: HashMap<String, Quota>,
    /// The longest a request may wait for its slot; past it the request fails at once
    /// with [`RateLimitTimeout`](crate::error::RateLimitTimeout). Default: 30 s.
    pub max_wait: Duration,
    /// A partition unused for this long is forgotten (its bucket is full again by then,
    /// so nothing is lost except a run-time `set_rate`). Default: 5 minutes.
    pub idle_timeout: Duration,
    /// A global cap on requests in flight, shared by every stack built from the same
    /// limiter (see [`RateLimiter::global_concurrency_layer`](super::RateLimiter::global_concurrency_layer)).
    /// Default: none.
    pub max_in_flight: Option<usize>,
    /// A cap on requests in flight to one host (the partition's `host[:port]`, whatever the
    /// provider), counted from the end of the token wait to the response head (or, with
    /// [`host_slot_with_response`](Self::host_slot_with_response), until the response is
    /// dropped). A request over the cap waits, before taking a token, holding nothing.
    /// Default: none (the runner's `--max-per-host` sets 4).
    pub max_per_host: Option<usize>,
    /// With [`max_per_host`](Self::max_per_host): a response keeps its host's slot until
    /// it is dropped (its [`HostPermit`](super::HostPermit) extension), so a download counts
    /// until its body is read, not only until its head. Read each body before holding more
    /// responses to one host than the cap: responses collected first and read later (a
    /// `join_all` of more requests to one host than the cap) would wait for each other
    /// forever. Default: off (the slot is free at the head, as with tower's
    /// `ConcurrencyLimit`); the runner turns it on.
    pub host_slot_with_response: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default: Quota::new(5.0, 5),
            providers: HashMap::new(),
            max_wait: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_in_flight: None,
            max_per_host: None,
            host_slot_with_response: false,
        }
    }
}

impl RateLimitConfig {
    /// Adds (or replaces) the quota of a rate key: a provider name, a host (any port) or
    /// `host:port`. A key that differs from an existing one only in case replaces it.
    pub fn provider(mut self, key: impl Into<String>, quota: Quota) -> Self {
        let key = key.into();
        let normal = normalize_rate_key(&key);
        self.providers.retain(|k, _| normalize_rate_key(k) != normal);
        self.providers.insert(key, quota);
        self
    }

    /// Checks every field; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        self.default.validate("default")?;
        let mut keys: Vec<&String> = self.providers.keys().collect();
        keys.sort();
        let mut seen: HashMap<String, &str> = HashMap::with_capacity(keys.len());
        for name in keys {
            let field = format!("providers.{name}");
            if let Err(reason) = check_key(name) {
                return Err(RateLimitConfigError::new(field, reason));
            }
            if let Some(other) = seen.insert(normalize_rate_key(name), name) {
                return Err(RateLimitConfigError::new(
                    field,
                    format!("is the same key as `{other}` (keys are case-insensitive); keep one"),
                ));
            }
            self.providers[name].validate(&field)?;
        }
        if self.idle_timeout.is_zero() {
            return Err(RateLimitConfigError::new(
                "idle_timeout".to_owned(),
                "must be longer than zero".to_owned(),
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err(RateLimitConfigError::new(
                "max_in_flight".to_owned(),
                "must be at least 1, or unset for no cap".to_owned(),
            ));
        }
        if self.max_per_host == Some(0) {
            return Err(RateLimitConfigError::new(
                "max_per_host".to_owned(),
                "must be at least 1, or unset for no cap".to_owned(),
            ));
        }
        Ok(())
    }

    /// The quota of a partition (`host` as in [`PartitionKey::host`](crate::context::PartitionKey::host),
    /// with `:port` when the URI wrote one): by `host:port`, then provider name, then host
    /// on any port, then the default (see the type's docs).
    ///
    /// This builds the key index on each call; a [`RateLimiter`](super::RateLimiter) builds
    /// it once.
    pub fn quota_for(&self, provider: &str, host: &str) -> Quota {
        RateKeys::new(self).lookup(provider, host).quota
    }
}

/// A [`RateLimitConfig`] field is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit configuration: `{field}` {reason}")]
pub struct RateLimitConfigError {
    /// The field, as a path (`providers.crossref.rate`).
    pub field: String,
    /// What is wrong with it and what is expected.
    pub reason: String,
}

impl RateLimitConfigError {
    fn new(field: String, reason: String) -> Self {
        RateLimitConfigError { field, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_provider_then_host_then_default() {
        let cfg = RateLimitConfig::default()
            .provider("crossref", Quota::new(50.0, 10))
            .provider("api.unpaywall.org", Quota::per_second(10.0));
        assert_eq!(cfg.quota_for("crossref", "api.crossref.org").rate, 50.0);
        assert_eq!(cfg.quota_for("unpaywall", "api.unpaywall.org").rate, 10.0);
        assert_eq!(cfg.quota_for("other", "example.org"), cfg.default);
    }

    #[test]
    fn errors_name_the_field() {
        let cfg = RateLimitConfig::default().provider("crossref", Quota::new(0.0, 1));
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, "providers.crossref.rate");
        let cfg = RateLimitConfig {
            default: Quota::new(1.0, 0),
            ..RateLimitConfig::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("`default.burst`"));
        let cfg = RateLimitConfig {
            max_in_flight: Some(0),
            ..RateLimitConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().field, "max_in_flight");
    }
}
