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
            let sqlite = self.backend_name() == "sqlite";
            let sql = statement(padded_len(chunk.len(), SETTLED_BATCH), sqlite);
            // The state test is made on the rows, not in the statement: with it in the
            // WHERE clause SQLite's planner chose the (state, lease) index and read every
            // FAILED row once per statement (0.48 s per 500 keys on a 1M-row ledger,
            // against 7 ms by the key's own index).
            let jobs: Vec<Job> = with_pool!(self, pool => {
                let mut query = sqlx::query(&sql);
                for key in chunk {
                    query = query.bind(key.as_str());
                }
                // SQLite reads the padding's parameters, left unbound, as NULL; PostgreSQL
                // wants every one bound (a NULL in the list matches no key)
                if !sqlite {
                    for _ in chunk.len()..padded_len(chunk.len(), SETTLED_BATCH) {
                        query = query.bind(None::<&str>);
                    }
                }
                let rows = query
                    .fetch_all(pool)
                    .await
                    .map_err(LedgerError::db("read settled jobs"))?;
                rows.iter().map(row::job).collect::<Result<_, _>>()?
            });
            let wanted = |job: &Job| match job.state {
                JobState::Finalized | JobState::Skipped => true,
                JobState::Failed => failed_since.is_some_and(|since| job.updated_at >= since),
                _ => false,
            };
            let jobs = jobs.into_iter().filter(wanted);
            for job in jobs {
                found.insert(job.key.clone(), job);
            }
        }
        Ok(found)
    }
}

/// How many keys a statement for `n` asks, padding included: the next power of two, at
/// most `max` (a full batch). The works that are ready come in groups of every size; a
/// statement for each size was prepared anew, on each of the read pool's connections:
/// about 13k instructions per file of a bulk run, more than the reads themselves
/// (callgrind, bulk_bench 2,000 files: 60% of the read connections' threads in
/// `prepare`). Padded, there are ten statements, which stay in the connections' caches.
pub(crate) fn padded_len(n: usize, max: usize) -> usize {
    n.next_power_of_two().min(max.max(n))
}

/// `SELECT … WHERE idempotency_key IN ($1, …, $n)`: by the key's own unique index only.
/// SQLite gets anonymous `?` parameters: for numbered ones sqlx asks SQLite each one's
/// name, a search of the statement's list of names (quadratic in 500 parameters).
fn statement(n: usize, sqlite: bool) -> String {
    let mut sql = String::from(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE idempotency_key IN ("
    ));
    for i in 1..=n {
        if i > 1 {
            sql.push_str(", ");
        }
        if sqlite {
            sql.push('?');
        } else {
            sql.push('$');
            sql.push_str(&i.to_string());
        }
    }
    sql.push(')');
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerConfig;

    /// The plan SQLite makes for a full batch reads the rows by key, not by state: a plan
    /// that walked the (state, lease) index read every FAILED row of the ledger once per
    /// batch, which made a rerun over 1M works take a quarter of an hour.
    #[tokio::test]
    async fn a_full_batch_is_read_by_the_key_index() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await.unwrap();
        // (without the `postgres` feature SQLite is the only backend)
        #[allow(irrefutable_let_patterns)]
        let super::super::connect::Backend::Sqlite(pools) = &ledger.inner.backend
        else {
            unreachable!("a folder's ledger is SQLite")
        };
        let sql = format!("EXPLAIN QUERY PLAN {}", statement(SETTLED_BATCH, true));
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql);
        for i in 0..SETTLED_BATCH {
            query = query.bind(format!("key-{i}"));
        }
        let plan: Vec<String> = query
            .fetch_all(&pools.read)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.3)
            .collect();
        assert!(plan.len() == 1 && plan[0].contains("(idempotency_key=?)"), "{plan:?}");
    }

    #[test]
    fn statements_come_in_few_sizes() {
        let sizes: std::collections::BTreeSet<usize> =
            (1..=SETTLED_BATCH).map(|n| padded_len(n, SETTLED_BATCH)).collect();
        assert_eq!(sizes.len(), 10, "{sizes:?}");
        assert!((1..=SETTLED_BATCH).all(|n| padded_len(n, SETTLED_BATCH) >= n));
        assert_eq!(padded_len(700, SETTLED_BATCH), 700);
    }
}
