//! `contentdownload report` end to end: a real run against the simulator (some PDFs
//! throttled, some missing), then the report of its folder, parsed.
#![cfg(feature = "simulator")]

use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;

mod bin_support;
use bin_support::contentdownload;

/// Every `<svg>…</svg>` of the page, parsed as XML: (polyline point counts, texts).
fn charts(html: &str) -> Vec<(Vec<usize>, Vec<String>)> {
    html.match_indices("<svg")
        .map(|(i, _)| {
            let end = html[i..].find("</svg>").expect("a closed svg") + i + "</svg>".len();
            let doc = roxmltree::Document::parse(&html[i..end]).expect("each chart is well-formed XML");
            let lines = doc
                .descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .map(|n| n.attribute("points").unwrap_or("").split_whitespace().count())
                .collect();
            let texts = doc
                .descendants()
                .filter(|n| n.has_tag_name("text"))
                .filter_map(|n| n.text())
                .map(|t| t.trim().to_string())
                .collect();
            (lines, texts)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_real_run_has_every_chart_with_its_data() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(3000)]);
    sim.on("/pdf/3.pdf", [Reply::status(429).retry_after_secs(1), Reply::pdf(3000)]);
    sim.on("/pdf/4.pdf", [Reply::status(404)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            json!({"id": format!("https://openalex.org/W{}", 900 + i),
                   "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}})
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("pdfs");
    let rate = format!("{}=1000:100", sim.addr());
    let run = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "direct=openalex",
            "--rate",
            &rate,
        ],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let done = contentdownload(&["report", "--out", out.to_str().unwrap()], &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("report.html (12 works"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));

    let charts = charts(&html);
    // an all-zero chart is "No data." with no svg: five charts means the 429 was counted
    // and the learned rate was written
    assert_eq!(charts.len(), 5, "learned rate, requests, 429s, downloads, reasons");
    for (i, (lines, _)) in charts[..4].iter().enumerate() {
        assert!(lines.iter().any(|n| *n >= 1), "chart {i} draws a series: {lines:?}");
    }
    let (_, rate_texts) = &charts[0];
    let host = sim.addr().to_string();
    assert!(rate_texts.contains(&host), "the host's learned rate: {rate_texts:?}");
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let rates: Vec<serde_json::Value> = manifest
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["record_type"] == "rate" && l["host"] == host.as_str())
        .collect();
    assert!(
        rates.iter().any(|r| r["rate"].as_f64().is_some_and(|v| v < 1000.0)),
        "the 429 lowered the rate the manifest shows: {rates:?}"
    );
    let (_, reasons) = &charts[4];
    for want in ["downloaded", "http_status", "11", "1"] {
        assert!(reasons.iter().any(|t| t == want), "{want} in {reasons:?}");
    }
    assert!(html.contains(&host), "the simulator's host:port is in the host tables");
}

#[tokio::test]
async fn a_folder_without_a_manifest_or_an_unknown_run_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let done = contentdownload(&["report", "--out", dir.path().to_str().unwrap()], &[]).await;
    assert_eq!(done.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&done.stderr).contains("no manifest at"));
    std::fs::write(dir.path().join("manifest.jsonl"), "").unwrap();
    let done = contentdownload(
        &["report", "--out", dir.path().to_str().unwrap(), "--run-id", "nope"],
        &[],
    )
    .await;
    assert_eq!(done.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&done.stderr).contains("no line of run"));
    assert!(!dir.path().join("report.html").exists());
}
