//! PostgreSQL batches: many jobs in one statement with `UNNEST` over array parameters,
//! instead of one round trip per job (SQLite has no round trips to save).

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Row};

use super::error::LedgerError;
use super::row;
use super::types::{JobId, JobResult, JobState, NewJob};

/// Plans `jobs` in one `INSERT ... SELECT FROM UNNEST`; ids in input order.
pub(crate) async fn plan_many(pool: &PgPool, jobs: &[NewJob], now: i64) -> Result<Vec<JobId>, LedgerError> {
    // one row per key: ON CONFLICT DO UPDATE may not touch a row twice in one statement
    let mut seen = HashSet::with_capacity(jobs.len());
    let unique: Vec<&NewJob> = jobs.iter().filter(|j| seen.insert(j.key.as_str())).collect();
    let rows = sqlx::query(
        "INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, attempts, created_at, updated_at) \
         SELECT r, w, k, u, 'PLANNED', 0, $5, $5 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS t(r, w, k, u) \
         ON CONFLICT (idempotency_key) DO UPDATE SET updated_at = jobs.updated_at RETURNING id, idempotency_key",
    )
    .bind(unique.iter().map(|j| j.run_id.as_str()).collect::<Vec<_>>())
    .bind(unique.iter().map(|j| j.work_id.as_str()).collect::<Vec<_>>())
    .bind(unique.iter().map(|j| j.key.as_str()).collect::<Vec<_>>())
    .bind(unique.iter().map(|j| j.canonical_url.as_str()).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(LedgerError::db("plan jobs"))?;
    let mut ids = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get(0).map_err(LedgerError::db("plan jobs"))?;
        let key: String = r.try_get(1).map_err(LedgerError::db("plan jobs"))?;
        ids.insert(key, JobId(id));
    }
    jobs.iter()
        .map(|j| {
            ids.get(j.key.as_str()).copied().ok_or_else(|| LedgerError::Corrupt {
                what: "jobs.idempotency_key",
                value: format!("{} was planned but not returned", j.key),
            })
        })
        .collect()
}

/// Finishes `items` in one `UPDATE ... FROM UNNEST`; then explains, one by one, the items
/// that did not match (a repeated id, a target that is not final, a lease not held).
pub(crate) async fn finish_many(
    pool: &PgPool,
    owner: &str,
    items: &[(JobId, JobState, JobResult)],
    now: i64,
) -> Result<Vec<Result<(), LedgerError>>, LedgerError> {
    let mut first = HashSet::with_capacity(items.len());
    let sent: Vec<usize> = (0..items.len())
        .filter(|&i| JobState::is_finish_target(items[i].1) && first.insert(items[i].0))
        .collect();
    let col = |f: &dyn Fn(&JobResult) -> Option<&str>| sent.iter().map(|&i| f(&items[i].2)).collect::<Vec<_>>();
    let rows = sqlx::query(
        "UPDATE jobs SET state = t.st, lease_owner = NULL, lease_expires_at = NULL, updated_at = $1, \
         outcome = t.o, path = t.p, sha256 = t.h, bytes = t.b, reason = t.r \
         FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[]) \
         AS t(id, st, o, p, h, b, r) \
         WHERE jobs.id = t.id AND jobs.state = 'LEASED' AND jobs.lease_owner = $9 RETURNING jobs.id",
    )
    .bind(now)
    .bind(sent.iter().map(|&i| items[i].0 .0).collect::<Vec<_>>())
    .bind(sent.iter().map(|&i| items[i].1.as_str()).collect::<Vec<_>>())
    .bind(col(&|r| r.outcome.as_deref()))
    .bind(col(&|r| r.path.as_deref()))
    .bind(col(&|r| r.sha256.as_deref()))
    .bind(sent.iter().map(|&i| items[i].2.bytes).collect::<Vec<_>>())
    .bind(col(&|r| r.reason.as_deref()))
    .bind(owner)
    .fetch_all(pool)
    .await
    .map_err(LedgerError::db("finish jobs"))?;
    let mut done = HashSet::with_capacity(rows.len());
    for r in &rows {
        done.insert(JobId(r.try_get(0).map_err(LedgerError::db("finish jobs"))?));
    }
    let sent: HashSet<usize> = sent.into_iter().collect();
    let mut out = Vec::with_capacity(items.len());
    for (i, (job, to, _)) in items.iter().enumerate() {
        if sent.contains(&i) && done.contains(job) {
            out.push(Ok(()));
            continue;
        }
        let found = sqlx::query("SELECT state, lease_owner FROM jobs WHERE id = $1")
            .bind(job.0)
            .fetch_optional(pool)
            .await
            .map_err(LedgerError::db("finish jobs"))?;
        out.push(Err(match found {
            None => LedgerError::NotFound(*job),
            Some(r) => match row::state_and_owner(&r)? {
                (JobState::Leased, holder) if JobState::is_finish_target(*to) => LedgerError::LeaseNotHeld {
                    job: *job,
                    owner: owner.to_owned(),
                    holder,
                },
                (from, _) => LedgerError::IllegalTransition {
                    job: *job,
                    from,
                    to: *to,
                },
            },
        }));
    }
    Ok(out)
}
