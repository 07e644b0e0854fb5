//! Exponential backoff with jitter.

use std::time::Duration;

/// Exponential backoff: the n-th retry waits `base * 2^(n-1)`, at most `cap`; with jitter,
/// a uniformly random time in the upper half of that ("equal jitter": never less than half
/// the computed delay, so a storm still spreads out but never retries at once).
///
/// ```
/// use std::time::Duration;
/// use contentdownload::layers::retry::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(4), false);
/// assert_eq!(b.delay(1), Duration::from_millis(200));
/// assert_eq!(b.delay(3), Duration::from_millis(800));
/// assert_eq!(b.delay(10), Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`, with or without jitter.
    pub fn new(base: Duration, cap: Duration, jitter: bool) -> Self {
        Backoff { base, cap, jitter }
    }

    /// The largest delay before retry number `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << shift).min(self.cap)
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let hi = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(hi / 2..=hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn within_half_and_whole_of_the_capped_ceiling(base_ms in 0u64..10_000, cap_ms in 0u64..100_000, retry in 0u32..100) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms), true);
            let ceiling = b.ceiling(retry);
            prop_assert!(ceiling <= Duration::from_millis(cap_ms));
            let d = b.delay(retry);
            prop_assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
        }

        #[test]
        fn ceilings_never_decrease(base_ms in 1u64..10_000, retry in 1u32..60) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_secs(4), false);
            prop_assert!(b.ceiling(retry + 1) >= b.ceiling(retry));
        }
    }
}
