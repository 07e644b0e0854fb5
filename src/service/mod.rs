//! The shared client [`HttpClient`] and its configuration.
//!
//! One pooled client per process, cloned into every stack; see [`HttpClient`] for what
//! it does and how to wrap it.
//!
//! # Example
//!
//! ```no_run
//! use contentdownload::service::{read_metadata, HttpClient, HttpConfig};
//! use tower::ServiceExt;
//!
//! # async fn demo() -> Result<(), contentdownload::error::BoxError> {
//! let config = HttpConfig { mailto: Some("me@example.org".into()), ..Default::default() };
//! let client = HttpClient::new(&config)?;
//! let req = http::Request::get("https://api.crossref.org/works/10.1000/xyz").body(Default::default())?;
//! let response = client.clone().oneshot(req).await?;
//! let json = read_metadata(response, client.metadata_limit()).await?;
//! # Ok(()) }
//! ```

mod body;
mod client;
mod config;
mod credentials;
mod error;
pub mod future;
mod redirect;
mod stack;
mod tls;

pub use self::body::{read_metadata, ResponseBody};
pub use self::client::HttpClient;
pub use self::config::HttpConfig;
pub use self::error::{
    BodyTooLarge, ConfigError, ConnectCause, ConnectFailed, ReadTimeout, TooManyRedirects, UnsupportedRedirectScheme,
};
pub use self::redirect::{RedirectLayer, RedirectPolicy, Redirects};
pub use self::stack::{HttpService, PipelineBody, Stack, StackConfig};
