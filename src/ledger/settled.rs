//! Which works are settled already, asked many at a time: what lets a rerun over a large
//! input skip what is done without a claim (two statements) per work.

use std::collections::HashMap;

use super::error::LedgerError;
use super::row::{self, job_columns};
use super::types::Job;
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
        self.settled_or_failed_since(keys, None).await
    }

    /// As [`settled`](Ledger::settled), and also the FAILED jobs among `keys` last updated
    /// at or after `failed_since` (milliseconds, the ledger's clock): what a caller that
    /// remembers answers for a while (the runner's `--resolver-cache-ttl`) may skip when
    /// their reason will not change.
    pub async fn settled_or_failed_since(
        &self,
        keys: &[IdempotencyKey],
        failed_since: Option<i64>,
    ) -> Result<HashMap<IdempotencyKey, Job>, LedgerError> {
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
            sql.push_str(") AND (state IN ('FINALIZED', 'SKIPPED')");
            if failed_since.is_some() {
                sql.push_str(&format!(
                    " OR (state = 'FAILED' AND updated_at >= ${})",
                    chunk.len() + 1
                ));
            }
            sql.push(')');
            let jobs: Vec<Job> = with_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for key in chunk {
                    query = query.bind(key.as_str());
                }
                if let Some(since) = failed_since {
                    query = query.bind(since);
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(LedgerError::db("read settled jobs"))?;
                rows.iter().map(row::job).collect::<Result<_, _>>()?
            });
            for job in jobs {
                found.insert(job.key.clone(), job);
            }
        }
        Ok(found)
    }
}
