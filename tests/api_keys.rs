//! Provider API keys through the real binary: each reaches its provider (a loopback
//! server) the way that provider documents it, none reaches anyone else, and no sink
//! (manifest, attempts.csv, the ledger, stdout, logs at trace level) holds one. Without a
//! CORE key the core resolver is left out, with one line at start.
#![cfg(feature = "simulator")]

use std::process::Output;
use std::time::Duration;

use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;

mod bin_support;
use bin_support::{assert_absent, files_under};

const BIN: &str = env!("CARGO_BIN_EXE_contentdownload");

// Long, unique values: any of them found in a sink is a leak, not a coincidence.
const OPENALEX_KEY: &str = "OAKEYq8Zr3Vw7";
const CORE_KEY: &str = "COREKEYm2Lp9Xd4";
const S2_KEY: &str = "S2KEYt5Hn1Qb6";
const PLUS_KEY: &str = "PLUSKEYc7Jw3Ry8";
const KEYS: [&str; 4] = [OPENALEX_KEY, CORE_KEY, S2_KEY, PLUS_KEY];
const KEY_VARS: [&str; 4] = ["OPENALEX_API_KEY", "CORE_API_KEY", "S2_API_KEY", "CROSSREF_PLUS_TOKEN"];

/// Runs the binary with none of the caller's `DOCSTOKG_*` or key variables, plus `env`.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCSTOKG_") || KEY_VARS.contains(&k.as_str())) {
        cmd.env_remove(k);
    }
    cmd.args(args).envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the run finished within 2 minutes")
        .expect("the binary ran")
}

fn assert_no_key(what: &str, text: &str) {
    assert_absent(&KEYS, what, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_reaches_its_provider_as_documented_and_no_sink() {
    let sim = Simulator::start().await.unwrap();
    let pdf = |n: u32| sim.url(&format!("/pdf/{n}.pdf"));
    // the OpenAlex search: two works
    sim.on(
        "/openalex/works",
        [Reply::json(&json!({
            "meta": {"next_cursor": null},
            "results": [
                {"id": "https://openalex.org/W1", "doi": "https://doi.org/10.1000/k1"},
                {"id": "https://openalex.org/W2", "doi": "https://doi.org/10.1000/k2"}
            ]
        }))],
    );
    // CORE knows the first; Semantic Scholar neither; Crossref has the second's PDF
    let core_answer = json!({"results": [{"doi": "10.1000/k1", "downloadUrl": pdf(1)}]});
    sim.on_fn("/core/v3/search/works", move |_| Reply::json(&core_answer));
    sim.on("/semantic_scholar/*", [Reply::status(404), Reply::status(404)]);
    let crossref_answer = json!({"message": {"link": [{"URL": pdf(2), "content-type": "application/pdf"}]}});
    sim.on_fn("/crossref/works/*", move |r| {
        if r.uri.path().ends_with("k2") {
            Reply::json(&crossref_answer)
        } else {
            Reply::status(404)
        }
    });
    sim.on_fn("/pdf/*", |_| Reply::pdf(3000));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdfs");
    let out_arg = out.to_str().unwrap();
    let (core_base, s2_base, crossref_base, openalex_base) = (
        format!("core={}", sim.url("/core")),
        format!("semantic_scholar={}", sim.url("/semantic_scholar")),
        format!("crossref={}", sim.url("/crossref")),
        format!("openalex={}", sim.url("/openalex")),
    );
    let rate = format!("{}=1000:100", sim.addr());
    let core_flag = format!("core={CORE_KEY}");
    let done = run(
        &[
            "run",
            "--topic",
            "keys",
            "--out",
            out_arg,
            "--quiet",
            "--fallback-tier",
            "keyed=core,semantic_scholar,crossref",
            "--resolver-base",
            &core_base,
            "--resolver-base",
            &s2_base,
            "--resolver-base",
            &crossref_base,
            "--resolver-base",
            &openalex_base,
            "--rate",
            &rate,
            "--api-key",
            &core_flag,
        ],
        &[
            ("RUST_LOG", "trace"),
            ("OPENALEX_API_KEY", OPENALEX_KEY),
            ("S2_API_KEY", S2_KEY),
            ("CROSSREF_PLUS_TOKEN", PLUS_KEY),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&done.stdout);
    let logs = String::from_utf8_lossy(&done.stderr);

    // the run did what it should, so the sinks below hold something to check
    let (lines, bad) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let downloaded = lines
        .iter()
        .filter(|l| matches!(&l.record, ManifestRecord::Work(w) if w.outcome == Some(Outcome::Downloaded)))
        .count();
    assert_eq!(downloaded, 2, "{stdout}\n{logs}");
    assert!(logs.contains("url.full="), "trace logs hold the requests' URLs: {logs}");
    assert!(
        logs.contains("api_key=REDACTED"),
        "the OpenAlex search is logged, redacted: {logs}"
    );

    // OpenAlex: the api_key query parameter
    let search = sim.requests_to("/openalex/works");
    assert_eq!(search.len(), 1);
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(search[0].uri.query().unwrap().as_bytes())
        .into_owned()
        .collect();
    assert!(pairs.contains(&("api_key".into(), OPENALEX_KEY.into())), "{pairs:?}");
    // CORE: Authorization: Bearer
    let core = sim.requests_to("/core/*");
    assert_eq!(core.len(), 2);
    let bearer = format!("Bearer {CORE_KEY}");
    assert!(core.iter().all(|r| r.header("authorization") == Some(bearer.as_str())));
    // Semantic Scholar: x-api-key
    let s2 = sim.requests_to("/semantic_scholar/*");
    assert!(!s2.is_empty());
    assert!(s2.iter().all(|r| r.header("x-api-key") == Some(S2_KEY)));
    // Crossref Plus: Crossref-Plus-API-Token: Bearer
    let crossref = sim.requests_to("/crossref/*");
    assert!(!crossref.is_empty());
    let plus = format!("Bearer {PLUS_KEY}");
    assert!(crossref
        .iter()
        .all(|r| r.header("crossref-plus-api-token") == Some(plus.as_str())));

    // each key went to its provider only: not to the PDFs, not to the other providers
    for r in sim.requests() {
        let path = r.uri.path().to_owned();
        let seen = format!("{} {:?}", r.uri, r.headers);
        let own = [
            ("/openalex/", OPENALEX_KEY),
            ("/core/", CORE_KEY),
            ("/semantic_scholar/", S2_KEY),
            ("/crossref/", PLUS_KEY),
        ];
        for (prefix, key) in own {
            if !path.starts_with(prefix) {
                assert!(!seen.contains(key), "{key} sent to {path}: {seen}");
            }
        }
    }

    assert_no_key("the logs (trace)", &logs);
    assert_no_key("stdout", &stdout);
    let files = files_under(&out);
    assert!(files.iter().any(|(n, _)| n.ends_with("attempts.csv")), "{files:?}");
    assert!(files.iter().any(|(n, _)| n.contains("ledger")), "{files:?}");
    for (name, text) in files {
        assert_no_key(&name, &text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_core_key_core_is_left_out_with_one_line() {
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/core/*", |_| Reply::status(500));
    sim.on_fn("/semantic_scholar/*", |_| Reply::status(404));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    let works: Vec<String> = (1..=5)
        .map(|i| json!({"id": format!("https://openalex.org/W{i}"), "doi": format!("10.1000/n{i}")}).to_string())
        .collect();
    std::fs::write(&input, works.join("\n") + "\n").unwrap();
    let out = dir.path().join("pdfs");
    let (core_base, s2_base) = (
        format!("core={}", sim.url("/core")),
        format!("semantic_scholar={}", sim.url("/semantic_scholar")),
    );
    let rate = format!("{}=1000:100", sim.addr());
    let done = run(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "keyed=core,semantic_scholar",
            "--resolver-base",
            &core_base,
            "--resolver-base",
            &s2_base,
            "--rate",
            &rate,
        ],
        &[("RUST_LOG", "warn")],
    )
    .await;
    let logs = String::from_utf8_lossy(&done.stderr);
    assert_eq!(
        logs.matches("resolver core skipped").count(),
        1,
        "one line, not one per work: {logs}"
    );
    assert!(logs.contains("CORE_API_KEY"), "{logs}");
    assert_eq!(sim.count("/core/*"), 0, "core was not asked");
    assert_eq!(sim.count("/semantic_scholar/*"), 5, "the other resolvers still ran");
    let (lines, _) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    let works = lines
        .iter()
        .filter(|l| matches!(&l.record, ManifestRecord::Work(_)))
        .count();
    assert_eq!(works, 5, "every work was tried and recorded");
}
