//! Validated streaming downloads against the simulator.
#![cfg(feature = "simulator")]

use std::path::Path;

use bytes::Bytes;
use contentdownload::download::{download_pdf, DownloadOptions, PARTIAL_DIR};
use contentdownload::reason::ReasonCode;
use contentdownload::service::{HttpClient, HttpConfig};
use contentdownload::simulator::{BodySpec, Reply, Simulator};
use http::Request;
use http_body_util::Full;
use sha2::{Digest, Sha256};

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

fn partial_files(out: &Path) -> usize {
    std::fs::read_dir(out.join(PARTIAL_DIR)).map_or(0, |d| d.count())
}

#[tokio::test]
async fn a_valid_pdf_lands_with_its_hash() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/paper.pdf", [Reply::pdf(300_000)]);
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let done = download_pdf(
        client,
        get(&sim.url("/paper.pdf")),
        out.path(),
        "W42",
        &DownloadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(done.path, out.path().join("W42.pdf"));
    assert_eq!(done.bytes, 300_000);
    let bytes = std::fs::read(&done.path).unwrap();
    assert_eq!(bytes.len(), 300_000);
    assert!(bytes.starts_with(b"%PDF-"));
    let expected: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done.sha256, expected);
    assert_eq!(partial_files(out.path()), 0, "the partial file was renamed");
}

/// Every durability writes the same bytes and hash, for a payload of one piece and for one
/// of several pieces (more than 1 MiB, written while the next piece is received), in frames
/// of odd sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_durability_lands_the_same_bytes_in_one_piece_or_many() {
    use contentdownload::download::Durability;

    let sim = Simulator::start().await.unwrap();
    sim.on("/small.pdf", [Reply::pdf(5_000)]);
    sim.on("/large.pdf", [Reply::pdf(3_500_017)]);
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    for durability in [Durability::File, Durability::Batch, Durability::None] {
        for (path, len) in [("/small.pdf", 5_000usize), ("/large.pdf", 3_500_017)] {
            let out = tempfile::tempdir().unwrap();
            let options = DownloadOptions {
                durability,
                ..DownloadOptions::default()
            };
            let done = download_pdf(client.clone(), get(&sim.url(path)), out.path(), "W9", &options)
                .await
                .unwrap();
            let bytes = std::fs::read(&done.path).unwrap();
            assert_eq!((bytes.len(), done.bytes), (len, len as u64), "{durability} {path}");
            assert!(
                bytes.starts_with(b"%PDF-") && bytes.ends_with(b"%%EOF\n"),
                "{durability} {path}"
            );
            let expected: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(done.sha256, expected, "{durability} {path}");
            assert_eq!(partial_files(out.path()), 0);
            if durability == Durability::Batch {
                contentdownload::download::sync_batch(std::slice::from_ref(&done.path)).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn rejected_payloads_leave_nothing_behind() {
    let sim = Simulator::start().await.unwrap();
    let landing = "<!DOCTYPE html><html><body>Please sign in to read this article.</body></html>".repeat(50);
    sim.on(
        "/html-as-pdf",
        [Reply::ok().header("content-type", "application/pdf").body(landing)],
    );
    sim.on("/tiny", [Reply::pdf(200)]);
    sim.on("/missing", [Reply::status(404)]);
    sim.on("/busy", [Reply::status(503)]);
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let cases = [
        ("/html-as-pdf", ReasonCode::HtmlLandingPage, false),
        ("/tiny", ReasonCode::TooSmall, false),
        ("/missing", ReasonCode::HttpStatus, false),
        ("/busy", ReasonCode::HttpStatus, true),
    ];
    for (path, reason, retryable) in cases {
        let failure = download_pdf(
            client.clone(),
            get(&sim.url(path)),
            out.path(),
            "W1",
            &DownloadOptions::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(failure.reason, reason, "{path}: {failure}");
        assert_eq!(failure.retryable, retryable, "{path}");
    }
    assert!(!out.path().join("W1.pdf").exists());
    assert_eq!(partial_files(out.path()), 0);
}

#[tokio::test]
async fn a_truncated_pdf_is_retryable_and_removed() {
    let sim = Simulator::start().await.unwrap();
    // a PDF whose connection drops before Content-Length is reached
    sim.on(
        "/cut2.pdf",
        [Reply::ok().body_spec(BodySpec::Truncated {
            declared: 900_000,
            sent: 300_000,
        })],
    );
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let failure = download_pdf(
        client,
        get(&sim.url("/cut2.pdf")),
        out.path(),
        "W2",
        &DownloadOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(failure.reason, ReasonCode::Truncated, "{failure}");
    assert!(failure.retryable);
    assert!(!out.path().join("W2.pdf").exists());
    assert_eq!(partial_files(out.path()), 0);
}

#[tokio::test]
async fn the_size_limit_is_enforced() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/big.pdf", [Reply::pdf(2_000_000)]);
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let failure = download_pdf(
        client,
        get(&sim.url("/big.pdf")),
        out.path(),
        "W3",
        &DownloadOptions {
            max_bytes: 1_000_000,
            ..DownloadOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(failure.reason, ReasonCode::TooLarge);
}

#[tokio::test]
async fn a_stem_that_could_escape_is_refused_before_any_request() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/p.pdf", [Reply::pdf(5000)]);
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    for stem in ["../escape", "a/b", ".hidden", ""] {
        let failure = download_pdf(
            client.clone(),
            get(&sim.url("/p.pdf")),
            out.path(),
            stem,
            &DownloadOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(failure.detail.contains("not a plain file name"), "{stem}: {failure}");
    }
    assert_eq!(sim.count("/p.pdf"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_download_leaves_no_partial_file() {
    let sim = Simulator::start().await.unwrap();
    // 3 MiB of a PDF (more than a piece, so the partial file is on disk), then the body stalls
    sim.on(
        "/slow.pdf",
        [Reply::ok().body_spec(BodySpec::StallAfter { sent: 3 << 20 })],
    );
    let out = tempfile::tempdir().unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let options = DownloadOptions::default();
    let staging =
        contentdownload::download::stage_pdf(client, get(&sim.url("/slow.pdf")), out.path(), "W5-0", &options);
    // the paused clock jumps to the deadline while the body stalls; the future is dropped
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), staging).await;
    assert!(
        result.is_err(),
        "the stalled download should still be running at the deadline"
    );
    assert!(
        out.path().join(PARTIAL_DIR).is_dir(),
        "the download had started writing"
    );
    assert_eq!(
        partial_files(out.path()),
        0,
        "the dropped download removed its partial file"
    );
}
