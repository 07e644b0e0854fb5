//! Idempotency keys: one stable key per logical operation, sent as `Idempotency-Key` on
//! unsafe methods and, with a ledger (a [`ClaimStore`]: the crate's job ledger, or your
//! own), run at most once.
//!
//! For every request with an unsafe method (and, with a ledger, every request) the layer:
//! - takes the request's [`IdempotencyKey`] extension, or derives one with [`derive_key`]
//!   (SHA-256 of the operation type, the work id and the [canonical URL](canonical_url)) and
//!   sets it. The layer sits outside the retry layer, so it runs once per logical operation
//!   and every retry carries the same key (the retry layer clones the extensions);
//! - on unsafe methods (anything but GET, HEAD, OPTIONS, TRACE) sets the `Idempotency-Key`
//!   header to the key as an RFC 8941 sf-string (`"…"`), unless the caller set the header.
//!
//! With a ledger ([`IdempotencyLayer::with_ledger`]), before sending it claims the key
//! ([`ClaimStore::claim`]: plan if new, then lease):
//! - a key already FINALIZED (or SKIPPED) is not sent: the call fails with
//!   [`AlreadyFinalized`], which carries the recorded job and result. It is an error value
//!   only because a layer cannot make up a response body; downcast it from the
//!   [`BoxError`](crate::error::BoxError) and treat it as "done before";
//! - a key leased by another live worker is not sent: [`LeasedElsewhere`];
//! - otherwise the request runs, and its outcome is recorded: 2xx → FINALIZED, 408/429/503
//!   and deferrals → DEFERRED, anything else → FAILED. The response carries a [`LedgerJob`]
//!   extension naming the job and the state it was left in.
//!
//! Without a ledger (the idempotency gate off) it only manages keys and headers, and leaves
//! safe methods alone: they carry no header and nothing would read their key.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use contentdownload::context::{IdempotencyKey, RequestContextExt};
//! use contentdownload::layers::idempotency::IdempotencyLayer;
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! // an inner service that echoes the header it was given
//! let echo = service_fn(|req: http::Request<Full<Bytes>>| async move {
//!     let key = req.headers().get("idempotency-key").cloned();
//!     Ok::<_, std::convert::Infallible>(http::Response::new(key))
//! });
//! let svc = ServiceBuilder::new().layer(IdempotencyLayer::new()).service(echo);
//!
//! let mut req = http::Request::post("https://api.example.org/orders").body(Full::default())?;
//! req.set_idempotency_key(IdempotencyKey::new("order-42"));
//! let res = svc.oneshot(req).await?;
//! assert_eq!(res.body().as_ref().unwrap(), "\"order-42\"");
//! # Ok(()) }
//! ```
//!
//! # Why a ledger and not an in-memory set?
//!
//! The key must survive the process: a run that crashes and restarts, or a second machine
//! on the same PostgreSQL ledger, must see that a download already finished. The ledger's
//! conditional transitions make "run once" hold across processes, not just across tasks.
//!
//! # Why a trait between the layer and the ledger?
//!
//! The ledger needs sqlx and a database; the layer needs three calls of it. Behind
//! [`ClaimStore`] the layer builds without the ledger (`default-features = false`), and a
//! library user can keep claims wherever their system already keeps state. The crate's
//! `Ledger` implements it (feature `ledger`).

mod error;
mod future;
mod key;
mod layer;
mod outcome;
mod service;
mod store;

pub use self::error::{AlreadyFinalized, InvalidIdempotencyKey, LeasedElsewhere};
pub use self::future::ResponseFuture;
pub use self::key::{canonical_url, derive_key, header_value};
pub use self::layer::IdempotencyLayer;
pub use self::outcome::LedgerJob;
pub use self::service::{Idempotency, IDEMPOTENCY_KEY};
#[cfg(feature = "ledger")]
pub(crate) use self::store::hex;
pub use self::store::{ClaimStore, Claimed, JobId, JobResult, JobState, NewJob, StoreFuture};

#[cfg(doc)]
use crate::context::IdempotencyKey;
