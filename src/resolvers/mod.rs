//! Resolvers: where is the open-access PDF of a work?
//!
//! Each resolver turns a [`Work`] into candidate URLs, asking one provider's API through
//! the pipeline's HTTP service (on the `Resolve` operation, with its provider name as the
//! [`Provider`], so rate limits, learning and retry policies apply per resolver). Every base
//! URL is configurable ([`ResolverConfig`]) so that tests and mirrors can point elsewhere.
//!
//! A miss (the provider knows no PDF) is `Ok(vec![])`; a failure is an error, and a
//! [`FailedOver`](crate::error::FailedOver) inside it means "throttled: try the next one".
//!
//! Input never rewrites an API's path: a DOI goes into `/works/{doi}` and `/v2/{doi}` as one
//! percent-encoded segment (`/` as `%2F`), into the DOI proxy's path only without `.` or
//! `..` parts, and everything else into query strings, encoded. Answers are read leniently:
//! `null` in any optional field or list reads as nothing.
//!
//! | resolver | asks | default base |
//! | --- | --- | --- |
//! | `openalex` | nothing: the URLs already in the record | — |
//! | `unpaywall` | `GET /v2/{doi}?email=` | `https://api.unpaywall.org` |
//! | `crossref` | `GET /works/{doi}`, `link[]` with a PDF content type | `https://api.crossref.org` |
//! | `arxiv` | nothing: `/pdf/{arxiv id}` | `https://arxiv.org` |
//! | `europe_pmc` | `GET /search?query=DOI:"{doi}"`, `fullTextUrlList` of the results with that `doi` | `https://www.ebi.ac.uk/europepmc/webservices/rest` |
//! | `pmc` | the ID converter, then the OA web service | `https://www.ncbi.nlm.nih.gov/pmc/utils` |
//! | `core` | `GET /v3/search/works?q=doi:"{doi}"`, `downloadUrl` and download links (needs a key) | `https://api.core.ac.uk` |
//! | `semantic_scholar` | `GET /graph/v1/paper/DOI:{doi}?fields=openAccessPdf` | `https://api.semanticscholar.org` |
//! | `doaj` | `GET /api/search/articles/{doi:"…"}`, `bibjson.link[]` that are PDFs | `https://doaj.org` |
//! | `zenodo` | `GET /api/records?q=doi:"{doi}"`, the records' PDF `files[]` | `https://zenodo.org` |
//! | `figshare` | `POST /v2/articles/search`, then `GET /v2/articles/{id}/files`, the PDFs | `https://api.figshare.com` |
//! | `hal` | `GET /search/?q=doiId_s:"{doi}"`, `fileMain_s` and PDF `files_s` | `https://api.archives-ouvertes.fr` |
//! | `osf` | `GET /v2/preprints/?filter[doi]=`, then the primary file's `download` link | `https://api.osf.io` |
//! | `openaire` | `GET /search/publications?doi=&format=json`, the PDF URLs in the record | `https://api.openaire.eu` |
//! | `landing` | the DOI's landing page, its `citation_pdf_url` meta tag (`Extract`) | `https://doi.org` |
//! | `wayback` | the availability API, as the last resort | `https://archive.org` |
//!
//! The search APIs (`core`, `doaj`, `zenodo`, `figshare`, `hal`, `osf`) can answer with
//! other works than the one asked for; only a record carrying the DOI asked for is used. The
//! DOI goes into their query as a quoted phrase (`"` and `\` escaped), encoded.
//!
//! # Order
//!
//! [`DEFAULT_TIERS`]: the cheap OA indexes first, then repositories and preprint servers
//! (which hold the author's copy when the publisher's is closed), then Crossref's publisher
//! links and the landing page (a scraped page: slower, robots.txt), and the Wayback Machine
//! last, as the copy of last resort.
//!
//! # API keys
//!
//! [`ApiKeys`] holds each provider's key; each is sent as its provider documents it:
//! OpenAlex `api_key=` (query), CORE `Authorization: Bearer`, Semantic Scholar `x-api-key`,
//! Crossref Plus `Crossref-Plus-API-Token: Bearer`. Header values are marked sensitive.
//! `core` needs a key ([`Resolver::required_key`]); the others work without.
//!
//! # Spent allowances
//!
//! A provider that answers 429 because its allowance for the day is spent (see
//! [`Learner::quota_pause`]) is paused until its reset: every call to it fails at once
//! with [`QuotaSpent`](crate::error::QuotaSpent) (no request, no wait), and its works are
//! deferred as `quota_spent`. So are the downloads from a host whose allowance is spent.
//!
//! Of these only `landing` scrapes a page, and only it honours robots.txt ([`RobotsTxt`]):
//! the others ask APIs, and the PDF URLs they hand back are fetched as given.

mod apis;
mod json;
mod keyed;
mod keys;
mod landing;
mod repositories;
mod robots;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

pub use self::apis::{Arxiv, Crossref, EuropePmc, OpenAlex, Pmc, Unpaywall, Wayback};
pub use self::keyed::{Core, SemanticScholar};
pub use self::keys::{ApiKeys, KeyedProvider, KEYED_PROVIDERS};
pub use self::landing::{citation_pdf_url, Landing};
pub use self::repositories::{Doaj, Figshare, Hal, OpenAire, Osf, Zenodo};
pub use self::robots::{RobotsDisallowed, RobotsTxt, MAX_ROBOTS_BYTES, ROBOTS_AGENT};
use crate::context::{OperationType, PartitionKey, Provider, WorkId};
use crate::error::BoxError;
use crate::layers::learning::Learner;
use crate::service::read_metadata;
use crate::works::{Candidate, Work};

pub use crate::service::{HttpService, PipelineBody};

/// Base URLs and politeness settings of the resolvers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Contact address: Unpaywall's `email=` and Crossref's `mailto=` parameters.
    pub mailto: Option<String>,
    /// Base URL per resolver name, replacing the default (`unpaywall = "http://127.0.0.1:8080"`).
    pub base_urls: BTreeMap<String, String>,
    /// Largest resolver response read, in bytes (default 8 MiB).
    pub max_response_bytes: usize,
    /// Fetch landing pages whatever their site's robots.txt says (default false: honour it,
    /// see [`RobotsTxt`]). The pipeline reads it; a hand-built [`ResolveContext`] has its
    /// own `robots`.
    pub ignore_robots: bool,
    /// Provider API keys (`--api-key`, `CORE_API_KEY`, …). Never serialized, and redacted in
    /// `Debug`.
    #[serde(skip)]
    pub api_keys: ApiKeys,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            mailto: None,
            base_urls: BTreeMap::new(),
            max_response_bytes: 8 * 1024 * 1024,
            ignore_robots: false,
            api_keys: ApiKeys::default(),
        }
    }
}

impl ResolverConfig {
    /// The base URL of a resolver: the configured one, or its default; without a trailing `/`.
    pub fn base_url(&self, resolver: &str, default: &str) -> String {
        self.base_urls
            .get(resolver)
            .map_or(default, String::as_str)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// What a resolver call gets: the HTTP service and the configuration.
#[derive(Clone)]
pub struct ResolveContext {
    /// The pipeline's HTTP service.
    pub http: HttpService,
    /// The resolvers' configuration.
    pub config: Arc<ResolverConfig>,
    /// The robots.txt every scraped page is checked against; `None` checks nothing.
    pub robots: Option<Arc<RobotsTxt>>,
    /// The stack's learner, asked before and after each call whether the provider's
    /// allowance is spent ([`Learner::quota_pause`]): then the call fails with
    /// [`QuotaSpent`](crate::error::QuotaSpent) and sends nothing until the reset (the
    /// fallback asks it for the candidates' hosts too). `None` asks no one.
    pub learner: Option<Learner>,
}

impl fmt::Debug for ResolveContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolveContext").finish_non_exhaustive()
    }
}

/// A provider of candidate URLs for a work.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The resolver's name (`"unpaywall"`), also its [`Provider`] name.
    fn name(&self) -> &'static str;

    /// The candidate URLs for `work`, best first. A miss is `Ok(vec![])`.
    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext)
        -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>>;

    /// The provider whose API key this resolver cannot work without (`Some("core")`), if
    /// any. A run leaves such a resolver out, with one line at start, when it has no key.
    fn required_key(&self) -> Option<&'static str> {
        None
    }

    /// Whether `work` gives this resolver something to go on: the identifier its API is
    /// asked by (most need a DOI), or the record field it reads. A run does not ask a
    /// resolver about a work it does not apply to: it is not counted as asked, and no
    /// empty answer is remembered for it (one row per resolver and work in the ledger,
    /// for works such as a bulk input's, which have only a PDF link). `resolve` on such a
    /// work still answers `Ok(vec![])`. The default is `true`.
    ///
    /// ```
    /// use contentdownload::resolvers::resolver_by_name;
    /// use contentdownload::works::Work;
    ///
    /// let unpaywall = resolver_by_name("unpaywall").unwrap();
    /// let record = serde_json::json!({
    ///     "id": "https://openalex.org/W1",
    ///     "best_oa_location": {"pdf_url": "https://example.org/w1.pdf"},
    /// });
    /// let pdf_only = Work::from_openalex(&record).unwrap();
    /// assert!(!unpaywall.applies_to(&pdf_only), "Unpaywall is asked by DOI");
    /// assert!(unpaywall.applies_to(&Work::from_doi("10.1234/abc").unwrap()));
    /// ```
    fn applies_to(&self, work: &Work) -> bool {
        let _ = work;
        true
    }
}

/// A resolver API answered with a status that is neither success nor a miss.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resolver} answered {status}")]
pub struct ResolverStatus {
    /// The resolver.
    pub resolver: &'static str,
    /// The status.
    pub status: StatusCode,
}

/// A resolver API answered something that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resolver} sent an unreadable answer: {message}")]
pub struct ResolverParseError {
    /// The resolver.
    pub resolver: &'static str,
    /// What was wrong.
    pub message: String,
}

/// Every resolver by name, with the configured base URLs.
pub fn resolver_by_name(name: &str) -> Option<Arc<dyn Resolver>> {
    let r: Arc<dyn Resolver> = match name {
        "openalex" => Arc::new(OpenAlex),
        "unpaywall" => Arc::new(Unpaywall),
        "crossref" => Arc::new(Crossref),
        "arxiv" => Arc::new(Arxiv),
        "europe_pmc" => Arc::new(EuropePmc),
        "pmc" => Arc::new(Pmc),
        "core" => Arc::new(Core),
        "semantic_scholar" => Arc::new(SemanticScholar),
        "doaj" => Arc::new(Doaj),
        "zenodo" => Arc::new(Zenodo),
        "figshare" => Arc::new(Figshare),
        "hal" => Arc::new(Hal),
        "osf" => Arc::new(Osf),
        "openaire" => Arc::new(OpenAire),
        "landing" => Arc::new(Landing),
        "wayback" => Arc::new(Wayback),
        _ => return None,
    };
    Some(r)
}

/// The names [`resolver_by_name`] knows.
pub const RESOLVER_NAMES: [&str; 16] = [
    "openalex",
    "unpaywall",
    "crossref",
    "arxiv",
    "europe_pmc",
    "pmc",
    "core",
    "semantic_scholar",
    "doaj",
    "zenodo",
    "figshare",
    "hal",
    "osf",
    "openaire",
    "landing",
    "wayback",
];

/// The default fallback tiers: name, resolvers in order, how many run at once.
///
/// 1. `direct_oa`: the record's own URLs and the OA indexes that answer with the best copy
///    (often the publisher's) in one cheap call;
/// 2. `repositories`: aggregators, repositories and preprint servers, which hold the
///    author's copy when the publisher's is closed — asked before any page is scraped,
///    because an API answer is cheaper and surer than a landing page;
/// 3. `doi`: Crossref's publisher links, then the landing page (scraping, robots.txt);
/// 4. `archive`: the Wayback Machine, last, as the copy of last resort.
pub const DEFAULT_TIERS: [(&str, &[&str], usize); 4] = [
    ("direct_oa", &["openalex", "unpaywall", "arxiv", "pmc", "europe_pmc"], 2),
    (
        "repositories",
        &[
            "core",
            "semantic_scholar",
            "doaj",
            "zenodo",
            "figshare",
            "hal",
            "osf",
            "openaire",
        ],
        2,
    ),
    ("doi", &["crossref", "landing"], 1),
    ("archive", &["wayback"], 1),
];

/// Sends a metadata request for `resolver` and reads the body (bounded). `Ok(None)` on 404
/// and 410 (the provider does not know the work).
pub(crate) fn fetch<'a>(
    cx: &'a ResolveContext,
    resolver: &'static str,
    operation: OperationType,
    work: &'a Work,
    url: &'a str,
) -> BoxFuture<'a, Result<Option<(Bytes, http::Uri)>, BoxError>> {
    fetch_with(cx, resolver, operation, work, Ask::get(url))
}

/// A resolver request beyond a plain GET: a method, extra headers (an API key: sent marked
/// sensitive, so that no `Debug` of the request shows it) and a body.
pub(crate) struct Ask<'a> {
    pub(crate) method: http::Method,
    pub(crate) url: &'a str,
    pub(crate) headers: Vec<(http::header::HeaderName, http::HeaderValue)>,
    pub(crate) body: Bytes,
}

impl<'a> Ask<'a> {
    pub(crate) fn get(url: &'a str) -> Ask<'a> {
        Ask {
            method: http::Method::GET,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header holding a secret (marked sensitive).
    pub(crate) fn secret_header(mut self, name: &'static str, value: &str) -> Result<Ask<'a>, BoxError> {
        let mut v = http::HeaderValue::from_str(value)
            .map_err(|_| format!("the {name} header value is not a valid HTTP header value"))?;
        v.set_sensitive(true);
        self.headers.push((http::header::HeaderName::from_static(name), v));
        Ok(self)
    }
}

/// [`fetch`] with an [`Ask`].
pub(crate) fn fetch_with<'a>(
    cx: &'a ResolveContext,
    resolver: &'static str,
    operation: OperationType,
    work: &'a Work,
    ask: Ask<'a>,
) -> BoxFuture<'a, Result<Option<(Bytes, http::Uri)>, BoxError>> {
    use futures_util::FutureExt;
    async move {
        let uri: http::Uri = match ask.url.parse() {
            Ok(u) => u,
            Err(e) => {
                return Err(Box::new(ResolverParseError {
                    resolver,
                    message: format!("built an invalid URL: {e}"),
                }) as BoxError)
            }
        };
        let mut builder = Request::builder()
            .method(ask.method)
            .uri(uri.clone())
            .header(http::header::ACCEPT, "application/json, text/html;q=0.9, */*;q=0.5");
        for (name, value) in ask.headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .extension(operation)
            .extension(Provider::new(resolver))
            .extension(WorkId::new(work.id.as_str()))
            .body(Full::new(ask.body))
            .map_err(|e| Box::new(e) as BoxError)?;
        // a provider whose allowance is spent is not asked (nor waited for) until its reset
        let key = PartitionKey::compute(&req);
        let spent = |cx: &ResolveContext, sent: bool| {
            let spent = cx.learner.as_ref()?.quota_spent(&key, sent)?;
            Some(Box::new(spent) as BoxError)
        };
        if let Some(e) = spent(cx, false) {
            return Err(e);
        }
        let response = match cx.http.clone().oneshot(req).await {
            Ok(r) if r.status() != StatusCode::TOO_MANY_REQUESTS => r,
            // the 429 that spent it says so
            Ok(r) => {
                let status = r.status();
                return Err(spent(cx, true).unwrap_or_else(|| Box::new(ResolverStatus { resolver, status })));
            }
            // so does the retry layer's failover on that 429, or a wait the pause caused
            Err(e) => {
                let sent = !matches!(
                    crate::error::classify(&*e),
                    crate::error::Kind::CoolingDown | crate::error::Kind::RateLimited
                );
                return Err(spent(cx, sent).unwrap_or(e));
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Box::new(ResolverStatus { resolver, status }) as BoxError);
        }
        let effective = response
            .extensions()
            .get::<tower_http::follow_redirect::RequestUri>()
            .map_or(uri, |u| u.0.clone());
        let body = read_pipeline_body(response, cx.config.max_response_bytes).await?;
        Ok(Some((body, effective)))
    }
    .boxed()
}

// Boxed in a plain fn with concrete types: awaiting the generic `read_metadata` directly in
// the async block above trips rustc's higher-ranked `Send` check (rust-lang/rust#64552).
pub(crate) fn read_pipeline_body(
    response: Response<PipelineBody>,
    limit: usize,
) -> BoxFuture<'static, Result<Bytes, BoxError>> {
    use futures_util::FutureExt;
    read_metadata(response, limit).boxed()
}

/// [`fetch`] a Resolve call and parse its JSON; `Ok(None)` on a miss (404/410).
pub(crate) async fn fetch_json<T: serde::de::DeserializeOwned>(
    cx: &ResolveContext,
    resolver: &'static str,
    work: &Work,
    url: &str,
) -> Result<Option<T>, BoxError> {
    match fetch(cx, resolver, OperationType::Resolve, work, url).await? {
        Some((body, _)) => parse_json(resolver, &body).map(Some),
        None => Ok(None),
    }
}

/// [`fetch_with`] a Resolve call and parse its JSON; `Ok(None)` on a miss (404/410).
pub(crate) async fn fetch_json_with<T: serde::de::DeserializeOwned>(
    cx: &ResolveContext,
    resolver: &'static str,
    work: &Work,
    ask: Ask<'_>,
) -> Result<Option<T>, BoxError> {
    match fetch_with(cx, resolver, OperationType::Resolve, work, ask).await? {
        Some((body, _)) => parse_json(resolver, &body).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(resolver: &'static str, body: &[u8]) -> Result<T, BoxError> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(ResolverParseError {
            resolver,
            message: e.to_string(),
        }) as BoxError
    })
}

pub(crate) fn candidate(resolver: &str, url: impl Into<String>, is_pdf: bool) -> Candidate {
    Candidate {
        url: url.into(),
        resolver: resolver.to_owned(),
        is_pdf,
    }
}

/// The characters a DOI keeps in a URL path; everything else is percent-encoded.
const DOI_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b'(')
    .remove(b')');

/// A DOI as ONE percent-encoded URL path segment (its `/` as `%2F`, which Crossref and
/// Unpaywall accept), so that a DOI holding `../` cannot climb out of the API's path:
/// `10.1234/../../etc/passwd` asks for `/works/10.1234%2F..%2F..%2Fetc%2Fpasswd`.
/// A DOI that is nothing but dots would still be a dot segment, and is refused.
pub(crate) fn doi_segment(doi: &str) -> Result<String, BoxError> {
    if doi.bytes().all(|b| b == b'.') {
        return Err(format!("{doi:?} is not a DOI that can be asked for").into());
    }
    Ok(percent_encoding::utf8_percent_encode(doi, DOI_KEEP).to_string())
}

/// A DOI as a URL path keeping its `/` (`https://doi.org/10.1000/x`, as the DOI proxy
/// expects it), each part percent-encoded; a DOI with a `.` or `..` part is refused, as it
/// would rewrite the path.
pub(crate) fn doi_path(doi: &str) -> Result<String, BoxError> {
    let mut out = String::with_capacity(doi.len());
    for (i, part) in doi.split('/').enumerate() {
        if part == "." || part == ".." {
            return Err(format!("{doi:?} has a `{part}` part and cannot be put in a URL path").into());
        }
        if i > 0 {
            out.push('/');
        }
        out.extend(percent_encoding::utf8_percent_encode(part, DOI_KEEP));
    }
    Ok(out)
}

/// Builds `base + path` with query pairs, encoded.
pub(crate) fn with_query(base_and_path: &str, pairs: &[(&str, &str)]) -> Result<String, BoxError> {
    let mut url = url::Url::parse(base_and_path)?;
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doi_is_one_path_segment() {
        assert_eq!(doi_segment("10.1000/abc").unwrap(), "10.1000%2Fabc");
        assert_eq!(
            doi_segment("10.1234/../../etc/passwd").unwrap(),
            "10.1234%2F..%2F..%2Fetc%2Fpasswd"
        );
        assert_eq!(
            doi_segment("10.1002/(sici)1097-4636<1::aid>3.0.co;2-#").unwrap(),
            "10.1002%2F(sici)1097-4636%3C1%3A%3Aaid%3E3.0.co%3B2-%23"
        );
        assert_eq!(doi_segment("10.1/%2e%2e").unwrap(), "10.1%2F%252e%252e");
        assert!(doi_segment("..").is_err() && doi_segment("").is_err());
        // what the URL parser makes of it: still one segment under the API's path
        let url = url::Url::parse(&format!(
            "https://api.crossref.org/works/{}",
            doi_segment("10.1/../..").unwrap()
        ))
        .unwrap();
        assert_eq!(url.path(), "/works/10.1%2F..%2F..");
    }

    #[test]
    fn a_landing_path_keeps_slashes_but_no_dot_parts() {
        assert_eq!(doi_path("10.1000/a b").unwrap(), "10.1000/a%20b");
        assert_eq!(doi_path("10.1000/x/y.z").unwrap(), "10.1000/x/y.z");
        for bad in ["10.1/../x", "10.1/.", "../10.1/x", "10.1/x/.."] {
            assert!(doi_path(bad).is_err(), "{bad}");
        }
    }
}
