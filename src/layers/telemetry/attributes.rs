//! The span and its semantic-convention attributes, and the error classes used for
//! `error.type`.

use std::error::Error as StdError;
use std::fmt;

use http::{Method, Request, Uri};
use tracing::field::Empty;
use tracing::Span;

use super::layer::{Config, Placement};
use crate::context::{OperationType, Provider, WorkId};
use crate::error::BoxError;

pub(crate) fn make_span<B>(placement: Placement, req: &Request<B>, config: &Config) -> Span {
    let uri = req.uri();
    let method = req.method().as_str();
    // Field values are only evaluated when the span is enabled: with no subscriber, nothing
    // here looks up an extension, formats or allocates.
    match placement {
        Placement::Operation => tracing::info_span!(
            "contentdownload.operation",
            otel.name = OperationType::of(req).as_str(),
            otel.status_code = Empty,
            http.request.method = method,
            url.full = %config.redactor.redact(uri),
            server.address = uri.host(),
            server.port = server_port(uri).map(i64::from),
            http.response.status_code = Empty,
            http.response.body.size = Empty,
            error.type = Empty,
            contentdownload.operation = OperationType::of(req).as_str(),
            contentdownload.provider = %ProviderName::of(req),
            contentdownload.work_id = req.extensions().get::<WorkId>().map(WorkId::as_str),
            contentdownload.retry.decision = Empty,
        ),
        Placement::Attempt | Placement::Standalone => tracing::info_span!(
            "contentdownload.attempt",
            otel.name = method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            url.full = %config.redactor.redact(uri),
            server.address = uri.host(),
            server.port = server_port(uri).map(i64::from),
            http.request.resend_count = Empty,
            http.response.status_code = Empty,
            http.response.body.size = Empty,
            error.type = Empty,
            contentdownload.operation = OperationType::of(req).as_str(),
            contentdownload.provider = %ProviderName::of(req),
            contentdownload.work_id = req.extensions().get::<WorkId>().map(WorkId::as_str),
            contentdownload.retry.decision = Empty,
            contentdownload.ratelimit.wait_ms = Empty,
            contentdownload.learning.rate = Empty,
        ),
    }
}

/// The provider as displayed: the extension, or the host (with an explicit port), as
/// [`RequestContextExt::provider`] computes it but without allocating.
struct ProviderName<'a>(Option<&'a Provider>, &'a Uri);

impl<'a> ProviderName<'a> {
    fn of<B>(req: &'a Request<B>) -> Self {
        ProviderName(req.extensions().get::<Provider>(), req.uri())
    }
}

impl fmt::Display for ProviderName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1.host(), self.1.port_u16()) {
            (Some(p), _, _) => f.write_str(p.as_str()),
            (None, Some(host), Some(port)) => write!(f, "{}:{port}", host.to_ascii_lowercase()),
            (None, Some(host), None) => f.write_str(&host.to_ascii_lowercase()),
            (None, None, _) => Ok(()),
        }
    }
}

/// `server.port`: the explicit port, or the scheme's default.
pub(crate) fn server_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// The semantic-convention method name: known methods as they are, others `_OTHER`.
pub(crate) fn method_name(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    const NAMES: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN.iter().position(|m| m == method).map_or("_OTHER", |i| NAMES[i])
}

/// The first error of type `T` in `err`'s source chain (including `err` itself).
pub(crate) fn find<T: StdError + 'static>(err: &BoxError) -> Option<&T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

fn chain(err: &BoxError) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    let first: &(dyn StdError + 'static) = &**err;
    std::iter::successors(Some(first), |&e| e.source())
}

/// A low-cardinality class of an error, for `error.type` and the record's `reason`
/// ([`crate::error::Kind::as_str`]).
pub(crate) fn error_type(err: &BoxError) -> &'static str {
    crate::error::classify(&**err).as_str()
}
