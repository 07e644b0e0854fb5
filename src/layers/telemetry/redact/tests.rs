use super::*;
use proptest::prelude::*;

fn redact(s: &str) -> String {
    let uri: Uri = s.parse().unwrap();
    let parsed = Redactor::default().redact(&uri).to_string();
    // the text view says the same as the parsed one
    assert_eq!(redacted(s).to_string(), parsed, "{s}");
    parsed
}

#[test]
fn redacts_sensitive_values_and_keeps_the_rest() {
    assert_eq!(
        redact("https://api.example.org/v2/x?Email=a@b.c&api_key=s3cr3t&page=2&TOKEN=t&key=k&mailto=m@x"),
        "https://api.example.org/v2/x?Email=REDACTED&api_key=REDACTED&page=2&TOKEN=REDACTED&key=REDACTED&mailto=REDACTED"
    );
    assert_eq!(redact("http://127.0.0.1:8080/a?x=1"), "http://127.0.0.1:8080/a?x=1");
    assert_eq!(redact("/relative?token=abc"), "/relative?token=REDACTED");
    assert_eq!(
        redact("https://h/p?X-Api-Key=k1&api-key=k2&API_KEY=k3&q=1"),
        "https://h/p?X-Api-Key=REDACTED&api-key=REDACTED&API_KEY=REDACTED&q=1"
    );
    // a parameter that only starts with a sensitive name is kept
    assert_eq!(
        redact("https://h/p?keyword=rust&tokens=2"),
        "https://h/p?keyword=rust&tokens=2"
    );
    // a bare name with no value has nothing to hide
    assert_eq!(redact("https://h/p?token&a="), "https://h/p?token&a=");
}

#[test]
fn the_issue_url_keeps_nothing_secret() {
    assert_eq!(
        redact("http://user:PASSWORD@host/b.pdf?api_key=K&token=T&access_token=A"),
        "http://host/b.pdf?api_key=REDACTED&token=REDACTED&access_token=REDACTED"
    );
    assert_eq!(
        redact("https://b.s3.amazonaws.com/x.pdf?X-Amz-Algorithm=AWS4&X-Amz-Credential=c&X-Amz-Signature=s&X-Amz-Security-Token=t&v=1"),
        "https://b.s3.amazonaws.com/x.pdf?X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED&v=1"
    );
    assert_eq!(
        redact("https://h/p?sig=1&Signature=2&password=3&passwd=4&secret=5&client_secret=6&auth=7&apikey=8"),
        "https://h/p?sig=REDACTED&Signature=REDACTED&password=REDACTED&passwd=REDACTED&secret=REDACTED&client_secret=REDACTED&auth=REDACTED&apikey=REDACTED"
    );
}

#[test]
fn percent_encoded_names_are_matched() {
    assert_eq!(redact("https://h/p?API%5FKEY=zz"), "https://h/p?API%5FKEY=REDACTED");
    assert_eq!(redact("https://h/p?%65mail=zz"), "https://h/p?%65mail=REDACTED");
    assert_eq!(
        redact("https://h/p?x%2Damz%2Ddate=zz"),
        "https://h/p?x%2Damz%2Ddate=REDACTED"
    );
}

#[test]
fn userinfo_is_dropped() {
    assert_eq!(redact("https://user:pw@example.org/x?y=1"), "https://example.org/x?y=1");
    assert_eq!(redacted("http://u:p@ss@h:81").to_string(), "http://h:81");
    // an archive's path holding a URL
    assert_eq!(
        redact("https://web.archive.org/web/2020id_/http://user:pw@h.example/a.pdf"),
        "https://web.archive.org/web/2020id_/http://h.example/a.pdf"
    );
}

#[test]
fn nested_urls_are_redacted() {
    // unencoded: the nested query is part of the outer value
    assert_eq!(
        redact("https://archive.example/wayback/available?url=http://user:pw@h/x?token=T"),
        "https://archive.example/wayback/available?url=http://h/x?token=REDACTED"
    );
    // percent-encoded, as a URL builder writes it
    assert_eq!(
        redact("https://a.example/available?url=http%3A%2F%2Fuser%3Apw%40h%2Fx%3Ftoken%3DT%26page%3D2&v=1"),
        "https://a.example/available?url=http%3A%2F%2Fh%2Fx%3Ftoken%3DREDACTED%26page%3D2&v=1"
    );
    // encoded twice
    let twice =
        redacted("https://a.example/?u=http%253A%252F%252Fh%252Fx%253Faccess_token%253DSECRETVALUE").to_string();
    assert!(!twice.contains("SECRETVALUE"), "{twice}");
    // a nested value with nothing to hide comes out as it went in
    assert_eq!(
        redact("https://a.example/?url=http%3a%2f%2fh%2Fx%3Fpage%3D2&n=50%25"),
        "https://a.example/?url=http%3a%2f%2fh%2Fx%3Fpage%3D2&n=50%25"
    );
    // nested too deep: replaced whole
    let mut deep = "http://h/x?token=T".to_owned();
    for _ in 0..=MAX_NESTING {
        deep = format!("http://h/?u={}", utf8_percent_encode(&deep, COMPONENT));
    }
    let out = redacted(&deep).to_string();
    assert!(out.contains(REDACTED) && !out.contains("%3DT"), "{out}");
}

#[test]
fn fragments_are_redacted_as_queries() {
    assert_eq!(
        redacted("https://h/cb#access_token=A&state=1").to_string(),
        "https://h/cb#access_token=REDACTED&state=1"
    );
}

#[test]
fn shareable_urls_leave_secrets_out() {
    assert_eq!(
        shareable("http://user:PASSWORD@host/b.pdf?api_key=K&token=T&access_token=A").to_string(),
        "http://host/b.pdf"
    );
    assert_eq!(
        shareable("http://host/b.pdf?token=T&page=2&key=K&v=1").to_string(),
        "http://host/b.pdf?page=2&v=1"
    );
    assert_eq!(
        shareable("http://h/x?url=http%3A%2F%2Fu%3Ap%40g%2Fy%3Fsig%3DS%26a%3D1").to_string(),
        "http://h/x?url=http%3A%2F%2Fg%2Fy%3Fa%3D1"
    );
    assert_eq!(shareable("http://h/x?a=1").to_string(), "http://h/x?a=1");
}

#[test]
fn extra_params_can_be_added() {
    let uri: Uri = "https://h/p?session_id=abc&email=e&x-tok-1=z".parse().unwrap();
    let r = Redactor::default().with_param("SESSION_ID").with_param("x-tok-*");
    assert_eq!(
        r.redact(&uri).to_string(),
        "https://h/p?session_id=REDACTED&email=REDACTED&x-tok-1=REDACTED"
    );
    assert!(r.params().any(|p| p == "session_id"));
}

/// A sensitive name as it may be written: any case, a prefix name completed.
fn sensitive_name() -> impl Strategy<Value = String> {
    (0..DEFAULT_SENSITIVE_PARAMS.len(), any::<bool>(), "[A-Za-z]{1,8}").prop_map(|(i, upper, tail)| {
        let name = DEFAULT_SENSITIVE_PARAMS[i];
        let name = match name.strip_suffix('*') {
            Some(prefix) => format!("{prefix}{tail}"),
            None => name.to_owned(),
        };
        if upper {
            name.to_ascii_uppercase()
        } else {
            name
        }
    })
}

proptest! {
    #[test]
    fn no_secret_value_survives(secret in "[A-Za-z0-9]{12,20}", name in sensitive_name(), other in "[a-z]{1,6}") {
        prop_assume!(!Redactor::default().is_sensitive(&other));
        let url = format!("https://u:{secret}@h.example/p?{other}=1&{name}={secret}&z=2");
        let out = redact(&url);
        prop_assert!(!out.contains(&secret), "{} leaked in {}", secret, out);
        let want_redacted = format!("{name}=REDACTED");
        let want_kept = format!("{other}=1");
        prop_assert!(out.contains(&want_redacted), "{} not in {}", want_redacted, out);
        prop_assert!(out.contains(&want_kept), "{} not in {}", want_kept, out);
        let shared = shareable(&url).to_string();
        let dropped = !shared.contains(&format!("?{name}=")) && !shared.contains(&format!("&{name}="));
        prop_assert!(!shared.contains(&secret) && dropped, "{}", shared);
        prop_assert!(shared.contains(&want_kept), "{}", shared);
    }

    #[test]
    fn no_secret_survives_nesting(
        secret in "[A-Za-z0-9]{12,20}",
        name in sensitive_name(),
        levels in 1u8..=MAX_NESTING + 2,
        encode in proptest::collection::vec(any::<bool>(), (MAX_NESTING + 2) as usize),
    ) {
        let mut url = format!("http://user:{secret}@in.example/x?{name}={secret}&page=2");
        for level in 0..levels {
            url = if encode[level as usize] {
                format!("https://out.example/?url={}&v=1", utf8_percent_encode(&url, COMPONENT))
            } else {
                format!("https://out.example/?v=1&url={url}")
            };
        }
        for out in [redacted(&url).to_string(), shareable(&url).to_string()] {
            prop_assert!(!out.contains(&secret), "{} leaked in {}", secret, out);
            prop_assert!(!out.contains("user:"), "userinfo in {}", out);
        }
    }

    #[test]
    fn any_text_is_displayed_without_panic(s in "\\PC{0,80}") {
        let _ = redacted(&s).to_string();
        let _ = shareable(&s).to_string();
    }
}
