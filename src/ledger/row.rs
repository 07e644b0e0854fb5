//! Turning rows of either backend into ledger values.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::error::LedgerError;
use super::types::{Job, JobId, JobResult, JobState, Op, OpKey, OpStatus};
use crate::context::{IdempotencyKey, WorkId};

/// The job columns, in the order [`job`] reads them (a macro, so `concat!` can use it).
macro_rules! job_columns {
    () => {
        "id, run_id, work_id, idempotency_key, canonical_url, state, lease_owner, lease_expires_at, \
         attempts, created_at, updated_at, outcome, path, sha256, bytes, reason"
    };
}
pub(crate) use job_columns;

/// The op columns, in the order [`op`] reads them.
macro_rules! op_columns {
    () => {
        "op_key, job_id, kind, status, owner, started_at, finished_at, result"
    };
}
pub(crate) use op_columns;

fn get<'r, R, T>(row: &'r R, i: usize) -> Result<T, LedgerError>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(i).map_err(LedgerError::db("read a ledger row"))
}

/// A job from a row selected with [`job_columns!`].
pub(crate) fn job<'r, R>(row: &'r R) -> Result<Job, LedgerError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, 5)?;
    Ok(Job {
        id: JobId(get(row, 0)?),
        run_id: get(row, 1)?,
        work_id: WorkId::new(get::<_, String>(row, 2)?),
        key: IdempotencyKey::new(get::<_, String>(row, 3)?),
        canonical_url: get(row, 4)?,
        state: state.parse()?,
        lease_owner: get(row, 6)?,
        lease_expires_at: get(row, 7)?,
        attempts: get(row, 8)?,
        created_at: get(row, 9)?,
        updated_at: get(row, 10)?,
        result: JobResult {
            outcome: get(row, 11)?,
            path: get(row, 12)?,
            sha256: get(row, 13)?,
            bytes: get(row, 14)?,
            reason: get(row, 15)?,
        },
    })
}

/// An op from a row selected with [`op_columns!`].
pub(crate) fn op<'r, R>(row: &'r R) -> Result<Op, LedgerError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let status: String = get(row, 3)?;
    Ok(Op {
        key: OpKey(get(row, 0)?),
        job: JobId(get(row, 1)?),
        kind: get(row, 2)?,
        status: status.parse::<OpStatus>()?,
        owner: get(row, 4)?,
        started_at: get(row, 5)?,
        finished_at: get(row, 6)?,
        result: get(row, 7)?,
    })
}

/// The state and lease owner of a job, to explain why a conditional update matched nothing.
pub(crate) fn state_and_owner<'r, R>(row: &'r R) -> Result<(JobState, Option<String>), LedgerError>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, 0)?;
    Ok((state.parse()?, get(row, 1)?))
}
