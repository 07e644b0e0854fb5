//! [`Telemetry`]: the service built by [`TelemetryLayer`](super::TelemetryLayer).

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::TelemetryBody;
use super::future::ResponseFuture;
use super::layer::{Config, TelemetryLayer};
use super::state::Tracker;
use crate::error::BoxError;

/// Wraps a service so that every request gets a span, metrics and an attempt record; the
/// response body is wrapped in a [`TelemetryBody`] that measures it as it streams.
///
/// Clones share the configuration (behind an `Arc`); there is no other shared state.
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Telemetry<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &TelemetryLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        Telemetry { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Telemetry<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<TelemetryBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let tracker = Tracker::start(&req, &self.config);
        let future = match &tracker {
            // The span is current while the layers below build their futures, so they can
            // record on it (the learning layer's `contentdownload.learning.rate`).
            Some(t) => t.span().in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ResponseFuture::new(future, tracker)
    }
}
