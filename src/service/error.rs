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
