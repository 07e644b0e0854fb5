//! Errors of the shared client.

use std::time::Duration;

/// A redirect chain was longer than [`HttpConfig::max_redirects`](super::HttpConfig).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many redirects: gave up after following {max} (a redirect loop, or a chain longer than max_redirects)")]
pub struct TooManyRedirects {
    /// The configured limit.
    pub max: usize,
}

/// A redirect pointed at a scheme other than http or https (`file:`, `ftp:`, ...): refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused a redirect to the {scheme:?} scheme: only http and https are followed")]
pub struct UnsupportedRedirectScheme {
    /// The scheme the server redirected to (the rest of the location is left out: it may
    /// carry credentials).
    pub scheme: String,
}

/// Nothing arrived within the idle read timeout: neither the response head, nor (from the
/// [`ResponseBody`](super::ResponseBody)) the next body frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nothing received within the read timeout of {}ms", .after.as_millis())]
pub struct ReadTimeout {
    /// The timeout that elapsed.
    pub after: Duration,
}

/// A metadata response body was larger than the configured limit; it was not read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("response body larger than the limit of {limit} bytes (max_metadata_body_bytes); not read")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: usize,
}

/// The client could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value that cannot be used.
    #[error("invalid http config field `{field}`: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("could not set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A connection to a server could not be made. Says which server (`host:port`, never the
/// rest of the URL, which may carry credentials) and why ([`ConnectCause`]); the client's
/// own error (`client error (Connect)`) is its source, so anything that looks for
/// `hyper_util`'s error in the source chain still finds it.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {target}: {cause}")]
pub struct ConnectFailed {
    /// `host:port` (the port the scheme implies when the URL has none).
    pub target: String,
    /// Why.
    pub cause: ConnectCause,
    #[source]
    source: hyper_util::client::legacy::Error,
}

/// Why a connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectCause {
    /// The host name did not resolve (the resolver's words).
    Dns(String),
    /// The server refused the connection (nothing listens on the port).
    Refused,
    /// The TLS handshake failed (an unknown issuer, a name mismatch, ...).
    Tls(String),
    /// The connect timeout passed.
    TimedOut,
    /// Something else (the innermost error's words).
    Other(String),
}

impl std::fmt::Display for ConnectCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectCause::Dns(why) => write!(f, "DNS lookup failed ({why})"),
            ConnectCause::Refused => f.write_str("connection refused"),
            ConnectCause::Tls(why) => write!(f, "TLS handshake failed ({why})"),
            ConnectCause::TimedOut => f.write_str("timed out (connect_timeout_ms)"),
            ConnectCause::Other(why) => f.write_str(why),
        }
    }
}

impl ConnectFailed {
    /// Names the failure of a connection to `uri`'s server, if `err` is a connect error
    /// (`is_connect()`); otherwise hands `err` back.
    pub(crate) fn from_client_error(
        err: hyper_util::client::legacy::Error,
        target: Option<&ConnectTarget>,
    ) -> Result<ConnectFailed, hyper_util::client::legacy::Error> {
        match target {
            Some(t) if err.is_connect() => Ok(ConnectFailed {
                target: t.to_string(),
                cause: ConnectCause::of(&err),
                source: err,
            }),
            _ => Err(err),
        }
    }
}

/// The server of a request, kept until its connect error, if any, is named: a clone of
/// the URI's authority (reference-counted bytes; at most one small allocation per request,
/// nothing beside a connection's cost).
#[derive(Debug, Clone)]
pub(crate) struct ConnectTarget {
    authority: http::uri::Authority,
    https: bool,
}

impl ConnectTarget {
    pub(crate) fn of(uri: &http::Uri) -> Option<ConnectTarget> {
        Some(ConnectTarget {
            authority: uri.authority()?.clone(),
            https: uri.scheme() == Some(&http::uri::Scheme::HTTPS),
        })
    }
}

impl std::fmt::Display for ConnectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // host and port only: the authority's userinfo is left out
        let port = self.authority.port_u16().unwrap_or(if self.https { 443 } else { 80 });
        write!(f, "{}:{port}", self.authority.host())
    }
}

/// How deep the source chain is searched for the cause.
const MAX_CHAIN: usize = 16;

impl ConnectCause {
    /// Walks `err`'s source chain (and the errors inside `io::Error`s, where rustls puts
    /// its own) for the cause: hyper-util's connector says `dns error` for a failed lookup,
    /// the operating system's error kinds say refused or timed out, a `rustls::Error` says
    /// the handshake failed.
    fn of(err: &(dyn std::error::Error + 'static)) -> ConnectCause {
        let mut dns = false;
        let mut innermost = err.to_string();
        let mut current = Some(err);
        let mut depth = 0;
        while let Some(e) = current {
            if depth >= MAX_CHAIN {
                break;
            }
            depth += 1;
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return ConnectCause::Tls(tls.to_string());
            }
            // hyper-util's ConnectError is private; its message is `dns error` for a lookup
            if e.to_string() == "dns error" {
                dns = true;
            }
            innermost = e.to_string();
            current = e.source();
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return ConnectCause::Refused,
                    std::io::ErrorKind::TimedOut => return ConnectCause::TimedOut,
                    _ => {}
                }
                // `io::Error::source` skips the error it wraps (hyper-rustls wraps
                // tokio-rustls's io::Error, which wraps the rustls::Error): look inside
                if let Some(inner) = io.get_ref() {
                    current = Some(inner as &(dyn std::error::Error + 'static));
                }
            }
        }
        if dns {
            ConnectCause::Dns(innermost)
        } else {
            ConnectCause::Other(innermost)
        }
    }
}
