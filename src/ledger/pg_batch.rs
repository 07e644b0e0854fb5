//! PostgreSQL batches: many jobs in one statement with `UNNEST` over array parameters,
//! instead of one round trip and one commit per job: planning many, finishing many, and the
//! claims and finishes that pile up in the [`Batcher`](super::batch::Batcher).

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Row};

use super::batch::Request;
use super::error::LedgerError;
use super::row::{self, job_columns};
use super::types::{Job, JobId, JobResult, JobState, NewJob};

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

/// The claims of one [`Batcher`](super::batch::Batcher) turn that plan a new key, in one
/// `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO NOTHING`, in key order: what a first
/// run over a large input mostly does. A key already in the ledger is left to the single
/// claim (`None`), which locks that one row: a batch that took the locks of existing rows,
/// which other processes' finishes and heartbeats hold in other orders, met them in
/// deadlocks (four processes on one input, every few seconds). New rows are locked by no
/// one else, and two batches inserting the same keys wait for each other in key order.
pub(crate) async fn claim_batch(pool: &PgPool, claims: Vec<Request>) {
    // one row per key; a repeated key is claimed alone
    let mut seen = HashSet::with_capacity(claims.len());
    let (mut batch, again): (Vec<Request>, Vec<Request>) = claims
        .into_iter()
        .partition(|c| matches!(c, Request::Claim { job, .. } if seen.insert(job.key.as_str().to_owned())));
    for c in again {
        if let Request::Claim { reply, .. } = c {
            let _ = reply.send(None);
        }
    }
    batch.sort_by(|a, b| claim_key(a).cmp(claim_key(b)));
    let n = batch.len();
    let (mut runs, mut works, mut keys, mut urls) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut owners, mut expiry, mut times) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for c in &batch {
        if let Request::Claim {
            job,
            owner,
            now,
            expires,
            ..
        } = c
        {
            runs.push(job.run_id.as_str());
            works.push(job.work_id.as_str());
            keys.push(job.key.as_str());
            urls.push(job.canonical_url.as_str());
            owners.push(owner.as_str());
            expiry.push(*expires);
            times.push(*now);
        }
    }
    let rows = sqlx::query(concat!(
        "INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, lease_owner, lease_expires_at, \
         attempts, created_at, updated_at) \
         SELECT r, w, k, u, 'LEASED', o, e, 1, n, n \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[]) \
         AS t(r, w, k, u, o, e, n) ORDER BY k \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
        job_columns!()
    ))
    .bind(runs)
    .bind(works)
    .bind(keys)
    .bind(urls)
    .bind(owners)
    .bind(expiry)
    .bind(times)
    .fetch_all(pool)
    .await;
    let mut leased: HashMap<String, Job> = match rows {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| row::job(r).ok())
            .map(|j| (j.key.as_str().to_owned(), j))
            .collect(),
        Err(e) => {
            tracing::debug!("a batch of claims failed, each is claimed alone: {e}");
            HashMap::new()
        }
    };
    for c in batch {
        if let Request::Claim { job, owner, reply, .. } = c {
            let mine = leased
                .remove(job.key.as_str())
                .filter(|j| j.lease_owner.as_deref() == Some(owner.as_str()));
            let _ = reply.send(mine);
        }
    }
}

fn claim_key(c: &Request) -> &str {
    match c {
        Request::Claim { job, .. } => job.key.as_str(),
        Request::Finish { .. } | Request::Remember { .. } => "",
    }
}
