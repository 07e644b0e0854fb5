//! The landing-page resolver and the lenient tag scanner it shares with the PMC resolver.
//!
//! Landing pages are HTML, not well-formed XML, so an XML parser would reject many of them;
//! all we need is the attributes of a few tags, which this small scanner reads.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::apis::is_web_url;
use super::{candidate, doi_path, fetch, ResolveContext, Resolver};
use crate::context::{OperationType, Provider};
use crate::error::BoxError;
use crate::works::{Candidate, Work};

/// The DOI's landing page (`{base}/{doi}`, redirects followed) on the `Extract` operation,
/// and the PDF its `<meta name="citation_pdf_url">` names.
///
/// With [`ResolveContext::robots`] set, the page is not fetched when its site's robots.txt
/// refuses it ([`RobotsDisallowed`](super::RobotsDisallowed), reason `robots_disallowed`),
/// and a page reached by redirect is not read when the site it landed on refuses it (the
/// client follows redirects itself, so that page was fetched once).
#[derive(Clone, Copy, Debug, Default)]
pub struct Landing;

impl Resolver for Landing {
    fn applies_to(&self, work: &Work) -> bool {
        work.doi.is_some()
    }

    fn name(&self) -> &'static str {
        "landing"
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
            let base = cx.config.base_url("landing", "https://doi.org");
            let url = format!("{base}/{}", doi_path(doi)?);
            let provider = Provider::new("landing");
            if let Some(robots) = &cx.robots {
                robots.check(&cx.http, &url, &provider).await?;
            }
            let Some((body, effective)) = fetch(cx, "landing", OperationType::Extract, work, &url).await? else {
                return Ok(vec![]);
            };
            // The client followed any redirects (doi.org to the publisher) without asking:
            // the page it landed on is not read when that site's robots.txt refuses it.
            if let Some(robots) = &cx.robots {
                let landed = effective.to_string();
                if landed != url {
                    robots.check(&cx.http, &landed, &provider).await?;
                }
            }
            let html = String::from_utf8_lossy(&body);
            Ok(citation_pdf_url(&html, &effective.to_string())
                .map(|u| vec![candidate("landing", u, true)])
                .unwrap_or_default())
        }
        .boxed()
    }
}

/// The `citation_pdf_url` of an HTML page, resolved against the page's URL.
///
/// ```
/// use contentdownload::resolvers::citation_pdf_url;
/// let html = r#"<html><head><META content="/article/1.pdf" NAME='citation_pdf_url'></head></html>"#;
/// assert_eq!(citation_pdf_url(html, "https://j.example/article/1").as_deref(), Some("https://j.example/article/1.pdf"));
/// ```
pub fn citation_pdf_url(html: &str, page_url: &str) -> Option<String> {
    let href = tags(html, "meta")
        .find(|a| {
            a.get("name")
                .is_some_and(|n| n.eq_ignore_ascii_case("citation_pdf_url"))
        })?
        .get("content")?
        .trim()
        .to_owned();
    let base = url::Url::parse(page_url).ok()?;
    let resolved = base.join(&href).ok()?.to_string();
    is_web_url(&resolved).then_some(resolved)
}

/// The attributes (names lower-cased, entities `&amp;` decoded) of every `<name ...>` tag.
pub(crate) fn tags<'a>(doc: &'a str, name: &'a str) -> impl Iterator<Item = HashMap<String, String>> + 'a {
    let lower = doc.to_ascii_lowercase();
    let open = format!("<{name}");
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find(&open) {
        let at = from + i;
        let next = lower.as_bytes().get(at + open.len()).copied();
        if matches!(next, Some(b) if b.is_ascii_whitespace() || b == b'/' || b == b'>') {
            starts.push(at + open.len());
        }
        from = at + open.len();
    }
    starts.into_iter().map(move |start| {
        let end = doc[start..].find('>').map_or(doc.len(), |e| start + e);
        attributes(&doc[start..end])
    })
}

fn attributes(mut s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        let name_len = s
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(s.len());
        if name_len == 0 {
            return out;
        }
        let name = s[..name_len].to_ascii_lowercase();
        s = s[name_len..].trim_start();
        let value = if let Some(rest) = s.strip_prefix('=') {
            let rest = rest.trim_start();
            let (value, remaining) = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &rest[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], body.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                }
            };
            s = remaining;
            value.replace("&amp;", "&")
        } else {
            String::new()
        };
        out.entry(name).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_attributes_leniently() {
        let doc = r#"<link format="tgz" href="a.tgz"/><LINK format='pdf' href=ftp://x/y.pdf ><linked x="1">"#;
        let found: Vec<_> = tags(doc, "link").collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1]["format"], "pdf");
        assert_eq!(found[1]["href"], "ftp://x/y.pdf");
        let meta: Vec<_> = tags("<meta name=\"a\" content=\"x &amp; y\"", "meta").collect();
        assert_eq!(meta[0]["content"], "x & y");
        assert_eq!(tags("no tags", "meta").count(), 0);
    }

    #[test]
    fn citation_pdf_url_needs_a_web_url() {
        let page = r#"<meta name="citation_pdf_url" content="javascript:alert(1)">"#;
        assert_eq!(citation_pdf_url(page, "https://x.org/a"), None);
        assert_eq!(citation_pdf_url("<p>nothing</p>", "https://x.org/a"), None);
    }
}
