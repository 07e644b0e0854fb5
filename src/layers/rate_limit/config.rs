//! Configuration of the rate limiter: a [`Quota`] per provider (or host) and a default.

use std::collections::HashMap;
use std::time::Duration;

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
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default: Quota::new(5.0, 5),
            providers: HashMap::new(),
            max_wait: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_in_flight: None,
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

/// A rate key as it is matched: trimmed, ASCII lower-case, a bare IPv6 address in brackets
/// (`::1` → `[::1]`).
pub fn normalize_rate_key(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    if key.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{key}]")
    } else {
        key
    }
}

/// Whether a rate key can match anything: not empty, not a URL or a path.
fn check_key(key: &str) -> Result<(), String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("is empty; write a provider name, a host or host:port".to_owned());
    }
    if key.contains('/') || key.contains(char::is_whitespace) || key.contains('@') {
        return Err(format!(
            "is not a rate key: write a provider name (crossref), a host (example.org, any port) \
             or host:port (127.0.0.1:8080), not a URL ({key:?})"
        ));
    }
    Ok(())
}

/// A partition's host without its port: `example.org:8080` → `example.org`,
/// `[::1]:8080` → `[::1]`; a host without a port is returned as is.
fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The kind of rate key that gave a partition its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMatch {
    /// The partition's exact `host:port`.
    HostPort,
    /// The partition's provider name.
    Provider,
    /// The partition's host, whatever its port.
    Host,
}

/// What [`RateKeys::lookup`] found: the quota and, unless it is the default, which key
/// gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateMatch {
    /// The partition's quota.
    pub quota: Quota,
    /// The index of the key in [`RateKeys::keys`], `None` for the default.
    pub key: Option<usize>,
    /// How the key matched, `None` for the default.
    pub kind: Option<KeyMatch>,
}

/// The rate keys of a [`RateLimitConfig`], indexed once: a lookup is at most three hash
/// lookups and allocates only for a provider name with upper-case letters.
#[derive(Debug, Clone)]
pub struct RateKeys {
    index: HashMap<String, usize>,
    keys: Vec<(String, Quota)>,
    default: Quota,
}

impl RateKeys {
    /// Indexes the configuration's keys (sorted as written, for a stable order).
    pub fn new(config: &RateLimitConfig) -> RateKeys {
        let mut keys: Vec<(String, Quota)> = config.providers.iter().map(|(k, q)| (k.clone(), *q)).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (normalize_rate_key(k), i))
            .collect();
        RateKeys {
            index,
            keys,
            default: config.default,
        }
    }

    /// The keys as written, with their quotas, sorted.
    pub fn keys(&self) -> &[(String, Quota)] {
        &self.keys
    }

    /// The default quota.
    pub fn default_quota(&self) -> Quota {
        self.default
    }

    /// The quota of the partition `(provider, host)`: `host:port`, then provider, then host
    /// on any port, then the default. `host` is lower-case, as a partition's is.
    pub fn lookup(&self, provider: &str, host: &str) -> RateMatch {
        let found = |key: Option<&usize>, kind| {
            key.map(|&i| RateMatch {
                quota: self.keys[i].1,
                key: Some(i),
                kind: Some(kind),
            })
        };
        let bare = host_without_port(host);
        let has_port = bare.len() < host.len();
        if self.index.is_empty() {
            return self.fallback();
        }
        let by_host_port = if has_port {
            found(self.index.get(host), KeyMatch::HostPort)
        } else {
            None
        };
        by_host_port
            .or_else(|| {
                if provider.bytes().any(|b| b.is_ascii_uppercase()) {
                    found(self.index.get(&provider.to_ascii_lowercase()), KeyMatch::Provider)
                } else {
                    found(self.index.get(provider), KeyMatch::Provider)
                }
            })
            .or_else(|| found(self.index.get(bare), KeyMatch::Host))
            .unwrap_or_else(|| self.fallback())
    }

    fn fallback(&self) -> RateMatch {
        RateMatch {
            quota: self.default,
            key: None,
            kind: None,
        }
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
    fn a_host_key_covers_every_port() {
        let cfg = RateLimitConfig::default().provider("127.0.0.1", Quota::new(1000.0, 100));
        for host in ["127.0.0.1", "127.0.0.1:18121", "127.0.0.1:80"] {
            assert_eq!(cfg.quota_for(host, host).rate, 1000.0, "{host}");
            assert_eq!(cfg.quota_for("unpaywall", host).rate, 1000.0, "{host}");
        }
        assert_eq!(cfg.quota_for("x", "127.0.0.10:1"), cfg.default);
        assert_eq!(cfg.quota_for("x", "127.0.0.1.example.org"), cfg.default);
    }

    #[test]
    fn most_specific_key_wins_host_port_then_provider_then_host() {
        let cfg = RateLimitConfig::default()
            .provider("127.0.0.1:8080", Quota::new(1.0, 1))
            .provider("unpaywall", Quota::new(2.0, 1))
            .provider("127.0.0.1", Quota::new(3.0, 1));
        let keys = RateKeys::new(&cfg);
        let m = keys.lookup("unpaywall", "127.0.0.1:8080");
        assert_eq!((m.quota.rate, m.kind), (1.0, Some(KeyMatch::HostPort)));
        assert_eq!(keys.keys()[m.key.unwrap()].0, "127.0.0.1:8080");
        let m = keys.lookup("unpaywall", "127.0.0.1:9090");
        assert_eq!((m.quota.rate, m.kind), (2.0, Some(KeyMatch::Provider)));
        let m = keys.lookup("127.0.0.1:9090", "127.0.0.1:9090");
        assert_eq!((m.quota.rate, m.kind), (3.0, Some(KeyMatch::Host)));
        // a host without a port: the provider still wins over the bare host
        let m = keys.lookup("unpaywall", "127.0.0.1");
        assert_eq!(m.kind, Some(KeyMatch::Provider));
        let m = keys.lookup("other", "example.org");
        assert_eq!((m.quota, m.key, m.kind), (cfg.default, None, None));
    }

    #[test]
    fn ipv6_hosts_with_and_without_port() {
        let cfg = RateLimitConfig::default()
            .provider("::1", Quota::new(7.0, 1))
            .provider("[::2]:8080", Quota::new(8.0, 1))
            .provider("[fe80::1]", Quota::new(9.0, 1));
        assert_eq!(cfg.quota_for("p", "[::1]:8080").rate, 7.0);
        assert_eq!(cfg.quota_for("p", "[::1]").rate, 7.0);
        assert_eq!(cfg.quota_for("p", "[::2]:8080").rate, 8.0);
        assert_eq!(cfg.quota_for("p", "[::2]:8081"), cfg.default);
        assert_eq!(cfg.quota_for("p", "[fe80::1]:1").rate, 9.0);
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("a.org:1"), "a.org");
        assert_eq!(host_without_port("a.org"), "a.org");
        assert_eq!(host_without_port("a.org:"), "a.org:");
    }

    #[test]
    fn keys_are_case_insensitive() {
        let cfg = RateLimitConfig::default()
            .provider("Example.ORG", Quota::new(4.0, 1))
            .provider("CrossRef", Quota::new(6.0, 1));
        assert_eq!(cfg.quota_for("example.org", "example.org").rate, 4.0);
        assert_eq!(cfg.quota_for("x", "example.org:8443").rate, 4.0);
        assert_eq!(cfg.quota_for("crossref", "api.crossref.org").rate, 6.0);
        assert_eq!(cfg.quota_for("CROSSREF", "api.crossref.org").rate, 6.0);
        // the builder replaces a key that differs only in case
        let cfg = cfg.provider("crossref", Quota::new(1.0, 1));
        assert_eq!(cfg.providers.len(), 2);
        assert_eq!(cfg.quota_for("crossref", "h").rate, 1.0);
        // two such keys put in the map directly are named
        let mut cfg = RateLimitConfig::default();
        cfg.providers.insert("A.org".into(), Quota::new(1.0, 1));
        cfg.providers.insert("a.org".into(), Quota::new(2.0, 1));
        let err = cfg.validate().unwrap_err();
        assert!(err.reason.contains("same key"), "{err}");
    }

    #[test]
    fn urls_are_not_rate_keys() {
        for bad in ["http://a.org", "a.org/x", "", "u@a.org", "a b"] {
            let mut cfg = RateLimitConfig::default();
            cfg.providers.insert(bad.into(), Quota::new(1.0, 1));
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
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
