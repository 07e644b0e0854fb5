//! The redirect policy given to tower-http's `FollowRedirect`.

use http::uri::Authority;
use http::Request;
use http_body::Body;
use tower_http::follow_redirect::policy::{Action, Attempt, FilterCredentials, Policy};

use super::error::{TooManyRedirects, UnsupportedRedirectScheme};
use crate::context::{host_of, host_of_authority, PartitionKey, Provider};
use crate::error::BoxError;

/// Follows at most `max` redirects, only to http and https, and drops credentials
/// (`Authorization`, `Cookie`, `Proxy-Authorization`, and the API key headers `x-api-key`
/// and `Crossref-Plus-API-Token`) when a hop leaves the origin.
///
/// Unlike tower-http's `Limited` (which hands the last 3xx back), running out of hops is an
/// error, [`TooManyRedirects`], so a redirect loop cannot be mistaken for an answer.
///
/// Userinfo in the first request's URL (`http://user:pass@host/`) becomes an
/// `Authorization: Basic` header before the first hop, so that it is dropped like any other
/// credential when a hop leaves the origin.
///
/// When the `FollowRedirect` preserves extensions (the [`Stack`](super::Stack)'s does), each
/// hop carries the request's extensions (operation type, work id, attempt number, ...) with
/// two exceptions, so that each hop is its own request to its own partition:
///
/// - the cached [`PartitionKey`] is dropped, so the layers below compute the hop's own;
/// - a [`Provider`] set by the caller names who serves the *first* request's host: it is
///   kept on hops to that same host (`host:port`) and removed on hops to any other host,
///   whose partition is then named by its host. A chain `doi.org → publisher → CDN` thus
///   spends one token of each, and a 429 from the CDN cools the CDN.
#[derive(Clone, Debug)]
pub struct RedirectPolicy {
    remaining: usize,
    max: usize,
    /// Made at the first hop: the policy is cloned for every request, and nearly none is
    /// redirected.
    credentials: Option<FilterCredentials>,
    /// The first request's provider extension and authority; `None` before the first
    /// request. (The authority, not its host: the host is needed only when a hop happens,
    /// and computing it for every request was a measurable part of the stack's cost.)
    origin: Option<(Option<Provider>, Option<Authority>)>,
}

impl RedirectPolicy {
    /// A policy that follows up to `max` hops.
    pub fn new(max: usize) -> Self {
        RedirectPolicy {
            remaining: max,
            max,
            credentials: None,
            origin: None,
        }
    }
}

pub(crate) fn is_web_scheme(scheme: Option<&str>) -> bool {
    matches!(scheme, Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
}

/// Provider API key headers (besides `Authorization`), dropped with the other credentials
/// when a hop leaves the origin host.
const API_KEY_HEADERS: [&str; 2] = ["x-api-key", "crossref-plus-api-token"];

impl<B> Policy<B, BoxError> for RedirectPolicy
where
    B: Body + Clone,
{
    fn redirect(&mut self, attempt: &Attempt<'_>) -> Result<Action, BoxError> {
        let location = attempt.location();
        if !is_web_scheme(location.scheme_str()) {
            return Err(Box::new(UnsupportedRedirectScheme {
                scheme: location.scheme_str().unwrap_or("").to_owned(),
            }));
        }
        if self.remaining == 0 {
            return Err(Box::new(TooManyRedirects { max: self.max }));
        }
        self.remaining -= 1;
        // Extensions are the request's context, not credentials: they follow every hop (the
        // provider is handled in `on_request`).
        let credentials = self
            .credentials
            .get_or_insert_with(|| FilterCredentials::new().keep_all_extensions());
        Policy::<B, BoxError>::redirect(credentials, attempt)
    }

    fn on_request(&mut self, request: &mut Request<B>) {
        match &self.origin {
            None => {
                // The first request: its userinfo becomes a header the filter can drop later.
                super::credentials::move_userinfo(request);
                let provider = request.extensions().get::<Provider>().cloned();
                self.origin = Some((provider, request.uri().authority().cloned()));
            }
            Some((provider, origin)) => {
                // A hop: the credentials filter first (a cross-origin hop loses the origin's
                // Authorization), then the Location's own userinfo, which is meant for it.
                // (`redirect` made the filter before this hop)
                if let Some(credentials) = self.credentials.as_mut() {
                    Policy::<B, BoxError>::on_request(credentials, request);
                }
                if request.uri().authority() != origin.as_ref() {
                    // API keys in headers of their own are credentials too
                    for name in API_KEY_HEADERS {
                        request.headers_mut().remove(name);
                    }
                }
                super::credentials::move_userinfo(request);
                let extensions = request.extensions_mut();
                extensions.remove::<PartitionKey>();
                match provider {
                    Some(p) if host_of(request.uri()) == host_of_authority(origin.as_ref()) => {
                        request.extensions_mut().insert(p.clone());
                    }
                    _ => {
                        request.extensions_mut().remove::<Provider>();
                    }
                }
            }
        }
    }

    fn clone_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::context::{OperationType, WorkId};
    use http::header::{AUTHORIZATION, LOCATION};
    use http::{HeaderMap, Response, Uri};
    use http_body_util::Full;
    use tower::ServiceExt;
    use tower_http::follow_redirect::FollowRedirect;

    type Seen = Arc<Mutex<Vec<(Uri, HeaderMap, http::Extensions)>>>;

    /// Follows `chain` (each URI answers a 302 to the next; the last answers 200) and
    /// returns what each hop's request carried.
    async fn follow(first: Request<Full<bytes::Bytes>>, chain: &'static [&'static str]) -> Seen {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<Full<bytes::Bytes>>| {
            let log = log.clone();
            async move {
                let uri = req.uri().clone();
                log.lock()
                    .unwrap()
                    .push((uri.clone(), req.headers().clone(), req.extensions().clone()));
                let here = chain
                    .iter()
                    .position(|c| uri.to_string().ends_with(&c[c.find('@').map_or(7, |i| i + 1)..]));
                let res = match here.and_then(|i| chain.get(i + 1)) {
                    Some(next) => Response::builder().status(302).header(LOCATION, *next).body(()),
                    None => Response::builder().status(200).body(()),
                };
                Ok::<_, Infallible>(res.unwrap())
            }
        });
        let svc = FollowRedirect::with_policy(svc.map_err(BoxError::from), RedirectPolicy::new(10));
        let res = svc.oneshot(first).await.unwrap();
        assert_eq!(res.status(), 200);
        seen
    }

    #[tokio::test]
    async fn the_provider_stays_on_its_host_and_the_context_follows_every_hop() {
        let req = Request::get("http://u:p@api.example.org/x")
            .header("x-api-key", "S2KEY")
            .header("crossref-plus-api-token", "Bearer PLUS")
            .extension(Provider::new("crossref"))
            .extension(OperationType::Resolve)
            .extension(WorkId::new("W1"))
            .extension(PartitionKey::new("crossref", "api.example.org"))
            .body(Full::default())
            .unwrap();
        let seen = follow(
            req,
            &[
                "http://api.example.org/x",
                "http://api.example.org/y",
                "http://cdn.example.net:8080/z",
                "http://api.example.org/w",
            ],
        )
        .await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        let provider = |i: usize| seen[i].2.get::<Provider>().map(|p| p.as_str().to_owned());
        let (uri0, headers0, _) = &seen[0];
        assert_eq!(uri0, "http://api.example.org/x", "userinfo moved off the URI");
        assert!(headers0.contains_key(AUTHORIZATION));

        assert_eq!(provider(1).as_deref(), Some("crossref"), "same host keeps the provider");
        assert!(seen[1].2.get::<PartitionKey>().is_none(), "recomputed per hop");
        assert!(seen[1].1.contains_key(AUTHORIZATION), "same origin keeps credentials");
        assert!(seen[1].1.contains_key("x-api-key") && seen[1].1.contains_key("crossref-plus-api-token"));

        assert_eq!(provider(2), None, "another host: its own partition");
        assert!(!seen[2].1.contains_key(AUTHORIZATION), "no credentials across origins");
        for key in API_KEY_HEADERS {
            assert!(!seen[2].1.contains_key(key) && !seen[3].1.contains_key(key), "{key}");
        }
        assert_eq!(seen[2].2.get::<OperationType>(), Some(&OperationType::Resolve));
        assert_eq!(
            seen[2].2.get::<WorkId>().map(|w| w.as_str().to_owned()).as_deref(),
            Some("W1")
        );
        let mut hop = Request::get(seen[2].0.clone()).body(()).unwrap();
        *hop.extensions_mut() = seen[2].2.clone();
        assert_eq!(
            PartitionKey::compute(&hop),
            PartitionKey::new("cdn.example.net:8080", "cdn.example.net:8080")
        );

        assert_eq!(provider(3).as_deref(), Some("crossref"), "back on the provider's host");
        assert!(
            !seen[3].1.contains_key(AUTHORIZATION),
            "credentials once dropped stay dropped"
        );
    }

    #[tokio::test]
    async fn a_locations_own_userinfo_is_sent_to_its_host() {
        let req = Request::get("http://a.example/").body(Full::default()).unwrap();
        let seen = follow(req, &["http://a.example/", "http://v:w@b.example/"]).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].0, "http://b.example/");
        assert!(seen[1].1.contains_key(AUTHORIZATION));
    }
}
