//! The rate limiter on a paused clock: achieved rate, burst, run-time rates, the wait
//! bound, fairness, eviction, the global in-flight cap, and a run against the simulator.
#![cfg(feature = "simulator")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use contentdownload::context::{PartitionKey, Provider, RateLimitWait};
use contentdownload::error::{BoxError, RateLimitTimeout};
use contentdownload::layers::rate_limit::{Quota, RateLimit, RateLimitConfig, RateLimitLayer, RateLimiter};
use contentdownload::service::{HttpClient, HttpConfig};
use contentdownload::simulator::{Reply, Simulator};
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

type Svc = BoxCloneService<Request<()>, Response<()>, BoxError>;

/// A stack whose inner service records the (virtual) time of every request it receives.
fn recording_stack(limiter: &RateLimiter) -> (Svc, Arc<Mutex<Vec<Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let inner = service_fn(move |_req: Request<()>| {
        seen.lock().unwrap().push(Instant::now());
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone()))
        .service(inner);
    (BoxCloneService::new(svc), times)
}

fn req(provider: &str) -> Request<()> {
    Request::get("http://example.org/x")
        .extension(Provider::new(provider))
        .body(())
        .unwrap()
}

fn limiter(quota: Quota) -> RateLimiter {
    RateLimiter::new(RateLimitConfig {
        default: quota,
        ..RateLimitConfig::default()
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn achieved_rate_with_32_callers_is_within_2_percent() {
    let rate = 50.0;
    let lim = limiter(Quota::new(rate, 1));
    let (svc, times) = recording_stack(&lim);
    let start = Instant::now();
    let end = start + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            // bounded: the limiter cannot admit more than rate × 10 s + burst in total
            for _ in 0..1000 {
                if Instant::now() >= end {
                    break;
                }
                svc.clone().oneshot(req("p")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let times = times.lock().unwrap();
    let in_window = times.iter().filter(|t| **t < end).count() as f64;
    let expected = rate * 10.0;
    assert!(
        (in_window - expected).abs() <= expected * 0.02,
        "{in_window} requests in 10 virtual seconds, expected {expected} ± 2%"
    );
}

#[tokio::test(start_paused = true)]
async fn burst_goes_at_once_then_the_rate_spaces_requests() {
    let lim = limiter(Quota::new(10.0, 5));
    let (svc, times) = recording_stack(&lim);
    let start = Instant::now();
    let mut waits = Vec::new();
    let calls: Vec<_> = (0..8).map(|_| svc.clone().oneshot(req("p"))).collect();
    for res in futures_util::future::join_all(calls).await {
        waits.push(RateLimitWait::of(&res.unwrap()));
    }
    let offsets: Vec<u128> = times.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
    assert_eq!(offsets, vec![0, 0, 0, 0, 0, 100, 200, 300]);
    let waits: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(waits, vec![0, 0, 0, 0, 0, 100, 200, 300]);
}

#[tokio::test(start_paused = true)]
async fn set_rate_takes_effect_at_once() {
    let lim = limiter(Quota::per_second(1.0));
    let key = PartitionKey::new("p", "example.org");
    let (svc, times) = recording_stack(&lim);
    let start = Instant::now();
    svc.clone().oneshot(req("p")).await.unwrap();
    lim.set_rate(&key, 100.0);
    assert_eq!(lim.rate(&key), 100.0);
    for _ in 0..10 {
        svc.clone().oneshot(req("p")).await.unwrap();
    }
    let elapsed = times.lock().unwrap().last().copied().unwrap() - start;
    // at 1 req/s this would take 10 s; at 100 req/s, 100 ms
    assert_eq!(elapsed, Duration::from_millis(100));
    // and down again
    lim.set_rate(&key, 2.0);
    let before = Instant::now();
    svc.clone().oneshot(req("p")).await.unwrap();
    svc.clone().oneshot(req("p")).await.unwrap();
    assert_eq!(Instant::now() - before, Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_the_bound_fails_at_once_with_a_typed_error() {
    let lim = RateLimiter::new(RateLimitConfig {
        default: Quota::per_second(1.0),
        max_wait: Duration::from_millis(1500),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let (svc, times) = recording_stack(&lim);
    // reserve two slots (0 s and 1 s) without waiting for them: `call` reserves
    let mut s = svc.clone();
    let first = s.ready().await.unwrap().call(req("p"));
    let second = s.ready().await.unwrap().call(req("p"));
    let before = Instant::now();
    let err = svc.clone().oneshot(req("p")).await.unwrap_err();
    assert_eq!(Instant::now(), before, "the error must not wait");
    let timeout = err.downcast_ref::<RateLimitTimeout>().expect("a RateLimitTimeout");
    assert_eq!(timeout.wait, Duration::from_secs(2));
    assert_eq!(timeout.max_wait, Duration::from_millis(1500));
    assert_eq!(timeout.partition, PartitionKey::new("p", "example.org"));
    first.await.unwrap();
    second.await.unwrap();
    // the failed request reserved nothing: the next slot is at 2 s, not 3 s
    svc.clone().oneshot(req("p")).await.unwrap();
    assert_eq!(times.lock().unwrap().len(), 3);
    assert_eq!(Instant::now() - before, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_hot_task_does_not_starve_another() {
    let lim = limiter(Quota::per_second(10.0));
    let (svc, _) = recording_stack(&lim);
    let hot = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let pending: Vec<_> = (0..40).map(|_| svc.clone().oneshot(req("p"))).collect();
            futures_util::future::join_all(pending).await
        })
    };
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // 40 slots are reserved ahead of us (4 s at 10/s): FIFO means we wait behind them, and
    // no longer
    let asked = Instant::now();
    let res = svc.clone().oneshot(req("p")).await.unwrap();
    let waited = RateLimitWait::of(&res);
    assert_eq!(Instant::now() - asked, waited);
    assert!(
        waited <= Duration::from_millis(2950 + 100),
        "waited {waited:?} behind 40 queued requests"
    );
    assert!(hot.await.unwrap().iter().all(Result::is_ok));
}

#[tokio::test(start_paused = true)]
async fn separate_partitions_do_not_share_tokens() {
    let lim = RateLimiter::new(RateLimitConfig::default().provider("slow", Quota::per_second(1.0))).unwrap();
    let (svc, _) = recording_stack(&lim);
    svc.clone().oneshot(req("slow")).await.unwrap();
    let before = Instant::now();
    for _ in 0..5 {
        svc.clone().oneshot(req("fast")).await.unwrap();
    }
    assert_eq!(Instant::now(), before, "the default quota has a burst of 5");
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_so_the_key_count_stays_bounded() {
    let lim = RateLimiter::new(RateLimitConfig {
        idle_timeout: Duration::from_secs(10),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let mut peak = 0;
    // 20 virtual minutes, 100 new hosts a second: 120,000 keys over the run
    for second in 0..1200u32 {
        for i in 0..100u32 {
            let key = PartitionKey::new("p", format!("h{second}-{i}.example.org"));
            lim.reserve(&key).unwrap();
        }
        peak = peak.max(lim.len());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // keys live at most idle_timeout (10 s) after their last use, plus one sweep period
    assert!(peak <= 100 * 21, "peak {peak} keys");
    tokio::time::advance(Duration::from_secs(30)).await;
    lim.evict_idle();
    assert_eq!(lim.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_global_in_flight_cap_is_shared_across_stacks() {
    let lim = RateLimiter::new(RateLimitConfig {
        default: Quota::new(1000.0, 100),
        max_in_flight: Some(3),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let make_stack = || {
        let in_flight = in_flight.clone();
        let peak = peak.clone();
        let inner = service_fn(move |_req: Request<()>| {
            let in_flight = in_flight.clone();
            let peak = peak.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(()))
            }
        });
        ServiceBuilder::new()
            .option_layer(lim.global_concurrency_layer())
            .layer(RateLimitLayer::new(lim.clone()))
            .service(inner)
    };
    let (a, b) = (make_stack(), make_stack());
    let mut calls = Vec::new();
    for i in 0..12 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(svc.oneshot(req("p"))));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn against_the_simulator_the_server_sees_the_configured_rate() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/api/*", [Reply::ok().body("ok")]);
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    let lim = limiter(Quota::new(20.0, 1));
    let svc: RateLimit<HttpClient> = RateLimitLayer::new(lim.clone()).layer(client);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let svc = svc.clone();
        let url = sim.url(&format!("/api/{i}"));
        tasks.push(tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            for _ in 0..10 {
                let req = Request::get(url.as_str()).body(Full::<Bytes>::default()).unwrap();
                let res = svc.clone().oneshot(req).await.unwrap();
                waited += RateLimitWait::of(&res);
            }
            waited
        }));
    }
    let mut total_wait = Duration::ZERO;
    for t in tasks {
        total_wait += t.await.unwrap();
    }
    let seen = sim.requests_to("/api/*");
    assert_eq!(seen.len(), 40);
    let span = seen.last().unwrap().at - seen.first().unwrap().at;
    // 40 requests at 20/s with no burst: 39 intervals of 50 ms (arrival times may lag a send)
    assert!(
        span >= Duration::from_millis(1950),
        "40 requests arrived within {span:?}"
    );
    assert!(total_wait > Duration::ZERO);
    let _ = svc.get_ref();
}

#[tokio::test(start_paused = true)]
async fn lowering_the_rate_respaces_requests_already_waiting() {
    let lim = RateLimiter::new(RateLimitConfig {
        default: Quota::per_second(10.0),
        max_wait: Duration::from_secs(3),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let key = PartitionKey::new("p", "example.org");
    let (svc, times) = recording_stack(&lim);
    let start = Instant::now();
    // five requests reserve slots at 0, 100, 200, 300, 400 ms
    let mut s = svc.clone();
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(s.ready().await.unwrap().call(req("p")));
    }
    // the provider pushes back: 2 req/s from now; the four waiting are re-spaced at 500 ms
    lim.set_rate(&key, 2.0);
    let mut results = Vec::new();
    for p in pending {
        results.push(p.await);
    }
    let offsets: Vec<u128> = times.lock().unwrap().iter().map(|t| (*t - start).as_millis()).collect();
    assert_eq!(offsets, vec![0, 500, 1000, 1500, 2000]);
    let waits: Vec<u128> = results
        .iter()
        .map(|r| RateLimitWait::of(r.as_ref().unwrap()).as_millis())
        .collect();
    assert_eq!(waits, offsets, "the wait reported is the time actually waited");

    // a drop so large that a waiter's slot moves past the maximum wait fails it
    let mut s = svc.clone();
    let mut late = Vec::new();
    for _ in 0..4 {
        late.push(s.ready().await.unwrap().call(req("p")));
    }
    lim.set_rate(&key, 0.5);
    let outcomes = futures_util::future::join_all(late).await;
    let timeouts = outcomes
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.downcast_ref::<RateLimitTimeout>().is_some())
        })
        .count();
    assert!(timeouts >= 1, "{outcomes:?}");
    assert!(Instant::now() - start <= Duration::from_secs(2) + Duration::from_secs(3));
}

/// Waiting holds nothing: with a global cap of one, a request sleeping for a slow
/// partition's token or cool-down does not hold the permit, so a request to a ready
/// partition goes through at once (in one poll, without the clock moving).
#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_partition_holds_no_global_permit() {
    use contentdownload::layers::retry_after::RetryAfterLayer;
    use tokio_test::{assert_pending, assert_ready};

    let lim = RateLimiter::new(RateLimitConfig {
        default: Quota::per_second(1.0),
        max_in_flight: Some(1),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let retry_after = RetryAfterLayer::new().max_wait(Duration::from_secs(5));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let inner = service_fn(move |req: Request<()>| {
        seen.lock()
            .unwrap()
            .push(PartitionKey::compute(&req).provider().as_str().to_owned());
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    // the stack's order: cool-down → rate limit → global cap → client
    let svc = ServiceBuilder::new()
        .layer(retry_after.clone())
        .layer(RateLimitLayer::new(lim.clone()))
        .option_layer(lim.global_concurrency_layer())
        .service(inner);
    let start = Instant::now();

    svc.clone().oneshot(req("slow")).await.unwrap(); // spends slow's token
    let mut waiting = tokio_test::task::spawn(svc.clone().oneshot(req("slow")));
    assert_pending!(waiting.poll(), "slow's next token is 1 s away");

    let mut ready = tokio_test::task::spawn(svc.clone().oneshot(req("ready")));
    assert_ready!(ready.poll()).expect("sent while the other request waits for its token");

    // the same for a cool-down
    let cooled = PartitionKey::new("cooled", "example.org");
    retry_after
        .cooldowns()
        .extend(cooled, Instant::now() + Duration::from_secs(2));
    let mut cooling = tokio_test::task::spawn(svc.clone().oneshot(req("cooled")));
    assert_pending!(cooling.poll(), "cooled waits 2 s");
    let mut other = tokio_test::task::spawn(svc.clone().oneshot(req("other")));
    assert_ready!(other.poll()).expect("sent while the other request waits out a cool-down");
    assert_eq!(Instant::now(), start, "nothing waited for the clock");
    assert_eq!(*sent.lock().unwrap(), ["slow", "ready", "other"]);

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready!(waiting.poll()).expect("slow's token came");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready!(cooling.poll()).expect("the cool-down ended");
    assert_eq!(*sent.lock().unwrap(), ["slow", "ready", "other", "slow", "cooled"]);
}
