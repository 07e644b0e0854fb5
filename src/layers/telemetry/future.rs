//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::TelemetryBody;
use super::state::{End, Guard, Tracker};
use crate::error::BoxError;

pin_project! {
    /// The response future of [`Telemetry`](super::Telemetry): polls the inner future inside
    /// the request's span, then hands the measurements to the response body.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Guard,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, tracker: Option<Box<Tracker>>) -> Self {
        ResponseFuture {
            inner,
            guard: Guard::new(tracker),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<TelemetryBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.guard.get().map(|t| t.span().enter());
            ready!(this.inner.poll(cx))
        };
        match result {
            Ok(response) => {
                let tracker = this.guard.take().map(|mut t| {
                    t.on_head(&response);
                    t
                });
                let (parts, body) = response.into_parts();
                Poll::Ready(Ok(Response::from_parts(parts, TelemetryBody::new(body, tracker))))
            }
            Err(err) => {
                let err = err.into();
                if let Some(t) = this.guard.take() {
                    t.finish(End::Error(&err));
                }
                Poll::Ready(Err(err))
            }
        }
    }
}
