//! The stack's redirect step ([`RedirectLayer`]) and the redirect policy it shares with
//! tower-http's `FollowRedirect` ([`RedirectPolicy`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http::header::LOCATION;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::ServiceExt;
use tower_http::follow_redirect::policy::{Action, Attempt, FilterCredentials, Policy};
use tower_http::follow_redirect::FollowRedirect;
use tower_layer::Layer;
use tower_service::Service;

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

/// Follows redirects hop by hop, each hop sent through the inner service as a request of its
/// own, with [`RedirectPolicy`] (at most `max` hops, http/https only, no credentials across
/// origins, each hop its own partition).
///
/// What happens on a redirect is exactly what tower-http's `FollowRedirect` with a
/// [`RedirectPolicy`] does (it is what runs then: the `Location` is resolved as a WHATWG URL,
/// `POST` becomes `GET` on a 301/302/303, extensions follow every hop); what this layer
/// changes is the cost of the requests that are *not* redirected, nearly all of them.
/// `FollowRedirect` clones its inner service twice, its policy, and the request's URI,
/// headers and extensions into every response future, then adds a `RequestUri` extension
/// to every response: about 2,800 instructions and six allocations per request around an
/// in-process service (`layer_cost redirect` under callgrind). Here every future shares one
/// unready copy of the inner service behind an `Arc` (cloned only for a hop), keeps one copy
/// of the request (headers and extensions; an empty header map is not cloned), and leaves
/// the response as it is (together, ~1,200 instructions less per request, `layer_cost
/// redirect`: 7,383 before, 6,185 after, bare 4,624). When a response is a redirect (301, 302, 303, 307 or 308 with a `Location`), a
/// `FollowRedirect` is made for it at that moment, over a service that answers the copy of
/// the request with the response already in hand and sends every later hop through the
/// inner service.
///
/// The response of a request that was redirected carries tower-http's
/// [`RequestUri`](tower_http::follow_redirect::RequestUri) (the URI of the last hop, without
/// the userinfo a `Location` may have carried); a response that was not redirected carries
/// none: its URI is the request's.
///
/// The request body must be cloneable (`Full<Bytes>`, `String`, ...), since a 307/308 hop
/// resends it.
///
/// # Example
///
/// ```
/// use contentdownload::service::RedirectLayer;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), contentdownload::error::BoxError> {
/// let svc = ServiceBuilder::new()
///     .layer(RedirectLayer::new(5))
///     .service(service_fn(|req: Request<String>| async move {
///         let res = if req.uri().path() == "/old" {
///             Response::builder().status(301).header("location", "/new").body(String::new())
///         } else {
///             Response::builder().body(format!("here is {}", req.uri().path()))
///         };
///         Ok::<_, contentdownload::error::BoxError>(res?)
///     }));
/// let res = svc.oneshot(Request::get("http://example.org/old").body(String::new())?).await?;
/// assert_eq!(res.into_body(), "here is /new");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RedirectLayer {
    max: usize,
    hand_up: bool,
}

impl RedirectLayer {
    /// Follows up to `max` hops; one more is a [`TooManyRedirects`] error.
    pub fn new(max: usize) -> Self {
        RedirectLayer { max, hand_up: false }
    }

    /// Hands the copy of each request up to a retry layer *directly* above, built with
    /// `ContextualRetryLayer::with_copy_from_below` (see `layers/retry/slot.rs`).
    pub(crate) fn with_copy_handed_up(mut self) -> Self {
        self.hand_up = true;
        self
    }
}

impl<S: Clone> Layer<S> for RedirectLayer {
    type Service = Redirects<S>;

    fn layer(&self, inner: S) -> Redirects<S> {
        let mut service = Redirects::new(inner, self.max);
        service.hand_up = self.hand_up;
        service
    }
}

/// The service of [`RedirectLayer`].
#[derive(Clone, Debug)]
pub struct Redirects<S> {
    inner: S,
    /// An unready copy of `inner` for hops; `None` after `get_mut` until the next call.
    spare: Option<Arc<S>>,
    max: usize,
    hand_up: bool,
}

impl<S: Clone> Redirects<S> {
    /// Wraps `inner`, following up to `max` hops.
    pub fn new(inner: S, max: usize) -> Self {
        Redirects {
            spare: Some(Arc::new(inner.clone())),
            inner,
            max,
            hand_up: false,
        }
    }
}

impl<S> Redirects<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably (hops use a copy of it as it is at the next call).
    pub fn get_mut(&mut self) -> &mut S {
        self.spare = None;
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Redirects<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Clone + Default + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = RedirectFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // What `RedirectPolicy` does to the first request, before the copy is taken (the
        // policy does it again to the copy, which then has no userinfo left).
        super::credentials::move_userinfo(&mut req);
        // (boxed: inline, the copy made this future, and every future around it, 256 bytes
        // larger to build and to move; the retry layer above keeps it as it is handed up)
        let copy = Box::new(copy_request(&req));
        let service = match &self.spare {
            Some(service) => Arc::clone(service),
            None => {
                let service = Arc::new(self.inner.clone());
                self.spare = Some(Arc::clone(&service));
                service
            }
        };
        RedirectFuture {
            state: Hop::First {
                future: self.inner.call(req),
            },
            copy: Some(copy),
            hand_up: self.hand_up,
            service,
            max: self.max,
        }
    }
}

fn copy_request<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    // (most requests here carry no header yet: the client adds its own below; an empty
    // map's clone still walks its three vectors)
    if !req.headers().is_empty() {
        *copy.headers_mut() = req.headers().clone();
    }
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// Whether `FollowRedirect` would act on a response with this status.
fn is_followed(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

type Hops<S, B> = Pin<Box<Oneshot<FollowRedirect<Replay<S, B>, RedirectPolicy>, Request<B>>>>;

pin_project! {
    /// Response future of [`Redirects`].
    pub struct RedirectFuture<S, B, ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        S: Clone,
        S::Error: Into<BoxError>,
        B: Body,
        B: Clone,
        B: Default,
    {
        #[pin]
        state: Hop<S, B, ResB>,
        copy: Option<Box<Request<B>>>,
        // hand the copy (of the first request) up when done (`with_copy_handed_up`)
        hand_up: bool,
        service: Arc<S>,
        max: usize,
    }
}

pin_project! {
    #[project = HopProj]
    enum Hop<S, B, ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        S: Clone,
        S::Error: Into<BoxError>,
        B: Body,
        B: Clone,
        B: Default,
    {
        First { #[pin] future: S::Future },
        Following { hops: Hops<S, B> },
    }
}

impl<S, B, ResB> std::fmt::Debug for RedirectFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Clone + Default,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for RedirectFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Clone + Default + 'static,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                HopProj::First { future } => {
                    let res = match ready!(future.poll(cx)).map_err(Into::into) {
                        Ok(res) if is_followed(res.status()) && res.headers().contains_key(LOCATION) => res,
                        other => {
                            // the retry layer directly above resends from this copy
                            if let (true, Some(copy)) = (*this.hand_up, this.copy.take()) {
                                crate::layers::retry::hand_up(copy);
                            }
                            return Poll::Ready(other);
                        }
                    };
                    let Some(copy) = this.copy.take() else {
                        return Poll::Ready(Err("redirect: polled after completion".into()));
                    };
                    if *this.hand_up {
                        // a resend starts from the first request again, and follows the hops anew
                        *this.copy = Some(Box::new(copy_request(&copy)));
                    }
                    let replay = Replay {
                        first: Arc::new(Mutex::new(Some(res))),
                        inner: S::clone(this.service),
                    };
                    let follow = FollowRedirect::with_policy(replay, RedirectPolicy::new(*this.max));
                    this.state.set(Hop::Following {
                        hops: Box::pin(follow.oneshot(*copy)),
                    });
                }
                HopProj::Following { hops } => {
                    let mut result = ready!(hops.as_mut().poll(cx));
                    // tower-http's RequestUri holds the last Location as written
                    if let Ok(res) = &mut result {
                        super::credentials::strip_request_uri(res);
                    }
                    if let (true, Some(copy)) = (*this.hand_up, this.copy.take()) {
                        crate::layers::retry::hand_up(copy);
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}

/// The inner service as `FollowRedirect` sees it once a redirect is in hand: the first call
/// (the copy of the request) is answered with that redirect, every later call (each hop)
/// goes to the inner service. (The answer is shared by the clones `FollowRedirect` makes.)
struct Replay<S, B>
where
    S: Service<Request<B>>,
{
    first: Arc<Mutex<Option<S::Response>>>,
    inner: S,
}

impl<S, B> Clone for Replay<S, B>
where
    S: Service<Request<B>> + Clone,
{
    fn clone(&self) -> Self {
        Replay {
            first: Arc::clone(&self.first),
            inner: self.inner.clone(),
        }
    }
}

impl<S, B> Replay<S, B>
where
    S: Service<Request<B>>,
{
    fn take_first(&self) -> Option<S::Response> {
        // (a poisoned lock only means a panic elsewhere; the answer inside is still whole)
        self.first.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn has_first(&self) -> bool {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl<S, B> Service<Request<B>> for Replay<S, B>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<S::Response, BoxError>>,
        futures_util::future::ErrInto<S::Future, BoxError>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.has_first() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        match self.take_first() {
            Some(res) => futures_util::future::Either::Left(std::future::ready(Ok(res))),
            None => futures_util::future::Either::Right(self.inner.call(req).err_into()),
        }
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
    use tower_http::follow_redirect::{FollowRedirect, RequestUri};

    type Seen = Arc<Mutex<Vec<(Uri, HeaderMap, http::Extensions)>>>;

    /// Follows `chain` (each URI answers a 302 to the next; the last answers 200) and
    /// returns what each hop's request carried.
    async fn follow(first: Request<Full<bytes::Bytes>>, chain: &'static [&'static str]) -> Seen {
        let by_layer = follow_with(clone_req(&first), chain, true).await;
        let by_tower_http = follow_with(first, chain, false).await;
        let strip = |seen: &Seen| {
            seen.lock()
                .unwrap()
                .iter()
                .map(|(u, h, e)| (u.clone(), h.clone(), e.get::<Provider>().cloned(), e.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(&by_layer),
            strip(&by_tower_http),
            "RedirectLayer hops as FollowRedirect does"
        );
        by_layer
    }

    fn clone_req(req: &Request<Full<bytes::Bytes>>) -> Request<Full<bytes::Bytes>> {
        copy_request(req)
    }

    /// Follows `chain` with the stack's [`RedirectLayer`] (`by_layer`) or tower-http's
    /// `FollowRedirect` with [`RedirectPolicy`].
    async fn follow_with(first: Request<Full<bytes::Bytes>>, chain: &'static [&'static str], by_layer: bool) -> Seen {
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
        let svc = svc.map_err(BoxError::from);
        let res = if by_layer {
            RedirectLayer::new(10).layer(svc).oneshot(first).await.unwrap()
        } else {
            FollowRedirect::with_policy(svc, RedirectPolicy::new(10))
                .oneshot(first)
                .await
                .unwrap()
        };
        assert_eq!(res.status(), 200);
        let last = seen.lock().unwrap().last().map(|(u, _, _)| u.clone()).unwrap();
        let request_uri = res.extensions().get::<RequestUri>().map(|u| u.0.clone());
        // (a response that was not redirected carries none: `the_layer_rewrites_methods_...`)
        let mut written: Uri = chain.last().unwrap().parse().unwrap();
        if by_layer {
            // the layer strips the userinfo that tower-http keeps from the Location
            super::super::credentials::strip_userinfo(&mut written);
            assert!(!request_uri.as_ref().unwrap().to_string().contains('@'));
        }
        assert_eq!(request_uri, Some(written), "the last hop's URI");
        assert_eq!(last.path(), request_uri.as_ref().unwrap().path());
        seen
    }

    type Log = Arc<Mutex<Vec<(http::Method, String, bytes::Bytes)>>>;

    /// A service that answers each path by `routes` (status, Location) and 200 otherwise,
    /// and records each request's method, path and body.
    fn routed(
        routes: &'static [(&'static str, u16, &'static str)],
    ) -> (
        impl Service<Request<Full<bytes::Bytes>>, Response = Response<()>, Error = BoxError, Future = impl Send> + Clone,
        Log,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<Full<bytes::Bytes>>| {
            let log = log.clone();
            async move {
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                let body = http_body_util::BodyExt::collect(req.into_body()).await?.to_bytes();
                log.lock().unwrap().push((method, path.clone(), body));
                let res = match routes.iter().find(|(p, _, _)| *p == path) {
                    Some((_, status, location)) => Response::builder().status(*status).header(LOCATION, *location),
                    None => Response::builder().status(200),
                };
                Ok::<_, BoxError>(res.body(())?)
            }
        });
        (svc, seen)
    }

    #[tokio::test]
    async fn the_layer_rewrites_methods_and_bodies_like_follow_redirect() {
        static ROUTES: [(&str, u16, &str); 3] = [
            ("/post", 303, "/seen"),
            ("/keep", 307, "/kept"),
            ("/none", 302, "http://[bad/"),
        ];
        let (svc, seen) = routed(&ROUTES);
        let svc = RedirectLayer::new(3).layer(svc);
        let post = |path: &str| {
            Request::post(format!("http://a.example{path}"))
                .body(Full::new(bytes::Bytes::from_static(b"payload")))
                .unwrap()
        };
        for (path, status, uri) in [
            ("/post", 200, Some("http://a.example/seen")),
            ("/keep", 200, Some("http://a.example/kept")),
            // (a redirect whose Location does not parse is handed back as FollowRedirect does)
            ("/none", 302, Some("http://a.example/none")),
            ("/plain", 200, None),
        ] {
            let res = svc.clone().oneshot(post(path)).await.unwrap();
            assert_eq!(res.status(), status, "{path}");
            let request_uri = res.extensions().get::<RequestUri>().map(|u| u.0.to_string());
            assert_eq!(request_uri.as_deref(), uri, "{path}");
        }
        let seen = seen.lock().unwrap();
        let got: Vec<_> = seen.iter().map(|(m, p, b)| (m.as_str(), p.as_str(), &b[..])).collect();
        assert_eq!(
            got,
            [
                ("POST", "/post", &b"payload"[..]),
                ("GET", "/seen", b""),
                ("POST", "/keep", b"payload"),
                ("POST", "/kept", b"payload"),
                // a Location that does not parse: the 302 is the answer
                ("POST", "/none", b"payload"),
                ("POST", "/plain", b"payload"),
            ]
        );
    }

    #[tokio::test]
    async fn the_layer_stops_after_max_hops_and_refuses_other_schemes() {
        static ROUTES: [(&str, u16, &str); 3] = [
            ("/a", 302, "/b"),
            ("/b", 302, "/a"),
            ("/file", 301, "ftp://a.example/x"),
        ];
        let (svc, seen) = routed(&ROUTES);
        let svc = RedirectLayer::new(3).layer(svc);
        let get = |path: &str| {
            Request::get(format!("http://a.example{path}"))
                .body(Full::default())
                .unwrap()
        };
        let err = svc.clone().oneshot(get("/a")).await.unwrap_err();
        assert!(err.is::<TooManyRedirects>(), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 4, "the first request and 3 hops");
        let err = svc.clone().oneshot(get("/file")).await.unwrap_err();
        assert!(err.is::<UnsupportedRedirectScheme>(), "{err}");
        let (svc, _) = routed(&ROUTES);
        let err = RedirectLayer::new(0).layer(svc).oneshot(get("/a")).await.unwrap_err();
        assert!(err.is::<TooManyRedirects>(), "{err}");
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

    #[tokio::test(start_paused = true)]
    async fn a_retry_layer_above_resends_from_this_layers_copy_and_nothing_is_left_behind() {
        use crate::context::AttemptNumber;
        use crate::layers::retry::{nothing_handed_up, ContextualRetryLayer};
        let seen: Arc<Mutex<Vec<(String, u32, bytes::Bytes)>>> = Arc::default();
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<Full<bytes::Bytes>>| {
            let log = log.clone();
            async move {
                let path = req.uri().path().to_owned();
                let attempt = AttemptNumber::of(&req);
                let body = http_body_util::BodyExt::collect(req.into_body()).await?.to_bytes();
                log.lock().unwrap().push((path.clone(), attempt, body));
                let res = match (path.as_str(), attempt) {
                    ("/a", _) => Response::builder().status(307).header(LOCATION, "/b"),
                    ("/b", 1) | ("/c", 1 | 2) => Response::builder().status(503),
                    _ => Response::builder().status(200),
                };
                Ok::<_, BoxError>(res.body(())?)
            }
        });
        let paired = tower::ServiceBuilder::new()
            .layer(ContextualRetryLayer::default().with_copy_from_below())
            .layer(RedirectLayer::new(5).with_copy_handed_up())
            .service(svc.clone());
        let req = |path: &str| {
            Request::put(format!("http://a.example{path}"))
                .extension(Provider::new("p"))
                .body(Full::new(bytes::Bytes::from_static(b"pdf")))
                .unwrap()
        };
        for path in ["/a", "/c"] {
            let res = paired.clone().oneshot(req(path)).await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            assert!(nothing_handed_up(), "{path}");
        }
        let got: Vec<(String, u32, bytes::Bytes)> = seen.lock().unwrap().drain(..).collect();
        let want: Vec<(String, u32, bytes::Bytes)> = [
            ("/a", 1),
            ("/b", 1),
            ("/a", 2),
            ("/b", 2),
            ("/c", 1),
            ("/c", 2),
            ("/c", 3),
        ]
        .into_iter()
        .map(|(p, n)| (p.to_owned(), n, bytes::Bytes::from_static(b"pdf")))
        .collect();
        assert_eq!(
            got, want,
            "a resend starts from the first request and follows the hops anew"
        );

        // A retry layer that expects a copy from a redirect layer that does not hand one up
        // does not resend (and a redirect layer that hands nothing up leaves nothing).
        let unpaired = tower::ServiceBuilder::new()
            .layer(ContextualRetryLayer::default().with_copy_from_below())
            .layer(RedirectLayer::new(5))
            .service(svc);
        let res = unpaired.oneshot(req("/c")).await.unwrap();
        assert_eq!(res.status(), 503);
        assert!(nothing_handed_up());
        assert_eq!(seen.lock().unwrap().len(), 1, "sent once");
    }
}
