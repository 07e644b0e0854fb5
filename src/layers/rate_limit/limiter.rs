//! [`RateLimiter`]: keyed GCRA token buckets behind a cloneable handle.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::limit::GlobalConcurrencyLimitLayer;

use super::config::{Quota, RateLimitConfig, RateLimitConfigError, MIN_RATE};
use crate::context::PartitionKey;
use crate::error::RateLimitTimeout;

/// Number of independently locked shards of the key map. A power of two, so that a
/// partition's shard is a mask of its hash; 16 keeps contention low with a few cores
/// without costing much memory for one key.
const SHARDS: usize = 16;

/// One partition's bucket, kept as a GCRA "theoretical arrival time" (`tat`): the time
/// at which the bucket would be full again. It is one number per key, so taking a token
/// is a comparison and an addition under a short lock.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    burst: u32,
    /// 1 / rate.
    interval: Duration,
    /// Offset from the limiter's epoch.
    tat: Duration,
}

impl Bucket {
    fn new(quota: Quota, now: Duration) -> Bucket {
        let rate = quota.rate.max(MIN_RATE);
        Bucket {
            rate,
            burst: quota.burst.max(1),
            interval: Duration::from_secs_f64(1.0 / rate),
            tat: now,
        }
    }

    /// How far ahead of `tat` a request may be admitted: `burst - 1` intervals.
    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst - 1)
    }
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<PartitionKey, Bucket>,
    last_sweep: Duration,
}

impl Shard {
    fn sweep(&mut self, now: Duration, idle: Duration) {
        self.buckets.retain(|_, b| b.tat + idle > now);
        self.last_sweep = now;
    }
}

struct Shared {
    config: RateLimitConfig,
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    semaphore: Option<Arc<Semaphore>>,
}

/// Keyed token buckets, one per partition `(provider, host)`, behind a cheap cloneable
/// handle: every clone (and every stack the handle is given to) shares the same buckets,
/// so a provider's rate holds across all operation types.
///
/// Each bucket is a GCRA (generic cell rate algorithm) cell: taking a token *reserves*
/// the next free slot for the key and returns how long to wait for it, so waiters are
/// served in the order they asked (FIFO per key; one busy task cannot starve others) and
/// nobody polls in a loop — the caller sleeps on a tokio timer until its slot. A slot
/// further away than [`RateLimitConfig::max_wait`] is not reserved: the call fails at once
/// with [`RateLimitTimeout`].
///
/// Rates change at run time with [`set_rate`](Self::set_rate) (the provider-learning layer
/// drives them). Buckets unused for [`RateLimitConfig::idle_timeout`] are evicted, so
/// memory stays bounded by the partitions seen recently.
///
/// Why our own code and not `governor`: governor's quotas are fixed once a limiter is
/// built, and learning needs to change a key's rate while requests are waiting.
///
/// # Example
///
/// ```
/// use contentdownload::context::PartitionKey;
/// use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(RateLimitConfig::default().provider("crossref", Quota::new(50.0, 10)))?;
/// let key = PartitionKey::new("crossref", "api.crossref.org");
/// assert_eq!(limiter.rate(&key), 50.0);
/// limiter.set_rate(&key, 20.0);
/// assert_eq!(limiter.rate(&key), 20.0);
/// let wait = limiter.reserve(&key)?; // the bucket is full: no wait
/// assert!(wait.is_zero());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.shared.config)
            .field("keys", &self.len())
            .finish()
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A poisoned shard only means a thread panicked while holding it; the buckets are
    // plain numbers and still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RateLimiter {
    /// A limiter with the given configuration, checked first.
    pub fn new(config: RateLimitConfig) -> Result<RateLimiter, RateLimitConfigError> {
        config.validate()?;
        let semaphore = config.max_in_flight.map(|n| Arc::new(Semaphore::new(n)));
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                config,
                epoch: Instant::now(),
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                semaphore,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.shared.config
    }

    /// The configured quota of a partition (by provider, then host, then the default),
    /// ignoring any run-time [`set_rate`](Self::set_rate).
    pub fn configured(&self, key: &PartitionKey) -> Quota {
        self.shared.config.quota_for(key.provider().as_str(), key.host())
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.epoch)
    }

    fn shard(&self, key: &PartitionKey) -> MutexGuard<'_, Shard> {
        let idx = (self.shared.hasher.hash_one(key) as usize) & (SHARDS - 1);
        lock(&self.shared.shards[idx])
    }

    /// Runs `f` on the partition's bucket, creating it from the configuration if absent,
    /// and sweeps idle buckets of the shard now and then (amortised: at most once per
    /// `idle_timeout` per shard).
    fn with_bucket<T>(&self, key: &PartitionKey, f: impl FnOnce(&mut Bucket, Duration) -> T) -> T {
        let now = self.now();
        let idle = self.shared.config.idle_timeout;
        let mut shard = self.shard(key);
        if now.saturating_sub(shard.last_sweep) >= idle {
            shard.sweep(now, idle);
        }
        if let Some(bucket) = shard.buckets.get_mut(key) {
            return f(bucket, now);
        }
        let bucket = shard
            .buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(self.configured(key), now));
        f(bucket, now)
    }

    /// Takes a token for the partition: reserves its next free slot and returns how long
    /// to wait for it (zero when the bucket has a token now). The caller must wait that
    /// long before sending; [`RateLimit`](super::RateLimit) does so on a tokio timer.
    ///
    /// Fails at once, reserving nothing, when the slot is further away than
    /// [`RateLimitConfig::max_wait`].
    pub fn reserve(&self, key: &PartitionKey) -> Result<Duration, RateLimitTimeout> {
        let max_wait = self.shared.config.max_wait;
        self.with_bucket(key, |b, now| {
            let tat = b.tat.max(now);
            let slot = tat.saturating_sub(b.tolerance()).max(now);
            let wait = slot - now;
            if wait > max_wait {
                return Err(RateLimitTimeout {
                    partition: key.clone(),
                    wait,
                    max_wait,
                });
            }
            b.tat = tat + b.interval;
            Ok(wait)
        })
    }

    /// The partition's current rate in requests per second: the last
    /// [`set_rate`](Self::set_rate), or the configured rate.
    pub fn rate(&self, key: &PartitionKey) -> f64 {
        let shard = self.shard(key);
        match shard.buckets.get(key) {
            Some(b) => b.rate,
            None => self.configured(key).rate,
        }
    }

    /// Changes the partition's rate at once (values below 0.001 req/s are raised to it;
    /// a non-finite value is ignored). Slots already handed out stand; the requests queued
    /// behind them are re-spaced at the new rate, so the next reservation reflects it.
    pub fn set_rate(&self, key: &PartitionKey, rate: f64) {
        if !rate.is_finite() {
            return;
        }
        let rate = rate.max(MIN_RATE);
        self.with_bucket(key, |b, now| {
            if b.rate == rate {
                return;
            }
            let interval = Duration::from_secs_f64(1.0 / rate);
            // The backlog (tat - now) is a number of reserved intervals; keep the number,
            // change their length.
            if let Some(backlog) = b.tat.checked_sub(now) {
                let scaled = backlog.as_secs_f64() * interval.as_secs_f64() / b.interval.as_secs_f64();
                b.tat = now + Duration::from_secs_f64(scaled);
            }
            b.rate = rate;
            b.interval = interval;
        });
    }

    /// Holds the partition until `until`: no slot is handed out before it (a provider
    /// said its quota is spent until then). A later `until` than the current backlog wins;
    /// an earlier one changes nothing.
    pub fn hold_until(&self, key: &PartitionKey, until: Instant) {
        let until = until.saturating_duration_since(self.shared.epoch);
        self.with_bucket(key, |b, _| {
            let held = until + b.tolerance();
            if held > b.tat {
                b.tat = held;
            }
        });
    }

    /// Forgets every bucket unused for [`RateLimitConfig::idle_timeout`] now, rather
    /// than on the next sweep.
    pub fn evict_idle(&self) {
        let now = self.now();
        let idle = self.shared.config.idle_timeout;
        for shard in self.shared.shards.iter() {
            lock(shard).sweep(now, idle);
        }
    }

    /// How many partitions have a bucket.
    pub fn len(&self) -> usize {
        self.shared.shards.iter().map(|s| lock(s).buckets.len()).sum()
    }

    /// Whether no partition has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A tower layer capping requests in flight across every stack that adds it (they
    /// share one semaphore of [`RateLimitConfig::max_in_flight`] permits); `None` when
    /// no cap is configured.
    ///
    /// Put it above the per-attempt layers (around the whole stack, or above retry) so that
    /// it counts operations in flight; a request waiting for a rate-limit slot below it
    /// holds its permit while it waits.
    pub fn global_concurrency_layer(&self) -> Option<GlobalConcurrencyLimitLayer> {
        self.shared
            .semaphore
            .clone()
            .map(GlobalConcurrencyLimitLayer::with_semaphore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> PartitionKey {
        PartitionKey::new(p, "example.org")
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_spacing() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 3),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        let waits: Vec<u128> = (0..5).map(|_| lim.reserve(&k).unwrap().as_millis()).collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn set_rate_respaces_the_backlog() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::per_second(1.0),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        assert_eq!(lim.reserve(&k).unwrap(), Duration::ZERO);
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_secs(1));
        lim.set_rate(&k, 10.0);
        // two reserved intervals of 1 s become two of 100 ms
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_millis(200));
        lim.set_rate(&k, f64::NAN);
        assert_eq!(lim.rate(&k), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn hold_until_delays_the_next_slot() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 5),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        lim.hold_until(&k, Instant::now() + Duration::from_secs(2));
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_secs(2));
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_millis(2100));
    }
}
