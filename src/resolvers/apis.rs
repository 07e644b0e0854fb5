//! The API resolvers.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;

use super::landing::tags;
use super::{candidate, doi_segment, fetch, fetch_json, fetch_json_with, with_query, Ask, ResolveContext, Resolver};
use crate::context::OperationType;
use crate::error::BoxError;
use crate::works::{lenient_list, normalize_doi, null_as_default, Candidate, Work};

/// The URLs already in the OpenAlex record; no call.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAlex;

impl Resolver for OpenAlex {
    fn applies_to(&self, work: &Work) -> bool {
        !work.candidates.is_empty()
    }

    fn name(&self) -> &'static str {
        "openalex"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        _cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        let mut candidates = work.candidates.clone();
        // PDFs first, landing pages after, each group in record order
        candidates.sort_by_key(|c| !c.is_pdf);
        futures_util::future::ready(Ok(candidates)).boxed()
    }
}

/// Unpaywall: `GET {base}/v2/{doi}?email={mailto}`; `best_oa_location` then `oa_locations`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unpaywall;

#[derive(Deserialize)]
struct UnpaywallWork {
    best_oa_location: Option<UnpaywallLocation>,
    #[serde(default, deserialize_with = "lenient_list")]
    oa_locations: Vec<UnpaywallLocation>,
}

#[derive(Deserialize)]
struct UnpaywallLocation {
    url_for_pdf: Option<String>,
}

impl Resolver for Unpaywall {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "unpaywall"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let Some(email) = cx.config.mailto.as_deref() else {
                return Err("unpaywall needs a contact email: set mailto (--mailto)".into());
            };
            let base = cx.config.base_url("unpaywall", "https://api.unpaywall.org");
            let url = with_query(&format!("{base}/v2/{}", doi_segment(doi)?), &[("email", email)])?;
            let Some(record) = fetch_json::<UnpaywallWork>(cx, "unpaywall", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut out: Vec<Candidate> = Vec::new();
            for loc in record.best_oa_location.iter().chain(record.oa_locations.iter()) {
                if let Some(url) = loc.url_for_pdf.as_deref().filter(|u| is_web_url(u)) {
                    push_unique(&mut out, "unpaywall", url);
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// Crossref: `GET {base}/works/{doi}?mailto=`; the `link[]` entries with a PDF content type.
/// With a Crossref Plus token, it is sent as `Crossref-Plus-API-Token: Bearer {token}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Crossref;

#[derive(Deserialize)]
struct CrossrefEnvelope {
    #[serde(default, deserialize_with = "null_as_default")]
    message: CrossrefWork,
}

#[derive(Deserialize, Default)]
struct CrossrefWork {
    #[serde(default, deserialize_with = "lenient_list")]
    link: Vec<CrossrefLink>,
}

#[derive(Deserialize)]
struct CrossrefLink {
    #[serde(rename = "URL")]
    url: Option<String>,
    #[serde(rename = "content-type")]
    content_type: Option<String>,
}

impl Resolver for Crossref {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "crossref"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("crossref", "https://api.crossref.org");
            let pairs: Vec<(&str, &str)> = cx.config.mailto.as_deref().map(|m| ("mailto", m)).into_iter().collect();
            let url = with_query(&format!("{base}/works/{}", doi_segment(doi)?), &pairs)?;
            let mut ask = Ask::get(&url);
            if let Some(token) = cx.config.api_keys.get("crossref") {
                // Crossref Metadata Plus: the token in its own header, as `Bearer TOKEN`
                ask = ask.secret_header("crossref-plus-api-token", &format!("Bearer {token}"))?;
            }
            let Some(record) = fetch_json_with::<CrossrefEnvelope>(cx, "crossref", work, ask).await? else {
                return Ok(vec![]);
            };
            Ok(record
                .message
                .link
                .into_iter()
                .filter(|l| {
                    l.content_type
                        .as_deref()
                        .is_some_and(|t| t.to_ascii_lowercase().contains("pdf"))
                })
                .filter_map(|l| l.url.filter(|u| is_web_url(u)))
                .map(|u| candidate("crossref", u, true))
                .collect())
        }
        .boxed()
    }
}

/// arXiv: `{base}/pdf/{id}` from the arXiv id or an arXiv DOI; no call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Arxiv;

impl Resolver for Arxiv {
    fn applies_to(&self, work: &Work) -> bool {
        work.arxiv_id.as_deref().is_some_and(is_arxiv_id)
    }

    fn name(&self) -> &'static str {
        "arxiv"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        let out = work
            .arxiv_id
            .as_deref()
            .filter(|id| is_arxiv_id(id))
            .map(|id| {
                let base = cx.config.base_url("arxiv", "https://arxiv.org");
                vec![candidate("arxiv", format!("{base}/pdf/{id}"), true)]
            })
            .unwrap_or_default();
        futures_util::future::ready(Ok(out)).boxed()
    }
}

/// Whether `id` can go into `/pdf/{id}` as it is: ASCII letters, digits, `.`, `-`, at most
/// one `/` (old-style ids such as `hep-th/9901001`), and no part that is empty or starts with
/// `.` (so never a `.` or `..` segment that would rewrite the path).
fn is_arxiv_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-'))
}

/// Europe PMC: `GET {base}/search?query=DOI:"{doi}"&format=json&resultType=core`; the PDF
/// entries of `fullTextUrlList` of the results whose `doi` is the one asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct EuropePmc;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpmcSearch {
    result_list: Option<EpmcResults>,
}

#[derive(Deserialize)]
struct EpmcResults {
    #[serde(default, deserialize_with = "lenient_list")]
    result: Vec<EpmcResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpmcResult {
    doi: Option<String>,
    full_text_url_list: Option<EpmcUrls>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpmcUrls {
    #[serde(default, deserialize_with = "lenient_list")]
    full_text_url: Vec<EpmcUrl>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpmcUrl {
    document_style: Option<String>,
    availability: Option<String>,
    url: Option<String>,
}

impl Resolver for EuropePmc {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "europe_pmc"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx
                .config
                .base_url("europe_pmc", "https://www.ebi.ac.uk/europepmc/webservices/rest");
            let query = format!("DOI:\"{doi}\"");
            let url = with_query(
                &format!("{base}/search"),
                &[("query", &query), ("format", "json"), ("resultType", "core")],
            )?;
            let Some(search) = fetch_json::<EpmcSearch>(cx, "europe_pmc", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut out: Vec<Candidate> = Vec::new();
            let urls = search
                .result_list
                .into_iter()
                .flat_map(|l| l.result)
                // a search can answer with other works (a near match, a related record):
                // only a result carrying the DOI asked for is used
                .filter(|r| same_doi(r.doi.as_deref(), doi))
                .filter_map(|r| r.full_text_url_list)
                .flat_map(|l| l.full_text_url);
            for u in urls {
                let is_pdf = u
                    .document_style
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("pdf"));
                let open = u
                    .availability
                    .as_deref()
                    .is_none_or(|a| a.to_ascii_lowercase().contains("open") || a.to_ascii_lowercase().contains("free"));
                if let Some(url) = u.url.filter(|u| is_pdf && open && is_web_url(u)) {
                    push_unique(&mut out, "europe_pmc", url);
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// Whether a DOI in an answer is `asked` (both normalised: no `https://doi.org/`, any case).
fn same_doi(answer: Option<&str>, asked: &str) -> bool {
    match (answer.and_then(normalize_doi), normalize_doi(asked)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// PubMed Central: the PMCID (from the record, or the ID converter
/// `{base}/idconv/v1.0/?ids={doi}&format=json`), then the OA web service
/// `{base}/oa/oa.fcgi?id={pmcid}` and its `<link format="pdf">` (ftp links are fetched over https).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pmc;

#[derive(Deserialize)]
struct IdConv {
    #[serde(default, deserialize_with = "lenient_list")]
    records: Vec<IdConvRecord>,
}

#[derive(Deserialize)]
struct IdConvRecord {
    pmcid: Option<String>,
}

impl Resolver for Pmc {
    fn applies_to(&self, work: &Work) -> bool {
        work.pmcid.is_some() || work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "pmc"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        async move {
            let base = cx.config.base_url("pmc", "https://www.ncbi.nlm.nih.gov/pmc/utils");
            let pmcid = match (&work.pmcid, &work.doi) {
                (Some(p), _) => p.clone(),
                (None, Some(doi)) => {
                    let url = with_query(&format!("{base}/idconv/v1.0/"), &[("ids", doi), ("format", "json")])?;
                    let Some(conv) = fetch_json::<IdConv>(cx, "pmc", work, &url).await? else {
                        return Ok(vec![]);
                    };
                    match conv.records.into_iter().find_map(|r| r.pmcid) {
                        Some(p) => p,
                        None => return Ok(vec![]),
                    }
                }
                (None, None) => return Ok(vec![]),
            };
            let url = with_query(&format!("{base}/oa/oa.fcgi"), &[("id", &pmcid)])?;
            let Some((body, _)) = fetch(cx, "pmc", OperationType::Resolve, work, &url).await? else {
                return Ok(vec![]);
            };
            let text = String::from_utf8_lossy(&body);
            Ok(tags(&text, "link")
                .filter(|attrs| attrs.get("format").is_some_and(|f| f.eq_ignore_ascii_case("pdf")))
                .filter_map(|attrs| attrs.get("href").cloned())
                .map(|href| match href.strip_prefix("ftp://") {
                    Some(rest) => format!("https://{rest}"),
                    None => href,
                })
                .filter(|u| is_web_url(u))
                .map(|u| candidate("pmc", u, true))
                .collect())
        }
        .boxed()
    }
}

/// The Wayback Machine's availability API, `{base}/wayback/available?url=`, for the work's
/// first PDF candidate or else its DOI URL; the snapshot is fetched raw (`id_`).
///
/// The archive is a third party: it is asked about the candidate's
/// [shareable](crate::layers::telemetry::shareable) form, without userinfo and without the
/// secret query parameters (left out, not masked, so that the archive can still match a
/// capture of the public URL), never about the URL as the work carries it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wayback;

#[derive(Deserialize)]
struct WaybackAnswer {
    archived_snapshots: Option<WaybackSnapshots>,
}

#[derive(Deserialize)]
struct WaybackSnapshots {
    closest: Option<WaybackSnapshot>,
}

#[derive(Deserialize)]
struct WaybackSnapshot {
    available: Option<bool>,
    url: Option<String>,
    status: Option<String>,
}

/// `…/web/20200101000000/https://x` → `…/web/20200101000000id_/https://x` (the raw capture,
/// without the archive's banner), over https when it was http on web.archive.org.
pub(crate) fn raw_snapshot_url(url: &str) -> String {
    let url = match url.strip_prefix("http://web.archive.org/") {
        Some(rest) => format!("https://web.archive.org/{rest}"),
        None => url.to_owned(),
    };
    let Some(i) = url.find("/web/") else { return url };
    let start = i + "/web/".len();
    let digits = url[start..].bytes().take_while(u8::is_ascii_digit).count();
    let after = start + digits;
    if digits == 0 || url[after..].starts_with("id_") {
        return url;
    }
    format!("{}id_{}", &url[..after], &url[after..])
}

impl Resolver for Wayback {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some() || work.candidates.iter().any(|c| c.is_pdf)
    }

    fn name(&self) -> &'static str {
        "wayback"
    }

    fn resolve<'a>(
        &'a self,
        work: &'a Work,
        cx: &'a ResolveContext,
    ) -> BoxFuture<'a, Result<Vec<Candidate>, BoxError>> {
        async move {
            let target = match (work.candidates.iter().find(|c| c.is_pdf), &work.doi) {
                (Some(c), _) => crate::layers::telemetry::shareable(&c.url).to_string(),
                (None, Some(doi)) => format!("https://doi.org/{doi}"),
                (None, None) => return Ok(vec![]),
            };
            let base = cx.config.base_url("wayback", "https://archive.org");
            let url = with_query(&format!("{base}/wayback/available"), &[("url", &target)])?;
            let Some(answer) = fetch_json::<WaybackAnswer>(cx, "wayback", work, &url).await? else {
                return Ok(vec![]);
            };
            let snapshot = answer.archived_snapshots.and_then(|s| s.closest);
            Ok(snapshot
                .filter(|s| s.available.unwrap_or(false) && s.status.as_deref().is_none_or(|st| st == "200"))
                .and_then(|s| s.url)
                .filter(|u| is_web_url(u))
                .map(|u| vec![candidate("wayback", raw_snapshot_url(&u), true)])
                .unwrap_or_default())
        }
        .boxed()
    }
}

/// Adds a PDF candidate unless the same URL is already in the list.
fn push_unique(out: &mut Vec<Candidate>, resolver: &str, url: impl Into<String> + AsRef<str>) {
    if !out.iter().any(|c| c.url == url.as_ref()) {
        out.push(candidate(resolver, url, true));
    }
}

pub(crate) fn is_web_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")) && url.parse::<http::Uri>().is_ok()
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;
    use crate::resolvers::parse_json;
    use crate::works::null_variants;

    /// Every variant of `sample` with one field (or list item) `null` is readable as `T`.
    fn reads_with_nulls<T: DeserializeOwned>(resolver: &'static str, sample: serde_json::Value) {
        let variants = null_variants(&sample);
        assert!(variants.len() > 3);
        for v in variants {
            if let Err(e) = parse_json::<T>(resolver, v.to_string().as_bytes()) {
                panic!("{resolver}: {v}: {e}");
            }
        }
    }

    #[test]
    fn nulls_in_optional_fields_are_read_as_nothing() {
        reads_with_nulls::<UnpaywallWork>(
            "unpaywall",
            json!({"best_oa_location": {"url_for_pdf": "https://a/1.pdf"},
                   "oa_locations": [{"url_for_pdf": "https://a/1.pdf"}, {"url_for_pdf": "https://b/1.pdf"}]}),
        );
        reads_with_nulls::<CrossrefEnvelope>(
            "crossref",
            json!({"message": {"link": [{"URL": "https://a/1.pdf", "content-type": "application/pdf"}]}}),
        );
        reads_with_nulls::<EpmcSearch>(
            "europe_pmc",
            json!({"resultList": {"result": [{"doi": "10.1/x", "fullTextUrlList": {"fullTextUrl": [
                {"documentStyle": "pdf", "availability": "Open access", "url": "https://a/1.pdf"}]}}]}}),
        );
        reads_with_nulls::<IdConv>("pmc", json!({"records": [{"pmcid": "PMC1"}]}));
        reads_with_nulls::<WaybackAnswer>(
            "wayback",
            json!({"archived_snapshots": {"closest": {"available": true, "url": "https://w/1", "status": "200"}}}),
        );
        // and what a null leaves is still used
        let w: UnpaywallWork = parse_json(
            "unpaywall",
            br#"{"best_oa_location": {"url_for_pdf": "https://a/1.pdf"}, "oa_locations": null}"#,
        )
        .unwrap();
        assert_eq!(
            w.best_oa_location.and_then(|l| l.url_for_pdf).as_deref(),
            Some("https://a/1.pdf")
        );
        let w: UnpaywallWork = parse_json(
            "unpaywall",
            br#"{"oa_locations": [null, {"url_for_pdf": "https://b/1.pdf"}]}"#,
        )
        .unwrap();
        assert_eq!(w.oa_locations.len(), 1);
    }

    #[test]
    fn europe_pmc_dois_match_normalised() {
        assert!(same_doi(Some("10.1000/ABC"), "10.1000/abc"));
        assert!(same_doi(Some("https://doi.org/10.1000/abc"), "10.1000/abc"));
        assert!(!same_doi(Some("10.1000/abd"), "10.1000/abc"));
        assert!(!same_doi(None, "10.1000/abc"));
        assert!(!same_doi(Some("not a doi"), "10.1000/abc"));
    }

    #[test]
    fn arxiv_ids_cannot_rewrite_the_path() {
        for good in ["1706.03762", "1706.03762v5", "hep-th/9901001", "math.AG/0309136"] {
            assert!(is_arxiv_id(good), "{good}");
        }
        for bad in [
            "../x",
            "a/../b",
            "..",
            ".",
            "a//b",
            "a/b/c",
            "/abs",
            "a/",
            "1706.03762?x",
            "a b",
        ] {
            assert!(!is_arxiv_id(bad), "{bad}");
        }
    }

    #[test]
    fn wayback_raw_urls() {
        assert_eq!(
            raw_snapshot_url("http://web.archive.org/web/20200101000000/https://x.org/a.pdf"),
            "https://web.archive.org/web/20200101000000id_/https://x.org/a.pdf"
        );
        assert_eq!(
            raw_snapshot_url("https://web.archive.org/web/2020id_/https://x.org/a.pdf"),
            "https://web.archive.org/web/2020id_/https://x.org/a.pdf"
        );
        assert_eq!(
            raw_snapshot_url("http://127.0.0.1:1/snap.pdf"),
            "http://127.0.0.1:1/snap.pdf"
        );
    }
}
