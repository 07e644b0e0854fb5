//! robots.txt for the landing pages we scrape, against the simulator on 127.0.0.1: a
//! refused page is not fetched, robots.txt is fetched once per origin, a 404 allows and a
//! server error refuses, `Crawl-delay` spaces the pages, `--ignore-robots` opts out, and
//! PDF URLs from APIs are never gated.
#![cfg(feature = "simulator")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use contentdownload::context::OperationType;
use contentdownload::download::DownloadOptions;
use contentdownload::manifest::{read_manifest, ManifestRecord, Outcome, MANIFEST_FILE};
use contentdownload::pipeline::{Fallback, FallbackConfig, FetchEnv, FetchResult, TriedUrls};
use contentdownload::reason::ReasonCode;
use contentdownload::resolvers::{HttpService, ResolveContext, ResolverConfig, RobotsTxt};
use contentdownload::service::{Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::Work;
use serde_json::json;

mod bin_support;
use bin_support::contentdownload;

struct Env {
    cx: ResolveContext,
    download: HttpService,
    out: tempfile::TempDir,
    tried: TriedUrls,
    options: DownloadOptions,
}

impl Env {
    /// The landing resolver on `landing_base`, robots.txt honoured (or not), one stack.
    fn new(landing_base: &str, robots: bool) -> Env {
        let stack = Stack::new(&StackConfig::default()).unwrap();
        let base_urls = BTreeMap::from([("landing".to_owned(), landing_base.to_owned())]);
        Env {
            cx: ResolveContext {
                http: stack.service(OperationType::Resolve),
                config: Arc::new(ResolverConfig {
                    base_urls,
                    ..ResolverConfig::default()
                }),
                robots: robots.then(|| Arc::new(RobotsTxt::new(Some(stack.limiter().clone())))),
                learner: None,
            },
            download: stack.service(OperationType::Download),
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

fn fallback(tier: &str) -> Fallback {
    Fallback::new(FallbackConfig {
        tiers: vec![FallbackConfig::parse_tier(tier).unwrap()],
        ..FallbackConfig::default()
    })
    .unwrap()
}

/// A landing page naming `pdf` as its `citation_pdf_url`.
fn page(pdf: &str) -> Reply {
    Reply::ok().header("content-type", "text/html").body(format!(
        r#"<html><head><meta name="citation_pdf_url" content="{pdf}"></head></html>"#
    ))
}

fn reason(result: &FetchResult) -> Option<ReasonCode> {
    match result {
        FetchResult::Failed { reason, .. } | FetchResult::Deferred { reason, .. } => Some(*reason),
        FetchResult::Downloaded { .. } => None,
    }
}

fn robots(txt: &str) -> Reply {
    Reply::ok().header("content-type", "text/plain").body(txt.to_owned())
}

#[tokio::test]
async fn a_disallowed_landing_page_is_not_fetched_and_an_allowed_one_is() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/robots.txt",
        [robots(
            "User-agent: *\nDisallow: /\n\nUser-agent: contentdownload\nDisallow: /landing/10.1000/\nAllow: /landing/10.1000/open\n",
        )],
    );
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let env = Env::new(&sim.url("/landing"), true);
    let fb = fallback("page=landing");

    let refused = fb
        .fetch(&Work::from_doi("10.1000/closed").unwrap(), env.fetch_env())
        .await;
    assert_eq!(reason(&refused), Some(ReasonCode::RobotsDisallowed), "{refused:?}");
    match &refused {
        FetchResult::Failed { detail, .. } => assert!(detail.contains("robots.txt"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.count("/landing/*"), 0, "the refused page was not requested");

    let allowed = fb
        .fetch(&Work::from_doi("10.1000/open").unwrap(), env.fetch_env())
        .await;
    assert!(matches!(allowed, FetchResult::Downloaded { .. }), "{allowed:?}");
    assert_eq!(sim.count("/landing/*"), 1);
    assert_eq!(sim.count("/robots.txt"), 1, "one fetch for the origin");
    // the robots.txt request said who we are
    let seen = &sim.requests_to("/robots.txt")[0];
    assert!(seen
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("contentdownload/")));
}

#[tokio::test]
async fn robots_txt_is_fetched_once_for_many_works_at_once() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/robots.txt",
        [robots("User-agent: *\nDisallow: /private/\n").delay(Duration::from_millis(200))],
    );
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let env = Env::new(&sim.url("/landing"), true);
    let fb = fallback("page=landing");
    let works: Vec<Work> = (0..12)
        .map(|i| Work::from_doi(&format!("10.1000/w{i}")).unwrap())
        .collect();
    // all of them ask while the one robots.txt fetch is in flight
    let results = futures_util::future::join_all(works.iter().map(|w| fb.fetch(w, env.fetch_env()))).await;
    for r in &results {
        // each work has its own file stem but one PDF URL: the first download wins it, the
        // others find it tried; what matters here is that none was refused by robots.txt
        assert_ne!(reason(r), Some(ReasonCode::RobotsDisallowed), "{r:?}");
    }
    assert_eq!(sim.count("/landing/*"), 12);
    assert_eq!(sim.count("/robots.txt"), 1);
    assert_eq!(env.cx.robots.as_ref().unwrap().origins(), 1);
}

#[tokio::test]
async fn a_missing_robots_txt_allows_everything() {
    let sim = Simulator::start().await.unwrap();
    // no script for /robots.txt: the simulator answers 404
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let env = Env::new(&sim.url("/landing"), true);
    let got = fallback("page=landing")
        .fetch(&Work::from_doi("10.1000/a").unwrap(), env.fetch_env())
        .await;
    assert!(matches!(got, FetchResult::Downloaded { .. }), "{got:?}");
    assert_eq!(sim.count("/robots.txt"), 1);
    assert_eq!(sim.count("/landing/*"), 1);
}

#[tokio::test]
async fn only_the_first_500_kib_of_robots_txt_are_read() {
    let sim = Simulator::start().await.unwrap();
    // a rule after 600 KiB of comment is past the cap (RFC 9309 §2.5): not read
    let txt = format!("User-agent: *\n#{}\nDisallow: /\n", "x".repeat(600 * 1024));
    sim.on("/robots.txt", [robots(&txt)]);
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let env = Env::new(&sim.url("/landing"), true);
    let got = fallback("page=landing")
        .fetch(&Work::from_doi("10.1000/a").unwrap(), env.fetch_env())
        .await;
    assert!(matches!(got, FetchResult::Downloaded { .. }), "{got:?}");
    assert_eq!(sim.count("/landing/*"), 1);
}

#[tokio::test]
async fn a_server_error_on_robots_txt_disallows_the_origin_for_the_run() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/robots.txt", [Reply::status(500)]);
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    let env = Env::new(&sim.url("/landing"), true);
    let fb = fallback("page=landing");
    let first = fb.fetch(&Work::from_doi("10.1000/a").unwrap(), env.fetch_env()).await;
    assert_eq!(reason(&first), Some(ReasonCode::RobotsDisallowed), "{first:?}");
    let asked = sim.count("/robots.txt");
    assert!(asked >= 1, "fetched (with the stack's retries)");
    let second = fb.fetch(&Work::from_doi("10.1000/b").unwrap(), env.fetch_env()).await;
    assert_eq!(reason(&second), Some(ReasonCode::RobotsDisallowed), "{second:?}");
    assert_eq!(sim.count("/robots.txt"), asked, "the answer is kept for the run");
    assert_eq!(sim.count("/landing/*"), 0);
}

#[tokio::test]
async fn a_crawl_delay_spaces_the_landing_pages() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/robots.txt", [robots("User-agent: *\nCrawl-delay: 2\n")]);
    // the pages name no PDF: only the landing fetches are timed
    sim.on(
        "/landing/*",
        [Reply::ok().header("content-type", "text/html").body("<html></html>")],
    );
    let env = Env::new(&sim.url("/landing"), true);
    let fb = fallback("page=landing");
    let works: Vec<Work> = (0..3)
        .map(|i| Work::from_doi(&format!("10.1000/w{i}")).unwrap())
        .collect();
    let results = futures_util::future::join_all(works.iter().map(|w| fb.fetch(w, env.fetch_env()))).await;
    for r in &results {
        assert_eq!(reason(r), Some(ReasonCode::NoCandidates), "{r:?}");
    }
    let mut at: Vec<_> = sim.requests_to("/landing/*").iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 3);
    at.sort();
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(1_900), "landing pages {gap:?} apart");
    }
}

#[tokio::test]
async fn a_page_reached_by_redirect_is_not_read_when_its_site_disallows_it() {
    let publisher = Simulator::start().await.unwrap();
    publisher.on(
        "/robots.txt",
        [robots("User-agent: contentdownload\nDisallow: /article/\n")],
    );
    publisher.on("/article/*", [page(&publisher.url("/pdf/x.pdf"))]);
    publisher.on("/pdf/*", [Reply::pdf(5_000)]);
    let resolver = Simulator::start().await.unwrap();
    resolver.on("/doi/*", [Reply::redirect(302, &publisher.url("/article/1"))]);
    let env = Env::new(&resolver.url("/doi"), true);
    let got = fallback("page=landing")
        .fetch(&Work::from_doi("10.1000/a").unwrap(), env.fetch_env())
        .await;
    assert_eq!(reason(&got), Some(ReasonCode::RobotsDisallowed), "{got:?}");
    assert_eq!(publisher.count("/robots.txt"), 1);
    assert_eq!(resolver.count("/robots.txt"), 1);
    assert_eq!(publisher.count("/pdf/*"), 0, "the page's PDF link was not used");
}

#[tokio::test]
async fn pdf_urls_from_apis_are_not_gated() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/robots.txt", [robots("User-agent: *\nDisallow: /\n")]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let env = Env::new(&sim.url("/landing"), true);
    let work = Work::from_openalex(&json!({
        "id": "https://openalex.org/W1",
        "best_oa_location": {"pdf_url": sim.url("/pdf/1.pdf")}
    }))
    .unwrap();
    let got = fallback("direct=openalex").fetch(&work, env.fetch_env()).await;
    assert!(matches!(got, FetchResult::Downloaded { .. }), "{got:?}");
    assert_eq!(sim.count("/robots.txt"), 0);
}

fn outcome(out: &Path) -> (Option<Outcome>, Option<ReasonCode>) {
    let (lines, _) = read_manifest(&out.join(MANIFEST_FILE)).unwrap();
    let works: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.record {
            ManifestRecord::Work(w) => Some((w.outcome, w.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(works.len(), 1, "{works:?}");
    works[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_honours_robots_unless_told_to_ignore_them() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/robots.txt", [robots("User-agent: *\nDisallow: /\n")]);
    sim.on("/landing/*", [page(&sim.url("/pdf/x.pdf"))]);
    sim.on("/pdf/*", [Reply::pdf(5_000)]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("works.jsonl");
    std::fs::write(
        &input,
        json!({"id": "https://openalex.org/W9", "doi": "https://doi.org/10.1000/x"}).to_string() + "\n",
    )
    .unwrap();
    let base = format!("landing={}", sim.url("/landing"));
    let rate = format!("{}=1000:100", sim.addr());
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--input",
            input.to_str().unwrap(),
            "--quiet",
            "--fallback-tier",
            "page=landing",
            "--resolver-base",
            &base,
            "--rate",
            &rate,
            "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    let honoured = dir.path().join("honoured");
    let args = run(&honoured, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    contentdownload(&args, &[]).await;
    assert_eq!(
        outcome(&honoured),
        (Some(Outcome::Failed), Some(ReasonCode::RobotsDisallowed))
    );
    assert_eq!(sim.count("/landing/*"), 0);

    let flag = dir.path().join("flag");
    let args = run(&flag, &["--ignore-robots"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = contentdownload(&args, &[]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(outcome(&flag).0, Some(Outcome::Downloaded));
    assert_eq!(sim.count("/landing/*"), 1);

    let env = dir.path().join("env");
    let args = run(&env, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let done = contentdownload(&args, &[("DOCSTOKG_IGNORE_ROBOTS", "1")]).await;
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(outcome(&env).0, Some(Outcome::Downloaded));
    assert_eq!(
        sim.count("/robots.txt"),
        1,
        "only the run that honours robots.txt asks for it"
    );
}

/// A site that cannot be reached: its page is not fetched, and the work fails with the
/// connect error (a later run may reach it), not with a `robots_disallowed` that hides it.
#[tokio::test]
async fn an_unreachable_site_fails_with_its_connect_error_not_robots() {
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/landing", closed.local_addr().unwrap());
    drop(closed);
    let env = Env::new(&base, true);
    let fb = fallback("page=landing");
    let result = fb.fetch(&Work::from_doi("10.1000/a").unwrap(), env.fetch_env()).await;
    assert_eq!(reason(&result), Some(ReasonCode::ConnectError), "{result:?}");
}
