//! The resolvers that take an API key: CORE (needs one) and Semantic Scholar (works without,
//! with less room).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;

use super::json::{at, has_doi, items, looks_like_pdf, quoted, text, Found};
use super::{doi_segment, fetch_json_with, with_query, Ask, ResolveContext, Resolver};
use crate::error::BoxError;
use crate::works::{Candidate, Work};

/// CORE: `GET {base}/v3/search/works?q=doi:"{doi}"&limit=5` with `Authorization: Bearer
/// {key}`; for the works with that DOI, `downloadUrl`, the `links[]` of type `download`,
/// and the `sourceFulltextUrls` that are PDFs.
///
/// Needs a key ([`Resolver::required_key`]). The runner leaves it out at start when it has
/// none; called without one anyway (a hand-built [`ResolveContext`]), it asks nothing and
/// finds nothing, and says why once per process (a `warn` log line), not once per work.
#[derive(Clone, Copy, Debug, Default)]
pub struct Core;

impl Resolver for Core {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "core"
    }

    fn required_key(&self) -> Option<&'static str> {
        Some("core")
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
            let Some(key) = cx.config.api_keys.get("core") else {
                static TOLD: std::sync::Once = std::sync::Once::new();
                TOLD.call_once(|| {
                    tracing::warn!(
                        "resolver core skipped: it needs an API key (set CORE_API_KEY or --api-key core=KEY)"
                    );
                });
                return Ok(vec![]);
            };
            let base = cx.config.base_url("core", "https://api.core.ac.uk");
            let query = format!("doi:{}", quoted(doi));
            let url = with_query(&format!("{base}/v3/search/works"), &[("q", &query), ("limit", "5")])?;
            let ask = Ask::get(&url).secret_header("authorization", &format!("Bearer {key}"))?;
            let Some(answer) = fetch_json_with::<Value>(cx, "core", work, ask).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("core");
            for hit in items(at(&answer, &["results"])) {
                let dois = items(at(hit, &["doi"])).filter_map(Value::as_str);
                if !has_doi(dois, doi) {
                    continue;
                }
                if let Some(url) = text(hit, &["downloadUrl"]) {
                    found.push(url);
                }
                for link in items(at(hit, &["links"])) {
                    if text(link, &["type"]) == Some("download") {
                        if let Some(url) = text(link, &["url"]) {
                            found.push(url);
                        }
                    }
                }
                for url in items(at(hit, &["sourceFulltextUrls"])).filter_map(Value::as_str) {
                    if looks_like_pdf(url) {
                        found.push(url);
                    }
                }
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}

/// Semantic Scholar: `GET {base}/graph/v1/paper/DOI:{doi}?fields=openAccessPdf` (the DOI one
/// encoded path segment), with `x-api-key` when a key is given; `openAccessPdf.url`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SemanticScholar;

impl Resolver for SemanticScholar {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "semantic_scholar"
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
                .base_url("semantic_scholar", "https://api.semanticscholar.org");
            let url = with_query(
                &format!("{base}/graph/v1/paper/DOI:{}", doi_segment(doi)?),
                &[("fields", "openAccessPdf")],
            )?;
            let mut ask = Ask::get(&url);
            if let Some(key) = cx.config.api_keys.get("semantic_scholar") {
                ask = ask.secret_header("x-api-key", key)?;
            }
            let Some(answer) = fetch_json_with::<Value>(cx, "semantic_scholar", work, ask).await? else {
                return Ok(vec![]);
            };
            let mut found = Found::new("semantic_scholar");
            if let Some(url) = text(&answer, &["openAccessPdf", "url"]) {
                found.push(url);
            }
            Ok(found.into_vec())
        }
        .boxed()
    }
}
