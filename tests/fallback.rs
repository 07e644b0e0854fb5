//! The per-work fallback against the simulator standing in for resolvers and PDF hosts.
#![cfg(feature = "simulator")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use contentdownload::download::{DownloadOptions, PARTIAL_DIR};
use contentdownload::pipeline::{
    Fallback, FallbackConfig, FetchEnv, FetchResult, TierConfig, TriedUrls, WAIT_FOR_BETTER,
};
use contentdownload::reason::ReasonCode;
use contentdownload::resolvers::{HttpService, ResolveContext, ResolverConfig, RESOLVER_NAMES};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{BodySpec, Reply, Simulator};
use contentdownload::works::Work;
use http::Response;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceBuilder;

fn http() -> HttpService {
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    HttpService::new(
        ServiceBuilder::new()
            .map_response(|r: Response<ResponseBody>| r.map(|b| b.boxed_unsync()))
            .service(client),
    )
}

fn resolve_cx(sim: &Simulator) -> ResolveContext {
    let base_urls: BTreeMap<String, String> = RESOLVER_NAMES
        .iter()
        .map(|n| (n.to_string(), sim.url(&format!("/{n}"))))
        .collect();
    ResolveContext {
        http: http(),
        config: Arc::new(ResolverConfig {
            mailto: Some("me@example.org".into()),
            base_urls,
            ..ResolverConfig::default()
        }),
        robots: None,
        learner: None,
    }
}

struct Env {
    cx: ResolveContext,
    download: HttpService,
    out: tempfile::TempDir,
    tried: TriedUrls,
    options: DownloadOptions,
}

impl Env {
    fn new(sim: &Simulator) -> Env {
        Env {
            cx: resolve_cx(sim),
            download: http(),
            out: tempfile::tempdir().unwrap(),
            tried: TriedUrls::default(),
            options: DownloadOptions::default(),
        }
    }

    fn fetch_env(&self) -> FetchEnv<'_> {
        FetchEnv {
            resolve: &self.cx,
            download: &self.download,
            out_dir: self.out.path(),
            tried: &self.tried,
            options: &self.options,
        }
    }
}

/// One tier with only the URLs already in the record: no resolver calls to count.
fn only_openalex() -> FallbackConfig {
    FallbackConfig {
        tiers: vec![FallbackConfig::parse_tier("only=openalex").unwrap()],
        ..FallbackConfig::default()
    }
}

fn partials(out: &Path) -> usize {
    std::fs::read_dir(out.join(PARTIAL_DIR)).map_or(0, |d| d.count())
}

fn openalex_work(id: &str, pdfs: &[String]) -> Work {
    let locations: Vec<_> = pdfs.iter().map(|u| json!({"pdf_url": u})).collect();
    Work::from_openalex(
        &json!({"id": format!("https://openalex.org/{id}"), "doi": "10.1000/x", "locations": locations}),
    )
    .unwrap()
}

#[tokio::test]
async fn a_miss_falls_back_to_the_next_tier() {
    let sim = Simulator::start().await.unwrap();
    // direct_oa: unpaywall does not know the DOI (404); doi tier: crossref has a PDF link
    sim.on(
        "/crossref/works/10.1000%2Fx",
        [Reply::json(
            &json!({"message": {"link": [{"URL": sim.url("/pub/x.pdf"), "content-type": "application/pdf"}]}}),
        )],
    );
    sim.on("/pub/x.pdf", [Reply::pdf(20_000)]);
    let env = Env::new(&sim);
    let fallback = Fallback::new(FallbackConfig::default()).unwrap();
    let work = Work::from_doi("10.1000/x").unwrap();
    match fallback.fetch(&work, env.fetch_env()).await {
        FetchResult::Downloaded {
            file,
            candidate,
            attempts,
        } => {
            assert_eq!(candidate.resolver, "crossref");
            assert_eq!(attempts, 1);
            assert_eq!(file.bytes, 20_000);
            assert!(file.path.starts_with(env.out.path()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.count("/unpaywall/*"), 1);
    assert_eq!(
        sim.count("/wayback/*"),
        0,
        "the archive tier is not reached after a success"
    );
}

#[tokio::test]
async fn html_as_pdf_is_rejected_and_the_next_candidate_wins() {
    let sim = Simulator::start().await.unwrap();
    let page = "<html><body>Access denied</body></html>".repeat(100);
    sim.on(
        "/a.pdf",
        [Reply::ok().header("content-type", "application/pdf").body(page)],
    );
    sim.on("/b.pdf", [Reply::pdf(5_000)]);
    let env = Env::new(&sim);
    let config = FallbackConfig {
        tiers: only_openalex().tiers,
        max_concurrent: 1,
        ..FallbackConfig::default()
    };
    let work = openalex_work("W1", &[sim.url("/a.pdf"), sim.url("/b.pdf")]);
    let result = Fallback::new(config).unwrap().fetch(&work, env.fetch_env()).await;
    assert!(
        matches!(result, FetchResult::Downloaded { ref candidate, attempts: 2, .. } if candidate.url.ends_with("/b.pdf")),
        "{result:?}"
    );

    // alone, the HTML candidate fails with its reason
    let env = Env::new(&sim);
    let config = only_openalex();
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&openalex_work("W2", &[sim.url("/a.pdf")]), env.fetch_env())
        .await;
    assert!(
        matches!(
            result,
            FetchResult::Failed {
                reason: ReasonCode::HtmlLandingPage,
                ..
            }
        ),
        "{result:?}"
    );
    assert_eq!(partials(env.out.path()), 0);
}

#[tokio::test]
async fn a_truncated_body_is_retried_then_succeeds() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/cut.pdf",
        [
            Reply::ok().body_spec(BodySpec::Truncated {
                declared: 90_000,
                sent: 30_000,
            }),
            Reply::pdf(30_000),
        ],
    );
    let env = Env::new(&sim);
    let config = only_openalex();
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&openalex_work("W3", &[sim.url("/cut.pdf")]), env.fetch_env())
        .await;
    assert!(
        matches!(result, FetchResult::Downloaded { attempts: 1, .. }),
        "{result:?}"
    );
    assert_eq!(sim.count("/cut.pdf"), 2);
}

#[tokio::test]
async fn a_url_is_not_tried_twice_in_a_run() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/shared.pdf", [Reply::status(404)]);
    let env = Env::new(&sim);
    let config = only_openalex();
    let fallback = Fallback::new(config).unwrap();
    let first = fallback
        .fetch(&openalex_work("W4", &[sim.url("/shared.pdf")]), env.fetch_env())
        .await;
    assert!(
        matches!(
            first,
            FetchResult::Failed {
                reason: ReasonCode::HttpStatus,
                ..
            }
        ),
        "{first:?}"
    );
    let second = fallback
        .fetch(&openalex_work("W5", &[sim.url("/shared.pdf")]), env.fetch_env())
        .await;
    assert!(
        matches!(
            second,
            FetchResult::Failed {
                reason: ReasonCode::AllCandidatesFailed,
                attempts: 0,
                ..
            }
        ),
        "{second:?}"
    );
    assert_eq!(sim.count("/shared.pdf"), 1);
}

#[tokio::test]
async fn the_attempt_budget_is_kept() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/bad/*", [Reply::status(404)]);
    let env = Env::new(&sim);
    let config = FallbackConfig {
        tiers: only_openalex().tiers,
        max_attempts: 2,
        ..FallbackConfig::default()
    };
    let urls: Vec<String> = (0..5).map(|i| sim.url(&format!("/bad/{i}.pdf"))).collect();
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&openalex_work("W6", &urls), env.fetch_env())
        .await;
    assert!(matches!(result, FetchResult::Failed { attempts: 2, .. }), "{result:?}");
    assert_eq!(sim.count("/bad/*"), 2);
}

/// Of two valid PDFs the better ranked wins, not the first to finish: here the first of the
/// answer's candidates, which finishes last (and the other's staged file is deleted).
#[tokio::test(start_paused = true)]
async fn the_better_ranked_pdf_wins_though_it_finishes_last() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/first.pdf", [Reply::pdf(9_000).delay(Duration::from_millis(500))]);
    sim.on("/second.pdf", [Reply::pdf(8_000).delay(Duration::from_millis(50))]);
    let env = Env::new(&sim);
    let work = openalex_work("W7", &[sim.url("/first.pdf"), sim.url("/second.pdf")]);
    let result = Fallback::new(only_openalex())
        .unwrap()
        .fetch(&work, env.fetch_env())
        .await;
    assert!(
        matches!(result, FetchResult::Downloaded { ref candidate, ref file, .. }
            if candidate.url.ends_with("/first.pdf") && file.bytes == 9_000),
        "{result:?}"
    );
    assert_eq!(sim.count("/second.pdf"), 1, "both ran at once");
    assert_eq!(partials(env.out.path()), 0, "the loser's staged file is deleted");
}

/// Within a tier the publisher's copy (Crossref's link) wins over a repository's (CORE's),
/// whichever finishes first and whatever the tier's order.
#[tokio::test(start_paused = true)]
async fn the_publishers_version_wins_over_a_repository_copy() {
    for (publisher_delay, repository_delay) in [(500, 10), (10, 500)] {
        let sim = Simulator::start().await.unwrap();
        sim.on(
            "/crossref/works/10.1000%2Fx",
            [Reply::json(
                &json!({"message": {"link": [{"URL": sim.url("/pub/x.pdf"), "content-type": "application/pdf"}]}}),
            )],
        );
        sim.on(
            "/core/*",
            [Reply::json(
                &json!({"totalHits": 1, "results": [{"doi": "10.1000/x", "downloadUrl": sim.url("/repo/x.pdf")}]}),
            )],
        );
        sim.on(
            "/pub/x.pdf",
            [Reply::pdf(7_000).delay(Duration::from_millis(publisher_delay))],
        );
        sim.on(
            "/repo/x.pdf",
            [Reply::pdf(6_000).delay(Duration::from_millis(repository_delay))],
        );
        let mut env = Env::new(&sim);
        let mut config = (*env.cx.config).clone();
        config.api_keys.insert("core", "k").unwrap();
        env.cx.config = Arc::new(config);
        let fallback = Fallback::new(FallbackConfig {
            tiers: vec![FallbackConfig::parse_tier("one=core,crossref:parallel=2").unwrap()],
            ..FallbackConfig::default()
        })
        .unwrap();
        let work = Work::from_doi("10.1000/x").unwrap();
        let result = fallback.fetch(&work, env.fetch_env()).await;
        assert!(
            matches!(result, FetchResult::Downloaded { ref candidate, .. } if candidate.resolver == "crossref"),
            "publisher {publisher_delay} ms, repository {repository_delay} ms: {result:?}"
        );
        assert_eq!(sim.count("/repo/x.pdf"), 1, "both were tried");
        assert_eq!(partials(env.out.path()), 0);
    }
}

/// A better-ranked candidate that stalls is waited for at most `WAIT_FOR_BETTER` (10 s)
/// once a valid PDF is in hand; then the PDF in hand wins, and the stalled one leaves no
/// partial file.
#[tokio::test(start_paused = true)]
async fn a_stalled_better_candidate_is_waited_for_then_the_next_wins() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/slow.pdf", [Reply::ok().body_spec(BodySpec::StallAfter { sent: 100 })]);
    sim.on("/fast.pdf", [Reply::pdf(8_000).delay(Duration::from_millis(50))]);
    let env = Env::new(&sim);
    let work = openalex_work("W7", &[sim.url("/slow.pdf"), sim.url("/fast.pdf")]);
    let started = tokio::time::Instant::now();
    let result = Fallback::new(only_openalex())
        .unwrap()
        .fetch(&work, env.fetch_env())
        .await;
    assert!(
        matches!(result, FetchResult::Downloaded { ref candidate, .. } if candidate.url.ends_with("/fast.pdf")),
        "{result:?}"
    );
    // (the paused clock: virtual time, no real wait)
    let waited = started.elapsed();
    assert!(
        waited >= WAIT_FOR_BETTER && waited < WAIT_FOR_BETTER + Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(sim.count("/slow.pdf"), 1, "both ran at once");
    assert_eq!(
        partials(env.out.path()),
        0,
        "the stalled candidate left no partial file"
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_budget_is_kept() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/stuck.pdf", [Reply::ok().stall()]);
    let env = Env::new(&sim);
    let config = FallbackConfig {
        tiers: vec![TierConfig {
            name: "t".into(),
            resolvers: vec!["openalex".into()],
            parallel: 1,
        }],
        total_timeout_ms: 5_000,
        ..FallbackConfig::default()
    };
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&openalex_work("W8", &[sim.url("/stuck.pdf")]), env.fetch_env())
        .await;
    assert!(
        matches!(
            result,
            FetchResult::Failed {
                reason: ReasonCode::BudgetExhausted,
                ..
            }
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn no_candidates_anywhere() {
    let sim = Simulator::start().await.unwrap();
    let env = Env::new(&sim);
    let config = FallbackConfig {
        disable_wayback: true,
        ..FallbackConfig::default()
    };
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&Work::from_doi("10.1000/none").unwrap(), env.fetch_env())
        .await;
    assert!(
        matches!(
            result,
            FetchResult::Failed {
                reason: ReasonCode::NoCandidates,
                attempts: 0,
                ..
            }
        ),
        "{result:?}"
    );
    assert_eq!(sim.count("/wayback/*"), 0, "wayback disabled");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_resolver_fails_over_to_the_next_one() {
    use contentdownload::service::{Stack, StackConfig};
    let sim = Simulator::start().await.unwrap();
    // unpaywall is throttling; crossref knows a PDF
    sim.on("/unpaywall/*", [Reply::status(429)]);
    sim.on(
        "/crossref/works/10.1000%2Fx",
        [Reply::json(
            &json!({"message": {"link": [{"URL": sim.url("/pub/x.pdf"), "content-type": "application/pdf"}]}}),
        )],
    );
    sim.on("/pub/x.pdf", [Reply::pdf(5_000)]);
    let stack = Stack::new(&StackConfig::default()).unwrap();
    let mut env = Env::new(&sim);
    env.cx.http = stack.service(contentdownload::context::OperationType::Resolve);
    env.download = stack.service(contentdownload::context::OperationType::Download);
    let config = FallbackConfig {
        tiers: vec![FallbackConfig::parse_tier("t=unpaywall,crossref").unwrap()],
        ..FallbackConfig::default()
    };
    let result = Fallback::new(config)
        .unwrap()
        .fetch(&Work::from_doi("10.1000/x").unwrap(), env.fetch_env())
        .await;
    assert!(
        matches!(result, FetchResult::Downloaded { ref candidate, .. } if candidate.resolver == "crossref"),
        "{result:?}"
    );
    assert_eq!(
        sim.count("/unpaywall/*"),
        1,
        "a Resolve 429 fails over at once, no retry"
    );
}
