//! [`ContentDownloadMiddleware`]: the stack's policies for a `reqwest` client, through
//! `reqwest-middleware`.
//!
//! # Example
//!
//! ```no_run
//! use contentdownload::adapters::reqwest::ContentDownloadMiddleware;
//! use contentdownload::context::{OperationType, Provider};
//! use contentdownload::service::StackConfig;
//!
//! # async fn demo() -> Result<(), contentdownload::error::BoxError> {
//! contentdownload::adapters::reqwest::install_crypto_provider(); // once, before any reqwest::Client
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(ContentDownloadMiddleware::new(&StackConfig::default())?)
//!     .build();
//! let response = client
//!     .get("https://api.crossref.org/works/10.1000/x")
//!     .with_extension(OperationType::Resolve)
//!     .with_extension(Provider::new("crossref"))
//!     .send()
//!     .await?;
//! # drop(response); Ok(()) }
//! ```
//!
//! # Why run the tower stack inside the middleware?
//!
//! The policies (contextual retry with its budgets and decisions, the Retry-After cool-down,
//! learning, the partitioned rate limit, telemetry) are tower layers whose futures hold the
//! state of one operation. Re-writing them as reqwest code would give two implementations
//! that drift apart. Instead the middleware turns the reqwest request into an
//! `http::Request`, runs it through [`Stack::service_with`], and the innermost service hands
//! each attempt back to the middleware, which sends it with `next` — the rest of the
//! middleware chain and the user's own `reqwest::Client`. So a reqwest user gets exactly the
//! behaviour of the tower stack, and the state can be shared with one ([`from_stack`]).
//!
//! The request context travels in reqwest-middleware's extensions
//! (`RequestBuilder::with_extension`): [`OperationType`], [`Provider`], [`IdempotencyKey`],
//! [`WorkId`]. Typed outcomes (`FailedOver`, `Deferred`, `CoolingDown`, `RateLimitTimeout`)
//! come back as `reqwest_middleware::Error::Middleware`, downcastable with
//! `anyhow::Error::downcast_ref`.
//!
//! TLS: the feature enables reqwest with rustls but without its aws-lc crypto provider (this
//! crate uses ring). [`client`] installs ring for you and builds the whole client in one
//! line; to wrap a `reqwest::Client` of your own, call [`install_crypto_provider`] once
//! before building it (or install a provider of your own, or enable one of reqwest's TLS
//! features that brings one).
//!
//! Limits: a request whose body is a stream cannot be retried, so it is sent once through
//! `next`, without the policies. The response handed back carries the URL of the last
//! attempt's reply (`Response::url`).
//!
//! [`from_stack`]: ContentDownloadMiddleware::from_stack

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Extensions, Request, Response};
use http_body_util::Full;
use reqwest_middleware::Next;
use sync_wrapper::SyncWrapper;
use tower::ServiceExt;

use crate::context::{IdempotencyKey, OperationType, Provider, WorkId};
use crate::error::{BoxError, CoolingDown, Deferred, FailedOver, RateLimitTimeout};
use crate::service::{HttpConfig, HttpService, PipelineBody, Stack, StackConfig};

/// Installs rustls' ring crypto provider as the process default, unless one is installed
/// already. reqwest (built with `rustls-no-provider`) needs a default provider before a
/// `reqwest::Client` is built; call this once at start-up.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The one-line adoption: a reqwest client configured from `config.http` (the polite
/// User-Agent, the connect and idle-read timeouts, the pool's idle timeout, TLS
/// verification — off only with `danger_accept_invalid_certs`), wrapped in a
/// [`ContentDownloadMiddleware`] with its own state. Redirects are followed by the
/// middleware's stack, not by reqwest (whose policy is `none`): each hop is its own attempt
/// to its own host's partition (rate limit, learning, cool-down, retry), at most
/// `http.max_redirects` of them, with no credentials across origins. Installs the ring crypto provider
/// first ([`install_crypto_provider`]). Errors name the setting that is wrong.
///
/// ```no_run
/// use contentdownload::context::{OperationType, Provider};
/// use contentdownload::service::{HttpConfig, StackConfig};
///
/// # async fn demo() -> Result<(), contentdownload::error::BoxError> {
/// let client = contentdownload::adapters::reqwest::client(&StackConfig {
///     http: HttpConfig { mailto: Some("you@example.org".into()), ..HttpConfig::default() },
///     ..StackConfig::default()
/// })?;
/// let response = client
///     .get("https://api.crossref.org/works/10.1000/x")
///     .with_extension(OperationType::Resolve)
///     .with_extension(Provider::new("crossref"))
///     .send()
///     .await?;
/// # drop(response); Ok(()) }
/// ```
pub fn client(config: &StackConfig) -> Result<reqwest_middleware::ClientWithMiddleware, BoxError> {
    let reqwest_client = client_builder(&config.http).build()?;
    Ok(reqwest_middleware::ClientBuilder::new(reqwest_client)
        .with(ContentDownloadMiddleware::new(config)?)
        .build())
}

/// The reqwest client builder that [`client`] uses, configured from `http` (and the ring
/// crypto provider installed), for a caller who adds settings of their own before wrapping
/// the client in a [`ContentDownloadMiddleware`]. Its redirect policy is `none`: the
/// middleware's stack follows redirects hop by hop; a client that follows them itself hides
/// the hops from the stack's partition layers.
///
/// ```
/// use contentdownload::adapters::reqwest::{client_builder, ContentDownloadMiddleware};
/// use contentdownload::service::StackConfig;
///
/// # fn demo() -> Result<(), contentdownload::error::BoxError> {
/// let config = StackConfig::default();
/// let inner = client_builder(&config.http).tcp_nodelay(true).build()?;
/// let client = reqwest_middleware::ClientBuilder::new(inner)
///     .with(ContentDownloadMiddleware::new(&config)?)
///     .build();
/// # drop(client); Ok(()) }
/// ```
pub fn client_builder(http: &HttpConfig) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(http.user_agent())
        .connect_timeout(http.connect_timeout())
        .read_timeout(http.read_timeout())
        .pool_idle_timeout(http.pool_idle_timeout())
        .pool_max_idle_per_host(http.pool_max_idle_per_host)
        // the stack follows redirects hop by hop (reqwest following them would hide the hops
        // from the partition layers: a CDN's 429 would cool down and retry the origin)
        .redirect(reqwest::redirect::Policy::none());
    if http.danger_accept_invalid_certs {
        tracing::warn!("TLS certificate verification is OFF for the reqwest client (danger_accept_invalid_certs)");
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
}

/// A `reqwest_middleware::Middleware` that applies the stack's policies: partitioned rate
/// limit, learning, Retry-After cool-down, contextual retry and telemetry.
///
/// Clones share everything: the state lives in the [`Stack`] (behind `Arc`s).
#[derive(Clone)]
pub struct ContentDownloadMiddleware {
    stack: Stack,
    // One composed service per operation type, built once (indexed by `op_index`).
    services: [HttpService; 5],
}

impl fmt::Debug for ContentDownloadMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentDownloadMiddleware")
            .field("stack", &self.stack)
            .finish_non_exhaustive()
    }
}

const OPS: [OperationType; 5] = [
    OperationType::Download,
    OperationType::Validate,
    OperationType::Resolve,
    OperationType::Extract,
    OperationType::ManifestFetch,
];

fn op_index(op: OperationType) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(0)
}

impl ContentDownloadMiddleware {
    /// A middleware with its own state, configured like a [`Stack`]. Errors name the setting
    /// that is wrong. (`config.http` only matters for the unused shared client: requests go
    /// through the reqwest client.)
    pub fn new(config: &StackConfig) -> Result<Self, BoxError> {
        Ok(Self::from_stack(&Stack::new(config)?))
    }

    /// A middleware that shares `stack`'s limiter, learner, cool-downs and budgets, so reqwest
    /// and tower callers of the same provider are counted together.
    pub fn from_stack(stack: &Stack) -> Self {
        let services = OPS.map(|op| stack.service_with(op, NextService));
        ContentDownloadMiddleware {
            stack: stack.clone(),
            services,
        }
    }

    /// The stack whose state this middleware uses (its learner, its limiter).
    pub fn stack(&self) -> &Stack {
        &self.stack
    }
}

/// Where the innermost service leaves each attempt for the middleware's `next`, and where
/// the middleware leaves the reply. The innermost service finds it in [`POLLING`] (or, for
/// a request built by hand, in the request's extensions).
///
/// A shared slot rather than channels: the stack and the middleware run in one task, and a
/// channel's wake-up of its own task made tokio hand the task to another worker thread on
/// every exchange, twice per attempt (`overhead_bench`, concurrency 1: p50 121–132 µs with
/// channels, 39–50 µs with this slot). The wakers are still honoured, so the two sides may
/// run in different tasks: whoever waits registers its waker in the slot, and whoever fills
/// the slot wakes it, except when the waiter is the filler's own task, which polls the
/// other side right after (the middleware's loop looks at the slot each time the stack's
/// future returns `Pending`, and polls the stack again right after putting a reply in).
///
/// One slot each way: the stack sends the attempts of one request one after the other (a
/// resend or a redirect hop only after the previous attempt's reply).
///
/// It also carries the caller's URL, so that an attempt to the same URI is sent without
/// parsing the URL again (reqwest's `TryFrom<http::Request>` formats the URI and parses it:
/// thousands of instructions per attempt); a redirect hop has another URI, and is parsed.
/// (One extension rather than two: the retry and redirect layers copy every extension.)
/// The URL is also the one the caller's response carries when the last reply came from
/// it: it is moved there at the end rather than copied from each reply. And it keeps the
/// caller's own `reqwest::Request` (without its method and headers, which went into the
/// stack's request) for the first attempt to the caller's URI: nearly every request is
/// sent once, and then it is sent as reqwest built it, with no new request, no copy of the
/// URL, and reqwest's settings (the timeout) already in it.
#[derive(Clone, Default)]
struct AttemptChannel(Arc<Shared>);

#[derive(Default)]
struct Shared {
    exchange: Mutex<Exchange>,
    /// The caller's URI (its URL is in the exchange, to be moved out at the end).
    caller: Option<http::Uri>,
}

type Reply = reqwest_middleware::Result<reqwest::Response>;

/// What `Next::run` returns.
type ReplyFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

thread_local! {
    /// The channel of the request whose stack future this thread is polling: every attempt
    /// reaches [`NextService::call`] inside that poll (the stack's layers call the service
    /// below from their futures, never from a task of their own).
    ///
    /// Rather than an extension of the request: the retry layer's spare copy and the redirect
    /// layer's copy of the extensions each boxed a clone of it, and the innermost service
    /// removed it again, about 800 instructions per request (`overhead_bench` row (e)).
    static POLLING: Cell<Option<AttemptChannel>> = const { Cell::new(None) };
}

/// While alive, [`POLLING`] names a channel (the previous one is put back on drop, so a
/// middleware inside a stack inside a middleware works too).
struct Polling(Option<AttemptChannel>);

impl Polling {
    fn enter(channel: &AttemptChannel) -> Polling {
        Polling(POLLING.with(|p| p.replace(Some(channel.clone()))))
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        let previous = self.0.take();
        POLLING.with(|p| p.set(previous));
    }
}

/// The channel [`POLLING`] names, if any.
fn polling_channel() -> Option<AttemptChannel> {
    POLLING.with(|p| {
        let channel = p.take();
        p.set(channel.clone());
        channel
    })
}

#[derive(Default)]
struct Exchange {
    next_id: u64,
    attempt: Option<(u64, reqwest::Request)>,
    reply: Option<(u64, Reply)>,
    /// The attempt whose future waits for its reply, and that future's waker.
    waiting: Option<(u64, Waker)>,
    /// The task waiting for an attempt, when it registered (`poll_attempt`).
    consumer: Option<Waker>,
    /// The caller's URL, until [`AttemptChannel::take_caller_url`].
    caller_url: Option<reqwest::Url>,
    /// The caller's request, until the first attempt to its URI takes it.
    spare: Option<reqwest::Request>,
}

impl AttemptChannel {
    fn lock(&self) -> MutexGuard<'_, Exchange> {
        // a panic while holding this lock cannot leave the exchange half-updated
        self.0.exchange.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn for_caller(uri: http::Uri, url: reqwest::Url, spare: reqwest::Request) -> Self {
        AttemptChannel(Arc::new(Shared {
            exchange: Mutex::new(Exchange {
                caller_url: Some(url),
                spare: Some(spare),
                ..Exchange::default()
            }),
            caller: Some(uri),
        }))
    }

    /// A request to the caller's URL when `uri` is the caller's URI (not a redirect hop's):
    /// the caller's own for the first attempt, then new ones with a copy of its URL.
    fn caller_request(&self, uri: &http::Uri) -> Option<reqwest::Request> {
        match &self.0.caller {
            Some(caller) if same_uri(caller, uri) => {
                let mut exchange = self.lock();
                exchange.spare.take().or_else(|| {
                    let url = exchange.caller_url.clone()?;
                    Some(reqwest::Request::new(http::Method::GET, url))
                })
            }
            _ => None,
        }
    }

    /// Whether `url` is the caller's URL (then a reply from it needs no [`ReplyUrl`]).
    fn is_caller_url(&self, url: &reqwest::Url) -> bool {
        self.lock()
            .caller_url
            .as_ref()
            .is_some_and(|c| c.as_str() == url.as_str())
    }

    /// The caller's URL, moved out: for the response handed to the caller when the last
    /// reply came from it.
    fn take_caller_url(&self) -> Option<reqwest::Url> {
        self.lock().caller_url.take()
    }

    /// Leaves an attempt for the middleware; `None` if one is there already (the stack
    /// never sends two attempts of one request at once, so this is a bug, reported as an
    /// error rather than a lost request).
    fn send(&self, request: reqwest::Request) -> Option<u64> {
        let mut exchange = self.lock();
        if exchange.attempt.is_some() {
            return None;
        }
        let id = exchange.next_id;
        exchange.next_id += 1;
        exchange.attempt = Some((id, request));
        let consumer = exchange.consumer.take();
        drop(exchange);
        if let Some(waker) = consumer {
            waker.wake();
        }
        Some(id)
    }

    /// The attempt left by the stack, if any (for the middleware's loop, which looks each
    /// time the stack's future returns `Pending`).
    fn take_attempt(&self) -> Option<(u64, reqwest::Request)> {
        self.lock().attempt.take()
    }

    fn has_attempt(&self) -> bool {
        self.lock().attempt.is_some()
    }

    /// The attempt left by the stack, or `Pending` with `cx`'s waker registered: for a
    /// consumer that does not poll the stack itself.
    #[cfg(test)]
    fn poll_attempt(&self, cx: &mut Context<'_>) -> Poll<(u64, reqwest::Request)> {
        let mut exchange = self.lock();
        match exchange.attempt.take() {
            Some(attempt) => Poll::Ready(attempt),
            None => {
                exchange.consumer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Leaves the reply to attempt `id` and wakes the future waiting for it, unless that
    /// future runs in `own` task (which polls it next anyway: a wake-up would cost a trip
    /// through the scheduler).
    fn reply(&self, id: u64, result: Reply, own: Option<&Waker>) {
        let mut exchange = self.lock();
        exchange.reply = Some((id, result));
        let waiter = match exchange.waiting.take() {
            Some((waiting, waker)) if waiting == id => Some(waker),
            other => {
                exchange.waiting = other;
                None
            }
        };
        drop(exchange);
        if let Some(waker) = waiter {
            if !own.is_some_and(|own| own.will_wake(&waker)) {
                waker.wake();
            }
        }
    }

    /// The reply to attempt `id`, or `Pending` with `cx`'s waker registered for it.
    fn poll_reply(&self, id: u64, cx: &mut Context<'_>) -> Poll<Reply> {
        let mut exchange = self.lock();
        match exchange.reply.take() {
            Some((replied, reply)) if replied == id => return Poll::Ready(reply),
            // the reply to an attempt whose future was dropped: nobody will take it
            Some(_stale) => {}
            None => {}
        }
        match &mut exchange.waiting {
            Some((waiting, waker)) if *waiting == id => waker.clone_from(cx.waker()),
            slot => *slot = Some((id, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Forgets attempt `id` (its future was dropped).
    fn abandon(&self, id: u64) {
        let mut exchange = self.lock();
        if exchange.waiting.as_ref().is_some_and(|(waiting, _)| *waiting == id) {
            exchange.waiting = None;
        }
        if exchange.attempt.as_ref().is_some_and(|(attempt, _)| *attempt == id) {
            exchange.attempt = None;
        }
    }
}

/// `a == b`, answered without comparing the strings when both are clones of one URI (the
/// attempts of a request that was not redirected share the caller's URI's bytes): `Uri`'s
/// `==` compares scheme, authority and path part by part, a few hundred instructions per
/// attempt (`overhead_bench` under callgrind).
fn same_uri(a: &http::Uri, b: &http::Uri) -> bool {
    fn same_str(a: Option<&str>, b: Option<&str>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
    let shared = a.scheme() == b.scheme()
        && same_str(a.authority().map(|x| x.as_str()), b.authority().map(|x| x.as_str()))
        && same_str(
            a.path_and_query().map(|x| x.as_str()),
            b.path_and_query().map(|x| x.as_str()),
        );
    shared || a == b
}

/// The URL of the reply to an attempt (reqwest's `Response::url`), carried back through
/// the stack to the `reqwest::Response` handed to the caller; absent when it is the
/// caller's URL (nearly always), which the channel holds.
#[derive(Clone)]
struct ReplyUrl(reqwest::Url);

// Written out rather than with `#[async_trait]` (whose signature this is): the request is
// turned into the stack's `http::Request` before the future is made, so the boxed future
// holds only what the exchange needs. With `async fn`, the `reqwest::Request` argument kept
// its ~300 bytes in the future for its whole life: 1,608 bytes, past the size glibc's
// malloc serves from its per-thread cache, now 856 (measured with `size_of_val`), and a
// streaming body's request is handed to `next` without a box of ours around it.
impl reqwest_middleware::Middleware for ContentDownloadMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: reqwest::Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> ReplyFuture<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let body = match req.body() {
            None => Bytes::new(),
            Some(b) => match b.as_bytes() {
                Some(bytes) => Bytes::copy_from_slice(bytes),
                // A streaming body cannot be cloned for a retry: send it once, as it is.
                None => return next.run(req, extensions),
            },
        };
        let op = extensions.get::<OperationType>().copied().unwrap_or_default();
        let timeout = req.timeout().copied();
        let (http_req, channel) = match to_http(req, body, extensions) {
            Ok(converted) => converted,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let call = self.services[op_index(op)].clone().oneshot(http_req);
        Box::pin(exchange(call, channel, timeout, extensions, next))
    }
}

/// Runs the stack's future `call`, sending each attempt it leaves in `channel` through `next`.
async fn exchange(
    mut call: tower::util::Oneshot<HttpService, Request<Full<Bytes>>>,
    channel: AttemptChannel,
    timeout: Option<std::time::Duration>,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<reqwest::Response> {
    // (`Unpin`: the stack's future is boxed; pinning it here would copy it into a second
    // slot of this future)
    // this task's waker: a reply for a future this task polls needs no wake-up
    let own = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let result = loop {
        // Ready(Some): the stack is done; Ready(None): it left an attempt for `next`.
        let step = std::future::poll_fn(|cx| {
            let polled = {
                let _polling = Polling::enter(&channel);
                Pin::new(&mut call).poll(cx)
            };
            match polled {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                Poll::Pending if channel.has_attempt() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let Some(result) = step {
            break result;
        }
        while let Some((id, sent)) = send_attempt(&channel, &next, timeout, extensions) {
            let reply = sent.await;
            channel.reply(id, reply, Some(&own));
        }
    };
    match result {
        Ok(response) => Ok(from_http(response, &channel)),
        Err(e) => Err(from_box(e)),
    }
}

/// Sends the attempt the stack left in `channel`, if any, through `next`. (A function of
/// its own so that the attempt's `reqwest::Request`, 264 bytes, is not a slot of
/// [`exchange`]'s future: a local moved away before an `.await` still kept its room.)
fn send_attempt<'a>(
    channel: &AttemptChannel,
    next: &Next<'a>,
    timeout: Option<std::time::Duration>,
    extensions: &'a mut Extensions,
) -> Option<(u64, ReplyFuture<'a>)> {
    let (id, mut attempt) = channel.take_attempt()?;
    // Only when there is one: reqwest keeps the timeout in the request's extensions, and
    // `timeout_mut` allocates them (a map and a box, about 500 instructions per attempt
    // with the drop) even to store `None`.
    if timeout.is_some() {
        *attempt.timeout_mut() = timeout;
    }
    Some((id, next.clone().run(attempt, extensions)))
}

fn to_http(
    mut req: reqwest::Request,
    body: Bytes,
    extensions: &Extensions,
) -> reqwest_middleware::Result<(Request<Full<Bytes>>, AttemptChannel)> {
    let uri: http::Uri = req
        .url()
        .as_str()
        .parse()
        .map_err(reqwest_middleware::Error::middleware)?;
    let mut http_req = Request::new(Full::new(body));
    // (moved, not copied: each attempt takes its method and headers from the stack's
    // request; `req` keeps the rest for the first attempt, see `AttemptChannel`)
    *http_req.method_mut() = std::mem::take(req.method_mut());
    *http_req.uri_mut() = uri.clone();
    *http_req.version_mut() = req.version();
    *http_req.headers_mut() = std::mem::take(req.headers_mut());
    let url = req.url().clone();
    let channel = AttemptChannel::for_caller(uri, url, req);
    // (not the `OperationType`: the service chosen by it inserts it, except `Download`,
    // which is what its absence means)
    let ext = http_req.extensions_mut();
    if let Some(v) = extensions.get::<Provider>() {
        ext.insert(v.clone());
    }
    if let Some(v) = extensions.get::<IdempotencyKey>() {
        ext.insert(v.clone());
    }
    if let Some(v) = extensions.get::<WorkId>() {
        ext.insert(v.clone());
    }
    Ok((http_req, channel))
}

fn from_http(response: Response<PipelineBody>, channel: &AttemptChannel) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    let url = match parts.extensions.remove::<ReplyUrl>() {
        Some(ReplyUrl(url)) => Some(url),
        None => channel.take_caller_url(),
    };
    if let Some(url) = url {
        // reqwest reads a response's URL from an extension of its own, which only its
        // response builder can set (without it, it parses a placeholder URL). The builder
        // is lent the response's extensions, so the URL goes straight into them.
        use reqwest::ResponseBuilderExt;
        let mut builder = Response::builder();
        if let Some(ext) = builder.extensions_mut() {
            *ext = std::mem::take(&mut parts.extensions);
        }
        let mut builder = builder.url(url);
        if let Some(ext) = builder.extensions_mut() {
            parts.extensions = std::mem::take(ext);
        }
    }
    let body = reqwest::Body::wrap(SyncBody::new(body));
    reqwest::Response::from(Response::from_parts(parts, body))
}

pin_project_lite::pin_project! {
    /// The stack's response body made `Sync` for `reqwest::Body::wrap`: the body is only
    /// ever polled through `&mut`, which `SyncWrapper` makes safe to share. (Rather than
    /// `reqwest::Body::wrap_stream` over a stream of the body's data: that added four layers
    /// of polling to every frame, dropped trailers, rebuilt each frame, and lost the size.)
    struct SyncBody {
        #[pin]
        inner: SyncWrapper<PipelineBody>,
        // The body's size hint, read before it was wrapped (`SyncWrapper` lends it only
        // through `&mut`), less the data seen since: `Response::content_length` reads it.
        remaining: http_body::SizeHint,
    }
}

impl SyncBody {
    fn new(body: PipelineBody) -> Self {
        SyncBody {
            remaining: http_body::Body::size_hint(&body),
            inner: SyncWrapper::new(body),
        }
    }
}

impl http_body::Body for SyncBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.get_pin_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let seen = data.len() as u64;
                    let mut left = http_body::SizeHint::new();
                    left.set_lower(this.remaining.lower().saturating_sub(seen));
                    if let Some(upper) = this.remaining.upper() {
                        // (upper ≥ lower before, so after too: `set_upper` cannot panic)
                        left.set_upper(upper.saturating_sub(seen));
                    }
                    *this.remaining = left;
                }
            }
            None => *this.remaining = http_body::SizeHint::with_exact(0),
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.remaining
    }
}

fn from_box(e: BoxError) -> reqwest_middleware::Error {
    match e.downcast::<reqwest_middleware::Error>() {
        Ok(e) => *e,
        Err(e) => match e.downcast::<reqwest::Error>() {
            Ok(e) => reqwest_middleware::Error::Reqwest(*e),
            Err(e) => reqwest_middleware::Error::Middleware(typed(e)),
        },
    }
}

/// Moves the crate's typed errors into the `anyhow::Error` by value, so that
/// `anyhow::Error::downcast_ref::<FailedOver>()` finds them (a boxed trait object would hide
/// them from anyhow's downcast).
fn typed(e: BoxError) -> anyhow::Error {
    macro_rules! try_types {
        ($e:ident, $($t:ty),*) => {{
            $(let $e = match $e.downcast::<$t>() {
                Ok(t) => return anyhow::Error::new(*t),
                Err(e) => e,
            };)*
            anyhow::Error::from_boxed($e)
        }};
    }
    try_types!(e, FailedOver, Deferred, CoolingDown, RateLimitTimeout)
}

/// The innermost service: hands each attempt to the middleware's `next` and waits for it.
#[derive(Clone, Copy, Debug)]
struct NextService;

impl tower::Service<Request<Full<Bytes>>> for NextService {
    // reqwest's body as it is: the stack type-erases it once, at the top
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = NextFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> NextFuture {
        let (mut parts, body) = req.into_parts();
        let Some(channel) = parts.extensions.remove::<AttemptChannel>().or_else(polling_channel) else {
            return NextFuture::failed("the request did not come through ContentDownloadMiddleware");
        };
        // `Full` of one chunk, always ready: its one frame is the bytes, not copied (and,
        // unlike `collect`, nothing is allocated to gather them).
        let mut body = body;
        let bytes = match http_body::Body::poll_frame(Pin::new(&mut body), &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            // no frame: an empty body (`Full` cannot fail)
            _ => Bytes::new(),
        };
        let mut attempt = match channel.caller_request(&parts.uri) {
            Some(request) => request,
            None => match reqwest::Url::parse(&parts.uri.to_string()) {
                Ok(url) => reqwest::Request::new(http::Method::GET, url),
                Err(e) => return NextFuture::failed_with(Box::new(e)),
            },
        };
        // (every part the stack may have changed is the stack's: a 303 hop's method, the
        // headers it added or removed)
        *attempt.method_mut() = parts.method;
        *attempt.headers_mut() = parts.headers;
        *attempt.version_mut() = parts.version;
        *attempt.body_mut() = Some(bytes.into());
        match channel.send(attempt) {
            Some(id) => NextFuture {
                state: Some(Ok((channel, id))),
            },
            None => NextFuture::failed("an attempt was sent while another of the same request was in flight"),
        }
    }
}

/// The future of one attempt sent through `next`: ready once the middleware's loop has put
/// its reply in the exchange (woken then, unless it runs in the loop's own task, which
/// polls it right after).
struct NextFuture {
    state: Option<Result<(AttemptChannel, u64), BoxError>>,
}

impl NextFuture {
    fn failed(msg: &'static str) -> Self {
        Self::failed_with(msg.into())
    }

    fn failed_with(e: BoxError) -> Self {
        NextFuture { state: Some(Err(e)) }
    }
}

impl Drop for NextFuture {
    fn drop(&mut self) {
        if let Some(Ok((channel, id))) = &self.state {
            channel.abandon(*id);
        }
    }
}

impl Future for NextFuture {
    type Output = Result<Response<reqwest::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (channel, id) = match self.state.take() {
            Some(Ok(waiting)) => waiting,
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => return Poll::Ready(Err("NextFuture polled after completion".into())),
        };
        let reply = match channel.poll_reply(id, cx) {
            Poll::Ready(reply) => reply,
            Poll::Pending => {
                self.state = Some(Ok((channel, id)));
                return Poll::Pending;
            }
        };
        Poll::Ready(match reply {
            Err(e) => Err(unwrap_reqwest(e)),
            Ok(response) => {
                let url = (!channel.is_caller_url(response.url())).then(|| ReplyUrl(response.url().clone()));
                let mut response: Response<reqwest::Body> = response.into();
                if let Some(url) = url {
                    response.extensions_mut().insert(url);
                }
                Ok(response)
            }
        })
    }
}

/// Surfaces the reqwest error itself, so the retry classifier sees its connect / timeout
/// source chain (hyper errors inside).
fn unwrap_reqwest(e: reqwest_middleware::Error) -> BoxError {
    match e {
        reqwest_middleware::Error::Reqwest(e) => Box::new(e),
        other => Box::new(other),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tower::Service;

    use super::*;

    fn attempt_request(channel: &AttemptChannel) -> Request<Full<Bytes>> {
        let mut req = Request::get("http://example.org/x")
            .body(Full::new(Bytes::from_static(b"q")))
            .unwrap();
        req.extensions_mut().insert(channel.clone());
        req
    }

    #[tokio::test]
    async fn the_innermost_service_finds_the_channel_being_polled_and_fails_without_one() {
        let request = || Request::get("http://example.org/x").body(Full::default()).unwrap();
        // outside any middleware: a clear error, not a hang
        let err = NextService.call(request()).await.expect_err("no channel");
        assert!(err.to_string().contains("did not come through"), "{err}");
        // inside the middleware's poll: the attempt reaches its channel
        let channel = AttemptChannel::default();
        let future = {
            let _polling = Polling::enter(&channel);
            let inner = AttemptChannel::default();
            {
                // a nested scope puts the outer channel back when it ends
                let _nested = Polling::enter(&inner);
            }
            NextService.call(request())
        };
        assert!(polling_channel().is_none(), "the scope ended");
        assert!(channel.has_attempt());
        drop(future);
        assert!(!channel.has_attempt(), "a dropped attempt is abandoned");
    }

    #[test]
    fn same_uri_is_uri_equality() {
        let uri: http::Uri = "https://api.crossref.org/works?mailto=a%40b.org".parse().unwrap();
        let parsed_again: http::Uri = uri.to_string().parse().unwrap();
        assert!(same_uri(&uri, &uri.clone()));
        assert!(same_uri(&uri, &parsed_again));
        for other in [
            "http://api.crossref.org/works?mailto=a%40b.org",
            "https://api.crossref.org:8443/works?mailto=a%40b.org",
            "https://api.crossref.org/works",
            "https://doi.org/works?mailto=a%40b.org",
            "/works?mailto=a%40b.org",
        ] {
            let other: http::Uri = other.parse().unwrap();
            assert!(!same_uri(&uri, &other), "{other}");
            assert!(!same_uri(&other, &uri), "{other}");
        }
        let relative: http::Uri = "/works".parse().unwrap();
        assert!(same_uri(&relative, &relative.clone()));
    }

    /// The attempt's future and the side that answers it run in two tasks: each must be
    /// woken by the other (a future that returned `Pending` without a waker would sleep
    /// forever; the paused clock turns that into the timeout below).
    #[tokio::test(start_paused = true)]
    async fn the_two_sides_wake_each_other_from_different_tasks() {
        let channel = AttemptChannel::default();
        let answerer = tokio::spawn({
            let channel = channel.clone();
            async move {
                // waits for the attempt (registered before it is sent)
                let (id, request) = std::future::poll_fn(|cx| channel.poll_attempt(cx)).await;
                assert_eq!(request.url().as_str(), "http://example.org/x");
                // bounded: the attempt's task runs at the first yield
                for _ in 0..100 {
                    if channel.lock().waiting.is_some() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                assert!(
                    channel.lock().waiting.is_some(),
                    "the attempt's future waits for its reply"
                );
                let reply = reqwest::Response::from(http::Response::new("hello"));
                channel.reply(id, Ok(reply), None);
            }
        });
        tokio::task::yield_now().await; // the answerer registers first
        let attempt = tokio::spawn(NextService.call(attempt_request(&channel)));
        let response = tokio::time::timeout(Duration::from_secs(60), attempt)
            .await
            .expect("the attempt's task was woken by the reply")
            .unwrap()
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        answerer.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_attempt_leaves_nothing_behind_and_a_stale_reply_is_not_taken() {
        let channel = AttemptChannel::default();
        let first = NextService.call(attempt_request(&channel));
        drop(first);
        assert!(!channel.has_attempt(), "the dropped attempt is withdrawn");
        let mut second = NextService.call(attempt_request(&channel));
        let (id, _) = channel.take_attempt().unwrap();
        // a reply to the first (id - 1) arrives late: the second does not take it
        channel.reply(id - 1, Ok(reqwest::Response::from(http::Response::new("stale"))), None);
        let waker = Waker::noop();
        assert!(Pin::new(&mut second).poll(&mut Context::from_waker(waker)).is_pending());
        channel.reply(id, Ok(reqwest::Response::from(http::Response::new("fresh"))), None);
        let Poll::Ready(Ok(response)) = Pin::new(&mut second).poll(&mut Context::from_waker(waker)) else {
            panic!("the reply to the second attempt is taken");
        };
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "fresh");
    }
}
