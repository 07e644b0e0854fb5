//! Deriving idempotency keys and writing them as an `Idempotency-Key` header.

use http::{HeaderValue, Uri};
use sha2::{Digest, Sha256};

use super::error::InvalidIdempotencyKey;
use crate::context::{IdempotencyKey, OperationType, WorkId};

/// The canonical form of a URL for keys and the ledger: scheme and host lower-cased, the
/// default port dropped, an empty path written `/`; path and query kept as sent.
///
/// ```
/// use contentdownload::layers::idempotency::canonical_url;
///
/// let uri: http::Uri = "HTTPS://Example.ORG:443/a/b.pdf?x=1".parse().unwrap();
/// assert_eq!(canonical_url(&uri), "https://example.org/a/b.pdf?x=1");
/// ```
pub fn canonical_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let port = uri.port_u16().filter(|p| Some(*p) != default_port);
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let pq = if pq.is_empty() { "/" } else { pq };
    let mut out = String::with_capacity(scheme.len() + host.len() + pq.len() + 10);
    if !scheme.is_empty() {
        out.push_str(&scheme);
        out.push_str("://");
    }
    out.push_str(&host);
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p.to_string());
    }
    out.push_str(pq);
    out
}

/// The key of one logical operation: SHA-256 (lower-case hex) of the operation type, the
/// work id (empty when none) and the canonical URL, each length-prefixed so the parts cannot
/// run into each other. The same inputs give the same key in every process and run.
///
/// ```
/// use contentdownload::context::{OperationType, WorkId};
/// use contentdownload::layers::idempotency::derive_key;
///
/// let a = derive_key(OperationType::Download, Some(&WorkId::new("W1")), "https://example.org/a.pdf");
/// let b = derive_key(OperationType::Download, Some(&WorkId::new("W1")), "https://example.org/a.pdf");
/// let c = derive_key(OperationType::Validate, Some(&WorkId::new("W1")), "https://example.org/a.pdf");
/// assert_eq!(a, b);
/// assert_ne!(a, c);
/// assert_eq!(a.as_str().len(), 64);
/// ```
pub fn derive_key(op: OperationType, work: Option<&WorkId>, canonical_url: &str) -> IdempotencyKey {
    let mut h = Sha256::new();
    for part in [op.as_str(), work.map_or("", WorkId::as_str), canonical_url] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    IdempotencyKey::new(super::store::hex(&h.finalize()))
}

/// `key` as an RFC 8941 sf-string (`"..."`, with `\` and `"` escaped), the form the IETF
/// Idempotency-Key draft asks for. Keys with characters outside printable ASCII cannot be
/// sent this way.
pub fn header_value(key: &IdempotencyKey) -> Result<HeaderValue, InvalidIdempotencyKey> {
    let raw = key.as_str();
    if raw.is_empty() || !raw.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(InvalidIdempotencyKey { key: key.clone() });
    }
    let mut s = String::with_capacity(raw.len() + 2);
    s.push('"');
    for c in raw.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    HeaderValue::from_str(&s).map_err(|_| InvalidIdempotencyKey { key: key.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_urls_ignore_case_and_default_ports() {
        let c = |s: &str| canonical_url(&s.parse::<Uri>().unwrap());
        assert_eq!(c("http://A.org:80"), "http://a.org/");
        assert_eq!(c("http://a.org:8080/x?q=A"), "http://a.org:8080/x?q=A");
        assert_eq!(c("https://a.org/X"), "https://a.org/X");
        assert_ne!(c("https://a.org/x"), c("https://a.org/x?y"));
    }

    #[test]
    fn keys_separate_their_parts() {
        let w = |s: &str| Some(WorkId::new(s));
        let k1 = derive_key(OperationType::Download, w("W1").as_ref(), "u");
        assert_ne!(k1, derive_key(OperationType::Download, w("W1u").as_ref(), ""));
        assert_ne!(k1, derive_key(OperationType::Download, None, "u"));
        assert!(k1.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn header_is_an_sf_string() {
        let v = header_value(&IdempotencyKey::new("abc")).unwrap();
        assert_eq!(v.to_str().unwrap(), "\"abc\"");
        let v = header_value(&IdempotencyKey::new(r#"a"b\c"#)).unwrap();
        assert_eq!(v.to_str().unwrap(), r#""a\"b\\c""#);
        assert!(header_value(&IdempotencyKey::new("é")).is_err());
        assert!(header_value(&IdempotencyKey::new("a\nb")).is_err());
        assert!(header_value(&IdempotencyKey::new("")).is_err());
    }
}
