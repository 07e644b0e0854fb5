//! Error types.

use super::store::{JobId, JobResult, JobState};
use crate::context::IdempotencyKey;

/// The operation's key is already settled (FINALIZED, or SKIPPED) in the ledger, so the
/// request was not sent: the recorded outcome is in [`job`](AlreadyFinalized::job).
///
/// This is how a short-circuit reaches the caller: as an error downcastable from
/// [`BoxError`](crate::error::BoxError), because a layer cannot make up a response of the
/// inner service's body type. It is not a failure of the work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is already {state} in the ledger ({job}); not sent again")]
pub struct AlreadyFinalized {
    /// The operation's key.
    pub key: IdempotencyKey,
    /// Its job.
    pub job: JobId,
    /// FINALIZED or SKIPPED.
    pub state: JobState,
    /// The recorded result (outcome, path, sha256, bytes, reason).
    pub result: JobResult,
}

impl AlreadyFinalized {
    /// The recorded result (outcome, path, sha256, bytes, reason).
    pub fn result(&self) -> &JobResult {
        &self.result
    }

    /// FINALIZED or SKIPPED.
    pub fn state(&self) -> JobState {
        self.state
    }
}

/// Another live worker holds the lease on this operation's key, so the request was not
/// sent (the work is not run twice). Try again after the lease expires, or leave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} ({job}) is leased by worker {owner:?} until {expires_at_ms:?} (Unix ms); not run twice")]
pub struct LeasedElsewhere {
    /// The operation's key.
    pub key: IdempotencyKey,
    /// Its job.
    pub job: JobId,
    /// The worker holding it.
    pub owner: Option<String>,
    /// When that lease expires, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
}

/// The caller's idempotency key cannot be written as an sf-string header (it must be
/// non-empty printable ASCII), so an unsafe request carrying it was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key {key:?} cannot be sent as an Idempotency-Key sf-string; use non-empty printable ASCII")]
pub struct InvalidIdempotencyKey {
    /// The key.
    pub key: IdempotencyKey,
}
