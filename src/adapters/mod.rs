//! Adapters that bring the stack's policies to other HTTP clients.
//!
//! - [`reqwest`] (feature `reqwest`): a `reqwest_middleware::Middleware`.
//!
//! # Example
//!
//! ```no_run
//! # fn demo() -> Result<(), contentdownload::error::BoxError> {
//! use contentdownload::adapters::reqwest::ContentDownloadMiddleware;
//! use contentdownload::service::StackConfig;
//!
//! contentdownload::adapters::reqwest::install_crypto_provider();
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(ContentDownloadMiddleware::new(&StackConfig::default())?)
//!     .build();
//! # drop(client); Ok(()) }
//! ```

pub mod reqwest;
