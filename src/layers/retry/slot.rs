//! [`ResendSlot`]: how a [`ContextualRetry`](super::ContextualRetry) directly above the
//! stack's [`RedirectLayer`](crate::service::RedirectLayer) resends from the copy of the
//! request that the redirect layer keeps anyway, instead of keeping one of its own.
//!
//! Both layers need a copy of every request (the retry layer to resend it, the redirect
//! layer to follow a hop), and each copy costs its clone of the URI, the headers and the
//! extensions map, its allocations, and its drop: together ~1,200 instructions per request
//! (`layer_cost stack` under callgrind), for a resend or a hop that nearly never happens.
//! Paired (only the [`Stack`](crate::service::Stack) pairs them, and only where the redirect
//! layer is directly below), the retry layer puts a slot in the request's extensions, and
//! the redirect layer hands its copy over into it when its attempt ends (a request that
//! was redirected: a copy of the first request, as before). A retry layer whose slot stays
//! empty (no redirect layer below) has no copy, so it does not resend: a misuse shows as
//! fewer retries, never as a wrong request.

use std::sync::{Arc, Mutex, MutexGuard};

use http::Request;

/// Request extension: where the layer below leaves the copy of the request it kept.
pub(crate) struct ResendSlot<B>(Arc<Mutex<Option<Request<B>>>>);

impl<B> Clone for ResendSlot<B> {
    fn clone(&self) -> Self {
        ResendSlot(Arc::clone(&self.0))
    }
}

impl<B> ResendSlot<B> {
    pub(crate) fn new() -> Self {
        ResendSlot(Arc::new(Mutex::new(None)))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Request<B>>> {
        // (a panic elsewhere while holding the lock leaves a whole request or none)
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves the copy (replacing one left before).
    pub(crate) fn put(&self, copy: Request<B>) {
        *self.lock() = Some(copy);
    }

    /// Takes the copy, if one was left.
    pub(crate) fn take(&self) -> Option<Request<B>> {
        self.lock().take()
    }

    /// Whether a copy is in the slot.
    pub(crate) fn is_filled(&self) -> bool {
        self.lock().is_some()
    }
}

impl<B> std::fmt::Debug for ResendSlot<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResendSlot").field("filled", &self.is_filled()).finish()
    }
}
