//! `--input` at snapshot scale, end to end with the binary: a folder of gzipped JSON Lines
//! parts laid out like the OpenAlex snapshot, and gzipped standard input.
#![cfg(feature = "simulator")]

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;
use tokio::io::AsyncWriteExt;

mod bin_support;
use bin_support::{command, contentdownload};

fn record(sim: &Simulator, n: usize) -> String {
    json!({
        "id": format!("https://openalex.org/W{}", 7000 + n),
        "doi": format!("https://doi.org/10.5555/s{n}"),
        "publication_year": 2020 + (n % 4) as i32,
        "type": if n.is_multiple_of(5) { "book-chapter" } else { "article" },
        "open_access": {"is_oa": n % 7 != 3},
        "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{n}.pdf"))}
    })
    .to_string()
        + "\n"
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

/// `works/updated_date=…/part_NNN.gz` with `per_part` records each, a `manifest`, and
/// `n` records in all.
fn snapshot(sim: &Simulator, root: &Path, dates: &[&str], parts: usize, per_part: usize) -> usize {
    let works = root.join("works");
    let mut n = 0;
    for date in dates {
        let dir = works.join(format!("updated_date={date}"));
        std::fs::create_dir_all(&dir).unwrap();
        for p in 0..parts {
            let text: String = (0..per_part).map(|i| record(sim, n + i)).collect();
            n += per_part;
            std::fs::write(dir.join(format!("part_{p:03}.gz")), gzip(&text)).unwrap();
        }
    }
    std::fs::write(works.join("manifest"), r#"{"entries": []}"#).unwrap();
    n
}

/// The number on the summary line that starts with `label`.
fn summary(stdout: &[u8], label: &str) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} in {text}"));
    let number = line[label.len()..].split_whitespace().next().unwrap_or("");
    number.parse().unwrap_or_else(|_| panic!("{line}"))
}

fn args<'a>(input: &'a str, out: &'a str, rate: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--input",
        input,
        "--out",
        out,
        "--quiet",
        "--fallback-tier",
        "direct=openalex",
        "--rate",
        rate,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_folder_of_gzipped_parts_is_read_whole_and_a_rerun_fetches_nothing() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let n = snapshot(&sim, dir.path(), &["2024-01-02", "2024-01-01"], 3, 10);
    let works = dir.path().join("works");
    let out = dir.path().join("pdfs");
    let rate = format!("{}=1000:100", sim.addr());
    let args = args(works.to_str().unwrap(), out.to_str().unwrap(), &rate);

    let done = contentdownload(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(summary(&done.stdout, "downloaded"), n as u64, "{stdout}");
    for i in 0..n {
        assert!(out.join(format!("W{}.pdf", 7000 + i)).is_file(), "W{}", 7000 + i);
    }
    assert_eq!(sim.count("/pdf/*"), n);

    let again = contentdownload(&args, &[]).await;
    assert!(again.status.success());
    assert_eq!(summary(&again.stdout, "skipped"), n as u64);
    assert_eq!(sim.count("/pdf/*"), n, "the rerun fetched nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_standard_input_reads_like_a_file() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdfs");
    let rate = format!("{}=1000:100", sim.addr());
    let text: String = (0..5).map(|i| record(&sim, i)).collect();
    let mut child = command(&args("-", out.to_str().unwrap(), &rate), &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&gzip(&text)).await.unwrap();
    drop(stdin);
    let done = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(summary(&done.stdout, "downloaded"), 5, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_leave_works_out_before_any_request_and_the_summary_says_why() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(2000)]);
    let dir = tempfile::tempdir().unwrap();
    let n = snapshot(&sim, dir.path(), &["2024-01-01"], 2, 20);
    let works = dir.path().join("works");
    let out = dir.path().join("pdfs");
    let rate = format!("{}=1000:100", sim.addr());
    let mut args = args(works.to_str().unwrap(), out.to_str().unwrap(), &rate);
    args.extend(["--only-oa", "--year-start", "2021", "--type", "Article,preprint"]);
    let done = contentdownload(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    // the same rules as record(): closed when n % 7 == 3, year 2020 + n % 4, a book chapter when n % 5 == 0
    let (mut closed, mut early, mut chapters) = (0, 0, 0);
    let mut kept = 0;
    for i in 0..n {
        if i % 7 == 3 {
            closed += 1;
        } else if i % 4 == 0 {
            early += 1;
        } else if i.is_multiple_of(5) {
            chapters += 1;
        } else {
            kept += 1;
        }
    }
    assert_eq!(summary(&done.stdout, "downloaded"), kept, "{stdout}");
    assert_eq!(sim.count("/pdf/*"), kept as usize, "no request for a filtered work");
    assert_eq!(summary(&done.stdout, "filtered"), closed + early + chapters, "{stdout}");
    for (why, count) in [("not_open_access", closed), ("year", early), ("type", chapters)] {
        assert_eq!(summary(&done.stdout, &format!("  {why}")), count, "{stdout}");
    }
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(manifest.lines().last().unwrap()).unwrap();
    assert_eq!(last["filtered"]["not_open_access"], closed, "{last}");
    assert_eq!(last["works"], kept, "filtered works are not counted as works");
}

#[tokio::test]
async fn a_folder_without_parts_and_a_missing_input_are_usage_errors_that_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest"), "").unwrap();
    let out = dir.path().join("pdfs");
    let missing = dir.path().join("nope.jsonl.gz");
    for (input, says) in [
        (dir.path(), "holds no *.jsonl, *.jsonl.gz or *.gz files"),
        (missing.as_path(), "cannot read the input"),
    ] {
        let done = contentdownload(&args(input.to_str().unwrap(), out.to_str().unwrap(), "x=1"), &[]).await;
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!out.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_skips_definite_failures_within_the_cache_age_without_claiming_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("closed.jsonl");
    let closed: String = (0..30)
        .map(|i| format!("{{\"id\": \"W{}\", \"open_access\": {{\"is_oa\": false}}}}\n", 8000 + i))
        .collect();
    std::fs::write(&input, closed).unwrap();
    let out = dir.path().join("pdfs");
    let base = args(input.to_str().unwrap(), out.to_str().unwrap(), "x=1");
    let details = |out: &Path| -> Vec<String> {
        let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
        manifest
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["record_type"] == "work")
            .map(|v| v["detail"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for round in 0..2 {
        let done = contentdownload(&base, &[]).await;
        assert_eq!(done.status.code(), Some(0), "{}", String::from_utf8_lossy(&done.stderr));
        assert_eq!(summary(&done.stdout, "failed"), 30, "round {round}");
    }
    let lines = details(&out);
    assert_eq!(lines.len(), 60);
    assert!(lines[..30].iter().all(|d| d.contains("no resolver found")), "{lines:?}");
    assert!(
        lines[30..]
            .iter()
            .all(|d| d.contains("in an earlier run, within --resolver-cache-ttl")),
        "the rerun read them from the ledger: {lines:?}"
    );
    // without the cache they are tried again
    let mut again = base.clone();
    again.extend(["--resolver-cache-ttl", "0"]);
    let done = contentdownload(&again, &[]).await;
    assert_eq!(summary(&done.stdout, "failed"), 30);
    assert!(details(&out)[60..].iter().all(|d| d.contains("no resolver found")));
}
