//! The ledger's error type.

use super::types::{JobId, JobState};

/// What went wrong in a ledger call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database failed (connection, I/O, constraint); the message names the step.
    #[error("ledger database error while trying to {step}: {source}")]
    Database {
        /// What the ledger was doing.
        step: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed; the database may be from a newer version.
    #[error("ledger migration failed: {0}; is the database from a newer contentdownload?")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The requested move is not in the state machine (for example finishing a PLANNED job).
    #[error("{job}: illegal transition {from} → {to}")]
    IllegalTransition {
        /// The job.
        job: JobId,
        /// Its state when the move was tried.
        from: JobState,
        /// The state asked for.
        to: JobState,
    },
    /// The job is LEASED, but not by the caller: its lease expired and another worker took it,
    /// or the caller never held it. The caller must drop its work on the job.
    #[error("{job}: lease not held by {owner:?} (held by {holder:?}); drop this job")]
    LeaseNotHeld {
        /// The job.
        job: JobId,
        /// The worker that asked.
        owner: String,
        /// The worker holding the lease now.
        holder: Option<String>,
    },
    /// No job has this id.
    #[error("{0} is not in the ledger")]
    NotFound(JobId),
    /// [`finish_op`](super::Ledger::finish_op) found no open (STARTED or ABANDONED) op with this key.
    #[error("op {key} is not open (status {status:?}); start it with start_op first")]
    OpNotOpen {
        /// The op's key.
        key: String,
        /// Its status, if it exists.
        status: Option<super::types::OpStatus>,
    },
    /// A value in the database is not one this version knows.
    #[error("the ledger holds an unknown value {value:?} in {what}; is it from a newer contentdownload?")]
    Corrupt {
        /// The column.
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// The PostgreSQL server could not be reached within the connect timeout.
    #[error(
        "cannot reach the PostgreSQL ledger at {url} within {} ms ({cause}); check that the server \
         is running and accepts connections at that host and port (firewall, listen_addresses), \
         that the --ledger URL is right, or allow more time with --ledger-connect-timeout",
        .timeout.as_millis()
    )]
    Unreachable {
        /// The ledger's URL, password redacted.
        url: String,
        /// The time allowed.
        timeout: std::time::Duration,
        /// What went wrong, as the driver said.
        cause: String,
    },
    /// The configuration is unusable; the message names the field.
    #[error("ledger configuration: {field}: {message}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl LedgerError {
    pub(crate) fn db(step: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
        move |source| LedgerError::Database { step, source }
    }
}
