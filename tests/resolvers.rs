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
        robots: None,
        learner: None,
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
        "/unpaywall/v2/10.1000%2Fhit",
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
        "/crossref/works/10.1000%2Fx",
        [Reply::json(&json!({"status": "ok", "message": {"DOI": "10.1000/x", "link": [
            {"URL": "https://pub.example/x.xml", "content-type": "text/xml", "intended-application": "text-mining"},
            {"URL": "https://pub.example/x.pdf", "content-type": "application/pdf", "intended-application": "text-mining"}
        ]}}))],
    );
    sim.on(
        "/crossref/works/10.1000%2Fnolinks",
        [Reply::json(
            &json!({"status": "ok", "message": {"DOI": "10.1000/nolinks"}}),
        )],
    );
    sim.on("/crossref/works/10.1000%2Fbroken", [Reply::ok().body("{not json")]);
    sim.on("/crossref/works/10.1000%2Fdown", [Reply::status(500)]);
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
            Reply::json(&json!({"hitCount": 1, "resultList": {"result": [{"pmcid": "PMC1", "doi": "10.1000/HIT", "fullTextUrlList": {"fullTextUrl": [
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

#[tokio::test]
async fn a_doi_with_dot_segments_stays_one_encoded_path_segment() {
    let sim = Simulator::start().await.unwrap();
    let evil = json!({
        "message": {"link": [{"URL": "https://evil.example/p.pdf", "content-type": "application/pdf"}]},
        "best_oa_location": {"url_for_pdf": "https://evil.example/p.pdf"}
    });
    // where `10.1234/../../etc/passwd` led before: the answer there must never be asked for
    for path in [
        "/crossref/etc/passwd",
        "/unpaywall/etc/passwd",
        "/etc/passwd",
        "/crossref/*",
        "/unpaywall/*",
    ] {
        sim.on(path, [Reply::json(&evil)]);
    }
    sim.on(
        "/crossref/works/10.1234%2F..%2F..%2Fetc%2Fpasswd",
        [Reply::json(
            &json!({"message": {"link": [{"URL": "https://pub.example/right.pdf", "content-type": "application/pdf"}]}}),
        )],
    );
    sim.on(
        "/unpaywall/v2/10.1234%2F..%2F..%2Fetc%2Fpasswd",
        [Reply::json(
            &json!({"best_oa_location": {"url_for_pdf": "https://oa.example/right.pdf"}}),
        )],
    );
    let cx = context(&sim, Some("me@example.org"));
    let work = Work::from_doi("10.1234/../../etc/passwd").unwrap();
    let hit = resolver("crossref").resolve(&work, &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://pub.example/right.pdf"]);
    let hit = resolver("unpaywall").resolve(&work, &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://oa.example/right.pdf"]);
    let paths: Vec<String> = sim.requests().iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(
        paths,
        [
            "/crossref/works/10.1234%2F..%2F..%2Fetc%2Fpasswd",
            "/unpaywall/v2/10.1234%2F..%2F..%2Fetc%2Fpasswd"
        ]
    );

    // the DOI proxy keeps the DOI's `/`: a `..` part is refused before any request
    let err = resolver("landing").resolve(&work, &cx).await.unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
    // an arXiv id that would climb out of /pdf/ gives no candidate
    let mut w = Work::from_doi("10.1000/x").unwrap();
    w.arxiv_id = Some("../../etc/passwd".into());
    assert!(resolver("arxiv").resolve(&w, &cx).await.unwrap().is_empty());
    assert_eq!(sim.requests().len(), 2, "no other request was sent");
}

#[tokio::test]
async fn nulls_in_answers_are_read_as_nothing() {
    let sim = Simulator::start().await.unwrap();
    // the issue's case: "oa_locations": null made the whole answer unreadable
    sim.on(
        "/unpaywall/v2/10.1000%2Fbest",
        [Reply::json(
            &json!({"best_oa_location": {"url_for_pdf": "https://a.example/best.pdf", "url": null}, "oa_locations": null}),
        )],
    );
    sim.on(
        "/unpaywall/v2/10.1000%2Fnone",
        [Reply::json(
            &json!({"best_oa_location": null, "oa_locations": [null, {"url_for_pdf": null}]}),
        )],
    );
    sim.on(
        "/crossref/works/10.1000%2Fnone",
        [Reply::json(&json!({"message": {"link": null}}))],
    );
    sim.on(
        "/europe_pmc/search",
        [Reply::json(&json!({"resultList": {"result": null}}))],
    );
    sim.on("/pmc/idconv/v1.0/", [Reply::json(&json!({"records": null}))]);
    sim.on(
        "/wayback/wayback/available",
        [Reply::json(&json!({"archived_snapshots": {"closest": null}}))],
    );
    let cx = context(&sim, Some("me@example.org"));
    let best = resolver("unpaywall")
        .resolve(&Work::from_doi("10.1000/best").unwrap(), &cx)
        .await
        .unwrap();
    assert_eq!(urls(&best), ["https://a.example/best.pdf"]);
    let none = Work::from_doi("10.1000/none").unwrap();
    for name in ["unpaywall", "crossref", "europe_pmc", "pmc", "wayback"] {
        let found = resolver(name).resolve(&none, &cx).await;
        assert!(found.as_ref().is_ok_and(Vec::is_empty), "{name}: {found:?}");
    }
    // an OpenAlex record with "locations": null keeps its other URLs
    let record = json!({"id": "https://openalex.org/W3", "ids": null, "locations": null, "open_access": null,
        "best_oa_location": {"pdf_url": "https://l.example/3.pdf", "landing_page_url": null}});
    let work = Work::from_openalex(&record).unwrap();
    let hit = resolver("openalex").resolve(&work, &cx).await.unwrap();
    assert_eq!(urls(&hit), ["https://l.example/3.pdf"]);
}

#[tokio::test]
async fn europe_pmc_uses_only_the_result_for_the_doi_asked() {
    let sim = Simulator::start().await.unwrap();
    let pdf = |url: &str| json!({"fullTextUrl": [{"availability": "Open access", "documentStyle": "pdf", "url": url}]});
    sim.on(
        "/europe_pmc/search",
        [Reply::json(&json!({"hitCount": 3, "resultList": {"result": [
            {"doi": "10.1000/other", "fullTextUrlList": pdf("https://europepmc.org/other.pdf")},
            {"fullTextUrlList": pdf("https://europepmc.org/no-doi.pdf")},
            {"doi": "https://doi.org/10.1000/ASKED", "fullTextUrlList": pdf("https://europepmc.org/asked.pdf")}
        ]}}))],
    );
    let cx = context(&sim, None);
    let hit = resolver("europe_pmc")
        .resolve(&Work::from_doi("10.1000/asked").unwrap(), &cx)
        .await
        .unwrap();
    assert_eq!(urls(&hit), ["https://europepmc.org/asked.pdf"]);
    // a search that found only other works gives nothing
    let miss = resolver("europe_pmc")
        .resolve(&Work::from_doi("10.1000/unknown").unwrap(), &cx)
        .await
        .unwrap();
    assert!(miss.is_empty(), "{miss:?}");
}
