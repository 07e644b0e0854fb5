//! URL redaction: secrets in query strings, userinfo and URLs nested in query values never
//! reach a span, a metric, an attempt record, the manifest or an error message; and the form
//! of a URL that may be sent to a third party.
//!
//! Every place that turns a URL into text that leaves the process goes through one type,
//! [`RedactedUrl`], a view that allocates nothing until it is formatted:
//! [`Redactor::redact`] for a parsed [`Uri`], [`Redactor::redact_str`] (or [`redacted`], with
//! the default names) for a URL held as text, parseable or not, and [`Redactor::shareable`] /
//! [`shareable`] for the form given to a third party (the Wayback availability lookup): no
//! userinfo, and the secret parameters left out rather than masked.
//!
//! # Nested URLs
//!
//! A query value that is itself a URL (`?url=http://user:pw@h/x?token=T`, or the same
//! percent-encoded, even twice) is redacted in turn, down to [`MAX_NESTING`] levels; a value
//! nested deeper than that is replaced whole. Userinfo after a `://` inside the path (an
//! archive's `/web/2020/http://user:pw@h/x`) is dropped too.

use std::fmt;
use std::sync::{Arc, LazyLock};

use http::Uri;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

#[cfg(test)]
mod tests;

/// What replaces a redacted query value.
pub const REDACTED: &str = "REDACTED";

/// The query parameters whose values are redacted by default (compared case-insensitively;
/// a name ending in `*` is a prefix: `x-amz-*` covers `X-Amz-Signature`, `X-Amz-Credential`
/// and `X-Amz-Security-Token`).
pub const DEFAULT_SENSITIVE_PARAMS: [&str; 25] = [
    "email",
    "mailto",
    "api_key",
    "apikey",
    // the spellings of the provider key headers, when a gateway takes them as parameters
    "api-key",
    "x-api-key",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "sig",
    "signature",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "session",
    "sessionid",
    "x-amz-*",
    "x-goog-*",
    "x-ms-signature",
];

/// How deep URLs nested in query values are redacted; a value nested deeper is replaced whole.
pub const MAX_NESTING: u8 = 4;

/// Characters escaped when a redacted nested URL is put back into a query value: all but
/// the unreserved ones.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

static DEFAULT: LazyLock<Redactor> = LazyLock::new(Redactor::default);

/// `url` displayed with the [default](DEFAULT_SENSITIVE_PARAMS) secrets masked and its
/// userinfo dropped; for error messages, manifest fields and logs.
///
/// ```
/// use contentdownload::layers::telemetry::redacted;
///
/// assert_eq!(
///     redacted("http://user:pw@h.example/b.pdf?access_token=A&page=2").to_string(),
///     "http://h.example/b.pdf?access_token=REDACTED&page=2"
/// );
/// ```
pub fn redacted(url: &str) -> RedactedUrl<'_> {
    DEFAULT.redact_str(url)
}

/// `url` as it may be sent to a third party: no userinfo, and the
/// [default](DEFAULT_SENSITIVE_PARAMS) secret parameters left out.
///
/// ```
/// use contentdownload::layers::telemetry::shareable;
///
/// assert_eq!(
///     shareable("http://user:pw@h.example/b.pdf?token=T&page=2&X-Amz-Signature=s").to_string(),
///     "http://h.example/b.pdf?page=2"
/// );
/// ```
pub fn shareable(url: &str) -> RedactedUrl<'_> {
    DEFAULT.shareable(url)
}

/// Which query parameters carry secrets.
///
/// Matching is case-insensitive and looks through percent-encoding of the parameter name
/// (`API%5FKEY` matches `api_key`); a name ending in `*` matches as a prefix. The userinfo
/// part of a URL (`user:pass@`) is always dropped, and URLs nested in query values are
/// redacted in turn. Cloning is cheap: the list is shared behind an `Arc`.
///
/// # Example
///
/// ```
/// use contentdownload::layers::telemetry::Redactor;
///
/// let uri: http::Uri = "https://api.unpaywall.org/v2/10.1/x?email=me@example.org&page=2".parse().unwrap();
/// let redactor = Redactor::default();
/// assert_eq!(
///     redactor.redact(&uri).to_string(),
///     "https://api.unpaywall.org/v2/10.1/x?email=REDACTED&page=2"
/// );
/// ```
#[derive(Clone, Debug)]
pub struct Redactor {
    params: Arc<[Box<str>]>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_SENSITIVE_PARAMS)
    }
}

/// Whether a secret parameter is masked (`name=REDACTED`) or left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Mask,
    Drop,
}

impl Redactor {
    /// A redactor for exactly these query parameter names (`*` at the end: a prefix).
    pub fn new<I, S>(params: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor {
            params: params
                .into_iter()
                .map(|p| p.as_ref().to_ascii_lowercase().into())
                .collect(),
        }
    }

    /// This redactor plus one more parameter name.
    pub fn with_param(&self, param: impl AsRef<str>) -> Self {
        let mut params: Vec<Box<str>> = self.params.to_vec();
        params.push(param.as_ref().to_ascii_lowercase().into());
        Redactor { params: params.into() }
    }

    /// The parameter names whose values are redacted (lower-case).
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| &**p)
    }

    /// A view of `uri` that displays it redacted; nothing is allocated until it is formatted.
    pub fn redact<'a>(&'a self, uri: &'a Uri) -> RedactedUrl<'a> {
        RedactedUrl {
            url: Source::Parsed(uri),
            redactor: self,
            mode: Mode::Mask,
        }
    }

    /// A view of a URL held as text (parseable or not) that displays it redacted.
    pub fn redact_str<'a>(&'a self, url: &'a str) -> RedactedUrl<'a> {
        RedactedUrl {
            url: Source::Text(url),
            redactor: self,
            mode: Mode::Mask,
        }
    }

    /// A view of `url` as it may be sent to a third party: userinfo dropped and secret
    /// parameters left out (not masked: a masked value would only make the URL wrong).
    pub fn shareable<'a>(&'a self, url: &'a str) -> RedactedUrl<'a> {
        RedactedUrl {
            url: Source::Text(url),
            redactor: self,
            mode: Mode::Drop,
        }
    }

    fn is_sensitive(&self, raw_name: &str) -> bool {
        self.params.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name_matches(raw_name, prefix, true),
            None => name_matches(raw_name, p, false),
        })
    }
}

/// A URL displayed with its secrets masked ([`Redactor::redact`], [`Redactor::redact_str`],
/// [`redacted`]) or left out ([`Redactor::shareable`], [`shareable`]): the one type through
/// which a URL becomes text that leaves the process.
#[derive(Clone, Copy, Debug)]
pub struct RedactedUrl<'a> {
    url: Source<'a>,
    redactor: &'a Redactor,
    mode: Mode,
}

/// The former name of [`RedactedUrl`], when it only viewed parsed URIs.
pub type RedactedUri<'a> = RedactedUrl<'a>;

#[derive(Clone, Copy, Debug)]
enum Source<'a> {
    Parsed(&'a Uri),
    Text(&'a str),
}

impl fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = match self.url {
            Source::Text(url) => return write_url(f, url, self.redactor, self.mode, 0),
            Source::Parsed(uri) => uri,
        };
        if let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) {
            // Rebuilt from the host and port, so any userinfo in the authority is left out.
            write!(f, "{scheme}://{host}")?;
            if let Some(port) = uri.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        write_path(f, uri.path())?;
        match uri.query() {
            Some(query) => write_query(f, query, '?', self.redactor, self.mode, 0),
            None => Ok(()),
        }
    }
}

fn write_url<W: fmt::Write>(w: &mut W, url: &str, r: &Redactor, mode: Mode, depth: u8) -> fmt::Result {
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (url, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // `scheme://[userinfo@]host[:port]` then the path, or only a path
    write_path(w, rest)?;
    if let Some(query) = query {
        write_query(w, query, '?', r, mode, depth)?;
    }
    if let Some(fragment) = fragment {
        // `#access_token=…` (OAuth's implicit flow) is a query in all but name
        write_query(w, fragment, '#', r, mode, depth)?;
    }
    Ok(())
}

/// Writes `path`, leaving out the userinfo of every `scheme://userinfo@host` in it.
fn write_path<W: fmt::Write>(w: &mut W, mut path: &str) -> fmt::Result {
    while let Some(i) = path.find("://") {
        let (head, after) = path.split_at(i + 3);
        w.write_str(head)?;
        let end = after.find('/').unwrap_or(after.len());
        let authority = &after[..end];
        w.write_str(authority.rsplit_once('@').map_or(authority, |(_, host)| host))?;
        path = &after[end..];
    }
    w.write_str(path)
}

/// Writes `lead` and the query's pairs, secrets masked or left out (then `lead` comes
/// before the first pair kept, if any).
fn write_query<W: fmt::Write>(w: &mut W, query: &str, lead: char, r: &Redactor, mode: Mode, depth: u8) -> fmt::Result {
    let mut first = true;
    for pair in query.split('&') {
        let split = pair.split_once('=');
        // a bare name has no value to hide
        let sensitive = split.is_some_and(|(name, _)| r.is_sensitive(name));
        if sensitive && mode == Mode::Drop {
            continue;
        }
        w.write_char(if first { lead } else { '&' })?;
        first = false;
        match split {
            Some((name, _)) if sensitive => write!(w, "{name}={REDACTED}")?,
            Some((name, value)) => {
                write!(w, "{name}=")?;
                write_value(w, value, r, mode, depth)?;
            }
            None => w.write_str(pair)?,
        }
    }
    Ok(())
}

/// Writes one query value, redacting it as a URL when it is one (as it is, or once or more
/// percent-decoded).
fn write_value<W: fmt::Write>(w: &mut W, value: &str, r: &Redactor, mode: Mode, depth: u8) -> fmt::Result {
    if value.contains("://") {
        if depth >= MAX_NESTING {
            return w.write_str(REDACTED);
        }
        return write_url(w, value, r, mode, depth + 1);
    }
    if !value.contains('%') {
        return w.write_str(value);
    }
    let decoded = percent_decode_str(value).decode_utf8_lossy();
    if decoded == value || !(decoded.contains("://") || decoded.contains('%')) {
        return w.write_str(value);
    }
    if depth >= MAX_NESTING {
        return w.write_str(REDACTED);
    }
    let mut inner = String::with_capacity(decoded.len());
    write_value(&mut inner, &decoded, r, mode, depth + 1)?;
    if inner == decoded {
        // nothing to hide: the value as it came
        return w.write_str(value);
    }
    utf8_percent_encode(&inner, COMPONENT).try_for_each(|chunk| w.write_str(chunk))
}

/// Whether a raw (possibly percent-encoded, any case) query name equals `wanted`
/// (lower-case), or starts with it when `prefix`.
///
/// Hand-written rather than decoding into a string: names are short ASCII and we only need
/// a comparison, not a decoded string.
fn name_matches(raw: &str, wanted: &str, prefix: bool) -> bool {
    let raw = raw.as_bytes();
    let mut wanted = wanted.bytes();
    let mut i = 0;
    while i < raw.len() {
        let mut b = raw[i];
        if b == b'%' && i + 2 < raw.len() {
            if let (Some(hi), Some(lo)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                b = hi << 4 | lo;
                i += 2;
            }
        } else if b == b'+' {
            b = b' ';
        }
        match wanted.next() {
            Some(w) if w == b.to_ascii_lowercase() => {}
            None if prefix => return true,
            _ => return false,
        }
        i += 1;
    }
    wanted.next().is_none()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
