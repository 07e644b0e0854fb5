//! Reconciliation after an unclean stop, and read-only queries.

use super::connect::{ms, WritePool};
use super::error::LedgerError;
use super::row::{self, job_columns};
use super::types::{Job, JobId, Reconciled, StateCounts};
use super::{with_pool, with_write_pool, Ledger};
use crate::context::IdempotencyKey;

impl Ledger {
    /// Start-up reconciliation. Jobs whose lease expired go back to PLANNED (lease cleared,
    /// attempt kept counted); STARTED ops become ABANDONED when their job has no live lease and
    /// they are older than the lease TTL or belonged to a lease that just expired. Safe to run
    /// while other workers are live: it only touches what no live lease covers. First, the
    /// leases of processes on this host that have ended are taken back whatever their
    /// expiry ([`reclaim_dead_owners`](Ledger::reclaim_dead_owners)).
    pub async fn reconcile(&self) -> Result<Reconciled, LedgerError> {
        let dead = self.reclaim_dead_owners().await?;
        let now = self.now();
        let cutoff = now.saturating_sub(ms(self.inner.lease_ttl));
        let expired: Reconciled = with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let ops = sqlx::query(
                "UPDATE ops SET status = 'ABANDONED', finished_at = $1 WHERE status = 'STARTED' \
                 AND job_id NOT IN (SELECT id FROM jobs WHERE state = 'LEASED' AND lease_expires_at >= $1) \
                 AND (started_at < $2 OR job_id IN (SELECT id FROM jobs WHERE state = 'LEASED' AND lease_expires_at < $1))",
            )
            .bind(now)
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(LedgerError::db("abandon unfinished ops"))?
            .rows_affected();
            let jobs = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
                 WHERE state = 'LEASED' AND lease_expires_at < $1",
            )
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(LedgerError::db("reclaim expired leases"))?
            .rows_affected();
            tx.commit().await.map_err(LedgerError::db("commit reconciliation"))?;
            Reconciled { leases_reclaimed: jobs, ops_abandoned: ops }
        });
        Ok(Reconciled {
            leases_reclaimed: expired.leases_reclaimed + dead,
            ..expired
        })
    }

    /// The job with this id, if any.
    pub async fn get(&self, job: JobId) -> Result<Option<Job>, LedgerError> {
        with_pool!(self, pool => {
            let r = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1"))
                .bind(job.0)
                .fetch_optional(pool)
                .await
                .map_err(LedgerError::db("read a job"))?;
            r.as_ref().map(row::job).transpose()
        })
    }

    /// The job with this idempotency key, if any.
    pub async fn get_by_key(&self, key: &IdempotencyKey) -> Result<Option<Job>, LedgerError> {
        with_pool!(self, pool => {
            let r = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE idempotency_key = $1"))
                .bind(key.as_str())
                .fetch_optional(pool)
                .await
                .map_err(LedgerError::db("read a job"))?;
            r.as_ref().map(row::job).transpose()
        })
    }

    /// Every job of `run` (or of all runs), by id.
    pub async fn jobs(&self, run: Option<&str>) -> Result<Vec<Job>, LedgerError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(concat!(
                "SELECT ", job_columns!(), " FROM jobs WHERE ($1 = '' OR run_id = $1) ORDER BY id"
            ))
            .bind(run.unwrap_or(""))
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("list jobs"))?;
            rows.iter().map(row::job).collect()
        })
    }

    /// How many jobs of `run` (or of all runs) are in each state.
    pub async fn counts(&self, run: Option<&str>) -> Result<StateCounts, LedgerError> {
        with_pool!(self, pool => {
            let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs WHERE ($1 = '' OR run_id = $1) GROUP BY state")
                .bind(run.unwrap_or(""))
                .fetch_all(pool)
                .await
                .map_err(LedgerError::db("count jobs"))?;
            let mut counts = StateCounts::default();
            for r in &rows {
                use sqlx::Row;
                let state: String = r.try_get(0).map_err(LedgerError::db("count jobs"))?;
                let n: i64 = r.try_get(1).map_err(LedgerError::db("count jobs"))?;
                counts.add(state.parse()?, u64::try_from(n).unwrap_or(0));
            }
            Ok(counts)
        })
    }

    /// How many jobs (of all runs) in `state` ended with each reason (`None`: no reason
    /// recorded), most first: what `status` says of the deferred works.
    pub async fn reasons(&self, state: super::types::JobState) -> Result<Vec<(Option<String>, u64)>, LedgerError> {
        with_pool!(self, pool => {
            // The state is written into the statement (one of the fixed names), not bound:
            // a planner can use the partial index of DEFERRED jobs (`jobs_deferred`) only
            // for a literal `state = 'DEFERRED'`.
            let sql = format!(
                "SELECT reason, COUNT(*) FROM jobs WHERE state = '{}' GROUP BY reason ORDER BY COUNT(*) DESC, COALESCE(reason, '')",
                state.as_str()
            );
            let rows = sqlx::query(&sql)
                .fetch_all(pool)
                .await
                .map_err(LedgerError::db("count jobs by reason"))?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                use sqlx::Row;
                let reason: Option<String> = r.try_get(0).map_err(LedgerError::db("count jobs by reason"))?;
                let n: i64 = r.try_get(1).map_err(LedgerError::db("count jobs by reason"))?;
                out.push((reason, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    /// The newest schema migration applied (from sqlx's `_sqlx_migrations` table).
    pub async fn schema_version(&self) -> Result<i64, LedgerError> {
        with_pool!(self, pool => {
            let r = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
                .map_err(LedgerError::db("read the schema version"))?;
            use sqlx::Row;
            let v: Option<i64> = r.try_get(0).map_err(LedgerError::db("read the schema version"))?;
            Ok(v.unwrap_or(0))
        })
    }
}
