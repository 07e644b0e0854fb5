//! Ledger throughput: plan → lease → finalize transitions per second, batched and one at a
//! time, on SQLite (a file in a temporary folder) and, when
//! `CONTENTDOWNLOAD_TEST_POSTGRES_URL` is set and the `postgres` feature is on, PostgreSQL.
//!
//! One iteration takes `jobs` fresh jobs through three transitions each (plan, lease,
//! finalize); criterion reports elements per second = transitions per second.
//!
//! ```text
//! cargo bench --bench ledger -- --warm-up-time 1 --measurement-time 3
//! CONTENTDOWNLOAD_TEST_POSTGRES_URL=postgres://... cargo bench --features postgres --bench ledger
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contentdownload::context::{IdempotencyKey, WorkId};
use contentdownload::ledger::{JobResult, JobState, Ledger, LedgerConfig, NewJob};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn fresh_jobs(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|_| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            NewJob {
                run_id: "bench".into(),
                work_id: WorkId::new(format!("W{i}")),
                key: IdempotencyKey::new(format!("bench-key-{i}")),
                canonical_url: format!("https://example.org/{i}.pdf"),
            }
        })
        .collect()
}

/// Plans, leases and finalizes `n` jobs in batches of `batch`; returns the time taken.
async fn batched(ledger: &Ledger, n: usize, batch: usize) -> Duration {
    let jobs = fresh_jobs(n);
    let start = Instant::now();
    for chunk in jobs.chunks(batch) {
        ledger.plan_many(chunk).await.expect("plan");
    }
    let mut left = n;
    while left > 0 {
        let leased = ledger
            .lease(Some("bench"), "bench", batch as u32, Duration::from_secs(60))
            .await
            .expect("lease");
        assert!(!leased.is_empty(), "planned jobs must be leasable");
        left -= leased.len();
        let items: Vec<_> = leased
            .iter()
            .map(|j| (j.id, JobState::Finalized, JobResult::outcome("pdf")))
            .collect();
        for r in ledger.finish_many("bench", &items).await.expect("finish") {
            r.expect("finalize");
        }
    }
    start.elapsed()
}

/// The same, one job and one statement at a time.
async fn one_by_one(ledger: &Ledger, n: usize) -> Duration {
    let jobs = fresh_jobs(n);
    let start = Instant::now();
    for job in &jobs {
        ledger.plan(job).await.expect("plan");
        let leased = ledger
            .lease(Some("bench"), "bench", 1, Duration::from_secs(60))
            .await
            .expect("lease");
        let job = leased.first().expect("a planned job");
        ledger
            .finish(job.id, "bench", JobState::Finalized, &JobResult::outcome("pdf"))
            .await
            .expect("finalize");
    }
    start.elapsed()
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, ledger: &Ledger) {
    const BATCHED_JOBS: usize = 1000;
    const SINGLE_JOBS: usize = 200;
    let mut g = c.benchmark_group(format!("ledger/{name}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(3 * BATCHED_JOBS as u64));
    g.bench_function("plan_lease_finalize/batch_100", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += batched(ledger, BATCHED_JOBS, 100).await;
            }
            total
        })
    });
    g.throughput(Throughput::Elements(3 * SINGLE_JOBS as u64));
    g.bench_function("plan_lease_finalize/one_by_one", |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += one_by_one(ledger, SINGLE_JOBS).await;
            }
            total
        })
    });
    g.finish();
}

fn ledger_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let sqlite = rt
        .block_on(Ledger::connect(LedgerConfig::in_dir(dir.path())))
        .expect("open SQLite");
    bench_backend(c, &rt, "sqlite", &sqlite);

    match std::env::var("CONTENTDOWNLOAD_TEST_POSTGRES_URL") {
        Ok(url) if cfg!(feature = "postgres") => {
            let mut cfg = LedgerConfig::new(url);
            cfg.pg_schema = Some(format!("bench_{}", std::process::id()));
            let pg = rt.block_on(Ledger::connect(cfg)).expect("open PostgreSQL");
            bench_backend(c, &rt, "postgres", &pg);
        }
        _ => eprintln!("note: PostgreSQL bench skipped (set CONTENTDOWNLOAD_TEST_POSTGRES_URL, --features postgres)"),
    }
}

criterion_group!(benches, ledger_benches);
criterion_main!(benches);
