//! The whole pipeline against the simulator: many works with a ledger, a crash and a
//! resumed run, deferral, and the ledger gate switched off.
#![cfg(feature = "simulator")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contentdownload::context::OperationType;
use contentdownload::download::{stage_pdf, DownloadOptions};
use contentdownload::ledger::{JobState, Ledger, LedgerConfig};
use contentdownload::manifest::{read_manifest, ManifestRecord, ManifestWriter, MANIFEST_FILE};
use contentdownload::pipeline::{FallbackConfig, Pipeline, PipelineConfig, Progress};
use contentdownload::reason::ReasonCode;
use contentdownload::resolvers::{ResolverConfig, RESOLVER_NAMES};
use contentdownload::service::{Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::{LineError, Work};
use futures_util::stream;
use serde_json::json;
use sha2::{Digest, Sha256};

fn works(sim: &Simulator, n: usize) -> Vec<Work> {
    (0..n)
        .map(|i| {
            Work::from_openalex(&json!({
                "id": format!("https://openalex.org/W{}", 1000 + i),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}
            }))
            .unwrap()
        })
        .collect()
}

fn config(sim: &Simulator, out: &Path, worker: &str) -> PipelineConfig {
    PipelineConfig {
        worker_id: worker.into(),
        workers: 8,
        fallback: FallbackConfig {
            tiers: vec![FallbackConfig::parse_tier("direct=openalex").unwrap()],
            ..FallbackConfig::default()
        },
        resolvers: ResolverConfig {
            base_urls: RESOLVER_NAMES
                .iter()
                .map(|n| (n.to_string(), sim.url(&format!("/{n}"))))
                .collect::<BTreeMap<_, _>>(),
            ..ResolverConfig::default()
        },
        lease_ttl: Duration::from_secs(60),
        ..PipelineConfig::new(out, "run-1")
    }
}

fn stack() -> Stack {
    let mut cfg = StackConfig::default();
    cfg.rate_limit.default = contentdownload::layers::rate_limit::Quota::new(10_000.0, 1000);
    Stack::new(&cfg).unwrap()
}

fn manifest(out: &Path) -> Arc<Mutex<ManifestWriter>> {
    Arc::new(Mutex::new(ManifestWriter::open(out).unwrap()))
}

fn input(works: Vec<Work>) -> impl futures_util::Stream<Item = Result<Work, LineError>> {
    stream::iter(works.into_iter().map(Ok))
}

fn counts_per_path(sim: &Simulator) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in sim.requests_to("/pdf/*") {
        *counts.entry(r.path().to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_run_resumes_without_fetching_anything_twice() {
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/pdf/*", |_| Reply::pdf(4096).delay(Duration::from_millis(2)));
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let all = works(&sim, 200);

    // first run: dropped (no clean shutdown) once 80 works are done. It has its own ledger
    // handle, closed afterwards, as the connections of a crashed process would be.
    let crash = Arc::new(tokio::sync::Notify::new());
    // works done (downloaded) when the run was dropped: some may still have been waiting
    // for their group's ledger commit
    let done_at_crash = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let crashed_ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
        let pipeline = Pipeline::new(
            config(&sim, out.path(), "w1"),
            &stack(),
            Some(crashed_ledger.clone()),
            manifest(out.path()),
        )
        .unwrap();
        let crash_at = crash.clone();
        let done = done_at_crash.clone();
        let progress = move |p: &Progress| {
            done.store(p.done, std::sync::atomic::Ordering::SeqCst);
            if p.done == 80 {
                crash_at.notify_one();
            }
        };
        tokio::select! {
            r = pipeline.run(input(all.clone()), progress, std::future::pending()) => panic!("the run finished before the crash: {r:?}"),
            () = crash.notified() => {}
        }
        drop(pipeline);
        crashed_ledger.close().await;
    }
    let finished_first = ledger.counts(Some("run-1")).await.unwrap().finalized;
    let done_first = done_at_crash.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        done_first >= 80 && finished_first <= done_first,
        "{finished_first} {done_first}"
    );
    // finalized rows lag the downloads by at most the group being recorded
    assert!(finished_first >= 60, "{finished_first}");

    // the crashed worker's leases expire; a new worker resumes (as run-2)
    ledger.clock().advance(Duration::from_secs(61));
    let mut second = config(&sim, out.path(), "w2");
    second.run_id = "run-2".into();
    let pipeline = Pipeline::new(second, &stack(), Some(ledger.clone()), manifest(out.path())).unwrap();
    let summary = pipeline
        .run(input(all.clone()), |_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.works, 200);
    assert_eq!(
        (summary.downloaded + summary.skipped, summary.failed),
        (200, 0),
        "{summary:?}"
    );
    assert!(summary.skipped >= finished_first, "{summary:?}");

    let total = counts_per_path(&sim);
    let (lines, bad) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let mut skipped = 0;
    for line in lines.iter().filter(|l| l.run_id == "run-2") {
        if let ManifestRecord::Work(rec) = &line.record {
            let i: usize = rec.work_id[1..].parse::<usize>().unwrap() - 1000;
            let fetched = total[&format!("/pdf/{i}.pdf")];
            if rec.reason == Some(ReasonCode::AlreadyDownloaded) {
                skipped += 1;
                assert_eq!(fetched, 1, "{} was fetched again after it was finalized", rec.work_id);
            } else {
                // it was in flight at the crash (fetched again), or never started (once)
                assert!(fetched <= 2, "{}: {fetched}", rec.work_id);
            }
        }
    }
    assert_eq!(skipped, summary.skipped);
    // only what was in flight at the crash is fetched a second time: a file downloaded but
    // still waiting for its ledger row is found in place, checked and recorded
    let refetched = total.values().filter(|&&c| c > 1).count();
    assert!(
        refetched <= 8,
        "{refetched} works fetched twice (8 were in flight at most)"
    );

    // every file is there with the hash the ledger recorded; the manifest's hashes match too
    let jobs = ledger.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 200);
    for job in &jobs {
        assert_eq!(job.state, JobState::Finalized, "{:?}", job.work_id);
        let bytes = std::fs::read(out.path().join(job.result.path.as_ref().unwrap())).unwrap();
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(job.result.sha256.as_deref(), Some(sha.as_str()));
    }
    for line in &lines {
        if let ManifestRecord::Work(rec) = &line.record {
            let path = out.path().join(rec.path.as_ref().unwrap());
            let sha: String = Sha256::digest(std::fs::read(&path).unwrap())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(rec.sha256.as_deref(), Some(sha.as_str()), "{}", rec.work_id);
        }
    }
    assert!(matches!(lines.last().unwrap().record, ManifestRecord::Summary(_)));
}

// One owner for ledger claims: with the runner's stack (its idempotency layer on), each
// work is claimed once, by the pipeline, and the layer records nothing in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_is_the_ledgers_only_claimant() {
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/pdf/*", |_| Reply::pdf(4096));
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let s = stack();
    let pipeline = Pipeline::new(
        config(&sim, out.path(), "w1"),
        &s,
        Some(ledger.clone()),
        manifest(out.path()),
    )
    .unwrap();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(input(works(&sim, 5)), |_| {}, std::future::pending()),
    )
    .await
    .expect("the run ends")
    .unwrap();
    assert_eq!(summary.downloaded, 5, "{summary:?}");
    let jobs = ledger.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 5);
    for job in &jobs {
        assert_eq!(job.attempts, 1, "claimed once: {job:?}");
        assert_eq!(job.result.outcome.as_deref(), Some("downloaded"));
        assert!(ledger.ops(job.id).await.unwrap().is_empty(), "no layer op: {job:?}");
    }
}

// No ledger here: sqlx's pool keeps real-time timeouts, which a paused clock would fire.
#[tokio::test(start_paused = true)]
async fn a_throttled_download_is_deferred_then_picked_up_by_a_later_run() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/pdf/0.pdf",
        [Reply::status(429).retry_after_secs(300), Reply::pdf(4096)],
    );
    let out = tempfile::tempdir().unwrap();
    let one = works(&sim, 1);
    let s = stack();
    let pipeline = Pipeline::new(config(&sim, out.path(), "w1"), &s, None, manifest(out.path())).unwrap();
    let summary = pipeline
        .run(input(one.clone()), |_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        (summary.deferred, summary.failed, summary.downloaded),
        (1, 0, 0),
        "{summary:?}"
    );
    assert_eq!(
        sim.count("/pdf/0.pdf"),
        1,
        "the hint (300 s) is beyond the second pass's maximum wait (60 s): not asked again"
    );
    let (lines, _) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    let detail = lines
        .iter()
        .find_map(|l| match &l.record {
            ManifestRecord::Work(w) => w.detail.clone(),
            _ => None,
        })
        .unwrap_or_default();
    assert!(detail.contains("--second-pass-max-wait"), "{detail}");

    // later, the cool-down is over: a new run downloads it
    tokio::time::advance(Duration::from_secs(301)).await;
    let pipeline = Pipeline::new(config(&sim, out.path(), "w1"), &s, None, manifest(out.path())).unwrap();
    let summary = pipeline.run(input(one), |_| {}, std::future::pending()).await.unwrap();
    assert_eq!(summary.downloaded, 1, "{summary:?}");
}

// The hint travels with the failure: a 429 + Retry-After on a PDF fetch through the
// stack comes back as a failure carrying that wait (no side channel, no error chain).
#[tokio::test(start_paused = true)]
async fn a_refused_pdf_fetch_carries_its_retry_after() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/0.pdf", [Reply::status(429).retry_after_secs(300)]);
    sim.on("/pdf/1.pdf", [Reply::pdf(4096)]);
    let out = tempfile::tempdir().unwrap();
    let s = stack();
    let out = out.path();
    let options = DownloadOptions::default();
    let fetch = |path: &str| {
        let request = http::Request::get(sim.url(path))
            .extension(OperationType::Download)
            .body(Default::default())
            .unwrap();
        stage_pdf(s.service(OperationType::Download), request, out, "k", &options)
    };
    let refused = fetch("/pdf/0.pdf").await.unwrap_err();
    assert_eq!(refused.reason, ReasonCode::Throttled);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(300)));
    // the host now cools down: the next fetch is not sent, and its failure carries the
    // cool-down's remaining wait
    let cooling = fetch("/pdf/1.pdf").await.unwrap_err();
    assert_eq!(cooling.reason, ReasonCode::CoolingDown);
    assert!(
        cooling
            .retry_after
            .is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(300)),
        "{:?}",
        cooling.retry_after
    );
    assert_eq!(sim.count("/pdf/1.pdf"), 0);
}

// The 429's hint (90 s) is past the Download retry's deadline (60 s), so the work is
// deferred; the second pass waits for the hint, not a moment less, then downloads it.
#[tokio::test(start_paused = true)]
async fn the_second_pass_waits_for_the_providers_hint() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/pdf/0.pdf",
        [Reply::status(429).retry_after_secs(90), Reply::pdf(4096)],
    );
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim, out.path(), "w1");
    cfg.second_pass_max_wait = Duration::from_secs(120);
    let pipeline = Pipeline::new(cfg, &stack(), None, manifest(out.path())).unwrap();
    let summary = pipeline
        .run(input(works(&sim, 1)), |_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        (summary.downloaded, summary.deferred, summary.failed),
        (1, 0, 0),
        "{summary:?}"
    );
    let seen = sim.requests_to("/pdf/0.pdf");
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at.duration_since(seen[0].at);
    assert!(
        waited >= Duration::from_secs(90),
        "asked again {waited:?} after a Retry-After of 90 s"
    );
}

/// A provider that answers 429 with the remaining Retry-After until `pause` after `t0`,
/// then PDFs: its pause covers all its paths, as a real provider's does.
fn paused_provider(sim: &Simulator, t0: tokio::time::Instant, pause: Duration) {
    sim.on_fn("/pdf/*", move |seen| {
        match (t0 + pause).checked_duration_since(seen.at) {
            Some(left) if !left.is_zero() => Reply::status(429).retry_after_secs(left.as_secs_f64().ceil() as u64),
            _ => Reply::pdf(4096),
        }
    });
}

fn work_at(sim: &Simulator, n: usize) -> Work {
    Work::from_openalex(&json!({
        "id": format!("https://openalex.org/W{}", 2000 + n),
        "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{n}.pdf"))}
    }))
    .unwrap()
}

// Three providers pausing for 100 s, 80 s and 400 s: with a bound of 120 s the works of the
// first two are asked again once (and not before) their provider's pause is over, the
// shorter pause first; the third stays deferred without another request.
#[tokio::test(start_paused = true)]
async fn deferred_works_wait_for_their_providers_pause_within_the_bound() {
    let t0 = tokio::time::Instant::now();
    let (slow, quick, away) = (
        Simulator::start().await.unwrap(),
        Simulator::start().await.unwrap(),
        Simulator::start().await.unwrap(),
    );
    paused_provider(&slow, t0, Duration::from_secs(100));
    paused_provider(&quick, t0, Duration::from_secs(80));
    paused_provider(&away, t0, Duration::from_secs(400));
    let all = vec![
        work_at(&slow, 0),
        work_at(&slow, 1),
        work_at(&quick, 2),
        work_at(&away, 3),
    ];
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&slow, out.path(), "w1");
    cfg.second_pass_max_wait = Duration::from_secs(120);
    let pipeline = Pipeline::new(cfg, &stack(), None, manifest(out.path())).unwrap();
    let summary = pipeline.run(input(all), |_| {}, std::future::pending()).await.unwrap();
    assert_eq!((summary.downloaded, summary.deferred), (3, 1), "{summary:?}");
    assert_eq!(away.count("/pdf/*"), 1, "past the bound: not asked again");
    for (sim, pause) in [(&slow, 100), (&quick, 80)] {
        for seen in sim.requests_to("/pdf/*") {
            let at = seen.at.duration_since(t0);
            // the first pass at the start, the second once the pause is over, nothing between
            assert!(
                at < Duration::from_secs(1) || at >= Duration::from_secs(pause),
                "{} asked {at:?} into a pause of {pause} s",
                seen.path()
            );
        }
    }
    let last = |sim: &Simulator| sim.requests_to("/pdf/*").iter().map(|r| r.at).max().unwrap();
    assert!(last(&quick) < last(&slow), "the shorter pause went first");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_the_second_pass_wait_leaves_the_work_deferred() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/pdf/0.pdf",
        [Reply::status(429).retry_after_secs(90), Reply::pdf(4096)],
    );
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim, out.path(), "w1");
    cfg.second_pass_max_wait = Duration::from_secs(120);
    let pipeline = Pipeline::new(cfg, &stack(), None, manifest(out.path())).unwrap();
    // Ctrl-C 10 s after the work was deferred: while the second pass waits for the hint
    let deferred = Arc::new(tokio::sync::Notify::new());
    let notify = deferred.clone();
    let progress = move |p: &Progress| {
        if p.deferred == 1 && p.done == 0 {
            notify.notify_one();
        }
    };
    let shutdown = async move {
        deferred.notified().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    let started = tokio::time::Instant::now();
    let summary = pipeline.run(input(works(&sim, 1)), progress, shutdown).await.unwrap();
    assert!(summary.interrupted, "{summary:?}");
    assert_eq!((summary.deferred, summary.downloaded), (1, 0), "{summary:?}");
    assert_eq!(sim.count("/pdf/0.pdf"), 1, "not asked again");
    // the paused clock shows the wait was cut short, not waited out
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
    let (lines, _) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    assert!(matches!(&lines.last().unwrap().record, ManifestRecord::Summary(s) if s.interrupted));
}

#[tokio::test(start_paused = true)]
async fn without_a_ledger_existing_files_are_skipped_and_nothing_is_stored() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(4096)]);
    let out = tempfile::tempdir().unwrap();
    let all = works(&sim, 5);
    for _ in 0..2 {
        let pipeline = Pipeline::new(config(&sim, out.path(), "w1"), &stack(), None, manifest(out.path())).unwrap();
        pipeline
            .run(input(all.clone()), |_| {}, std::future::pending())
            .await
            .unwrap();
    }
    assert_eq!(sim.count("/pdf/*"), 5);
    assert!(!out.path().join("ledger.sqlite").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_the_run_and_releases_leases() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(4096).delay(Duration::from_millis(20))]);
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let pipeline = Pipeline::new(
        config(&sim, out.path(), "w1"),
        &stack(),
        Some(ledger.clone()),
        manifest(out.path()),
    )
    .unwrap();
    // Ctrl-C arrives once 10 works are done
    let stop = Arc::new(tokio::sync::Notify::new());
    let trigger = stop.clone();
    let progress = move |p: &Progress| {
        if p.done == 10 {
            trigger.notify_one();
        }
    };
    let summary = pipeline
        .run(input(works(&sim, 200)), progress, stop.notified())
        .await
        .unwrap();
    assert!(summary.interrupted);
    assert!(summary.works < 200, "{summary:?}");
    let counts = ledger.counts(None).await.unwrap();
    assert_eq!(
        counts.leased, 0,
        "in-flight leases and those claimed ahead were released: {counts:?}"
    );
    // a work claimed ahead and never started has no attempt counted (one started and
    // cancelled before its request keeps its attempt, as any released work)
    let requested: HashSet<String> = sim.requests_to("/pdf/*").iter().map(|r| r.path().to_owned()).collect();
    let jobs = ledger.jobs(None).await.unwrap();
    let untried: Vec<_> = jobs
        .iter()
        .filter(|j| {
            let n = j.work_id.as_str().trim_start_matches('W').parse::<usize>().unwrap() - 1000;
            !requested.contains(&format!("/pdf/{n}.pdf"))
        })
        .collect();
    assert!(
        untried.iter().all(|j| j.state == JobState::Planned && j.attempts <= 1),
        "{untried:?}"
    );
    assert!(
        untried.iter().any(|j| j.attempts == 0),
        "works claimed ahead and never started were given back uncounted: {untried:?}"
    );
    assert_eq!(counts.finalized, summary.downloaded);
    assert_eq!(
        std::fs::read_dir(out.path().join(".partial")).map_or(0, |d| d.count()),
        0
    );
    let (lines, _) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    assert!(matches!(&lines.last().unwrap().record, ManifestRecord::Summary(s) if s.interrupted));
}

#[tokio::test]
async fn bad_input_lines_are_counted_not_fatal() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::status(404)]);
    let out = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(config(&sim, out.path(), "w1"), &stack(), None, manifest(out.path())).unwrap();
    let items = vec![
        Err(LineError {
            line: 1,
            message: "not JSON".into(),
        }),
        Ok(works(&sim, 1).remove(0)),
    ];
    let summary = pipeline
        .run(stream::iter(items), |_| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!((summary.input_errors, summary.failed), (1, 1));
    assert_eq!(summary.failed_by_reason[&ReasonCode::HttpStatus], 1);
}

/// The manifest is synced lazily while the run goes (once a second), yet complete when the
/// run returns: a work line per work, an attempt line per download, the summary last,
/// before the attempt-record writer is even closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_is_complete_when_the_run_returns() {
    use contentdownload::layers::telemetry::RecordWriter;
    use contentdownload::manifest::ManifestSink;

    const WORKS: usize = 60;
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/pdf/*", |_| Reply::pdf(4096));
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let shared = manifest(out.path());
    let records = RecordWriter::spawn(ManifestSink::new(shared.clone(), "run-1"), 4096);
    let stack = Stack::new(&StackConfig {
        records: Some(records.clone()),
        run_id: Some("run-1".into()),
        ..StackConfig::default()
    })
    .unwrap();
    let pipeline = Pipeline::new(config(&sim, out.path(), "w1"), &stack, Some(ledger.clone()), shared)
        .unwrap()
        .with_records(records.clone());
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        pipeline.run(input(works(&sim, WORKS)), |_| {}, std::future::pending()),
    )
    .await
    .expect("the run ends in time")
    .unwrap();
    assert_eq!(summary.downloaded, WORKS as u64, "{summary:?}");

    let (lines, bad) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let work_lines = lines
        .iter()
        .filter(|l| matches!(l.record, ManifestRecord::Work(_)))
        .count();
    let attempt_lines = lines
        .iter()
        .filter(|l| matches!(l.record, ManifestRecord::Attempt(_)))
        .count();
    assert_eq!(work_lines, WORKS);
    assert!(
        attempt_lines >= WORKS,
        "{attempt_lines} attempt lines for {WORKS} downloads"
    );
    assert!(matches!(lines.last().unwrap().record, ManifestRecord::Summary(_)));
    assert_eq!(records.dropped(), 0);
    records.close().await.unwrap();
    ledger.close().await;
}

/// The ledger job the pipeline claims for `w`, as another worker of `run` would claim it.
fn sibling_job(run: &str, w: &Work) -> contentdownload::ledger::NewJob {
    use contentdownload::context::WorkId;
    use contentdownload::layers::idempotency::derive_key;
    contentdownload::ledger::NewJob {
        run_id: run.into(),
        work_id: WorkId::new(w.id.as_str()),
        key: derive_key(
            OperationType::Download,
            Some(&WorkId::new(w.id.as_str())),
            &format!("work:{}", w.id),
        ),
        canonical_url: format!("work:{}", w.id),
    }
}

/// Two works are leased by another live worker when the run meets them: the run waits for
/// those leases by polling the ledger (not for a lease TTL), then takes the other worker's
/// outcome for the one it finished and does the one it gave back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_leased_by_a_live_worker_are_waited_for_not_slept_on() {
    use contentdownload::ledger::{Claim, JobResult};
    use contentdownload::manifest::Outcome;

    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(4096)]);
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let all = works(&sim, 5);
    // the sibling holds W1000 and W1001, for far longer than this test may take
    let ttl = Duration::from_secs(600);
    let mut held = Vec::new();
    for w in &all[..2] {
        match ledger.claim(&sibling_job("run-0", w), "sibling", ttl).await.unwrap() {
            Claim::Leased(j) => held.push(j.id),
            other => panic!("{other:?}"),
        }
    }
    // once the first pass is over (3 done, 2 waiting), the sibling finishes W1000 and gives
    // W1001 back
    let first_pass_over = Arc::new(tokio::sync::Notify::new());
    let sibling = {
        let (ledger, go, held) = (ledger.clone(), first_pass_over.clone(), held.clone());
        let dir = out.path().to_owned();
        tokio::spawn(async move {
            go.notified().await;
            // the sibling's file is on disk, as its FINALIZED row says (the ledger believes
            // the disk: a row without its file would be planned again)
            std::fs::write(dir.join("W1000.pdf"), b"%PDF-1.4 sibling").unwrap();
            let result = JobResult {
                outcome: Some("downloaded".into()),
                path: Some("W1000.pdf".into()),
                ..JobResult::default()
            };
            ledger
                .finish(held[0], "sibling", JobState::Finalized, &result)
                .await
                .unwrap();
            ledger.release(held[1], "sibling").await.unwrap();
        })
    };
    let mut cfg = config(&sim, out.path(), "w1");
    cfg.lease_ttl = ttl;
    let pipeline = Pipeline::new(cfg, &stack(), Some(ledger.clone()), manifest(out.path())).unwrap();
    let go = first_pass_over.clone();
    let progress = move |p: &Progress| {
        if (p.done, p.deferred) == (3, 2) {
            go.notify_one();
        }
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        pipeline.run(input(all), progress, std::future::pending()),
    )
    .await
    .expect("no lease TTL slept")
    .unwrap();
    sibling.await.unwrap();
    assert_eq!(
        (summary.downloaded, summary.skipped, summary.deferred),
        (4, 1, 0),
        "{summary:?}"
    );
    assert_eq!(sim.count("/pdf/*"), 4, "W1000 came from the sibling");
    let (lines, bad) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let w1000 = lines
        .iter()
        .find_map(|l| match &l.record {
            ManifestRecord::Work(w) if w.work_id == "W1000" => Some(w.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (w1000.outcome, w1000.reason, w1000.path.as_deref()),
        (
            Some(Outcome::Skipped),
            Some(ReasonCode::AlreadyDownloaded),
            Some("W1000.pdf")
        )
    );
    assert_eq!(ledger.counts(None).await.unwrap().finalized, 5);
}

/// Another worker of the same run FAILS a work while this run waits for its lease: this
/// run reports the failure and does not fetch the work again (several processes on one
/// input try a failing work once between them); a later run tries it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_another_worker_failed_during_the_run_is_not_tried_again() {
    use contentdownload::ledger::{Claim, JobResult};
    use contentdownload::manifest::Outcome;

    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(4096)]);
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    let all = works(&sim, 4);
    let ttl = Duration::from_secs(600);
    let held = match ledger
        .claim(&sibling_job("run-1", &all[0]), "sibling", ttl)
        .await
        .unwrap()
    {
        Claim::Leased(j) => j.id,
        other => panic!("{other:?}"),
    };
    // once the first pass is over (3 done, W1000 waiting), the sibling fails W1000
    let first_pass_over = Arc::new(tokio::sync::Notify::new());
    let sibling = {
        let (ledger, go) = (ledger.clone(), first_pass_over.clone());
        tokio::spawn(async move {
            go.notified().await;
            let result = JobResult {
                outcome: Some("failed".into()),
                reason: Some("http_status".into()),
                ..JobResult::default()
            };
            ledger.finish(held, "sibling", JobState::Failed, &result).await.unwrap();
        })
    };
    let mut cfg = config(&sim, out.path(), "w1");
    cfg.lease_ttl = ttl;
    let pipeline = Pipeline::new(cfg, &stack(), Some(ledger.clone()), manifest(out.path())).unwrap();
    let go = first_pass_over.clone();
    let progress = move |p: &Progress| {
        if (p.done, p.deferred) == (3, 1) {
            go.notify_one();
        }
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        pipeline.run(input(all.clone()), progress, std::future::pending()),
    )
    .await
    .expect("no lease TTL slept")
    .unwrap();
    sibling.await.unwrap();
    assert_eq!(
        (summary.downloaded, summary.skipped, summary.failed, summary.retry_later),
        (3, 1, 0, 0),
        "{summary:?}"
    );
    assert_eq!(sim.count("/pdf/0.pdf"), 0, "W1000 was the sibling's to try");
    let (lines, _) = read_manifest(&out.path().join(MANIFEST_FILE)).unwrap();
    let w1000 = lines
        .iter()
        .find_map(|l| match &l.record {
            ManifestRecord::Work(w) if w.work_id == "W1000" => Some(w.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (w1000.outcome, w1000.reason),
        (Some(Outcome::Skipped), Some(ReasonCode::FailedElsewhere))
    );
    let detail = w1000.detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("another worker") && detail.contains("http_status"),
        "{w1000:?}"
    );
    // a later run tries it again
    let pipeline = Pipeline::new(
        config(&sim, out.path(), "w2"),
        &stack(),
        Some(ledger.clone()),
        manifest(out.path()),
    )
    .unwrap();
    let summary = pipeline
        .run(input(all), |_: &Progress| {}, std::future::pending())
        .await
        .unwrap();
    assert_eq!(sim.count("/pdf/0.pdf"), 1, "{summary:?}");
    assert_eq!(ledger.counts(None).await.unwrap().finalized, 4);
}

/// A ledger failure stops the run with an error, and the run gives back every lease it
/// held (the failed work's and those of the works in flight), so that a re-run anywhere
/// need not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_ledger_error_gives_back_the_runs_leases() {
    use sqlx::ConnectOptions;

    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(4096).delay(Duration::from_millis(30))]);
    let out = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(out.path())).await.unwrap();
    // the ledger refuses to finalize W1010: a database error, fatal to the run
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(out.path().join("ledger.sqlite"))
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs \
         WHEN NEW.state = 'FINALIZED' AND OLD.work_id = 'W1010' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let pipeline = Pipeline::new(
        config(&sim, out.path(), "w1"),
        &stack(),
        Some(ledger.clone()),
        manifest(out.path()),
    )
    .unwrap();
    let err = pipeline
        .run(input(works(&sim, 100)), |_| {}, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    let counts = ledger.counts(None).await.unwrap();
    assert_eq!(counts.leased, 0, "every lease given back: {counts:?}");
    // the works in flight when the error came were cancelled and given back, not finished
    assert!(counts.finalized < 100 && counts.planned > 0, "{counts:?}");
}
