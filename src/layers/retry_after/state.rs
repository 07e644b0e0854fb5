//! [`Cooldowns`]: the per-partition cool-down deadlines, shared across clones.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::context::{PartitionKey, PartitionMap};

/// Above this many entries, expired ones are swept out when a new one is added.
const SWEEP_AT: usize = 256;

/// The cool-down deadlines of every partition, behind an `Arc`: clones share them.
///
/// One [`RetryAfterLayer`](super::RetryAfterLayer) (and every service built from it or
/// from its clones) shares one `Cooldowns`; pass the same handle to the layers of several
/// stacks with [`RetryAfterLayer::with_cooldowns`](super::RetryAfterLayer::with_cooldowns)
/// so that a 429 seen by one operation type pauses the others too.
///
/// The critical section is a hash-map lookup; when no partition is cooling down, a
/// request does not take the lock at all. Expired entries are dropped when looked up, and
/// swept when the map grows past a few hundred partitions.
#[derive(Clone, Default)]
pub struct Cooldowns {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    map: Mutex<PartitionMap<Instant>>,
    len: AtomicUsize,
}

impl Cooldowns {
    /// An empty set of cool-downs.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, PartitionMap<Instant>> {
        // a panic elsewhere while holding the lock leaves a valid map of instants
        self.inner.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the partition's cool-down ends, if it is cooling down now.
    pub fn until(&self, partition: &PartitionKey) -> Option<Instant> {
        if self.inner.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let now = Instant::now();
        let mut map = self.lock();
        match map.get(partition) {
            Some(&until) if until > now => Some(until),
            Some(_) => {
                map.remove(partition);
                self.inner.len.store(map.len(), Ordering::Release);
                None
            }
            None => None,
        }
    }

    /// Starts (or extends) a cool-down of the partition until `until`; an earlier deadline
    /// never shortens a later one.
    pub fn extend(&self, partition: PartitionKey, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, t| *t > now);
        }
        let entry = map.entry(partition).or_insert(until);
        if *entry < until {
            *entry = until;
        }
        self.inner.len.store(map.len(), Ordering::Release);
    }

    /// Ends a partition's cool-down now.
    pub fn clear(&self, partition: &PartitionKey) {
        let mut map = self.lock();
        map.remove(partition);
        self.inner.len.store(map.len(), Ordering::Release);
    }

    /// The partitions cooling down now, with their deadlines.
    pub fn active(&self) -> Vec<(PartitionKey, Instant)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(k, t)| (k.clone(), *t))
            .collect()
    }
}

impl fmt::Debug for Cooldowns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cooldowns")
            .field("partitions", &self.inner.len.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn deadlines_extend_expire_and_are_shared() {
        let a = Cooldowns::new();
        let b = a.clone();
        let p = PartitionKey::new("crossref", "api.crossref.org");
        let q = PartitionKey::new("unpaywall", "api.unpaywall.org");
        assert_eq!(a.until(&p), None);
        let t2 = Instant::now() + Duration::from_secs(2);
        a.extend(p.clone(), t2);
        a.extend(p.clone(), Instant::now() + Duration::from_secs(1));
        assert_eq!(b.until(&p), Some(t2), "a shorter hint does not shorten, clones share");
        assert_eq!(b.until(&q), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.until(&p), None);
        assert!(a.active().is_empty());
        a.extend(q.clone(), Instant::now() + Duration::from_secs(5));
        b.clear(&q);
        assert_eq!(a.until(&q), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept() {
        let c = Cooldowns::new();
        for i in 0..SWEEP_AT {
            c.extend(
                PartitionKey::new("p", format!("h{i}")),
                Instant::now() + Duration::from_secs(1),
            );
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        c.extend(PartitionKey::new("p", "new"), Instant::now() + Duration::from_secs(1));
        assert_eq!(c.lock().len(), 1);
    }
}
