//! Truthful outcomes, against the simulator on 127.0.0.1: the reason that matters survives a
//! fallback's connect error, connect errors name the server and the cause, the exit code
//! says whether a later run may help, and a work whose file is gone is downloaded again.
#![cfg(feature = "simulator")]

mod ledger_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use contentdownload::error::BoxError;
use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, WorkRecord, MANIFEST_FILE};
use contentdownload::reason::ReasonCode;
use contentdownload::service::{ConnectCause, ConnectFailed, HttpClient, HttpConfig};
use contentdownload::simulator::{Reply, Simulator};
use http_body_util::Full;
use serde_json::json;
use tower::ServiceExt;

mod bin_support;
use bin_support::contentdownload;

/// A port on 127.0.0.1 that refuses connections: bound (so no other test takes it) but
/// not listening. Keep the socket alive while the port is used.
fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

async fn get(url: &str) -> Result<http::Response<contentdownload::service::ResponseBody>, BoxError> {
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let req = http::Request::get(url).body(Full::<Bytes>::default()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), client.oneshot(req))
        .await
        .expect("a connect error comes fast, without network")
}

fn connect_failed(err: &BoxError) -> &ConnectFailed {
    err.downcast_ref::<ConnectFailed>()
        .unwrap_or_else(|| panic!("expected a named connect error, got {err} ({err:?})"))
}

#[tokio::test]
async fn a_refused_connection_names_the_host_and_port() {
    let (_socket, addr) = refusing_port();
    let err = get(&format!("http://user:pw@{addr}/a.pdf?token=T")).await.unwrap_err();
    let named = connect_failed(&err);
    assert_eq!(named.cause, ConnectCause::Refused);
    assert_eq!(named.target, addr.to_string());
    let text = err.to_string();
    assert_eq!(text, format!("cannot connect to {addr}: connection refused"));
    assert!(!text.contains("pw") && !text.contains("token"), "{text}");
    let (reason, retry) = contentdownload::reason::classify_error(&*err);
    assert_eq!((reason, retry), (ReasonCode::ConnectError, true));
}

#[tokio::test]
async fn an_unresolvable_name_is_a_dns_failure() {
    // `.invalid` never resolves (RFC 6761); without a network the lookup fails at once too
    let err = get("https://nonexistent.invalid/a.pdf").await.unwrap_err();
    let named = connect_failed(&err);
    assert!(matches!(named.cause, ConnectCause::Dns(_)), "{named:?}");
    assert_eq!(named.target, "nonexistent.invalid:443", "the scheme's port");
    assert!(
        err.to_string()
            .starts_with("cannot connect to nonexistent.invalid:443: DNS lookup failed ("),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_tls_handshake_says_so() {
    // https to a plain HTTP server: the handshake fails on the server's answer
    let sim = Simulator::start().await.unwrap();
    let url = sim.url("/a.pdf").replacen("http://", "https://", 1);
    let err = get(&url).await.unwrap_err();
    let named = connect_failed(&err);
    assert!(matches!(named.cause, ConnectCause::Tls(_)), "{named:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to {}: TLS handshake failed (", sim.addr())),
        "{err}"
    );
}

/// Works whose PDF URL is `<sim>/pdf/<i>.pdf`, W7000 upwards.
fn write_works(path: &Path, urls: &[String]) {
    let lines: Vec<String> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            json!({
                "id": format!("https://openalex.org/W{}", 7000 + i),
                "doi": format!("https://doi.org/10.5555/o{i}"),
                "best_oa_location": {"pdf_url": url}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

struct Folder {
    _dir: tempfile::TempDir,
    input: String,
    out: String,
}

impl Folder {
    fn new(urls: &[String]) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("works.jsonl");
        write_works(&input, urls);
        Folder {
            input: input.to_str().unwrap().to_owned(),
            out: dir.path().join("pdfs").to_str().unwrap().to_owned(),
            _dir: dir,
        }
    }

    fn args<'a>(&'a self, rates: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["run", "--input", &self.input, "--out", &self.out, "--quiet"];
        args.extend(["--mailto", "ci@example.org", "--fallback-tier", "direct=openalex"]);
        for r in rates {
            args.extend(["--rate", r.as_str()]);
        }
        args.extend(extra);
        args
    }

    fn works(&self) -> Vec<WorkRecord> {
        let (lines, bad) = read_manifest(&Path::new(&self.out).join(MANIFEST_FILE)).unwrap();
        assert_eq!(bad, 0);
        lines
            .into_iter()
            .filter_map(|l| match l.record {
                ManifestRecord::Work(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    fn work(&self, id: &str) -> WorkRecord {
        self.works()
            .into_iter()
            .rev()
            .find(|w| w.work_id == id)
            .unwrap_or_else(|| panic!("no record of {id}"))
    }

    fn pdf(&self, id: &str) -> std::path::PathBuf {
        Path::new(&self.out).join(format!("{id}.pdf"))
    }
}

fn output(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_answer_beats_the_archives_connect_error_and_exits_0() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/0.pdf", [Reply::status(404)]);
    sim.on(
        "/pdf/1.pdf",
        [Reply::ok()
            .header("content-type", "application/pdf")
            .body("<html><body>sign in</body></html>".repeat(60))],
    );
    // the last tier, the Wayback Machine, is out of reach
    let (_socket, closed) = refusing_port();
    let folder = Folder::new(&[sim.url("/pdf/0.pdf"), sim.url("/pdf/1.pdf")]);
    let rates = [format!("{}=1000:100", sim.addr()), "wayback=1000:100".to_owned()];
    let wayback = format!("wayback=http://{closed}");
    let args = folder.args(
        &rates,
        &["--fallback-tier", "archive=wayback", "--resolver-base", &wayback],
    );
    let done = contentdownload(&args, &[]).await;
    assert_eq!(done.status.code(), Some(0), "definitely unavailable: {}", output(&done));

    let w0 = folder.work("W7000");
    assert_eq!(w0.outcome, Some(Outcome::Failed));
    assert_eq!(w0.reason, Some(ReasonCode::HttpStatus), "{w0:?}");
    assert_eq!(w0.http_status, Some(404));
    assert!(w0.detail.as_deref().unwrap_or("").contains("404"), "{w0:?}");
    let w1 = folder.work("W7001");
    assert_eq!(w1.reason, Some(ReasonCode::HtmlLandingPage), "{w1:?}");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(!stdout.contains("connect_error"), "{stdout}");
    assert!(!stdout.contains("retry later"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_failed_on_connect_errors_exit_3_and_name_the_server() {
    let (_socket, closed) = refusing_port();
    let urls: Vec<String> = (0..3).map(|i| format!("http://{closed}/pdf/{i}.pdf")).collect();
    let folder = Folder::new(&urls);
    let rates = [format!("{closed}=1000:100")];
    let done = contentdownload(&folder.args(&rates, &[]), &[]).await;
    assert_eq!(done.status.code(), Some(3), "a later run may fix it: {}", output(&done));
    let works = folder.works();
    assert_eq!(works.len(), 3);
    for w in &works {
        assert_eq!(w.reason, Some(ReasonCode::ConnectError), "{w:?}");
        let detail = w.detail.as_deref().unwrap_or("");
        assert!(
            detail.contains(&format!("cannot connect to {closed}: connection refused")),
            "{detail}"
        );
    }
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(stdout.contains("retry later        3"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_that_all_404_exit_0() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::status(404)]);
    let folder = Folder::new(&[sim.url("/pdf/0.pdf"), sim.url("/pdf/1.pdf")]);
    let rates = [format!("{}=1000:100", sim.addr())];
    let done = contentdownload(&folder.args(&rates, &[]), &[]).await;
    assert_eq!(done.status.code(), Some(0), "{}", output(&done));
    assert!(folder.works().iter().all(|w| w.http_status == Some(404)));
}

#[tokio::test]
async fn the_exit_codes_are_documented_in_run_help() {
    let help = contentdownload(&["run", "--help"], &[]).await;
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Exit codes:"), "{text}");
    assert!(text.contains("  3 "), "{text}");
    assert!(text.contains("--verify-existing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalized_work_whose_file_is_gone_or_changed_is_downloaded_again() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(5000)]);
    let urls: Vec<String> = (0..3).map(|i| sim.url(&format!("/pdf/{i}.pdf"))).collect();
    let folder = Folder::new(&urls);
    let rates = [format!("{}=1000:100", sim.addr())];
    let args = folder.args(&rates, &[]);
    let first = contentdownload(&args, &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", output(&first));
    assert_eq!(sim.count("/pdf/*"), 3);

    // one deleted, one truncated, one with the same size but other bytes
    std::fs::remove_file(folder.pdf("W7000")).unwrap();
    let truncated = std::fs::read(folder.pdf("W7001")).unwrap();
    std::fs::write(folder.pdf("W7001"), &truncated[..1000]).unwrap();
    let mut changed = std::fs::read(folder.pdf("W7002")).unwrap();
    changed[100] ^= 0xff;
    std::fs::write(folder.pdf("W7002"), &changed).unwrap();

    // the cheap check (on by default) finds the missing and the short file
    let second = contentdownload(&args, &[]).await;
    assert_eq!(second.status.code(), Some(0), "{}", output(&second));
    assert_eq!(sim.count("/pdf/0.pdf"), 2, "the deleted file is fetched again");
    assert_eq!(sim.count("/pdf/1.pdf"), 2, "the truncated file is fetched again");
    assert_eq!(
        sim.count("/pdf/2.pdf"),
        1,
        "same size: not read without --verify-existing"
    );
    assert_eq!(std::fs::metadata(folder.pdf("W7000")).unwrap().len(), 5000);
    assert_eq!(std::fs::metadata(folder.pdf("W7001")).unwrap().len(), 5000);
    assert_eq!(folder.work("W7000").outcome, Some(Outcome::Downloaded));
    assert_eq!(folder.work("W7001").outcome, Some(Outcome::Downloaded));
    assert_eq!(folder.work("W7002").outcome, Some(Outcome::Skipped));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        stderr.matches("planning it again").count(),
        2,
        "one line per re-planned work: {stderr}"
    );
    assert!(stderr.contains("is missing"), "{stderr}");
    assert!(stderr.contains("1000 bytes, not the 5000 recorded"), "{stderr}");

    // --verify-existing (or its environment variable) re-hashes and finds the changed bytes
    let third = contentdownload(&args, &[("DOCSTOKG_VERIFY_EXISTING", "1")]).await;
    assert_eq!(third.status.code(), Some(0), "{}", output(&third));
    assert_eq!(sim.count("/pdf/2.pdf"), 2, "the changed file is fetched again");
    assert_eq!(sim.count("/pdf/0.pdf"), 2, "an intact file is not");
    assert_ne!(std::fs::read(folder.pdf("W7002")).unwrap(), changed);
    assert!(String::from_utf8_lossy(&third.stderr).contains("SHA-256"));

    // and then every file is as recorded: nothing is fetched
    let mut verify = args.clone();
    verify.push("--verify-existing");
    let fourth = contentdownload(&verify, &[]).await;
    assert_eq!(fourth.status.code(), Some(0), "{}", output(&fourth));
    assert_eq!(sim.count("/pdf/*"), 6, "3, then 2 missing or short, then 1 changed");
}

/// The pipeline over each ledger backend (SQLite, and PostgreSQL when configured): a work
/// finalized in one run whose file is then deleted is downloaded again by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ledger_backend_replans_a_work_whose_file_is_gone() {
    use contentdownload::ledger::JobState;
    use contentdownload::manifest::ManifestWriter;
    use contentdownload::pipeline::{FallbackConfig, Pipeline, PipelineConfig};
    use contentdownload::resolvers::ResolverConfig;
    use contentdownload::service::{Stack, StackConfig};
    use contentdownload::works::Work;
    use std::sync::{Arc, Mutex};

    for t in ledger_support::backends("replans_a_work_whose_file_is_gone").await {
        let sim = Simulator::start().await.unwrap();
        sim.on("/pdf/*", [Reply::pdf(4096)]);
        let out = tempfile::tempdir().unwrap();
        let works: Vec<Work> = (0..2)
            .map(|i| {
                Work::from_openalex(&json!({
                    "id": format!("https://openalex.org/W{}", 8000 + i),
                    "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))}
                }))
                .unwrap()
            })
            .collect();
        let run = |run_id: &str| {
            let config = PipelineConfig {
                worker_id: format!("{}-{run_id}", t.name),
                workers: 2,
                fallback: FallbackConfig {
                    tiers: vec![FallbackConfig::parse_tier("direct=openalex").unwrap()],
                    ..FallbackConfig::default()
                },
                resolvers: ResolverConfig::default(),
                lease_ttl: Duration::from_secs(60),
                ..PipelineConfig::new(out.path(), run_id)
            };
            let mut stack = StackConfig::default();
            stack.rate_limit.default = contentdownload::layers::rate_limit::Quota::new(10_000.0, 1000);
            let manifest = Arc::new(Mutex::new(ManifestWriter::open(out.path()).unwrap()));
            Pipeline::new(config, &Stack::new(&stack).unwrap(), Some(t.ledger.clone()), manifest).unwrap()
        };
        let input = || futures_util::stream::iter(works.clone().into_iter().map(Ok));
        let first = run("run-1").run(input(), |_| {}, std::future::pending()).await.unwrap();
        assert_eq!(first.downloaded, 2, "{}: {first:?}", t.name);

        std::fs::remove_file(out.path().join("W8000.pdf")).unwrap();
        let second = run("run-2").run(input(), |_| {}, std::future::pending()).await.unwrap();
        assert_eq!((second.downloaded, second.skipped), (1, 1), "{}: {second:?}", t.name);
        assert_eq!(sim.count("/pdf/0.pdf"), 2, "{}", t.name);
        assert_eq!(sim.count("/pdf/1.pdf"), 1, "{}", t.name);
        assert_eq!(std::fs::metadata(out.path().join("W8000.pdf")).unwrap().len(), 4096);
        let jobs = t.ledger.jobs(None).await.unwrap();
        assert!(jobs.iter().all(|j| j.state == JobState::Finalized), "{}", t.name);
        assert_eq!(jobs.iter().map(|j| j.attempts).max(), Some(2), "{}", t.name);
    }
}
