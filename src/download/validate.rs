//! [`PayloadCheck`]: decides, while the bytes stream past, whether a payload is a PDF.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::reason::ReasonCode;

/// `%PDF-` must appear within this many bytes of the start.
pub const HEAD_WINDOW: usize = 1024;
/// `%%EOF` must appear within this many bytes of the end.
pub const TAIL_WINDOW: usize = 2048;
/// The smallest payload accepted as a PDF.
pub const MIN_PDF_BYTES: u64 = 1024;

/// A streaming PDF check: feed it every chunk with [`update`](PayloadCheck::update), ask
/// [`early_verdict`](PayloadCheck::early_verdict) to stop a hopeless download after its
/// first KiB, and [`finish`](PayloadCheck::finish) at the end. It keeps at most 3 KiB.
///
/// ```
/// use contentdownload::download::PayloadCheck;
/// use contentdownload::reason::ReasonCode;
///
/// let mut check = PayloadCheck::new();
/// check.update(b"<!DOCTYPE html><html><body>Please log in</body></html>");
/// assert_eq!(check.finish(), Err(ReasonCode::HtmlLandingPage));
/// ```
#[derive(Debug, Default, Clone)]
pub struct PayloadCheck {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

impl PayloadCheck {
    /// A check with nothing seen yet.
    pub fn new() -> Self {
        PayloadCheck::default()
    }

    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.head.len() < HEAD_WINDOW {
            let take = (HEAD_WINDOW - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        if chunk.len() >= TAIL_WINDOW {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - TAIL_WINDOW..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TAIL_WINDOW {
                let excess = self.tail.len() - TAIL_WINDOW;
                self.tail.drain(..excess);
            }
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Once the first KiB has been seen: `Some(reason)` if the payload cannot be a PDF.
    pub fn early_verdict(&self) -> Option<ReasonCode> {
        if self.head.len() < HEAD_WINDOW {
            return None;
        }
        self.head_verdict()
    }

    fn head_verdict(&self) -> Option<ReasonCode> {
        if PDF_HEADER.find(&self.head).is_some() {
            return None;
        }
        if looks_like_markup(&self.head) {
            Some(ReasonCode::HtmlLandingPage)
        } else {
            Some(ReasonCode::NotPdf)
        }
    }

    /// The verdict on the whole payload.
    pub fn finish(&self) -> Result<(), ReasonCode> {
        if let Some(reason) = self.head_verdict() {
            return Err(reason);
        }
        if self.total < MIN_PDF_BYTES {
            return Err(ReasonCode::TooSmall);
        }
        if has_closing_tag(&self.tail, b"html") || has_closing_tag(&self.tail, b"body") {
            return Err(ReasonCode::HtmlTail);
        }
        if PDF_EOF.find(&self.tail).is_none() {
            return Err(ReasonCode::MissingEof);
        }
        Ok(())
    }
}

// memchr's SIMD substring search: the byte-by-byte window comparison it replaced was about
// 60,000 instructions per payload, a sixth of the runner's own per-file work outside
// SHA-256. The searchers of every payload's needles are built once.
static PDF_HEADER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"%PDF-"));
static PDF_EOF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"%%EOF"));
static TAG_CLOSE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"</"));

/// Where `needle` first is in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Whether `haystack` has `</` followed by `tag` (lower case), in any case, without
/// copying it in lower case first.
fn has_closing_tag(haystack: &[u8], tag: &[u8]) -> bool {
    TAG_CLOSE.find_iter(haystack).any(|at| {
        haystack
            .get(at + 2..at + 2 + tag.len())
            .is_some_and(|name| name.eq_ignore_ascii_case(tag))
    })
}

fn looks_like_markup(head: &[u8]) -> bool {
    let lower = head.to_ascii_lowercase();
    let start = lower
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xEF && *b != 0xBB && *b != 0xBF);
    let trimmed = start.map_or(&lower[..0], |i| &lower[i..]);
    trimmed.starts_with(b"<")
        || [
            &b"<!doctype html"[..],
            b"<html",
            b"<head",
            b"<body",
            b"<?xml",
            b"<script",
        ]
        .iter()
        .any(|needle| find(&lower, needle).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdf(len: usize) -> Vec<u8> {
        let mut v = b"%PDF-1.7\n".to_vec();
        v.resize(len - 6, b'x');
        v.extend_from_slice(b"%%EOF\n");
        v
    }

    fn check_chunks(data: &[u8], chunk: usize) -> Result<(), ReasonCode> {
        let mut c = PayloadCheck::new();
        for part in data.chunks(chunk) {
            c.update(part);
        }
        assert_eq!(c.total(), data.len() as u64);
        c.finish()
    }

    #[test]
    fn a_pdf_passes_whatever_the_chunking() {
        let data = pdf(10_000);
        for chunk in [1, 7, 1000, 2048, 4096, 20_000] {
            assert_eq!(check_chunks(&data, chunk), Ok(()), "chunk {chunk}");
        }
    }

    #[test]
    fn rejections() {
        let html = b"<!DOCTYPE html><html><head></head><body>Sign in</body></html>".repeat(40);
        assert_eq!(check_chunks(&html, 100), Err(ReasonCode::HtmlLandingPage));
        assert_eq!(check_chunks(&vec![b'a'; 5000], 100), Err(ReasonCode::NotPdf));
        assert_eq!(check_chunks(&pdf(500), 100), Err(ReasonCode::TooSmall));
        let mut no_eof = pdf(5000);
        no_eof.truncate(4000);
        assert_eq!(check_chunks(&no_eof, 333), Err(ReasonCode::MissingEof));
        let mut html_tail = pdf(5000);
        html_tail.extend_from_slice(b"<html><body>oops</body></html>");
        assert_eq!(check_chunks(&html_tail, 333), Err(ReasonCode::HtmlTail));
        // %PDF- later than the first KiB
        let mut late = vec![b' '; 2000];
        late.extend_from_slice(&pdf(5000));
        assert_eq!(check_chunks(&late, 512), Err(ReasonCode::NotPdf));
    }

    #[test]
    fn an_html_tail_is_found_in_any_case_and_a_cut_tag_is_not_one() {
        let with_tail = |tail: &[u8]| {
            let mut v = pdf(5000);
            v.extend_from_slice(tail);
            check_chunks(&v, 700)
        };
        assert_eq!(with_tail(b"</BODY></HTML>"), Err(ReasonCode::HtmlTail));
        assert_eq!(with_tail(b"x</Html"), Err(ReasonCode::HtmlTail));
        assert_eq!(with_tail(b"</p>"), Ok(()), "another tag");
        assert_eq!(with_tail(b"</bod"), Ok(()), "cut short at the end");
        assert_eq!(with_tail(b"</"), Ok(()));
        assert!(has_closing_tag(b"a</a</body", b"body"), "the second `</` of two");
    }

    #[test]
    fn early_verdict_after_the_first_kib() {
        let mut c = PayloadCheck::new();
        c.update(b"<html>");
        assert_eq!(c.early_verdict(), None, "not enough seen yet");
        c.update(&[b' '; 2000]);
        assert_eq!(c.early_verdict(), Some(ReasonCode::HtmlLandingPage));
        let mut c = PayloadCheck::new();
        c.update(&pdf(4096));
        assert_eq!(c.early_verdict(), None);
    }
}
