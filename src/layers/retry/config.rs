//! Configuration: one [`OperationPolicy`] per operation type, the standard policy, and
//! the retry budget. Every struct is serde-friendly (`#[serde(default)]`: a config file
//! names only what it changes).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Reaction;
use crate::context::OperationType;

/// How one operation type is retried. Durations are whole milliseconds so the struct
/// reads well in TOML or JSON.
///
/// The defaults are the standard policy ([`OperationPolicy::standard`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// No retry is started (and no hint is waited) past this time since the first attempt.
    pub max_total_time_ms: u64,
    /// The first retry's backoff; each later one doubles it.
    pub backoff_base_ms: u64,
    /// The largest computed backoff.
    pub backoff_cap_ms: u64,
    /// Randomise each backoff within its upper half ("equal jitter"), so that clients that
    /// failed together do not retry together.
    pub jitter: bool,
    /// Wait what the server asked for (a [`RetryAfterHint`](crate::context::RetryAfterHint))
    /// instead of the computed backoff.
    pub honour_retry_after: bool,
    /// Statuses that mean "throttled".
    pub throttle_statuses: Vec<u16>,
    /// Statuses that mean "the server timed out".
    pub timeout_statuses: Vec<u16>,
    /// Server errors worth retrying.
    pub server_error_statuses: Vec<u16>,
    /// On a throttling status, a [`CoolingDown`](crate::error::CoolingDown) or a
    /// [`RateLimitTimeout`](crate::error::RateLimitTimeout).
    pub on_throttle: Reaction,
    /// On a timeout: connect, read (`ReadTimeout`), tower's `Elapsed`, or a timeout status.
    pub on_timeout: Reaction,
    /// On a status in `server_error_statuses`.
    pub on_server_error: Reaction,
    /// On a connect error (refused, unreachable, DNS).
    pub on_connect_error: Reaction,
    /// On a connection reset, an incomplete message or a canceled request.
    pub on_reset: Reaction,
    /// On a 409 Conflict for a request that carries an Idempotency-Key (without a key a
    /// 409 always fails at once).
    pub on_conflict_with_key: Reaction,
    /// What to do when a retry is called for but cannot happen: attempts, time or budget
    /// used up, a hint beyond the deadline, or a request that cannot be resent.
    /// One of `fail`, `defer`, `failover`.
    pub give_up: Reaction,
}

impl OperationPolicy {
    /// The standard policy, used for every operation when contextual retry is off (and for
    /// `Extract`): retry 429, 408, 500/502/503/504, connect errors, timeouts and resets,
    /// honouring Retry-After; 4 attempts within 30 s; backoff 200 ms doubling to 4 s.
    pub fn standard() -> Self {
        OperationPolicy {
            max_attempts: 4,
            max_total_time_ms: 30_000,
            backoff_base_ms: 200,
            backoff_cap_ms: 4_000,
            jitter: true,
            honour_retry_after: true,
            throttle_statuses: vec![429],
            timeout_statuses: vec![408],
            server_error_statuses: vec![500, 502, 503, 504],
            on_throttle: Reaction::Retry,
            on_timeout: Reaction::Retry,
            on_server_error: Reaction::Retry,
            on_connect_error: Reaction::Retry,
            on_reset: Reaction::Retry,
            on_conflict_with_key: Reaction::Retry,
            give_up: Reaction::Fail,
        }
    }

    /// `Download`: aggressive, up to 6 attempts within 60 s.
    pub fn download() -> Self {
        OperationPolicy {
            max_attempts: 6,
            max_total_time_ms: 60_000,
            ..Self::standard()
        }
    }

    /// `Validate`: a 429 or a timeout defers the item at once; 5xx and connection
    /// trouble are retried (3 attempts within 20 s), then deferred.
    pub fn validate() -> Self {
        OperationPolicy {
            max_attempts: 3,
            max_total_time_ms: 20_000,
            on_throttle: Reaction::Defer,
            on_timeout: Reaction::Defer,
            give_up: Reaction::Defer,
            ..Self::standard()
        }
    }

    /// `Resolve`: a 429 fails over to the next resolver at once; timeouts and 5xx are
    /// retried up to 3 attempts within 30 s, then fail over.
    pub fn resolve() -> Self {
        OperationPolicy {
            max_attempts: 3,
            on_throttle: Reaction::Failover,
            give_up: Reaction::Failover,
            ..Self::standard()
        }
    }

    /// `ManifestFetch`: like `Validate` (a 429 or timeout defers), with 5 attempts within 60 s
    /// for server errors, since a listing page must not be lost.
    pub fn manifest_fetch() -> Self {
        OperationPolicy {
            max_attempts: 5,
            max_total_time_ms: 60_000,
            ..Self::validate()
        }
    }

    /// The default policy of an operation type in the contextual table.
    pub fn default_for(op: OperationType) -> Self {
        match op {
            OperationType::Download => Self::download(),
            OperationType::Validate => Self::validate(),
            OperationType::Resolve => Self::resolve(),
            OperationType::Extract => Self::standard(),
            OperationType::ManifestFetch => Self::manifest_fetch(),
        }
    }

    /// The deadline as a duration.
    pub fn max_total_time(&self) -> Duration {
        Duration::from_millis(self.max_total_time_ms)
    }

    fn validate_fields(&self, name: &str) -> Result<(), RetryConfigError> {
        let err = |field: &str, reason: &'static str| RetryConfigError {
            field: format!("{name}.{field}"),
            reason,
        };
        if self.max_attempts == 0 {
            return Err(err("max_attempts", "must be at least 1 (1 means never retry)"));
        }
        if self.backoff_base_ms > self.backoff_cap_ms {
            return Err(err("backoff_base_ms", "must not be larger than backoff_cap_ms"));
        }
        if self.give_up == Reaction::Retry {
            return Err(err("give_up", "must be fail, defer or failover"));
        }
        let statuses = [
            ("throttle_statuses", &self.throttle_statuses),
            ("timeout_statuses", &self.timeout_statuses),
            ("server_error_statuses", &self.server_error_statuses),
        ];
        for (field, list) in statuses {
            if list.iter().any(|s| !(100..=599).contains(s)) {
                return Err(err(field, "every entry must be an HTTP status between 100 and 599"));
            }
        }
        Ok(())
    }
}

impl Default for OperationPolicy {
    fn default() -> Self {
        Self::standard()
    }
}

/// The retry budget of each partition (Finagle / gRPC style, built on tower's
/// [`TpsBudget`](tower::retry::budget::TpsBudget)): retries may add at most
/// `retry_ratio` of the recent first attempts, on top of a floor of `min_retries_per_sec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Switch the budget off (retries limited only by each policy).
    pub enabled: bool,
    /// How long a first attempt counts toward the budget, in seconds (1 to 60).
    pub ttl_secs: u64,
    /// Retries always allowed per second, however little traffic there is.
    pub min_retries_per_sec: u32,
    /// Retries allowed per first attempt (0.2 = retries add at most 20%).
    pub retry_ratio: f32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            enabled: true,
            ttl_secs: 10,
            min_retries_per_sec: 2,
            retry_ratio: 0.2,
        }
    }
}

/// The whole retry configuration: a policy per operation type, the standard policy, and
/// the budget. `contextual = false` gives every operation the `standard` policy (the
/// feature gate `DOCSTOKG_ENABLE_CONTEXTUAL_RETRY=false`).
///
/// ```
/// use contentdownload::layers::retry::RetryConfig;
///
/// let config: RetryConfig = serde_json::from_str(r#"{
///     "download": { "max_attempts": 8, "max_total_time_ms": 120000 },
///     "budget": { "retry_ratio": 0.1 }
/// }"#).unwrap();
/// assert_eq!(config.download.max_attempts, 8);
/// assert_eq!(config.download.backoff_base_ms, 200); // the rest keeps its default
/// assert_eq!(config.resolve.max_attempts, 3);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Choose the policy by operation type (default `true`); `false` uses `standard` for all.
    pub contextual: bool,
    /// `Download`.
    pub download: OperationPolicy,
    /// `Validate`.
    pub validate: OperationPolicy,
    /// `Resolve`.
    pub resolve: OperationPolicy,
    /// `Extract`.
    pub extract: OperationPolicy,
    /// `ManifestFetch`.
    pub manifest_fetch: OperationPolicy,
    /// Used for every operation when `contextual` is `false`.
    pub standard: OperationPolicy,
    /// The per-partition retry budget.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            contextual: true,
            download: OperationPolicy::download(),
            validate: OperationPolicy::validate(),
            resolve: OperationPolicy::resolve(),
            extract: OperationPolicy::standard(),
            manifest_fetch: OperationPolicy::manifest_fetch(),
            standard: OperationPolicy::standard(),
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    /// The standard (non-contextual) configuration: every operation gets
    /// [`OperationPolicy::standard`].
    pub fn standard() -> Self {
        RetryConfig {
            contextual: false,
            ..Self::default()
        }
    }

    /// The policy that applies to an operation type.
    pub fn policy(&self, op: OperationType) -> &OperationPolicy {
        if !self.contextual {
            return &self.standard;
        }
        match op {
            OperationType::Download => &self.download,
            OperationType::Validate => &self.validate,
            OperationType::Resolve => &self.resolve,
            OperationType::Extract => &self.extract,
            OperationType::ManifestFetch => &self.manifest_fetch,
        }
    }

    /// The policy of an operation type, to change it.
    pub fn policy_mut(&mut self, op: OperationType) -> &mut OperationPolicy {
        match op {
            OperationType::Download => &mut self.download,
            OperationType::Validate => &mut self.validate,
            OperationType::Resolve => &mut self.resolve,
            OperationType::Extract => &mut self.extract,
            OperationType::ManifestFetch => &mut self.manifest_fetch,
        }
    }

    /// Checks every field; the error names the first bad one (`resolve.max_attempts`).
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        for op in OperationType::ALL {
            let policy = match op {
                OperationType::Download => &self.download,
                OperationType::Validate => &self.validate,
                OperationType::Resolve => &self.resolve,
                OperationType::Extract => &self.extract,
                OperationType::ManifestFetch => &self.manifest_fetch,
            };
            policy.validate_fields(op.as_str())?;
        }
        self.standard.validate_fields("standard")?;
        let budget_err = |field: &str, reason: &'static str| RetryConfigError {
            field: format!("budget.{field}"),
            reason,
        };
        if !(1..=60).contains(&self.budget.ttl_secs) {
            return Err(budget_err("ttl_secs", "must be between 1 and 60 seconds"));
        }
        if !(0.0..=1000.0).contains(&self.budget.retry_ratio) {
            return Err(budget_err("retry_ratio", "must be between 0 and 1000"));
        }
        if self.budget.min_retries_per_sec >= i32::MAX as u32 {
            return Err(budget_err("min_retries_per_sec", "is too large"));
        }
        Ok(())
    }
}

/// A [`RetryConfig`] field holds a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry config field `{field}`: {reason}")]
pub struct RetryConfigError {
    /// The field, with its section (`resolve.max_attempts`).
    pub field: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design_table() {
        let c = RetryConfig::default();
        c.validate().unwrap();
        assert_eq!(c.policy(OperationType::Download).max_attempts, 6);
        assert_eq!(
            c.policy(OperationType::Download).max_total_time(),
            Duration::from_secs(60)
        );
        assert_eq!(c.policy(OperationType::Validate).on_throttle, Reaction::Defer);
        assert_eq!(c.policy(OperationType::ManifestFetch).on_timeout, Reaction::Defer);
        assert_eq!(c.policy(OperationType::Resolve).on_throttle, Reaction::Failover);
        assert_eq!(c.policy(OperationType::Resolve).give_up, Reaction::Failover);
        assert_eq!(c.policy(OperationType::Extract), &OperationPolicy::standard());
        let s = RetryConfig::standard();
        for op in OperationType::ALL {
            assert_eq!(s.policy(op), &OperationPolicy::standard());
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut c = RetryConfig::default();
        c.resolve.max_attempts = 0;
        assert_eq!(c.validate().unwrap_err().field, "resolve.max_attempts");
        let mut c = RetryConfig::default();
        c.standard.backoff_base_ms = 10_000;
        assert_eq!(c.validate().unwrap_err().field, "standard.backoff_base_ms");
        let mut c = RetryConfig::default();
        c.policy_mut(OperationType::Download).give_up = Reaction::Retry;
        assert_eq!(c.validate().unwrap_err().field, "download.give_up");
        let mut c = RetryConfig::default();
        c.extract.server_error_statuses.push(1000);
        assert_eq!(c.validate().unwrap_err().field, "extract.server_error_statuses");
        let mut c = RetryConfig::default();
        c.budget.ttl_secs = 0;
        let err = c.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid retry config field `budget.ttl_secs`: must be between 1 and 60 seconds"
        );
        let unknown = serde_json::from_str::<RetryConfig>(r#"{"download": {"max_attempt": 3}}"#);
        assert!(unknown.unwrap_err().to_string().contains("max_attempt"));
    }

    #[test]
    fn round_trips_through_json() {
        let c = RetryConfig::default();
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"on_throttle\":\"failover\""), "{json}");
        assert_eq!(serde_json::from_str::<RetryConfig>(&json).unwrap(), c);
    }
}
