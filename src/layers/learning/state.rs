//! Per-partition learning state and its [`PartitionStatus`] report.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::policy::{
    progressive_step, AdaptiveConfig, LearningPolicy, FORGET_ABOVE, PROGRESSIVE_MAX_REDUCTION, PROGRESSIVE_MIN_RATE,
};
use crate::context::PartitionKey;

/// How many recovery times a partition keeps (the oldest go first).
pub const MAX_RECOVERY_TIMES: usize = 50;

/// A throttle more than this long after the rate reached its plateau means the plateau
/// is a little too high (not that the rate is still far above the limit).
const SETTLE_SECS: f64 = 2.0;

/// When a throttle shows the limit is lower than remembered, the new ceiling is this
/// fraction of the rate the throttled request was sent at.
const FAST_CONVERGENCE: f64 = 0.9;

/// A probe that meets the limit below this multiple of the plateau that held leaves the
/// ceiling where it is: raising it by a few percent gains less than the pause a plateau
/// a little too high soon costs.
const RAISE_ABOVE: f64 = 1.05;

/// A settled plateau that meets the limit is remembered as at most this multiple of the
/// requests the provider accepted in the second before (a little more than them: a count
/// over one second is coarse at low rates).
const ACCEPTED_MARGIN: f64 = 1.03;

/// After an early throttle (see [`EARLY`]) the ceiling is a guess, not a measurement: the
/// rate probes above it after this fraction of the usual hold.
const GUESSED_HOLD: f64 = 0.5;

/// The most success times a partition keeps to measure its delivery rate (the successes
/// in the last second). Above this many per second the measurement saturates and the
/// throttle falls back to [`FAST_CONVERGENCE`]; it bounds memory with many fast partitions.
const MAX_DELIVERED: usize = 512;

/// A throttle with a `Retry-After` of a request sent within this long of its rate's start
/// (or before the rate had any success) is "early": the rate is far above the limit and
/// drops by β².
const EARLY: Duration = Duration::from_secs(1);

/// After a decrease, further 429s within the response's `Retry-After` period, but at most
/// this long, do not decrease the rate again. Longer would let requests already queued at
/// the old rate pour in unchecked where the cool-down does not hold them; shorter lets a
/// limiter that counts its own refusals (HAProxy's `http_req_rate`) collapse the rate in
/// one second with a dozen decreases.
const MAX_QUIET: Duration = Duration::from_millis(250);

/// After a gentle step (a probe met the limit, or a settled plateau was throttled), the
/// rate is already near the limit: 429s within the `Retry-After` period, up to this long,
/// are the requests queued before the step, not news.
const MAX_GENTLE_QUIET: Duration = Duration::from_secs(5);

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
    /// Adaptive: the remembered ceiling, the rate at which the provider last pushed back.
    pub(super) w_max: f64,
    /// Adaptive: how many times that ceiling was confirmed (0: none is known).
    pub(super) confirmations: u32,
    /// Adaptive: the last plateau that was throttled after it had settled: the limit is
    /// just under it (forgotten with the ceiling when a probe shows the limit rose).
    pub(super) too_high: Option<f64>,
    /// Adaptive: the ceiling before the last probe raised it (its plateau held); a throttle
    /// of the raised plateau before it settles goes back to it.
    pub(super) raised_from: Option<f64>,
    /// Adaptive: when the rate was last decreased; `None` at the ceiling.
    pub(super) last_decrease: Option<Instant>,
    /// Adaptive: when the current curve's clock started: the first success of a request
    /// sent after the decrease (the rate does not climb while the provider is still
    /// throttling or a cool-down holds every request); `None` until then.
    pub(super) curve_from: Option<Instant>,
    /// Adaptive: the end of the last decrease's `Retry-After` period.
    pub(super) quiet_until: Option<Instant>,
    /// Adaptive: the rate the current curve started from.
    pub(super) r0: f64,
    /// Adaptive: the current curve's hold on the plateau, in seconds.
    pub(super) hold: f64,
    pub(super) throttled_since: Option<Instant>,
    pub(super) throttles: u64,
    pub(super) successes: u64,
    /// Adaptive: when the successful requests of the last second were sent (at most
    /// [`MAX_DELIVERED`]), to measure how many the provider accepts per second.
    pub(super) delivered: VecDeque<Instant>,
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
            confirmations: 0,
            too_high: None,
            raised_from: None,
            last_decrease: None,
            curve_from: None,
            quiet_until: None,
            r0: configured,
            hold: 0.0,
            throttled_since: None,
            throttles: 0,
            successes: 0,
            delivered: VecDeque::new(),
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

    /// `asked_wait`: the response's `Retry-After`, if any.
    pub(super) fn on_throttle(
        &mut self,
        policy: &LearningPolicy,
        now: Instant,
        sent_at: Instant,
        asked_wait: Option<Duration>,
    ) {
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
                // ... and once per Retry-After period: requests that were already queued
                // (or a limiter that counts its own refusals) answer 429 for a while, and
                // each of those is not news.
                if self.quiet_until.is_some_and(|q| now < q) {
                    return;
                }
                // The rate the throttled request was sent at (the curve may have risen
                // since, and a fast probe would otherwise overstate the ceiling).
                let sent_rate = self.rate_at(cfg, sent_at).min(self.rate);
                let plateau = cfg.plateau * self.w_max;
                let probing = self.confirmations > 0 && sent_rate > plateau * (1.0 + 1e-9);
                // Sent after the rate had settled on the plateau for a while (not while
                // it was still climbing towards it).
                let settled = self.confirmations > 0
                    && self.curve_from.is_some_and(|c| {
                        let k = ((plateau.max(self.r0) - self.r0) / cfg.scale).cbrt();
                        sent_at >= c + Duration::from_secs_f64(k + SETTLE_SECS)
                    });
                let early = asked_wait.is_some() && self.curve_from.is_none_or(|c| sent_at < c + EARLY);
                // The requests the provider accepted in the second before this one was sent.
                let recent = self
                    .delivered
                    .iter()
                    .filter(|&&t| t <= sent_at && t + Duration::from_secs(1) > sent_at)
                    .count() as f64;
                let raised_back = if probing || settled { None } else { self.raised_from };
                if probing {
                    // A probe above the plateau met the limit: the same ceiling again. Its
                    // 429 comes once the server's burst is spent, above the limit, so the
                    // ceiling moves only halfway up to the probe's rate, and never above a
                    // plateau that was throttled after it settled (that evidence is
                    // precise). Back to the plateau, no multiplicative drop; the next probe
                    // waits longer.
                    self.confirmations = self.confirmations.saturating_add(1);
                    let held = cfg.plateau * self.w_max;
                    let w = if sent_rate > held * RAISE_ABOVE && sent_rate > self.w_max {
                        (self.w_max + sent_rate) / 2.0
                    } else if sent_rate > self.w_max {
                        self.w_max
                    } else {
                        sent_rate
                    };
                    let before = self.w_max;
                    self.w_max = self.too_high.map_or(w, |h| w.min(h));
                    self.raised_from = (self.w_max > before).then_some(before);
                    self.r0 = cfg.plateau * self.w_max;
                } else if let Some(before) = raised_back {
                    self.raised_from = None;
                    // The plateau raised after the last probe met the limit before it
                    // settled: the raise was too much. Back to the ceiling whose plateau
                    // held, the raised plateau remembered as too high; the confirmations
                    // stand (the ceiling was confirmed again), so the next probe waits as
                    // long as it would have.
                    self.too_high = Some(sent_rate.min(self.too_high.unwrap_or(f64::INFINITY)));
                    self.w_max = before;
                    self.r0 = cfg.plateau * before;
                } else if settled {
                    self.raised_from = None;
                    // The plateau held for a while, then met the limit: it is a little
                    // too high. Step down below it, no multiplicative drop. In the second
                    // before, the provider accepted `recent` requests: against a leaky
                    // bucket that has filled, that is its rate, a better ceiling than the
                    // rate sent.
                    self.w_max = if recent > 0.0 {
                        sent_rate.min(recent * ACCEPTED_MARGIN)
                    } else {
                        sent_rate
                    };
                    self.too_high = Some(self.w_max);
                    self.r0 = cfg.plateau * self.w_max;
                } else {
                    // The first throttle, or one while climbing: drop multiplicatively.
                    // A 429 comes once the server's burst is spent, so the rate it was
                    // sent at overstates the limit; when it is lower than the remembered
                    // ceiling, remember a little less (CUBIC's fast convergence).
                    //
                    // A throttle that asks for a wait before the rate has run for `EARLY`
                    // (the first one, or one right after a decrease) says the rate is far
                    // above the limit, not near it: drop twice (β²). Each step then costs a
                    // Retry-After pause, so a client started at several times the limit
                    // gets under it in a few pauses rather than many. (Without a wait, a
                    // step costs only a round trip: β.) Such a throttle also says the limit
                    // is nearer the new rate than the old one, so the curve climbs towards
                    // β × the throttled rate, not back to it (which would only meet the
                    // limit again, another pause), and probes above it after half the
                    // usual hold, since that ceiling is a guess.
                    //
                    // Otherwise the rate ran for a while and the provider's acceptance is
                    // measured: it accepted `recent` requests in the second before this
                    // one was sent, so the limit is at least about that (a window limiter
                    // such as HAProxy's accepts exactly its limit; a leaky bucket its rate
                    // plus what its burst still held). Fast convergence never remembers
                    // less than that measurement (nor more than the plateau under the
                    // throttled rate).
                    self.raised_from = None;
                    let lower = self.confirmations > 0 && sent_rate < self.w_max;
                    self.confirmations = 1;
                    // The rate ran for a full second since its curve started: `recent` is
                    // what the provider accepts, a better ceiling than the rate sent when the
                    // climb overshot (a probe that forgot the ceiling, or a fast recovery).
                    let ran = self.curve_from.is_some_and(|c| sent_at >= c + Duration::from_secs(1));
                    self.w_max = if early {
                        sent_rate * cfg.beta
                    } else if ran && !lower && recent > 0.0 {
                        (recent * ACCEPTED_MARGIN).max(sent_rate * cfg.beta).min(sent_rate)
                    } else if lower {
                        (sent_rate * FAST_CONVERGENCE).max(recent.min(sent_rate * cfg.plateau))
                    } else {
                        sent_rate
                    };
                    self.r0 = sent_rate * if early { cfg.beta * cfg.beta } else { cfg.beta };
                }
                self.r0 = self.r0.max(cfg.min_rate.min(ceiling)).min(ceiling);
                self.rate = self.r0;
                self.hold = cfg.hold(self.confirmations);
                let gentle = probing || settled || raised_back.is_some();
                if early && !gentle {
                    self.hold *= GUESSED_HOLD;
                }
                self.last_decrease = Some(now);
                // A gentle step (probe or settled plateau) keeps the rate near the limit, and
                // the requests queued before it answer 429 for the whole Retry-After period;
                // after a multiplicative drop, the next quarter second can say more.
                let quiet = if gentle { MAX_GENTLE_QUIET } else { MAX_QUIET };
                self.quiet_until = asked_wait.map(|w| now + w.min(quiet));
                self.curve_from = None;
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

    pub(super) fn on_success(&mut self, policy: &LearningPolicy, now: Instant, sent_at: Instant) {
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
        // (`t <= sent_at - 1 s` rather than `t + 1 s <= sent_at`, the same in whole
        // nanoseconds: one subtraction per success instead of an addition per time looked
        // at; an instant less than a second after the clock's origin has none before it)
        let horizon = sent_at.checked_sub(Duration::from_secs(1));
        while self.delivered.front().is_some_and(|&t| horizon.is_some_and(|h| t <= h))
            || self.delivered.len() >= MAX_DELIVERED
        {
            self.delivered.pop_front();
        }
        self.delivered.push_back(sent_at);
        let ceiling = self.ceiling();
        if self.rate >= ceiling {
            self.rate = ceiling;
            self.last_decrease = None;
            self.curve_from = None;
            return;
        }
        match self.last_decrease {
            // Below the ceiling with no curve on record (the ceiling rose): start a curve
            // through the current rate.
            None => self.start_recovery(policy, now),
            // The first success of a request sent at the decreased rate starts the climb.
            Some(d) if self.curve_from.is_none() && sent_at >= d => self.curve_from = Some(now),
            Some(_) => {}
        }
        let next = self.rate_at(cfg, now);
        // Recovery only raises the rate; a decrease comes from a throttle.
        if next > self.rate {
            self.rate = next;
        }
        if self.confirmations > 0 && self.rate > FORGET_ABOVE * self.w_max {
            // Probed well past the remembered ceiling without a throttle: the limit rose.
            self.confirmations = 0;
            self.too_high = None;
            self.raised_from = None;
        }
        if self.rate >= ceiling {
            self.last_decrease = None;
            self.curve_from = None;
        }
    }

    /// Adaptive: the rate the current curve gives at `at` (the current rate without a curve).
    fn rate_at(&self, cfg: &AdaptiveConfig, at: Instant) -> f64 {
        let Some(t0) = self.curve_from else {
            return self.rate;
        };
        let ceiling = self.ceiling();
        let t = at.saturating_duration_since(t0).as_secs_f64();
        cfg.curve(self.r0, self.w_max, self.hold, t)
            .clamp(cfg.min_rate.min(ceiling), ceiling)
    }

    /// Adaptive, below the ceiling: recover from `now` along a curve through the current
    /// rate (as if it had just been decreased to it). Used for states loaded from a file.
    pub(super) fn start_recovery(&mut self, policy: &LearningPolicy, now: Instant) {
        if let LearningPolicy::Adaptive(cfg) = policy {
            if self.rate < self.ceiling() {
                // The current rate is on the plateau of a ceiling confirmed once, unless a
                // ceiling is already remembered.
                if self.confirmations == 0 || self.w_max * cfg.plateau < self.rate {
                    self.w_max = self.rate / cfg.plateau;
                    self.confirmations = 1;
                }
                self.r0 = self.rate;
                self.hold = cfg.hold(self.confirmations);
                self.last_decrease = Some(now);
                self.curve_from = Some(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_success_counts_as_delivered_for_exactly_one_second() {
        let policy = LearningPolicy::default();
        let mut state = PartitionState::new(10.0);
        let t0 = Instant::now();
        state.on_success(&policy, t0, t0);
        let just_before = t0 + Duration::from_secs(1) - Duration::from_nanos(1);
        state.on_success(&policy, just_before, just_before);
        assert_eq!(state.delivered, [t0, just_before], "sent less than a second apart");
        let one_second = t0 + Duration::from_secs(1);
        state.on_success(&policy, one_second, one_second);
        assert_eq!(
            state.delivered,
            [just_before, one_second],
            "a second after: no longer counted"
        );
        // a response to a request sent earlier than the last one drops nothing newer
        state.on_success(&policy, one_second, t0);
        assert_eq!(state.delivered, [just_before, one_second, t0]);
    }
}
