//! Runs each example binary to completion (short durations, loopback only, bounded by a
//! timeout) and checks what it prints.
#![cfg(feature = "simulator")]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// The features this test was built with, so that building the examples reuses the same
/// compiled library instead of rebuilding it with another feature set.
fn features() -> Vec<&'static str> {
    let mut f = vec!["simulator"];
    if cfg!(feature = "postgres") {
        f.push("postgres");
    }
    if cfg!(feature = "otlp") {
        f.push("otlp");
    }
    if cfg!(feature = "reqwest") {
        f.push("reqwest");
    }
    f
}

/// Builds the examples once per test run with the cargo that runs this test (same target
/// directory: `CARGO_TARGET_DIR` is inherited). A no-op when `cargo test` already built them.
fn build_examples() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
            let output = std::process::Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--examples",
                    "--manifest-path",
                    manifest,
                    "--features",
                ])
                .arg(features().join(","))
                .output()
                .map_err(|e| format!("could not run cargo: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build --examples failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
}

/// `<target>/<profile>/examples/<name>`: this test binary lives in `<target>/<profile>/deps/`.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs an example with `args`, killed after `limit`; returns its stdout (panics with its
/// stderr when it fails).
async fn run(name: &str, args: &[&str], limit: Duration) -> String {
    build_examples().unwrap();
    let path = example_path(name);
    let child = tokio::process::Command::new(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", path.display()));
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("example {name} did not finish within {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn any_tower_service_retries_after_the_hint_and_fails_over_a_resolve() {
    let out = run("any_tower_service", &[], Duration::from_secs(60)).await;
    assert!(out.contains("download: status 200 OK after 2 calls"), "{out}");
    assert!(out.contains("resolve: failed over after 1 call(s)"), "{out}");
}

#[tokio::test]
async fn wrap_hyper_client_gets_every_work_through_a_429() {
    let out = run("wrap_hyper_client", &[], Duration::from_secs(60)).await;
    for id in 1..=3 {
        assert!(out.contains(&format!("work {id}: status 200 OK")), "{out}");
    }
    assert!(
        out.contains("server saw 4 requests"),
        "one 429 then three answers:\n{out}"
    );
}

#[tokio::test]
async fn axum_gateway_answers_through_the_shared_stack() {
    let out = run("axum_gateway", &[], Duration::from_secs(60)).await;
    for id in ["W1", "W2", "W3"] {
        assert!(
            out.contains(&format!("gateway answered {id}: 200 OK")) && out.contains("A paper"),
            "{out}"
        );
    }
    assert!(out.contains("upstream saw 4 requests"), "{out}");
}

#[tokio::test]
async fn learning_demo_learns_the_hidden_rate_and_recovers() {
    let out = run("learning_demo", &["6"], Duration::from_secs(90)).await;
    let per_second = out
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|t| t.parse::<u64>().is_ok()))
        .count();
    assert_eq!(per_second, 6, "one line per second:\n{out}");
    assert!(out.contains("server loosens to 50/s"), "{out}");
    let lowest: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("learned: lowest rate "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no 'learned:' line:\n{out}"));
    assert!(
        lowest < 50.0,
        "the client (100/s) learned the hidden 20/s: lowest {lowest}\n{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("recovery: ")), "{out}");
}

/// The numeric cells of the table row whose first cell starts with `tool`.
fn table_row(out: &str, tool: &str) -> Option<Vec<f64>> {
    let line = out.lines().find(|l| l.starts_with(&format!("| {tool}")))?;
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    // tool, round, files, MB, wall s, files/s, ratio, ratio to curl + fsync, CPU user s,
    // CPU sys s, CPU ms/file, CPU ratio, peak RSS MiB
    assert_eq!(cells.len(), 13, "thirteen columns: {line}");
    Some(
        cells[1..6]
            .iter()
            .map(|c| {
                c.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{c:?} is not a number in {line}"))
            })
            .collect(),
    )
}

#[tokio::test]
async fn bulk_bench_lands_every_file_with_every_tool() {
    let out = run(
        "bulk_bench",
        &["--files", "50", "--size", "2048", "--concurrency", "4"],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        out.contains("| tool | round | files | MB | wall s | files/s | ratio to xargs curl | ratio to curl + fsync | CPU user s | CPU sys s | CPU ms/file | CPU ratio to xargs curl | peak RSS MiB |"),
        "{out}"
    );
    for tool in [
        "xargs curl",
        "curl + fsync",
        "curl --parallel",
        "runner batch",
        "runner file",
        "runner none",
    ] {
        let row = table_row(&out, tool).unwrap_or_else(|| panic!("no {tool} row:\n{out}"));
        assert_eq!(row[1], 50.0, "every file landed through {tool}:\n{out}");
        assert!((row[2] - 50.0 * 2048.0 / 1e6).abs() < 0.06, "{out}");
    }
}

#[tokio::test]
async fn frontier_bench_compares_the_fast_host_alone_and_behind_a_slow_one() {
    let out = run(
        "frontier_bench",
        &["--a-works", "3", "--b-works", "60", "--workers", "4"],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.contains("| B alone | 60 |"), "every B work once, alone:\n{out}");
    assert!(out.contains("| A then B | 60 |"), "every B work once, behind A:\n{out}");
    assert!(out.contains("B's speed with A / alone: "), "{out}");
    assert!(out.contains("  2 s: A   1"), "A at 1 req/s:\n{out}");
}

#[tokio::test]
async fn layer_cost_runs_every_row() {
    let out = run("layer_cost", &["all", "20"], Duration::from_secs(60)).await;
    for row in [
        "bare",
        "operation_telemetry",
        "attempt_telemetry",
        "idempotency",
        "retry",
        "retry_after",
        "learning",
        "rate_limit",
        "stack",
    ] {
        assert!(out.contains(&format!("{row}: 20 requests")), "{row}: {out}");
    }
}
