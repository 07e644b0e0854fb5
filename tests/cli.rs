//! The `contentdownload` binary end to end, against the simulator on 127.0.0.1.
#![cfg(feature = "simulator")]

use std::path::Path;
use std::time::Duration;

use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;

mod bin_support;
use bin_support::{contentdownload, BIN};

/// The works `bin_support::write_works` writes, with their PDFs at `/pdf/{i}.pdf` on `sim`.
fn write_works(sim: &Simulator, path: &Path, n: usize) {
    bin_support::write_works(path, n, |i| sim.url(&format!("/pdf/{i}.pdf")));
}

/// `base` is `unpaywall=<simulator URL>`, `rate` is `<simulator host:port>=1000:100`.
fn base_args<'a>(base: &'a str, rate: &'a str, input: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
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
        "--rate",
        rate,
        "--resolver-base",
        base,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_works_complete_with_files_and_manifest() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000)]);
    sim.on(
        "/pdf/7.pdf",
        [Reply::ok()
            .header("content-type", "application/pdf")
            .body("<html><body>login</body></html>".repeat(60))],
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, 300);
    let out = dir.path().join("pdfs");
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("downloaded       299"), "{stdout}");
    assert!(stdout.contains("html_landing_page"), "{stdout}");
    assert!(out.join("W5000.pdf").is_file() && out.join("W5299.pdf").is_file());
    assert!(!out.join("W5007.pdf").exists());
    assert!(out.join("ledger.sqlite").is_file());
    assert!(out.join("attempts.csv").is_file());
    let (lines, bad) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let works: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.record {
            ManifestRecord::Work(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(works.len(), 300);
    assert_eq!(
        works.iter().filter(|w| w.outcome == Some(Outcome::Downloaded)).count(),
        299
    );
    let attempts = lines
        .iter()
        .filter(|l| matches!(l.record, ManifestRecord::Attempt(_)))
        .count();
    assert!(attempts >= 300, "{attempts} attempt lines");
    assert_eq!(sim.count("/pdf/*"), 300);

    // a second run over the same folder fetches nothing
    let again = contentdownload(&args, &[]).await;
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("skipped          299"));
    // the rejected one failed for a reason that will not change (an HTML page): within
    // --resolver-cache-ttl it is recorded from the ledger, not fetched again
    assert!(String::from_utf8_lossy(&again.stdout).contains("html_landing_page"));
    assert_eq!(sim.count("/pdf/*"), 300, "nothing is fetched again");
    let mut uncached = args.clone();
    uncached.extend(["--resolver-cache-ttl", "0"]);
    assert!(contentdownload(&uncached, &[]).await.status.success());
    assert_eq!(
        sim.count("/pdf/*"),
        301,
        "without the cache only the rejected one is tried again"
    );

    // status --json parses and counts the ledger
    let status = contentdownload(&["status", "--out", out.to_str().unwrap(), "--json"], &[]).await;
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["ledger"]["finalized"], 299);
    assert!(json["providers"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_resumes_and_downloads_every_work_once() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000).delay(Duration::from_millis(50))]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, 150);
    let out = dir.path().join("pdfs");
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let mut args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--lease-ttl-secs", "1", "--workers", "4"]);

    let mut child = tokio::process::Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    // wait (bounded) until some works are in, then SIGKILL
    for _ in 0..600 {
        let n = std::fs::read_dir(&out).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pdf"))
                .count()
        });
        if n >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let before = sim.count("/pdf/*");
    assert!((30..150).contains(&before), "{before} requests before the kill");

    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    for i in 0..150 {
        assert!(
            out.join(format!("W{}.pdf", 5000 + i)).is_file(),
            "W{} missing",
            5000 + i
        );
    }
    let mut per_path = std::collections::HashMap::<String, usize>::new();
    for r in sim.requests_to("/pdf/*") {
        *per_path.entry(r.path().to_owned()).or_default() += 1;
    }
    // only the works in flight at the kill (4 workers) are fetched twice
    assert!(per_path.values().filter(|&&c| c > 1).count() <= 4, "{per_path:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_idempotency_disables_the_ledger_and_env_agrees_with_flags() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, 3);
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let by_flag = dir.path().join("flag");
    let mut args = base_args(&base, &rate, input.to_str().unwrap(), by_flag.to_str().unwrap());
    args.push("--disable-idempotency");
    assert!(contentdownload(&args, &[]).await.status.success());
    let by_env = dir.path().join("env");
    let args = base_args(&base, &rate, input.to_str().unwrap(), by_env.to_str().unwrap());
    assert!(contentdownload(&args, &[("DOCSTOKG_ENABLE_IDEMPOTENCY", "0")])
        .await
        .status
        .success());
    for out in [&by_flag, &by_env] {
        assert!(out.join("W5000.pdf").is_file());
        assert!(!out.join("ledger.sqlite").exists(), "{} has a ledger", out.display());
    }
    // and the default has one
    let default = dir.path().join("default");
    let args = base_args(&base, &rate, input.to_str().unwrap(), default.to_str().unwrap());
    assert!(contentdownload(&args, &[]).await.status.success());
    assert!(default.join("ledger.sqlite").is_file());
}

#[tokio::test]
async fn usage_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    for args in [
        vec![
            "run",
            "--input",
            "/definitely/not/here.jsonl",
            "--out",
            out.to_str().unwrap(),
        ],
        vec!["run", "--out", out.to_str().unwrap()],
        vec!["run", "--input", "x", "--rate", "crossref"],
        vec!["run", "--input", "x", "--no-such-flag"],
    ] {
        let done = contentdownload(&args, &[]).await;
        assert_eq!(done.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    assert!(!out.exists(), "nothing was created for a usage error");
}

#[tokio::test]
async fn fatal_errors_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    std::fs::write(&input, "").unwrap();
    // the output folder is a file
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            not_a_dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_eq!(done.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&done.stderr).contains("output folder"),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    // the ledger cannot be opened (its path is a folder)
    let out = dir.path().join("pdfs");
    let a_folder = dir.path().join("a-folder");
    std::fs::create_dir(&a_folder).unwrap();
    let ledger = format!("sqlite://{}", a_folder.display());
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--ledger",
            &ledger,
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: the ledger"), "{stderr}");
    // a ledger whose folder is a file is a usage error, found before anything is made
    let ledger = format!("sqlite://{}/ledger.sqlite", not_a_dir.display());
    let elsewhere = dir.path().join("elsewhere");
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            elsewhere.to_str().unwrap(),
            "--ledger",
            &ledger,
        ],
        &[],
    )
    .await;
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --ledger") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!elsewhere.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_search_pages_with_a_cursor() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000)]);
    let page = |ids: std::ops::Range<usize>, next: Option<&str>| {
        let results: Vec<_> = ids
            .map(|i| json!({"id": format!("https://openalex.org/W{}", 7000 + i), "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/t{i}.pdf"))}}))
            .collect();
        Reply::json(&json!({"meta": {"next_cursor": next}, "results": results}))
    };
    let (first, second, last) = (page(0..3, Some("c2")), page(3..6, Some("c3")), page(6..8, None));
    sim.on_fn("/openalex/works", move |req| {
        let q = req.uri.query().unwrap_or_default();
        if q.contains("cursor=c2") {
            second.clone()
        } else if q.contains("cursor=c3") {
            last.clone()
        } else {
            first.clone()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdfs");
    let base = format!("openalex={}", sim.url("/openalex"));
    let rate = format!("{}=1000:100", sim.addr());
    let args = [
        "run",
        "--topic",
        "graph neural networks",
        "--year-start",
        "2020",
        "--year-end",
        "2022",
        "--max",
        "7",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--fallback-tier",
        "direct=openalex",
        "--rate",
        &rate,
        "--resolver-base",
        &base,
    ];
    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("downloaded         7"));
    let pages = sim.requests_to("/openalex/works");
    assert_eq!(pages.len(), 3);
    let q = pages[0].uri.query().unwrap();
    assert!(
        q.contains("search=graph+neural+networks")
            && q.contains("filter=publication_year%3A2020-2022")
            && q.contains("cursor=*"),
        "{q}"
    );
    assert!(!out.join("W7007.pdf").exists(), "--max 7 stops at 7 works");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_the_run_can_resume() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000).delay(Duration::from_millis(100))]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, 40);
    let out = dir.path().join("pdfs");
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let mut args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--workers", "2"]);
    let child = tokio::process::Command::new(BIN)
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    for _ in 0..600 {
        if sim.count("/pdf/*") >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGINT, as Ctrl-C sends
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let done = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stderr).contains("can be resumed"));
    let (lines, _) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert!(
        matches!(&lines.last().unwrap().record, ManifestRecord::Summary(s) if s.interrupted),
        "the manifest was flushed"
    );
    assert!(std::fs::read_dir(out.join(".partial")).map_or(0, |d| d.count()) == 0);
    assert!(
        out.join("provider_learning.json").is_file(),
        "the learned state was saved"
    );

    // the next run finishes the job at once (leases were released, not left to expire)
    let again = contentdownload(&args, &[]).await;
    assert!(again.status.success());
    for i in 0..40 {
        assert!(out.join(format!("W{}.pdf", 5000 + i)).is_file());
    }
}

/// An unreachable PostgreSQL ledger fails within `--ledger-connect-timeout` with an error
/// that names it (password redacted) and says what to check: a port that refuses, and one
/// that never answers.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn an_unreachable_postgres_ledger_is_named_in_a_clear_error() {
    use contentdownload::simulator::UnresponsiveListener;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = dir.path().join("pdfs");
    // bound but not listening: connects are refused, and no other test can take the port
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let silent = UnresponsiveListener::bind().unwrap();
    for (addr, timeout) in [
        (refusing.local_addr().unwrap(), "1500ms"),
        (silent.addr().unwrap(), "300ms"),
    ] {
        let url = format!("postgres://harvester:s3cret@{addr}/ledger");
        let done = contentdownload(
            &[
                "run",
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--ledger",
                &url,
            ],
            &[("DOCSTOKG_LEDGER_CONNECT_TIMEOUT", timeout)],
        )
        .await;
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(1), "{stderr}");
        let named = format!("cannot reach the PostgreSQL ledger at postgres://harvester:REDACTED@{addr}/ledger within");
        assert!(stderr.contains(&named), "{stderr}");
        let ms = contentdownload::runner::args::parse_duration(timeout)
            .unwrap()
            .as_millis();
        assert!(stderr.contains(&format!("within {ms} ms")), "{stderr}");
        assert!(stderr.contains("--ledger-connect-timeout"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_csv_keeps_every_run_under_one_header() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000)]);
    let dir = tempfile::tempdir().unwrap();
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let out = dir.path().join("pdfs");
    // run-a fetches works 0-2; run-b skips them and fetches 3-5
    for (run_id, n) in [("run-a", 3), ("run-b", 6)] {
        let input = dir.path().join(format!("{run_id}.jsonl"));
        write_works(&sim, &input, n);
        let mut args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
        args.extend(["--run-id", run_id]);
        let done = contentdownload(&args, &[]).await;
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    let csv = out.join("attempts.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.matches("schema_version").count(), 1, "one header:\n{text}");
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let run_col = reader.headers().unwrap().iter().position(|h| h == "run_id").unwrap();
    let mut per_run = std::collections::BTreeMap::<String, usize>::new();
    for row in reader.records() {
        *per_run.entry(row.unwrap()[run_col].to_owned()).or_default() += 1;
    }
    assert_eq!(
        per_run.into_iter().collect::<Vec<_>>(),
        [("run-a".to_owned(), 3), ("run-b".to_owned(), 3)],
        "one attempt per downloaded PDF, each under its run"
    );

    // an attempts.csv of an older layout is set aside, not mixed with the new rows
    let old = "timestamp_ms,url,status\n1,http://x/,200\n";
    std::fs::write(&csv, old).unwrap();
    let input = dir.path().join("run-c.jsonl");
    write_works(&sim, &input, 7);
    let mut args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--run-id", "run-c"]);
    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("schema_version,") && text.contains("run-c"), "{text}");
    let aside: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("attempts.") && n != "attempts.csv")
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(out.join(&aside[0])).unwrap(), old);
}

#[tokio::test]
async fn ledger_urls_are_checked_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = dir.path().join("pdfs");
    let missing = dir.path().join("missing/dir");
    let in_missing = format!("sqlite://{}/x.sqlite", missing.display());
    let mut cases = vec![
        ("mysql://x".to_owned(), "unknown ledger scheme `mysql:`"),
        ("ftp:ledger.sqlite".to_owned(), "unknown ledger scheme `ftp:`"),
        (in_missing, "does not exist"),
    ];
    if !cfg!(feature = "postgres") {
        cases.push(("postgres://u@127.0.0.1:1/db".to_owned(), "`postgres` feature"));
    }
    for (ledger, says) in &cases {
        let done = contentdownload(
            &[
                "run",
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--ledger",
                ledger,
            ],
            &[],
        )
        .await;
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(2), "{ledger}: {stderr}");
        assert!(
            stderr.starts_with("error: --ledger") && stderr.contains(says),
            "{ledger}: {stderr}"
        );
        assert!(!out.exists(), "{ledger}: the output folder was not made");
    }
    assert!(!dir.path().join("missing").exists(), "the ledger's folder was not made");
    // no SQLite file named after the URL, where the binary ran (the package root)
    assert!(!Path::new("mysql:").exists() && !Path::new("ftp:ledger.sqlite").exists());
    // the env variable and the status command check the same way
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[("DOCSTOKG_LEDGER", "mysql://x")],
    )
    .await;
    assert_eq!(done.status.code(), Some(2));
    std::fs::create_dir(&out).unwrap();
    let done = contentdownload(
        &["status", "--out", out.to_str().unwrap(), "--ledger", "mysql://x"],
        &[],
    )
    .await;
    assert_eq!(done.status.code(), Some(2), "{}", String::from_utf8_lossy(&done.stderr));
    // a ledger beside the output folder, in a folder that exists, is fine
    let beside = format!("sqlite://{}/beside.sqlite", dir.path().display());
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--ledger",
            &beside,
            "--quiet",
        ],
        &[],
    )
    .await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(dir.path().join("beside.sqlite").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_and_the_minimum_size_are_named_in_the_detail() {
    use contentdownload::reason::ReasonCode;
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/0.pdf", [Reply::pdf(20_000)]);
    sim.on("/pdf/1.pdf", [Reply::pdf(500)]);
    sim.on("/pdf/2.pdf", [Reply::pdf(5_000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, 3);
    let out = dir.path().join("pdfs");
    let base = format!("unpaywall={}", sim.url("/unpaywall"));
    let rate = format!("{}=1000:100", sim.addr());
    let mut args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--max-bytes", "10K"]);
    let done = contentdownload(&args, &[]).await;
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(matches!(done.status.code(), Some(0 | 3)), "{stderr}");
    let (lines, _) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    let work = |id: &str| {
        lines
            .iter()
            .find_map(|l| match &l.record {
                ManifestRecord::Work(w) if w.work_id == id => Some(w.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no line for {id}"))
    };
    let large = work("W5000");
    assert_eq!(large.reason, Some(ReasonCode::TooLarge), "{large:?}");
    assert!(
        large.detail.as_deref().unwrap_or_default().contains("10240"),
        "{large:?}"
    );
    let small = work("W5001");
    assert_eq!(small.reason, Some(ReasonCode::TooSmall), "{small:?}");
    let detail = small.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("500 bytes") && detail.contains("1024"), "{small:?}");
    assert_eq!(work("W5002").outcome, Some(Outcome::Downloaded));

    // the environment variable; a value under the minimum PDF size is a usage error
    let args = base_args(&base, &rate, input.to_str().unwrap(), out.to_str().unwrap());
    let done = contentdownload(&args, &[("DOCSTOKG_MAX_BYTES", "100")]).await;
    assert_eq!(done.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&done.stderr).contains("--max-bytes"));
    let done = contentdownload(&args, &[("DOCSTOKG_MAX_BYTES", "lots")]).await;
    assert_eq!(done.status.code(), Some(2));
    // --help documents both limits
    let help = contentdownload(&["run", "--help"], &[]).await;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--max-bytes") && help.contains("1 KiB"), "{help}");
}

#[tokio::test]
async fn status_reports_a_corrupt_learning_file_and_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdfs");
    std::fs::create_dir(&out).unwrap();
    let learning = out.join("provider_learning.json");
    std::fs::write(&learning, b"{not json").unwrap();
    let before: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for json in [false, true] {
        let mut args = vec!["status", "--out", out.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let done = contentdownload(&args, &[]).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr),
        );
        assert_eq!(done.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("provider_learning.json") && stderr.contains("left in place"),
            "{stderr}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert!(v["providers_error"].as_str().unwrap().contains("not valid JSON"), "{v}");
        } else {
            assert!(
                stdout.contains("cannot be used") && stdout.contains("ledger: none"),
                "{stdout}"
            );
        }
    }
    let after: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "status changed nothing in the folder");
    assert_eq!(std::fs::read(&learning).unwrap(), b"{not json");
}

/// `status` reads a ledger as it is: one from before the resolver answers (schema 1) is
/// reported, not migrated, so an older runner can still use it.
#[tokio::test]
async fn status_leaves_an_older_ledger_schema_alone() {
    use contentdownload::ledger::{Ledger, LedgerConfig};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdfs");
    std::fs::create_dir(&out).unwrap();
    // a ledger made by this version, then taken back to schema 1
    let ledger = Ledger::connect(LedgerConfig::in_dir(&out)).await.unwrap();
    assert_eq!(ledger.schema_version().await.unwrap(), 3);
    ledger.close().await;
    let url = format!("sqlite://{}", out.join("ledger.sqlite").display());
    let schema = |sql: &'static str| {
        let url = url.clone();
        async move {
            use sqlx::{Connection, Row};
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut db).await.unwrap();
            db.close().await.unwrap();
            rows.iter().map(|r| r.get::<i64, _>(0)).collect::<Vec<i64>>()
        }
    };
    schema("DROP TABLE resolver_answers").await;
    schema("DELETE FROM _sqlx_migrations WHERE version >= 2").await;
    let tables = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'resolver_answers'";
    for json in [false, true] {
        let mut args = vec!["status", "--out", out.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let done = contentdownload(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(0), "{stderr}");
        assert!(String::from_utf8_lossy(&done.stdout).contains('0'), "{stderr}");
    }
    assert_eq!(
        schema(tables).await,
        vec![0],
        "status created the resolver answers table"
    );
    assert_eq!(
        schema("SELECT MAX(version) FROM _sqlx_migrations").await,
        vec![1],
        "status migrated the ledger"
    );
}
