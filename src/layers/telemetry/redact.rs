//! URL redaction for telemetry: secrets in query strings and userinfo never reach a span,
//! a metric or an attempt record.

use std::fmt;
use std::sync::Arc;

use http::Uri;

/// What replaces a redacted query value.
pub const REDACTED: &str = "REDACTED";

/// The query parameters whose values are redacted by default (compared case-insensitively).
pub const DEFAULT_SENSITIVE_PARAMS: [&str; 5] = ["email", "mailto", "api_key", "key", "token"];

/// Which query parameters carry secrets.
///
/// Matching is case-insensitive and looks through percent-encoding of the parameter name
/// (`API%5FKEY` matches `api_key`). The userinfo part of a URL (`user:pass@`) is always
/// dropped. Cloning is cheap: the list is shared behind an `Arc`.
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

impl Redactor {
    /// A redactor for exactly these query parameter names.
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
    pub fn redact<'a>(&'a self, uri: &'a Uri) -> RedactedUri<'a> {
        RedactedUri { uri, redactor: self }
    }

    fn is_sensitive(&self, raw_name: &str) -> bool {
        self.params.iter().any(|p| name_matches(raw_name, p))
    }
}

/// A URI displayed with its secrets replaced (see [`Redactor`]).
#[derive(Clone, Copy, Debug)]
pub struct RedactedUri<'a> {
    uri: &'a Uri,
    redactor: &'a Redactor,
}

impl fmt::Display for RedactedUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.uri;
        if let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) {
            // Rebuilt from the host and port, so any userinfo in the authority is left out.
            write!(f, "{scheme}://{host}")?;
            if let Some(port) = uri.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        f.write_str(uri.path())?;
        let Some(query) = uri.query() else {
            return Ok(());
        };
        f.write_str("?")?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if self.redactor.is_sensitive(name) => write!(f, "{name}={REDACTED}")?,
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

/// Whether a raw (possibly percent-encoded, any case) query name equals `wanted` (lower-case).
///
/// Hand-written rather than pulling in a percent-decoding crate: names are short ASCII
/// and we only need a comparison, not a decoded string.
fn name_matches(raw: &str, wanted: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn redact(s: &str) -> String {
        let uri: Uri = s.parse().unwrap();
        Redactor::default().redact(&uri).to_string()
    }

    #[test]
    fn redacts_sensitive_values_and_keeps_the_rest() {
        assert_eq!(
            redact("https://api.example.org/v2/x?Email=a@b.c&api_key=s3cr3t&page=2&TOKEN=t&key=k&mailto=m@x"),
            "https://api.example.org/v2/x?Email=REDACTED&api_key=REDACTED&page=2&TOKEN=REDACTED&key=REDACTED&mailto=REDACTED"
        );
        assert_eq!(redact("http://127.0.0.1:8080/a?x=1"), "http://127.0.0.1:8080/a?x=1");
        assert_eq!(redact("/relative?token=abc"), "/relative?token=REDACTED");
        // a parameter that only starts with a sensitive name is kept
        assert_eq!(
            redact("https://h/p?keyword=rust&tokens=2"),
            "https://h/p?keyword=rust&tokens=2"
        );
        // a bare name with no value has nothing to hide
        assert_eq!(redact("https://h/p?token&a="), "https://h/p?token&a=");
    }

    #[test]
    fn percent_encoded_names_are_matched() {
        assert_eq!(redact("https://h/p?API%5FKEY=zz"), "https://h/p?API%5FKEY=REDACTED");
        assert_eq!(redact("https://h/p?%65mail=zz"), "https://h/p?%65mail=REDACTED");
    }

    #[test]
    fn userinfo_is_dropped() {
        assert_eq!(redact("https://user:pw@example.org/x?y=1"), "https://example.org/x?y=1");
    }

    #[test]
    fn extra_params_can_be_added() {
        let uri: Uri = "https://h/p?sig=abc&email=e".parse().unwrap();
        let r = Redactor::default().with_param("SIG");
        assert_eq!(r.redact(&uri).to_string(), "https://h/p?sig=REDACTED&email=REDACTED");
        assert!(r.params().any(|p| p == "sig"));
    }

    proptest! {
        #[test]
        fn no_secret_value_survives(secret in "[A-Za-z0-9]{12,20}", name_idx in 0usize..5, upper in any::<bool>(), other in "[a-z]{1,6}") {
            prop_assume!(!DEFAULT_SENSITIVE_PARAMS.contains(&other.as_str()));
            let mut name = DEFAULT_SENSITIVE_PARAMS[name_idx].to_owned();
            if upper {
                name = name.to_ascii_uppercase();
            }
            let url = format!("https://u:{secret}@h.example/p?{other}=1&{name}={secret}&z=2");
            let out = redact(&url);
            prop_assert!(!out.contains(&secret), "{} leaked in {}", secret, out);
            let want_redacted = format!("{name}=REDACTED");
            let want_kept = format!("{other}=1");
            prop_assert!(out.contains(&want_redacted), "{} not in {}", want_redacted, out);
            prop_assert!(out.contains(&want_kept), "{} not in {}", want_kept, out);
        }
    }
}
