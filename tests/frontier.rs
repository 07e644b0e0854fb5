//! The crawl frontier: a work waiting for a slow host gives its worker slot to works whose
//! host is ready, keeps its lease while it waits, and gives it back on a shutdown.
#![cfg(feature = "simulator")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contentdownload::layers::rate_limit::Quota;
use contentdownload::ledger::{JobState, Ledger, LedgerConfig};
use contentdownload::manifest::{ManifestWriter, SummaryRecord};
use contentdownload::pipeline::{FallbackConfig, Pipeline, PipelineConfig, Progress};
use contentdownload::resolvers::{ResolverConfig, RESOLVER_NAMES};
use contentdownload::service::{Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::{LineError, Work};
use futures_util::stream;
use serde_json::json;
use tokio::time::Instant;

/// `n` works whose PDF is on `sim`, ids from `first`.
fn works(sim: &Simulator, first: usize, n: usize) -> Vec<Work> {
    (first..first + n)
        .map(|i| {
            Work::from_openalex(&json!({
                "id": format!("https://openalex.org/W{}", 1000 + i),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}
            }))
            .unwrap()
        })
        .collect()
}

fn config(out: &Path, workers: usize) -> PipelineConfig {
    PipelineConfig {
        worker_id: "w1".into(),
        workers,
        fallback: FallbackConfig {
            tiers: vec![FallbackConfig::parse_tier("direct=openalex").unwrap()],
            ..FallbackConfig::default()
        },
        resolvers: ResolverConfig {
            // no resolver is asked: the works carry their PDF URL
            base_urls: RESOLVER_NAMES
                .iter()
                .map(|n| (n.to_string(), format!("http://127.0.0.1:9/{n}")))
                .collect::<BTreeMap<_, _>>(),
            ..ResolverConfig::default()
        },
        lease_ttl: Duration::from_secs(60),
        ..PipelineConfig::new(out, "run-1")
    }
}

/// A stack with every host fast, except `slow` (`host:port`) at `rate` req/s, no burst.
fn stack(slow: Option<(&Simulator, f64)>) -> Stack {
    let mut cfg = StackConfig {
        provider_learning: false,
        ..StackConfig::default()
    };
    cfg.rate_limit.default = Quota::new(10_000.0, 1000);
    if let Some((sim, rate)) = slow {
        cfg.rate_limit = cfg.rate_limit.provider(sim.addr().to_string(), Quota::per_second(rate));
    }
    Stack::new(&cfg).unwrap()
}

fn manifest(out: &Path) -> Arc<Mutex<ManifestWriter>> {
    Arc::new(Mutex::new(ManifestWriter::open(out).unwrap()))
}

fn input(works: Vec<Work>) -> impl futures_util::Stream<Item = Result<Work, LineError>> {
    stream::iter(works.into_iter().map(Ok))
}

/// When the last request to `sim` arrived, from `t0`.
fn last_request(sim: &Simulator, t0: Instant) -> Duration {
    sim.requests_to("/pdf/*")
        .iter()
        .map(|r| r.at.saturating_duration_since(t0))
        .max()
        .unwrap_or_default()
}

async fn run(pipeline: &Pipeline, works: Vec<Work>) -> SummaryRecord {
    pipeline
        .run(input(works), |_| {}, std::future::pending())
        .await
        .unwrap()
}

/// Host A at 1 req/s with 10 works ahead of host B's 200 in the input, 8 workers: B's
/// works finish at (nearly) the speed they reach alone, while A is still being served at
/// its rate. Without the frontier, A's works held 7 of the 8 workers for seconds each.
#[tokio::test(start_paused = true)]
async fn a_slow_host_does_not_hold_the_workers_of_a_fast_one() {
    const A_WORKS: usize = 10;
    const B_WORKS: usize = 200;
    let (a, b) = (Simulator::start().await.unwrap(), Simulator::start().await.unwrap());
    for sim in [&a, &b] {
        sim.on_fn("/pdf/*", |_| Reply::pdf(2048).delay(Duration::from_millis(40)));
    }

    // B alone
    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let alone = Pipeline::new(config(out.path(), 8), &stack(None), None, manifest(out.path())).unwrap();
    let summary = run(&alone, works(&b, A_WORKS, B_WORKS)).await;
    assert_eq!(summary.downloaded, B_WORKS as u64, "{summary:?}");
    let b_alone = last_request(&b, t0);
    b.clear_requests();

    // A's works first, then B's
    let out = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mixed = Pipeline::new(
        config(out.path(), 8),
        &stack(Some((&a, 1.0))),
        None,
        manifest(out.path()),
    )
    .unwrap();
    let mut all = works(&a, 0, A_WORKS);
    all.extend(works(&b, A_WORKS, B_WORKS));
    let summary = run(&mixed, all).await;
    assert_eq!(summary.downloaded, (A_WORKS + B_WORKS) as u64, "{summary:?}");
    let b_mixed = last_request(&b, t0);
    let a_done = last_request(&a, t0);
    eprintln!("B alone: {b_alone:?}; B with A: {b_mixed:?}; A's last request: {a_done:?}");
    assert!(
        b_mixed.as_secs_f64() <= b_alone.as_secs_f64() / 0.8,
        "B's works took {b_mixed:?} with A, {b_alone:?} alone"
    );
    assert!(b_mixed < a_done / 4, "B finished at {b_mixed:?}, A at {a_done:?}");
    // A was served at its rate, not faster, and not starved
    let mut times: Vec<_> = a.requests_to("/pdf/*").iter().map(|r| r.at).collect();
    times.sort();
    assert_eq!(times.len(), A_WORKS, "one request per work of A");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(990), "A's requests {gap:?} apart");
    }
    assert!(
        a_done < Duration::from_secs(A_WORKS as u64 + 2),
        "A's last request at {a_done:?}"
    );
}

/// A host's turn further away than the limiter's maximum wait is not waited for: those
/// works are put off to the second pass at once (they would otherwise wait in the stack
/// holding worker slots), and come back when their turn has come.
#[tokio::test(start_paused = true)]
async fn a_turn_past_the_maximum_wait_is_put_off_to_the_second_pass() {
    const A_WORKS: usize = 8;
    const B_WORKS: usize = 100;
    let (a, b) = (Simulator::start().await.unwrap(), Simulator::start().await.unwrap());
    for sim in [&a, &b] {
        sim.on_fn("/pdf/*", |_| Reply::pdf(2048).delay(Duration::from_millis(40)));
    }
    let out = tempfile::tempdir().unwrap();
    let mut cfg = StackConfig {
        provider_learning: false,
        ..StackConfig::default()
    };
    cfg.rate_limit.default = Quota::new(10_000.0, 1000);
    cfg.rate_limit.max_wait = Duration::from_secs(3);
    cfg.rate_limit = cfg.rate_limit.provider(a.addr().to_string(), Quota::per_second(1.0));
    let pipeline = Pipeline::new(
        config(out.path(), 4),
        &Stack::new(&cfg).unwrap(),
        None,
        manifest(out.path()),
    )
    .unwrap();
    let mut all = works(&a, 0, A_WORKS);
    all.extend(works(&b, A_WORKS, B_WORKS));
    let most_deferred = Arc::new(Mutex::new(0));
    let seen = most_deferred.clone();
    let progress = move |p: &Progress| {
        let mut most = seen.lock().unwrap();
        *most = (*most).max(p.deferred);
    };
    let t0 = Instant::now();
    let summary = pipeline
        .run(input(all), progress, std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.downloaded, (A_WORKS + B_WORKS) as u64, "{summary:?}");
    // 1 at once, 3 parked (1, 2, 3 s), the others put off
    assert_eq!(*most_deferred.lock().unwrap(), A_WORKS as u64 - 4);
    let b_done = last_request(&b, t0);
    assert!(b_done < Duration::from_secs(2), "B's works done after {b_done:?}");
    let mut times: Vec<_> = a.requests_to("/pdf/*").iter().map(|r| r.at).collect();
    times.sort();
    assert_eq!(times.len(), A_WORKS, "A's put-off works sent nothing in the first pass");
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(990));
    }
}

/// The works of a slow host parked at the frontier keep their leases (the heartbeat renews
/// them while they hold no worker slot), and a shutdown gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_works_keep_their_leases_and_a_shutdown_gives_them_back() {
    const A_WORKS: usize = 5;
    let a = Simulator::start().await.unwrap();
    a.on_fn("/pdf/*", |_| Reply::pdf(2048));
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let mut cfg = config(out.path(), 1);
    // renewed every 200 ms: a parked work waits up to 3 s
    cfg.lease_ttl = Duration::from_millis(600);
    let pipeline = Pipeline::new(cfg, &stack(Some((&a, 1.0))), Some(ledger.clone()), manifest(out.path())).unwrap();

    // after each finished work, a check of the leases; the third stops the run
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let progress = move |p: &Progress| {
        let _ = done_tx.send(p.done);
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let trigger = stop.clone();
    let checks = ledger.clone();
    let checker = tokio::spawn(async move {
        let mut most_parked = 0;
        while let Some(done) = done_rx.recv().await {
            let now = checks.clock().now_ms();
            let leased: Vec<_> = checks
                .jobs(Some("run-1"))
                .await
                .unwrap()
                .into_iter()
                .filter(|j| j.state == JobState::Leased)
                .collect();
            for job in &leased {
                let expires = job.lease_expires_at.unwrap_or(0);
                assert!(expires > now, "the lease of a waiting work lapsed: {job:?}");
            }
            most_parked = most_parked.max(leased.len());
            if done == 3 {
                trigger.notify_one();
            }
        }
        most_parked
    });
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(input(works(&a, 0, A_WORKS)), progress, stop.notified()),
    )
    .await
    .expect("the run stops")
    .unwrap();
    drop(pipeline);
    let most_parked = checker.await.unwrap();
    assert!(
        most_parked >= 2,
        "works of the slow host waited with their leases while one worker ran: {most_parked}"
    );
    assert!(summary.interrupted, "{summary:?}");
    assert_eq!(summary.downloaded, 3, "{summary:?}");
    let counts = ledger.counts(None).await.unwrap();
    assert_eq!(counts.leased, 0, "the parked works' leases were given back: {counts:?}");
    assert_eq!(counts.finalized, 3, "{counts:?}");
    assert_eq!(a.count("/pdf/*"), 3, "the parked works sent nothing");
    ledger.close().await;
}
