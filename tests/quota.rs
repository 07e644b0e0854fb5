//! A provider whose allowance is spent, through the real binary: a loopback server answers
//! Unpaywall with "credits spent, reset in 3 h" while Crossref and the PDF host work. The
//! provider is paused (asked at most once more), the other works are downloaded, the run
//! ends without waiting for the reset, and the summary, the manifest, the ledger (through
//! `status`) and a single warning say why the rest were deferred: `quota_spent`. A rerun
//! before the reset asks the provider nothing at all (the pause is in the learning file).
#![cfg(feature = "simulator")]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::reason::ReasonCode;
use contentdownload::simulator::{Reply, Simulator};
use serde_json::json;

mod bin_support;
use bin_support::contentdownload;

/// Works q1..q6; Crossref knows a PDF for q1..q3 only.
const WORKS: usize = 6;
const WITH_PDF: usize = 3;

/// The two shapes of a spent allowance, 3 h before its reset.
#[derive(Clone, Copy)]
enum Shape {
    /// `X-RateLimit-Remaining: 0` with a reset 3 h away (no `Retry-After`).
    RemainingZero,
    /// OpenAlex's credits, as its API proxy answers (GitHub `ourresearch/openalex-api-proxy`,
    /// `src/index.ts`): 5 credits left for a request that costs 10, the reset (seconds to
    /// midnight UTC) and `Retry-After`, in credits and in dollars.
    OpenAlexCredits,
}

fn spent(shape: Shape) -> Reply {
    let reply = Reply::status(429).header("content-type", "application/json");
    match shape {
        Shape::RemainingZero => reply
            .header("x-ratelimit-limit", "100000")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", "10800")
            .body(r#"{"error":"daily quota exceeded"}"#),
        Shape::OpenAlexCredits => reply
            .header("retry-after", "10800")
            .header("x-ratelimit-limit-usd", "1")
            .header("x-ratelimit-remaining-usd", "0.0005")
            .header("x-ratelimit-prepaid-remaining-usd", "0")
            .header("x-ratelimit-cost-required-usd", "0.001")
            .header("x-ratelimit-limit", "10000")
            .header("x-ratelimit-remaining", "5")
            .header("x-ratelimit-onetime-remaining", "0")
            .header("x-ratelimit-credits-required", "10")
            .header("x-ratelimit-reset", "10800")
            .body(
                r#"{"error":"Rate limit exceeded","message":"Insufficient budget. This request costs $0.001 but you only have $0.0005 remaining. Resets at midnight UTC.","retryAfter":10800,"creditsRequired":10,"creditsRemaining":5}"#,
            ),
    }
}

struct Setup {
    sim: Simulator,
    /// Requests Unpaywall got.
    asked: Arc<AtomicUsize>,
    dir: tempfile::TempDir,
}

async fn setup(shape: Shape) -> Setup {
    let sim = Simulator::start().await.unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = asked.clone();
    sim.on_fn("/unpaywall/*", move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        spent(shape)
    });
    let base = sim.url("/pdf");
    sim.on_fn("/crossref/works/*", move |r| {
        let n: usize = r
            .uri
            .path()
            .rsplit('q')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if (1..=WITH_PDF).contains(&n) {
            Reply::json(&json!({"message": {"link": [
                {"URL": format!("{base}/{n}.pdf"), "content-type": "application/pdf"}
            ]}}))
        } else {
            Reply::status(404)
        }
    });
    sim.on_fn("/pdf/*", |_| Reply::pdf(3000));
    let dir = tempfile::tempdir().unwrap();
    let works: Vec<String> = (1..=WORKS)
        .map(|i| json!({"id": format!("https://openalex.org/W{i}"), "doi": format!("10.1000/q{i}")}).to_string())
        .collect();
    std::fs::write(dir.path().join("works.jsonl"), works.join("\n") + "\n").unwrap();
    Setup { sim, asked, dir }
}

/// One run over the works; stdout, stderr and the exit code.
async fn run(s: &Setup) -> (String, String, Option<i32>) {
    let input = s.dir.path().join("works.jsonl");
    let out = s.dir.path().join("out");
    let (unpaywall, crossref) = (
        format!("unpaywall={}", s.sim.url("/unpaywall")),
        format!("crossref={}", s.sim.url("/crossref")),
    );
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "apis=unpaywall,crossref",
            "--resolver-base",
            &unpaywall,
            "--resolver-base",
            &crossref,
            // one Unpaywall request a second: the works after the first wait for their turn,
            // by which time the 429 has paused the provider
            "--rate",
            "unpaywall=1",
            "--rate",
            "crossref=1000:100",
            "--default-rate",
            "1000:100",
            "--mailto",
            "quota@example.org",
        ],
        &[],
    )
    .await;
    (
        String::from_utf8_lossy(&done.stdout).into_owned(),
        String::from_utf8_lossy(&done.stderr).into_owned(),
        done.status.code(),
    )
}

async fn status(out: &Path, json: bool) -> String {
    let mut args = vec!["status", "--out", out.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    String::from_utf8_lossy(&done.stdout).into_owned()
}

async fn spent_allowance_defers_its_works_and_says_why(shape: Shape) {
    let s = setup(shape).await;
    let out = s.dir.path().join("out");
    let (stdout, stderr, code) = run(&s).await;
    let asked = s.asked.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&asked),
        "Unpaywall is asked at most once or twice, not once per work: {asked}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        code,
        Some(3),
        "deferred works: a later run may succeed\n{stdout}\n{stderr}"
    );

    // the other provider's works are downloaded; the rest wait for the reset
    let (lines, bad) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    assert_eq!(bad, 0);
    let works: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.record {
            ManifestRecord::Work(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(works.len(), WORKS, "{stdout}\n{stderr}");
    let downloaded = works.iter().filter(|w| w.outcome == Some(Outcome::Downloaded)).count();
    assert_eq!(downloaded, WITH_PDF, "{stdout}\n{stderr}");
    let quota: Vec<_> = works
        .iter()
        .filter(|w| w.outcome == Some(Outcome::Deferred) && w.reason == Some(ReasonCode::QuotaSpent))
        .collect();
    assert_eq!(quota.len(), WORKS - WITH_PDF, "{works:?}");
    assert!(
        quota
            .iter()
            .all(|w| w.detail.as_deref().is_some_and(|d| d.contains("unpaywall"))),
        "the detail names the provider: {quota:?}"
    );
    let summary = lines
        .iter()
        .find_map(|l| match &l.record {
            ManifestRecord::Summary(s) => Some(s),
            _ => None,
        })
        .expect("a summary line");
    assert_eq!(
        summary.deferred_by_reason.get(&ReasonCode::QuotaSpent),
        Some(&((WORKS - WITH_PDF) as u64))
    );
    assert_eq!(
        summary.resolvers.get("unpaywall").map(|c| c.asked),
        Some(asked as u64),
        "the works refused before sending are not counted as asked"
    );

    // told once, in the logs, and in the summary with the reset
    assert_eq!(
        stderr.matches("allowance (quota) is spent").count(),
        1,
        "one warning, not one per work: {stderr}"
    );
    let line = format!("{} deferred: unpaywall allowance spent, resets at ", WORKS - WITH_PDF);
    assert!(stdout.contains(&line), "{stdout}");
    assert!(stdout.contains("UTC (in 3 h)"), "{stdout}");

    // the ledger and the learning file, through `status`
    let text = status(&out, false).await;
    assert!(
        text.contains(&format!("deferred: {} quota_spent", WORKS - WITH_PDF)),
        "{text}"
    );
    assert!(text.contains(&line), "{text}");
    let status_json: serde_json::Value = serde_json::from_str(&status(&out, true).await).unwrap();
    assert_eq!(
        status_json["deferred_by_reason"]["quota_spent"],
        json!(WORKS - WITH_PDF),
        "{status_json}"
    );
    assert_eq!(
        status_json["quota_spent"][0]["provider"],
        json!("unpaywall"),
        "{status_json}"
    );
    // the learned rate was not dragged down: Unpaywall's is still the one configured
    let unpaywall = status_json["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == json!("unpaywall"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(unpaywall["rate"], json!(1.0), "{status_json}");
    assert_eq!(unpaywall["throttles"], json!(0), "{status_json}");

    // a rerun before the reset asks Unpaywall nothing: its works stay deferred, as quota_spent
    let (stdout, stderr, code) = run(&s).await;
    assert_eq!(s.asked.load(Ordering::SeqCst), asked, "{stdout}\n{stderr}");
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains(&line), "{stdout}\n{stderr}");
    assert_eq!(
        stderr.matches("allowance (quota) is spent").count(),
        1,
        "told once at start: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_zero_with_a_reset_hours_away() {
    spent_allowance_defers_its_works_and_says_why(Shape::RemainingZero).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openalex_credits_spent() {
    spent_allowance_defers_its_works_and_says_why(Shape::OpenAlexCredits).await;
}

/// The `--topic` search meets OpenAlex's spent credits on its second page: it stops there,
/// says why and when the allowance resets, asks no more pages, and the works of the first
/// page are still downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_search_stops_at_spent_credits_and_says_when_they_reset() {
    let sim = Simulator::start().await.unwrap();
    let first = json!({
        "meta": {"next_cursor": "page2"},
        "results": [
            {"id": "https://openalex.org/W1", "doi": "https://doi.org/10.1000/q1"},
            {"id": "https://openalex.org/W2", "doi": "https://doi.org/10.1000/q2"}
        ]
    });
    sim.on_fn("/openalex/works", move |r| {
        if r.uri.query().is_some_and(|q| q.contains("cursor=page2")) {
            spent(Shape::OpenAlexCredits)
        } else {
            Reply::json(&first)
        }
    });
    let base = sim.url("/pdf");
    sim.on_fn("/crossref/works/*", move |r| {
        let n = r.uri.path().rsplit('q').next().unwrap_or("0").to_owned();
        Reply::json(&json!({"message": {"link": [
            {"URL": format!("{base}/{n}.pdf"), "content-type": "application/pdf"}
        ]}}))
    });
    sim.on_fn("/pdf/*", |_| Reply::pdf(3000));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (openalex, crossref) = (
        format!("openalex={}", sim.url("/openalex")),
        format!("crossref={}", sim.url("/crossref")),
    );
    let done = contentdownload(
        &[
            "run",
            "--topic",
            "quota",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "doi=crossref",
            "--resolver-base",
            &openalex,
            "--resolver-base",
            &crossref,
            "--default-rate",
            "1000:100",
            "--rate",
            "crossref=1000:100",
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr),
    );
    assert_eq!(
        sim.count("/openalex/works"),
        2,
        "no page after the spent one\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("OpenAlex's allowance is spent; it resets in 3 h"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("allowance (quota) is spent").count(), 1, "{stderr}");
    assert!(stdout.contains("downloaded         2"), "{stdout}\n{stderr}");
}

mod ledger_support;

/// `status` counts the deferred works by reason with one query, on SQLite and PostgreSQL.
#[tokio::test]
async fn the_ledger_counts_deferred_works_by_reason() {
    use contentdownload::context::{IdempotencyKey, WorkId};
    use contentdownload::ledger::{JobResult, JobState, NewJob};
    use std::time::Duration;

    for t in ledger_support::backends("the_ledger_counts_deferred_works_by_reason").await {
        let l = &t.ledger;
        let reasons = [Some("quota_spent"), Some("quota_spent"), Some("rate_limited"), None];
        for (i, reason) in reasons.iter().enumerate() {
            let work = format!("W{i}");
            l.plan(&NewJob {
                run_id: "r".into(),
                work_id: WorkId::new(work.as_str()),
                key: IdempotencyKey::new(format!("k{i}")),
                canonical_url: format!("https://example.org/{i}"),
            })
            .await
            .unwrap();
            let job = l
                .lease(Some("r"), "A", 1, Duration::from_secs(60))
                .await
                .unwrap()
                .remove(0);
            let result = JobResult {
                reason: reason.map(str::to_owned),
                ..JobResult::default()
            };
            l.finish(job.id, "A", JobState::Deferred, &result).await.unwrap();
        }
        assert_eq!(
            l.reasons(JobState::Deferred).await.unwrap(),
            [
                (Some("quota_spent".to_owned()), 2),
                (None, 1),
                (Some("rate_limited".to_owned()), 1),
            ],
            "{}",
            t.name
        );
        assert!(l.reasons(JobState::Failed).await.unwrap().is_empty(), "{}", t.name);
    }
}

/// A PDF host whose allowance is spent (a content API that bills each file) is paused as a
/// resolver is: its downloads are not sent until the reset, and their works are deferred as
/// `quota_spent`, naming the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_host_with_its_allowance_spent_is_paused_too() {
    let sim = Simulator::start().await.unwrap();
    let cdn = Simulator::start().await.unwrap();
    let base = cdn.url("/content");
    sim.on_fn("/crossref/works/*", move |r| {
        let n = r.uri.path().rsplit('q').next().unwrap_or("0").to_owned();
        Reply::json(&json!({"message": {"link": [
            {"URL": format!("{base}/{n}.pdf"), "content-type": "application/pdf"}
        ]}}))
    });
    cdn.on_fn("/content/*", |_| spent(Shape::OpenAlexCredits));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    let works: Vec<String> = (1..=3)
        .map(|i| json!({"id": format!("https://openalex.org/W{i}"), "doi": format!("10.1000/q{i}")}).to_string())
        .collect();
    std::fs::write(&input, works.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let crossref = format!("crossref={}", sim.url("/crossref"));
    // one download a second from the host: the later ones wait, and meet the pause
    let cdn_rate = format!("{}=1", cdn.addr());
    let done = contentdownload(
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "doi=crossref",
            "--resolver-base",
            &crossref,
            "--default-rate",
            "1000:100",
            "--rate",
            "crossref=1000:100",
            "--rate",
            &cdn_rate,
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr),
    );
    let asked = cdn.count("/content/*");
    assert!((1..=2).contains(&asked), "asked {asked} times\n{stdout}\n{stderr}");
    assert_eq!(done.status.code(), Some(3), "{stdout}\n{stderr}");
    let line = format!("3 deferred: {} allowance spent, resets at ", cdn.addr());
    assert!(stdout.contains(&line), "{stdout}\n{stderr}");
    assert_eq!(stderr.matches("allowance (quota) is spent").count(), 1, "{stderr}");
}

/// The resolvers' own calls, without the runner: the 429 that spends the allowance fails as
/// `QuotaSpent` (sent), the next call fails the same way before sending, and the learned
/// rate is left as it was.
#[tokio::test]
async fn a_resolver_call_to_a_paused_provider_sends_nothing() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use contentdownload::context::PartitionKey;
    use contentdownload::error::QuotaSpent;
    use contentdownload::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
    use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};
    use contentdownload::resolvers::{resolver_by_name, HttpService, ResolveContext, ResolverConfig};
    use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
    use contentdownload::works::Work;
    use http_body_util::BodyExt;

    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/unpaywall/*", |_| spent(Shape::RemainingZero));
    let limiter = RateLimiter::new(RateLimitConfig::default().provider("unpaywall", Quota::new(4.0, 1))).unwrap();
    let learner = Learner::new(limiter, LearningPolicy::default()).unwrap();
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let svc = tower::ServiceBuilder::new()
        .map_response(|r: http::Response<ResponseBody>| r.map(|b| b.boxed_unsync()))
        .layer(ProviderLearningLayer::new(learner.clone()))
        .service(client);
    let cx = ResolveContext {
        http: HttpService::new(svc),
        config: Arc::new(ResolverConfig {
            mailto: Some("quota@example.org".into()),
            base_urls: BTreeMap::from([("unpaywall".to_owned(), sim.url("/unpaywall"))]),
            ..ResolverConfig::default()
        }),
        robots: None,
        learner: Some(learner.clone()),
    };
    let unpaywall = resolver_by_name("unpaywall").unwrap();
    let key = PartitionKey::new("unpaywall", sim.addr().to_string());
    for (doi, sent) in [("10.1000/a", true), ("10.1000/b", false), ("10.1000/c", false)] {
        let err = unpaywall
            .resolve(&Work::from_doi(doi).unwrap(), &cx)
            .await
            .expect_err("a spent allowance is an error, not a miss");
        let spent = err.downcast_ref::<QuotaSpent>().expect("QuotaSpent");
        assert_eq!((spent.partition.clone(), spent.sent), (key.clone(), sent), "{doi}");
        assert!(
            err.to_string()
                .contains("unpaywall's allowance is spent; it resets in 3 h"),
            "{err}"
        );
    }
    assert_eq!(sim.count("/unpaywall/*"), 1, "one request, then none");
    assert_eq!(learner.rate(&key), 4.0, "the learned rate is left as it was");
}
