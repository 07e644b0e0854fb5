//! The learning policies: [`LearningPolicy::Adaptive`] (default) and
//! [`LearningPolicy::Progressive`].

use serde::{Deserialize, Serialize};

/// How the learner moves a partition's rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LearningPolicy {
    /// Multiplicative decrease on throttling, recovery along a cubic curve on success
    /// (as the AWS SDKs' adaptive retry mode): the rate comes back when the provider
    /// stops throttling. The default.
    Adaptive(AdaptiveConfig),
    /// The seed design exactly: 0–2 consecutive 429s change nothing; the 3rd and 4th
    /// take 10% off the rate each, the 5th to 9th 20% each, the 10th and later 30% each
    /// (the reductions compound); the total reduction is capped at 80% of the ceiling and
    /// the rate never goes below 1 req/s (or the ceiling, if that is lower). A success
    /// resets the consecutive count; the rate does not come back up.
    Progressive,
}

impl Default for LearningPolicy {
    fn default() -> Self {
        LearningPolicy::Adaptive(AdaptiveConfig::default())
    }
}

impl LearningPolicy {
    /// The policy's name: `"adaptive"` or `"progressive"`.
    pub fn name(&self) -> &'static str {
        match self {
            LearningPolicy::Adaptive(_) => "adaptive",
            LearningPolicy::Progressive => "progressive",
        }
    }

    /// Checks the policy's parameters; the error names the field.
    pub fn validate(&self) -> Result<(), LearningConfigError> {
        match self {
            LearningPolicy::Adaptive(cfg) => cfg.validate(),
            LearningPolicy::Progressive => Ok(()),
        }
    }
}

/// Parameters of [`LearningPolicy::Adaptive`].
///
/// The policy remembers the rate at which the provider last pushed back, `W` (CUBIC's
/// `W_max`), and how many times that ceiling was confirmed. After a throttle below the
/// remembered ceiling (or the first one) the rate drops to `beta × W` (`beta² × W` when a
/// throttle with `Retry-After` comes for a request that left within a second of its rate's
/// start: the rate is far above the limit, and each step costs the pause; `W` is then
/// taken as `beta ×` the throttled rate, a guess probed after half the usual hold), then
/// climbs along a concave cubic that flattens at `plateau × W` and stays there. Only after a hold of
/// `probe_hold_secs × 2^(confirmations − 1)` (at most `max_probe_hold_secs`) does it probe
/// above the plateau along a convex cubic (`plateau × (1 + 0.005 t³)`). A throttle during
/// a probe confirms the ceiling: the rate goes straight back to the plateau (no
/// multiplicative drop) and the next probe waits twice as long. A throttle after the rate
/// sat on the plateau for a while lowers the ceiling to that rate (a 5% step down, no
/// drop). A probe that climbs past `1.5 × W` without a throttle forgets the ceiling (the
/// limit rose) and doubles each second from there (as slow start does); a throttle of a
/// rate that has run for a second then takes the ceiling from the requests the provider
/// accepted in that second, not from the overshooting rate. A plateau raised by a probe
/// that is throttled before it settles goes back to the ceiling whose plateau held, and
/// the confirmations stand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveConfig {
    /// Multiplicative decrease factor on throttling, in (0, 1). Default 0.7.
    pub beta: f64,
    /// CUBIC's scale constant `C`, in requests/s per s³. Default 0.4.
    pub scale: f64,
    /// The floor, in requests per second (> 0). Default 0.5.
    pub min_rate: f64,
    /// Where the rate settles, as a fraction of the remembered ceiling, in (0, 1].
    /// Default 0.97.
    pub plateau: f64,
    /// How long the rate stays on the plateau before the first probe above it, in
    /// seconds (> 0); doubled for each confirmation of the same ceiling. Default 8.
    pub probe_hold_secs: f64,
    /// The longest hold before a probe, in seconds (≥ `probe_hold_secs`): how long a
    /// raised limit can go unnoticed. Default 16.
    pub max_probe_hold_secs: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            beta: 0.7,
            scale: 0.4,
            min_rate: 0.5,
            plateau: 0.97,
            probe_hold_secs: 8.0,
            max_probe_hold_secs: 16.0,
        }
    }
}

impl AdaptiveConfig {
    fn validate(&self) -> Result<(), LearningConfigError> {
        if !(self.beta > 0.0 && self.beta < 1.0) {
            return Err(LearningConfigError::new(
                "adaptive.beta",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(LearningConfigError::new("adaptive.scale", "must be a positive number"));
        }
        if !(self.min_rate.is_finite() && self.min_rate > 0.0) {
            return Err(LearningConfigError::new(
                "adaptive.min_rate",
                "must be a positive number of requests per second",
            ));
        }
        if !(self.plateau > 0.0 && self.plateau <= 1.0) {
            return Err(LearningConfigError::new(
                "adaptive.plateau",
                "must be a fraction of the ceiling above 0 and at most 1",
            ));
        }
        if !(self.probe_hold_secs.is_finite() && self.probe_hold_secs > 0.0) {
            return Err(LearningConfigError::new(
                "adaptive.probe_hold_secs",
                "must be a positive number of seconds",
            ));
        }
        if !(self.max_probe_hold_secs.is_finite() && self.max_probe_hold_secs >= self.probe_hold_secs) {
            return Err(LearningConfigError::new(
                "adaptive.max_probe_hold_secs",
                "must be a number of seconds at least `probe_hold_secs`",
            ));
        }
        Ok(())
    }

    /// How long the rate holds on the plateau before probing, after `confirmations`
    /// confirmations of the same ceiling (1 for a ceiling just found).
    pub(super) fn hold(&self, confirmations: u32) -> f64 {
        let doublings = confirmations.saturating_sub(1).min(30) as i32;
        (self.probe_hold_secs * 2f64.powi(doublings)).min(self.max_probe_hold_secs)
    }

    /// The rate `t` seconds into a curve that starts at `r0` below a remembered ceiling
    /// `w` and holds `hold` seconds on the plateau before probing (before clamping).
    pub(super) fn curve(&self, r0: f64, w: f64, hold: f64, t: f64) -> f64 {
        let plateau = (self.plateau * w).max(r0);
        let k = ((plateau - r0) / self.scale).cbrt();
        if t < k {
            plateau - (plateau - r0) * (1.0 - t / k).powi(3)
        } else if t < k + hold {
            plateau
        } else {
            // Past `FORGET_ABOVE × w` without a throttle the limit has risen, and the probe
            // doubles each second from there (as slow start does) instead of following the
            // cubic, so a raised limit is found within seconds.
            let tau = t - k - hold;
            let cubic = plateau * (1.0 + PROBE_GAIN * tau.powi(3));
            let forget = FORGET_ABOVE * w;
            if cubic <= forget || forget <= plateau {
                cubic
            } else {
                let tau_forget = ((forget / plateau - 1.0) / PROBE_GAIN).cbrt();
                forget * 2f64.powf((tau - tau_forget).min(30.0))
            }
        }
    }
}

/// A probe that climbs past this multiple of the remembered ceiling without a throttle
/// forgets it: the limit rose.
pub(super) const FORGET_ABOVE: f64 = 1.5;

/// How fast a probe climbs above the plateau, relative to it, per s³: +4% after 2 s,
/// +50% (past which the ceiling is forgotten, see [`FORGET_ABOVE`]) after 4.8 s; from
/// there it doubles each second. Slow at first, because a limiter with a burst answers
/// 429 only once the burst is spent, and a fast probe would be far above the limit by then.
pub(super) const PROBE_GAIN: f64 = 0.005;

/// Largest total reduction [`LearningPolicy::Progressive`] applies: 80% of the ceiling.
pub const PROGRESSIVE_MAX_REDUCTION: f64 = 0.8;

/// The rate [`LearningPolicy::Progressive`] never goes below: 1 request per second.
pub const PROGRESSIVE_MIN_RATE: f64 = 1.0;

/// The reduction (a fraction of the ceiling) [`LearningPolicy::Progressive`] applies for
/// the `n`th consecutive 429.
pub fn progressive_step(n: u32) -> f64 {
    match n {
        0..=2 => 0.0,
        3..=4 => 0.1,
        5..=9 => 0.2,
        _ => 0.3,
    }
}

/// A learning parameter is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid provider learning configuration: `{field}` {reason}")]
pub struct LearningConfigError {
    /// The field (`adaptive.beta`).
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub reason: &'static str,
}

impl LearningConfigError {
    fn new(field: &'static str, reason: &'static str) -> Self {
        LearningConfigError { field, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_climbs_to_the_plateau_holds_then_probes() {
        let cfg = AdaptiveConfig::default();
        let (w, hold) = (20.0, cfg.hold(1));
        let r0 = 0.7 * w;
        assert!((cfg.curve(r0, w, hold, 0.0) - r0).abs() < 1e-9);
        let k = ((cfg.plateau * w - r0) / cfg.scale).cbrt();
        let mut last = r0;
        for step in 1..=100 {
            let t = step as f64 * (k + hold + 5.0) / 100.0;
            let r = cfg.curve(r0, w, hold, t);
            assert!(r >= last - 1e-9, "the curve only rises");
            if t >= k && t <= k + hold {
                assert!((r - cfg.plateau * w).abs() < 1e-9, "on the plateau at {t}: {r}");
            }
            last = r;
        }
        assert!(last > w, "it probes above the ceiling after the hold");
        assert_eq!(
            (cfg.hold(1), cfg.hold(2), cfg.hold(3), cfg.hold(40)),
            (8.0, 16.0, 16.0, 16.0)
        );
    }

    #[test]
    fn past_the_forgotten_ceiling_the_probe_doubles_each_second() {
        let cfg = AdaptiveConfig::default();
        let (w, hold) = (20.0, cfg.hold(1));
        let plateau = cfg.plateau * w;
        // at the plateau from the start: k = 0, so the probe starts after `hold`
        let at = |tau: f64| cfg.curve(plateau, w, hold, hold + tau);
        let forget = ((FORGET_ABOVE / cfg.plateau - 1.0) / PROBE_GAIN).cbrt();
        assert!(at(forget - 0.5) < FORGET_ABOVE * w);
        assert!(
            (at(forget) - FORGET_ABOVE * w).abs() < 1e-6,
            "continuous where it forgets"
        );
        for tau in [forget + 0.3, forget + 1.0, forget + 2.5] {
            assert!((at(tau + 1.0) / at(tau) - 2.0).abs() < 1e-9, "doubles from {tau:.2} s");
        }
        // past 3× the old ceiling 1.1 s after forgetting it, where the cubic alone is at 2×
        assert!(at(forget + 1.1) > 3.0 * w);
        assert!(plateau * (1.0 + PROBE_GAIN * (forget + 1.1).powi(3)) < 2.1 * w);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = LearningPolicy::Adaptive(AdaptiveConfig {
            beta: 1.0,
            ..AdaptiveConfig::default()
        });
        assert_eq!(bad.validate().unwrap_err().field, "adaptive.beta");
        let bad = LearningPolicy::Adaptive(AdaptiveConfig {
            min_rate: 0.0,
            ..AdaptiveConfig::default()
        });
        assert!(bad.validate().unwrap_err().to_string().contains("`adaptive.min_rate`"));
        let bad = LearningPolicy::Adaptive(AdaptiveConfig {
            max_probe_hold_secs: 1.0,
            ..AdaptiveConfig::default()
        });
        assert_eq!(bad.validate().unwrap_err().field, "adaptive.max_probe_hold_secs");
        assert!(LearningPolicy::default().validate().is_ok());
    }
}
