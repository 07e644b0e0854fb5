//! The layer.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::service::Idempotency;
use super::store::ClaimStore;

/// Gives each logical operation a stable [`IdempotencyKey`](crate::context::IdempotencyKey),
/// sends it as `Idempotency-Key` on unsafe methods and, with a ledger, runs each key at most
/// once. See the [module docs](super).
#[derive(Clone, Debug, Default)]
pub struct IdempotencyLayer {
    gate: Option<Arc<Gate>>,
}

/// The ledger side of the layer, shared by every service it builds.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) store: Arc<dyn ClaimStore>,
    pub(crate) run_id: String,
    pub(crate) worker: Arc<str>,
    pub(crate) lease_ttl: Duration,
    pub(crate) finalize_on_response: bool,
}

impl IdempotencyLayer {
    /// Keys and headers only, no ledger (the idempotency gate off).
    pub fn new() -> Self {
        IdempotencyLayer { gate: None }
    }

    /// Keys, headers and a ledger: each key is claimed in `store` for run `run_id` by
    /// `worker` before the request is sent, and its outcome recorded after. Leases last the
    /// store's [`ClaimStore::lease_ttl`] unless [`lease_ttl`](IdempotencyLayer::lease_ttl)
    /// says otherwise.
    ///
    /// The store is the crate's job ledger (`contentdownload::ledger::Ledger`, feature
    /// `ledger`), or any [`ClaimStore`] of your own (see its example).
    pub fn with_ledger(store: impl ClaimStore, run_id: impl Into<String>, worker: impl Into<Arc<str>>) -> Self {
        let lease_ttl = store.lease_ttl();
        IdempotencyLayer {
            gate: Some(Arc::new(Gate {
                store: Arc::new(store),
                run_id: run_id.into(),
                worker: worker.into(),
                lease_ttl,
                finalize_on_response: true,
            })),
        }
    }

    /// How long the lease taken per operation lasts (no heartbeat is sent while the request
    /// runs, so make it longer than the slowest operation). No effect without a ledger.
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.map_gate(|g| g.lease_ttl = ttl)
    }

    /// Whether a successful (2xx) response finalizes the job at once (the default), or leaves
    /// it LEASED for the caller to finish with [`ClaimStore::complete`] after it has consumed the
    /// body (a download is only done once the file is on disk). Failures are recorded either
    /// way. No effect without a ledger.
    pub fn finalize_on_response(self, yes: bool) -> Self {
        self.map_gate(|g| g.finalize_on_response = yes)
    }

    fn map_gate(mut self, f: impl FnOnce(&mut Gate)) -> Self {
        if let Some(gate) = self.gate.take() {
            let mut g = Arc::try_unwrap(gate).unwrap_or_else(|shared| Gate {
                store: shared.store.clone(),
                run_id: shared.run_id.clone(),
                worker: shared.worker.clone(),
                lease_ttl: shared.lease_ttl,
                finalize_on_response: shared.finalize_on_response,
            });
            f(&mut g);
            self.gate = Some(Arc::new(g));
        }
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::from_parts(inner, self.gate.clone())
    }
}
