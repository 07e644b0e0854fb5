//! The job ledger: which work is planned, leased, done or failed, and which side effects
//! happened, in one SQLite file by default or in PostgreSQL for many machines.
//!
//! A job is one logical unit of work, identified by its [`IdempotencyKey`](crate::context::IdempotencyKey).
//! Its life is `PLANNED → LEASED → FINALIZED | FAILED | DEFERRED | SKIPPED` ([`JobState`]).
//! Every transition is a conditional update on the expected state and lease owner, so two
//! workers can never both finalize a job; a move the state machine does not allow is a
//! [`LedgerError::IllegalTransition`], a lease lost to another worker a
//! [`LedgerError::LeaseNotHeld`], never a silent no-op.
//!
//! - **Planning** is idempotent: planning the same key twice yields one job.
//! - **Leasing** hands each job to exactly one worker for a TTL, renewed by
//!   [`heartbeat`](Ledger::heartbeat). SQLite leases inside a `BEGIN IMMEDIATE` transaction;
//!   PostgreSQL picks rows with `FOR UPDATE SKIP LOCKED`, so workers on many machines do not
//!   queue behind each other.
//! - **The disk is believed**: a FINALIZED job whose file turns out missing or changed is
//!   planned again with [`replan`](Ledger::replan), conditional on the result the caller saw.
//! - **Reconciliation** at start-up ([`reconcile`](Ledger::reconcile)): jobs whose lease
//!   expired (their worker died) go back to PLANNED, their attempt staying counted; side
//!   effects (ops) left unfinished past the TTL become ABANDONED. A lease owner names its
//!   host, process and start time ([`LeaseOwner`]): the leases of a process on this host
//!   that has ended are taken back at once, at reconciliation and when a claim meets one.
//! - **Ops** record side effects per job (`HEAD`, `STREAM`, `FINALIZE`, ...) keyed by a hash
//!   of kind, job and context ([`OpKey`]), with start, finish and a capped result, so a
//!   restarted worker knows what already happened.
//!
//! - **Resolver answers** are remembered per work and resolver ([`remember_answers`](Ledger::remember_answers),
//!   [`resolver_answers`](Ledger::resolver_answers)), so a rerun asks no provider twice within
//!   the cache's age.
//!
//! The schema is applied by sqlx's migrator (versioned, recorded in `_sqlx_migrations`;
//! the statements themselves are idempotent too). SQLite runs in WAL mode with a busy
//! timeout, so several processes can share one file. Within one process (one handle and its
//! clones) SQLite writes go through a single connection and queue for it in memory, so
//! concurrent workers never sleep in SQLite's busy handler; reads use a pool of their own.
//! Claims and finishes that arrive while the writer is busy are committed together, one
//! multi-row statement for the lot (group commit), with the same per-job conditions.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use contentdownload::context::{IdempotencyKey, WorkId};
//! use contentdownload::ledger::{JobResult, JobState, Ledger, LedgerConfig, NewJob};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await?;
//! let job = NewJob {
//!     run_id: "run-1".into(),
//!     work_id: WorkId::new("W1"),
//!     key: IdempotencyKey::new("k1"),
//!     canonical_url: "https://example.org/a.pdf".into(),
//! };
//! ledger.plan(&job).await?;
//! ledger.plan(&job).await?; // idempotent: still one job
//!
//! let leased = ledger.lease(Some("run-1"), "worker-a", 10, Duration::from_secs(60)).await?;
//! assert_eq!(leased.len(), 1);
//! ledger.finish(leased[0].id, "worker-a", JobState::Finalized, &JobResult::outcome("pdf")).await?;
//! // finishing twice is an error, not a no-op
//! assert!(ledger.finish(leased[0].id, "worker-a", JobState::Finalized, &JobResult::default()).await.is_err());
//! assert_eq!(ledger.counts(Some("run-1")).await?.finalized, 1);
//! # Ok(()) }
//! ```

mod answers;
mod batch;
mod claim_store;
mod connect;
mod error;
mod jobs;
mod ops;
mod owner;
#[cfg(feature = "postgres")]
mod pg_batch;
mod query;
mod row;
mod settled;
mod types;

use std::sync::Arc;
use std::time::Duration;

pub use self::answers::{ResolverAnswer, ResolverTotals};
pub use self::connect::{redact_url, LedgerClock, LedgerConfig, DEFAULT_CONNECT_TIMEOUT, SQLITE_FILE_NAME};
pub use self::error::LedgerError;
pub use self::jobs::Claim;
// Used by the runner's modules only.
#[cfg(feature = "runner")]
pub(crate) use self::owner::liveness_of;
pub use self::owner::{LeaseOwner, Liveness};
pub use self::settled::SETTLED_BATCH;
#[cfg(feature = "runner")]
pub(crate) use self::types::hex;
pub use self::types::{Job, JobId, JobResult, JobState, NewJob, Op, OpKey, OpStart, OpStatus, Reconciled, StateCounts};

use self::connect::Backend;

/// Runs `$body` with `$pool` bound to the backend's typed pool for reads; the body is
/// compiled once per backend, so the same SQL text (with `$1`-style parameters, which both
/// SQLite and PostgreSQL accept) serves both. Anything that writes uses
/// [`with_write_pool!`] instead.
macro_rules! with_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match &$ledger.inner.backend {
            $crate::ledger::connect::Backend::Sqlite(pools) => {
                let $pool = &pools.read;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::ledger::connect::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Like [`with_pool!`] for statements that write: SQLite's single writer connection (writes
/// queue for it in memory instead of sleeping in SQLite's busy handler), PostgreSQL's pool
/// (its row locks let writers run side by side).
macro_rules! with_write_pool {
    ($ledger:expr, $pool:ident => $body:expr) => {
        match &$ledger.inner.backend {
            $crate::ledger::connect::Backend::Sqlite(pools) => {
                let $pool = &pools.write;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::ledger::connect::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_write_pool;

/// A handle on the job ledger. Cheap to clone; clones share the connection pool and clock.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// Group commit: claims and finishes on SQLite, the claims of new keys on PostgreSQL.
    batch: Option<batch::Batcher>,
    clock: LedgerClock,
    lease_ttl: Duration,
    max_op_result_bytes: usize,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `url`: a SQLite path or `sqlite://` URL (its
    /// folder must exist), or a `postgres://` URL (feature `postgres`); any other scheme is
    /// an error. Same as [`connect`](Ledger::connect) with default settings.
    pub async fn open(url: &str) -> Result<Ledger, LedgerError> {
        Ledger::connect(LedgerConfig::new(url)).await
    }

    /// Opens the ledger `config` describes, applies migrations and (unless turned off)
    /// reconciles expired leases.
    pub async fn connect(config: LedgerConfig) -> Result<Ledger, LedgerError> {
        config.validate()?;
        let backend = if config.is_postgres() {
            connect::open_postgres(&config).await?
        } else {
            connect::open_sqlite(&config).await?
        };
        let batch = match &backend {
            Backend::Sqlite(pools) => Some(batch::Batcher::spawn(batch::BatchPool::Sqlite(pools.write.clone()))),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => Some(batch::Batcher::spawn(batch::BatchPool::Postgres(pool.clone()))),
        };
        let ledger = Ledger {
            inner: Arc::new(Inner {
                backend,
                batch,
                clock: LedgerClock::default(),
                lease_ttl: config.lease_ttl,
                max_op_result_bytes: config.max_op_result_bytes,
            }),
        };
        if config.reconcile_on_open {
            let r = ledger.reconcile().await?;
            if r != Reconciled::default() {
                tracing::info!(
                    leases_reclaimed = r.leases_reclaimed,
                    ops_abandoned = r.ops_abandoned,
                    "ledger reconciled after an unclean stop"
                );
            }
        }
        Ok(ledger)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match &self.inner.backend {
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The clock this handle (and its clones) reads. Tests move it forward to expire leases.
    pub fn clock(&self) -> &LedgerClock {
        &self.inner.clock
    }

    /// The configured lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// Closes the pool; pending work finishes first. Other clones become unusable.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Sqlite(pools) => {
                pools.read.close().await;
                pools.write.close().await;
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pool) => pool.close().await,
        }
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }
}
