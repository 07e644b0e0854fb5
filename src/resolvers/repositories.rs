//! Repositories and preprint servers: DOAJ, Zenodo, Figshare, HAL, OSF and OpenAIRE.
//!
//! Each searches its service by DOI and keeps only the records that carry that DOI (a
//! search can answer with near matches), then their PDF files. No key is needed.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;

use super::json::{at, has_doi, items, looks_like_pdf, quoted, text, Found};
use super::{fetch_json, fetch_json_with, with_query, Ask, ResolveContext, Resolver};
use crate::error::BoxError;
use crate::works::{Candidate, Work};

type Resolved<'a> = BoxFuture<'a, Result<Vec<Candidate>, BoxError>>;

/// The characters of a search query kept as they are in a URL path segment.
const QUERY_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// DOAJ: `GET {base}/api/search/articles/{query}?pageSize=10`, the query `doi:"{doi}"` as one
/// encoded path segment (DOAJ takes its query in the path); the `bibjson.link[]` of the
/// articles with that DOI that are PDFs (`content_type` PDF, or a `.pdf` URL).
#[derive(Clone, Copy, Debug, Default)]
pub struct Doaj;

impl Resolver for Doaj {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "doaj"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("doaj", "https://doaj.org");
            let query = format!("doi:{}", quoted(doi));
            let segment = percent_encoding::utf8_percent_encode(&query, QUERY_KEEP);
            let url = with_query(&format!("{base}/api/search/articles/{segment}"), &[("pageSize", "10")])?;
            let Some(answer) = fetch_json::<Value>(cx, "doaj", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("doaj");
            for article in items(at(&answer, &["results"])) {
                let ids = items(at(article, &["bibjson", "identifier"]))
                    .filter(|i| text(i, &["type"]).is_some_and(|t| t.eq_ignore_ascii_case("doi")))
                    .filter_map(|i| text(i, &["id"]));
                if !has_doi(ids, doi) {
                    continue;
                }
                for link in items(at(article, &["bibjson", "link"])) {
                    let Some(url) = text(link, &["url"]) else { continue };
                    let pdf_type =
                        text(link, &["content_type"]).is_some_and(|t| t.to_ascii_lowercase().contains("pdf"));
                    if pdf_type || looks_like_pdf(url) {
                        found.push(url);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// Zenodo: `GET {base}/api/records?q=doi:"{doi}"&size=5`; the PDF files (a name, `key` or
/// `filename`, ending in `.pdf`, or a PDF `type`/`mimetype`) of the records whose `doi`,
/// `conceptdoi` or `metadata.doi` is the DOI, each by its `links.content`,
/// `links.download` or `links.self` (the API has used each over the years).
#[derive(Clone, Copy, Debug, Default)]
pub struct Zenodo;

impl Resolver for Zenodo {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "zenodo"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("zenodo", "https://zenodo.org");
            let query = format!("doi:{}", quoted(doi));
            let url = with_query(&format!("{base}/api/records"), &[("q", &query), ("size", "5")])?;
            let Some(answer) = fetch_json::<Value>(cx, "zenodo", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("zenodo");
            for record in items(at(&answer, &["hits", "hits"])) {
                let dois = [&["doi"][..], &["conceptdoi"], &["metadata", "doi"]]
                    .into_iter()
                    .filter_map(|p| text(record, p));
                if !has_doi(dois, doi) {
                    continue;
                }
                for file in items(at(record, &["files"])) {
                    let name = text(file, &["key"]).or_else(|| text(file, &["filename"])).unwrap_or("");
                    let typed_pdf = [&["type"][..], &["mimetype"]]
                        .into_iter()
                        .filter_map(|p| text(file, p))
                        .any(|t| t.to_ascii_lowercase().contains("pdf"));
                    if !(typed_pdf || looks_like_pdf(name)) {
                        continue;
                    }
                    let link = ["content", "download", "self"]
                        .into_iter()
                        .find_map(|l| text(file, &["links", l]));
                    if let Some(url) = link {
                        found.push(url);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// Figshare: `POST {base}/v2/articles/search` with `{"search_for": ":doi: \"{doi}\""}`; for
/// each article with that DOI (at most three), its files (from the answer when it lists
/// them, else `GET {base}/v2/articles/{id}/files`): the PDFs (`.pdf` name or PDF
/// `mimetype`) that are not link-only, by `download_url`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figshare;

impl Resolver for Figshare {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "figshare"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("figshare", "https://api.figshare.com");
            let url = format!("{base}/v2/articles/search");
            let body = serde_json::json!({"search_for": format!(":doi: {}", quoted(doi)), "page_size": 10});
            let mut ask = Ask::get(&url);
            ask.method = http::Method::POST;
            ask.body = serde_json::to_vec(&body)?.into();
            ask.headers.push((
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            ));
            let Some(answer) = fetch_json_with::<Value>(cx, "figshare", work, ask).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("figshare");
            let articles = items(Some(&answer)).filter(|a| text(a, &["doi"]).is_some_and(|d| has_doi([d], doi)));
            for article in articles.take(3) {
                let listed;
                let files = match at(article, &["files"]).filter(|f| f.is_array()) {
                    Some(files) => files,
                    None => {
                        // the id must be a number: it goes into the path
                        let Some(id) = at(article, &["id"]).and_then(Value::as_u64) else {
                            continue;
                        };
                        let url = format!("{base}/v2/articles/{id}/files");
                        match fetch_json::<Value>(cx, "figshare", work, &url).await? {
                            Some(v) => {
                                listed = v;
                                &listed
                            }
                            None => continue,
                        }
                    }
                };
                for file in items(Some(files)) {
                    if at(file, &["is_link_only"]).and_then(Value::as_bool) == Some(true) {
                        continue;
                    }
                    let name = text(file, &["name"]).unwrap_or("");
                    let pdf_type = text(file, &["mimetype"]).is_some_and(|t| t.to_ascii_lowercase().contains("pdf"));
                    if let Some(url) = text(file, &["download_url"]).filter(|_| pdf_type || looks_like_pdf(name)) {
                        found.push(url);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// HAL: `GET {base}/search/?q=doiId_s:"{doi}"&fl=doiId_s,fileMain_s,files_s&wt=json`; for
/// the documents with that DOI, `fileMain_s` (the deposited main file) and the `files_s`
/// that are PDFs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hal;

impl Resolver for Hal {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "hal"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("hal", "https://api.archives-ouvertes.fr");
            let query = format!("doiId_s:{}", quoted(doi));
            let url = with_query(
                &format!("{base}/search/"),
                &[("q", &query), ("fl", "doiId_s,fileMain_s,files_s"), ("wt", "json")],
            )?;
            let Some(answer) = fetch_json::<Value>(cx, "hal", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("hal");
            for doc in items(at(&answer, &["response", "docs"])) {
                let dois = items(at(doc, &["doiId_s"])).filter_map(Value::as_str);
                if !has_doi(dois, doi) {
                    continue;
                }
                for main in items(at(doc, &["fileMain_s"])).filter_map(Value::as_str) {
                    found.push(main);
                }
                for file in items(at(doc, &["files_s"])).filter_map(Value::as_str) {
                    if looks_like_pdf(file) {
                        found.push(file);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// OSF preprints: `GET {base}/v2/preprints/?filter[doi]={doi}`; for each preprint whose
/// `attributes.doi` or `links.preprint_doi` is the DOI, its `links.download` if the answer
/// has one, else its primary file (`relationships.primary_file`), asked for at
/// `GET {base}/v2/files/{id}/` (the id alone is taken from the answer, never its URL), and
/// that file's `links.download`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Osf;

/// The id of a file from `…/v2/files/{id}/`: letters and digits only.
fn osf_file_id(preprint: &Value) -> Option<&str> {
    let from_data = text(preprint, &["relationships", "primary_file", "data", "id"]);
    let from_href = text(preprint, &["relationships", "primary_file", "links", "related", "href"])
        .and_then(|h| h.trim_end_matches('/').rsplit('/').next());
    from_data
        .or(from_href)
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Resolver for Osf {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "osf"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("osf", "https://api.osf.io");
            let url = with_query(&format!("{base}/v2/preprints/"), &[("filter[doi]", doi)])?;
            let Some(answer) = fetch_json::<Value>(cx, "osf", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("osf");
            let preprints = items(at(&answer, &["data"])).filter(|p| {
                let dois = [&["attributes", "doi"][..], &["links", "preprint_doi"]]
                    .into_iter()
                    .filter_map(|path| text(p, path));
                has_doi(dois, doi)
            });
            for preprint in preprints.take(3) {
                if let Some(url) = text(preprint, &["links", "download"]) {
                    found.push(url);
                    continue;
                }
                let Some(id) = osf_file_id(preprint) else { continue };
                let url = format!("{base}/v2/files/{id}/");
                if let Some(file) = fetch_json::<Value>(cx, "osf", work, &url).await? {
                    if let Some(download) = text(&file, &["data", "links", "download"]) {
                        found.push(download);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// OpenAIRE: `GET {base}/search/publications?doi={doi}&format=json`; for each result whose
/// `pid` holds the DOI, the `.pdf` URLs (`webresource.url`, `url`, `fulltext`) of its own
/// open instances (`instance` and `children.instance`, `accessright` OPEN or not given)
/// and its `fulltext`. Never anything under `rels`: those are other works (cited, related),
/// and their PDFs are not this work's. A `doi.org` URL is left out (it is the landing page).
///
/// The answer is XML turned into JSON: a text is `{"$": "…"}`, and a list of one is often
/// the item alone; both read the same here.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAire;

/// A text node: `"…"` or `{"$": "…"}`.
fn node_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        Value::Object(_) => text(v, &["$"]),
        _ => None,
    }
    .map(str::trim)
    .filter(|s| !s.is_empty())
}

/// Whether an instance is open: its `accessright` `@classid` is OPEN, or it says nothing.
fn open_instance(instance: &Value) -> bool {
    match at(instance, &["accessright"]) {
        None | Some(Value::Null) => true,
        Some(right) => text(right, &["@classid"]).is_some_and(|c| c.eq_ignore_ascii_case("open")),
    }
}

/// The PDF URLs of one `oaf:result` (see [`OpenAire`]).
fn openaire_pdfs<'a>(result: &'a Value, out: &mut Vec<&'a str>) {
    let instances = items(at(result, &["instance"])).chain(items(at(result, &["children", "instance"])));
    for instance in instances.filter(|i| open_instance(i)) {
        let urls = items(at(instance, &["webresource"]))
            .flat_map(|w| items(at(w, &["url"])))
            .chain(items(at(instance, &["url"])))
            .chain(items(at(instance, &["fulltext"])));
        out.extend(urls.filter_map(node_text));
    }
    out.extend(items(at(result, &["fulltext"])).filter_map(node_text));
    out.retain(|u| looks_like_pdf(u) && !u.to_ascii_lowercase().contains("://doi.org/"));
}

impl Resolver for OpenAire {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "openaire"
    }

    fn resolve<'a>(&'a self, work: &'a Work, cx: &'a ResolveContext) -> Resolved<'a> {
        async move {
            let Some(doi) = work.doi.as_deref() else {
                return Ok(vec![]);
            };
            let base = cx.config.base_url("openaire", "https://api.openaire.eu");
            let url = with_query(
                &format!("{base}/search/publications"),
                &[("doi", doi), ("format", "json")],
            )?;
            let Some(answer) = fetch_json::<Value>(cx, "openaire", work, &url).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("openaire");
            for entry in items(at(&answer, &["response", "results", "result"])) {
                let Some(result) = at(entry, &["metadata", "oaf:entity", "oaf:result"]) else {
                    continue;
                };
                let dois = items(at(result, &["pid"]))
                    .filter(|p| text(p, &["@classid"]).is_some_and(|c| c.eq_ignore_ascii_case("doi")))
                    .filter_map(node_text);
                if !has_doi(dois, doi) {
                    continue;
                }
                let mut urls = Vec::new();
                openaire_pdfs(result, &mut urls);
                urls.into_iter().for_each(|u| found.push(u));
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn osf_file_ids_are_plain() {
        let p = json!({"relationships": {"primary_file": {"links": {"related": {"href": "https://api.osf.io/v2/files/5e9b1a/"}}}}});
        assert_eq!(osf_file_id(&p), Some("5e9b1a"));
        let p = json!({"relationships": {"primary_file": {"data": {"id": "../x"}}}});
        assert_eq!(osf_file_id(&p), None);
        assert_eq!(osf_file_id(&json!({"relationships": null})), None);
    }

    #[test]
    fn openaire_reads_open_instances_never_rels() {
        let r = json!({
            "pid": {"@classid": "doi", "$": "10.1/x"},
            "children": {"instance": {"accessright": {"@classid": "OPEN"},
                                      "webresource": {"url": {"$": "https://r.example/x.pdf"}}}},
            "instance": [
                {"accessright": {"@classid": "CLOSED"}, "webresource": {"url": {"$": "https://c.example/x.pdf"}}},
                {"webresource": {"url": [{"$": "https://doi.org/10.1/x.pdf"}, {"$": "https://r.example/page"}]}},
                null
            ],
            "rels": {"rel": [{"instance": {"fulltext": {"$": "https://other.example/other.pdf"}}}]}
        });
        let mut out = Vec::new();
        openaire_pdfs(&r, &mut out);
        assert_eq!(out, ["https://r.example/x.pdf"]);
    }
}
