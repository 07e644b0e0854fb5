#![cfg(feature = "simulator")]
//! The ledger under many workers: eight tasks over 1,000 jobs (SQLite, and PostgreSQL when
//! available), eight worker processes on one SQLite file, and a worker killed with SIGKILL
//! while holding leases, then reconciled (both backends).
//!
//! The child processes are this test binary run again with `--exact child_process_entry`
//! and [`CHILD_VAR`] set; they print `CDL-FINALIZED <id>` for every job they finalize.

mod ledger_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contentdownload::context::{IdempotencyKey, WorkId};
use contentdownload::ledger::{JobId, JobResult, JobState, Ledger, LedgerConfig, NewJob, OpStart, OpStatus};

const CHILD_VAR: &str = "CONTENTDOWNLOAD_LEDGER_CHILD";
const URL_VAR: &str = "CONTENTDOWNLOAD_LEDGER_CHILD_URL";
const SCHEMA_VAR: &str = "CONTENTDOWNLOAD_LEDGER_CHILD_SCHEMA";
const OWNER_VAR: &str = "CONTENTDOWNLOAD_LEDGER_CHILD_OWNER";
const RUN: &str = "run";
const JOBS: usize = 1000;
/// A bound on everything a child does, so a stuck child cannot hang the suite.
const CHILD_LIMIT: Duration = Duration::from_secs(120);
/// The lease TTL of the worker that gets killed.
const DOOMED_TTL: Duration = Duration::from_secs(30);

const TTL: Duration = Duration::from_secs(30);

fn one_job(run: &str, i: usize) -> NewJob {
    NewJob {
        run_id: run.to_owned(),
        work_id: WorkId::new(format!("W{i}")),
        key: IdempotencyKey::new(format!("{run}-key-{i}")),
        canonical_url: format!("https://example.org/{i}.pdf"),
    }
}

fn jobs() -> Vec<NewJob> {
    (0..JOBS)
        .map(|i| NewJob {
            run_id: RUN.into(),
            work_id: WorkId::new(format!("W{i}")),
            key: IdempotencyKey::new(format!("key-{i}")),
            canonical_url: format!("https://example.org/{i}.pdf"),
        })
        .collect()
}

/// Leases, "downloads" (an op) and finalizes until no job is left; returns the jobs it finalized.
async fn work(ledger: &Ledger, owner: &str) -> Vec<JobId> {
    let mut finalized = Vec::new();
    for _round in 0..JOBS {
        let batch = ledger
            .lease(Some(RUN), owner, 8, Duration::from_secs(60))
            .await
            .unwrap();
        if batch.is_empty() {
            return finalized;
        }
        for job in batch {
            match ledger
                .start_op(job.id, "STREAM", &job.canonical_url, owner)
                .await
                .unwrap()
            {
                OpStart::Started(op) => ledger.finish_op(&op, "ok").await.unwrap(),
                // an op a killed worker left behind, abandoned by reconciliation
                OpStart::Restarted(old) => ledger.finish_op(&old.key, "ok, redone").await.unwrap(),
                other => panic!("{owner}: {} was run before: {other:?}", job.id),
            }
            ledger
                .finish(job.id, owner, JobState::Finalized, &JobResult::outcome("pdf"))
                .await
                .unwrap();
            finalized.push(job.id);
        }
    }
    panic!("{owner} did not run out of jobs in {JOBS} rounds");
}

/// Not a test of its own: the entry point of the child processes the tests below spawn.
/// Without [`CHILD_VAR`] it returns at once.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_VAR) else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(CHILD_LIMIT, child(&mode))
            .await
            .expect("the child finishes in time");
    });
}

async fn child(mode: &str) {
    let mut cfg = LedgerConfig::new(std::env::var(URL_VAR).expect("the parent names the ledger"));
    cfg.pg_schema = std::env::var(SCHEMA_VAR).ok();
    cfg.max_connections = 2;
    cfg.reconcile_on_open = false;
    let ledger = Ledger::connect(cfg).await.unwrap();
    let owner = std::env::var(OWNER_VAR).unwrap();
    let mut out = std::io::stdout().lock();
    match mode {
        "worker" => {
            for id in work(&ledger, &owner).await {
                writeln!(out, "CDL-FINALIZED {}", id.0).unwrap();
            }
        }
        "hold" => {
            // lease 100 jobs, finish 10, begin a download of the other 90, then wait to be killed
            let held = ledger.lease(Some(RUN), &owner, 100, DOOMED_TTL).await.unwrap();
            for (i, job) in held.iter().enumerate() {
                if i < 10 {
                    ledger
                        .finish(job.id, &owner, JobState::Finalized, &JobResult::outcome("pdf"))
                        .await
                        .unwrap();
                    writeln!(out, "CDL-FINALIZED {}", job.id.0).unwrap();
                } else {
                    ledger
                        .start_op(job.id, "STREAM", &job.canonical_url, &owner)
                        .await
                        .unwrap();
                }
            }
            writeln!(out, "CDL-HOLDING").unwrap();
            out.flush().unwrap();
            // bounded by CHILD_LIMIT; the parent kills this process long before
            std::future::pending::<()>().await;
        }
        other => panic!("unknown child mode {other:?}"),
    }
    out.flush().unwrap();
}

fn spawn_child(mode: &str, cfg: &LedgerConfig, owner: &str) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args(["child_process_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, mode)
        .env(URL_VAR, &cfg.url)
        .env(OWNER_VAR, owner)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(schema) = &cfg.pg_schema {
        cmd.env(SCHEMA_VAR, schema);
    }
    cmd.spawn().expect("spawn a child worker")
}

fn finalized_ids(stdout: &str) -> Vec<JobId> {
    stdout
        .lines()
        // libtest may print "test child_process_entry ... " in front of the first line
        .filter_map(|l| l.find("CDL-FINALIZED ").map(|at| &l[at + "CDL-FINALIZED ".len()..]))
        .map(|id| JobId(id.trim().parse().expect("a job id")))
        .collect()
}

/// Adds each finalized job to the tally, failing on the second finalization of any job.
fn tally(done: &mut HashMap<JobId, String>, ids: Vec<JobId>, who: &str) {
    for id in ids {
        if let Some(before) = done.insert(id, who.to_owned()) {
            panic!("{id} finalized by {before} and again by {who}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_on_one_sqlite_file_finalize_each_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LedgerConfig::in_dir(dir.path());
    let ledger = Ledger::connect(cfg.clone()).await.unwrap();
    ledger.plan_many(&jobs()).await.unwrap();

    let children: Vec<(String, Child)> = (0..8)
        .map(|i| {
            let owner = format!("process-{i}");
            let child = spawn_child("worker", &cfg, &owner);
            (owner, child)
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|(owner, child)| (owner, child.wait_with_output().expect("wait for a child")))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    let mut done = HashMap::new();
    for (owner, out) in outputs {
        assert!(out.status.success(), "{owner} failed: {:?}", out.status);
        tally(&mut done, finalized_ids(&String::from_utf8_lossy(&out.stdout)), &owner);
    }
    assert_eq!(done.len(), JOBS, "every job finalized, none lost");
    let c = ledger.counts(Some(RUN)).await.unwrap();
    assert_eq!((c.finalized, c.total()), (JOBS as u64, JOBS as u64));
    for job in ledger.jobs(Some(RUN)).await.unwrap() {
        assert_eq!(job.attempts, 1, "{} leased once", job.id);
        assert_eq!(job.lease_owner, None);
        let ops = ledger.ops(job.id).await.unwrap();
        assert_eq!(ops.len(), 1, "{} run once", job.id);
        assert_eq!(ops[0].owner, done[&job.id], "the finalizer ran the download");
    }
    let busy = done.values().filter(|o| o.as_str() != "process-0").count();
    assert!(busy > 0, "more than one process took part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_holding_leases_is_reconciled_and_every_job_finalized_once() {
    for (name, cfg, _dir) in ledger_support::configs("killed_worker") {
        let ledger = Ledger::connect(cfg.clone()).await.unwrap();
        ledger.plan_many(&jobs()).await.unwrap();

        let mut child = spawn_child("hold", &cfg, "doomed");
        let stdout = child.stdout.take().expect("piped stdout");
        let (child_done, child) = tokio::task::spawn_blocking(move || {
            let mut seen = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("read the child's output");
                if line.ends_with("CDL-HOLDING") {
                    // SIGKILL: no destructor, no rollback, no goodbye
                    child.kill().expect("kill the child");
                    break;
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let status = child.wait().expect("reap the child");
            (finalized_ids(&seen), status)
        })
        .await
        .unwrap();
        assert!(!child.success(), "{name}: the child was killed, it did not finish");
        assert_eq!(
            child_done.len(),
            10,
            "{name}: the child finalized 10 jobs before it was killed"
        );

        // its 90 leases are stranded until their TTL runs out
        let c = ledger.counts(Some(RUN)).await.unwrap();
        assert_eq!((c.leased, c.finalized, c.planned), (90, 10, 900), "{name}");
        assert_eq!(
            ledger.reconcile().await.unwrap().leases_reclaimed,
            0,
            "{name}: not expired yet"
        );

        // a new worker starts after the TTL and reconciles
        let mut late = cfg.clone();
        late.reconcile_on_open = false;
        let fresh = Ledger::connect(late).await.unwrap();
        fresh.clock().advance(DOOMED_TTL + Duration::from_secs(1));
        let r = fresh.reconcile().await.unwrap();
        assert_eq!((r.leases_reclaimed, r.ops_abandoned), (90, 90), "{name}");
        let c = fresh.counts(Some(RUN)).await.unwrap();
        assert_eq!((c.leased, c.planned), (0, 990), "{name}: nothing left stranded");

        // eight workers finish the run
        let done = Arc::new(Mutex::new(HashMap::new()));
        tally(&mut done.lock().unwrap(), child_done.clone(), "doomed");
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (ledger, done) = (fresh.clone(), done.clone());
                tokio::spawn(async move {
                    let owner = format!("after-{i}");
                    let ids = work(&ledger, &owner).await;
                    tally(&mut done.lock().unwrap(), ids, &owner);
                })
            })
            .collect();
        for w in tokio::time::timeout(Duration::from_secs(120), futures_util::future::join_all(workers))
            .await
            .expect("the workers finish in time")
        {
            w.unwrap();
        }
        let done = std::mem::take(&mut *done.lock().unwrap());
        assert_eq!(done.len(), JOBS, "{name}: every job finalized exactly once");
        let c = fresh.counts(Some(RUN)).await.unwrap();
        assert_eq!(c.finalized, JOBS as u64, "{name}");
        let mut retried = 0;
        for job in fresh.jobs(Some(RUN)).await.unwrap() {
            let ops = fresh.ops(job.id).await.unwrap();
            if job.attempts == 2 {
                // one of the killed worker's: its download was abandoned, then redone once
                retried += 1;
                assert_eq!(ops.len(), 1);
                assert_eq!(
                    (ops[0].status, ops[0].result.as_deref()),
                    (OpStatus::Finished, Some("ok, redone"))
                );
            } else {
                assert_eq!(job.attempts, 1, "{name}: {}", job.id);
            }
        }
        assert_eq!(retried, 90, "{name}: the killed worker's attempts stay counted");
    }
}

/// Eight workers (tasks) over 1,000 jobs: each job is finalized exactly once, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_finalize_each_of_1000_jobs_once() {
    const JOBS: usize = 1000;
    for t in ledger_support::backends("eight_workers").await {
        let l = &t.ledger;
        let ids = l
            .plan_many(&(0..JOBS).map(|i| one_job("r", i)).collect::<Vec<_>>())
            .await
            .unwrap();
        let done: Arc<Mutex<HashMap<JobId, Vec<usize>>>> = Arc::default();
        let mut workers = Vec::new();
        for w in 0..8usize {
            let (l, done) = (l.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let owner = format!("worker-{w}");
                for _round in 0..JOBS {
                    let batch = l.lease(Some("r"), &owner, 16, TTL).await.unwrap();
                    if batch.is_empty() {
                        return;
                    }
                    let mut finished = Vec::new();
                    for j in &batch {
                        let OpStart::Started(op) = l.start_op(j.id, "STREAM", &j.canonical_url, &owner).await.unwrap()
                        else {
                            panic!("{} started twice", j.id);
                        };
                        l.finish_op(&op, "ok").await.unwrap();
                        finished.push((j.id, JobState::Finalized, JobResult::outcome("pdf")));
                    }
                    // half the workers finish one by one, half in batches
                    if w % 2 == 0 {
                        for (id, to, r) in &finished {
                            l.finish(*id, &owner, *to, r).await.unwrap();
                        }
                    } else {
                        for r in l.finish_many(&owner, &finished).await.unwrap() {
                            r.unwrap();
                        }
                    }
                    let mut done = done.lock().unwrap();
                    for (id, ..) in finished {
                        done.entry(id).or_default().push(w);
                    }
                }
                panic!("worker {w} did not run out of jobs in {JOBS} rounds");
            }));
        }
        let all = tokio::time::timeout(Duration::from_secs(120), futures_util::future::join_all(workers)).await;
        for r in all.expect("workers finish within two minutes") {
            r.unwrap();
        }
        let done = std::mem::take(&mut *done.lock().unwrap());
        assert_eq!(done.len(), JOBS, "{}: every job finalized", t.name);
        assert!(
            done.values().all(|w| w.len() == 1),
            "{}: no job finalized twice",
            t.name
        );
        assert!(ids.iter().all(|id| done.contains_key(id)));
        let c = l.counts(Some("r")).await.unwrap();
        assert_eq!((c.finalized, c.total()), (JOBS as u64, JOBS as u64));
        let jobs = l.jobs(Some("r")).await.unwrap();
        assert!(jobs.iter().all(|j| j.attempts == 1 && j.state == JobState::Finalized));
        let busy = done.values().fold([0usize; 8], |mut acc, w| {
            acc[w[0]] += 1;
            acc
        });
        eprintln!("{}: jobs per worker {busy:?}", t.name);
    }
}

/// Many tasks of one process race to claim and finalize the same jobs. SQLite's busy
/// timeout is 1 ms here: had two of the handle's connections ever met on the file's write
/// lock, a claim or finish would fail with SQLITE_BUSY. Writes queue in memory for the one
/// writer connection instead, so none fails, and each job is finalized exactly once, by
/// the one task its claim leased it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_on_one_handle_never_meet_busy_and_finalize_each_job_once() {
    const KEYS: usize = 200;
    const TASKS: usize = 32;
    let backends = ledger_support::backends_with("racing_claims", |c| {
        c.busy_timeout = Duration::from_millis(1);
    })
    .await;
    for t in backends {
        let finalized: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
        let mut tasks = Vec::new();
        for w in 0..TASKS {
            let (l, finalized) = (t.ledger.clone(), finalized.clone());
            tasks.push(tokio::spawn(async move {
                let owner = format!("task-{w}");
                // each task walks the keys from its own starting point, so they collide
                for k in (0..KEYS).map(|i| (i + w * 7) % KEYS) {
                    let job = one_job("r", k);
                    let claim = l.claim(&job, &owner, TTL).await;
                    let leased = match claim {
                        Ok(contentdownload::ledger::Claim::Leased(j)) => j,
                        Ok(_) => continue,
                        Err(e) => panic!("{owner}: claim of key {k} failed: {e}"),
                    };
                    if let Err(e) = l
                        .finish(leased.id, &owner, JobState::Finalized, &JobResult::outcome("pdf"))
                        .await
                    {
                        panic!("{owner}: finishing the job it leased failed: {e}");
                    }
                    finalized
                        .lock()
                        .unwrap()
                        .entry(job.key.as_str().to_owned())
                        .or_default()
                        .push(w);
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("the racing tasks finish in time")
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
        let finalized = std::mem::take(&mut *finalized.lock().unwrap());
        assert_eq!(finalized.len(), KEYS, "{}: every key finalized", t.name);
        for (key, by) in finalized.iter() {
            assert_eq!(by.len(), 1, "{}: {key} finalized by {by:?}", t.name);
        }
        let counts = t.ledger.counts(Some("r")).await.unwrap();
        assert_eq!(
            (counts.finalized, counts.total()),
            (KEYS as u64, KEYS as u64),
            "{}",
            t.name
        );
        for job in t.ledger.jobs(Some("r")).await.unwrap() {
            assert_eq!(job.attempts, 1, "{}: {:?} leased once", t.name, job.key);
        }
    }
}
