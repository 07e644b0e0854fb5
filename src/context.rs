//! Request context: what a layer needs to know about a request, carried in
//! [`http::Extensions`].
//!
//! Every type here is set by the caller (or by the pipeline) as a request
//! extension and read by the layers, with a sensible default when absent:
//!
//! | type | meaning | default when absent |
//! | --- | --- | --- |
//! | [`OperationType`] | what the request is for | [`OperationType::Download`] |
//! | [`Provider`] | who is being called | the request's host |
//! | [`IdempotencyKey`] | stable key of one logical operation | none (the idempotency layer derives one) |
//! | [`WorkId`] | the work this request serves | none |
//! | [`AttemptNumber`] | which attempt of the operation this is (set by the retry layer) | 1 |
//!
//! Layers report back to the ones above them through response extensions:
//! [`RetryAfterHint`], [`RateLimitWait`] and [`CooldownWait`].
//!
//! The partition key, [`PartitionKey`] = `(provider, host)`, is shared by the
//! rate limiter, the learner, the Retry-After cool-down and the retry budget.
//!
//! # Example
//!
//! ```
//! use contentdownload::context::{OperationType, PartitionKey, Provider, RequestContextExt, WorkId};
//!
//! let mut req = http::Request::get("https://api.unpaywall.org/v2/10.1000/xyz")
//!     .extension(OperationType::Resolve)
//!     .extension(Provider::new("unpaywall"))
//!     .body(())
//!     .unwrap();
//! req.set_work_id(WorkId::new("W2741809807"));
//!
//! assert_eq!(req.operation(), OperationType::Resolve);
//! let key = PartitionKey::of(&mut req);
//! assert_eq!(key.provider().as_str(), "unpaywall");
//! assert_eq!(key.host(), "api.unpaywall.org");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use http::uri::Authority;
use http::{Request, Uri};
use serde::{Deserialize, Serialize};

/// What a request is for; the retry policy (and the stack) is chosen by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// Fetching a payload (a PDF). The default.
    #[default]
    Download,
    /// Checking a candidate URL (a HEAD or a ranged GET).
    Validate,
    /// Asking a resolver API where a work's PDF lives.
    Resolve,
    /// Extracting links from a landing page.
    Extract,
    /// Fetching a page of a listing (an OpenAlex search page).
    ManifestFetch,
}

impl OperationType {
    /// Every operation type, in declaration order.
    pub const ALL: [OperationType; 5] = [
        OperationType::Download,
        OperationType::Validate,
        OperationType::Resolve,
        OperationType::Extract,
        OperationType::ManifestFetch,
    ];

    /// The stable snake_case name (`"manifest_fetch"`), as used in telemetry and configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationType::Download => "download",
            OperationType::Validate => "validate",
            OperationType::Resolve => "resolve",
            OperationType::Extract => "extract",
            OperationType::ManifestFetch => "manifest_fetch",
        }
    }

    /// The operation type of a request: its extension, or [`OperationType::Download`].
    pub fn of<B>(req: &Request<B>) -> OperationType {
        req.extensions().get::<OperationType>().copied().unwrap_or_default()
    }
}

impl fmt::Display for OperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no [`OperationType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation type {0:?}: expected one of download, validate, resolve, extract, manifest_fetch")]
pub struct ParseOperationTypeError(String);

impl FromStr for OperationType {
    type Err = ParseOperationTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        OperationType::ALL
            .into_iter()
            .find(|op| op.as_str() == norm || (norm == "manifestfetch" && *op == OperationType::ManifestFetch))
            .ok_or_else(|| ParseOperationTypeError(s.to_owned()))
    }
}

macro_rules! shared_str {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string; cloning the value afterwards is a reference-count increment.
            pub fn new(value: impl Into<Arc<str>>) -> Self {
                $name(value.into())
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name::new(value)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name::new(value)
            }
        }
    };
}

shared_str! {
    /// Who is being called (`"unpaywall"`, `"crossref"`, ...). Together with the host it
    /// partitions rate limits, learning and cool-downs. Defaults to the request's host.
    Provider
}

shared_str! {
    /// The stable key of one logical operation, the same across its retries. Sent as the
    /// `Idempotency-Key` header on unsafe methods by the idempotency layer.
    IdempotencyKey
}

shared_str! {
    /// The work a request serves (an OpenAlex id such as `W2741809807`, or a DOI), for
    /// telemetry, the ledger and the manifest.
    WorkId
}

/// Which attempt of one logical operation a request is: 1 for the first send, 2 for the
/// first resend, and so on. Absent means 1: the retry layer sets it on every resend and
/// leaves it out of the first attempt (read it with [`AttemptNumber::of`]).
///
/// OpenTelemetry's `http.request.resend_count` is `AttemptNumber - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptNumber(pub u32);

impl AttemptNumber {
    /// The attempt number of a request (1 when unset).
    pub fn of<B>(req: &Request<B>) -> u32 {
        req.extensions().get::<AttemptNumber>().map_or(1, |a| a.0.max(1))
    }
}

/// Response extension: the provider's hint of when to try again (from `Retry-After`,
/// `X-RateLimit-Reset` or `RateLimit: t=`), attached by the Retry-After layer and read by
/// the retry policy, the learner and telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfterHint {
    /// How long the provider asked to wait, capped at 900 s.
    pub delay: std::time::Duration,
}

/// Response extension: how long the rate limiter held this attempt before sending it.
/// Present only when it held it: absent means no wait (read it with [`RateLimitWait::of`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitWait(pub std::time::Duration);

impl RateLimitWait {
    /// How long the rate limiter held the attempt of `response` (zero when it did not).
    ///
    /// ```
    /// use std::time::Duration;
    /// use contentdownload::context::RateLimitWait;
    ///
    /// let mut response = http::Response::new(());
    /// assert_eq!(RateLimitWait::of(&response), Duration::ZERO);
    /// response.extensions_mut().insert(RateLimitWait(Duration::from_millis(250)));
    /// assert_eq!(RateLimitWait::of(&response), Duration::from_millis(250));
    /// ```
    pub fn of<B>(response: &http::Response<B>) -> std::time::Duration {
        response
            .extensions()
            .get::<RateLimitWait>()
            .map_or(std::time::Duration::ZERO, |w| w.0)
    }
}

/// Response extension: how long a partition's cool-down held this attempt before sending it.
/// Present only when it held it: absent means no wait (read it with [`CooldownWait::of`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CooldownWait(pub std::time::Duration);

impl CooldownWait {
    /// How long a cool-down held the attempt of `response` (zero when it did not).
    pub fn of<B>(response: &http::Response<B>) -> std::time::Duration {
        response
            .extensions()
            .get::<CooldownWait>()
            .map_or(std::time::Duration::ZERO, |w| w.0)
    }
}

/// The partition `(provider, host)` shared by the rate limiter, the learner, the
/// Retry-After cool-down and the retry budget.
///
/// The host is lower-cased and carries the port when the URI names one explicitly
/// (`127.0.0.1:8080`), so two local servers are two partitions. Cloning is cheap (one
/// reference count).
///
/// The key hashes its parts once, when it is made: every layer looks it up in a map of its
/// own (buckets, learned state, cool-downs, budgets), and hashing two strings in each of
/// them on every request was a measurable part of the stack's cost. Its parts sit behind
/// one `Arc`, so that a key is one pointer in the futures that hold it (the retry-after and
/// learning layers' futures, moved by every layer above them) and one count to clone.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "PartitionParts", into = "PartitionParts")]
pub struct PartitionKey(Arc<KeyParts>);

struct KeyParts {
    provider: Provider,
    host: Arc<str>,
    hash: u64,
}

/// How a [`PartitionKey`] is written (the hash is not: it is seeded per process).
#[derive(Clone, Serialize, Deserialize)]
struct PartitionParts {
    provider: Provider,
    host: Arc<str>,
}

impl From<PartitionParts> for PartitionKey {
    fn from(parts: PartitionParts) -> Self {
        // a key read back (the learner's saved state) is shared with the keys the
        // requests make, so that the maps it goes into compare them by pointer
        recent::shared(PartitionKey::from_parts(parts.provider, parts.host))
    }
}

impl From<PartitionKey> for PartitionParts {
    fn from(key: PartitionKey) -> Self {
        PartitionParts {
            provider: key.0.provider.clone(),
            host: key.0.host.clone(),
        }
    }
}

impl PartialEq for PartitionKey {
    fn eq(&self, other: &Self) -> bool {
        // Pointers first: a map's key and a request's key are nearly always clones of the
        // key remembered per thread; and `Arc<str>`'s own `==` compares the bytes even when
        // both are the same allocation (two `memcmp` calls per map lookup).
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.hash == b.hash && same(&a.provider.0, &b.provider.0) && same(&a.host, &b.host))
    }
}

impl Eq for PartitionKey {}

impl Hash for PartitionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for PartitionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PartitionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.0.provider, &self.0.host).cmp(&(&other.0.provider, &other.0.host))
    }
}

impl PartitionKey {
    /// A partition from its parts.
    pub fn new(provider: impl Into<Provider>, host: impl AsRef<str>) -> Self {
        PartitionKey::from_parts(provider.into(), Arc::from(host.as_ref().to_ascii_lowercase()))
    }

    fn from_parts(provider: Provider, host: Arc<str>) -> Self {
        // Seeded once per process, so that hosts chosen to collide cannot be made to.
        // foldhash (already in the tree through hashbrown) rather than std's SipHash-1-3:
        // every request makes one key, and SipHash of its two strings was ~250 of the
        // ~13k instructions the stack adds per request (`layer_cost stack` under callgrind).
        static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
        let hash = SEED
            .get_or_init(foldhash::fast::RandomState::default)
            .hash_one((provider.as_str(), &*host));
        PartitionKey(Arc::new(KeyParts { provider, host, hash }))
    }

    /// The hash computed when the key was made (seeded per process).
    pub(crate) fn prehash(&self) -> u64 {
        self.0.hash
    }

    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.0.provider
    }

    /// The host (with `:port` when the URI gave one).
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// The partition of a request, computed without caching it: the [`Provider`] extension
    /// (or the host) and the URI's host. A request with no host (a relative URI) gets the
    /// host `""`.
    ///
    /// The keys last made on each thread are remembered (a few per thread), so that a
    /// request to a partition seen recently gets its key without allocating or hashing.
    pub fn compute<B>(req: &Request<B>) -> PartitionKey {
        if let Some(key) = req.extensions().get::<PartitionKey>() {
            return key.clone();
        }
        PartitionKey::made_for(req)
    }

    /// [`compute`](Self::compute) for a request known to carry no key.
    fn made_for<B>(req: &Request<B>) -> PartitionKey {
        let written = host_port(req.uri()).unwrap_or_default();
        let provider = req.extensions().get::<Provider>();
        if let Some(key) = recent::find(provider, written) {
            return key;
        }
        let host = host_arc_of(written);
        let provider = provider.cloned().unwrap_or_else(|| Provider(host.clone()));
        let key = PartitionKey::from_parts(provider, host);
        if *key.0.host == *written {
            // (a host written with upper-case letters is not remembered: its key's host is
            // not the host as written, which is what a lookup compares)
            let key = recent::shared(key);
            recent::remember(&key);
            return key;
        }
        key
    }

    /// [`of`](Self::of) for a layer of a [`Stack`](crate::service::Stack) built to take the
    /// key its retry layer shares for the call under way (`clock`'s documentation).
    pub(crate) fn of_call<B>(req: &mut Request<B>, shared: bool) -> PartitionKey {
        if shared {
            if let Some(key) = clock::key() {
                return key;
            }
        }
        PartitionKey::of(req)
    }

    /// The partition of a request, cached in its extensions so that the layers below
    /// find it without recomputing (the first layer to ask pays one allocation).
    pub fn of<B>(req: &mut Request<B>) -> PartitionKey {
        if let Some(key) = req.extensions().get::<PartitionKey>() {
            return key.clone();
        }
        let key = PartitionKey::made_for(req);
        req.extensions_mut().insert(key.clone());
        key
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartitionKey({}@{})", self.0.provider, self.0.host)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.0.provider, self.0.host)
    }
}

/// A map keyed by [`PartitionKey`] that uses the hash each key computed when it was made,
/// instead of hashing it again on every lookup.
pub(crate) type PartitionMap<V> = HashMap<PartitionKey, V, BuildPartitionHasher>;

/// The hasher of a [`PartitionMap`]: passes the key's hash (already seeded per process)
/// through.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BuildPartitionHasher;

impl BuildHasher for BuildPartitionHasher {
    type Hasher = PartitionHasher;

    fn build_hasher(&self) -> PartitionHasher {
        PartitionHasher(0)
    }
}

#[derive(Debug)]
pub(crate) struct PartitionHasher(u64);

impl Hasher for PartitionHasher {
    fn write(&mut self, bytes: &[u8]) {
        // not reached by `PartitionKey`, which writes one u64; kept correct for anything else
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The authority after any userinfo: `host[:port]` as written, or `None` without a host.
fn host_port(uri: &Uri) -> Option<&str> {
    Some(authority_host_port(uri.authority()?))
}

/// [`host_port`] of an authority.
fn authority_host_port(authority: &Authority) -> &str {
    // (on bytes: `rsplit_once('@')` and `Uri::host` cost a few hundred instructions per
    // request, and every request of the stack asks once)
    // (`memrchr` rather than a byte loop: ~150 instructions per request less)
    let a = authority.as_str();
    let hp = match memchr::memrchr(b'@', a.as_bytes()) {
        Some(at) => &a[at + 1..],
        None => a,
    };
    hp.trim_end_matches(':')
}

/// The partition's host: lower-cased, with the port when the URI wrote one.
pub(crate) fn host_of(uri: &Uri) -> String {
    host_port(uri).unwrap_or_default().to_ascii_lowercase()
}

/// [`host_of`] for a URI's authority (`""` without one).
pub(crate) fn host_of_authority(authority: Option<&Authority>) -> String {
    authority
        .map(authority_host_port)
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// [`host_of`] as an `Arc<str>`, in one allocation when the host is lower-case already.
#[cfg(test)]
fn host_arc(uri: &Uri) -> Arc<str> {
    host_arc_of(host_port(uri).unwrap_or_default())
}

/// A host as written (`host[:port]`), lower-cased into an `Arc<str>`: one allocation when it
/// is lower-case already.
fn host_arc_of(host: &str) -> Arc<str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Arc::from(host.to_ascii_lowercase())
    } else {
        Arc::from(host)
    }
}

/// The partition keys last made on this thread, so that [`PartitionKey::compute`] finds the
/// key of a recent partition by comparing two short strings instead of allocating the host,
/// hashing both parts, and freeing them again when the request is done (about 600
/// instructions of the ~14k the stack spent per request, `layer_cost stack` under
/// callgrind).
///
/// Hand-written rather than a caching crate: it is eight slots per thread, looked up by
/// equality, replaced in turn, with no lock and no eviction policy to tune; a key is a pure
/// function of (provider, host), so a stale slot cannot give a wrong answer, only a miss.
/// Only the provider and the host are kept (never userinfo, a path or a query).
///
/// A key new to a thread is first looked up among the keys the other threads remembered
/// ([`shared`]), so that every thread's key of a partition is a clone of one: the maps
/// keyed by partitions (shared by all threads) then compare keys by pointer, not by their
/// strings (two `memcmp` calls per lookup on a multi-threaded runtime otherwise,
/// `overhead_bench` row b under callgrind).
mod recent {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};

    use super::{BuildPartitionHasher, PartitionKey, Provider};

    const SLOTS: usize = 8;

    /// Shards of the keys shared between threads, and the most each holds: past that it is
    /// emptied (a key made again after that is merely a second copy, equal to the first).
    const SHARDS: usize = 16;
    const SHARD_CAP: usize = 1024;

    type Shard = Mutex<HashSet<PartitionKey, BuildPartitionHasher>>;

    static SHARED: LazyLock<[Shard; SHARDS]> =
        LazyLock::new(|| std::array::from_fn(|_| Mutex::new(HashSet::with_hasher(BuildPartitionHasher))));

    /// The key equal to `key` that the threads share, `key` itself if it is the first.
    pub(super) fn shared(key: PartitionKey) -> PartitionKey {
        let shard = &SHARED[(key.0.hash >> 40) as usize % SHARDS];
        // a poisoned lock still holds valid keys
        let mut set = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = set.get(&key) {
            return known.clone();
        }
        if set.len() >= SHARD_CAP {
            set.clear();
        }
        set.insert(key.clone());
        key
    }

    struct Recent {
        keys: [Option<PartitionKey>; SLOTS],
        /// The slot the next new key replaces.
        next: usize,
    }

    thread_local! {
        static RECENT: RefCell<Recent> = const {
            RefCell::new(Recent {
                keys: [const { None }; SLOTS],
                next: 0,
            })
        };
    }

    /// The remembered key of `provider` (or, without one, of the host itself) at the host
    /// `host` as written (lower-case).
    pub(super) fn find(provider: Option<&Provider>, host: &str) -> Option<PartitionKey> {
        let provider = provider.map_or(host, Provider::as_str);
        RECENT
            .try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                recent
                    .keys
                    .iter()
                    .flatten()
                    .find(|key| *key.0.host == *host && key.0.provider.as_str() == provider)
                    .cloned()
            })
            .ok()
            .flatten()
    }

    /// Remembers `key` in the next slot, in turn.
    pub(super) fn remember(key: &PartitionKey) {
        let _ = RECENT.try_with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                let slot = recent.next;
                recent.keys[slot] = Some(key.clone());
                recent.next = (slot + 1) % SLOTS;
            }
        });
    }

    #[cfg(test)]
    pub(super) fn holds(key: &PartitionKey) -> bool {
        RECENT.with(|recent| {
            recent
                .borrow()
                .keys
                .iter()
                .flatten()
                .any(|k| std::sync::Arc::ptr_eq(&k.0, &key.0))
        })
    }
}

/// One clock read shared by the layers of one call: the retry layer reads the time as it
/// is called, and the layers it calls in turn (synchronously, before its `call` returns)
/// take that time instead of reading the clock again; anywhere else, and in a layer used
/// alone, [`now`](clock::now) reads the clock. (Two or three clock reads per request fewer:
/// `layer_cost stack` under callgrind went from 12,858 to 12,827 instructions, but valgrind
/// runs `clock_gettime` as a system call, so that counts only the wrappers' share.)
///
/// The shared time is what the clock said a few microseconds earlier, at the start of the
/// same call: no layer waits or yields inside `call`. It is shared only while the retry
/// layer's `call` runs (a guard restores what was there before, also on unwinding), never
/// while a future is polled: a resend, a redirect hop or a wait read the clock anew.
///
/// In a [`Stack`](crate::service::Stack), the retry layer shares the request's
/// [`PartitionKey`] the same way, and the stack's own cool-down, learning and rate-limit
/// layers (built to take it, `with_call_key`) take it from there instead of caching it in
/// the request's extensions: no extension to allocate, to copy for a resend and to drop, and
/// one lookup fewer per layer. The layers between them in the stack (redirects, attempt
/// telemetry) do not change the request's host or provider; a layer used alone, or a
/// stack's layer outside its retry layer's call (a resend, a redirect hop), uses
/// [`PartitionKey::of`].
pub(crate) mod clock {
    use std::cell::{Cell, RefCell};

    use tokio::time::Instant;

    use super::PartitionKey;

    thread_local! {
        static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
        static KEY: RefCell<Option<PartitionKey>> = const { RefCell::new(None) };
    }

    /// The partition key shared by the call under way on this thread, if any.
    pub(crate) fn key() -> Option<PartitionKey> {
        KEY.try_with(|k| k.try_borrow().ok().and_then(|k| k.clone()))
            .ok()
            .flatten()
    }

    /// Shares `now` and `key` with the layers called on this thread until the guard is
    /// dropped.
    pub(crate) fn share_with_key(now: Instant, key: Option<PartitionKey>) -> SharedKey {
        let key = KEY
            .try_with(|k| k.try_borrow_mut().ok().map(|mut k| std::mem::replace(&mut *k, key)))
            .ok()
            .flatten()
            .flatten();
        SharedKey { key, _now: share(now) }
    }

    /// Restores the key (and the time) shared before.
    pub(crate) struct SharedKey {
        key: Option<PartitionKey>,
        _now: Shared,
    }

    impl Drop for SharedKey {
        fn drop(&mut self) {
            let key = self.key.take();
            let _ = KEY.try_with(|k| {
                if let Ok(mut k) = k.try_borrow_mut() {
                    *k = key;
                }
            });
        }
    }

    /// The time shared by the call under way on this thread, or the clock.
    pub(crate) fn now() -> Instant {
        NOW.try_with(Cell::get).ok().flatten().unwrap_or_else(Instant::now)
    }

    /// Shares `now` with the layers called on this thread until the guard is dropped.
    pub(crate) fn share(now: Instant) -> Shared {
        Shared(NOW.try_with(|c| c.replace(Some(now))).ok().flatten())
    }

    /// Restores what was shared before (the time of an enclosing call, or nothing).
    pub(crate) struct Shared(Option<Instant>);

    impl Drop for Shared {
        fn drop(&mut self) {
            let _ = NOW.try_with(|c| c.set(self.0));
        }
    }
}

/// Reading and setting the request context on an [`http::Request`].
pub trait RequestContextExt {
    /// The operation type (default [`OperationType::Download`]).
    fn operation(&self) -> OperationType;
    /// The provider: the extension, or the request's host.
    fn provider(&self) -> Provider;
    /// The work id, if set.
    fn work_id(&self) -> Option<&WorkId>;
    /// The idempotency key, if set.
    fn idempotency_key(&self) -> Option<&IdempotencyKey>;
    /// Sets the operation type.
    fn set_operation(&mut self, op: OperationType);
    /// Sets the provider (and forgets a cached [`PartitionKey`]).
    fn set_provider(&mut self, provider: Provider);
    /// Sets the work id.
    fn set_work_id(&mut self, work: WorkId);
    /// Sets the idempotency key.
    fn set_idempotency_key(&mut self, key: IdempotencyKey);
}

impl<B> RequestContextExt for Request<B> {
    fn operation(&self) -> OperationType {
        OperationType::of(self)
    }

    fn provider(&self) -> Provider {
        match self.extensions().get::<Provider>() {
            Some(p) => p.clone(),
            None => Provider::new(host_of(self.uri())),
        }
    }

    fn work_id(&self) -> Option<&WorkId> {
        self.extensions().get::<WorkId>()
    }

    fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.extensions().get::<IdempotencyKey>()
    }

    fn set_operation(&mut self, op: OperationType) {
        self.extensions_mut().insert(op);
    }

    fn set_provider(&mut self, provider: Provider) {
        self.extensions_mut().remove::<PartitionKey>();
        self.extensions_mut().insert(provider);
    }

    fn set_work_id(&mut self, work: WorkId) {
        self.extensions_mut().insert(work);
    }

    fn set_idempotency_key(&mut self, key: IdempotencyKey) {
        self.extensions_mut().insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_keep_the_port_as_written_and_drop_userinfo() {
        let h = |s: &str| host_of(&s.parse::<Uri>().unwrap());
        assert_eq!(h("https://Example.ORG/x"), "example.org");
        assert_eq!(h("http://User:Pw@Example.ORG:8080/x"), "example.org:8080");
        assert_eq!(h("http://[::1]:9/"), "[::1]:9");
        assert_eq!(h("/relative"), "");
        for uri in [
            "https://Example.ORG/x",
            "http://u@A.org:8080/",
            "http://a.org/",
            "/relative",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(&*host_arc(&uri), host_of(&uri));
        }
    }

    #[test]
    fn recent_partitions_are_reused_and_never_confused() {
        let req = |uri: &str, provider: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(p) = provider {
                b = b.extension(Provider::new(p));
            }
            b.body(()).unwrap()
        };
        let first = PartitionKey::compute(&req("https://api.crossref.org/a", Some("crossref")));
        assert!(recent::holds(&first));
        let again = PartitionKey::compute(&req("https://u:pw@api.crossref.org/b?q=1", Some("crossref")));
        assert_eq!(again, first);
        assert!(Arc::ptr_eq(&again.0, &first.0), "the remembered key, not a new one");
        // another provider, another port, no provider: other keys
        let cases = [
            (
                "https://api.crossref.org/a",
                Some("other"),
                ("other", "api.crossref.org"),
            ),
            (
                "https://api.crossref.org:8443/a",
                Some("crossref"),
                ("crossref", "api.crossref.org:8443"),
            ),
            (
                "https://api.crossref.org/a",
                None,
                ("api.crossref.org", "api.crossref.org"),
            ),
            (
                "https://API.Crossref.org/a",
                Some("crossref"),
                ("crossref", "api.crossref.org"),
            ),
            ("/relative", Some("crossref"), ("crossref", "")),
        ];
        for _ in 0..2 {
            for (uri, provider, (p, h)) in cases {
                let key = PartitionKey::compute(&req(uri, provider));
                assert_eq!((key.provider().as_str(), key.host()), (p, h), "{uri} {provider:?}");
                assert_eq!(key, PartitionKey::new(p, h));
            }
        }
        // more partitions than slots: the old ones are made again, equal
        for i in 0..20 {
            let uri = format!("http://h{i}.example.org/");
            let key = PartitionKey::compute(&req(&uri, Some("p")));
            assert_eq!(key, PartitionKey::new("p", format!("h{i}.example.org")));
        }
        assert_eq!(
            PartitionKey::compute(&req("https://api.crossref.org/c", Some("crossref"))),
            first
        );
    }

    #[test]
    fn threads_share_one_key_per_partition() {
        let make = || {
            let req = Request::get("https://shared.example.org/x")
                .extension(Provider::new("shared"))
                .body(())
                .unwrap();
            PartitionKey::compute(&req)
        };
        let here = make();
        let there = std::thread::spawn(make).join().unwrap();
        assert!(Arc::ptr_eq(&here.0, &there.0));
    }

    #[test]
    fn a_key_read_back_is_the_one_requests_make() {
        let read: PartitionKey = serde_json::from_str(r#"{"provider":"saved","host":"saved.example.org"}"#).unwrap();
        let req = Request::get("https://saved.example.org/x")
            .extension(Provider::new("saved"))
            .body(())
            .unwrap();
        let made = PartitionKey::compute(&req);
        assert!(Arc::ptr_eq(&read.0, &made.0));
        assert_eq!(
            serde_json::to_string(&made).unwrap(),
            r#"{"provider":"saved","host":"saved.example.org"}"#
        );
    }

    #[test]
    fn a_cached_partition_is_returned_as_is() {
        let mut req = Request::get("https://a.org/x").body(()).unwrap();
        req.extensions_mut().insert(PartitionKey::new("p", "cached.org"));
        assert_eq!(PartitionKey::of(&mut req), PartitionKey::new("p", "cached.org"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_clock_is_shared_only_while_its_guard_lives() {
        let start = tokio::time::Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(clock::now(), start + std::time::Duration::from_secs(5));
        {
            let _outer = clock::share(start);
            assert_eq!(clock::now(), start);
            {
                let _inner = clock::share(start + std::time::Duration::from_secs(1));
                assert_eq!(clock::now(), start + std::time::Duration::from_secs(1));
            }
            assert_eq!(clock::now(), start, "the enclosing call's time again");
        }
        assert_eq!(clock::now(), start + std::time::Duration::from_secs(5));
        // a panic inside the call does not leave its time behind
        let caught = std::panic::catch_unwind(|| {
            let _guard = clock::share(start);
            panic!("inside a call");
        });
        assert!(caught.is_err());
        assert_eq!(clock::now(), start + std::time::Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_key_is_taken_only_by_layers_built_for_it_and_only_during_the_call() {
        let shared = PartitionKey::new("shared", "shared.example.org");
        let req = || Request::get("https://a.example.org/x").body(()).unwrap();
        let own = PartitionKey::new("a.example.org", "a.example.org");
        {
            let _call = clock::share_with_key(tokio::time::Instant::now(), Some(shared.clone()));
            let mut r = req();
            assert_eq!(PartitionKey::of_call(&mut r, true), shared);
            assert!(
                r.extensions().get::<PartitionKey>().is_none(),
                "not cached in the request"
            );
            // a layer not built for it (a layer used alone) computes the request's own
            let mut r = req();
            assert_eq!(PartitionKey::of_call(&mut r, false), own);
            assert_eq!(r.extensions().get::<PartitionKey>(), Some(&own));
        }
        // after the call (a resend, a hop), the request's own key, cached as before
        let mut r = req();
        assert_eq!(PartitionKey::of_call(&mut r, true), own);
        assert_eq!(r.extensions().get::<PartitionKey>(), Some(&own));
        assert!(clock::key().is_none());
    }

    #[test]
    fn defaults_when_absent() {
        let req = Request::get("https://Example.org/x").body(()).unwrap();
        assert_eq!(req.operation(), OperationType::Download);
        assert_eq!(req.provider().as_str(), "example.org");
        assert!(req.work_id().is_none());
        assert!(req.idempotency_key().is_none());
        assert_eq!(AttemptNumber::of(&req), 1);
        let key = PartitionKey::compute(&req);
        assert_eq!(key, PartitionKey::new("example.org", "example.org"));
    }

    #[test]
    fn explicit_port_is_part_of_the_host() {
        let mut req = Request::get("http://127.0.0.1:8080/x").body(()).unwrap();
        req.set_provider(Provider::new("crossref"));
        let key = PartitionKey::of(&mut req);
        assert_eq!(key.host(), "127.0.0.1:8080");
        assert_eq!(key.provider().as_str(), "crossref");
        // cached
        assert_eq!(req.extensions().get::<PartitionKey>(), Some(&key));
        // changing the provider drops the cache
        req.set_provider(Provider::new("unpaywall"));
        assert_eq!(PartitionKey::compute(&req).provider().as_str(), "unpaywall");
    }

    #[test]
    fn operation_names_round_trip() {
        for op in OperationType::ALL {
            assert_eq!(op.as_str().parse::<OperationType>().unwrap(), op);
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(json, format!("\"{}\"", op.as_str()));
        }
        assert_eq!(
            "Manifest-Fetch".parse::<OperationType>().unwrap(),
            OperationType::ManifestFetch
        );
        let err = "nope".parse::<OperationType>().unwrap_err();
        assert!(err.to_string().contains("unknown operation type"));
    }
}
