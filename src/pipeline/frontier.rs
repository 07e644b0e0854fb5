//! The crawl frontier: a work whose next request goes to a host that is not ready gives
//! its worker slot to a work whose host is, as polite crawlers keep a queue per host.
//!
//! # How
//!
//! A run keeps up to `workers` works *active* (each holds a worker slot, a semaphore
//! permit) and up to [`lookahead`] more *parked*: in flight, their leases held and renewed,
//! but holding no slot. Each request of a work in the first pass (a resolver's call, a
//! candidate download) goes through [`gated`] services, which first ask the frontier
//! whether the request's partition is ready ([`RateLimiter::ready_in`], a peek that
//! reserves nothing, and the partition's cool-down when the pipeline knows the
//! cool-downs). If it is not within [`READY_WITHIN`], the work gives its slot back and
//! sleeps until its turn, then takes a slot again (first come, first served with the works
//! entering) and sends. A host limited to 1 req/s thus holds its parked works, not the
//! run's workers, while the other hosts' works flow.
//!
//! The frontier keeps a *shadow* of each partition's bucket (a GCRA at the limiter's
//! current rate and burst) of the requests it has let go or promised to parked works: the
//! limiter's own bucket only learns of a request when the stack reserves its token, a
//! moment after the frontier let it go, and parked works must not all wake at the same
//! slot. So the parked works of a host wake one per interval, in the order they came.
//!
//! A turn further away than the limiter's maximum wait is not waited for: the request
//! fails at once with [`RateLimitTimeout`], as the stack's rate limiter would, and the
//! work is deferred to the second pass. (Let go to the stack instead, such works would
//! find the limiter's own queue short, the parked works not being in it yet, and wait
//! there holding their worker slots.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream};
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use super::lock;
use crate::context::{PartitionKey, PartitionMap};
use crate::error::{BoxError, RateLimitTimeout};
use crate::layers::rate_limit::RateLimiter;
use crate::layers::retry_after::Cooldowns;
use crate::service::{HttpService, PipelineBody};
use crate::works::Work;

/// A partition whose next slot is at most this far away counts as ready: the request
/// goes and waits for its token in the stack, holding its worker slot that long.
pub(super) const READY_WITHIN: Duration = Duration::from_millis(25);

/// Above this many hosts, the shadow buckets of hosts idle now are forgotten.
const SWEEP_AT: usize = 1024;

/// How many works may be parked besides the `workers` active ones: four times the
/// workers, at least 64. Bounded, so that the input is not read far ahead.
pub(super) fn lookahead(workers: usize) -> usize {
    workers.saturating_mul(4).max(64)
}

/// What the frontier says to a work about to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Send now.
    Go,
    /// Park until then, holding no worker slot.
    Park(Instant),
    /// Not before this long, past the limiter's maximum wait: put off.
    Defer(Duration),
}

/// The worker slots of a run and the shadow buckets of its hosts.
#[derive(Debug)]
pub(crate) struct Frontier {
    limiter: RateLimiter,
    /// The stack's cool-downs, when the pipeline was given them: a cooling host is not ready.
    cooldowns: Cooldowns,
    slots: Arc<Semaphore>,
    /// Each partition's shadow GCRA: the theoretical arrival time of its next request.
    hosts: Mutex<PartitionMap<Instant>>,
}

impl Frontier {
    /// A frontier over the stack's limiter and cool-downs (the Retry-After layer's), so
    /// that it parks the works of a cooling host as it does those of a host out of tokens.
    pub(super) fn new(limiter: RateLimiter, cooldowns: Cooldowns, workers: usize) -> Frontier {
        Frontier {
            limiter,
            cooldowns,
            slots: Arc::new(Semaphore::new(workers)),
            hosts: Mutex::new(PartitionMap::default()),
        }
    }

    /// How long until `key` is ready: its limiter's next free slot, or the end of its
    /// cool-down, whichever is later.
    fn ready_in(&self, key: &PartitionKey) -> Duration {
        let slot = self.limiter.ready_in(key);
        let cooling = self
            .cooldowns
            .until(key)
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()));
        slot.max(cooling)
    }

    /// Waits for a free worker slot.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        // the semaphore is never closed
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Whether a request to `key` may go now. A work coming for the first time takes the
    /// host's next shadow slot (it parks until then, or until the limiter's next free
    /// slot, whichever is later); a work `woken` from parking already had its slot and
    /// only waits for the limiter.
    pub(super) fn admit(&self, key: &PartitionKey, woken: bool) -> Admission {
        let now = Instant::now();
        let max_wait = self.limiter.config().max_wait;
        let ready = self.ready_in(key);
        if ready > max_wait {
            return Admission::Defer(ready);
        }
        let ready = now + ready;
        if woken {
            return if ready <= now + READY_WITHIN {
                Admission::Go
            } else {
                Admission::Park(ready)
            };
        }
        let rate = self.limiter.rate(key);
        let burst = self.limiter.configured(key).burst.max(1);
        let interval = Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(max_wait)
            .min(max_wait);
        let tolerance = interval.saturating_mul(burst - 1);
        let mut hosts = lock(&self.hosts);
        if hosts.len() >= SWEEP_AT {
            hosts.retain(|_, tat| *tat > now);
        }
        let tat = hosts.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        let slot = tat.checked_sub(tolerance).unwrap_or(now).max(now);
        let at = slot.max(ready);
        if at > now + max_wait {
            // more parked on this host than the limiter would queue
            return Admission::Defer(at - now);
        }
        hosts.insert(key.clone(), tat.max(at) + interval);
        if at <= now + READY_WITHIN {
            Admission::Go
        } else {
            Admission::Park(at)
        }
    }
}

/// A work's worker slot, given back while the work is parked.
#[derive(Debug)]
pub(crate) struct Slot {
    frontier: Arc<Frontier>,
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    permit: Option<OwnedSemaphorePermit>,
    /// The work's requests under way (until their response head): while one is, the work
    /// is active and does not give its slot up for another that parks.
    sending: usize,
}

impl Slot {
    fn new(frontier: Arc<Frontier>, permit: Option<OwnedSemaphorePermit>) -> Slot {
        Slot {
            frontier,
            state: Mutex::new(SlotState { permit, sending: 0 }),
        }
    }

    /// Whether the work holds a worker slot now.
    pub(crate) fn is_active(&self) -> bool {
        lock(&self.state).permit.is_some()
    }

    /// Waits until a request to `key` may go: at once when its host is ready, else
    /// parked (the worker slot given back, unless another request of this work is under
    /// way) until the host's turn, then with a worker slot again. The returned guard marks
    /// the request as under way until dropped. A turn past the limiter's maximum wait is
    /// a [`RateLimitTimeout`] at once.
    pub(crate) async fn pass(self: &Arc<Self>, key: &PartitionKey) -> Result<Sending, RateLimitTimeout> {
        let mut woken = false;
        loop {
            let at = match self.frontier.admit(key, woken) {
                Admission::Go => break,
                Admission::Park(at) => at,
                Admission::Defer(wait) => {
                    return Err(RateLimitTimeout {
                        partition: key.clone(),
                        wait,
                        max_wait: self.frontier.limiter.config().max_wait,
                    })
                }
            };
            {
                let mut state = lock(&self.state);
                if state.sending == 0 {
                    state.permit = None;
                }
            }
            tracing::trace!(partition = %key, wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64, "parked until the host is ready");
            tokio::time::sleep_until(at).await;
            woken = true;
        }
        if !self.is_active() {
            let permit = self.frontier.slot().await;
            let mut state = lock(&self.state);
            if state.permit.is_none() {
                state.permit = permit;
            }
        }
        lock(&self.state).sending += 1;
        Ok(Sending(self.clone()))
    }
}

/// A request under way (see [`Slot::pass`]).
#[derive(Debug)]
pub(crate) struct Sending(Arc<Slot>);

impl Drop for Sending {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.sending = state.sending.saturating_sub(1);
    }
}

/// `inner` with each request waiting for its host's turn in the frontier, on `slot`.
pub(super) fn gated(inner: &HttpService, slot: &Arc<Slot>) -> HttpService {
    HttpService::new(Gated {
        inner: inner.clone(),
        slot: slot.clone(),
    })
}

/// A stack's service whose requests wait for their host's turn first (see [`Slot::pass`]);
/// readiness is asked of the stack after the wait, so a parked request holds nothing of
/// it. A turn past the limiter's maximum wait fails the request with [`RateLimitTimeout`]
/// (a deferral, as the stack's own).
#[derive(Clone)]
struct Gated {
    inner: HttpService,
    slot: Arc<Slot>,
}

impl Service<Request<Full<Bytes>>> for Gated {
    type Response = Response<PipelineBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<PipelineBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let (inner, slot) = (self.inner.clone(), self.slot.clone());
        Box::pin(async move {
            let _sending = slot.pass(&PartitionKey::compute(&request)).await?;
            inner.oneshot(request).await
        })
    }
}

/// The works of a run, each started (by `start`) once a worker slot is free, with up to
/// [`lookahead`] more in flight than there are workers (the parked ones); yields their
/// results as they finish.
///
/// `I` is the intake (the works, each with its slot's permit), left as its own type rather
/// than boxed as a `dyn Stream`: a trait object would have to name `Send` to keep it, and
/// the run is `Send` only if every part of it is (the runner spawns it on the runtime, so
/// that a work's end wakes a worker thread that is already awake rather than the main
/// thread).
pub(super) struct Dispatch<I, F, Fut> {
    intake: Pin<Box<I>>,
    intake_done: bool,
    frontier: Arc<Frontier>,
    start: F,
    running: FuturesUnordered<Fut>,
    cap: usize,
}

/// A [`Dispatch`] of `works`: each work takes a worker slot of `frontier`, then `start`
/// starts it.
pub(super) fn dispatch<S, F, Fut>(
    works: S,
    frontier: Arc<Frontier>,
    workers: usize,
    start: F,
) -> Dispatch<impl Stream<Item = (Work, Option<OwnedSemaphorePermit>)>, F, Fut>
where
    S: Stream<Item = Work>,
    F: FnMut(Work, Arc<Slot>) -> Fut,
    Fut: Future,
{
    use futures_util::StreamExt;
    let slots = frontier.clone();
    let intake = works.then(move |work| {
        let slots = slots.clone();
        async move { (work, slots.slot().await) }
    });
    Dispatch {
        intake: Box::pin(intake),
        intake_done: false,
        frontier,
        start,
        running: FuturesUnordered::new(),
        cap: workers.saturating_add(lookahead(workers)),
    }
}

impl<I, F, Fut> Stream for Dispatch<I, F, Fut>
where
    I: Stream<Item = (Work, Option<OwnedSemaphorePermit>)>,
    F: FnMut(Work, Arc<Slot>) -> Fut + Unpin,
    Fut: Future,
{
    type Item = Fut::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.intake_done && this.running.len() < this.cap {
            match this.intake.as_mut().poll_next(cx) {
                Poll::Ready(Some((work, permit))) => {
                    let slot = Arc::new(Slot::new(this.frontier.clone(), permit));
                    this.running.push((this.start)(work, slot));
                }
                Poll::Ready(None) => this.intake_done = true,
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.running).poll_next(cx) {
            Poll::Ready(None) if this.intake_done => Poll::Ready(None),
            Poll::Ready(None) => Poll::Pending,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rate_limit::{Quota, RateLimitConfig};

    fn frontier(rate: f64, burst: u32) -> Frontier {
        frontier_cooling(rate, burst, Cooldowns::new())
    }

    fn frontier_cooling(rate: f64, burst: u32, cooldowns: Cooldowns) -> Frontier {
        let limiter = RateLimiter::new(RateLimitConfig {
            default: Quota::new(rate, burst),
            ..RateLimitConfig::default()
        })
        .unwrap();
        Frontier::new(limiter, cooldowns, 4)
    }

    #[tokio::test(start_paused = true)]
    async fn parked_works_of_a_slow_host_wake_one_per_interval() {
        let f = frontier(1.0, 1);
        let a = PartitionKey::new("a", "a");
        let t0 = Instant::now();
        assert_eq!(f.admit(&a, false), Admission::Go);
        // the limiter has not seen the first request yet: the shadow spaces the next ones
        let parked: Vec<_> = (0..3).map(|_| f.admit(&a, false)).collect();
        let secs = |n| Admission::Park(t0 + Duration::from_secs(n));
        assert_eq!(parked, [secs(1), secs(2), secs(3)]);
        // the first one reached the limiter; a woken work waits for the limiter only
        f.limiter.reserve(&a).unwrap();
        assert_eq!(f.admit(&a, true), secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(f.admit(&a, true), Admission::Go);
        // another host is not held up by this one
        assert_eq!(f.admit(&PartitionKey::new("b", "b"), false), Admission::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_a_turn_past_the_maximum_wait_is_put_off() {
        let f = frontier(1.0, 3);
        let a = PartitionKey::new("a", "a");
        let t0 = Instant::now();
        let first: Vec<_> = (0..4).map(|_| f.admit(&a, false)).collect();
        assert_eq!(
            first,
            [
                Admission::Go,
                Admission::Go,
                Admission::Go,
                Admission::Park(t0 + Duration::from_secs(1))
            ]
        );
        // 30 s of maximum wait at 1 req/s: the shadow does not promise slots past it
        let later: Vec<_> = (0..40).map(|_| f.admit(&a, false)).collect();
        assert!(later[..27].iter().all(|a| matches!(a, Admission::Park(_))), "{later:?}");
        assert!(
            later[30..]
                .iter()
                .all(|a| matches!(a, Admission::Defer(w) if *w > Duration::from_secs(30))),
            "{later:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooling_host_is_not_ready() {
        let cooldowns = Cooldowns::new();
        let f = frontier_cooling(100.0, 1, cooldowns.clone());
        let a = PartitionKey::new("a", "a");
        let until = Instant::now() + Duration::from_secs(3);
        cooldowns.extend(a.clone(), until);
        assert_eq!(f.admit(&a, false), Admission::Park(until));
        assert_eq!(f.admit(&a, true), Admission::Park(until));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(f.admit(&a, true), Admission::Go);
        // works that came during the cool-down are spaced from its end, not all woken at it
        let b = PartitionKey::new("b", "b");
        let until = Instant::now() + Duration::from_secs(2);
        cooldowns.extend(b.clone(), until);
        let turns: Vec<_> = (0..3).map(|_| f.admit(&b, false)).collect();
        let ms = |n| Admission::Park(until + Duration::from_millis(n));
        assert_eq!(turns, [ms(0), ms(10), ms(20)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_work_gives_its_slot_back_until_its_turn() {
        let f = Arc::new(frontier(1.0, 1));
        let a = PartitionKey::new("a", "a");
        let first = Arc::new(Slot::new(f.clone(), f.slot().await));
        let second = Arc::new(Slot::new(f.clone(), f.slot().await));
        let sending = first.pass(&a).await.unwrap();
        assert_eq!(f.slots.available_permits(), 2);
        let mut parked = tokio_test::task::spawn(second.pass(&a));
        tokio_test::assert_pending!(parked.poll());
        assert_eq!(f.slots.available_permits(), 3, "the parked work gave its slot back");
        drop(sending);
        // a second download of an active work that parks keeps the work's slot
        {
            let _one = first.pass(&PartitionKey::new("b", "b")).await.unwrap();
            let mut two = tokio_test::task::spawn(first.pass(&a));
            tokio_test::assert_pending!(two.poll());
            assert!(first.is_active());
        }
        f.limiter.reserve(&a).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let _going = parked.await.unwrap();
        assert!(second.is_active());
    }
}
