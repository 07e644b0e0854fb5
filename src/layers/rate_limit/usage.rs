//! Which rate key gave each partition its quota, kept for a run's summary.

use std::sync::{Mutex, MutexGuard};

use super::config::Quota;
use super::keys::RateKeys;
use crate::context::PartitionKey;

/// How many partitions a key's [`KeyUsage`] names; further ones set [`KeyUsage::more`].
pub const NAMED_PARTITIONS: usize = 8;

/// How a rate key (or the default quota) was used so far: the partitions whose bucket took
/// its quota. See [`RateLimiter::key_usage`](super::RateLimiter::key_usage).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyUsage {
    /// The key as written; `None` for the default quota.
    pub key: Option<String>,
    /// The key's quota.
    pub quota: Quota,
    /// The first partitions (at most [`NAMED_PARTITIONS`]) that took this quota, in the
    /// order they came.
    pub partitions: Vec<PartitionKey>,
    /// Whether more partitions than those named took it.
    pub more: bool,
}

impl KeyUsage {
    /// Whether any partition took this quota (a key that matched no request did not).
    pub fn matched(&self) -> bool {
        !self.partitions.is_empty()
    }
}

#[derive(Debug, Default, Clone)]
struct Used {
    partitions: Vec<PartitionKey>,
    more: bool,
}

/// Per key (and one more slot for the default): the partitions it was given to. Written
/// only on a bucket's first reservation, once per partition (again after an idle
/// eviction), never per request; a rate set by learning is not a request.
#[derive(Debug)]
pub(super) struct Usage {
    slots: Mutex<Vec<Used>>,
}

impl Usage {
    pub(super) fn new(keys: usize) -> Usage {
        Usage {
            slots: Mutex::new(vec![Used::default(); keys + 1]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Used>> {
        // a poisoned lock only means a thread panicked while holding it; the lists stand
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `partition` took the quota of key `key` (`None`: the default).
    pub(super) fn note(&self, key: Option<usize>, partition: &PartitionKey) {
        let mut slots = self.lock();
        let last = slots.len() - 1;
        let Some(used) = slots.get_mut(key.unwrap_or(last)) else {
            return;
        };
        if used.partitions.contains(partition) {
            return;
        }
        if used.partitions.len() < NAMED_PARTITIONS {
            used.partitions.push(partition.clone());
        } else {
            used.more = true;
        }
    }

    /// Every key, in the order of [`RateKeys::keys`], then the default.
    pub(super) fn report(&self, keys: &RateKeys) -> Vec<KeyUsage> {
        let slots = self.lock();
        let named = keys.keys().iter().map(|(k, q)| (Some(k.clone()), *q));
        named
            .chain(std::iter::once((None, keys.default_quota())))
            .zip(slots.iter())
            .map(|((key, quota), used)| KeyUsage {
                key,
                quota,
                partitions: used.partitions.clone(),
                more: used.more,
            })
            .collect()
    }
}
