//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::LOCATION;
use http::{Response, Uri};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Timeout;

use super::body::ResponseBody;
use super::error::{ReadTimeout, UnsupportedRedirectScheme};
use super::redirect::is_web_scheme;
use crate::error::BoxError;

pub use super::redirect::RedirectFuture;

pin_project! {
    /// Response future of [`HttpClient`](super::HttpClient): waits for the response head
    /// within the read timeout, then hands back the body wrapped in its idle timeout.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Timeout<F>,
        read_timeout: Duration,
    }
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn new(inner: F, read_timeout: Duration) -> Self {
        ResponseFuture {
            inner: tokio::time::timeout(read_timeout, inner),
            read_timeout,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Incoming>, BoxError>>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match ready!(this.inner.poll(cx)) {
            Err(_elapsed) => {
                return Poll::Ready(Err(Box::new(ReadTimeout {
                    after: *this.read_timeout,
                })))
            }
            Ok(result) => result?,
        };
        // tower-http's RequestUri holds the last Location as written, userinfo included
        super::credentials::strip_request_uri(&mut response);
        // FollowRedirect (the client's own, or the stack's above it) hands back a redirect
        // it could not parse (`file:///...` is not a valid http URI): refuse those the same
        // way as the ones the policy saw.
        if response.status().is_redirection() {
            if let Some(location) = response.headers().get(LOCATION) {
                let scheme = location
                    .to_str()
                    .ok()
                    .and_then(|l| l.split_once(':'))
                    .map(|(scheme, _)| scheme)
                    .filter(|s| !s.contains('/') && !s.is_empty());
                if let Some(scheme) = scheme {
                    if !is_web_scheme(Some(scheme)) && scheme.parse::<Uri>().is_ok() {
                        return Poll::Ready(Err(Box::new(UnsupportedRedirectScheme {
                            scheme: scheme.to_ascii_lowercase(),
                        })));
                    }
                }
            }
        }
        let read_timeout = *this.read_timeout;
        Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, read_timeout))))
    }
}
