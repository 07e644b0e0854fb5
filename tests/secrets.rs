//! Secrets in a URL never leave the process in text, and never reach a third party: a PDF
//! URL with userinfo and secret query parameters goes through the whole runner (manifest,
//! attempts.csv, the ledger, logs at trace level, the Wayback lookup), and userinfo is sent
//! to the origin as `Authorization: Basic`, which a cross-origin redirect does not carry.
#![cfg(feature = "simulator")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::service::{HttpClient, HttpConfig};
use contentdownload::simulator::{Reply, Simulator};
use http_body_util::Full;
use serde_json::json;
use tower::ServiceExt;

mod bin_support;
use bin_support::{assert_absent, files_under};

const BIN: &str = env!("CARGO_BIN_EXE_contentdownload");

// Long, unique values: any of them found in a sink is a leak, not a coincidence.
const USER: &str = "userNAMEq7Zr";
const PASSWORD: &str = "PASSWORDk3Vx9Tq2";
const API_KEY: &str = "APIKEYm4Wd8Lp1";
const TOKEN: &str = "TOKENn6Ys2Hc5";
const ACCESS_TOKEN: &str = "ACCESSb7Gf3Rj9";
const SIGNATURE: &str = "SIGNATUREz8Qe4Ku6";
const SECRETS: [&str; 6] = [USER, PASSWORD, API_KEY, TOKEN, ACCESS_TOKEN, SIGNATURE];
/// base64("userNAMEq7Zr:PASSWORDk3Vx9Tq2")
const BASIC: &str = "Basic dXNlck5BTUVxN1pyOlBBU1NXT1JEazNWeDlUcTI=";

fn assert_no_secret(what: &str, text: &str) {
    let mut secrets = SECRETS.to_vec();
    secrets.push("user:");
    assert_absent(&secrets, what, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_bearing_url_leaks_into_no_sink() {
    let origin = Simulator::start().await.unwrap();
    origin.on("/b.pdf", [Reply::status(404)]);
    origin.on("/c.pdf", [Reply::status(404)]);
    origin.on("/ok.pdf", [Reply::pdf(3000)]);
    let archive = Simulator::start().await.unwrap();
    archive.on("/wayback/available", [Reply::json(&json!({"archived_snapshots": {}}))]);

    let host = origin.addr();
    let secret_query = format!("api_key={API_KEY}&token={TOKEN}&access_token={ACCESS_TOKEN}");
    let failing = format!("http://{USER}:{PASSWORD}@{host}/b.pdf?{secret_query}");
    let working = format!("http://{USER}:{PASSWORD}@{host}/ok.pdf?{secret_query}");
    // secrets inside nested URLs: percent-encoded, and plain as the last value
    let nested = format!(
        "http://{host}/c.pdf?url=http%3A%2F%2F{USER}%3A{PASSWORD}%40h.example%2Fx%3FX-Amz-Signature%3D{SIGNATURE}\
         &next=http://{USER}:{PASSWORD}@h.example/y?token={TOKEN}"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    let works: Vec<String> = [("W1", &failing), ("W2", &working), ("W3", &nested)]
        .iter()
        .map(|(id, url)| {
            json!({"id": format!("https://openalex.org/{id}"), "best_oa_location": {"pdf_url": url}}).to_string()
        })
        .collect();
    std::fs::write(&input, works.join("\n") + "\n").unwrap();
    let out = dir.path().join("pdfs");

    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCSTOKG_")) {
        cmd.env_remove(k);
    }
    cmd.args([
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
        "--fallback-tier",
        "archive=wayback",
        "--rate",
        &format!("{host}=1000:100"),
        "--rate",
        &format!("{}=1000:100", archive.addr()),
        "--resolver-base",
        &format!("wayback={}", archive.url("")),
    ])
    .env("RUST_LOG", "trace");
    let done = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the run finished within 2 minutes")
        .expect("the binary ran");
    let stdout = String::from_utf8_lossy(&done.stdout);
    let logs = String::from_utf8_lossy(&done.stderr);

    // the run did what it should, so the sinks below hold something to check
    let (lines, bad) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let outcome = |id: &str| {
        lines.iter().find_map(|l| match &l.record {
            ManifestRecord::Work(w) if w.work_id.ends_with(id) => w.outcome,
            _ => None,
        })
    };
    assert_eq!(outcome("W2"), Some(Outcome::Downloaded), "{logs}");
    assert_eq!(outcome("W1"), Some(Outcome::Failed));
    assert_eq!(outcome("W3"), Some(Outcome::Failed));
    let manifest = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
    let redacted_url = format!("http://{host}/b.pdf?api_key=REDACTED&token=REDACTED&access_token=REDACTED");
    assert!(manifest.contains(&redacted_url), "{manifest}");
    assert!(manifest.contains("X-Amz-Signature%3DREDACTED"), "{manifest}");
    let csv = std::fs::read_to_string(out.join("attempts.csv")).unwrap();
    assert!(csv.contains(&redacted_url), "{csv}");
    // the logs are at trace level: the spans' url.full and hyper-util's pool are in them
    assert!(logs.contains(&format!("url.full={redacted_url}")), "{logs}");
    assert!(logs.contains(&format!("connection for (\"http\", {host})")), "{logs}");

    // the origin got the credentials, as a header, and the query it was given
    let b = origin.requests_to("/b.pdf");
    assert!(!b.is_empty());
    assert!(b.iter().all(|r| r.header("authorization") == Some(BASIC)));
    assert_eq!(b[0].uri.query(), Some(secret_query.as_str()));
    assert!(origin
        .requests_to("/ok.pdf")
        .iter()
        .all(|r| r.header("authorization") == Some(BASIC)));
    assert!(origin
        .requests_to("/c.pdf")
        .iter()
        .all(|r| r.header("authorization").is_none()));

    // the archive, a third party, was asked about both failures, with no secret
    let asked = archive.requests_to("/wayback/available");
    assert_eq!(asked.len(), 2, "{asked:?}");
    let mut seen_by_archive = String::new();
    for r in &asked {
        seen_by_archive.push_str(&format!("{} {:?}\n", r.uri, r.headers));
    }
    assert_no_secret("what the archive received", &seen_by_archive);
    let asked_about: Vec<String> = asked
        .iter()
        .filter_map(|r| url::Url::parse(&format!("http://x{}", r.uri)).ok())
        .filter_map(|u| u.query_pairs().find(|(k, _)| k == "url").map(|(_, v)| v.into_owned()))
        .collect();
    assert!(asked_about.contains(&format!("http://{host}/b.pdf")), "{asked_about:?}");

    assert_no_secret("the logs", &logs);
    assert_no_secret("stdout", &stdout);
    for (name, text) in files_under(&out) {
        assert_no_secret(&name, &text);
    }
}

async fn get(client: &HttpClient, url: &str) -> http::StatusCode {
    let req = http::Request::get(url).body(Full::<Bytes>::default()).unwrap();
    client.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn userinfo_goes_to_its_origin_only() {
    let a = Simulator::start().await.unwrap();
    let b = Simulator::start().await.unwrap();
    a.on("/away", [Reply::redirect(302, &b.url("/landed"))]);
    a.on("/here", [Reply::redirect(302, "/landed")]);
    a.on("/landed", [Reply::ok()]);
    b.on("/landed", [Reply::ok()]);
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let with_userinfo = |path: &str| format!("http://{USER}:{PASSWORD}@{}{path}", a.addr());

    assert_eq!(get(&client, &with_userinfo("/away")).await, 200);
    assert_eq!(a.requests_to("/away")[0].header("authorization"), Some(BASIC));
    let landed = b.requests_to("/landed");
    assert_eq!(landed.len(), 1);
    assert_eq!(landed[0].header("authorization"), None, "carried to another origin");

    // a Location with userinfo of its own: sent as a header there too, never in the URI
    let c = format!("http://other:{PASSWORD}@{}/landed", b.addr());
    a.on("/carrying", [Reply::redirect(302, &c)]);
    let req = http::Request::get(format!("http://{}/carrying", a.addr()))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // tower-http's RequestUri (the last hop) holds that Location as written; not here
    let last = res
        .extensions()
        .get::<tower_http::follow_redirect::RequestUri>()
        .map(|u| u.0.to_string());
    assert_eq!(last, Some(format!("http://{}/landed", b.addr())), "no userinfo left");
    let landed = b.requests_to("/landed");
    assert_eq!(landed.len(), 2);
    assert!(landed[1]
        .header("authorization")
        .is_some_and(|v| v.starts_with("Basic ")));

    // a hop within the origin keeps it (tower-http's credential filter, as curl's
    // --location-trusted would not be needed for the same host)
    assert_eq!(get(&client, &with_userinfo("/here")).await, 200);
    assert_eq!(a.requests_to("/landed")[0].header("authorization"), Some(BASIC));
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_connection_pool_never_sees_userinfo() {
    let a = Simulator::start().await.unwrap();
    a.on("/x", [Reply::ok()]);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    // twice: the second request reuses the pooled connection, which hyper-util logs
    for _ in 0..2 {
        assert_eq!(
            get(&client, &format!("http://{USER}:{PASSWORD}@{}/x", a.addr())).await,
            200
        );
    }
    // and a redirect whose Location carries userinfo
    a.on(
        "/hop",
        [Reply::redirect(
            302,
            &format!("http://{USER}:{PASSWORD}@{}/x", a.addr()),
        )],
    );
    assert_eq!(get(&client, &a.url("/hop")).await, 200);
    drop(_guard);
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("reuse idle connection for"), "{logs}");
    assert!(!logs.contains(PASSWORD) && !logs.contains(USER), "{logs}");
}

#[tokio::test]
async fn the_idempotency_ledger_keeps_no_secret() {
    use contentdownload::layers::idempotency::IdempotencyLayer;
    use contentdownload::ledger::{Ledger, LedgerConfig};

    let sim = Simulator::start().await.unwrap();
    sim.on("/a.pdf", [Reply::ok()]);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await.unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(IdempotencyLayer::with_ledger(ledger.clone(), "run", "me"))
        .service(HttpClient::new(&HttpConfig::default()).unwrap());
    // no work id: the ledger's job is named after the URL
    let url = format!(
        "http://{USER}:{PASSWORD}@{}/a.pdf?access_token={ACCESS_TOKEN}&v=1",
        sim.addr()
    );
    let req = http::Request::get(url).body(Full::<Bytes>::default()).unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
    assert_eq!(ledger.counts(None).await.unwrap().total(), 1);
    ledger.close().await;
    let files = files_under(dir.path());
    assert!(!files.is_empty());
    for (name, text) in files {
        assert_no_secret(&name, &text);
    }
}
