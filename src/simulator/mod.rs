//! A scriptable provider simulator: a real hyper server on 127.0.0.1 for tests, benches
//! and examples (feature `simulator`).
//!
//! Each path (or path prefix, written with a trailing `*`) gets a script: a sequence of
//! [`Reply`]s (the last one repeats), or a function of the request. A route can also sit
//! behind a hidden token-bucket [`Throttle`] that answers 429 above its rate. Every request
//! is recorded ([`SeenRequest`]) with the time, method, path, headers, body, connection and
//! the status answered, so tests can assert on what reached the server.
//!
//! Time is read from tokio's clock, so scripted delays and throttles follow a paused clock.
//!
//! # Example
//!
//! ```
//! use contentdownload::simulator::{Reply, Simulator};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let sim = Simulator::start().await?;
//! sim.on("/flaky", [Reply::status(503), Reply::status(503), Reply::ok().body("done")]);
//! sim.on("/pdf/*", [Reply::ok().header("content-type", "application/pdf").stream(1 << 20)]);
//! assert!(sim.url("/flaky").starts_with("http://127.0.0.1:"));
//! assert_eq!(sim.count("/flaky"), 0);
//! # Ok(()) }
//! ```

mod body;
mod reply;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use self::body::SimBody;
pub use self::reply::{BodySpec, Reply};

/// Largest request body the simulator records.
const MAX_RECORDED_BODY: usize = 1024 * 1024;

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// When it arrived (tokio clock).
    pub at: Instant,
    /// The method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (up to 1 MiB).
    pub body: Bytes,
    /// The connection it came on: 1 for the first accepted connection, and so on.
    pub connection: usize,
    /// The status the simulator answered.
    pub status: StatusCode,
}

impl SeenRequest {
    /// The path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// A header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A hidden token bucket in front of a route: above `rate` requests per second (after a
/// burst of `burst`), requests are answered 429 without reaching the route's script.
#[derive(Clone, Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    reply: Reply,
}

impl Throttle {
    /// A throttle allowing `rate` requests per second with a burst of `burst`.
    pub fn new(rate: f64, burst: u32) -> Throttle {
        Throttle {
            rate: rate.max(0.0),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
            reply: Reply::status(429),
        }
    }

    /// The reply sent when throttling (default: a bare 429).
    pub fn reply(mut self, reply: Reply) -> Throttle {
        self.reply = reply;
        self
    }

    fn admit(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type ReplyFn = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

enum Behaviour {
    Script(VecDeque<Reply>),
    Func(ReplyFn),
}

struct Route {
    pattern: String,
    behaviour: Option<Behaviour>,
    throttle: Option<Throttle>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => self.pattern == path,
        }
    }
}

#[derive(Default)]
struct State {
    routes: Mutex<Vec<Route>>,
    seen: Mutex<Vec<SeenRequest>>,
    connections: AtomicUsize,
    bytes_sent: Arc<AtomicU64>,
}

// A poisoned lock only means a test thread panicked while holding it; the data is still
// usable for the remaining assertions.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulator: a hyper server (HTTP/1.1 and h2c) on an ephemeral 127.0.0.1 port.
/// Dropping it stops accepting and closes every open connection.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving on the current runtime.
    pub async fn start() -> io::Result<Simulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, state.clone(), rx));
        Ok(Simulator { addr, state, shutdown })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// [`url`](Self::url) as a [`Uri`].
    ///
    /// # Panics
    /// If `path_and_query` is not a valid URI path (a bug in the test).
    pub fn uri(&self, path_and_query: &str) -> Uri {
        self.url(path_and_query).parse().expect("valid path for Simulator::uri")
    }

    /// Scripts a route: the replies in order, the last repeating. A pattern ending in `*`
    /// matches every path with that prefix; exact patterns win over prefixes, and longer
    /// prefixes over shorter ones. Scripting a pattern again replaces its script (and
    /// keeps its throttle).
    pub fn on(&self, pattern: &str, replies: impl IntoIterator<Item = Reply>) {
        let replies: VecDeque<Reply> = replies.into_iter().collect();
        let behaviour = if replies.is_empty() {
            Behaviour::Script(VecDeque::from([Reply::status(404)]))
        } else {
            Behaviour::Script(replies)
        };
        self.route_mut(pattern, |r| r.behaviour = Some(behaviour));
    }

    /// Answers a route with a function of the request (called for every request).
    pub fn on_fn<F>(&self, pattern: &str, f: F)
    where
        F: Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    {
        self.route_mut(pattern, |r| r.behaviour = Some(Behaviour::Func(Arc::new(f))));
    }

    /// Puts a hidden throttle in front of a route (replacing any earlier one).
    pub fn throttle(&self, pattern: &str, throttle: Throttle) {
        self.route_mut(pattern, |r| r.throttle = Some(throttle));
    }

    /// Changes the hidden rate of a route's throttle, keeping its tokens; does nothing if
    /// the route has none.
    pub fn set_throttle_rate(&self, pattern: &str, rate: f64) {
        self.route_mut(pattern, |r| {
            if let Some(t) = r.throttle.as_mut() {
                t.rate = rate.max(0.0);
            }
        });
    }

    fn route_mut(&self, pattern: &str, f: impl FnOnce(&mut Route)) {
        let mut routes = lock(&self.state.routes);
        if let Some(route) = routes.iter_mut().find(|r| r.pattern == pattern) {
            f(route);
            return;
        }
        let mut route = Route {
            pattern: pattern.to_owned(),
            behaviour: None,
            throttle: None,
        };
        f(&mut route);
        routes.push(route);
        // exact patterns first, then prefixes longest first
        routes.sort_by_key(|r| (r.pattern.ends_with('*'), std::cmp::Reverse(r.pattern.len())));
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.state.seen).clone()
    }

    /// The requests whose path matches `pattern` (same syntax as [`on`](Self::on)).
    pub fn requests_to(&self, pattern: &str) -> Vec<SeenRequest> {
        let probe = Route {
            pattern: pattern.to_owned(),
            behaviour: None,
            throttle: None,
        };
        lock(&self.state.seen)
            .iter()
            .filter(|r| probe.matches(r.path()))
            .cloned()
            .collect()
    }

    /// How many requests matched `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.requests_to(pattern).len()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.seen).clear();
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Body bytes handed to hyper for sending so far, over all responses.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes open connections (as dropping does).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of file descriptors and the like: keep serving the open connections.
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let conn_id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, conn_id, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

async fn handle(state: Arc<State>, connection: usize, req: Request<Incoming>) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_RECORDED_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut seen = SeenRequest {
        at: Instant::now(),
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        connection,
        status: StatusCode::NOT_FOUND,
    };
    let reply = choose_reply(&state, &seen);
    seen.status = reply.status;
    lock(&state.seen).push(seen);

    if reply.stall_head {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let (body, declared) = SimBody::new(&reply.body, state.bytes_sent.clone());
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        response.headers_mut().append(name, value);
    }
    if let (Some(len), BodySpec::Truncated { .. }) = (declared, &reply.body) {
        response.headers_mut().insert(http::header::CONTENT_LENGTH, len.into());
    }
    response
}

fn choose_reply(state: &State, seen: &SeenRequest) -> Reply {
    let mut routes = lock(&state.routes);
    let Some(route) = routes.iter_mut().find(|r| r.matches(seen.path())) else {
        return Reply::status(404);
    };
    if let Some(throttle) = route.throttle.as_mut() {
        if !throttle.admit(seen.at) {
            return throttle.reply.clone();
        }
    }
    match route.behaviour.as_mut() {
        // a throttle with no script: what it admits is answered 200
        None => Reply::ok(),
        Some(Behaviour::Func(f)) => {
            let f = f.clone();
            drop(routes);
            f(seen)
        }
        Some(Behaviour::Script(replies)) => {
            if replies.len() > 1 {
                replies.pop_front().unwrap_or_else(|| Reply::status(500))
            } else {
                replies.front().cloned().unwrap_or_else(|| Reply::status(404))
            }
        }
    }
}

/// A listener on 127.0.0.1 whose accept queue is full, so the kernel drops new SYNs and a
/// connect to it hangs until the client's connect timeout: for testing that timeout
/// without waiting on a real network.
#[derive(Debug)]
pub struct UnresponsiveListener {
    listener: TcpListener,
    _held: Vec<std::net::TcpStream>,
}

impl UnresponsiveListener {
    /// Binds `listen(1)` and fills its queue (at most 16 connects, 200 ms each).
    pub fn bind() -> io::Result<UnresponsiveListener> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(1)?;
        let addr = listener.local_addr()?;
        let mut held = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
                Ok(s) => held.push(s),
                Err(_) => return Ok(UnresponsiveListener { listener, _held: held }),
            }
        }
        Err(io::Error::other(
            "the accept queue of a listen(1) socket never filled up",
        ))
    }

    /// Its address.
    pub fn addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
