//! One partition's GCRA bucket.

use std::time::Duration;

use super::config::{Quota, MIN_RATE};

/// One partition's bucket, kept as a GCRA "theoretical arrival time" (`tat`): the time
/// at which the bucket would be full again. Reservations are numbered (`issued`), and the
/// time of reservation `i` is linear in `i` from an anchor, so that a rate change can move
/// the slots of requests already waiting (they check again when they wake up): see
/// [`RateLimiter::slot_of`](super::RateLimiter::slot_of).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) rate: f64,
    pub(super) burst: u32,
    /// 1 / rate, in seconds.
    pub(super) interval: f64,
    /// `tat` of reservation number `anchor_index`, in seconds from the limiter's epoch.
    pub(super) anchor_time: f64,
    pub(super) anchor_index: f64,
    /// How many reservations were handed out.
    pub(super) issued: u64,
    /// The end of the latest [`hold`](Bucket::hold), in seconds from the limiter's epoch
    /// (negative infinity: none): a rate change re-spaces the waiting reservations from
    /// here, so it neither shortens nor stretches the hold.
    pub(super) held_until: f64,
    /// The rate key that gave the quota (its index in the limiter's
    /// [`RateKeys`](super::RateKeys)); `None` for the default.
    pub(super) rate_key: Option<usize>,
}

impl Bucket {
    pub(super) fn new(quota: Quota, rate_key: Option<usize>, now: f64) -> Bucket {
        let rate = quota.rate.max(MIN_RATE);
        Bucket {
            rate,
            burst: quota.burst.max(1),
            interval: 1.0 / rate,
            anchor_time: now,
            anchor_index: 0.0,
            issued: 0,
            held_until: f64::NEG_INFINITY,
            rate_key,
        }
    }

    /// The bucket's theoretical arrival time before reservation `index`.
    pub(super) fn tat_of(&self, index: f64) -> f64 {
        self.anchor_time + (index - self.anchor_index) * self.interval
    }

    pub(super) fn tat(&self) -> f64 {
        self.tat_of(self.issued as f64)
    }

    /// How far ahead of `tat` a request may be admitted: `burst - 1` intervals.
    pub(super) fn tolerance(&self) -> f64 {
        f64::from(self.burst - 1) * self.interval
    }

    /// The send time of reservation `index`.
    pub(super) fn slot_of(&self, index: u64) -> f64 {
        self.tat_of(index as f64) - self.tolerance()
    }

    /// Holds every reservation whose slot is still ahead of `now` (and every later one)
    /// until `until`: the first of them moves to `until`, the rest follow at the interval.
    /// Nothing changes when that first slot is already at or after `until`.
    pub(super) fn hold(&mut self, now: f64, until: f64) {
        self.held_until = self.held_until.max(until);
        let tolerance = self.tolerance();
        // the (fractional) reservation number whose slot is `now`; later ones are waiting
        let at_now = self.anchor_index + (now + tolerance - self.anchor_time) / self.interval;
        let first = (at_now.floor() + 1.0).clamp(0.0, self.issued as f64);
        if self.tat_of(first) - tolerance < until {
            self.anchor_time = until + tolerance;
            self.anchor_index = first;
        }
    }

    /// Moves the anchor to `tat = at` for the next reservation.
    pub(super) fn anchor(&mut self, at: f64) {
        self.anchor_time = at;
        self.anchor_index = self.issued as f64;
    }
}

/// A non-negative number of seconds as a duration; float noise under a microsecond (and
/// any negative value) is zero, so that a slot that has come is not waited for again.
pub(super) fn secs(d: f64) -> Duration {
    if d < 1e-6 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d).unwrap_or(Duration::ZERO)
}

/// A reservation handed out by [`RateLimiter::reserve_ticket`](super::RateLimiter::reserve_ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// How long to wait before sending (zero when a token was there).
    pub wait: Duration,
    /// The reservation's number in its bucket, for [`RateLimiter::slot_of`](super::RateLimiter::slot_of).
    pub index: u64,
}
