//! Userinfo in a request URL (`http://user:pass@host/`) becomes an `Authorization: Basic`
//! header, as curl and reqwest do, and leaves the URI before it reaches hyper-util: the
//! connection pool keys connections by the URI's authority and prints that key in its debug
//! logs, so a password left in the URI would be logged.

use std::str::FromStr;

use http::header::{HeaderValue, AUTHORIZATION};
use http::uri::Authority;
use http::{Request, Uri};
use percent_encoding::percent_decode_str;

/// Moves the userinfo of `req`'s URI into an `Authorization: Basic` header (marked
/// sensitive), unless the request already has an `Authorization` header, and strips it from
/// the URI either way. A request without userinfo is left as it is, at the cost of one scan
/// of the authority for `@`.
pub(crate) fn move_userinfo<B>(req: &mut Request<B>) {
    let Some((userinfo, host)) = split_userinfo(req.uri()) else {
        return;
    };
    if !req.headers().contains_key(AUTHORIZATION) {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let mut plain: Vec<u8> = percent_decode_str(user).collect();
        plain.push(b':');
        plain.extend(percent_decode_str(password));
        if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {}", base64(&plain))) {
            value.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, value);
        }
    }
    replace_authority(req.uri_mut(), host);
}

/// The userinfo of `uri` and its authority without it; `None` when it has none.
fn split_userinfo(uri: &Uri) -> Option<(&str, Authority)> {
    // (a byte scan first: nearly no URL has a userinfo, and `rsplit_once` on a `char` costs
    // ~50 instructions per call, on every request, twice in the stack)
    let authority = uri.authority().filter(|a| a.as_str().as_bytes().contains(&b'@'))?;
    let (userinfo, host) = authority.as_str().rsplit_once('@')?;
    // (cannot fail for a URI that parsed; left alone rather than guessed at)
    Some((userinfo, Authority::from_str(host).ok()?))
}

fn replace_authority(uri: &mut Uri, host: Authority) {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(host);
    if let Ok(replaced) = Uri::from_parts(parts) {
        *uri = replaced;
    }
}

/// Strips a userinfo (`user:pass@`) from `uri`, if it has one: for tower-http's
/// `RequestUri` on a redirected response, which holds the last `Location` as written. The
/// request itself lost that userinfo (it became an `Authorization` header, see
/// [`move_userinfo`]); a response extension that a caller may log or record keeps none.
pub(crate) fn strip_userinfo(uri: &mut Uri) {
    if let Some((_, host)) = split_userinfo(uri) {
        replace_authority(uri, host);
    }
}

/// Strips a userinfo from the response's `RequestUri` (see [`strip_userinfo`]).
pub(crate) fn strip_request_uri<B>(res: &mut http::Response<B>) {
    if let Some(tower_http::follow_redirect::RequestUri(uri)) = res.extensions_mut().get_mut() {
        strip_userinfo(uri);
    }
}

/// Standard base64 with padding (RFC 4648 §4), for the one header that needs it.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(uri: &str) -> (String, Option<String>) {
        let mut req = Request::get(uri).body(()).unwrap();
        move_userinfo(&mut req);
        let auth = req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        (req.uri().to_string(), auth)
    }

    #[test]
    fn a_userinfo_is_stripped_from_a_uri() {
        for (before, after) in [
            ("http://u:p@h.example/a?b", "http://h.example/a?b"),
            ("https://u@h.example:8443/", "https://h.example:8443/"),
            ("http://h.example/a@b", "http://h.example/a@b"),
            ("/relative", "/relative"),
        ] {
            let mut uri: Uri = before.parse().unwrap();
            strip_userinfo(&mut uri);
            assert_eq!(uri.to_string(), after);
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn userinfo_becomes_basic_auth() {
        assert_eq!(
            moved("http://Aladdin:open%20sesame@127.0.0.1:8080/b.pdf?x=1"),
            (
                "http://127.0.0.1:8080/b.pdf?x=1".to_owned(),
                Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".to_owned())
            )
        );
        // no password: an empty one, as reqwest does
        assert_eq!(
            moved("https://user@h.example/"),
            ("https://h.example/".to_owned(), Some("Basic dXNlcjo=".to_owned()))
        );
        assert_eq!(moved("http://h.example/a@b"), ("http://h.example/a@b".to_owned(), None));
    }

    #[test]
    fn an_explicit_header_wins_and_the_uri_is_stripped_anyway() {
        let mut req = Request::get("http://u:p@h.example/")
            .header(AUTHORIZATION, "Bearer t")
            .body(())
            .unwrap();
        move_userinfo(&mut req);
        assert_eq!(req.uri(), "http://h.example/");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer t");
    }

    #[test]
    fn the_header_is_marked_sensitive() {
        let mut req = Request::get("http://u:p@h.example/").body(()).unwrap();
        move_userinfo(&mut req);
        assert!(req.headers()[AUTHORIZATION].is_sensitive());
    }
}
