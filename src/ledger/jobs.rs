//! Jobs: planning, leasing, heartbeats, transitions, reconciliation and queries.

use std::time::Duration;

use super::connect::{ms, WritePool};
use super::error::LedgerError;
use super::row::{self, job_columns};
use super::types::{Job, JobId, JobResult, JobState, NewJob};
use super::{with_write_pool, Ledger};

/// What [`Ledger::claim`] found for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The job is now leased to the caller (it was planned, re-planned from FAILED or
    /// DEFERRED, its old lease had expired, or the caller already held it).
    Leased(Job),
    /// The job is FINALIZED or SKIPPED: here is what was recorded; do not run it again.
    /// From [`claim_unless_failed_since`](Ledger::claim_unless_failed_since), also a job
    /// that FAILED at or after the moment given: another worker has just tried it.
    Settled(Job),
    /// Another worker holds a live lease on the job: do not run it.
    Busy(Job),
}

const PLAN: &str = concat!(
    "INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, attempts, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, 'PLANNED', 0, $5, $5) \
     ON CONFLICT (idempotency_key) DO UPDATE SET updated_at = jobs.updated_at RETURNING ",
    job_columns!()
);

// SQLite: one UPDATE over a LIMITed subquery, inside a BEGIN IMMEDIATE transaction (the
// write lock is held from the start, so two workers cannot pick the same rows).
macro_rules! lease_sql {
    ($filter:literal) => {
        concat!(
            "UPDATE jobs SET state = 'LEASED', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, \
             updated_at = $3 WHERE state = 'PLANNED' AND id IN (SELECT id FROM jobs WHERE state = 'PLANNED' ",
            $filter,
            " ORDER BY id LIMIT $4) RETURNING ",
            job_columns!()
        )
    };
}
// PostgreSQL: the rows are picked (and locked) once in a CTE with FOR UPDATE SKIP LOCKED, so
// concurrent workers skip each other's rows instead of waiting; a LIMITed `IN (subquery)`
// could be re-evaluated by the planner and lease more than asked.
macro_rules! lease_sql_pg {
    ($filter:literal) => {
        concat!(
            "WITH picked AS (SELECT id FROM jobs WHERE state = 'PLANNED' ",
            $filter,
            " ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET state = 'LEASED', lease_owner = $1, lease_expires_at = $2, attempts = jobs.attempts + 1, \
             updated_at = $3 FROM picked WHERE jobs.id = picked.id RETURNING jobs.id, run_id, work_id, \
             idempotency_key, canonical_url, state, lease_owner, lease_expires_at, attempts, created_at, updated_at, \
             outcome, path, sha256, bytes, reason"
        )
    };
}
const LEASE_ANY: &str = lease_sql!("AND $5 = $5");
const LEASE_RUN: &str = lease_sql!("AND run_id = $5");
const LEASE_ANY_PG: &str = lease_sql_pg!("AND $5 = $5");
const LEASE_RUN_PG: &str = lease_sql_pg!("AND run_id = $5");

// Plans and leases in one statement: a new key is inserted LEASED (attempt 1); a known one
// is leased when PLANNED, FAILED, DEFERRED, or LEASED by the caller (attempt not counted
// again) or past its lease. Nothing is returned when the job is settled or held by a live
// lease. Both SQLite and PostgreSQL run the conflict check and update atomically.
const CLAIM: &str = concat!(
    "INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, lease_owner, lease_expires_at, \
     attempts, created_at, updated_at) VALUES ($5, $6, $4, $7, 'LEASED', $1, $2, 1, $3, $3) \
     ON CONFLICT (idempotency_key) DO UPDATE SET state = 'LEASED', lease_owner = $1, lease_expires_at = $2, \
     updated_at = $3, \
     attempts = CASE WHEN jobs.state = 'LEASED' AND jobs.lease_owner = $1 THEN jobs.attempts ELSE jobs.attempts + 1 END \
     WHERE jobs.state IN ('PLANNED', 'DEFERRED') OR (jobs.state = 'FAILED' AND jobs.updated_at < $8) \
     OR (jobs.state = 'LEASED' AND (jobs.lease_owner = $1 OR jobs.lease_expires_at < $3)) RETURNING ",
    job_columns!()
);

const FINISH: &str = "UPDATE jobs SET state = $1, lease_owner = NULL, lease_expires_at = NULL, updated_at = $2, \
     outcome = $3, path = $4, sha256 = $5, bytes = $6, reason = $7 \
     WHERE id = $8 AND state = 'LEASED' AND lease_owner = $9";

const STATE_OF: &str = "SELECT state, lease_owner FROM jobs WHERE id = $1";

/// Runs a conditional update for a job and, when it matched nothing, reads the job to say
/// why: not found, an illegal transition, or (when `$leased` and the job is LEASED) a lease
/// held by someone else.
macro_rules! conditional {
    ($exec:expr, $query:expr, $step:literal, $job:expr, $owner:expr, $to:expr, $leased:expr) => {{
        let done = $query
            .execute(&mut *$exec)
            .await
            .map_err(LedgerError::db($step))?
            .rows_affected();
        if done == 1 {
            Ok(())
        } else {
            let found = sqlx::query(STATE_OF)
                .bind($job.0)
                .fetch_optional(&mut *$exec)
                .await
                .map_err(LedgerError::db($step))?;
            Err(match found {
                None => LedgerError::NotFound($job),
                Some(r) => match row::state_and_owner(&r)? {
                    (JobState::Leased, holder) if $leased => LedgerError::LeaseNotHeld {
                        job: $job,
                        owner: $owner.to_owned(),
                        holder,
                    },
                    (from, _) => LedgerError::IllegalTransition {
                        job: $job,
                        from,
                        to: $to,
                    },
                },
            })
        }
    }};
}

impl Ledger {
    /// Plans a job, or returns the one already planned with the same key (planning is
    /// idempotent; the existing job keeps its run id and state).
    pub async fn plan(&self, job: &NewJob) -> Result<Job, LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let r = sqlx::query(PLAN)
                .bind(&job.run_id)
                .bind(job.work_id.as_str())
                .bind(job.key.as_str())
                .bind(&job.canonical_url)
                .bind(now)
                .fetch_one(pool)
                .await
                .map_err(LedgerError::db("plan a job"))?;
            row::job(&r)
        })
    }

    /// Plans many jobs in one write transaction (much faster than one call each); returns
    /// their ids in input order, existing ids for keys already planned.
    pub async fn plan_many(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, LedgerError> {
        let now = self.now();
        #[cfg(feature = "postgres")]
        if let super::connect::Backend::Postgres(pool) = &self.inner.backend {
            return super::pg_batch::plan_many(pool, jobs, now).await;
        }
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                let r = sqlx::query(PLAN)
                    .bind(&job.run_id)
                    .bind(job.work_id.as_str())
                    .bind(job.key.as_str())
                    .bind(&job.canonical_url)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(LedgerError::db("plan jobs"))?;
                ids.push(row::job(&r)?.id);
            }
            tx.commit().await.map_err(LedgerError::db("commit planned jobs"))?;
            Ok(ids)
        })
    }

    /// Leases up to `max` PLANNED jobs (of `run`, or of any run) to `owner` for `ttl`,
    /// oldest first. Each job goes to exactly one caller; its attempt count goes up by one.
    pub async fn lease(
        &self,
        run: Option<&str>,
        owner: &str,
        max: u32,
        ttl: Duration,
    ) -> Result<Vec<Job>, LedgerError> {
        let now = self.now();
        let pg = self.backend_name() == "postgres";
        let sql = match (run.is_some(), pg) {
            (false, false) => LEASE_ANY,
            (true, false) => LEASE_RUN,
            (false, true) => LEASE_ANY_PG,
            (true, true) => LEASE_RUN_PG,
        };
        let mut jobs = with_write_pool!(self, pool => {
            let q = sqlx::query(sql)
                .bind(owner)
                .bind(now.saturating_add(ms(ttl)))
                .bind(now)
                .bind(i64::from(max))
                .bind(run.unwrap_or(""));
            // PostgreSQL: one statement is its own transaction, the CTE locks what it picks.
            // SQLite: BEGIN IMMEDIATE takes the write lock before anything is read.
            let rows = if pg {
                q.fetch_all(pool).await.map_err(LedgerError::db("lease jobs"))?
            } else {
                let mut tx = pool.begin_write().await?;
                let rows = q.fetch_all(&mut *tx).await.map_err(LedgerError::db("lease jobs"))?;
                tx.commit().await.map_err(LedgerError::db("commit leased jobs"))?;
                rows
            };
            rows.iter().map(row::job).collect::<Result<Vec<_>, _>>()?
        });
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    /// Plans `job` if it is new, then leases it to `owner` for `ttl` unless it is settled or
    /// leased by another live worker; one atomic statement. This is what the idempotency
    /// layer does per request.
    pub async fn claim(&self, job: &NewJob, owner: &str, ttl: Duration) -> Result<Claim, LedgerError> {
        self.claim_unless_failed_since(job, owner, ttl, None).await
    }

    /// As [`claim`](Ledger::claim), except that a FAILED job last updated at or after
    /// `failed_since` (milliseconds of the ledger's clock) is not leased but returned as
    /// [`Claim::Settled`]: another worker has tried it since then. The runner passes the
    /// moment its run started, so several processes on one input try a failing work once
    /// between them, and a later run tries it again. (Across machines the rows carry each
    /// writer's clock: a skew moves the boundary by as much.)
    pub async fn claim_unless_failed_since(
        &self,
        job: &NewJob,
        owner: &str,
        ttl: Duration,
        failed_since: Option<i64>,
    ) -> Result<Claim, LedgerError> {
        let failed_before = failed_since.unwrap_or(i64::MAX);
        let now = self.now();
        // One statement, atomic on its own: a new job is inserted already leased, a known one
        // leased if it may be; a round trip instead of four (BEGIN, plan, lease, COMMIT) on
        // the ledger's busiest path. Only when nothing comes back is the job read to say
        // why; should it have become claimable in between (released, expired), ask again.
        // Claims that arrive together go in one statement (see `batch`).
        if let Some(batch) = &self.inner.batch {
            if let Some(leased) = batch
                .claim(job, owner, now, now.saturating_add(ms(ttl)), failed_before)
                .await
            {
                return Ok(Claim::Leased(leased));
            }
        }
        with_write_pool!(self, pool => {
            let mut tries = 0;
            loop {
                let leased = sqlx::query(CLAIM)
                    .bind(owner)
                    .bind(now.saturating_add(ms(ttl)))
                    .bind(now)
                    .bind(job.key.as_str())
                    .bind(&job.run_id)
                    .bind(job.work_id.as_str())
                    .bind(&job.canonical_url)
                    .bind(failed_before)
                    .fetch_optional(pool)
                    .await
                    .map_err(LedgerError::db("lease a job by key"))?;
                if let Some(r) = leased {
                    return Ok(Claim::Leased(row::job(&r)?));
                }
                let r = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs WHERE idempotency_key = $1"))
                    .bind(job.key.as_str())
                    .fetch_one(pool)
                    .await
                    .map_err(LedgerError::db("read a job"))?;
                let found = row::job(&r)?;
                let claimable = match found.state {
                    JobState::Planned | JobState::Deferred => true,
                    JobState::Failed => found.updated_at < failed_before,
                    JobState::Leased => {
                        found.lease_owner.as_deref() == Some(owner)
                            || found.lease_expires_at.is_some_and(|t| t < now)
                            || self.took_back_from_the_dead(found.lease_owner.as_deref()).await?
                    }
                    JobState::Finalized | JobState::Skipped => false,
                };
                tries += 1;
                if claimable && tries < 3 {
                    continue;
                }
                let settled = found.state.is_terminal() || found.state == JobState::Failed && !claimable;
                return Ok(if settled { Claim::Settled(found) } else { Claim::Busy(found) });
            }
        })
    }

    /// Claims a group of jobs ahead of their use, as
    /// [`claim_unless_failed_since`](Ledger::claim_unless_failed_since) would claim each, in
    /// as few statements as fit (a SQLite ledger: one multi-row statement and one commit per
    /// 128; PostgreSQL: the new keys in one statement, see the module docs). One answer per
    /// job, in order: `Some(job)` is leased to `owner`; `None` was not leased here (settled,
    /// held by another live worker, a key the group leaves to the single claim, or a failed
    /// statement): claim it alone, which says why.
    ///
    /// Per job the conditions are the single claim's, so a job still goes to one worker
    /// only; what a group costs is that its leases are taken before their works start.
    ///
    /// ```
    /// use std::time::Duration;
    /// use contentdownload::context::{IdempotencyKey, WorkId};
    /// use contentdownload::ledger::{Claim, Ledger, LedgerConfig, NewJob};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await?;
    /// let job = |k: &str| NewJob {
    ///     run_id: "run-1".into(),
    ///     work_id: WorkId::new(k),
    ///     key: IdempotencyKey::new(k),
    ///     canonical_url: format!("https://example.org/{k}.pdf"),
    /// };
    /// let ttl = Duration::from_secs(60);
    /// // another worker holds `b`
    /// assert!(matches!(ledger.claim(&job("b"), "worker-b", ttl).await?, Claim::Leased(_)));
    /// let got = ledger.claim_group(&[job("a"), job("b"), job("c")], "worker-a", ttl, None).await;
    /// assert!(got[0].is_some() && got[1].is_none() && got[2].is_some());
    /// // the one not leased, claimed alone, says why
    /// assert!(matches!(ledger.claim(&job("b"), "worker-a", ttl).await?, Claim::Busy(_)));
    /// # Ok(()) }
    /// ```
    pub async fn claim_group(
        &self,
        jobs: &[NewJob],
        owner: &str,
        ttl: Duration,
        failed_since: Option<i64>,
    ) -> Vec<Option<Job>> {
        let failed_before = failed_since.unwrap_or(i64::MAX);
        let now = self.now();
        match &self.inner.batch {
            Some(batch) => {
                batch
                    .claim_many(jobs, owner, now, now.saturating_add(ms(ttl)), failed_before)
                    .await
            }
            None => vec![None; jobs.len()],
        }
    }

    /// Extends `owner`'s leases on `jobs` to now + `ttl`; returns how many were still held
    /// (a job missing from the count was lost: stop working on it).
    pub async fn heartbeat(&self, owner: &str, jobs: &[JobId], ttl: Duration) -> Result<u64, LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut held = 0;
            for id in jobs {
                held += sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 \
                     WHERE id = $3 AND state = 'LEASED' AND lease_owner = $4",
                )
                .bind(now.saturating_add(ms(ttl)))
                .bind(now)
                .bind(id.0)
                .bind(owner)
                .execute(&mut *tx)
                .await
                .map_err(LedgerError::db("renew leases"))?
                .rows_affected();
            }
            tx.commit().await.map_err(LedgerError::db("commit renewed leases"))?;
            Ok(held)
        })
    }

    /// Moves `job`, leased by `owner`, to its final state `to` (FINALIZED, FAILED, DEFERRED or
    /// SKIPPED) with `result`. Fails with [`LedgerError::LeaseNotHeld`] if another worker holds
    /// it and [`LedgerError::IllegalTransition`] if it is not LEASED or `to` is not final.
    pub async fn finish(&self, job: JobId, owner: &str, to: JobState, result: &JobResult) -> Result<(), LedgerError> {
        let now = self.now();
        // SQLite: finishes that arrive together go in one statement (see `batch`); what it
        // does not settle is finished below, one at a time, to say why.
        if let Some(batch) = &self.inner.batch {
            if batch.batches_finishes() && to.is_finish_target() && batch.finish(job, owner, to, result, now).await {
                return Ok(());
            }
        }
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("finish a job"))?;
            // A target that is not final binds an id no row has: the update matches nothing
            // and `conditional!` reads the job to report the illegal transition.
            let to_ok = to.is_finish_target();
            let q = sqlx::query(FINISH)
                .bind(if to_ok { to.as_str() } else { "never" })
                .bind(now)
                .bind(result.outcome.as_deref())
                .bind(result.path.as_deref())
                .bind(result.sha256.as_deref())
                .bind(result.bytes)
                .bind(result.reason.as_deref())
                .bind(if to_ok { job.0 } else { i64::MIN })
                .bind(owner);
            conditional!(conn, q, "finish a job", job, owner, to, to_ok)
        })
    }

    /// Finishes many jobs in one write transaction; one result per item, in order (an item
    /// that fails its condition does not stop the others).
    pub async fn finish_many(
        &self,
        owner: &str,
        items: &[(JobId, JobState, JobResult)],
    ) -> Result<Vec<Result<(), LedgerError>>, LedgerError> {
        let now = self.now();
        #[cfg(feature = "postgres")]
        if let super::connect::Backend::Postgres(pool) = &self.inner.backend {
            return super::pg_batch::finish_many(pool, owner, items, now).await;
        }
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut out = Vec::with_capacity(items.len());
            for (job, to, result) in items {
                let (job, to) = (*job, *to);
                let to_ok = to.is_finish_target();
                let q = sqlx::query(FINISH)
                    .bind(if to_ok { to.as_str() } else { "never" })
                    .bind(now)
                    .bind(result.outcome.as_deref())
                    .bind(result.path.as_deref())
                    .bind(result.sha256.as_deref())
                    .bind(result.bytes)
                    .bind(result.reason.as_deref())
                    .bind(if to_ok { job.0 } else { i64::MIN })
                    .bind(owner);
                let r: Result<(), LedgerError> = conditional!(tx, q, "finish jobs", job, owner, to, to_ok);
                match r {
                    Err(e @ LedgerError::Database { .. }) => return Err(e),
                    r => out.push(r),
                }
            }
            tx.commit().await.map_err(LedgerError::db("commit finished jobs"))?;
            Ok(out)
        })
    }

    /// Gives back a job claimed ahead ([`claim_group`](Ledger::claim_group)) whose work
    /// was never started (LEASED by `owner` → PLANNED), taking back the attempt its claim
    /// counted: nothing was tried.
    pub async fn unclaim(&self, job: JobId, owner: &str) -> Result<(), LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("give back a claim"))?;
            let q = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1, \
                 attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                 WHERE id = $2 AND state = 'LEASED' AND lease_owner = $3",
            )
            .bind(now)
            .bind(job.0)
            .bind(owner);
            conditional!(conn, q, "give back a claim", job, owner, JobState::Planned, true)
        })
    }

    /// Gives a leased job back (LEASED by `owner` → PLANNED); its attempt stays counted.
    pub async fn release(&self, job: JobId, owner: &str) -> Result<(), LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("release a job"))?;
            let q = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
                 WHERE id = $2 AND state = 'LEASED' AND lease_owner = $3",
            )
            .bind(now)
            .bind(job.0)
            .bind(owner);
            conditional!(conn, q, "release a job", job, owner, JobState::Planned, true)
        })
    }

    /// Plans a FAILED or DEFERRED job again (→ PLANNED), for a second pass.
    pub async fn requeue(&self, job: JobId) -> Result<(), LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("requeue a job"))?;
            let q = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', updated_at = $1 WHERE id = $2 AND state IN ('FAILED', 'DEFERRED')",
            )
            .bind(now)
            .bind(job.0);
            conditional!(conn, q, "requeue a job", job, "", JobState::Planned, false)
        })
    }

    /// Plans a FINALIZED job again (→ PLANNED) because its file is gone or changed, with
    /// `why` as its reason; its recorded result is cleared. Conditional on the job being
    /// still as `seen` (FINALIZED, same `updated_at` and SHA-256): `false` when it changed
    /// meanwhile (another worker re-planned or downloaded it again), so a file is not
    /// fetched twice. The caller claims the job next, as any planned job.
    pub async fn replan(&self, seen: &Job, why: &str) -> Result<bool, LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', lease_owner = NULL, lease_expires_at = NULL, updated_at = $1, \
                 outcome = NULL, path = NULL, sha256 = NULL, bytes = NULL, reason = $2 \
                 WHERE id = $3 AND state = 'FINALIZED' AND updated_at = $4 AND COALESCE(sha256, '') = $5",
            )
            .bind(now)
            .bind(why)
            .bind(seen.id.0)
            .bind(seen.updated_at)
            .bind(seen.result.sha256.as_deref().unwrap_or(""))
            .execute(pool)
            .await
            .map_err(LedgerError::db("re-plan a finalized job"))?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Plans every job of `run` (or of all runs) in state `from` (FAILED or DEFERRED) again;
    /// returns how many. The second pass over deferred work starts with this.
    pub async fn requeue_all(&self, run: Option<&str>, from: JobState) -> Result<u64, LedgerError> {
        if !matches!(from, JobState::Failed | JobState::Deferred) {
            return Err(LedgerError::Config {
                field: "from",
                message: format!("only FAILED or DEFERRED jobs can be requeued, not {from}"),
            });
        }
        let now = self.now();
        with_write_pool!(self, pool => {
            let r = sqlx::query(
                "UPDATE jobs SET state = 'PLANNED', updated_at = $1 WHERE state = $2 AND ($3 = '' OR run_id = $3)",
            )
            .bind(now)
            .bind(from.as_str())
            .bind(run.unwrap_or(""))
            .execute(pool)
            .await
            .map_err(LedgerError::db("requeue jobs"))?;
            Ok(r.rows_affected())
        })
    }

    /// Marks a PLANNED job SKIPPED (nothing to do: already present, out of scope) with a reason.
    pub async fn skip(&self, job: JobId, reason: &str) -> Result<(), LedgerError> {
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("skip a job"))?;
            let q = sqlx::query(
                "UPDATE jobs SET state = 'SKIPPED', updated_at = $1, reason = $2 WHERE id = $3 AND state = 'PLANNED'",
            )
            .bind(now)
            .bind(reason)
            .bind(job.0);
            conditional!(conn, q, "skip a job", job, "", JobState::Skipped, false)
        })
    }
}
