//! Which works are settled already, asked many at a time: what lets a rerun over a large
//! input skip what is done without a claim (two statements) per work.

use std::collections::HashMap;

use super::error::LedgerError;
use super::row::{self, job_columns};
use super::types::{Job, JobState};
use super::{with_pool, Ledger};
use crate::context::IdempotencyKey;

/// The most keys asked in one statement (SQLite's default limit on bound parameters is
/// 32,766; PostgreSQL's 65,535).
pub const SETTLED_BATCH: usize = 500;

impl Ledger {
    /// The jobs among `keys` that are FINALIZED or SKIPPED, by key: one read statement per
    /// [`SETTLED_BATCH`] keys, on the read pool (no write lock taken). A key not in the map
    /// is new, planned, leased, failed or deferred: claim it as usual. A settled job can
    /// only be re-planned by [`replan`](Ledger::replan), so an answer stays true for the
    /// caller unless it replans.
    pub async fn settled(&self, keys: &[IdempotencyKey]) -> Result<HashMap<IdempotencyKey, Job>, LedgerError> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(SETTLED_BATCH) {
            let mut sql = String::from(concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE idempotency_key IN ("
            ));
            for i in 1..=chunk.len() {
                if i > 1 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&i.to_string());
            }
            sql.push_str(") AND state IN ('FINALIZED', 'SKIPPED')");
            let jobs: Vec<Job> = with_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for key in chunk {
                    query = query.bind(key.as_str());
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(LedgerError::db("read settled jobs"))?;
                rows.iter().map(row::job).collect::<Result<_, _>>()?
            });
            for job in jobs {
                if matches!(job.state, JobState::Finalized | JobState::Skipped) {
                    found.insert(job.key.clone(), job);
                }
            }
        }
        Ok(found)
    }
}
