//! `--durability batch` and a SIGKILL: no FINALIZED row ever precedes its file, and a rerun
//! finishes the rest.
//!
//! What this can and cannot show: the runner is killed, the kernel is not, so data still in
//! the page cache survives and a missing `fsync` would go unnoticed; only a power cut (or a
//! VM snapshot without the page cache) could show that. What it does show is the order the
//! runner writes in: a row that says FINALIZED has, at that moment, its file in place with
//! the size and SHA-256 the row records — never the row first.
#![cfg(all(unix, feature = "simulator"))]

mod bin_support;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use contentdownload::ledger::{Job, JobState, Ledger, LedgerConfig};
use contentdownload::simulator::{Reply, Simulator};
use sha2::{Digest, Sha256};

const WORKS: usize = 300;

fn write_works(path: &Path, sim: &Simulator) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..WORKS {
        let record = serde_json::json!({
            "id": format!("https://openalex.org/W{}", 5_000_000 + i),
            "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))},
        });
        writeln!(out, "{record}").unwrap();
    }
    out.flush().unwrap();
}

async fn ledger_of(out: &Path) -> Ledger {
    let mut config = LedgerConfig::in_dir(out);
    // read only what is there: leave the leases of the killed runner to the rerun
    config.reconcile_on_open = false;
    Ledger::connect(config).await.unwrap()
}

/// Every FINALIZED job's file is in place with the size and SHA-256 its row records; the
/// number of FINALIZED jobs.
fn check_finalized(out: &Path, jobs: &[Job]) -> usize {
    let mut finalized = 0;
    for job in jobs.iter().filter(|j| j.state == JobState::Finalized) {
        finalized += 1;
        let name = job
            .result
            .path
            .as_deref()
            .expect("a FINALIZED download records its file");
        let data = std::fs::read(out.join(name))
            .unwrap_or_else(|e| panic!("{} is FINALIZED but its file {name} cannot be read: {e}", job.work_id));
        assert_eq!(Some(data.len() as i64), job.result.bytes, "{name}: size");
        let sha = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert_eq!(job.result.sha256.as_deref(), Some(sha.as_str()), "{name}: SHA-256");
    }
    finalized
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_batch_run_never_finalizes_before_the_file_and_a_rerun_finishes() {
    let sim = Simulator::start().await.unwrap();
    // slow enough for the kill to come mid-run: 300 works, 8 at a time, 50 ms each (about
    // 2 s; at 20 ms each, a run on a loaded machine once ended before 20 rows were seen)
    sim.on_fn("/pdf/*", |_| Reply::pdf(20_000).delay(Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    let (works, out) = (dir.path().join("works.jsonl"), dir.path().join("pdfs"));
    std::fs::create_dir_all(&out).unwrap();
    write_works(&works, &sim);
    let rate = format!("127.0.0.1:{}=100000:1000", sim.addr().port());
    let args = [
        "run",
        "--input",
        works.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--durability",
        "batch",
        "--workers",
        "8",
        "--max-per-host",
        "8",
        "--rate",
        &rate,
        "--quiet",
    ];

    let mut child = bin_support::command(&args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kill it once some works are FINALIZED (bounded: 600 looks, 50 ms apart).
    let watcher = ledger_of(&out).await;
    let mut finalized_seen = 0;
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the runner ended ({status}) before it could be killed");
        }
        finalized_seen = watcher.counts(None).await.map_or(0, |c| c.finalized);
        if finalized_seen >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        finalized_seen >= 20,
        "the runner finalized only {finalized_seen} works in 30 s"
    );
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "{status}");
    let served_first = sim.count("/pdf/*");

    let jobs = watcher.jobs(None).await.unwrap();
    let finalized = check_finalized(&out, &jobs);
    let finalized_first: Vec<usize> = jobs
        .iter()
        .filter(|j| j.state == JobState::Finalized)
        .map(|j| j.work_id.as_str()[1..].parse::<usize>().unwrap() - 5_000_000)
        .collect();
    assert!(finalized >= finalized_seen as usize, "{finalized} < {finalized_seen}");
    assert!(finalized < WORKS, "the kill came after the run had finished");
    watcher.close().await;

    // the rerun takes the killed runner's leases back (its process is gone) and finishes
    let rerun = bin_support::contentdownload(&args, &[]).await;
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let ledger = ledger_of(&out).await;
    let jobs = ledger.jobs(None).await.unwrap();
    assert_eq!(check_finalized(&out, &jobs), WORKS);
    assert_eq!(jobs.len(), WORKS);
    // a work FINALIZED before the kill is not fetched again
    let mut fetched: HashMap<String, usize> = HashMap::new();
    for r in sim.requests_to("/pdf/*") {
        *fetched.entry(r.path().to_owned()).or_default() += 1;
    }
    for i in finalized_first {
        assert_eq!(fetched[&format!("/pdf/{i}.pdf")], 1, "work {i} was fetched again");
    }
    assert!(served_first < sim.count("/pdf/*"), "the rerun fetched the rest");
    ledger.close().await;
}
