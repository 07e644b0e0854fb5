//! [`HttpClient`]: the one pooled hyper client every stack wraps.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, USER_AGENT};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::util::Either;
use tower_http::follow_redirect::FollowRedirect;
use tower_http::set_header::SetRequestHeader;
use tower_service::Service;

use super::config::HttpConfig;
use super::error::{ConfigError, ConnectFailed, ConnectTarget};
use super::future::ResponseFuture;
use super::redirect::RedirectPolicy;
use super::tls;
use crate::error::BoxError;

type Connector = HttpsConnector<HttpConnector>;
type Base<B> = SetRequestHeader<SharedClient<B>, HeaderValue>;
type Inner<B> = Either<FollowRedirect<Base<B>, RedirectPolicy>, Base<B>>;

/// The hyper-util client behind one `Arc`. Its `Client` holds a dozen fields (pool,
/// connector, executor, timers, HTTP/1 and HTTP/2 settings) and sends with `&self`, while
/// each layer above that owns its inner service clones it on every request (FollowRedirect,
/// the retry layer, a boxed service): cloning one pointer is cheaper than cloning the client.
///
/// `pub` only because [`HttpClient`]'s future type names it; it is not reachable from
/// outside the crate.
#[allow(unreachable_pub)]
pub struct SharedClient<B>(Arc<Client<Connector, B>>);

impl<B> fmt::Debug for SharedClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedClient").finish_non_exhaustive()
    }
}

impl<B> Clone for SharedClient<B> {
    fn clone(&self) -> Self {
        SharedClient(Arc::clone(&self.0))
    }
}

impl<B> Service<Request<B>> for SharedClient<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = ClientFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: the pool waits inside the response future
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A redirect's Location may carry userinfo of its own: it never reaches the pool.
        super::credentials::move_userinfo(&mut req);
        let target = ConnectTarget::of(req.uri());
        ClientFuture {
            inner: self.0.request(req),
            target,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`SharedClient`]: hyper-util's, with a connect error turned
    /// into a [`ConnectFailed`] that names the server and the cause (hyper-util's own says
    /// only `client error (Connect)`).
    ///
    /// `pub` only because [`HttpClient`]'s future type names it.
    #[allow(unreachable_pub)]
    pub struct ClientFuture {
        #[pin]
        inner: hyper_util::client::legacy::ResponseFuture,
        target: Option<ConnectTarget>,
    }
}

impl fmt::Debug for ClientFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}

impl std::future::Future for ClientFuture {
    type Output = Result<Response<hyper::body::Incoming>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(
            result.map_err(|e| match ConnectFailed::from_client_error(e, this.target.as_ref()) {
                Ok(named) => Box::new(named) as BoxError,
                Err(e) => Box::new(e) as BoxError,
            }),
        )
    }
}

/// The shared HTTP client: one pooled `hyper_util` legacy client over hyper-rustls
/// (HTTP/1.1 and HTTP/2 by ALPN, webpki roots), with the polite User-Agent set by
/// tower-http's `SetRequestHeader`, redirects followed by tower-http's `FollowRedirect`
/// (bounded, http/https only, credentials dropped across origins), a connect timeout and
/// an idle read timeout. Userinfo in a request URL (`http://user:pass@host/`) is sent as an
/// `Authorization: Basic` header, as curl and reqwest do, and never reaches the connection
/// pool (whose keys and debug logs would show it); like any `Authorization`, it is dropped
/// on a redirect to another origin.
///
/// Cloning is cheap and every clone shares the connection pool, so build one per process
/// and clone it into every stack.
///
/// It is a [`tower::Service`] from `Request<B>` to [`Response<ResponseBody>`](super::ResponseBody);
/// errors are [`BoxError`] and can be downcast to [`TooManyRedirects`](super::TooManyRedirects),
/// [`UnsupportedRedirectScheme`](super::UnsupportedRedirectScheme),
/// [`ReadTimeout`](super::ReadTimeout), [`ConnectFailed`](super::ConnectFailed) (a connect
/// error, including the connect timeout, naming the server's `host:port` and the cause:
/// DNS, refused, TLS, timed out; its source is hyper-util's error, whose `is_connect()` is
/// true) or `hyper_util::client::legacy::Error`.
///
/// # Example
///
/// ```no_run
/// use contentdownload::service::{HttpClient, HttpConfig};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn demo() -> Result<(), contentdownload::error::BoxError> {
/// let client = HttpClient::new(&HttpConfig {
///     mailto: Some("me@example.org".into()),
///     ..HttpConfig::default()
/// })?;
/// // Any tower layer wraps it; here, a concurrency cap and an overall timeout.
/// let svc = ServiceBuilder::new()
///     .concurrency_limit(64)
///     .timeout(Duration::from_secs(120))
///     .service(client.clone());
/// let req = http::Request::get("https://api.openalex.org/works/W2741809807")
///     .body(Default::default())?;
/// let response = svc.oneshot(req).await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
pub struct HttpClient<B = Full<Bytes>> {
    // Behind an `Arc`: every layer that keeps an unready copy of the service below it (the
    // retry layer for a resend, `FollowRedirect` for a hop, the rate limit while a request
    // waits) clones the client, several times per request, and the tower-http services
    // inside (an `Either` of `FollowRedirect` and `SetRequestHeader`) are a few hundred
    // bytes with their own reference counts. One pointer is cheap; `call` clones the inside
    // once.
    inner: Arc<Inner<B>>,
    read_timeout: Duration,
    metadata_limit: usize,
}

impl<B> Clone for HttpClient<B> {
    fn clone(&self) -> Self {
        HttpClient {
            inner: self.inner.clone(),
            read_timeout: self.read_timeout,
            metadata_limit: self.metadata_limit,
        }
    }
}

impl<B> fmt::Debug for HttpClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The User-Agent may carry the operator's address: not printed.
        f.debug_struct("HttpClient")
            .field("read_timeout", &self.read_timeout)
            .field("metadata_limit", &self.metadata_limit)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client for `Full<Bytes>` request bodies (the usual case; for another body
    /// type use [`with_body_type`](HttpClient::with_body_type)). Fails with a
    /// [`ConfigError`] naming the field when a value cannot be used (a User-Agent with
    /// control characters, a zero timeout).
    pub fn new(config: &HttpConfig) -> Result<Self, ConfigError> {
        HttpClient::with_body_type(config)
    }
}

impl<B> HttpClient<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Builds the client for request bodies of type `B`
    /// (`HttpClient::<Empty<Bytes>>::with_body_type(&config)`).
    pub fn with_body_type(config: &HttpConfig) -> Result<Self, ConfigError> {
        Self::build(config, true)
    }

    /// A client that hands every redirect back instead of following it: for a stack whose
    /// own redirect layer sits above the partition layers (see [`Stack`](super::Stack)).
    pub(crate) fn without_redirects(config: &HttpConfig) -> Result<Self, ConfigError> {
        Self::build(config, false)
    }

    fn build(config: &HttpConfig, follow_redirects: bool) -> Result<Self, ConfigError> {
        if config.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be greater than 0"));
        }
        if config.read_timeout_ms == 0 {
            return Err(invalid("read_timeout_ms", "must be greater than 0"));
        }
        let user_agent = HeaderValue::from_str(&config.user_agent()).map_err(|_| {
            let field = if config.user_agent.is_some() {
                "user_agent"
            } else {
                "mailto"
            };
            invalid(field, "contains characters not allowed in a header value")
        })?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout()));

        let tls = tls::client_config(config.danger_accept_invalid_certs, &config.extra_root_certificates)?;
        let https = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let https = if config.http2 {
            https.enable_http1().enable_http2().wrap_connector(http)
        } else {
            https.enable_http1().wrap_connector(http)
        };

        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout())
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(https);
        let client = SharedClient(Arc::new(client));
        let client = SetRequestHeader::if_not_present(client, USER_AGENT, user_agent);
        // Extensions are not replayed on redirected requests: the layers above the client
        // have read theirs already, and snapshotting them cost a map clone per request.
        let inner = if follow_redirects {
            Either::Left(
                FollowRedirect::with_policy(client, RedirectPolicy::new(config.max_redirects))
                    .preserve_extensions(false),
            )
        } else {
            Either::Right(client)
        };
        Ok(HttpClient {
            inner: Arc::new(inner),
            read_timeout: config.read_timeout(),
            metadata_limit: config.max_metadata_body_bytes,
        })
    }
}

impl<B> HttpClient<B> {
    /// The configured metadata body limit, for [`read_metadata`](super::read_metadata).
    pub fn metadata_limit(&self) -> usize {
        self.metadata_limit
    }

    /// The idle read timeout.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }
}

fn invalid(field: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

impl<B> Service<Request<B>> for HttpClient<B>
where
    B: Body + Clone + Default + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<super::ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture<<Inner<B> as Service<Request<B>>>::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: hyper-util's client waits for a connection inside its response
        // future, and `FollowRedirect` and `SetRequestHeader` only pass its readiness on.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Above FollowRedirect, so that its policy sees the header and drops it when a hop
        // leaves the origin; below nothing that could log the password.
        super::credentials::move_userinfo(&mut req);
        let mut inner = Inner::clone(&self.inner);
        // Ready at once (see `poll_ready`); polled all the same, as the services inside ask.
        let ready = inner.poll_ready(&mut Context::from_waker(std::task::Waker::noop()));
        debug_assert!(
            matches!(ready, Poll::Ready(Ok(()))),
            "the shared client is always ready"
        );
        ResponseFuture::new(inner.call(req), self.read_timeout)
    }
}

/// The shared client without the redirect machinery, for the [`Stack`](super::Stack), whose
/// own redirect layer sits above the partition layers: `SetRequestHeader` over the pooled
/// client, with the idle read timeout.
///
/// # Why not `HttpClient` itself
///
/// `HttpClient`'s future is an `Either` of tower-http's `FollowRedirect` future (which keeps
/// the request's method, URI, headers, body, policy and a service to follow a hop with)
/// and the plain one: about 900 bytes, though a client built without redirects never uses
/// that side. Every layer's future contains the one below it and each layer moves it as it
/// builds its own, so in a stack of ten layers those bytes were copied tens of times per
/// request. This one's future is the plain client's (a few hundred bytes).
pub(crate) struct DirectClient<B = Full<Bytes>> {
    inner: Arc<Base<B>>,
    read_timeout: Duration,
}

impl<B> Clone for DirectClient<B> {
    fn clone(&self) -> Self {
        DirectClient {
            inner: Arc::clone(&self.inner),
            read_timeout: self.read_timeout,
        }
    }
}

impl<B> fmt::Debug for DirectClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectClient")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl<B> HttpClient<B> {
    /// The same pooled client and settings, sending without following redirects.
    pub(crate) fn direct(&self) -> DirectClient<B> {
        let base = match &*self.inner {
            Either::Left(follow) => follow.get_ref().clone(),
            Either::Right(base) => base.clone(),
        };
        DirectClient {
            inner: Arc::new(base),
            read_timeout: self.read_timeout,
        }
    }
}

impl<B> Service<Request<B>> for DirectClient<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<super::ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture<ClientFuture>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: hyper-util's client waits for a connection inside its response
        // future, and `SetRequestHeader` only passes its readiness on.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        super::credentials::move_userinfo(&mut req);
        let mut inner = Base::clone(&self.inner);
        // Ready at once (see `poll_ready`); polled all the same, as the service inside asks.
        let ready = inner.poll_ready(&mut Context::from_waker(std::task::Waker::noop()));
        debug_assert!(
            matches!(ready, Poll::Ready(Ok(()))),
            "the shared client is always ready"
        );
        ResponseFuture::new(inner.call(req), self.read_timeout)
    }
}
