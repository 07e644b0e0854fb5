//! `--rate` keys and `--default-rate`, through the binary against simulators on 127.0.0.1.
#![cfg(feature = "simulator")]

use std::path::Path;

use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;

mod bin_support;
use bin_support::contentdownload;

/// `n` works, each with a PDF URL on one of `sims` in turn.
fn write_works(sims: &[&Simulator], path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let sim = sims[i % sims.len()];
            json!({
                "id": format!("https://openalex.org/W{}", 7000 + i),
                "doi": format!("https://doi.org/10.5555/r{i}"),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `run` over `input` into `out`, the openalex URLs only, plus `extra`.
fn run_args<'a>(input: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--input",
        input,
        "--out",
        out,
        "--quiet",
        "--mailto",
        "ci@example.org",
        "--fallback-tier",
        "direct=openalex",
    ];
    args.extend_from_slice(extra);
    args
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_applies_to_the_host_on_every_port() {
    let (a, b) = (Simulator::start().await.unwrap(), Simulator::start().await.unwrap());
    a.on("/pdf/*", [Reply::pdf(2000)]);
    b.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&[&a, &b], &input, 60);
    let out = dir.path().join("pdfs");
    let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
    let done = contentdownload(&run_args(input, out, &["--rate", "127.0.0.1=1000:100"]), &[]).await;
    let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
    assert!(done.status.success(), "{stderr}");
    assert!(stdout.contains("downloaded        60"), "{stdout}");
    // the summary says which rate each partition took: both ports, from the host key
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rate key    127.0.0.1 = 1000 req/s, burst 100 (--rate): "))
        .unwrap_or_else(|| panic!("no line for the key: {stdout}"));
    for sim in [&a, &b] {
        assert!(line.contains(&sim.addr().to_string()), "{line}");
    }
    // ... and not the default, which no partition took
    assert!(
        stdout
            .lines()
            .any(|l| l == "default rate 5 req/s, burst 5 (--default-rate)"),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
    assert_eq!(a.count("/pdf/*") + b.count("/pdf/*"), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_matched_no_request_is_a_warning_in_the_summary_and_the_log() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&[&sim], &input, 3);
    let out = dir.path().join("pdfs");
    let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
    let exact = format!("{}=1000:100", sim.addr());
    let args = run_args(input, out, &["--rate", &exact, "--rate", "127.0.0.l=1000:100"]);
    let done = contentdownload(&args, &[]).await;
    let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
    assert!(done.status.success(), "{stderr}");
    assert!(stdout.contains("downloaded         3"), "{stdout}");
    let warning = format!(
        "warning     --rate 127.0.0.l=1000:100: matched no request (known partitions: {})",
        sim.addr()
    );
    assert!(stdout.lines().any(|l| l == warning), "{stdout}");
    assert!(
        stderr.contains("--rate 127.0.0.l=1000:100: matched no request"),
        "logged too: {stderr}"
    );
    // the key that matched is listed, not warned about
    assert!(
        stdout.contains(&format!(
            "rate key    {} = 1000 req/s, burst 100 (--rate): {}",
            sim.addr(),
            sim.addr()
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("warning").count(), 1, "{stdout}");

    // a run that makes no request (every work is done) has nothing to warn about
    let again = contentdownload(&args, &[]).await;
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(stdout.contains("skipped            3"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rate_is_a_setting_in_help_the_summary_and_status() {
    let help = contentdownload(&["run", "--help"], &[]).await;
    let help = text(&help.stdout);
    assert!(help.contains("--default-rate <RATE[:BURST]>"), "{help}");
    assert!(
        help.contains("[default: 5:5]") && help.contains("DOCSTOKG_DEFAULT_RATE"),
        "{help}"
    );
    assert!(help.contains("127.0.0.1:8080") && help.contains("any port"), "{help}");

    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&[&sim], &input, 60);
    let out = dir.path().join("pdfs");
    let (input, out) = (input.to_str().unwrap(), out.to_str().unwrap());
    // the environment form; no --rate key names the server
    let done = contentdownload(&run_args(input, out, &[]), &[("DOCSTOKG_DEFAULT_RATE", "1000:100")]).await;
    let (stdout, stderr) = (text(&done.stdout), text(&done.stderr));
    assert!(done.status.success(), "{stderr}");
    assert!(stdout.contains("downloaded        60"), "{stdout}");
    let applied = format!("default rate 1000 req/s, burst 100 (--default-rate): {}", sim.addr());
    assert!(stdout.lines().any(|l| l == applied), "{stdout}");

    let status = contentdownload(&["status", "--out", out], &[]).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let shown = text(&status.stdout);
    assert!(shown.contains("default rate: 5 req/s, burst 5"), "{shown}");
    assert!(
        shown.contains("rate key: crossref = 10 req/s, burst 5 (built-in)"),
        "{shown}"
    );
    let status = contentdownload(
        &["status", "--out", out, "--json", "--rate", "127.0.0.1=9"],
        &[("DOCSTOKG_DEFAULT_RATE", "1000:100")],
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["rates"]["default"], json!({"rate": 1000.0, "burst": 100}));
    let keys = json["rates"]["keys"].as_array().unwrap();
    assert!(
        keys.contains(&json!({"key": "127.0.0.1", "rate": 9.0, "burst": 1, "source": "--rate"})),
        "{keys:?}"
    );
}
