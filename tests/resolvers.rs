//! Each resolver's happy path and miss, with the simulator standing in for its API.
#![cfg(feature = "simulator")]

use std::collections::BTreeMap;
use std::sync::Arc;

use contentdownload::resolvers::{
    resolver_by_name, HttpService, ResolveContext, Resolver, ResolverConfig, ResolverStatus, RESOLVER_NAMES,
};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::Work;
use http::Response;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceBuilder;

fn context(sim: &Simulator, mailto: Option<&str>) -> ResolveContext {
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let svc = ServiceBuilder::new()
        .map_response(|r: Response<ResponseBody>| r.map(|b| b.boxed_unsync()))
        .service(client);
    let base_urls: BTreeMap<String, String> = RESOLVER_NAMES
        .iter()
        .map(|n| (n.to_string(), sim.url(&format!("/{n}"))))
        .collect();
    ResolveContext {
        http: HttpService::new(svc),
        config: Arc::new(ResolverConfig {
            mailto: mailto.map(str::to_owned),
            base_urls,
            ..ResolverConfig::default()
        }),
    }
}

fn resolver(name: &str) -> Arc<dyn Resolver> {
    resolver_by_name(name).unwrap()
}

fn urls(c: &[contentdownload::works::Candidate]) -> Vec<&str> {
    c.iter().map(|c| c.url.as_str()).collect()
}

#[tokio::test]
async fn unpaywall_best_then_other_locations() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/unpaywall/v2/10.1000/hit",
        [Reply::json(&json!({
            "doi": "10.1000/hit", "is_oa": true,
            "best_oa_location": {"url_for_pdf": "https://a.example/best.pdf", "url": "https://a.example/best"},
            "oa_locations": [
                {"url_for_pdf": "https://a.example/best.pdf"},
                {"url_for_pdf": null, "url": "https://b.example/landing"},
                {"url_for_pdf": "https://c.example/repo.pdf"}
            ]
        }))],
    );
    let cx = context(&sim, Some("me@example.org"));
    let hit = resolver("unpaywall")
        .resolve(&Work::from_doi("10.1000/hit").unwrap(), &cx)
        .await
        .unwrap();
    assert_eq!(urls(&hit), ["https://a.example/best.pdf", "https://c.example/repo.pdf"]);
    let seen = &sim.requests_to("/unpaywall/*")[0];
    assert_eq!(seen.uri.query(), Some("email=me%40example.org"));
    // unknown DOI: 404 is a miss
    let miss = resolver("unpaywall")
        .resolve(&Work::from_doi("10.1000/miss").unwrap(), &cx)
        .await
        .unwrap();
    assert!(miss.is_empty());
    // without an email it refuses, clearly, before calling
    let err = resolver("unpaywall")
        .resolve(&Work::from_doi("10.1000/hit").unwrap(), &context(&sim, None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mailto"), "{err}");
    assert_eq!(sim.count("/unpaywall/*"), 2);
}

#[tokio::test]
async fn crossref_pdf_links() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/crossref/works/10.1000/x",
        [Reply::json(&json!({"status": "ok", "message": {"DOI": "10.1000/x", "link": [
            {"URL": "https://pub.example/x.xml", "content-type": "text/xml", "intended-application": "text-mining"},
            {"URL": "https://pub.example/x.pdf", "content-type": "application/pdf", "intended-application": "text-mining"}
        ]}}))],
    );
    sim.on(
        "/crossref/works/10.1000/nolinks",
        [Reply::json(
            &json!({"status": "ok", "message": {"DOI": "10.1000/nolinks"}}),
        )],
    );
    sim.on("/crossref/works/10.1000/broken", [Reply::ok().body("{not json")]);
    sim.on("/crossref/works/10.1000/down", [Reply::status(500)]);
    let cx = context(&sim, Some("me@example.org"));
    let r = resolver("crossref");
    let hit = r.resolve(&Work::from_doi("10.1000/x").unwrap(), &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://pub.example/x.pdf"]);
    assert_eq!(
        sim.requests_to("/crossref/*")[0].uri.query(),
        Some("mailto=me%40example.org")
    );
    assert!(r
        .resolve(&Work::from_doi("10.1000/nolinks").unwrap(), &cx)
        .await
        .unwrap()
        .is_empty());
    let err = r
        .resolve(&Work::from_doi("10.1000/broken").unwrap(), &cx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unreadable"), "{err}");
    let err = r
        .resolve(&Work::from_doi("10.1000/down").unwrap(), &cx)
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<ResolverStatus>().map(|s| s.status.as_u16()),
        Some(500)
    );
}

#[tokio::test]
async fn arxiv_and_openalex_need_no_call() {
    let sim = Simulator::start().await.unwrap();
    let cx = context(&sim, None);
    let hit = resolver("arxiv")
        .resolve(&Work::from_doi("10.48550/arXiv.1706.03762").unwrap(), &cx)
        .await
        .unwrap();
    assert_eq!(urls(&hit), [sim.url("/arxiv/pdf/1706.03762").as_str()]);
    assert!(resolver("arxiv")
        .resolve(&Work::from_doi("10.1000/x").unwrap(), &cx)
        .await
        .unwrap()
        .is_empty());
    let record = json!({"id": "https://openalex.org/W1", "primary_location": {"landing_page_url": "https://l.example/a"},
        "best_oa_location": {"pdf_url": "https://l.example/a.pdf"}});
    let work = Work::from_openalex(&record).unwrap();
    let hit = resolver("openalex").resolve(&work, &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://l.example/a.pdf", "https://l.example/a"]);
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn europe_pmc_full_text_pdfs() {
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/europe_pmc/search", |req| {
        let q = req.uri.query().unwrap_or_default().to_owned();
        if q.contains("10.1000%2Fhit") {
            Reply::json(&json!({"hitCount": 1, "resultList": {"result": [{"pmcid": "PMC1", "fullTextUrlList": {"fullTextUrl": [
                {"availability": "Open access", "documentStyle": "html", "site": "Europe_PMC", "url": "https://europepmc.org/articles/PMC1"},
                {"availability": "Open access", "documentStyle": "pdf", "site": "Europe_PMC", "url": "https://europepmc.org/articles/PMC1?pdf=render"},
                {"availability": "Subscription required", "documentStyle": "pdf", "site": "DOI", "url": "https://paywall.example/x.pdf"}
            ]}}]}}))
        } else {
            Reply::json(&json!({"hitCount": 0, "resultList": {"result": []}}))
        }
    });
    let cx = context(&sim, None);
    let r = resolver("europe_pmc");
    let hit = r.resolve(&Work::from_doi("10.1000/hit").unwrap(), &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://europepmc.org/articles/PMC1?pdf=render"]);
    assert!(r
        .resolve(&Work::from_doi("10.1000/miss").unwrap(), &cx)
        .await
        .unwrap()
        .is_empty());
    let q = sim.requests_to("/europe_pmc/search")[0].uri.query().unwrap().to_owned();
    assert!(
        q.contains("query=DOI%3A%2210.1000%2Fhit%22") && q.contains("format=json"),
        "{q}"
    );
}

#[tokio::test]
async fn pmc_converts_the_doi_then_reads_the_oa_service() {
    let sim = Simulator::start().await.unwrap();
    sim.on_fn("/pmc/idconv/v1.0/", |req| {
        if req.uri.query().unwrap_or_default().contains("10.1000%2Fhit") {
            Reply::json(&json!({"status": "ok", "records": [{"doi": "10.1000/hit", "pmcid": "PMC5815332"}]}))
        } else {
            Reply::json(&json!({"status": "ok", "records": [{"doi": "10.1000/miss", "status": "error"}]}))
        }
    });
    sim.on(
        "/pmc/oa/oa.fcgi",
        [Reply::ok().header("content-type", "text/xml").body(
            r#"<?xml version="1.0"?><OA><records returned-count="1"><record id="PMC5815332" license="CC BY">
            <link format="tgz" href="ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/x.tar.gz" />
            <link format="pdf" href="ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_pdf/x.pdf" /></record></records></OA>"#,
        )],
    );
    let cx = context(&sim, None);
    let r = resolver("pmc");
    let hit = r.resolve(&Work::from_doi("10.1000/hit").unwrap(), &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_pdf/x.pdf"]);
    assert_eq!(sim.requests_to("/pmc/oa/oa.fcgi")[0].uri.query(), Some("id=PMC5815332"));
    assert!(r
        .resolve(&Work::from_doi("10.1000/miss").unwrap(), &cx)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        sim.count("/pmc/oa/oa.fcgi"),
        1,
        "a miss at the converter makes no OA call"
    );
}

#[tokio::test]
async fn landing_page_citation_pdf_url_after_redirects() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/landing/10.1000/hit", [Reply::redirect(302, "/journal/article/7")]);
    sim.on(
        "/journal/article/7",
        [Reply::ok().header("content-type", "text/html").body(
            r#"<html><head><meta name="citation_title" content="T"><meta name="citation_pdf_url" content="/journal/article/7.pdf"></head></html>"#,
        )],
    );
    sim.on(
        "/landing/10.1000/plain",
        [Reply::ok().body("<html><head></head></html>")],
    );
    let cx = context(&sim, None);
    let r = resolver("landing");
    let hit = r.resolve(&Work::from_doi("10.1000/hit").unwrap(), &cx).await.unwrap();
    assert_eq!(urls(&hit), [sim.url("/journal/article/7.pdf").as_str()]);
    assert!(r
        .resolve(&Work::from_doi("10.1000/plain").unwrap(), &cx)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn wayback_raw_snapshot() {
    let sim = Simulator::start().await.unwrap();
    let snap = sim.url("/web/20200101000000/https://gone.example/x.pdf");
    sim.on_fn("/wayback/wayback/available", move |req| {
        if req.uri.query().unwrap_or_default().contains("gone.example") {
            Reply::json(&json!({"archived_snapshots": {"closest": {"available": true, "status": "200", "url": snap, "timestamp": "20200101000000"}}}))
        } else {
            Reply::json(&json!({"archived_snapshots": {}}))
        }
    });
    let cx = context(&sim, None);
    let record =
        json!({"id": "https://openalex.org/W9", "best_oa_location": {"pdf_url": "https://gone.example/x.pdf"}});
    let hit = resolver("wayback")
        .resolve(&Work::from_openalex(&record).unwrap(), &cx)
        .await
        .unwrap();
    assert_eq!(
        urls(&hit),
        [sim.url("/web/20200101000000id_/https://gone.example/x.pdf").as_str()]
    );
    let miss = resolver("wayback")
        .resolve(&Work::from_doi("10.1000/none").unwrap(), &cx)
        .await
        .unwrap();
    assert!(miss.is_empty());
}
