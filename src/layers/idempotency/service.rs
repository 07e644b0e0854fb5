//! The service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::key::{canonical_url, derive_key, header_value};
use super::layer::Gate;
use super::store::NewJob;
use crate::context::{IdempotencyKey, RequestContextExt, WorkId};
use crate::error::BoxError;

/// The `Idempotency-Key` header (IETF httpapi draft).
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Keys each request, sets the header on unsafe methods and, with a ledger, claims the key
/// before sending and records the outcome after. Built by
/// [`IdempotencyLayer`](super::IdempotencyLayer).
///
/// Clones share the ledger handle and configuration (behind an `Arc`).
#[derive(Clone, Debug)]
pub struct Idempotency<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S> Idempotency<S> {
    /// Keys and headers only, around `inner`.
    pub fn new(inner: S) -> Self {
        Idempotency { inner, gate: None }
    }

    pub(crate) fn from_parts(inner: S, gate: Option<Arc<Gate>>) -> Self {
        Idempotency { inner, gate }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Sets the request's key (keeping one the caller set) and, on unsafe methods, its header
/// (keeping one the caller set). Returns the key and, when it was computed (a derived key, or
/// `with_ledger`), the canonical URL; `None` for a safe method without a ledger, which needs
/// no key: no header is sent for it and nothing claims it (deriving one would hash the URL on
/// every GET for nothing).
fn prepare<B>(req: &mut Request<B>, with_ledger: bool) -> Result<Option<(IdempotencyKey, Option<String>)>, BoxError> {
    let safe = req.method().is_safe();
    if safe && !with_ledger {
        return Ok(None);
    }
    let want_url = with_ledger;
    let (key, url) = match req.idempotency_key() {
        Some(k) => (k.clone(), want_url.then(|| canonical_url(req.uri()))),
        None => {
            let url = canonical_url(req.uri());
            let k = derive_key(req.operation(), req.work_id(), &url);
            req.set_idempotency_key(k.clone());
            (k, Some(url))
        }
    };
    if !safe && !req.headers().contains_key(&IDEMPOTENCY_KEY) {
        let value = header_value(&key)?;
        req.headers_mut().insert(IDEMPOTENCY_KEY.clone(), value);
    }
    Ok(Some((key, url)))
}

impl<S, B, ResBody> Service<Request<B>> for Idempotency<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (key, url) = match prepare(&mut req, self.gate.is_some()) {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return ResponseFuture::direct(self.inner.call(req)),
            Err(e) => return ResponseFuture::failed(e),
        };
        let Some(gate) = &self.gate else {
            return ResponseFuture::direct(self.inner.call(req));
        };
        let url = url.unwrap_or_else(|| canonical_url(req.uri()));
        // The key (derived above) saw the whole URL; the ledger keeps text on disk, redacted.
        let url = crate::layers::telemetry::redacted(&url).to_string();
        let job = NewJob {
            run_id: gate.run_id.clone(),
            work_id: req.work_id().cloned().unwrap_or_else(|| WorkId::new(url.as_str())),
            key: key.clone(),
            canonical_url: url,
        };
        let fut = gate.store.claim(job, gate.worker.clone(), gate.lease_ttl);
        // the ready service goes into the future; this one keeps a fresh clone
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::claiming(fut, ready, req, key, gate.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::OperationType;
    use crate::layers::idempotency::{IdempotencyLayer, InvalidIdempotencyKey};
    use tower_test::mock;

    type Mock = mock::Mock<Request<&'static str>, Response<()>>;

    type Handle = mock::Handle<Request<&'static str>, Response<()>>;

    fn spawn() -> (tower_test::mock::Spawn<Idempotency<Mock>>, Handle) {
        mock::spawn_layer(IdempotencyLayer::new())
    }

    #[tokio::test]
    async fn post_gets_a_derived_key_and_header_get_nothing_without_a_ledger() {
        let (mut svc, mut handle) = spawn();
        handle.allow(2);
        assert!(svc.poll_ready().is_ready());
        let mut req = Request::post("https://API.example.org:443/orders").body("x").unwrap();
        req.set_work_id(WorkId::new("W1"));
        req.set_operation(OperationType::Resolve);
        let fut = svc.call(req);
        let (got, send) = handle.next_request().await.unwrap();
        let want = derive_key(
            OperationType::Resolve,
            Some(&WorkId::new("W1")),
            "https://api.example.org/orders",
        );
        assert_eq!(got.idempotency_key(), Some(&want));
        assert_eq!(got.headers()[&IDEMPOTENCY_KEY], format!("\"{}\"", want.as_str()));
        send.send_response(Response::new(()));
        fut.await.unwrap();

        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(Request::get("https://example.org/a.pdf").body("").unwrap());
        let (got, send) = handle.next_request().await.unwrap();
        assert!(got.idempotency_key().is_none(), "without a ledger a GET needs no key");
        assert!(
            !got.headers().contains_key(&IDEMPOTENCY_KEY),
            "safe methods carry no header"
        );
        send.send_response(Response::new(()));
        fut.await.unwrap();
    }

    #[tokio::test]
    async fn the_callers_key_and_header_are_kept() {
        let (mut svc, mut handle) = spawn();
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let mut req = Request::patch("https://example.org/x")
            .header("idempotency-key", "\"mine\"")
            .body("b")
            .unwrap();
        req.set_idempotency_key(IdempotencyKey::new("other"));
        let fut = svc.call(req);
        let (got, send) = handle.next_request().await.unwrap();
        assert_eq!(got.idempotency_key(), Some(&IdempotencyKey::new("other")));
        assert_eq!(got.headers()[&IDEMPOTENCY_KEY], "\"mine\"");
        assert_eq!(*got.body(), "b");
        send.send_response(Response::new(()));
        fut.await.unwrap();
    }

    #[tokio::test]
    async fn an_unsendable_key_fails_without_a_request() {
        let (mut svc, mut handle) = spawn();
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let mut req = Request::post("https://example.org/x").body("b").unwrap();
        req.set_idempotency_key(IdempotencyKey::new("line\nbreak"));
        let err = svc.call(req).await.unwrap_err();
        assert!(err.is::<InvalidIdempotencyKey>(), "{err}");
        assert!(err.to_string().contains("printable ASCII"));
    }

    #[test]
    fn futures_are_send_for_the_shared_client() {
        fn assert_send<T: Send>() {}
        assert_send::<ResponseFuture<crate::service::HttpClient, http_body_util::Full<bytes::Bytes>>>();
    }
}
