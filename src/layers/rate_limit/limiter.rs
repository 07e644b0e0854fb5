//! [`RateLimiter`]: keyed GCRA token buckets behind a cloneable handle.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::limit::GlobalConcurrencyLimitLayer;

use super::bucket::{secs, Bucket, Ticket};
use super::config::{Quota, RateLimitConfig, RateLimitConfigError, MIN_RATE};
use super::keys::{RateKeys, RateMatch};
use super::usage::{KeyUsage, Usage};
use crate::context::{PartitionKey, PartitionMap};
use crate::error::RateLimitTimeout;

/// Number of independently locked shards of the key map. A power of two, so that a
/// partition's shard is a mask of its hash; 16 keeps contention low with a few cores
/// without costing much memory for one key.
const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    buckets: PartitionMap<Bucket>,
    last_sweep: f64,
}

impl Shard {
    fn sweep(&mut self, now: f64, idle: f64) {
        self.buckets.retain(|_, b| b.tat() + idle > now);
        self.last_sweep = now;
    }
}

struct Shared {
    config: RateLimitConfig,
    /// `config.providers`, indexed once.
    keys: RateKeys,
    usage: Usage,
    epoch: Instant,
    shards: Box<[Mutex<Shard>]>,
    semaphore: Option<Arc<Semaphore>>,
    /// Ceilings set by [`RateLimiter::cap_rate`] (a robots.txt `Crawl-delay`), kept apart
    /// from the buckets so that they survive eviction and every later `set_rate`.
    caps: Mutex<PartitionMap<f64>>,
    /// Whether `caps` has ever had an entry: until then `set_rate` (the learner calls it
    /// on every response) and bucket creation skip its lock and lookup (~40 instructions
    /// of `layer_cost stack`'s per-request cost under callgrind).
    any_caps: AtomicBool,
    /// Where a bucket made anew takes its rate from: the learner's learned rate
    /// ([`RateLimiter::set_rate_source`]).
    rate_source: OnceLock<RateSource>,
    /// One semaphore of `max_per_host` permits per host, when that cap is set.
    hosts: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
}

/// A rate source: the rate a partition's bucket starts at when it is made anew, if it has
/// one ([`RateLimiter::set_rate_source`]).
pub(crate) type RateSource = Box<dyn Fn(&PartitionKey) -> Option<f64> + Send + Sync>;

/// Sets the bucket's rate to `rate` (already capped), at `now`.
fn retune(b: &mut Bucket, now: f64, rate: f64) {
    if b.rate == rate {
        return;
    }
    // The backlog, in intervals: reservations still ahead of now (or of the end of a hold,
    // which stays where it is). They keep their order and are re-spaced at the new
    // interval from then on.
    let start = now.max(b.held_until);
    let pending = ((b.tat() - start) / b.interval).max(0.0);
    b.anchor_time = start;
    b.anchor_index = b.issued as f64 - pending;
    b.rate = rate;
    b.interval = 1.0 / rate;
}

/// Above this many hosts, the semaphores nobody holds or waits for are dropped when a new
/// host is added.
const HOST_SWEEP_AT: usize = 1024;

/// A request's place under the per-host cap.
pub(crate) enum HostSlot {
    /// No per-host cap is configured.
    Unlimited,
    /// A permit was free: held until the response head.
    Taken(OwnedSemaphorePermit),
    /// The host is at its cap: wait on this semaphore.
    Full(Arc<Semaphore>),
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
/// drives them), at once: the next reservation uses the new rate, and requests already
/// waiting are re-spaced when the rate drops (each checks [`slot_of`](Self::slot_of) when
/// it wakes), so a provider's push-back is not delayed by a queue reserved at the old
/// rate. Buckets unused for [`RateLimitConfig::idle_timeout`] are evicted, so memory stays
/// bounded by the partitions seen recently.
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
        let keys = RateKeys::new(&config);
        let usage = Usage::new(keys.keys().len());
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                config,
                keys,
                usage,
                epoch: Instant::now(),
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                semaphore,
                caps: Mutex::new(PartitionMap::default()),
                any_caps: AtomicBool::new(false),
                rate_source: OnceLock::new(),
                hosts: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.shared.config
    }

    /// The configured quota of a partition and the rate key that gave it.
    pub fn rate_match(&self, key: &PartitionKey) -> RateMatch {
        self.shared.keys.lookup(key.provider().as_str(), key.host())
    }

    /// The configuration's rate keys, indexed.
    pub fn rate_keys(&self) -> &RateKeys {
        &self.shared.keys
    }

    /// For every rate key (in the order of [`RateKeys::keys`]) and then the default quota:
    /// the partitions whose bucket took that quota so far. A key with no partition matched
    /// no request. Recorded on a partition's first reservation, not on every request, and
    /// not by a lookup or a [`set_rate`](Self::set_rate) (a learned rate loaded at start).
    pub fn key_usage(&self) -> Vec<KeyUsage> {
        self.shared.usage.report(&self.shared.keys)
    }

    /// The configured quota of a partition (by `host:port`, then provider, then host on
    /// any port, then the default; see [`RateLimitConfig`]), ignoring any run-time
    /// [`set_rate`](Self::set_rate), but within a [`cap_rate`](Self::cap_rate) ceiling
    /// (which also takes the burst to 1).
    pub fn configured(&self, key: &PartitionKey) -> Quota {
        let found = self.rate_match(key);
        self.within_cap(key, found.quota)
    }

    /// `quota` held under the partition's [`cap_rate`](Self::cap_rate) ceiling, if any.
    fn within_cap(&self, key: &PartitionKey, quota: Quota) -> Quota {
        match self.cap_of(key) {
            Some(cap) => Quota::new(quota.rate.min(cap), 1),
            None => quota,
        }
    }

    fn cap_of(&self, key: &PartitionKey) -> Option<f64> {
        if !self.shared.any_caps.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .caps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Caps the partition's rate at `rate` requests per second with no burst, for the
    /// limiter's lifetime: every later [`set_rate`](Self::set_rate) (the learner's too) is
    /// held under it, and a bucket evicted while idle comes back under it. What a
    /// robots.txt `Crawl-delay: N` asks (`rate = 1/N`). A lower cap replaces a higher one;
    /// a non-finite or non-positive `rate` is ignored.
    pub fn cap_rate(&self, key: &PartitionKey, rate: f64) {
        if !rate.is_finite() || rate <= 0.0 {
            return;
        }
        let rate = rate.max(MIN_RATE);
        // (the caps lock is never held while taking a shard's: `with_bucket` takes them the
        // other way round)
        let lowered = {
            let mut caps = self.shared.caps.lock().unwrap_or_else(|e| e.into_inner());
            match caps.get(key) {
                Some(&cap) if cap <= rate => false,
                _ => {
                    caps.insert(key.clone(), rate);
                    self.shared.any_caps.store(true, Ordering::Release);
                    true
                }
            }
        };
        if !lowered {
            return; // in force already: the common case, one call per page checked
        }
        self.with_bucket(key, |b, _| b.burst = 1);
        self.set_rate(key, self.rate(key));
    }

    /// Seconds since the limiter's epoch, on tokio's clock (the time shared by the call under
    /// way, when there is one: `context::clock`).
    fn now(&self) -> f64 {
        crate::context::clock::now()
            .saturating_duration_since(self.shared.epoch)
            .as_secs_f64()
    }

    fn shard(&self, key: &PartitionKey) -> MutexGuard<'_, Shard> {
        // middle bits: the shard's map indexes by the low bits and tags by the top ones
        let idx = ((key.prehash() >> 32) as usize) & (SHARDS - 1);
        lock(&self.shared.shards[idx])
    }

    /// Runs `f` on the partition's bucket, creating it from the configuration if absent,
    /// and sweeps idle buckets of the shard now and then (amortised: at most once per
    /// `idle_timeout` per shard).
    fn with_bucket<T>(&self, key: &PartitionKey, f: impl FnOnce(&mut Bucket, f64) -> T) -> T {
        let now = self.now();
        let idle = self.shared.config.idle_timeout.as_secs_f64();
        let mut shard = self.shard(key);
        if now - shard.last_sweep >= idle {
            shard.sweep(now, idle);
        }
        if let Some(bucket) = shard.buckets.get_mut(key) {
            return f(bucket, now);
        }
        // A new bucket (a new partition, or one evicted while idle): its quota from the
        // configuration, its rate from the rate source (the learner) when that has one.
        // Worked out without the shard's lock: the learner takes its own lock first, then
        // a shard's (`Learner::observe` → `set_rate`), never the other way round.
        drop(shard);
        let found = self.rate_match(key);
        let quota = self.within_cap(key, found.quota);
        let learned = self
            .shared
            .rate_source
            .get()
            .and_then(|source| source(key))
            .filter(|rate| rate.is_finite())
            .map(|rate| self.capped(key, rate));
        let mut shard = self.shard(key);
        let bucket = shard.buckets.entry(key.clone()).or_insert_with(|| {
            let mut bucket = Bucket::new(quota, found.key, now);
            if let Some(rate) = learned {
                retune(&mut bucket, now, rate);
            }
            bucket
        });
        f(bucket, now)
    }

    /// Makes `source` the place a bucket made anew (a new partition, or one evicted while
    /// idle) takes its rate from, instead of the configured rate, when it gives one (still
    /// held under [`cap_rate`](Self::cap_rate)). The learner sets itself as the source, so
    /// that it need not [`set_rate`](Self::set_rate) on every response to undo an
    /// eviction. One source per limiter: `false` when one was set already (that one
    /// stays). The source is called with no lock of the limiter held.
    pub(crate) fn set_rate_source(&self, source: RateSource) -> bool {
        self.shared.rate_source.set(source).is_ok()
    }

    /// `rate` held under the partition's cap and above the minimum rate.
    fn capped(&self, key: &PartitionKey, rate: f64) -> f64 {
        self.cap_of(key).map_or(rate, |cap| rate.min(cap)).max(MIN_RATE)
    }

    /// Takes a token for the partition: reserves its next free slot and returns how long
    /// to wait for it (zero when the bucket has a token now). The caller must wait that
    /// long before sending; [`RateLimit`](super::RateLimit) does so on a tokio timer.
    ///
    /// Fails at once, reserving nothing, when the slot is further away than
    /// [`RateLimitConfig::max_wait`].
    pub fn reserve(&self, key: &PartitionKey) -> Result<Duration, RateLimitTimeout> {
        self.reserve_ticket(key).map(|t| t.wait)
    }

    /// As [`reserve`](Self::reserve), also returning the reservation's number, so that a
    /// waiter can ask [`slot_of`](Self::slot_of) again when it wakes up (the rate may have
    /// dropped meanwhile).
    pub fn reserve_ticket(&self, key: &PartitionKey) -> Result<Ticket, RateLimitTimeout> {
        let max_wait = self.shared.config.max_wait;
        self.with_bucket(key, |b, now| {
            if b.tat() < now {
                // No backlog: every slot handed out is in the past. Re-anchor at now (a
                // full bucket does not bank tokens beyond its burst).
                b.anchor(now);
            }
            let wait = secs(b.slot_of(b.issued) - now);
            if wait > max_wait {
                return Err(RateLimitTimeout {
                    partition: key.clone(),
                    wait,
                    max_wait,
                });
            }
            let index = b.issued;
            if index == 0 {
                // the bucket's first request (a new partition, or one evicted when idle):
                // the only time the key that gave its quota is recorded, not per request
                self.shared.usage.note(b.rate_key, key);
            }
            b.issued += 1;
            Ok(Ticket { wait, index })
        })
    }

    /// How long from now until reservation `index` of the partition may be sent, at the
    /// current rate: zero once its slot has come (or the bucket was evicted). A rate
    /// lowered since the reservation moves the slot later; a raised rate does not bring
    /// it earlier than first promised (the waiter's timer is already set).
    pub fn slot_of(&self, key: &PartitionKey, index: u64) -> Duration {
        let now = self.now();
        let shard = self.shard(key);
        match shard.buckets.get(key) {
            Some(b) if index < b.issued => secs(b.slot_of(index) - now),
            _ => Duration::ZERO,
        }
    }

    /// How long from now until the partition's next free slot, without reserving it: zero
    /// when a token is there now (or the partition has no bucket yet). A peek for
    /// schedulers (the pipeline's crawl frontier), which may be out of date as soon as it
    /// returns: only [`reserve`](Self::reserve) takes a slot.
    pub fn ready_in(&self, key: &PartitionKey) -> Duration {
        let now = self.now();
        let shard = self.shard(key);
        match shard.buckets.get(key) {
            // no backlog: a reservation now is re-anchored at now and sent at once
            Some(b) if b.tat() >= now => secs(b.slot_of(b.issued) - now),
            _ => Duration::ZERO,
        }
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
        let rate = self.capped(key, rate);
        self.with_bucket(key, |b, now| retune(b, now, rate));
    }

    /// Holds the partition until `until`: no request is sent before it (a provider asked
    /// us to wait, with `Retry-After` or a spent quota). That covers the reservations
    /// already handed out and still waiting: they keep their order and are re-spaced at
    /// the current rate from `until` (their waiters see the later slot when they wake).
    /// A hold that ends before the first waiting reservation's slot changes nothing.
    pub fn hold_until(&self, key: &PartitionKey, until: Instant) {
        let until = until.saturating_duration_since(self.shared.epoch).as_secs_f64();
        self.with_bucket(key, |b, now| b.hold(now, until));
    }

    /// Whether a response keeps its host's slot ([`RateLimitConfig::host_slot_with_response`]).
    pub(crate) fn host_slot_with_response(&self) -> bool {
        self.shared.config.host_slot_with_response
    }

    /// The partition's place under the per-host cap ([`RateLimitConfig::max_per_host`]),
    /// keyed by the partition's host (`host[:port]`), whatever its provider.
    pub(crate) fn host_slot(&self, key: &PartitionKey) -> HostSlot {
        let Some(cap) = self.shared.config.max_per_host else {
            return HostSlot::Unlimited;
        };
        let semaphore = {
            let mut hosts = self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner());
            match hosts.get(key.host()) {
                Some(s) => Arc::clone(s),
                None => {
                    if hosts.len() >= HOST_SWEEP_AT {
                        // held or waited for: someone else has a clone of the Arc
                        hosts.retain(|_, s| Arc::strong_count(s) > 1);
                    }
                    let s = Arc::new(Semaphore::new(cap));
                    hosts.insert(Arc::from(key.host()), Arc::clone(&s));
                    s
                }
            }
        };
        match Arc::clone(&semaphore).try_acquire_owned() {
            Ok(permit) => HostSlot::Taken(permit),
            Err(_) => HostSlot::Full(semaphore),
        }
    }

    /// How many requests to `host` (`host[:port]`, as in [`PartitionKey::host`]) hold a
    /// per-host permit now: 0 when no cap is set or the host was not seen.
    pub fn in_flight_to(&self, host: &str) -> usize {
        let (Some(cap), Ok(hosts)) = (self.shared.config.max_per_host, self.shared.hosts.lock()) else {
            return 0;
        };
        hosts.get(host).map_or(0, |s| cap.saturating_sub(s.available_permits()))
    }

    /// Forgets every bucket unused for [`RateLimitConfig::idle_timeout`] now, rather
    /// than on the next sweep.
    pub fn evict_idle(&self) {
        let now = self.now();
        let idle = self.shared.config.idle_timeout.as_secs_f64();
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
    /// Put it below [`RateLimitLayer`](super::RateLimitLayer) (and the cool-down layer):
    /// they poll a clone of the service below them only once their wait is over, so a
    /// request takes its permit when it is about to be sent, not while it waits for its
    /// partition. Above them, a request waiting for a slow partition would hold a permit
    /// (and stall requests to partitions that are ready).
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
    async fn a_cap_holds_against_set_rate_and_eviction() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 5),
            idle_timeout: Duration::from_secs(60),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("landing");
        assert!(lim.reserve(&k).unwrap().is_zero());
        lim.cap_rate(&k, 0.5);
        assert_eq!(lim.rate(&k), 0.5);
        lim.set_rate(&k, 50.0); // what a learner would do after a success
        assert_eq!(lim.rate(&k), 0.5, "held under the cap");
        // no burst: each reservation waits its 2 s after the one before
        let a = lim.reserve(&k).unwrap();
        let b = lim.reserve(&k).unwrap();
        assert!(b.saturating_sub(a) >= Duration::from_millis(1_999), "{a:?} {b:?}");
        // a higher cap does not loosen it; another partition is untouched
        lim.cap_rate(&k, 5.0);
        assert_eq!(lim.rate(&k), 0.5);
        assert_eq!(lim.rate(&key("other")), 10.0);
        // evicted while idle, the bucket comes back capped, without a burst
        tokio::time::advance(Duration::from_secs(120)).await;
        lim.evict_idle();
        assert_eq!(lim.configured(&k), Quota::new(0.5, 1));
        assert!(lim.reserve(&k).unwrap().is_zero());
        assert!(lim.reserve(&k).unwrap() >= Duration::from_millis(1_999));
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
    async fn key_usage_names_the_partitions_each_key_gave_its_quota() {
        let lim = RateLimiter::new(
            RateLimitConfig::default()
                .provider("127.0.0.1", Quota::new(1000.0, 100))
                .provider("127.0.0.l", Quota::new(1000.0, 100)),
        )
        .unwrap();
        let local = PartitionKey::new("127.0.0.1:18121", "127.0.0.1:18121");
        assert_eq!(lim.rate(&local), 1000.0);
        lim.set_rate(&local, 900.0);
        assert!(
            lim.key_usage().iter().all(|u| !u.matched()),
            "a lookup or a learned rate is not a request"
        );
        for _ in 0..3 {
            lim.reserve(&local).unwrap();
        }
        lim.reserve(&PartitionKey::new("p", "example.org")).unwrap();
        let usage = lim.key_usage();
        assert_eq!(usage.len(), 3);
        assert_eq!(usage[0].key.as_deref(), Some("127.0.0.1"));
        assert_eq!(usage[0].partitions, vec![local.clone()], "named once");
        assert_eq!(usage[1].key.as_deref(), Some("127.0.0.l"));
        assert!(!usage[1].matched());
        assert_eq!((usage[2].key.as_ref(), usage[2].quota), (None, lim.config().default));
        assert_eq!(usage[2].partitions.len(), 1);
        for port in 0..20 {
            lim.reserve(&PartitionKey::new("p", format!("127.0.0.1:{port}")))
                .unwrap();
        }
        let usage = lim.key_usage();
        assert_eq!(usage[0].partitions.len(), crate::layers::rate_limit::NAMED_PARTITIONS);
        assert!(usage[0].more);
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
    async fn ready_in_peeks_without_reserving() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(1.0, 2),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        assert_eq!(lim.ready_in(&k), Duration::ZERO, "no bucket yet");
        assert_eq!(lim.reserve(&k).unwrap(), Duration::ZERO);
        assert_eq!(lim.ready_in(&k), Duration::ZERO, "one token of the burst is left");
        assert_eq!(lim.ready_in(&k), Duration::ZERO, "a peek takes nothing");
        assert_eq!(lim.reserve(&k).unwrap(), Duration::ZERO);
        assert_eq!(lim.ready_in(&k), Duration::from_secs(1));
        assert_eq!(
            lim.reserve(&k).unwrap(),
            Duration::from_secs(1),
            "the peek was the next slot"
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(lim.ready_in(&k), Duration::from_millis(500));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(lim.ready_in(&k), Duration::ZERO);
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

    #[tokio::test(start_paused = true)]
    async fn hold_until_moves_the_waiting_reservations_too() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 1),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        // four reservations: now, +100 ms, +200 ms, +300 ms
        let tickets: Vec<_> = (0..4).map(|_| lim.reserve_ticket(&k).unwrap()).collect();
        assert_eq!(tickets[3].wait, Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(150)).await;
        // a 429 now says "wait 1 s": the two still waiting (the first two slots have
        // come and gone) go after it, in order
        lim.hold_until(&k, Instant::now() + Duration::from_secs(1));
        assert_eq!(lim.slot_of(&k, tickets[2].index), Duration::from_secs(1));
        assert_eq!(lim.slot_of(&k, tickets[3].index), Duration::from_millis(1100));
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_millis(1200));
        // a shorter hold than the backlog changes nothing
        lim.hold_until(&k, Instant::now() + Duration::from_millis(500));
        assert_eq!(lim.slot_of(&k, tickets[2].index), Duration::from_secs(1));
        assert_eq!(lim.reserve(&k).unwrap(), Duration::from_millis(1300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_during_a_hold_neither_shortens_nor_stretches_it() {
        let lim = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 1),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let k = key("a");
        let tickets: Vec<_> = (0..3).map(|_| lim.reserve_ticket(&k).unwrap()).collect();
        lim.hold_until(&k, Instant::now() + Duration::from_secs(10));
        assert_eq!(lim.slot_of(&k, tickets[1].index), Duration::from_secs(10));
        // the rate halves during the hold: the hold still ends at 10 s, the rest follow at
        // the new interval (it was 20 s for the first waiter before: the hold's 100
        // intervals re-spaced at 5/s)
        lim.set_rate(&k, 5.0);
        assert_eq!(lim.slot_of(&k, tickets[1].index), Duration::from_secs(10));
        assert_eq!(lim.slot_of(&k, tickets[2].index), Duration::from_millis(10_200));
        // and doubles: not earlier either
        lim.set_rate(&k, 20.0);
        assert_eq!(lim.slot_of(&k, tickets[1].index), Duration::from_secs(10));
        assert_eq!(lim.slot_of(&k, tickets[2].index), Duration::from_millis(10_050));
        // after the hold, a rate change re-spaces from now as before
        tokio::time::advance(Duration::from_secs(11)).await;
        lim.set_rate(&k, 10.0);
        assert_eq!(lim.reserve(&k).unwrap(), Duration::ZERO);
    }

    proptest::proptest! {
        /// Whatever the sequence of rate changes, holds and time steps, a reservation never
        /// exceeds the maximum wait and a rate read back is the one set (or the minimum).
        #[test]
        fn waits_stay_bounded(ops in proptest::collection::vec((0u8..4, 0.0f64..1000.0, 0u64..3000), 1..60)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            rt.block_on(async {
                let lim = RateLimiter::new(RateLimitConfig {
                    default: Quota::new(5.0, 3),
                    max_wait: Duration::from_secs(2),
                    ..RateLimitConfig::default()
                })
                .unwrap();
                let k = key("a");
                for (op, x, ms) in ops {
                    match op {
                        0 => {
                            lim.set_rate(&k, x);
                            assert_eq!(lim.rate(&k), x.max(MIN_RATE));
                        }
                        1 => lim.hold_until(&k, Instant::now() + Duration::from_millis(ms)),
                        2 => tokio::time::advance(Duration::from_millis(ms)).await,
                        _ => {
                            if let Ok(wait) = lim.reserve(&k) {
                                assert!(wait <= Duration::from_secs(2));
                            }
                        }
                    }
                }
            });
        }
    }
}
