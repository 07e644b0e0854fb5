//! `--out s3://bucket/prefix` against a real S3-compatible server on 127.0.0.1: `moto` in
//! server mode (PyPI `moto[server]`), started by each test. The runner is the real binary,
//! the PDFs come from the simulator.
//!
//! The server is `$CONTENTDOWNLOAD_MOTO_SERVER`, else `/tmp/moto-venv/bin/moto_server`, else
//! `moto_server` on the PATH. Without one a test prints a `SKIPPED-S3` line and passes,
//! unless `CONTENTDOWNLOAD_REQUIRE_S3` is set (CI sets it, and fails on the line too).
#![cfg(all(feature = "simulator", feature = "s3"))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contentdownload::manifest::{ManifestLine, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::reason::ReasonCode;
use contentdownload::simulator::{Reply, Simulator};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_contentdownload");
const BUCKET: &str = "corpus";
const PREFIX: &str = "pdfs";
/// The bound on every run and wait here; not a measure of speed.
const BOUND: Duration = Duration::from_secs(90);
/// Above the store's multipart threshold (8 MiB): put in three parts.
const LARGE: u64 = 20 << 20;

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONTENTDOWNLOAD_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from("/tmp/moto-venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

/// A moto server on a free loopback port, with the test bucket; killed when dropped.
struct Moto {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl Moto {
    async fn start(test: &str) -> Option<Moto> {
        let Some(bin) = moto_binary() else {
            assert!(
                std::env::var_os("CONTENTDOWNLOAD_REQUIRE_S3").is_none(),
                "CONTENTDOWNLOAD_REQUIRE_S3 is set but no moto_server was found"
            );
            // to stderr itself, not through the test harness's capture: CI greps for it
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED-S3 {test}: no moto_server (set CONTENTDOWNLOAD_MOTO_SERVER)"
            );
            return None;
        };
        let port = free_port();
        let child = tokio::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start: {e}", bin.display()));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // bounded: until the server answers (its start is a Python import)
        let mut up = false;
        for _ in 0..400 {
            if TcpStream::connect(addr).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "moto_server did not listen on {addr} within 20 s");
        // CreateBucket, unsigned (moto's server mode does not check signatures)
        let reply = http_request(
            addr,
            &format!("PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "CreateBucket: {reply}");
        Some(Moto { _child: child, addr })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the bucket, as the test sees it (not through the runner).
    fn client(&self) -> impl ObjectStore {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_request(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(BOUND, s.read_to_string(&mut reply))
        .await
        .expect("moto answers")
        .unwrap();
    reply
}

fn write_works(sim: &Simulator, path: &Path, paths: &[&str]) {
    let lines: Vec<String> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "id": format!("https://openalex.org/W{}", 7000 + i),
                "doi": format!("https://doi.org/10.5555/s3-{i}"),
                "best_oa_location": {"pdf_url": sim.url(p)}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `run --out s3://corpus/pdfs --state <state>` with the store at `endpoint`.
fn runner(sim: &Simulator, input: &Path, state: &Path, endpoint: &str) -> tokio::process::Command {
    runner_with(sim, input, state, endpoint, &["--lease-ttl-secs", "120"])
}

/// [`runner`] with more flags.
fn runner_with(sim: &Simulator, input: &Path, state: &Path, endpoint: &str, more: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCSTOKG_") || k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    cmd.args([
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        &format!("s3://{BUCKET}/{PREFIX}"),
        "--state",
        state.to_str().unwrap(),
        "--quiet",
        "--mailto",
        "ci@example.org",
        "--fallback-tier",
        "direct=openalex",
        "--rate",
        &format!("{}=1000:100", sim.addr()),
        "--workers",
        "4",
    ])
    .args(more)
    .env("AWS_ACCESS_KEY_ID", "testing")
    .env("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-logged")
    .env("AWS_REGION", "us-east-1")
    .env("AWS_ENDPOINT_URL", endpoint)
    .env("AWS_ALLOW_HTTP", "true")
    .env("RUST_LOG", "contentdownload=debug")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    cmd
}

async fn bounded(what: &str, cmd: &mut tokio::process::Command) -> Output {
    let out = tokio::time::timeout(BOUND, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {BOUND:?}"))
        .unwrap_or_else(|e| panic!("{what} did not run: {e}"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("s3cr3t-never-logged"),
        "{what} logged the secret key: {log}"
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes the simulator serves at `path`, fetched directly.
async fn served(sim: &Simulator, path: &str) -> Vec<u8> {
    let (addr, path) = (sim.addr(), path.to_owned());
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(head.contains("content-length"), "a sized body: {head}");
    raw.split_off(head_end)
}

/// The object `<prefix>/<name>`: its bytes and its `sha256` metadata; `None` when absent.
async fn object(store: &impl ObjectStore, name: &str) -> Option<(Vec<u8>, Option<String>)> {
    let path = ObjectPath::from(format!("{PREFIX}/{name}"));
    match store.get(&path).await {
        Ok(got) => {
            let sha = got
                .attributes
                .get(&Attribute::Metadata("sha256".into()))
                .map(|v| v.to_string());
            Some((got.bytes().await.unwrap().to_vec(), sha))
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// The manifest's work lines of the state folder: (work id, outcome, reason, sha256).
fn manifest(state: &Path) -> Vec<(String, Outcome, Option<ReasonCode>, Option<String>)> {
    let text = std::fs::read_to_string(state.join(MANIFEST_FILE)).unwrap();
    text.lines()
        .filter_map(|l| {
            let line: ManifestLine = serde_json::from_str(l).unwrap();
            let ManifestRecord::Work(w) = line.record else {
                return None;
            };
            Some((w.work_id, w.outcome.unwrap(), w.reason, w.sha256))
        })
        .collect()
}

fn pdfs_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
                .collect()
        })
        .unwrap_or_default()
}

/// Small and large (multipart) PDFs are in the bucket with the served bytes and their
/// SHA-256 as metadata; HTML served as a PDF leaves no object; the ledger, manifest and
/// attempts.csv are in the state folder and no PDF is left there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_pdfs_go_to_the_bucket_with_their_sha256_and_a_failed_work_leaves_none() {
    let Some(moto) = Moto::start("checked_pdfs_go_to_the_bucket").await else {
        return;
    };
    let sim = Simulator::start().await.unwrap();
    sim.on("/a.pdf", [Reply::pdf(3000)]);
    sim.on("/b.pdf", [Reply::pdf(250_000)]);
    sim.on("/large.pdf", [Reply::pdf(LARGE)]);
    let html = "<!DOCTYPE html><html><body>Please log in</body></html>".repeat(100);
    sim.on(
        "/html.pdf",
        [Reply::ok().header("content-type", "application/pdf").body(html)],
    );
    let paths = ["/a.pdf", "/b.pdf", "/large.pdf", "/html.pdf"];
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, &paths);
    let state = dir.path().join("state");

    let out = bounded("the run", &mut runner(&sim, &input, &state, &moto.endpoint())).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");

    let store = moto.client();
    for (i, p) in paths[..3].iter().enumerate() {
        let name = format!("W{}.pdf", 7000 + i);
        let (bytes, sha) = object(&store, &name)
            .await
            .unwrap_or_else(|| panic!("{name} is not in the bucket"));
        let expected = served(&sim, p).await;
        assert_eq!(bytes.len(), expected.len(), "{name}'s size");
        assert!(bytes == expected, "{name}'s bytes are the served ones");
        assert_eq!(
            sha.as_deref(),
            Some(sha256_hex(&expected).as_str()),
            "{name}'s sha256 metadata"
        );
    }
    assert!(
        object(&store, "W7003.pdf").await.is_none(),
        "no object for the HTML work"
    );

    let lines = manifest(&state);
    for (i, p) in paths[..3].iter().enumerate() {
        let id = format!("W{}", 7000 + i);
        let expected = sha256_hex(&served(&sim, p).await);
        assert!(
            lines
                .iter()
                .any(|(w, o, _, sha)| *w == id && *o == Outcome::Downloaded && sha.as_deref() == Some(&*expected)),
            "{id} downloaded with its sha256 in the manifest: {lines:?}"
        );
    }
    assert!(
        lines.iter().any(|(w, o, _, _)| w == "W7003" && *o == Outcome::Failed),
        "{lines:?}"
    );
    for f in ["ledger.sqlite", "attempts.csv", MANIFEST_FILE] {
        assert!(state.join(f).is_file(), "{f} in the state folder");
    }
    assert!(pdfs_in(&state).is_empty(), "no PDF left in the state folder");
    assert!(pdfs_in(&state.join(".partial")).is_empty());

    // the rerun trusts the ledger: every work settled, nothing put again
    let rerun = bounded("the rerun", &mut runner(&sim, &input, &state, &moto.endpoint())).await;
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let lines = manifest(&state);
    let skipped = lines
        .iter()
        .filter(|(_, o, r, _)| *o == Outcome::Skipped && *r == Some(ReasonCode::AlreadyDownloaded))
        .count();
    assert_eq!(skipped, 3, "{lines:?}");
}

/// A store that cannot be reached: the work is not FINALIZED and no object appears; the
/// next run (the store back) puts the PDF it left in the state folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_leaves_no_object_and_the_next_run_puts_it() {
    let Some(moto) = Moto::start("a_failed_upload_leaves_no_object").await else {
        return;
    };
    let sim = Simulator::start().await.unwrap();
    sim.on("/a.pdf", [Reply::pdf(5000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, &["/a.pdf"]);
    let state = dir.path().join("state");

    // nothing listens there
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let out = bounded("the run without a store", &mut runner(&sim, &input, &state, &nowhere)).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "retry later: {log}");
    let lines = manifest(&state);
    assert!(
        lines
            .iter()
            .any(|(w, o, r, _)| w == "W7000" && *o == Outcome::Failed && *r == Some(ReasonCode::IoError)),
        "{lines:?}"
    );
    let store = moto.client();
    assert!(object(&store, "W7000.pdf").await.is_none());

    let rerun = bounded("the rerun", &mut runner(&sim, &input, &state, &moto.endpoint())).await;
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let (bytes, sha) = object(&store, "W7000.pdf").await.expect("put by the rerun");
    let expected = served(&sim, "/a.pdf").await;
    assert!(bytes == expected);
    assert_eq!(sha.as_deref(), Some(sha256_hex(&expected).as_str()));
    assert!(pdfs_in(&state).is_empty(), "no PDF left in the state folder");
}

/// A loopback proxy to `upstream` that forwards at most `limit` request bytes in all, then
/// holds every connection: an upload through it hangs midway. The counter tells how far.
async fn stalling_proxy(upstream: SocketAddr, limit: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if counter.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > limit {
                        // hold the connection open, forwarding nothing more
                        std::future::pending::<()>().await;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, sent)
}

/// The runner SIGKILLed in the middle of a multipart upload: the bucket shows no object;
/// the rerun puts the PDF (found checked in the state folder) and FINALIZES the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upload_leaves_no_object_and_the_rerun_puts_it() {
    let Some(moto) = Moto::start("a_killed_upload_leaves_no_object").await else {
        return;
    };
    let sim = Simulator::start().await.unwrap();
    sim.on("/large.pdf", [Reply::pdf(LARGE)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, &["/large.pdf"]);
    let state = dir.path().join("state");

    let limit = 12 << 20;
    let (proxy, sent) = stalling_proxy(moto.addr, limit).await;
    let mut child = runner(&sim, &input, &state, &format!("http://{proxy}"))
        .spawn()
        .unwrap();
    // bounded: until the upload is past `limit` bytes (so hanging midway), then SIGKILL
    let mut midway = false;
    for _ in 0..1200 {
        if sent.load(Ordering::SeqCst) > limit {
            midway = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the runner ended before its upload was midway: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(midway, "the upload did not get midway within 60 s");
    child.kill().await.unwrap();

    let store = moto.client();
    assert!(
        object(&store, "W7000.pdf").await.is_none(),
        "no object after a killed upload"
    );

    let rerun = bounded("the rerun", &mut runner(&sim, &input, &state, &moto.endpoint())).await;
    let log = String::from_utf8_lossy(&rerun.stderr);
    assert_eq!(rerun.status.code(), Some(0), "{log}");
    let (bytes, sha) = object(&store, "W7000.pdf").await.expect("put by the rerun");
    let expected = served(&sim, "/large.pdf").await;
    assert_eq!(bytes.len() as u64, LARGE);
    assert!(bytes == expected);
    assert_eq!(sha.as_deref(), Some(sha256_hex(&expected).as_str()));
    let lines = manifest(&state);
    assert!(
        lines.iter().any(|(w, o, _, sha)| w == "W7000"
            && matches!(o, Outcome::Downloaded | Outcome::Skipped)
            && sha.as_deref() == Some(sha256_hex(&expected).as_str())),
        "{lines:?}"
    );
    assert!(pdfs_in(&state).is_empty(), "no PDF left in the state folder");
}

#[cfg(feature = "postgres")]
mod ledger_support;

/// Four runners (four "machines": a state folder each) on one PostgreSQL ledger and one
/// bucket, with one run id; one is SIGKILLed midway. Every work ends FINALIZED exactly once
/// in the ledger, its object in the bucket with the served bytes' SHA-256, and no surviving
/// runner downloaded a work another had finished.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runners_on_one_postgres_ledger_and_one_bucket_one_killed() {
    use contentdownload::ledger::{Ledger, LedgerConfig};
    const TEST: &str = "four_runners_on_one_postgres_ledger_and_one_bucket";
    const WORKS: usize = 40;
    let Some(url) = ledger_support::pg_url(TEST) else {
        return;
    };
    let Some(moto) = Moto::start(TEST).await else { return };
    let schema = ledger_support::unique_schema("s3_four_runners");
    let mut config = LedgerConfig::new(url.clone());
    config.pg_schema = Some(schema.clone());
    // the schema and its tables, for the runners to find through their search path
    Ledger::connect(config.clone()).await.unwrap().close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let ledger_url = format!("{url}{sep}options[search_path]={schema}");

    let sim = Simulator::start().await.unwrap();
    // slow enough that works are in flight when the kill comes; sizes differ per work
    sim.on_fn("/pdf/*", |req| {
        let i: u64 = req
            .path()
            .trim_start_matches("/pdf/")
            .trim_end_matches(".pdf")
            .parse()
            .unwrap_or(0);
        Reply::pdf(2000 + 7 * i).delay(Duration::from_millis(100))
    });
    let paths: Vec<String> = (0..WORKS).map(|i| format!("/pdf/{i}.pdf")).collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    write_works(&sim, &input, &refs);
    // a short lease: the killed runner's works are taken over by the others within the
    // test's bound (they poll the ledger until its leases end)
    let more = [
        "--ledger",
        &ledger_url,
        "--run-id",
        "harvest-1",
        "--lease-ttl-secs",
        "3",
    ];
    let states: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("machine-{i}"))).collect();
    let mut children: Vec<_> = states
        .iter()
        .map(|st| runner_with(&sim, &input, st, &moto.endpoint(), &more).spawn().unwrap())
        .collect();
    let mut killed = children.remove(0);
    // bounded: until some PDFs were served, then SIGKILL the first runner
    let mut started = false;
    for _ in 0..1200 {
        if sim.count("/pdf/*") >= 8 {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started, "no PDF served within 60 s");
    killed.kill().await.unwrap();
    let outputs = futures_util::future::join_all(children.into_iter().map(|c| async move {
        tokio::time::timeout(BOUND, c.wait_with_output())
            .await
            .expect("a runner within the bound")
            .unwrap()
    }))
    .await;
    for out in &outputs {
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // fetched again: only the killed runner's works in flight or not yet finalized (at
    // most 4 a host in flight, and a finisher group of a quarter second)
    let fetches = sim.count("/pdf/*");
    assert!(
        (WORKS..=WORKS + 20).contains(&fetches),
        "{fetches} fetches for {WORKS} works"
    );

    let ledger = Ledger::connect(config).await.unwrap();
    let counts = ledger.counts(None).await.unwrap();
    ledger.close().await;
    assert_eq!(
        (counts.finalized, counts.leased, counts.total()),
        (WORKS as u64, 0, WORKS as u64)
    );

    let store = moto.client();
    for (i, p) in paths.iter().enumerate() {
        let name = format!("W{}.pdf", 7000 + i);
        let (bytes, sha) = object(&store, &name)
            .await
            .unwrap_or_else(|| panic!("{name} not in the bucket"));
        let expected = served(&sim, p).await;
        assert!(bytes == expected, "{name}'s bytes");
        assert_eq!(sha.as_deref(), Some(sha256_hex(&expected).as_str()));
    }
    // the survivors downloaded each work at most once between them (the killed runner may
    // have fetched a few it never finalized, fetched again by a survivor)
    let mut downloads = std::collections::HashMap::<String, usize>::new();
    for st in &states[1..] {
        for (w, o, _, _) in manifest(st) {
            if o == Outcome::Downloaded {
                *downloads.entry(w).or_default() += 1;
            }
        }
        assert!(pdfs_in(st).is_empty(), "no PDF left in {}", st.display());
    }
    assert!(downloads.values().all(|n| *n == 1), "{downloads:?}");
}
