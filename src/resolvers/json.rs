//! Reading answers whose shape varies: paths into a [`serde_json::Value`].
//!
//! The repository APIs answer with large records whose fields are sometimes `null`, a single
//! value where a list is documented (HAL's `files_s`, Solr's multi-valued fields), or missing
//! altogether. Typed structs would reject a whole answer for one odd field; walking a `Value`
//! reads what is there and skips the rest, which is what a resolver wants.

use serde_json::Value;

use super::apis::is_web_url;
use super::candidate;
use crate::works::{normalize_doi, Candidate};

/// The value at `path` (object keys), if every step is an object holding the key.
pub(crate) fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.as_object()?.get(*key))
}

/// The items of a list; a single non-null value reads as a list of one, `null` or nothing
/// as an empty list.
pub(crate) fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    let slice: &[Value] = match value {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => &[],
        Some(v) => std::slice::from_ref(v),
    };
    slice.iter().filter(|v| !v.is_null())
}

/// The string at `path`, trimmed, if it is a non-empty string.
pub(crate) fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// Whether any DOI among `dois` is `asked` (normalised: no `https://doi.org/`, any case).
pub(crate) fn has_doi<'a>(dois: impl IntoIterator<Item = &'a str>, asked: &str) -> bool {
    let Some(asked) = normalize_doi(asked) else {
        return false;
    };
    dois.into_iter()
        .any(|d| normalize_doi(d).as_deref() == Some(asked.as_str()))
}

/// Whether a URL's path ends in `.pdf` (any case; the query and fragment left out).
pub(crate) fn looks_like_pdf(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or("");
    path.to_ascii_lowercase().ends_with(".pdf")
}

/// `doi` as a quoted phrase for a search query (Lucene, Solr, Elasticsearch): `"` and `\`
/// escaped so that the DOI can only ever be one phrase.
pub(crate) fn quoted(doi: &str) -> String {
    let mut out = String::with_capacity(doi.len() + 2);
    out.push('"');
    for c in doi.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The candidates gathered by a resolver: web URLs only, each once, in order found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    resolver: &'static str,
    out: Vec<Candidate>,
}

impl Found {
    pub(crate) fn new(resolver: &'static str) -> Found {
        Found {
            resolver,
            out: Vec::new(),
        }
    }

    /// Adds `url` as a PDF candidate unless it is not a web URL or is there already.
    pub(crate) fn push(&mut self, url: &str) {
        let url = url.trim();
        if is_web_url(url) && !self.out.iter().any(|c| c.url == url) {
            self.out.push(candidate(self.resolver, url, true));
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Candidate> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_lists_and_phrases() {
        let v = json!({"a": {"b": " x ", "n": null}, "l": ["u", null, "v"], "one": "w"});
        assert_eq!(text(&v, &["a", "b"]), Some("x"));
        assert_eq!(text(&v, &["a", "n"]), None);
        assert_eq!(text(&v, &["a", "b", "c"]), None);
        assert_eq!(items(at(&v, &["l"])).count(), 2);
        assert_eq!(items(at(&v, &["one"])).count(), 1);
        assert_eq!(items(at(&v, &["none"])).count(), 0);
        assert_eq!(quoted(r#"10.1/a"b\c"#), r#""10.1/a\"b\\c""#);
        assert!(looks_like_pdf("https://h/x/Paper.PDF?download=1"));
        assert!(!looks_like_pdf("https://h/x.pdf.html"));
        assert!(has_doi(["https://doi.org/10.1/ABC"], "10.1/abc"));
        assert!(!has_doi(["10.1/abd"], "10.1/abc"));
    }
}
