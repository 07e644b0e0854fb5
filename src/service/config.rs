//! [`HttpConfig`]: how the shared client connects, times out, identifies itself and
//! follows redirects.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of the shared [`HttpClient`](super::HttpClient).
///
/// Every field has a default (see [`HttpConfig::default`]); in TOML or JSON a missing field
/// takes it. Durations are whole milliseconds so that files stay unambiguous.
///
/// ```
/// use contentdownload::service::HttpConfig;
///
/// let cfg: HttpConfig = serde_json::from_str(r#"{ "mailto": "me@example.org", "max_redirects": 5 }"#).unwrap();
/// assert_eq!(cfg.connect_timeout_ms, 10_000);
/// assert_eq!(cfg.user_agent(), format!("contentdownload/{} (+mailto:me@example.org)", env!("CARGO_PKG_VERSION")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Time allowed for the TCP (and TLS) connect. Default 10 000 ms.
    pub connect_timeout_ms: u64,
    /// Idle read timeout: the longest wait for the response head, and the longest gap
    /// between two body frames. Default 60 000 ms.
    pub read_timeout_ms: u64,
    /// Idle connections kept per host. Default 32.
    pub pool_max_idle_per_host: usize,
    /// How long an idle pooled connection is kept. Default 90 000 ms.
    pub pool_idle_timeout_ms: u64,
    /// The contact address put in the User-Agent (`+mailto:`), as the polite APIs
    /// (Crossref, Unpaywall, OpenAlex) ask. It is never written to logs by this crate.
    pub mailto: Option<String>,
    /// Replaces the whole User-Agent when set (the mailto is then not added).
    pub user_agent: Option<String>,
    /// Redirect hops followed before the request fails with
    /// [`TooManyRedirects`](super::TooManyRedirects). Default 10.
    pub max_redirects: usize,
    /// Largest metadata (JSON, HTML) response body read into memory by
    /// [`read_metadata`](super::read_metadata). Default 8 MiB. Payloads stream and are not
    /// bound by this.
    pub max_metadata_body_bytes: usize,
    /// Negotiate HTTP/2 by ALPN on TLS connections. Default true.
    pub http2: bool,
    /// **Dangerous.** Accept any TLS certificate, valid or not. Default false. Turning it on
    /// makes every HTTPS connection open to interception; it is logged at WARN level each
    /// time a client is built. Meant only for a test server with a self-signed certificate.
    pub danger_accept_invalid_certs: bool,
    /// PEM files of extra root certificates to trust, on top of the webpki roots: for a
    /// mirror, an institutional proxy or a test server with its own CA. Every
    /// `CERTIFICATE` block of each file is added; a file that cannot be read, is not PEM
    /// or holds no certificate fails the client's construction with a [`ConfigError`]
    /// naming the field and the file. Default: none. Verification stays on: a certificate
    /// must still chain to a trusted root and match the host name.
    ///
    /// [`ConfigError`]: super::ConfigError
    pub extra_root_certificates: Vec<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_ms: 10_000,
            read_timeout_ms: 60_000,
            pool_max_idle_per_host: 32,
            pool_idle_timeout_ms: 90_000,
            mailto: None,
            user_agent: None,
            max_redirects: 10,
            max_metadata_body_bytes: 8 * 1024 * 1024,
            http2: true,
            danger_accept_invalid_certs: false,
            extra_root_certificates: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The User-Agent: `contentdownload/<version> (+mailto:<address>)`, or
    /// `contentdownload/<version>` without an address, or the override.
    pub fn user_agent(&self) -> String {
        if let Some(ua) = &self.user_agent {
            return ua.clone();
        }
        let version = env!("CARGO_PKG_VERSION");
        match self.mailto.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(mailto) => format!("contentdownload/{version} (+mailto:{mailto})"),
            None => format!("contentdownload/{version}"),
        }
    }

    /// The connect timeout as a [`Duration`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The idle read timeout as a [`Duration`].
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// The pool idle timeout as a [`Duration`].
    pub fn pool_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_idle_timeout_ms)
    }
}
