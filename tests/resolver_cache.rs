//! Resolver answers remembered in the ledger (`--resolver-cache-ttl`): a rerun over the same
//! works asks no provider again for a work it answered, an error is asked again, an answer
//! older than the age is asked again; and the summary's per-resolver counts. On SQLite and,
//! with `CONTENTDOWNLOAD_TEST_POSTGRES_URL`, PostgreSQL.
#![cfg(feature = "simulator")]

mod bin_support;
mod ledger_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contentdownload::ledger::{Ledger, ResolverTotals};
use contentdownload::manifest::{
    read_manifest, ManifestRecord, ManifestWriter, ResolverCounts, SummaryRecord, MANIFEST_FILE,
};
use contentdownload::pipeline::{FallbackConfig, Pipeline, PipelineConfig};
use contentdownload::resolvers::ResolverConfig;
use contentdownload::service::{Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::Work;
use futures_util::stream;
use serde_json::json;

const TTL: Duration = Duration::from_secs(3600);

/// Six works by DOI: unpaywall finds a PDF for w0 and w1, nothing for w2 and w3, and
/// answers w4 and w5 with an error; crossref (the next tier) finds nothing for any.
fn server(sim: &Simulator) {
    let pdf_base = sim.url("/pdf");
    sim.on_fn("/unpaywall/*", move |r| {
        let path = r.path().to_owned();
        let n = path.rsplit("w").next().unwrap_or("").to_owned();
        match n.as_str() {
            "0" | "1" => Reply::json(&json!({"best_oa_location": {"url_for_pdf": format!("{pdf_base}/{n}.pdf")}})),
            "2" | "3" => Reply::json(&json!({"best_oa_location": null, "oa_locations": []})),
            _ => Reply::status(400),
        }
    });
    sim.on_fn("/crossref/*", |_| Reply::json(&json!({"message": {"link": []}})));
    sim.on_fn("/pdf/*", |_| Reply::pdf(4096));
}

fn works() -> Vec<Work> {
    (0..6)
        .map(|i| Work::from_doi(&format!("10.1234/w{i}")).unwrap())
        .collect()
}

fn config(sim: &Simulator, out: &Path, run: &str, ttl: Duration) -> PipelineConfig {
    PipelineConfig {
        worker_id: format!("worker-{run}"),
        workers: 4,
        fallback: FallbackConfig {
            tiers: vec![
                FallbackConfig::parse_tier("a=unpaywall").unwrap(),
                FallbackConfig::parse_tier("b=crossref").unwrap(),
            ],
            resolver_cache_ttl_secs: ttl.as_secs(),
            ..FallbackConfig::default()
        },
        resolvers: ResolverConfig {
            mailto: Some("test@example.org".into()),
            base_urls: [("unpaywall", "/unpaywall"), ("crossref", "/crossref")]
                .into_iter()
                .map(|(n, p)| (n.to_string(), sim.url(p)))
                .collect::<BTreeMap<_, _>>(),
            ..ResolverConfig::default()
        },
        lease_ttl: Duration::from_secs(60),
        ..PipelineConfig::new(out, run)
    }
}

async fn run(sim: &Simulator, out: &Path, ledger: &Ledger, run: &str, ttl: Duration) -> SummaryRecord {
    run_works(sim, out, ledger, run, ttl, works()).await
}

async fn run_works(
    sim: &Simulator,
    out: &Path,
    ledger: &Ledger,
    run: &str,
    ttl: Duration,
    works: Vec<Work>,
) -> SummaryRecord {
    run_config(out, ledger, config(sim, out, run, ttl), works).await
}

/// One run of the pipeline over `works` with `config`.
async fn run_config(out: &Path, ledger: &Ledger, config: PipelineConfig, works: Vec<Work>) -> SummaryRecord {
    let mut stack_cfg = StackConfig::default();
    stack_cfg.rate_limit.default = contentdownload::layers::rate_limit::Quota::new(10_000.0, 1000);
    let stack = Stack::new(&stack_cfg).unwrap();
    let manifest = Arc::new(Mutex::new(ManifestWriter::open(out).unwrap()));
    let pipeline = Pipeline::new(config, &stack, Some(ledger.clone()), manifest).unwrap();
    let input = stream::iter(works.into_iter().map(Ok));
    tokio::time::timeout(
        Duration::from_secs(60),
        pipeline.run(input, |_| {}, std::future::pending()),
    )
    .await
    .expect("the run ends")
    .unwrap()
}

fn counts(asked: u64, cached: u64, pdfs: u64) -> ResolverCounts {
    ResolverCounts { asked, cached, pdfs }
}

fn asked_of(sim: &Simulator, pattern: &str) -> Vec<String> {
    let mut paths: Vec<String> = sim.requests_to(pattern).iter().map(|r| r.path().to_owned()).collect();
    paths.sort();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_asks_no_provider_again_for_a_work_it_answered() {
    for t in ledger_support::backends("a_rerun_asks_no_provider_again").await {
        let sim = Simulator::start().await.unwrap();
        server(&sim);
        let out = tempfile::tempdir().unwrap();

        // first run: every work asked of unpaywall; the four without a PDF asked of crossref
        let first = run(&sim, out.path(), &t.ledger, "run-1", TTL).await;
        assert_eq!((first.downloaded, first.failed), (2, 4), "{}: {first:?}", t.name);
        assert_eq!(sim.count("/unpaywall/*"), 6, "{}", t.name);
        assert_eq!(sim.count("/crossref/*"), 4, "{}", t.name);
        assert_eq!(first.resolvers["unpaywall"], counts(6, 0, 2), "{}", t.name);
        assert_eq!(first.resolvers["crossref"], counts(4, 0, 0), "{}", t.name);
        // the totals the ledger keeps (what `status` shows): errors are not remembered
        let totals = t.ledger.resolver_totals().await.unwrap();
        let expected = [("crossref", 4, 0, 0), ("unpaywall", 4, 2, 2)].map(|(r, works, with, pdfs)| ResolverTotals {
            resolver: r.into(),
            works,
            with_candidates: with,
            pdfs,
        });
        assert_eq!(totals, expected, "{}", t.name);

        // rerun: the downloaded works are skipped; of the others only the errors are asked again
        sim.clear_requests();
        let second = run(&sim, out.path(), &t.ledger, "run-2", TTL).await;
        assert_eq!((second.skipped, second.failed), (2, 4), "{}: {second:?}", t.name);
        assert_eq!(
            asked_of(&sim, "/unpaywall/*"),
            ["/unpaywall/v2/10.1234%2Fw4", "/unpaywall/v2/10.1234%2Fw5"],
            "{}",
            t.name
        );
        assert_eq!(
            sim.count("/crossref/*"),
            0,
            "{}: every crossref answer remembered",
            t.name
        );
        // the two that found no candidate are not even claimed: the ledger's batch read
        // settles them (a reason that will not change, within the age); the two errors
        // are asked of unpaywall again and take crossref's answer from memory
        assert_eq!(second.resolvers["unpaywall"], counts(2, 0, 0), "{}", t.name);
        assert_eq!(second.resolvers["crossref"], counts(0, 2, 0), "{}", t.name);

        // an answer older than the age is asked again
        sim.clear_requests();
        t.ledger.clock().advance(TTL + Duration::from_secs(1));
        let third = run(&sim, out.path(), &t.ledger, "run-3", TTL).await;
        assert_eq!(third.failed, 4, "{}", t.name);
        assert_eq!(sim.count("/unpaywall/*"), 4, "{}", t.name);
        assert_eq!(sim.count("/crossref/*"), 4, "{}", t.name);
        assert_eq!(third.resolvers["crossref"], counts(4, 0, 0), "{}", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_age_remembers_nothing() {
    for t in ledger_support::backends("a_zero_age_remembers_nothing").await {
        let sim = Simulator::start().await.unwrap();
        server(&sim);
        let out = tempfile::tempdir().unwrap();
        run(&sim, out.path(), &t.ledger, "run-1", Duration::ZERO).await;
        sim.clear_requests();
        let again = run(&sim, out.path(), &t.ledger, "run-2", Duration::ZERO).await;
        assert_eq!(sim.count("/unpaywall/*"), 4, "{}", t.name);
        assert_eq!(sim.count("/crossref/*"), 4, "{}", t.name);
        assert_eq!(again.resolvers["crossref"], counts(4, 0, 0), "{}", t.name);
        assert!(t.ledger.resolver_totals().await.unwrap().is_empty(), "{}", t.name);
    }
}

/// Answers are written to the ledger in groups, and what is left waiting when the input
/// ends is written before the run returns: 150 works (two full groups and a part) all
/// have their answers remembered, and a rerun asks no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_written_in_groups_are_all_remembered() {
    for t in ledger_support::backends("answers_written_in_groups").await {
        let sim = Simulator::start().await.unwrap();
        sim.on_fn("/unpaywall/*", |_| {
            Reply::json(&json!({"best_oa_location": null, "oa_locations": []}))
        });
        sim.on_fn("/crossref/*", |_| Reply::json(&json!({"message": {"link": []}})));
        let out = tempfile::tempdir().unwrap();
        let many = || {
            (0..150)
                .map(|i| Work::from_doi(&format!("10.1234/g{i}")).unwrap())
                .collect::<Vec<_>>()
        };
        let first = run_works(&sim, out.path(), &t.ledger, "run-1", TTL, many()).await;
        assert_eq!(first.failed, 150, "{}: {first:?}", t.name);
        let totals = t.ledger.resolver_totals().await.unwrap();
        let works: Vec<(&str, u64)> = totals.iter().map(|r| (r.resolver.as_str(), r.works)).collect();
        assert_eq!(works, [("crossref", 150), ("unpaywall", 150)], "{}", t.name);
        sim.clear_requests();
        run_works(&sim, out.path(), &t.ledger, "run-2", TTL, many()).await;
        assert_eq!(sim.count("/unpaywall/*") + sim.count("/crossref/*"), 0, "{}", t.name);
    }
}

/// The summary table, the manifest's summary line and `status` (text and `--json`) name,
/// per resolver, the works asked about, the answers remembered and the PDFs found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_and_status_count_per_resolver() {
    let sim = Simulator::start().await.unwrap();
    server(&sim);
    let dir = tempfile::tempdir().unwrap();
    let dois = dir.path().join("dois.txt");
    let lines: Vec<String> = (0..6).map(|i| format!("10.1234/w{i}")).collect();
    std::fs::write(&dois, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let (unpaywall, crossref) = (
        format!("unpaywall={}", sim.url("/unpaywall")),
        format!("crossref={}", sim.url("/crossref")),
    );
    let rate = format!("{}=1000:100", sim.addr());
    let args = [
        "run",
        "--dois",
        dois.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--mailto",
        "ci@example.org",
        "--fallback-tier",
        "a=unpaywall",
        "--fallback-tier",
        "b=crossref",
        "--resolver-base",
        &unpaywall,
        "--resolver-base",
        &crossref,
        "--rate",
        &rate,
    ];
    let first = bin_support::contentdownload(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("resolver       asked remembered   pdfs"), "{stdout}");
    assert!(stdout.contains("  unpaywall            6         0      2"), "{stdout}");
    assert!(stdout.contains("  crossref             4         0      0"), "{stdout}");
    let again = bin_support::contentdownload(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("  unpaywall            2         0      0"), "{stdout}");
    assert!(stdout.contains("  crossref             0         2      0"), "{stdout}");
    assert_eq!(sim.count("/unpaywall/*"), 8);

    let (manifest, bad) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let summaries: Vec<&SummaryRecord> = manifest
        .iter()
        .filter_map(|l| match &l.record {
            ManifestRecord::Summary(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].resolvers["unpaywall"], counts(6, 0, 2));
    assert_eq!(summaries[1].resolvers["crossref"], counts(0, 2, 0));

    let status = bin_support::contentdownload(&["status", "--out", out.to_str().unwrap()], &[]).await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("resolver: unpaywall: 4 works answered (2 with candidates), 2 PDFs found"),
        "{text}"
    );
    assert!(
        text.contains("resolver: crossref: 4 works answered (0 with candidates), 0 PDFs found"),
        "{text}"
    );
    let status = bin_support::contentdownload(&["status", "--out", out.to_str().unwrap(), "--json"], &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        json["resolvers"],
        json!([
            {"resolver": "crossref", "works": 4, "with_candidates": 0, "pdfs": 0},
            {"resolver": "unpaywall", "works": 4, "with_candidates": 2, "pdfs": 2},
        ])
    );
}

/// A resolver is not asked about a work that gives it nothing to go on: a work with only a
/// PDF link (a bulk input's) has no DOI for Unpaywall or Crossref, so neither is counted as
/// asked nor leaves an empty answer in the ledger; a work with a DOI still asks both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_without_an_identifier_to_go_on_is_not_asked() {
    for t in ledger_support::backends("a_resolver_without_an_identifier").await {
        let sim = Simulator::start().await.unwrap();
        sim.on_fn("/unpaywall/*", |_| {
            Reply::json(&json!({"best_oa_location": null, "oa_locations": []}))
        });
        sim.on_fn("/crossref/*", |_| Reply::json(&json!({"message": {"link": []}})));
        sim.on_fn("/pdf/*", |_| Reply::pdf(4096));
        let out = tempfile::tempdir().unwrap();
        let pdf_only = |i: usize| {
            Work::from_openalex(&json!({
                "id": format!("https://openalex.org/W{i}"),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/{i}.pdf"))},
            }))
            .unwrap()
        };
        let mut works: Vec<Work> = (1..=5).map(pdf_only).collect();
        works.push(Work::from_doi("10.1234/with-doi").unwrap());
        let mut config = config(&sim, out.path(), "run-1", TTL);
        config.fallback.tiers = vec![
            FallbackConfig::parse_tier("a=openalex,unpaywall").unwrap(),
            FallbackConfig::parse_tier("b=crossref").unwrap(),
        ];
        let summary = run_config(out.path(), &t.ledger, config, works).await;
        assert_eq!((summary.downloaded, summary.failed), (5, 1), "{}: {summary:?}", t.name);
        assert_eq!(summary.resolvers["openalex"], counts(5, 0, 5), "{}", t.name);
        assert_eq!(summary.resolvers["unpaywall"], counts(1, 0, 0), "{}", t.name);
        assert_eq!(summary.resolvers["crossref"], counts(1, 0, 0), "{}", t.name);
        assert_eq!(sim.count("/unpaywall/*") + sim.count("/crossref/*"), 2, "{}", t.name);
        let totals = t.ledger.resolver_totals().await.unwrap();
        let works: Vec<(&str, u64)> = totals.iter().map(|r| (r.resolver.as_str(), r.works)).collect();
        assert_eq!(works, [("crossref", 1), ("unpaywall", 1)], "{}", t.name);
    }
}
