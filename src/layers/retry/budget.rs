//! [`Budgets`]: a retry budget per partition, shared across clones.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use super::config::BudgetConfig;
use crate::context::{PartitionKey, PartitionMap};

/// Above this many partitions, the ones idle longer than the budget's window are dropped
/// when a new one is added (a fresh budget for them is as good as the old one).
const SWEEP_AT: usize = 1024;

/// One retry budget per [`PartitionKey`], each a tower
/// [`TpsBudget`](tower::retry::budget::TpsBudget): every first attempt deposits, every
/// retry withdraws, and a retry without funds is not made. So an outage of one provider
/// adds at most `retry_ratio` (plus a small floor) on top of its normal traffic, and does
/// not eat into the budget of the others.
///
/// The budgets sit behind an `Arc`: clones of the handle (and every service built by one
/// [`ContextualRetryLayer`](super::ContextualRetryLayer)) share them. Finding a partition's
/// budget is a short critical section (a hash-map lookup); the budget itself is atomic.
#[derive(Clone)]
pub struct Budgets {
    inner: Arc<Shared>,
}

struct Shared {
    /// Tells this set of budgets apart in the per-thread [`LAST`] (never reused, unlike an
    /// address).
    id: u64,
    config: BudgetConfig,
    map: Mutex<PartitionMap<Entry>>,
}

/// The budget each thread found last, so that a thread sending to one partition over and
/// over finds it without the shared lock and map lookup (and the write of `last_used`) on
/// every request: the lock is a write to memory every worker thread shares, the costliest
/// part of a request's budget on a multi-threaded runtime. Hand-written, like the per-thread
/// keys of `context::recent`: one slot, compared by identity, with no eviction to tune.
///
/// A slot is trusted for half the budgets' window after the lookup that filled it, and
/// that lookup set the entry's `last_used`: an entry is swept only when idle for longer
/// than the window, so a slot never outlives its entry in the map.
struct Last {
    id: u64,
    key: PartitionKey,
    budget: Arc<TpsBudget>,
    /// When the lookup that filled the slot was made, plus half the window.
    trusted_until: Instant,
}

thread_local! {
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Entry {
    budget: Arc<TpsBudget>,
    last_used: Instant,
}

/// One partition's budget, held by a request while it runs.
#[derive(Clone, Debug)]
pub struct PartitionBudget(Arc<TpsBudget>);

impl PartitionBudget {
    /// Counts a first attempt.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes the funds for one retry; `false` if there are none.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

impl Budgets {
    /// Budgets with this configuration. The configuration must be valid
    /// ([`RetryConfig::validate`](super::RetryConfig::validate)); out-of-range values are
    /// clamped rather than trusted.
    pub fn new(config: BudgetConfig) -> Self {
        Budgets {
            inner: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                config,
                map: Mutex::new(PartitionMap::default()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PartitionMap<Entry>> {
        // a panic elsewhere while holding the lock leaves a valid map
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether budgets are enforced at all.
    pub fn enabled(&self) -> bool {
        self.inner.config.enabled
    }

    /// The budget of a partition (created on first use); `None` when budgets are off.
    pub fn get(&self, partition: &PartitionKey) -> Option<PartitionBudget> {
        self.get_at(partition, Instant::now())
    }

    /// [`get`](Self::get) with the time already read by the caller (one clock read per
    /// request fewer: the retry layer reads it anyway).
    pub(crate) fn get_at(&self, partition: &PartitionKey, now: Instant) -> Option<PartitionBudget> {
        if !self.enabled() {
            return None;
        }
        let id = self.inner.id;
        let known = LAST
            .try_with(|last| {
                let last = last.try_borrow().ok()?;
                let last = last.as_ref()?;
                (last.id == id && now < last.trusted_until && last.key == *partition).then(|| last.budget.clone())
            })
            .ok()
            .flatten();
        if let Some(budget) = known {
            return Some(PartitionBudget(budget));
        }
        let ttl = self.ttl();
        let budget = {
            let mut map = self.lock();
            if let Some(entry) = map.get_mut(partition) {
                entry.last_used = now;
                entry.budget.clone()
            } else {
                if map.len() >= SWEEP_AT {
                    map.retain(|_, e| now.saturating_duration_since(e.last_used) <= ttl);
                }
                let budget = Arc::new(self.build());
                map.insert(
                    partition.clone(),
                    Entry {
                        budget: budget.clone(),
                        last_used: now,
                    },
                );
                budget
            }
        };
        let _ = LAST.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some(Last {
                    id,
                    key: partition.clone(),
                    budget: budget.clone(),
                    trusted_until: now + ttl / 2,
                });
            }
        });
        Some(PartitionBudget(budget))
    }

    /// How many partitions have a budget.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no partition has a budget yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.inner.config.ttl_secs.clamp(1, 60))
    }

    fn build(&self) -> TpsBudget {
        // TpsBudget asserts its ranges: clamp so that a config that skipped validation
        // cannot panic here.
        let c = &self.inner.config;
        let ratio = if c.retry_ratio.is_finite() {
            c.retry_ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        TpsBudget::new(self.ttl(), c.min_retries_per_sec.min(i32::MAX as u32 - 1), ratio)
    }
}

impl fmt::Debug for Budgets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budgets")
            .field("config", &self.inner.config)
            .field("partitions", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_bounded_fraction_per_partition() {
        let budgets = Budgets::new(BudgetConfig {
            enabled: true,
            ttl_secs: 10,
            min_retries_per_sec: 0,
            retry_ratio: 0.2,
        });
        let a = budgets.get(&PartitionKey::new("a", "a")).unwrap();
        let b = budgets.clone().get(&PartitionKey::new("b", "b")).unwrap();
        for _ in 0..10 {
            a.deposit();
        }
        let granted = (0..10).filter(|_| a.withdraw()).count();
        assert_eq!(granted, 2, "20% of 10 first attempts");
        assert!(!b.withdraw(), "b's budget is its own");
        // the same partition gets the same budget
        assert!(!budgets.get(&PartitionKey::new("a", "a")).unwrap().withdraw());
        assert_eq!(budgets.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_thread_finds_its_last_budget_again_and_no_other_sets() {
        let config = BudgetConfig {
            enabled: true,
            ttl_secs: 10,
            min_retries_per_sec: 0,
            retry_ratio: 0.5,
        };
        let one = Budgets::new(config.clone());
        let two = Budgets::new(config);
        let key = PartitionKey::new("a", "a");
        for _ in 0..4 {
            one.get(&key).unwrap().deposit();
        }
        // the same partition in another set of budgets is a budget of its own
        assert!(!two.get(&key).unwrap().withdraw());
        assert!(one.get(&key).unwrap().withdraw(), "50% of 4 first attempts");
        // past the slot's trust (half the window) the map is asked again: the same budget
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(one.get(&key).unwrap().withdraw());
        assert!(!one.get(&key).unwrap().withdraw());
        assert_eq!((one.len(), two.len()), (1, 1));
    }

    #[test]
    fn disabled_budgets_hand_out_nothing() {
        let budgets = Budgets::new(BudgetConfig {
            enabled: false,
            ..BudgetConfig::default()
        });
        assert!(budgets.get(&PartitionKey::new("a", "a")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_range_config_is_clamped_not_a_panic() {
        let budgets = Budgets::new(BudgetConfig {
            enabled: true,
            ttl_secs: 0,
            min_retries_per_sec: u32::MAX,
            retry_ratio: f32::NAN,
        });
        assert!(budgets.get(&PartitionKey::new("a", "a")).is_some());
    }
}
