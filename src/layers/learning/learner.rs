//! [`Learner`]: the shared learning state that drives a [`RateLimiter`]'s rates.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::Response;
use tokio::time::Instant;

use super::advertised::{self, Signal};
use super::persist::{self, LearningFileError, PersistError};
use super::policy::{LearningConfigError, LearningPolicy};
use super::state::{PartitionState, PartitionStatus, Phase};
use crate::context::{PartitionKey, PartitionMap, RateLimitWait, RetryAfterHint};
use crate::layers::rate_limit::RateLimiter;
use crate::layers::retry_after::parse_retry_after;

/// Why [`Learner::inspect`] could not read the state.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] LearningConfigError),
    /// The file exists but cannot be used; it was left in place.
    #[error(transparent)]
    File(#[from] LearningFileError),
}

/// Past this many partitions, those back to normal are forgotten (they hold nothing a
/// fresh state would not), so memory stays bounded with many hosts.
const MAX_PARTITIONS: usize = 10_000;

pub(super) struct Shared {
    pub(super) limiter: RateLimiter,
    pub(super) policy: LearningPolicy,
    pub(super) states: Mutex<PartitionMap<PartitionState>>,
    pub(super) path: Option<PathBuf>,
    /// Serialises this process's writes of the file (other processes are safe through
    /// the atomic rename).
    pub(super) write_lock: Mutex<()>,
    /// Whether the limiter takes a re-made bucket's rate from this learner
    /// ([`RateLimiter::set_rate_source`]): then a response that leaves the rate as it was
    /// need not set it again (`set_rate` was ~350 of the ~13k instructions the stack adds
    /// per request, `layer_cost stack` under callgrind). `false` when another learner of
    /// the same limiter is its source: this one sets the rate on every response.
    pub(super) sourced: std::sync::atomic::AtomicBool,
    /// Partitions whose allowance is spent, until when: the user is told once per pause.
    pub(super) quota_paused: Mutex<PartitionMap<QuotaPause>>,
}

/// A partition paused because its allowance is spent ([`Learner::quota_pause`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaPause {
    /// When the allowance resets, on this process's clock.
    pub until: Instant,
    /// The same moment as wall-clock time, for what the user is told and for the file.
    pub resets_at: SystemTime,
}

/// What the provider-learning layer knows, per partition, behind a cheap cloneable handle:
/// every clone (and every stack it is given to) shares the same state and drives the same
/// [`RateLimiter`].
///
/// Each response's signal (throttled: 429, or 503 with Retry-After; accepted: any other
/// status below 500; 5xx: nothing) moves the partition's rate by the [`LearningPolicy`],
/// and the limiter is set to it. Advertised limits (see the module docs) set the ceiling,
/// and a spent quota holds the partition until its reset.
///
/// # Example
///
/// ```
/// use contentdownload::context::PartitionKey;
/// use contentdownload::layers::learning::{Learner, LearningPolicy, Phase};
/// use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(RateLimitConfig::default().provider("crossref", Quota::new(50.0, 5)))?;
/// let learner = Learner::new(limiter.clone(), LearningPolicy::default())?;
/// let key = PartitionKey::new("crossref", "api.crossref.org");
///
/// let throttled = http::Response::builder().status(429).body(())?;
/// learner.observe(&key, tokio::time::Instant::now(), &throttled);
/// let status = learner.status("crossref", "api.crossref.org").expect("seen");
/// assert_eq!(status.phase, Phase::Reducing);
/// assert_eq!(limiter.rate(&key), 35.0); // 50 × 0.7
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Learner {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for Learner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Learner")
            .field("policy", &self.shared.policy)
            .field("path", &self.shared.path)
            .field("partitions", &self.states().len())
            .finish()
    }
}

impl Learner {
    /// A learner with no persistence, driving `limiter`.
    pub fn new(limiter: RateLimiter, policy: LearningPolicy) -> Result<Learner, LearningConfigError> {
        policy.validate()?;
        Ok(Learner::build(limiter, policy, None, PartitionMap::default()))
    }

    /// A learner that loads its state from `path` (JSON) and saves it there with
    /// [`persist`](Self::persist) or a [`PersistTask`](super::PersistTask).
    ///
    /// A missing file starts fresh. A corrupt file, or one written by an unknown format
    /// version, is renamed aside (`<name>.corrupt-<unix time>`) with a warning, and
    /// learning starts fresh: a bad file never stops a run. Loaded rates are applied to
    /// the limiter at once.
    pub fn with_persistence(
        limiter: RateLimiter,
        policy: LearningPolicy,
        path: impl Into<PathBuf>,
    ) -> Result<Learner, LearningConfigError> {
        policy.validate()?;
        let path = path.into();
        let (states, pauses) = persist::load(&path, &limiter, SystemTime::now());
        let learner = Learner::from_loaded(limiter, policy, Some(path), states, pauses);
        // told once, at start, as the pause itself was when it began
        for (key, pause) in learner.quota_pauses() {
            tracing::warn!(
                partition = %key,
                resets_in_s = pause.until.saturating_duration_since(Instant::now()).as_secs(),
                "{key}: its allowance (quota) is spent (as an earlier run learned); not asked \
                 until it resets in {}, its works deferred to a later run",
                in_words(pause.until.saturating_duration_since(Instant::now()))
            );
        }
        Ok(learner)
    }

    /// The state saved in `path`, read without changing anything on disk (for a read-only
    /// command such as `status`): the learner never saves, and a bad file is an error that
    /// says what is wrong with it, left where it is. A missing file is an empty state.
    pub fn inspect(limiter: RateLimiter, policy: LearningPolicy, path: &Path) -> Result<Learner, InspectError> {
        policy.validate()?;
        let (states, pauses) = persist::read(path, &limiter)?;
        Ok(Learner::from_loaded(limiter, policy, None, states, pauses))
    }

    fn from_loaded(
        limiter: RateLimiter,
        policy: LearningPolicy,
        path: Option<PathBuf>,
        mut states: PartitionMap<PartitionState>,
        pauses: Vec<(PartitionKey, SystemTime)>,
    ) -> Learner {
        let now = Instant::now();
        for state in states.values_mut() {
            state.start_recovery(&policy, now);
        }
        let learner = Learner::build(limiter, policy, path, states);
        // (out of the states' lock: a bucket made by `set_rate` asks the learner, its rate
        // source, for its rate, which takes that lock)
        let rates: Vec<(PartitionKey, f64)> = learner.states().iter().map(|(k, s)| (k.clone(), s.rate)).collect();
        for (key, rate) in rates {
            learner.shared.limiter.set_rate(&key, rate);
        }
        // allowances spent in an earlier run stay spent until their reset: nothing is sent
        let wall = SystemTime::now();
        for (key, resets_at) in pauses {
            let Ok(left) = resets_at.duration_since(wall) else {
                continue;
            };
            let until = now + left.min(advertised::MAX_QUOTA_PAUSE);
            learner.shared.limiter.hold_until(&key, until);
            learner.quotas().insert(key, QuotaPause { until, resets_at });
        }
        learner
    }

    fn quotas(&self) -> MutexGuard<'_, PartitionMap<QuotaPause>> {
        self.shared.quota_paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn build(
        limiter: RateLimiter,
        policy: LearningPolicy,
        path: Option<PathBuf>,
        states: PartitionMap<PartitionState>,
    ) -> Learner {
        let shared = Arc::new(Shared {
            limiter,
            policy,
            states: Mutex::new(states),
            path,
            write_lock: Mutex::new(()),
            sourced: std::sync::atomic::AtomicBool::new(false),
            quota_paused: Mutex::default(),
        });
        // A weak reference: the limiter outlives no learner through it (a dropped
        // learner's source answers nothing, and the configured rate applies).
        let weak = Arc::downgrade(&shared);
        let sourced = shared.limiter.set_rate_source(Box::new(move |key| {
            let shared = weak.upgrade()?;
            let states = shared.states.lock().unwrap_or_else(|e| e.into_inner());
            states.get(key).map(|state| state.rate)
        }));
        shared.sourced.store(sourced, std::sync::atomic::Ordering::Relaxed);
        Learner { shared }
    }

    pub(super) fn states(&self) -> MutexGuard<'_, PartitionMap<PartitionState>> {
        // A poisoned lock only means a panic elsewhere; the numbers are still usable.
        self.shared.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limiter this learner drives.
    pub fn limiter(&self) -> &RateLimiter {
        &self.shared.limiter
    }

    /// The policy.
    pub fn policy(&self) -> &LearningPolicy {
        &self.shared.policy
    }

    /// The persistence file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// Learns from one attempt's response: `sent_at` is when the request went to the
    /// layers below; a [`RateLimitWait`] on the response is added to it, giving the time
    /// the request actually left. The adaptive policy ignores a 429 for a request that left
    /// before its last decrease (it was sent at the old rate), or that arrives within the
    /// `Retry-After` period of its last decrease (at most 250 ms after a multiplicative
    /// drop, 5 s after a gentle step near a known ceiling), so that one burst of 429s
    /// counts once. The `Retry-After` header is read here, as is a [`RetryAfterHint`]
    /// extension. Returns the partition's rate afterwards.
    ///
    /// The limiter is set to the learned rate when it changes; a bucket the limiter
    /// evicted while idle gets its learned rate back when it is made again (the learner
    /// is the limiter's rate source). A rate set on the limiter directly stays until the
    /// learned rate next changes. (A second learner of the same limiter is not its source,
    /// and sets the rate on every call.)
    pub fn observe<B>(&self, key: &PartitionKey, sent_at: Instant, response: &Response<B>) -> f64 {
        self.observe_change(key, sent_at, response).0
    }

    /// [`observe`](Self::observe), and whether this response changed the partition's rate
    /// (for the learning layer, which attaches [`LearnedRate`](super::LearnedRate) only then).
    pub(crate) fn observe_change<B>(
        &self,
        key: &PartitionKey,
        sent_at: Instant,
        response: &Response<B>,
    ) -> (f64, bool) {
        // the partition's rate as this response found it (its initial rate if it is new)
        let mut found = f64::NAN;
        // (no addition for a response that did not wait, the usual case: it carries no
        // `RateLimitWait`)
        let sent_at = match response.extensions().get::<RateLimitWait>() {
            Some(wait) => sent_at + wait.0,
            None => sent_at,
        };
        let headers = response.headers();
        let status = response.status();
        // (the hint counts only for a 429 or a 503: a lookup saved on every other response)
        let hint = if status == http::StatusCode::TOO_MANY_REQUESTS || status == http::StatusCode::SERVICE_UNAVAILABLE {
            response.extensions().get::<RetryAfterHint>()
        } else {
            None
        };
        let signal = advertised::classify(status, headers, hint);
        // How long the provider asked us to wait: no second decrease inside that period.
        // (Read for a throttle only, the one signal that uses it: a header lookup per
        // response otherwise.)
        let asked_wait = match signal {
            Signal::Throttled => hint.map(|h| h.delay).or_else(|| {
                headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
            }),
            _ => None,
        };
        let advertised = advertised::parse_with(headers, SystemTime::now);
        let now = Instant::now();
        // A 429 that says the allowance is spent until a reset hours away: no rate fixes it,
        // so the rate is left as it is and the partition pauses until the reset.
        let quota_spent = match signal {
            Signal::Throttled => advertised.quota_spent,
            _ => None,
        };
        let mut throttled = None;
        let (before, rate) = self.update(key, |state, policy| {
            found = state.rate;
            if let Some(ceiling) = advertised.ceiling {
                state.set_advertised(ceiling);
            }
            match signal {
                Signal::Throttled if quota_spent.is_some() => {}
                Signal::Throttled => {
                    let before = state.rate;
                    state.on_throttle(policy, now, sent_at, asked_wait);
                    throttled = Some((before, state.w_max, state.confirmations));
                }
                Signal::Accepted => state.on_success(policy, now, sent_at),
                Signal::Neutral => {}
            }
        });
        if let Some((before, ceiling, confirmations)) = throttled {
            tracing::debug!(
                partition = %key,
                before,
                after = rate,
                ceiling,
                confirmations,
                wait_ms = asked_wait.map(|w| w.as_millis() as u64),
                "throttled: learned rate updated"
            );
        }
        if before != Some(rate) || !self.shared.sourced.load(std::sync::atomic::Ordering::Relaxed) {
            self.shared.limiter.set_rate(key, rate);
        }
        // Honour the wait for the whole partition: the requests already past the
        // cool-down check and queued in the limiter wait too, not only the ones after.
        let throttled_wait = match signal {
            Signal::Throttled => asked_wait,
            _ => None,
        };
        if let Some(hold) = advertised
            .exhausted_for
            .into_iter()
            .chain(throttled_wait)
            .chain(quota_spent)
            .max()
        {
            self.shared.limiter.hold_until(key, now + hold);
        }
        if let Some(pause) = quota_spent {
            self.tell_quota_spent(key, now + pause, pause);
        }
        (rate, found != rate)
    }

    /// Tells the user, once per pause, that `key`'s allowance is spent until `until`.
    fn tell_quota_spent(&self, key: &PartitionKey, until: Instant, pause: Duration) {
        let mut paused = self.quotas();
        let told = paused.get(key).is_some_and(|p| p.until > Instant::now());
        if !told {
            tracing::warn!(
                partition = %key,
                resets_in_s = pause.as_secs(),
                "{key}: its allowance (quota) is spent; paused until it resets in {}, \
                 its works deferred to a later run; the learned rate is left as it was",
                in_words(pause)
            );
        }
        if paused.get(key).is_none_or(|p| p.until < until) {
            // (the pauses that have passed go, so the map holds only the providers paused now)
            let now = Instant::now();
            paused.retain(|_, p| p.until > now);
            let resets_at = SystemTime::now() + pause;
            paused.insert(key.clone(), QuotaPause { until, resets_at });
        }
    }

    /// When `key`'s spent allowance resets, if it is paused for that now.
    pub fn quota_paused_until(&self, key: &PartitionKey) -> Option<Instant> {
        self.quota_pause(key).map(|p| p.until)
    }

    /// `key`'s pause for a spent allowance, if it is paused now.
    pub fn quota_pause(&self, key: &PartitionKey) -> Option<QuotaPause> {
        self.quotas().get(key).copied().filter(|p| p.until > Instant::now())
    }

    /// A [`QuotaSpent`](crate::error::QuotaSpent) for a call to `key` when its allowance is
    /// spent now (`sent`: whether that call's request went out), for the callers that stop
    /// there instead of waiting for the reset.
    pub fn quota_spent(&self, key: &PartitionKey, sent: bool) -> Option<crate::error::QuotaSpent> {
        let pause = self.quota_pause(key)?;
        Some(crate::error::QuotaSpent {
            partition: key.clone(),
            until: pause.until,
            resets_at: pause.resets_at,
            sent,
        })
    }

    /// Every partition paused now for a spent allowance, sorted by partition.
    pub fn quota_pauses(&self) -> Vec<(PartitionKey, QuotaPause)> {
        let now = Instant::now();
        let mut all: Vec<(PartitionKey, QuotaPause)> = self
            .quotas()
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(k, p)| (k.clone(), *p))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records a throttling response for `key` (what [`observe`](Self::observe) does for
    /// a 429), for callers that see throttling some other way.
    pub fn record_throttle(&self, key: &PartitionKey, sent_at: Instant) {
        let now = Instant::now();
        let (_, rate) = self.update(key, |s, p| s.on_throttle(p, now, sent_at, None));
        self.shared.limiter.set_rate(key, rate);
    }

    /// Records an accepted response for `key`.
    pub fn record_success(&self, key: &PartitionKey) {
        let now = Instant::now();
        let (_, rate) = self.update(key, |s, p| s.on_success(p, now, now));
        self.shared.limiter.set_rate(key, rate);
    }

    /// Runs `f` on the partition's state (made from the configured rate if new); returns
    /// the rate before (`None` for a new state) and after.
    fn update(&self, key: &PartitionKey, f: impl FnOnce(&mut PartitionState, &LearningPolicy)) -> (Option<f64>, f64) {
        let policy = &self.shared.policy;
        let mut states = self.states();
        if let Some(state) = states.get_mut(key) {
            let before = state.rate;
            f(state, policy);
            return (Some(before), state.rate);
        }
        if states.len() >= MAX_PARTITIONS {
            states.retain(|_, s| s.phase() != Phase::Normal);
        }
        let mut state = PartitionState::new(self.shared.limiter.configured(key).rate);
        f(&mut state, policy);
        let rate = state.rate;
        states.insert(key.clone(), state);
        (None, rate)
    }

    /// The learned rate of a partition: what the limiter is set to.
    pub fn rate(&self, key: &PartitionKey) -> f64 {
        self.shared.limiter.rate(key)
    }

    /// What the learner knows about `(provider, host)` (the host with `:port` when the
    /// URI named one), or `None` if it has seen no response from it.
    pub fn status(&self, provider: &str, host: &str) -> Option<PartitionStatus> {
        let key = PartitionKey::new(provider, host);
        self.states().get(&key).map(|s| s.status(&key, &self.shared.policy))
    }

    /// Every partition's status, sorted by partition (for the runner's `status` command
    /// and the learned-rate gauge).
    pub fn statuses(&self) -> Vec<PartitionStatus> {
        let mut all: Vec<PartitionStatus> = self
            .states()
            .iter()
            .map(|(k, s)| s.status(k, &self.shared.policy))
            .collect();
        all.sort_by(|a, b| a.partition.cmp(&b.partition));
        all
    }

    /// Saves the state to the persistence file now (does nothing without one). The write
    /// is atomic: a temporary file in the same folder, flushed, then renamed over the old
    /// one, so readers and concurrent writers never see a partial file. Blocking file I/O:
    /// from async code, call it in `spawn_blocking` (as [`PersistTask`](super::PersistTask)
    /// does).
    pub fn persist(&self) -> Result<(), PersistError> {
        let Some(path) = self.shared.path.as_deref() else {
            return Ok(());
        };
        let pauses: Vec<(PartitionKey, SystemTime)> =
            self.quota_pauses().into_iter().map(|(k, p)| (k, p.resets_at)).collect();
        let snapshot = persist::snapshot(&self.states(), &pauses, &self.shared.policy, SystemTime::now());
        let _guard = self.shared.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        persist::write_atomic(path, &snapshot)
    }
}

/// `3 h`, `2 h 5 min`, `45 min`: how long until a reset, for the user.
pub fn in_words(d: Duration) -> String {
    let mins = d.as_secs().div_ceil(60);
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}
