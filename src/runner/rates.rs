//! The run's rate table as a person reads it: the summary's rate lines, the warning for a
//! `--rate` key that matched no request, and `status`'s table.

use super::args::RateSpec;
use crate::context::PartitionKey;
use crate::layers::rate_limit::{normalize_rate_key, KeyUsage, Quota, RateLimiter, NAMED_PARTITIONS};

/// A rate as written in the summary: `1000 req/s, burst 100`.
pub(super) fn show_quota(q: Quota) -> String {
    let rate = if q.rate.fract() == 0.0 && q.rate < 1e15 {
        format!("{}", q.rate as u64)
    } else {
        let r = format!("{:.3}", q.rate);
        r.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    format!("{rate} req/s, burst {}", q.burst)
}

/// A partition as a person reads it: its host, and the provider when it is not the host.
fn show_partition(p: &PartitionKey) -> String {
    if p.provider().as_str() == p.host() {
        p.host().to_owned()
    } else {
        p.to_string()
    }
}

fn show_partitions(partitions: &[PartitionKey], more: bool) -> String {
    let mut shown: Vec<String> = partitions.iter().map(show_partition).collect();
    if more {
        shown.push("…".to_owned());
    }
    shown.join(", ")
}

/// The rate keys with where each came from: `--rate` (flag, environment or file) or
/// `built-in`. The default quota (`key: None`) is left out.
pub(super) fn rate_rows(limiter: &RateLimiter, given: &[RateSpec]) -> Vec<(KeyUsage, &'static str)> {
    limiter
        .key_usage()
        .into_iter()
        .filter_map(|usage| {
            let key = normalize_rate_key(usage.key.as_deref()?);
            let source = if given.iter().any(|g| normalize_rate_key(&g.key) == key) {
                "--rate"
            } else {
                "built-in"
            };
            Some((usage, source))
        })
        .collect()
}

/// The summary's rate lines: the default rate and the keys that applied, with the
/// partitions each was given to, and a warning (also logged) for each `--rate` key that
/// matched no request (a typo, or a host the run never reached) — unless the run made no
/// request at all (every work was already done).
pub(super) fn print_rates(limiter: &RateLimiter, given: &[RateSpec]) {
    let usage = limiter.key_usage();
    if let Some(default) = usage.iter().find(|u| u.key.is_none()) {
        let applied = if default.matched() {
            format!(": {}", show_partitions(&default.partitions, default.more))
        } else {
            String::new()
        };
        println!("default rate {} (--default-rate){applied}", show_quota(default.quota));
    }
    let rows = rate_rows(limiter, given);
    for (u, source) in rows.iter().filter(|(u, _)| u.matched()) {
        println!(
            "rate key    {} = {} ({source}): {}",
            u.key.as_deref().unwrap_or_default(),
            show_quota(u.quota),
            show_partitions(&u.partitions, u.more)
        );
    }
    let mut known: Vec<PartitionKey> = Vec::new();
    let mut more = false;
    for u in &usage {
        more |= u.more;
        for p in &u.partitions {
            if known.contains(p) {
                continue;
            }
            if known.len() < NAMED_PARTITIONS {
                known.push(p.clone());
            } else {
                more = true;
            }
        }
    }
    if known.is_empty() {
        // no request at all (every work was skipped): nothing a key could have matched
        return;
    }
    let known = show_partitions(&known, more);
    for spec in given {
        let key = normalize_rate_key(&spec.key);
        let unmatched = rows
            .iter()
            .any(|(u, _)| !u.matched() && u.key.as_deref().map(normalize_rate_key).as_deref() == Some(key.as_str()));
        if unmatched {
            let message = format!("--rate {spec}: matched no request (known partitions: {known})");
            tracing::warn!("{message}");
            println!("warning     {message}");
        }
    }
}
