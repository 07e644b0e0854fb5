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
/// After a throttle at rate `W`, the rate drops to `beta × W`; then, on each success `t`
/// seconds after the drop, it is `scale × (t − K)³ + W` with `K = ∛(W (1 − beta) / scale)`:
/// it climbs fast at first, flattens near `W` (where the provider last pushed back), and
/// probes beyond it, up to the ceiling. This is CUBIC's window curve as the AWS SDKs use
/// it for their adaptive retry mode's send rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveConfig {
    /// Multiplicative decrease factor on throttling, in (0, 1). Default 0.7.
    pub beta: f64,
    /// CUBIC's scale constant `C`, in requests/s per s³. Default 0.4.
    pub scale: f64,
    /// The floor, in requests per second (> 0). Default 0.5.
    pub min_rate: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            beta: 0.7,
            scale: 0.4,
            min_rate: 0.5,
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
        Ok(())
    }

    /// `K`: how long after a drop from `w_max` the cubic curve takes to get back to it.
    pub(super) fn k(&self, w_max: f64) -> f64 {
        (w_max * (1.0 - self.beta) / self.scale).cbrt()
    }

    /// The rate `t` seconds after a drop from `w_max` (before clamping).
    pub(super) fn cubic(&self, w_max: f64, t: f64) -> f64 {
        self.scale * (t - self.k(w_max)).powi(3) + w_max
    }
}

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
    fn cubic_starts_at_beta_w_and_returns_to_w_at_k() {
        let cfg = AdaptiveConfig::default();
        let w = 20.0;
        assert!((cfg.cubic(w, 0.0) - 0.7 * w).abs() < 1e-9);
        assert!((cfg.cubic(w, cfg.k(w)) - w).abs() < 1e-9);
        assert!(cfg.cubic(w, cfg.k(w) + 2.0) > w);
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
        assert!(LearningPolicy::default().validate().is_ok());
    }
}
