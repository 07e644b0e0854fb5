//! Several runner processes on one output folder (and one ledger, SQLite or PostgreSQL),
//! and the re-run of a killed process: the real binary against the simulator on 127.0.0.1.
#![cfg(feature = "simulator")]

mod ledger_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use contentdownload::layers::telemetry::AttemptRecord;
use contentdownload::ledger::{Ledger, LedgerConfig};
use contentdownload::manifest::{ManifestLine, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::reason::ReasonCode;
use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_contentdownload");
const WORKS: usize = 160;
/// Far longer than the tests' bound: a worker that sleeps a lease's TTL makes them fail.
const LEASE_TTL: &str = "120";
/// The bound on every test here, well under [`LEASE_TTL`]; not a measure of speed.
const BOUND: Duration = Duration::from_secs(60);

/// Work `i`'s PDF is `2000 + 7 i` bytes, so that every work's file (and sha256) differs.
fn serve_pdfs(sim: &Simulator, delay: Duration) {
    sim.on_fn("/pdf/*", move |req| {
        let i: u64 = req
            .path()
            .trim_start_matches("/pdf/")
            .trim_end_matches(".pdf")
            .parse()
            .unwrap_or(0);
        Reply::pdf(2000 + 7 * i).delay(delay)
    });
}

fn write_works(sim: &Simulator, path: &Path) {
    let lines: Vec<String> = (0..WORKS)
        .map(|i| {
            json!({
                "id": format!("https://openalex.org/W{}", 5000 + i),
                "doi": format!("https://doi.org/10.5555/w{i}"),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn run_args(sim: &Simulator, input: &Path, out: &Path, ledger: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--mailto",
        "ci@example.org",
        "--fallback-tier",
        "direct=openalex",
        "--resolver-base",
        &format!("unpaywall={}", sim.url("/unpaywall")),
        "--rate",
        &format!("{}=1000:100", sim.addr()),
        "--lease-ttl-secs",
        LEASE_TTL,
        "--workers",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = ledger {
        args.extend(["--ledger".to_owned(), url.to_owned()]);
    }
    args
}

fn runner(args: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCSTOKG_")) {
        cmd.env_remove(k);
    }
    cmd.args(args)
        .env("RUST_LOG", "contentdownload=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn bounded(what: String, fut: impl std::future::Future<Output = std::io::Result<Output>>) -> Output {
    let out = tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?} (did a worker sleep a lease TTL?)"))
        .unwrap_or_else(|e| panic!("{what} did not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every manifest line parses; every work line that names a file names this work's file,
/// with its sha256 and size; returns the work lines by work id.
fn check_manifest(out: &Path) -> HashMap<String, Vec<(Outcome, Option<ReasonCode>)>> {
    let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    let mut works: HashMap<String, Vec<(Outcome, Option<ReasonCode>)>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line: ManifestLine = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("manifest line {} does not parse ({e}): {line}", n + 1));
        let ManifestRecord::Work(w) = line.record else { continue };
        if let Some(path) = &w.path {
            assert_eq!(
                path,
                &format!("{}.pdf", w.work_id),
                "line {}: another work's file",
                n + 1
            );
            let bytes = std::fs::read(out.join(path)).unwrap();
            assert_eq!(w.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()), "line {}", n + 1);
            assert_eq!(w.bytes, Some(bytes.len() as u64), "line {}", n + 1);
        }
        works
            .entry(w.work_id.clone())
            .or_default()
            .push((w.outcome.unwrap(), w.reason));
    }
    works
}

/// Exactly one header, at the top, and every row whole.
fn check_attempts_csv(out: &Path) -> usize {
    let text = std::fs::read_to_string(out.join("attempts.csv")).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("schema_version,")).count(),
        1,
        "one header in attempts.csv"
    );
    assert!(text.starts_with("schema_version,"));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let rows: Vec<AttemptRecord> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("a spliced attempts.csv row: {e}"));
    rows.len()
}

/// Four processes on one folder and one ledger.
async fn four_processes(ledger_url: Option<String>, ledger_config: LedgerConfig) {
    let sim = Simulator::start().await.unwrap();
    serve_pdfs(&sim, Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input);
    let out = dir.path().join("pdfs");
    let args = run_args(&sim, &input, &out, ledger_url.as_deref());

    let runs: Vec<_> = (0..4).map(|_| runner(&args).spawn().unwrap()).collect();
    let outputs = futures_util::future::join_all(
        runs.into_iter()
            .enumerate()
            .map(|(i, child)| bounded(format!("runner {i}"), child.wait_with_output())),
    );
    let outputs = tokio::time::timeout(BOUND, outputs)
        .await
        .expect("the four runners within the bound");
    assert_eq!(outputs.len(), 4);

    // each file fetched once, and every work downloaded by exactly one process
    assert_eq!(sim.count("/pdf/*"), WORKS, "each PDF fetched exactly once");
    let works = check_manifest(&out);
    assert_eq!(works.len(), WORKS);
    for (id, lines) in &works {
        assert_eq!(lines.len(), 4, "{id}: one line per process: {lines:?}");
        let downloaded = lines.iter().filter(|(o, _)| *o == Outcome::Downloaded).count();
        assert_eq!(downloaded, 1, "{id}: {lines:?}");
        // the others took the sibling's outcome from the ledger, none left waiting
        assert!(
            lines
                .iter()
                .all(|l| *l == (Outcome::Downloaded, None)
                    || *l == (Outcome::Skipped, Some(ReasonCode::AlreadyDownloaded))),
            "{id}: {lines:?}"
        );
    }
    assert!(check_attempts_csv(&out) >= WORKS);

    let ledger = Ledger::connect(ledger_config).await.unwrap();
    let counts = ledger.counts(None).await.unwrap();
    assert_eq!(
        (counts.finalized, counts.leased, counts.total()),
        (WORKS as u64, 0, WORKS as u64)
    );
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_folder_and_a_sqlite_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let url = format!("sqlite://{}", path.display());
    four_processes(Some(url.clone()), LedgerConfig::new(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_folder_and_a_postgres_ledger() {
    let Some(url) = ledger_support::pg_url("four_processes_share_a_folder_and_a_postgres_ledger") else {
        return;
    };
    let schema = ledger_support::unique_schema("four_processes");
    let mut config = LedgerConfig::new(url.clone());
    config.pg_schema = Some(schema.clone());
    // create the schema (and the tables) for the runners to find through their search path
    Ledger::connect(config.clone()).await.unwrap().close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    four_processes(Some(format!("{url}{sep}options[search_path]={schema}")), config).await;
}

/// A runner killed mid-run (SIGKILL: no lease given back) is re-run with a lease TTL far
/// beyond the test's bound: its dead process's leases are taken back at reconciliation, so
/// the re-run downloads everything without waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_s_rerun_takes_its_leases_back_at_once() {
    let sim = Simulator::start().await.unwrap();
    // slow enough that works are in flight (leased) when the kill comes
    serve_pdfs(&sim, Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input);
    let out = dir.path().join("pdfs");
    let args = run_args(&sim, &input, &out, None);

    let mut child = runner(&args).spawn().unwrap();
    // wait (bounded) until some works are in, then SIGKILL
    for _ in 0..600 {
        let n = std::fs::read_dir(&out).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pdf"))
                .count()
        });
        if n >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let ledger_config = LedgerConfig::in_dir(&out);
    let ledger = Ledger::connect(LedgerConfig {
        reconcile_on_open: false,
        ..ledger_config.clone()
    })
    .await
    .unwrap();
    let leased = ledger.counts(None).await.unwrap().leased;
    ledger.close().await;
    assert!(leased > 0, "works were in flight at the kill");

    let rerun = bounded("the re-run".into(), runner(&args).output()).await;
    let log = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        log.contains("took back the leases of a process on this host that has ended"),
        "{log}"
    );
    for i in 0..WORKS {
        assert!(
            out.join(format!("W{}.pdf", 5000 + i)).is_file(),
            "W{} missing",
            5000 + i
        );
    }
    let works = check_manifest(&out);
    assert!(
        works
            .values()
            .flatten()
            .all(|(_, reason)| *reason != Some(ReasonCode::LeasedElsewhere)),
        "no work left to the dead process"
    );
    let ledger = Ledger::connect(ledger_config).await.unwrap();
    let counts = ledger.counts(None).await.unwrap();
    assert_eq!((counts.finalized, counts.leased), (WORKS as u64, 0));
    ledger.close().await;
}
