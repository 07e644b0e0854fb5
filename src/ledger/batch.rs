//! Group commit for the writes every work makes: claims, finishes and (SQLite) the
//! resolver answers it remembers.
//!
//! Every SQLite write of a ledger handle goes through one connection (see
//! [`SqlitePools`](super::connect::SqlitePools)), one statement at a time, each a round trip
//! to that connection's thread and a commit. A PostgreSQL pool writes side by side, but
//! each statement is still a round trip and a commit (a WAL flush) of its own. Under load,
//! claims and finishes pile up; a task of the handle's own takes whatever has piled up and
//! runs it as one multi-row statement (all claims, then all finishes): one round trip and
//! one commit for the lot, so the more that wait, the cheaper each gets.
//!
//! Semantics are those of the one-at-a-time statements, in arrival order except that
//! claims go ahead of finishes still waiting (see `run`): each row carries
//! its own owner and times, the conflict condition is checked per row, and a caller hears
//! back only after the commit. What the batch does not settle (a claim refused, a finish
//! whose condition failed, a job twice in one batch, a failed statement) is answered
//! `None`, and the caller runs the one-at-a-time statement, which says why.
//!
//! On PostgreSQL only the claims of new keys are batched (see
//! [`pg_batch::claim_batch`](super::pg_batch::claim_batch)): batches that locked existing
//! rows met other processes' finishes and heartbeats, which lock the same rows in other
//! orders, in deadlocks. Finishes there go one at a time (one row, one lock).
//!
//! Resolver answers (SQLite) were a write transaction per work of their own, the largest
//! per-work ledger cost of a bulk run once claims came in groups (`strace`, 500 works: 500
//! answer statements against 9 claim statements); they are written last in each turn, all
//! that wait in one upsert, since no download waits for them to start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use sqlx::{Pool, Sqlite};
use tokio::sync::{mpsc, oneshot};

/// The pool a [`Batcher`] writes through.
#[derive(Clone, Debug)]
pub(crate) enum BatchPool {
    /// SQLite's single writer connection: claims and finishes.
    Sqlite(Pool<Sqlite>),
    /// A PostgreSQL pool: the claims of new keys only.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

use super::answers::ResolverAnswer;
use super::types::{Job, JobId, JobResult, JobState, NewJob};

/// The most requests in one statement (claims bind 8 parameters a row, finishes 9; SQLite
/// allows 32,766).
const MAX_BATCH: usize = 128;

/// A claim or finish waiting for the next batch.
pub(crate) enum Request {
    Claim {
        job: NewJob,
        owner: String,
        now: i64,
        expires: i64,
        /// A FAILED job updated at or after this is not leased (`i64::MAX`: any is).
        failed_before: i64,
        /// `Some(job)`: leased to `owner`; `None`: not settled here.
        reply: oneshot::Sender<Option<Job>>,
    },
    Finish {
        job: JobId,
        owner: String,
        to: JobState,
        result: JobResult,
        now: i64,
        /// `true`: finished; `false`: not settled here.
        reply: oneshot::Sender<bool>,
    },
    /// Resolver answers to remember for a work (SQLite only).
    Remember {
        work_id: String,
        answers: Vec<ResolverAnswer>,
        now: i64,
        /// `true`: written; `false`: not here (write them alone to learn why).
        reply: oneshot::Sender<bool>,
    },
}

/// The handle's side of the batching task. Dropping the last one ends the task.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
    /// Whether finishes go through it (SQLite) or alone (PostgreSQL).
    finishes: bool,
}

impl Batcher {
    /// Starts the batching task on the current runtime, writing through `pool`.
    pub(crate) fn spawn(pool: BatchPool) -> Batcher {
        let finishes = matches!(pool, BatchPool::Sqlite(_));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Batcher { tx, finishes }
    }

    /// Whether [`finish`](Batcher::finish) batches anything; when not, finish alone.
    pub(crate) fn batches_finishes(&self) -> bool {
        self.finishes
    }

    /// Claims `job` for `owner` in the next batch; `None` when the batch did not lease it
    /// (or the task is gone, its runtime shut down): ask again one at a time.
    pub(crate) async fn claim(
        &self,
        job: &NewJob,
        owner: &str,
        now: i64,
        expires: i64,
        failed_before: i64,
    ) -> Option<Job> {
        self.claim_many(std::slice::from_ref(job), owner, now, expires, failed_before)
            .await
            .pop()
            .flatten()
    }

    /// Claims every job of `jobs` for `owner` in as few batches as they fit in (all sent
    /// before the first is answered, so the batching task finds them together): one answer
    /// per job, in order, as [`claim`](Batcher::claim)'s.
    pub(crate) async fn claim_many(
        &self,
        jobs: &[NewJob],
        owner: &str,
        now: i64,
        expires: i64,
        failed_before: i64,
    ) -> Vec<Option<Job>> {
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (reply, answer) = oneshot::channel();
            let request = Request::Claim {
                job: job.clone(),
                owner: owner.to_owned(),
                now,
                expires,
                failed_before,
                reply,
            };
            // a task that is gone answers nothing: the caller claims alone
            let _ = self.tx.send(request);
            answers.push(answer);
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(answer.await.ok().flatten());
        }
        out
    }

    /// Remembers `answers` for `work_id` in the next batch (SQLite); `false` when the batch
    /// did not (a PostgreSQL ledger, a failed statement, the task gone): write them alone.
    pub(crate) async fn remember(&self, work_id: &str, answers: &[ResolverAnswer], now: i64) -> bool {
        if !self.finishes {
            return false;
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Remember {
            work_id: work_id.to_owned(),
            answers: answers.to_vec(),
            now,
            reply,
        };
        if self.tx.send(request).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Finishes `job` in the next batch; `false` when the batch did not (or the task is
    /// gone): finish it one at a time to learn why.
    pub(crate) async fn finish(&self, job: JobId, owner: &str, to: JobState, result: &JobResult, now: i64) -> bool {
        let (reply, answer) = oneshot::channel();
        let request = Request::Finish {
            job,
            owner: owner.to_owned(),
            to,
            result: result.clone(),
            now,
            reply,
        };
        if self.tx.send(request).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// The most answer rows in one statement (6 parameters a row).
const MAX_ANSWER_ROWS: usize = 1024;

/// Claims go first: a claim is what a work waits for before it can download, while
/// finishes come in groups of hundreds from the pipeline's finisher, which waits for no
/// one. So each turn runs every claim waiting, then at most one statement of finishes, and
/// looks for new claims again: in arrival order, a claim queued behind a group of 600
/// finishes waited for five statements. (bulk_bench, 2 runs each on a machine at load 6:
/// 2,419 and 2,224 files/s with claims first, 2,168 and 1,030 without; suggestive, not
/// conclusive.) Reordering a claim before a finish is safe within one handle: a work is
/// claimed again in a run only after its own finish returned.
async fn run(pool: BatchPool, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    let mut finishes: VecDeque<Request> = VecDeque::new();
    let mut remembers: Vec<Request> = Vec::new();
    loop {
        if finishes.is_empty() && rx.recv_many(&mut pending, MAX_BATCH).await == 0 {
            break;
        }
        while let Ok(request) = rx.try_recv() {
            pending.push(request);
        }
        let mut claims = Vec::new();
        for request in pending.drain(..) {
            match request {
                Request::Claim { .. } => claims.push(request),
                Request::Finish { .. } => finishes.push_back(request),
                Request::Remember { .. } => remembers.push(request),
            }
        }
        while !claims.is_empty() {
            let rest = claims.split_off(claims.len().min(MAX_BATCH));
            let batch = std::mem::replace(&mut claims, rest);
            match &pool {
                BatchPool::Sqlite(pool) => claim_batch(pool, batch).await,
                #[cfg(feature = "postgres")]
                BatchPool::Postgres(pool) => super::pg_batch::claim_batch(pool, batch).await,
            }
        }
        if !finishes.is_empty() {
            let take = finishes.len().min(MAX_BATCH);
            let batch = finishes.drain(..take).collect();
            match &pool {
                BatchPool::Sqlite(pool) => finish_batch(pool, batch).await,
                // not sent here (`batches_finishes`); should one come, it is finished alone
                #[cfg(feature = "postgres")]
                BatchPool::Postgres(_) => {
                    for f in batch {
                        if let Request::Finish { reply, .. } = f {
                            let _ = reply.send(false);
                        }
                    }
                }
            }
        }
        // answers last: a cache, which no download waits to start
        if !remembers.is_empty() {
            let batch = std::mem::take(&mut remembers);
            match &pool {
                BatchPool::Sqlite(pool) => remember_batch(pool, batch).await,
                #[cfg(feature = "postgres")]
                BatchPool::Postgres(_) => {
                    for r in batch {
                        if let Request::Remember { reply, .. } = r {
                            let _ = reply.send(false);
                        }
                    }
                }
            }
        }
    }
}

/// The answers of many works in one statement per [`MAX_ANSWER_ROWS`] rows (SQLite, whose
/// upsert may meet a row twice in one statement: the later answer wins, as it would one
/// statement at a time).
async fn remember_batch(pool: &Pool<Sqlite>, mut remembers: Vec<Request>) {
    while !remembers.is_empty() {
        let mut rows = 0;
        let mut take = 0;
        for r in &remembers {
            let n = match r {
                Request::Remember { answers, .. } => answers.len(),
                _ => 0,
            };
            if take > 0 && rows + n > MAX_ANSWER_ROWS {
                break;
            }
            rows += n;
            take += 1;
        }
        let rest = remembers.split_off(take);
        let batch = std::mem::replace(&mut remembers, rest);
        let mut sql = String::from(
            "INSERT INTO resolver_answers (work_id, resolver, answer, candidates, found_pdf, answered_at) VALUES ",
        );
        let mut first = true;
        for _ in 0..rows {
            sql.push_str(if first {
                "(?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?)"
            });
            first = false;
        }
        sql.push_str(
            " ON CONFLICT (work_id, resolver) DO UPDATE SET answer = excluded.answer, \
             candidates = excluded.candidates, found_pdf = excluded.found_pdf, answered_at = excluded.answered_at",
        );
        let mut q = sqlx::query(&sql);
        for r in &batch {
            if let Request::Remember {
                work_id, answers, now, ..
            } = r
            {
                for a in answers {
                    q = q
                        .bind(work_id.as_str())
                        .bind(a.resolver.as_str())
                        .bind(a.answer.as_str())
                        .bind(i64::from(a.candidates))
                        .bind(i64::from(a.found_pdf))
                        .bind(a.answered_at.unwrap_or(*now));
                }
            }
        }
        let ok = rows == 0 || q.execute(pool).await.is_ok();
        for r in batch {
            if let Request::Remember { reply, .. } = r {
                let _ = reply.send(ok);
            }
        }
    }
}

async fn claim_batch(pool: &Pool<Sqlite>, mut claims: Vec<Request>) {
    // one statement per `failed_before` (a handle's claims normally share one)
    while !claims.is_empty() {
        let first = failed_before_of(&claims[0]);
        let (group, rest): (Vec<Request>, Vec<Request>) =
            claims.into_iter().partition(|c| failed_before_of(c) == first);
        claims = rest;
        claim_group(pool, group, first).await;
    }
}

fn failed_before_of(request: &Request) -> i64 {
    match request {
        Request::Claim { failed_before, .. } => *failed_before,
        Request::Finish { .. } | Request::Remember { .. } => i64::MAX,
    }
}

/// The columns a batched claim returns: what the claim cannot know beforehand (the id, and
/// for a job that was already there its run, work, URL, attempts, creation and last
/// result), plus the key to tell the rows apart. The rest of a [`Job`] it does know: a row
/// comes back only when this claim leased it, so its state is LEASED, its owner, lease
/// end and update time the claim's own. The last result (outcome, path, SHA-256, bytes,
/// reason) comes as one JSON array, and only when there is one (a job failed or deferred
/// before): NULL for a new job. Each column returned is a copy made by sqlx and freed
/// again (about 1,200 instructions apiece, more for a string); returning all sixteen
/// was about 14k instructions per claimed job on the ledger's thread and 3k on the
/// runtime's (callgrind, bulk_bench 2,000 files).
const CLAIMED_COLUMNS: &str = "id, run_id, work_id, idempotency_key, canonical_url, attempts, created_at, \
     CASE WHEN COALESCE(outcome, path, sha256, bytes, reason) IS NULL THEN NULL \
     ELSE json_array(outcome, path, sha256, bytes, reason) END";

/// A job leased by a batched claim from a row of [`CLAIMED_COLUMNS`], with the claim's
/// job, owner and times. The claim's own strings are used where the row has the same
/// (always, for a new job): each string read from a row is another copy.
fn claimed_job(
    r: &sqlx::sqlite::SqliteRow,
    job: NewJob,
    owner: String,
    now: i64,
    expires: i64,
) -> Result<Job, sqlx::Error> {
    use crate::context::WorkId;
    use sqlx::Row;
    let result = match r.try_get::<Option<&str>, _>(7)? {
        None => JobResult::default(),
        Some(json) => {
            let (outcome, path, sha256, bytes, reason) = serde_json::from_str(json)
                .map_err(|e| sqlx::Error::Decode(format!("a job's last result {json:?}: {e}").into()))?;
            JobResult {
                outcome,
                path,
                sha256,
                bytes,
                reason,
            }
        }
    };
    let run_id: &str = r.try_get(1)?;
    let work_id: &str = r.try_get(2)?;
    let canonical_url: &str = r.try_get(4)?;
    Ok(Job {
        id: JobId(r.try_get(0)?),
        run_id: if run_id == job.run_id {
            job.run_id
        } else {
            run_id.to_owned()
        },
        work_id: if work_id == job.work_id.as_str() {
            job.work_id
        } else {
            WorkId::new(work_id)
        },
        // rows are matched to claims by key
        key: job.key,
        canonical_url: if canonical_url == job.canonical_url {
            job.canonical_url
        } else {
            canonical_url.to_owned()
        },
        state: JobState::Leased,
        lease_owner: Some(owner),
        lease_expires_at: Some(expires),
        attempts: r.try_get(5)?,
        created_at: r.try_get(6)?,
        updated_at: now,
        result,
    })
}

async fn claim_group(pool: &Pool<Sqlite>, claims: Vec<Request>, failed_before: i64) {
    // A key twice in one statement is leased (at most) once, by whichever row comes first:
    // the later claims of a key go alone, so that a returned row belongs to the one claim
    // of its key, whose owner and times it has.
    let repeated: Vec<bool> = {
        let mut seen = HashSet::with_capacity(claims.len());
        claims
            .iter()
            .map(|c| matches!(c, Request::Claim { job, .. } if !seen.insert(job.key.as_str())))
            .collect()
    };
    let mut alone = Vec::new();
    let claims: Vec<Request> = claims
        .into_iter()
        .zip(repeated)
        .filter_map(|(c, repeated)| {
            if repeated {
                alone.push(c);
                None
            } else {
                Some(c)
            }
        })
        .collect();
    for c in alone {
        if let Request::Claim { reply, .. } = c {
            let _ = reply.send(None);
        }
    }
    if claims.is_empty() {
        return;
    }
    // As the finishes (see `finish_batch`): a row per claim, padded to the next power of
    // two with rows that the `WHERE` leaves out, so the statement is one of eight and stays
    // in the connection's statement cache (claims come in groups of every size: each new
    // size was parsed and planned anew). The padding is left unbound: SQLite reads an
    // unbound parameter as NULL, and sqlx binds the values it was given and stops (binding
    // a NULL per padding parameter cost as much as a real row's). So the rows' parameters
    // are the statement's only ones, and `failed_before`, the same for the whole group, is
    // written into its text as a number (an `i64`, nothing to escape); a run has one, so
    // the statements stay eight. (Numbered parameters, `?1` first, cost more than the
    // padding: sqlx asks SQLite each one's name, a walk through the list of names.)
    // `INSERT … SELECT … WHERE` rather than `INSERT … VALUES`: a `VALUES` row cannot be
    // skipped. (The `WHERE` is also what lets SQLite's parser tell the upsert's
    // `ON CONFLICT` from a join's `ON`.)
    let rows = claims.len().next_power_of_two();
    let mut sql = String::from(
        "INSERT INTO jobs (run_id, work_id, idempotency_key, canonical_url, state, lease_owner, lease_expires_at, \
         attempts, created_at, updated_at) SELECT v.column1, v.column2, v.column3, v.column4, 'LEASED', v.column5, \
         v.column6, 1, v.column7, v.column8 FROM (VALUES ",
    );
    for i in 0..rows {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
    }
    // the same conditions as the single claim, with each row's own owner and times
    let _ = write!(
        sql,
        ") AS v WHERE v.column3 IS NOT NULL \
         ON CONFLICT (idempotency_key) DO UPDATE SET state = 'LEASED', lease_owner = excluded.lease_owner, \
         lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at, \
         attempts = CASE WHEN jobs.state = 'LEASED' AND jobs.lease_owner = excluded.lease_owner \
         THEN jobs.attempts ELSE jobs.attempts + 1 END \
         WHERE jobs.state IN ('PLANNED', 'DEFERRED') OR (jobs.state = 'FAILED' AND jobs.updated_at < {failed_before}) \
         OR (jobs.state = 'LEASED' AND \
         (jobs.lease_owner = excluded.lease_owner OR jobs.lease_expires_at < excluded.updated_at)) RETURNING "
    );
    sql.push_str(CLAIMED_COLUMNS);
    let mut q = sqlx::query(&sql);
    for c in &claims {
        if let Request::Claim {
            job,
            owner,
            now,
            expires,
            ..
        } = c
        {
            q = q
                .bind(&job.run_id)
                .bind(job.work_id.as_str())
                .bind(job.key.as_str())
                .bind(&job.canonical_url)
                .bind(owner)
                .bind(*expires)
                .bind(*now)
                .bind(*now);
        }
    }
    // a failed statement changed nothing: everyone asks again alone
    let leased: Vec<sqlx::sqlite::SqliteRow> = q.fetch_all(pool).await.unwrap_or_default();
    let mut by_key: HashMap<&str, &sqlx::sqlite::SqliteRow> = HashMap::with_capacity(leased.len());
    for r in &leased {
        if let Ok(key) = sqlx::Row::try_get::<&str, _>(r, 3) {
            by_key.insert(key, r);
        }
    }
    for c in claims {
        if let Request::Claim {
            job,
            owner,
            now,
            expires,
            reply,
            ..
        } = c
        {
            let mine = by_key
                .get(job.key.as_str())
                .and_then(|r| claimed_job(r, job, owner, now, expires).ok());
            let _ = reply.send(mine);
        }
    }
}

async fn finish_batch(pool: &Pool<Sqlite>, finishes: Vec<Request>) {
    // a job twice in one statement would be updated once for both: the later ones go alone
    let mut seen = HashSet::new();
    let (batch, alone): (Vec<Request>, Vec<Request>) = finishes
        .into_iter()
        .partition(|f| matches!(f, Request::Finish { job, .. } if seen.insert(*job)));
    for f in alone {
        if let Request::Finish { reply, .. } = f {
            let _ = reply.send(false);
        }
    }
    if batch.is_empty() {
        return;
    }
    // The statement has a row per finish, padded to the next power of two with rows that
    // match no job (left unbound, so NULL, as the claims' padding), so that its text is one
    // of eight and stays in the connection's statement cache. Group sizes vary with timing, and
    // each new size was a statement parsed and planned anew: about a third of the ledger's
    // instructions per file of a bulk run (callgrind: 25k of 74k), for a row that costs a
    // missed rowid lookup.
    let rows = batch.len().next_power_of_two();
    let mut sql = String::from(
        "UPDATE jobs SET state = v.column3, lease_owner = NULL, lease_expires_at = NULL, updated_at = v.column4, \
         outcome = v.column5, path = v.column6, sha256 = v.column7, bytes = v.column8, reason = v.column9 \
         FROM (VALUES ",
    );
    for i in 0..rows {
        sql.push_str(if i == 0 { "" } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(
        ") AS v WHERE jobs.id = v.column1 AND jobs.state = 'LEASED' AND jobs.lease_owner = v.column2 RETURNING id",
    );
    let mut q = sqlx::query(&sql);
    for f in &batch {
        if let Request::Finish {
            job,
            owner,
            to,
            result,
            now,
            ..
        } = f
        {
            q = q
                .bind(job.0)
                .bind(owner)
                .bind(to.as_str())
                .bind(*now)
                .bind(result.outcome.as_deref())
                .bind(result.path.as_deref())
                .bind(result.sha256.as_deref())
                .bind(result.bytes)
                .bind(result.reason.as_deref());
        }
    }
    let done: HashSet<i64> = match q.fetch_all(pool).await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| sqlx::Row::try_get::<i64, _>(r, 0).ok())
            .collect(),
        Err(_) => HashSet::new(),
    };
    for f in batch {
        if let Request::Finish { job, reply, .. } = f {
            let _ = reply.send(done.contains(&job.0));
        }
    }
}
