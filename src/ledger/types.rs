//! The values the ledger stores and hands out: jobs, their states and results, ops.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::LedgerError;
use crate::context::{IdempotencyKey, WorkId};

// The vocabulary the ledger shares with the idempotency layer's claim store lives with the
// layer, so that the layer builds without the ledger (feature `ledger`); the ledger re-exports it.
pub(crate) use crate::layers::idempotency::hex;
pub use crate::layers::idempotency::{JobId, JobResult, JobState, NewJob};

impl JobState {
    /// Whether a leased job may be finished into this state (FINALIZED, FAILED, DEFERRED,
    /// SKIPPED): what [`Ledger::finish`](super::Ledger::finish) accepts.
    pub(crate) const fn is_finish_target(self) -> bool {
        JobState::Leased.can_become(self) && !matches!(self, JobState::Planned)
    }
}

impl FromStr for JobState {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt {
                what: "jobs.state",
                value: s.to_owned(),
            })
    }
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The run that planned it.
    pub run_id: String,
    /// The work it serves.
    pub work_id: WorkId,
    /// Its idempotency key.
    pub key: IdempotencyKey,
    /// The canonical URL it fetches.
    pub canonical_url: String,
    /// Its state.
    pub state: JobState,
    /// The worker holding the lease (LEASED only).
    pub lease_owner: Option<String>,
    /// When the lease expires, Unix milliseconds (LEASED only).
    pub lease_expires_at: Option<i64>,
    /// How many times it has been leased; a lease that expired (a crashed worker) stays counted.
    pub attempts: i64,
    /// When it was planned, Unix milliseconds.
    pub created_at: i64,
    /// When it last changed, Unix milliseconds.
    pub updated_at: i64,
    /// What happened, once it has a final state.
    pub result: JobResult,
}

/// The status of a side effect in the ops table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OpStatus {
    /// Begun and not (yet) finished.
    Started,
    /// Finished; its result is recorded.
    Finished,
    /// Begun by a worker that went away: found unfinished after the TTL by reconciliation.
    Abandoned,
}

impl OpStatus {
    /// The name stored in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            OpStatus::Started => "STARTED",
            OpStatus::Finished => "FINISHED",
            OpStatus::Abandoned => "ABANDONED",
        }
    }
}

impl FromStr for OpStatus {
    type Err = LedgerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [OpStatus::Started, OpStatus::Finished, OpStatus::Abandoned]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| LedgerError::Corrupt {
                what: "ops.status",
                value: s.to_owned(),
            })
    }
}

/// The key of one side effect: a SHA-256 of its kind, its job and its context (for
/// example the URL or byte range), lower-case hex. The same effect always gets the same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpKey(pub String);

impl OpKey {
    /// The key of effect `kind` (`"HEAD"`, `"STREAM"`, `"FINALIZE"`, ...) of `job` in `context`.
    pub fn of(kind: &str, job: JobId, context: &str) -> OpKey {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [kind.as_bytes(), &job.0.to_be_bytes(), context.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        OpKey(hex(&h.finalize()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One side effect as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its key.
    pub key: OpKey,
    /// The job it belongs to.
    pub job: JobId,
    /// Its kind (`"HEAD"`, `"STREAM"`, ...).
    pub kind: String,
    /// Its status.
    pub status: OpStatus,
    /// The worker that began it.
    pub owner: String,
    /// When it began, Unix milliseconds.
    pub started_at: i64,
    /// When it finished, Unix milliseconds.
    pub finished_at: Option<i64>,
    /// Its result (capped at [`LedgerConfig::max_op_result_bytes`](super::LedgerConfig)).
    pub result: Option<String>,
}

/// What [`Ledger::start_op`](super::Ledger::start_op) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpStart {
    /// The effect was not recorded before: it is now STARTED, go ahead.
    Started(OpKey),
    /// The effect was ABANDONED by a worker that went away; it is STARTED again for the
    /// caller, and here is the old record. It may have happened partly: redo it from scratch.
    Restarted(Op),
    /// The effect already finished: here is its recorded result; do not repeat it.
    AlreadyFinished(Op),
    /// The effect is STARTED and not finished (another worker, or this one, is on it).
    InProgress(Op),
}

/// How many jobs of a run are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// PLANNED jobs.
    pub planned: u64,
    /// LEASED jobs.
    pub leased: u64,
    /// FINALIZED jobs.
    pub finalized: u64,
    /// FAILED jobs.
    pub failed: u64,
    /// DEFERRED jobs.
    pub deferred: u64,
    /// SKIPPED jobs.
    pub skipped: u64,
}

impl StateCounts {
    pub(crate) fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Planned => &mut self.planned,
            JobState::Leased => &mut self.leased,
            JobState::Finalized => &mut self.finalized,
            JobState::Failed => &mut self.failed,
            JobState::Deferred => &mut self.deferred,
            JobState::Skipped => &mut self.skipped,
        };
        *slot += n;
    }

    /// All jobs.
    pub fn total(&self) -> u64 {
        self.planned + self.leased + self.finalized + self.failed + self.deferred + self.skipped
    }
}

/// What start-up reconciliation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciled {
    /// Jobs whose lease had expired, returned to PLANNED (their attempt stays counted).
    pub leases_reclaimed: u64,
    /// Ops found STARTED and older than the TTL, marked ABANDONED.
    pub ops_abandoned: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_state_machine() {
        use JobState::*;
        assert!(Planned.can_become(Leased));
        assert!(Leased.can_become(Finalized));
        assert!(Leased.can_become(Planned));
        assert!(Deferred.can_become(Planned));
        assert!(!Planned.can_become(Finalized));
        assert!(Finalized.can_become(Planned), "re-planned when its file is gone");
        assert!(!Skipped.can_become(Planned));
        assert!(!Finalized.can_become(Leased));
        assert!(!Skipped.can_become(Leased));
        assert!(!Leased.can_become(Leased));
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>().unwrap(), st);
        }
        assert!("leased".parse::<JobState>().is_err());
    }

    #[test]
    fn op_keys_are_stable_and_distinct() {
        let a = OpKey::of("STREAM", JobId(1), "http://x/a");
        assert_eq!(a, OpKey::of("STREAM", JobId(1), "http://x/a"));
        assert_ne!(a, OpKey::of("HEAD", JobId(1), "http://x/a"));
        assert_ne!(a, OpKey::of("STREAM", JobId(2), "http://x/a"));
        // lengths are part of the hash, so parts cannot slide into each other
        assert_ne!(OpKey::of("AB", JobId(1), "C"), OpKey::of("A", JobId(1), "BC"));
        assert_eq!(a.as_str().len(), 64);
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
