//! The hand-off by which a [`ContextualRetry`](super::ContextualRetry) directly above the
//! stack's [`RedirectLayer`](crate::service::RedirectLayer) resends from the copy of the
//! request that the redirect layer keeps anyway, instead of keeping one of its own.
//!
//! Both layers need a copy of every request (the retry layer to resend it, the redirect
//! layer to follow a hop), and each copy costs its clone of the URI, the headers and the
//! extensions map, its allocations, and its drop (~1,200 instructions per request in
//! `layer_cost stack` under callgrind), for a resend or a hop that nearly never happens.
//!
//! Paired (only the [`Stack`](crate::service::Stack) pairs them, where the redirect layer
//! is *directly* below the retry layer), the redirect layer's future, as it returns
//! `Ready`, leaves its copy (of the first request, when it followed redirects: a resend
//! follows them anew) in a thread-local slot, and the retry layer's future takes it out
//! right after that poll returns (always, whether it resends or not). Nothing runs between
//! the two: the redirect layer's future is the retry layer's inner future, polled by it on
//! the same thread. A thread-local rather than a slot in the request's extensions: the
//! slot, its `Arc` and its extension entry cost more than half of what the shared copy saves.
//!
//! Only the stack's request body (`Full<Bytes>`) is handed off; with another body the
//! retry layer keeps its own copy, as unpaired.

use std::any::{Any, TypeId};
use std::cell::Cell;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

type Handed = Request<Full<Bytes>>;

thread_local! {
    static HANDED_UP: Cell<Option<Box<Handed>>> = const { Cell::new(None) };
}

/// Whether a request with a body of type `B` can be handed up.
pub(crate) fn can_hand_up<B: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Full<Bytes>>()
}

/// Leaves `copy` for the retry layer above (replacing, and dropping, one left before).
pub(crate) fn hand_up<B: 'static>(copy: Box<Request<B>>) {
    let mut copy = Some(copy);
    if let Some(copy) = (&mut copy as &mut dyn Any).downcast_mut::<Option<Box<Handed>>>() {
        HANDED_UP.with(|slot| slot.set(copy.take()));
    }
}

/// Takes the copy the layer below left, if any.
pub(crate) fn take_handed_up<B: 'static>() -> Option<Box<Request<B>>> {
    let mut taken = HANDED_UP.with(Cell::take);
    (&mut taken as &mut dyn Any)
        .downcast_mut::<Option<Box<Request<B>>>>()
        .and_then(Option::take)
}

/// Whether a copy is waiting (for tests: none may be left behind).
#[cfg(test)]
pub(crate) fn nothing_handed_up() -> bool {
    HANDED_UP.with(|slot| {
        let taken = slot.take();
        let empty = taken.is_none();
        slot.set(taken);
        empty
    })
}
