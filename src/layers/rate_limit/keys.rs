//! Rate keys: which configured quota a partition takes — by `host:port`, then provider
//! name, then host on any port — indexed once per limiter.

use std::collections::HashMap;

use super::config::{Quota, RateLimitConfig};

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
pub(super) fn check_key(key: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
