//! The repository, preprint and keyed resolvers on answers of their services saved from
//! public sources (tests/fixtures/resolvers/*/README.md says where each came from), served
//! by a real server on 127.0.0.1: for each, an answer with a PDF, one with nothing open,
//! and one with nulls.
#![cfg(feature = "simulator")]

use std::collections::BTreeMap;
use std::sync::Arc;

use contentdownload::resolvers::{
    resolver_by_name, ApiKeys, HttpService, ResolveContext, ResolverConfig, RESOLVER_NAMES,
};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use contentdownload::works::Work;
use http::Response;
use http_body_util::BodyExt;
use tower::ServiceBuilder;

fn context(sim: &Simulator, keys: &[(&str, &str)]) -> ResolveContext {
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let svc = ServiceBuilder::new()
        .map_response(|r: Response<ResponseBody>| r.map(|b| b.boxed_unsync()))
        .service(client);
    let base_urls: BTreeMap<String, String> = RESOLVER_NAMES
        .iter()
        .map(|n| (n.to_string(), sim.url(&format!("/{n}"))))
        .collect();
    let mut api_keys = ApiKeys::default();
    for (provider, key) in keys {
        api_keys.insert(provider, key).unwrap();
    }
    ResolveContext {
        http: HttpService::new(svc),
        config: Arc::new(ResolverConfig {
            base_urls,
            api_keys,
            ..ResolverConfig::default()
        }),
        robots: None,
        learner: None,
    }
}

/// A saved answer, served as the service serves it.
fn fixture(path: &str) -> Reply {
    let file = format!("{}/tests/fixtures/resolvers/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    Reply::ok().header("content-type", "application/json").body(text)
}

/// The candidate URLs `name` finds for `doi`.
async fn urls(name: &str, doi: &str, cx: &ResolveContext) -> Vec<String> {
    let work = Work::from_doi(doi).unwrap();
    let found = resolver_by_name(name)
        .unwrap()
        .resolve(&work, cx)
        .await
        .unwrap_or_else(|e| panic!("{name} {doi}: {e}"));
    assert!(found.iter().all(|c| c.resolver == name && c.is_pdf), "{found:?}");
    found.into_iter().map(|c| c.url).collect()
}

fn query(sim: &Simulator, pattern: &str, i: usize) -> Vec<(String, String)> {
    let uri = sim.requests_to(pattern)[i].uri.clone();
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn core_with_its_key() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/core/v3/search/works",
        [
            fixture("core/pdf.json"),
            fixture("core/closed.json"),
            fixture("core/nulls.json"),
            fixture("core/pdf.json"),
        ],
    );
    let cx = context(&sim, &[("core", "CORE-KEY-1")]);
    let doi = "10.1038/s41597-023-02208-w";
    assert_eq!(
        urls("core", doi, &cx).await,
        [
            "https://core.ac.uk/download/571215426.pdf",
            "https://oro.open.ac.uk/89835/1/article.pdf"
        ]
    );
    assert!(urls("core", doi, &cx).await.is_empty(), "nothing open");
    assert_eq!(
        urls("core", doi, &cx).await,
        ["https://oro.open.ac.uk/89835/1/article.pdf"]
    );
    // a search answer about another work is not this work's
    assert!(urls("core", "10.1038/another", &cx).await.is_empty());

    let seen = sim.requests_to("/core/*");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0].header("authorization"), Some("Bearer CORE-KEY-1"));
    let q = query(&sim, "/core/*", 0);
    assert!(q.contains(&("q".into(), format!("doi:\"{doi}\""))), "{q:?}");

    // without a key: nothing asked, nothing found (the runner leaves core out at start)
    assert!(urls("core", doi, &context(&sim, &[])).await.is_empty());
    assert_eq!(sim.count("/core/*"), 4);
}

#[tokio::test]
async fn semantic_scholar_open_access_pdf() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/semantic_scholar/*",
        [
            fixture("semantic_scholar/pdf.json"),
            fixture("semantic_scholar/closed.json"),
            fixture("semantic_scholar/nulls.json"),
            Reply::status(404),
        ],
    );
    // a real answer: Semantic Scholar's open-access "PDF" is often the repository's page
    let doi = "10.1007/978-3-032-01855-7_15";
    let pdf = "https://hal.science/hal-05406481";
    let keyed = context(&sim, &[("semantic_scholar", "S2-KEY-1")]);
    assert_eq!(urls("semantic_scholar", doi, &keyed).await, [pdf]);
    let cx = context(&sim, &[]);
    assert!(
        urls("semantic_scholar", doi, &cx).await.is_empty(),
        "openAccessPdf null"
    );
    assert_eq!(urls("semantic_scholar", doi, &cx).await, [pdf]);
    assert!(
        urls("semantic_scholar", "10.1/unknown", &cx).await.is_empty(),
        "404 is a miss"
    );

    let seen = sim.requests_to("/semantic_scholar/*");
    // the DOI is one path segment after `DOI:`
    assert_eq!(
        seen[0].uri.path(),
        "/semantic_scholar/graph/v1/paper/DOI:10.1007%2F978-3-032-01855-7_15"
    );
    assert_eq!(seen[0].uri.query(), Some("fields=openAccessPdf"));
    assert_eq!(seen[0].header("x-api-key"), Some("S2-KEY-1"));
    assert_eq!(seen[1].header("x-api-key"), None, "no key, no header");
}

#[tokio::test]
async fn doaj_pdf_links_of_the_article_with_the_doi() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/doaj/api/search/articles/*",
        [
            fixture("doaj/pdf.json"),
            fixture("doaj/closed.json"),
            fixture("doaj/nulls.json"),
            fixture("doaj/pdf.json"),
        ],
    );
    let cx = context(&sim, &[]);
    let doi = "10.0000/SOME.IDENTIFIER";
    let pdf = "https://www.science.org/articles/HaberBosch.pdf";
    assert_eq!(urls("doaj", doi, &cx).await, [pdf]);
    assert!(urls("doaj", doi, &cx).await.is_empty(), "an HTML full text only");
    assert_eq!(urls("doaj", doi, &cx).await, [pdf]);
    assert!(urls("doaj", "10.0000/other", &cx).await.is_empty());
    // the query is one encoded path segment
    assert_eq!(
        sim.requests_to("/doaj/*")[0].uri.path(),
        "/doaj/api/search/articles/doi%3A%2210.0000%2Fsome.identifier%22"
    );
}

#[tokio::test]
async fn zenodo_pdf_files_of_the_record_with_the_doi() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/zenodo/api/records",
        [
            fixture("zenodo/pdf.json"),
            fixture("zenodo/closed.json"),
            fixture("zenodo/nulls.json"),
        ],
    );
    let cx = context(&sim, &[]);
    let doi = "10.5281/zenodo.6412487";
    let file = "https://zenodo.org/api/records/6412487/files/Report%20on%20the%20Security%20of%20LWE.pdf/content";
    assert_eq!(urls("zenodo", doi, &cx).await, [file]);
    assert!(
        urls("zenodo", "10.11646/zootaxa.3916.1.1", &cx).await.is_empty(),
        "a restricted record without files"
    );
    assert_eq!(
        urls("zenodo", doi, &cx).await,
        [file],
        "nulls around the record and its file"
    );
    let q = query(&sim, "/zenodo/*", 0);
    assert!(q.contains(&("q".into(), format!("doi:\"{doi}\""))), "{q:?}");
}

#[tokio::test]
async fn figshare_search_then_files() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/figshare/v2/articles/search",
        [
            fixture("figshare/search.json"),
            fixture("figshare/closed.json"),
            fixture("figshare/search_nulls.json"),
        ],
    );
    sim.on(
        "/figshare/v2/articles/1434614/files",
        [fixture("figshare/files.json"), fixture("figshare/files_nulls.json")],
    );
    let cx = context(&sim, &[]);
    let doi = "10.6084/m9.figshare.1434614";
    let pdf = "https://ndownloader.figshare.com/files/3000002";
    assert_eq!(urls("figshare", doi, &cx).await, [pdf]);
    assert!(urls("figshare", doi, &cx).await.is_empty(), "no article");
    assert_eq!(urls("figshare", doi, &cx).await, [pdf]);
    let search = &sim.requests_to("/figshare/v2/articles/search")[0];
    assert_eq!(search.method, http::Method::POST);
    let body: serde_json::Value = serde_json::from_slice(&search.body).unwrap();
    assert_eq!(body["search_for"], format!(":doi: \"{doi}\""));
    assert_eq!(sim.count("/figshare/v2/articles/1434614/files"), 2);
}

#[tokio::test]
async fn hal_main_file_and_pdf_files() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/hal/search/",
        [
            fixture("hal/pdf.json"),
            fixture("hal/closed.json"),
            fixture("hal/nulls.json"),
        ],
    );
    let cx = context(&sim, &[]);
    let doi = "10.1007/978-3-032-01855-7_15";
    let file = "https://hal.science/hal-05406481/file/2022-1750.pdf";
    assert_eq!(
        urls("hal", doi, &cx).await,
        ["https://hal.science/hal-05406481/document", file]
    );
    assert!(
        urls("hal", "10.9734/ajrcos/2025/v18i2572", &cx).await.is_empty(),
        "a record without files"
    );
    assert_eq!(urls("hal", doi, &cx).await, [file]);
    let q = query(&sim, "/hal/*", 0);
    assert!(q.contains(&("q".into(), format!("doiId_s:\"{doi}\""))), "{q:?}");
}

#[tokio::test]
async fn osf_preprint_then_its_primary_file() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/osf/v2/preprints/",
        [
            fixture("osf/pdf.json"),
            fixture("osf/closed.json"),
            fixture("osf/nulls.json"),
        ],
    );
    sim.on(
        "/osf/v2/files/60f52a94f1369301d5793a17/",
        [fixture("osf/file.json"), fixture("osf/file.json")],
    );
    let cx = context(&sim, &[]);
    let doi = "10.31219/osf.io/egcsk";
    let pdf = "https://osf.io/download/60f52a94f1369301d5793a17/";
    assert_eq!(urls("osf", doi, &cx).await, [pdf]);
    assert!(urls("osf", doi, &cx).await.is_empty(), "no preprint");
    assert_eq!(
        urls("osf", doi, &cx).await,
        [pdf],
        "the file id from relationships data"
    );
    assert_eq!(
        query(&sim, "/osf/v2/preprints/", 0),
        [("filter[doi]".to_string(), doi.to_string())]
    );
}

#[tokio::test]
async fn openaire_open_instances_of_the_work_only() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/openaire/search/publications",
        [
            fixture("openaire/pdf.json"),
            fixture("openaire/closed.json"),
            fixture("openaire/nulls.json"),
        ],
    );
    let cx = context(&sim, &[]);
    let doi = "10.1000/oa-1";
    let pdf = "https://repository.example.edu/bitstream/123/1/paper.pdf";
    assert_eq!(urls("openaire", doi, &cx).await, [pdf], "not the closed one, nor rels'");
    assert!(urls("openaire", doi, &cx).await.is_empty(), "closed and doi.org only");
    assert_eq!(urls("openaire", doi, &cx).await, [pdf]);
    let q = query(&sim, "/openaire/*", 0);
    assert_eq!(q, [("doi".into(), doi.into()), ("format".into(), "json".into())]);
}

#[tokio::test]
async fn odd_shapes_are_a_miss_or_a_clear_error_never_a_panic() {
    let sim = Simulator::start().await.unwrap();
    let odd = [
        "[]",
        "{}",
        "null",
        "\"text\"",
        "{\"results\": \"x\", \"hits\": [], \"response\": 3, \"data\": {\"links\": 1}}",
        "{\"openAccessPdf\": {\"url\": \"\", \"status\": \"CLOSED\"}}",
    ];
    for name in [
        "doaj",
        "zenodo",
        "figshare",
        "hal",
        "osf",
        "openaire",
        "semantic_scholar",
        "core",
    ] {
        sim.clear_requests();
        sim.on(
            &format!("/{name}/*"),
            odd.iter()
                .map(|b| Reply::ok().header("content-type", "application/json").body(*b)),
        );
        let cx = context(&sim, &[("core", "k")]);
        for _ in odd {
            assert!(urls(name, "10.1/x", &cx).await.is_empty(), "{name}");
        }
        sim.on(&format!("/{name}/*"), [Reply::ok().body("{not json")]);
        let err = resolver_by_name(name)
            .unwrap()
            .resolve(&Work::from_doi("10.1/x").unwrap(), &cx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{name}: {err}");
    }
}
