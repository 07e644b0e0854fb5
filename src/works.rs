//! Works: the scholarly records the runner fetches PDFs for, read from OpenAlex JSONL or a
//! plain list of DOIs.
//!
//! OpenAlex records are parsed leniently: unknown fields are ignored, missing ones are
//! `None`, and a malformed line is reported with its line number and skipped, never fatal.
//!
//! # Example
//!
//! ```
//! use contentdownload::works::{read_works_jsonl, Work};
//!
//! let input = r#"{"id":"https://openalex.org/W2741809807","doi":"https://doi.org/10.7717/PEERJ.4375","open_access":{"oa_url":"https://peerj.com/articles/4375.pdf"}}
//! not json
//! "#;
//! let (works, errors): (Vec<_>, Vec<_>) = read_works_jsonl(input.as_bytes()).partition(Result::is_ok);
//! let work: Work = works.into_iter().next().unwrap().unwrap();
//! assert_eq!(work.id, "W2741809807");
//! assert_eq!(work.doi.as_deref(), Some("10.7717/peerj.4375"));
//! assert_eq!(work.candidates[0].url, "https://peerj.com/articles/4375.pdf");
//! assert_eq!(errors[0].as_ref().unwrap_err().line, 2);
//! ```

use std::io::BufRead;

use serde::{Deserialize, Serialize};

/// One work to fetch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// A stable id: the OpenAlex short id (`W2741809807`), or `doi:<doi>` for a bare DOI.
    pub id: String,
    /// The DOI, normalised (no `https://doi.org/` prefix, lower case).
    pub doi: Option<String>,
    /// The title, if known (never used for file names).
    pub title: Option<String>,
    /// The publication year.
    pub publication_year: Option<i32>,
    /// The PubMed Central id (`PMC5815332`), if known.
    pub pmcid: Option<String>,
    /// The PubMed id, if known.
    pub pmid: Option<String>,
    /// The arXiv id (`1706.03762`), if known.
    pub arxiv_id: Option<String>,
    /// Candidate URLs already in the record, best first, without duplicates.
    pub candidates: Vec<Candidate>,
    /// The work's type as OpenAlex names it (`article`, `preprint`, `book-chapter`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_type: Option<String>,
    /// OpenAlex's `open_access.is_oa`: whether any open-access copy is known. `None` when the
    /// record does not say (and for a bare DOI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_oa: Option<bool>,
}

/// A URL that may serve the work's PDF, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The URL.
    pub url: String,
    /// Who proposed it (`openalex`, `unpaywall`, ...).
    pub resolver: String,
    /// Whether the source says it is a PDF (`pdf_url`, `url_for_pdf`), rather than a landing page.
    pub is_pdf: bool,
}

/// A line of the input that could not be read as a work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl Work {
    /// A work known only by its DOI.
    pub fn from_doi(doi: &str) -> Option<Work> {
        let doi = normalize_doi(doi)?;
        Some(Work {
            id: format!("doi:{doi}"),
            arxiv_id: arxiv_from_doi(&doi),
            doi: Some(doi),
            title: None,
            publication_year: None,
            pmcid: None,
            pmid: None,
            candidates: Vec::new(),
            work_type: None,
            is_oa: None,
        })
    }

    /// Parses one OpenAlex work record (as the API and the snapshot give it).
    pub fn from_openalex(value: &serde_json::Value) -> Result<Work, String> {
        let record: OpenAlexWork =
            serde_json::from_value(value.clone()).map_err(|e| format!("not an OpenAlex work: {e}"))?;
        record.into_work()
    }
}

/// Normalises a DOI: strips `https://doi.org/`, `doi:` and white space, lower-cases it.
/// Returns `None` when what is left does not look like a DOI (`10.<registrant>/<suffix>`).
pub fn normalize_doi(raw: &str) -> Option<String> {
    let s = raw.trim();
    let lower = s.to_ascii_lowercase();
    let mut rest = lower.as_str();
    for prefix in [
        "https://doi.org/",
        "http://doi.org/",
        "https://dx.doi.org/",
        "http://dx.doi.org/",
        "doi:",
    ] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r.trim_start();
            break;
        }
    }
    let (registrant, suffix) = rest.split_once('/')?;
    let valid = registrant.starts_with("10.")
        && registrant.len() > 3
        && !suffix.is_empty()
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control());
    valid.then(|| rest.to_owned())
}

fn arxiv_from_doi(doi: &str) -> Option<String> {
    doi.strip_prefix("10.48550/arxiv.").map(str::to_owned)
}

fn arxiv_from_url(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let idx = lower
        .find("arxiv.org/abs/")
        .map(|i| i + "arxiv.org/abs/".len())
        .or_else(|| lower.find("arxiv.org/pdf/").map(|i| i + "arxiv.org/pdf/".len()))?;
    let id = url[idx..]
        .split(['?', '#'])
        .next()?
        .trim_end_matches(".pdf")
        .trim_end_matches('/');
    (!id.is_empty()).then(|| id.to_owned())
}

/// The longest input line read, in bytes (64 MiB). OpenAlex's largest records (thousands of
/// authors) are a few MiB; a longer line is one [`LineError`] and is skipped, so the input
/// never chooses how much memory a line takes.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// The lines of `reader`, numbered from 1, without their `\n` or `\r\n`. A line that is not
/// UTF-8 or is longer than [`MAX_LINE_BYTES`] is a [`LineError`] and reading goes on; a read
/// error (a truncated gzip part) is a [`LineError`] that ends the reader.
fn numbered_lines<R: BufRead>(mut reader: R) -> impl Iterator<Item = Result<(usize, String), LineError>> {
    let mut line = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        line += 1;
        let mut buf = Vec::new();
        let read = std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf);
        let fail = |message: String| Some(Err(LineError { line, message }));
        match read {
            Ok(0) => {
                done = true;
                None
            }
            Ok(_) if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') => {
                if let Err(e) = skip_line(&mut reader) {
                    done = true;
                    return fail(format!("unreadable: {e}"));
                }
                fail(format!("longer than {MAX_LINE_BYTES} bytes"))
            }
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                match String::from_utf8(buf) {
                    Ok(text) => Some(Ok((line, text))),
                    Err(_) => fail("unreadable: not UTF-8".into()),
                }
            }
            Err(e) => {
                // A read error does not go away when asked again: stop this reader.
                done = true;
                fail(format!("unreadable: {e}"))
            }
        }
    })
}

/// Consumes `reader` up to and including the next `\n` (or to the end).
fn skip_line<R: BufRead>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Reads OpenAlex works from JSONL, one result per non-blank line.
pub fn read_works_jsonl<R: BufRead>(reader: R) -> impl Iterator<Item = Result<Work, LineError>> {
    numbered_lines(reader).filter_map(|line| {
        let (line_no, line) = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        if line.trim().is_empty() {
            return None;
        }
        // Straight into the record's few fields: a snapshot's lines are large (authorships,
        // abstracts) and a `Value` first would build all of it.
        let parsed = serde_json::from_str::<OpenAlexWork>(&line)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => format!("not an OpenAlex work: {e}"),
                _ => format!("not JSON: {e}"),
            })
            .and_then(OpenAlexWork::into_work);
        Some(parsed.map_err(|message| LineError { line: line_no, message }))
    })
}

/// Reads a list of DOIs, one a line (blank lines and `#` comments skipped).
pub fn read_doi_list<R: BufRead>(reader: R) -> impl Iterator<Item = Result<Work, LineError>> {
    numbered_lines(reader).filter_map(|line| {
        let (line_no, line) = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            return None;
        }
        Some(Work::from_doi(text).ok_or_else(|| LineError {
            line: line_no,
            message: format!("not a DOI: {text:?}"),
        }))
    })
}

/// For `#[serde(default, deserialize_with = "null_as_default")]`: a `null` reads as the
/// type's default, as a missing field does (APIs send `"ids": null` as readily as nothing).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// For `#[serde(default, deserialize_with = "lenient_list")]`: a list where `null` (for the
/// whole list, or for an item) is read as nothing.
pub(crate) fn lenient_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Option::<Vec<Option<T>>>::deserialize(d)?;
    Ok(items.into_iter().flatten().flatten().collect())
}

#[derive(Deserialize)]
struct OpenAlexWork {
    id: Option<String>,
    doi: Option<String>,
    title: Option<String>,
    display_name: Option<String>,
    publication_year: Option<i32>,
    #[serde(default, deserialize_with = "null_as_default")]
    ids: Ids,
    best_oa_location: Option<Location>,
    primary_location: Option<Location>,
    #[serde(default, deserialize_with = "lenient_list")]
    locations: Vec<Location>,
    open_access: Option<OpenAccess>,
    #[serde(rename = "type")]
    work_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct Ids {
    openalex: Option<String>,
    doi: Option<String>,
    pmid: Option<String>,
    pmcid: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    pdf_url: Option<String>,
    landing_page_url: Option<String>,
}

#[derive(Deserialize)]
struct OpenAccess {
    oa_url: Option<String>,
    is_oa: Option<bool>,
}

fn last_segment(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

impl OpenAlexWork {
    fn into_work(self) -> Result<Work, String> {
        let raw_id = self.id.or(self.ids.openalex).ok_or("no `id`")?;
        let id = last_segment(&raw_id).to_ascii_uppercase();
        let id_ok = id.len() > 1 && id.starts_with('W') && id[1..].chars().all(|c| c.is_ascii_digit());
        if !id_ok {
            return Err(format!(
                "`id` {raw_id:?} is not an OpenAlex work id (W followed by digits)"
            ));
        }
        let doi = self.doi.or(self.ids.doi).as_deref().and_then(normalize_doi);
        let pmcid = self.ids.pmcid.as_deref().map(|p| {
            let seg = last_segment(p);
            if seg.to_ascii_uppercase().starts_with("PMC") {
                seg.to_ascii_uppercase()
            } else {
                format!("PMC{seg}")
            }
        });
        let pmid = self.ids.pmid.as_deref().map(|p| last_segment(p).to_owned());

        let mut candidates: Vec<Candidate> = Vec::new();
        let mut push = |url: Option<&str>, is_pdf: bool| {
            let Some(url) = url
                .map(str::trim)
                .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            else {
                return;
            };
            if let Some(existing) = candidates.iter_mut().find(|c| c.url == url) {
                existing.is_pdf |= is_pdf;
                return;
            }
            candidates.push(Candidate {
                url: url.to_owned(),
                resolver: "openalex".into(),
                is_pdf,
            });
        };
        let locations = self
            .best_oa_location
            .iter()
            .chain(self.primary_location.iter())
            .chain(self.locations.iter());
        let mut arxiv_id = doi.as_deref().and_then(arxiv_from_doi);
        for loc in locations.clone() {
            push(loc.pdf_url.as_deref(), true);
        }
        if let Some(oa) = &self.open_access {
            push(oa.oa_url.as_deref(), false);
        }
        for loc in locations {
            if arxiv_id.is_none() {
                arxiv_id = loc
                    .pdf_url
                    .as_deref()
                    .and_then(arxiv_from_url)
                    .or_else(|| loc.landing_page_url.as_deref().and_then(arxiv_from_url));
            }
            push(loc.landing_page_url.as_deref(), false);
        }
        // landing pages on doi.org are the DOI itself: the doi resolver tier handles them
        candidates.retain(|c| c.is_pdf || !c.url.contains("://doi.org/"));

        Ok(Work {
            id,
            doi,
            title: self.title.or(self.display_name),
            publication_year: self.publication_year,
            pmcid,
            pmid,
            arxiv_id,
            candidates,
            work_type: self.work_type,
            is_oa: self.open_access.as_ref().and_then(|oa| oa.is_oa),
        })
    }
}

/// Test support: `value` with each of its fields and list items in turn replaced by `null`
/// (one at a time, at every depth), and once with every top-level field `null`.
#[cfg(test)]
pub(crate) fn null_variants(value: &serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::Value;
    fn walk(value: &Value, rebuild: &dyn Fn(Value) -> Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let with = |v: Value| {
                        let mut m = map.clone();
                        m.insert(key.clone(), v);
                        rebuild(Value::Object(m))
                    };
                    out.push(with(Value::Null));
                    walk(child, &with, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let with = |v: Value| {
                        let mut a = items.clone();
                        a[i] = v;
                        rebuild(Value::Array(a))
                    };
                    out.push(with(Value::Null));
                    walk(child, &with, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &|v| v, &mut out);
    if let Value::Object(map) = value {
        out.push(Value::Object(map.keys().map(|k| (k.clone(), Value::Null)).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_in_any_field_keeps_the_record() {
        let json = serde_json::json!({
            "id": "https://openalex.org/W7",
            "doi": "https://doi.org/10.1000/x",
            "title": "T", "display_name": "T", "publication_year": 2020,
            "ids": {"openalex": "https://openalex.org/W7", "doi": "https://doi.org/10.1000/x",
                    "pmid": "https://pubmed.ncbi.nlm.nih.gov/1", "pmcid": "PMC1"},
            "best_oa_location": {"pdf_url": "https://a.example/1.pdf", "landing_page_url": "https://a.example/1"},
            "primary_location": {"pdf_url": "https://a.example/1.pdf", "landing_page_url": "https://a.example/1"},
            "locations": [{"pdf_url": "https://b.example/1.pdf", "landing_page_url": "https://b.example/1"}],
            "open_access": {"oa_url": "https://a.example/1.pdf"}
        });
        let variants = null_variants(&json);
        assert!(variants.len() > 20, "{}", variants.len());
        for v in variants {
            // only the id is needed; without any id the record is refused, by name
            let has_id = v["id"].is_string() || v["ids"]["openalex"].is_string();
            match Work::from_openalex(&v) {
                Ok(work) => assert_eq!(work.id, "W7", "{v}"),
                Err(e) => assert!(!has_id && e.contains("id"), "{v}: {e}"),
            }
        }
        // the issue's case: "locations": null kept the record's other URLs
        let mut v = json.clone();
        v["locations"] = serde_json::Value::Null;
        let work = Work::from_openalex(&v).unwrap();
        assert_eq!(work.candidates[0].url, "https://a.example/1.pdf");
    }

    #[test]
    fn full_record() {
        let json = serde_json::json!({
            "id": "https://openalex.org/W2741809807",
            "doi": "https://doi.org/10.7717/peerj.4375",
            "title": "The state of OA",
            "publication_year": 2018,
            "ids": {
                "openalex": "https://openalex.org/W2741809807",
                "pmid": "https://pubmed.ncbi.nlm.nih.gov/29456894",
                "pmcid": "https://www.ncbi.nlm.nih.gov/pmc/articles/5815332"
            },
            "primary_location": {"landing_page_url": "https://doi.org/10.7717/peerj.4375", "pdf_url": "https://peerj.com/articles/4375.pdf"},
            "best_oa_location": {"landing_page_url": "https://peerj.com/articles/4375", "pdf_url": "https://peerj.com/articles/4375.pdf"},
            "locations": [
                {"landing_page_url": "https://europepmc.org/articles/pmc5815332", "pdf_url": null},
                {"landing_page_url": "https://arxiv.org/abs/1706.03762v5", "pdf_url": "https://arxiv.org/pdf/1706.03762v5"}
            ],
            "open_access": {"is_oa": true, "oa_url": "https://peerj.com/articles/4375.pdf"},
            "unknown_field": {"ignored": true}
        });
        let work = Work::from_openalex(&json).unwrap();
        assert_eq!(work.id, "W2741809807");
        assert_eq!(work.doi.as_deref(), Some("10.7717/peerj.4375"));
        assert_eq!(work.pmcid.as_deref(), Some("PMC5815332"));
        assert_eq!(work.pmid.as_deref(), Some("29456894"));
        assert_eq!(work.arxiv_id.as_deref(), Some("1706.03762v5"));
        let urls: Vec<_> = work.candidates.iter().map(|c| (c.url.as_str(), c.is_pdf)).collect();
        assert_eq!(
            urls,
            vec![
                ("https://peerj.com/articles/4375.pdf", true),
                ("https://arxiv.org/pdf/1706.03762v5", true),
                ("https://peerj.com/articles/4375", false),
                ("https://europepmc.org/articles/pmc5815332", false),
                ("https://arxiv.org/abs/1706.03762v5", false),
            ]
        );
    }

    #[test]
    fn bad_ids_are_errors_not_panics() {
        for json in [
            serde_json::json!({}),
            serde_json::json!({"id": "https://openalex.org/A123"}),
            serde_json::json!({"id": 7}),
            serde_json::json!([1, 2]),
        ] {
            assert!(Work::from_openalex(&json).is_err(), "{json}");
        }
    }

    #[test]
    fn dois() {
        assert_eq!(
            normalize_doi(" https://doi.org/10.1000/ABC "),
            Some("10.1000/abc".into())
        );
        assert_eq!(normalize_doi("doi:10.1000/x"), Some("10.1000/x".into()));
        assert_eq!(
            normalize_doi("10.48550/arXiv.1706.03762"),
            Some("10.48550/arxiv.1706.03762".into())
        );
        assert_eq!(normalize_doi("11.1000/x"), None);
        assert_eq!(normalize_doi("10.1000/"), None);
        assert_eq!(normalize_doi("10.1000/a b"), None);
        let w = Work::from_doi("10.48550/arXiv.1706.03762").unwrap();
        assert_eq!(w.arxiv_id.as_deref(), Some("1706.03762"));
        assert_eq!(w.id, "doi:10.48550/arxiv.1706.03762");
    }

    #[test]
    fn doi_list_reports_line_numbers() {
        let input = "# comment\n10.1000/a\n\nnot-a-doi\n10.1000/b\n";
        let results: Vec<_> = read_doi_list(input.as_bytes()).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[1].as_ref().unwrap_err().line, 4);
        assert_eq!(results[2].as_ref().unwrap().doi.as_deref(), Some("10.1000/b"));
    }
}
