//! Per-partition learning state and its [`PartitionStatus`] report.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::policy::{progressive_step, LearningPolicy, PROGRESSIVE_MAX_REDUCTION, PROGRESSIVE_MIN_RATE};
use crate::context::PartitionKey;

/// How many recovery times a partition keeps (the oldest go first).
pub const MAX_RECOVERY_TIMES: usize = 50;

/// Where a partition's rate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// At the ceiling, not throttled.
    Normal,
    /// The provider is throttling (the last response was a 429 or a 503 with Retry-After).
    Reducing,
    /// Below the ceiling and no longer throttled.
    Recovering,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Normal => "normal",
            Phase::Reducing => "reducing",
            Phase::Recovering => "recovering",
        })
    }
}

/// A snapshot of what the learner knows about one partition, from
/// [`Learner::status`](super::Learner::status) and [`Learner::statuses`](super::Learner::statuses).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: PartitionKey,
    /// Normal, reducing or recovering.
    pub phase: Phase,
    /// The rate the limiter is set to, in requests per second.
    pub rate: f64,
    /// The most the rate goes back up to: the provider's advertised rate, or the
    /// configured one.
    pub ceiling: f64,
    /// Whether the ceiling came from the provider's headers.
    pub advertised: bool,
    /// Throttling responses in a row.
    pub consecutive_429: u32,
    /// How far below the ceiling the rate is, as a fraction (0.3 = 30% lower).
    pub applied_reduction: f64,
    /// Throttling responses seen in total.
    pub throttles: u64,
    /// Successful responses seen in total.
    pub successes: u64,
    /// How long past throttling episodes lasted (first throttle to next success), newest
    /// last, at most 50.
    pub recovery_times: Vec<Duration>,
}

impl fmt::Display for PartitionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} at {:.2} req/s (ceiling {:.2}{}, reduced {:.0}%), {} consecutive 429s, {} throttled / {} ok",
            self.partition,
            self.phase,
            self.rate,
            self.ceiling,
            if self.advertised { ", advertised" } else { "" },
            self.applied_reduction * 100.0,
            self.consecutive_429,
            self.throttles,
            self.successes
        )
    }
}

/// What the learner keeps per partition. Times are tokio instants (not persisted).
#[derive(Debug, Clone)]
pub(super) struct PartitionState {
    pub(super) rate: f64,
    pub(super) configured: f64,
    pub(super) advertised: Option<f64>,
    pub(super) consecutive_429: u32,
    /// Progressive: the total reduction applied (compounded). Adaptive reports `1 - rate/ceiling`.
    pub(super) reduction: f64,
    pub(super) recovery_times: VecDeque<Duration>,
    /// Adaptive: the rate at the last decrease.
    pub(super) w_max: f64,
    pub(super) last_decrease: Option<Instant>,
    pub(super) throttled_since: Option<Instant>,
    pub(super) throttles: u64,
    pub(super) successes: u64,
}

impl PartitionState {
    pub(super) fn new(configured: f64) -> Self {
        PartitionState {
            rate: configured,
            configured,
            advertised: None,
            consecutive_429: 0,
            reduction: 0.0,
            recovery_times: VecDeque::new(),
            w_max: configured,
            last_decrease: None,
            throttled_since: None,
            throttles: 0,
            successes: 0,
        }
    }

    pub(super) fn ceiling(&self) -> f64 {
        self.advertised.unwrap_or(self.configured)
    }

    /// The provider advertised its rate: it becomes the ceiling. A rate above it comes
    /// down at once; a partition at the old ceiling follows the new one.
    pub(super) fn set_advertised(&mut self, ceiling: f64) {
        let at_ceiling = self.rate >= self.ceiling() && self.consecutive_429 == 0;
        self.advertised = Some(ceiling);
        if at_ceiling || self.rate > ceiling {
            self.rate = ceiling;
            self.last_decrease = None;
        }
    }

    pub(super) fn on_throttle(&mut self, policy: &LearningPolicy, now: Instant, sent_at: Instant) {
        self.throttles += 1;
        self.consecutive_429 = self.consecutive_429.saturating_add(1);
        self.throttled_since.get_or_insert(now);
        let ceiling = self.ceiling();
        match policy {
            LearningPolicy::Adaptive(cfg) => {
                // React once per round trip: a request sent before the last decrease was
                // sent at the old rate, and its 429 says nothing about the new one.
                if self.last_decrease.is_some_and(|d| sent_at < d) {
                    return;
                }
                self.w_max = self.rate;
                self.rate = (self.rate * cfg.beta).max(cfg.min_rate.min(ceiling));
                self.last_decrease = Some(now);
            }
            LearningPolicy::Progressive => {
                // Each step takes its percentage off the current rate (they compound);
                // the total is capped.
                let kept = (1.0 - self.reduction) * (1.0 - progressive_step(self.consecutive_429));
                self.reduction = (1.0 - kept).min(PROGRESSIVE_MAX_REDUCTION);
                self.rate = (ceiling * (1.0 - self.reduction)).max(PROGRESSIVE_MIN_RATE.min(ceiling));
            }
        }
    }

    pub(super) fn on_success(&mut self, policy: &LearningPolicy, now: Instant) {
        self.successes += 1;
        if let Some(since) = self.throttled_since.take() {
            if self.recovery_times.len() == MAX_RECOVERY_TIMES {
                self.recovery_times.pop_front();
            }
            self.recovery_times.push_back(now.saturating_duration_since(since));
        }
        self.consecutive_429 = 0;
        let LearningPolicy::Adaptive(cfg) = policy else {
            return;
        };
        let ceiling = self.ceiling();
        if self.rate >= ceiling {
            self.rate = ceiling;
            self.last_decrease = None;
            return;
        }
        let t0 = match self.last_decrease {
            Some(t0) => t0,
            None => {
                // Below the ceiling with no decrease on record (the ceiling rose): start a
                // curve through the current rate.
                self.start_recovery(policy, now);
                now
            }
        };
        let t = now.saturating_duration_since(t0).as_secs_f64();
        let next = cfg.cubic(self.w_max, t).clamp(cfg.min_rate.min(ceiling), ceiling);
        // Recovery only raises the rate; a decrease comes from a throttle.
        if next > self.rate {
            self.rate = next;
        }
        if self.rate >= ceiling {
            self.last_decrease = None;
        }
    }

    /// Adaptive, below the ceiling: recover from `now` along a curve through the current
    /// rate (as if it had just been decreased to it). Used for states loaded from a file.
    pub(super) fn start_recovery(&mut self, policy: &LearningPolicy, now: Instant) {
        if let LearningPolicy::Adaptive(cfg) = policy {
            if self.rate < self.ceiling() {
                self.w_max = self.rate / cfg.beta;
                self.last_decrease = Some(now);
            }
        }
    }

    pub(super) fn phase(&self) -> Phase {
        if self.consecutive_429 > 0 {
            Phase::Reducing
        } else if self.rate < self.ceiling() * (1.0 - 1e-9) {
            Phase::Recovering
        } else {
            Phase::Normal
        }
    }

    pub(super) fn applied_reduction(&self, policy: &LearningPolicy) -> f64 {
        match policy {
            LearningPolicy::Progressive => self.reduction,
            LearningPolicy::Adaptive(_) => (1.0 - self.rate / self.ceiling()).max(0.0),
        }
    }

    pub(super) fn status(&self, key: &PartitionKey, policy: &LearningPolicy) -> PartitionStatus {
        PartitionStatus {
            partition: key.clone(),
            phase: self.phase(),
            rate: self.rate,
            ceiling: self.ceiling(),
            advertised: self.advertised.is_some(),
            consecutive_429: self.consecutive_429,
            applied_reduction: self.applied_reduction(policy),
            throttles: self.throttles,
            successes: self.successes,
            recovery_times: self.recovery_times.iter().copied().collect(),
        }
    }
}
