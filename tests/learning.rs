//! Provider learning: the Progressive table, Adaptive decrease and recovery, advertised
//! limits, a hidden-rate throttle in the simulator, and JSON persistence.
#![cfg(feature = "simulator")]

use std::time::Duration;

use bytes::Bytes;
use contentdownload::context::{PartitionKey, Provider, RateLimitWait};
use contentdownload::error::BoxError;
use contentdownload::layers::learning::{AdaptiveConfig, Learner, LearningPolicy, Phase, ProviderLearningLayer};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator, Throttle};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

type Stack = BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody>, BoxError>;

fn limiter(rate: f64, burst: u32) -> RateLimiter {
    RateLimiter::new(RateLimitConfig {
        default: Quota::new(rate, burst),
        ..RateLimitConfig::default()
    })
    .unwrap()
}

fn stack(learner: &Learner) -> Stack {
    let client = HttpClient::new(&HttpConfig::default()).unwrap();
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(ProviderLearningLayer::new(learner.clone()))
            .layer(RateLimitLayer::new(learner.limiter().clone()))
            .service(client),
    )
}

async fn get(stack: &Stack, url: &str) -> Response<()> {
    let req = Request::get(url)
        .extension(Provider::new("sim"))
        .body(Full::default())
        .unwrap();
    let res = stack.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    body.collect().await.unwrap();
    Response::from_parts(parts, ())
}

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

fn key() -> PartitionKey {
    PartitionKey::new("p", "example.org")
}

#[tokio::test(start_paused = true)]
async fn progressive_table_step_by_step() {
    let learner = Learner::new(limiter(100.0, 1), LearningPolicy::Progressive).unwrap();
    let k = key();
    // the nth consecutive 429 → the rate after it (100 req/s configured)
    let expected = [
        (1, 100.0),
        (2, 100.0),
        (3, 90.0),   // −10%
        (4, 81.0),   // −10%
        (5, 64.8),   // −20%
        (6, 51.84),  // −20%
        (7, 41.472), // −20%
        (8, 33.1776),
        (9, 26.54208),
        (10, 20.0), // −30% would be 18.58: the total reduction is capped at 80%
        (11, 20.0),
    ];
    for (n, rate) in expected {
        learner.observe(&k, Instant::now(), &status(429));
        let st = learner.status("p", "example.org").unwrap();
        assert_eq!(st.consecutive_429, n);
        assert!((st.rate - rate).abs() < 1e-9, "after 429 #{n}: {} != {rate}", st.rate);
        assert!((st.applied_reduction - (1.0 - rate / 100.0)).abs() < 1e-9);
        assert!((learner.limiter().rate(&k) - rate).abs() < 1e-9, "the limiter follows");
        assert_eq!(st.phase, Phase::Reducing);
    }
    assert!((learner.status("p", "example.org").unwrap().applied_reduction - 0.8).abs() < 1e-9);

    // a success resets the counter, not the rate
    learner.observe(&k, Instant::now(), &status(200));
    let st = learner.status("p", "example.org").unwrap();
    assert_eq!((st.consecutive_429, st.phase), (0, Phase::Recovering));
    assert!((st.rate - 20.0).abs() < 1e-9);

    // a fresh partition: two 429s, a success, two more: still no change
    let k2 = PartitionKey::new("q", "example.org");
    for code in [429, 429, 200, 429, 429] {
        learner.observe(&k2, Instant::now(), &status(code));
    }
    assert_eq!(learner.rate(&k2), 100.0);
    learner.observe(&k2, Instant::now(), &status(429));
    assert!((learner.rate(&k2) - 90.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn a_bucket_evicted_while_idle_comes_back_at_the_learned_rate() {
    let lim = RateLimiter::new(RateLimitConfig {
        default: Quota::new(100.0, 1),
        idle_timeout: Duration::from_secs(10),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let learner = Learner::new(lim.clone(), LearningPolicy::Progressive).unwrap();
    let k = key();
    for _ in 0..3 {
        learner.observe(&k, Instant::now(), &status(429));
    }
    assert!((lim.rate(&k) - 90.0).abs() < 1e-9);
    // a success leaves the learned rate as it is: the limiter is not set again
    learner.observe(&k, Instant::now(), &status(200));
    assert!((lim.rate(&k) - 90.0).abs() < 1e-9);
    tokio::time::advance(Duration::from_secs(30)).await;
    lim.evict_idle();
    assert_eq!(lim.len(), 0, "the idle bucket is gone");
    // the bucket made again, before any response, takes the learned rate, not the 100/s
    // configured; and stays there through responses that do not change it
    lim.reserve(&k).unwrap();
    assert!((lim.rate(&k) - 90.0).abs() < 1e-9, "{}", lim.rate(&k));
    learner.observe(&k, Instant::now(), &status(200));
    assert!((lim.rate(&k) - 90.0).abs() < 1e-9);

    // a second learner of the same limiter is not its source: it sets the rate each time
    let other = Learner::new(lim.clone(), LearningPolicy::Progressive).unwrap();
    let k2 = PartitionKey::new("q", "example.org");
    for _ in 0..3 {
        other.observe(&k2, Instant::now(), &status(429));
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    lim.evict_idle();
    other.observe(&k2, Instant::now(), &status(200));
    assert!((lim.rate(&k2) - 90.0).abs() < 1e-9, "{}", lim.rate(&k2));
}

#[tokio::test(start_paused = true)]
async fn progressive_never_goes_below_one_request_per_second() {
    let learner = Learner::new(limiter(3.0, 1), LearningPolicy::Progressive).unwrap();
    for _ in 0..30 {
        learner.observe(&key(), Instant::now(), &status(429));
    }
    assert_eq!(learner.rate(&key()), 1.0, "80% off 3/s is 0.6/s; the floor is 1/s");
}

#[tokio::test(start_paused = true)]
async fn adaptive_decreases_once_per_round_trip_then_recovers_to_the_ceiling() {
    let learner = Learner::new(limiter(20.0, 1), LearningPolicy::default()).unwrap();
    let k = key();
    let sent = Instant::now();
    tokio::time::advance(Duration::from_millis(10)).await;
    // three requests in flight together all come back 429: one decrease
    for _ in 0..3 {
        learner.observe(&k, sent, &status(429));
    }
    assert!((learner.rate(&k) - 14.0).abs() < 1e-9);
    let st = learner.status("p", "example.org").unwrap();
    assert_eq!((st.phase, st.consecutive_429, st.throttles), (Phase::Reducing, 3, 3));
    // a request sent after the decrease that is throttled again: a second decrease
    learner.observe(&k, Instant::now(), &status(429));
    assert!((learner.rate(&k) - 9.8).abs() < 1e-9);

    // recovery: concave up to just under the remembered ceiling, a hold, then a probe
    let mut last = learner.rate(&k);
    let mut seconds = 0;
    while learner.rate(&k) < 20.0 && seconds < 60 {
        tokio::time::advance(Duration::from_secs(1)).await;
        learner.observe(&k, Instant::now(), &status(200));
        assert!(learner.rate(&k) >= last, "recovery only goes up");
        last = learner.rate(&k);
        seconds += 1;
        if seconds == 1 {
            assert_eq!(learner.status("p", "example.org").unwrap().phase, Phase::Recovering);
        }
    }
    // it holds under the remembered ceiling (0.97 × 14) for the probe hold (8 s), then
    // probes above it and, with no 429, climbs on to the configured ceiling
    assert!((12..=24).contains(&seconds), "back at the ceiling after {seconds}s");
    let st = learner.status("p", "example.org").unwrap();
    assert_eq!((st.phase, st.rate), (Phase::Normal, 20.0));
    assert_eq!(st.recovery_times.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn adaptive_respects_the_floor_and_bounds_recovery_times() {
    let policy = LearningPolicy::Adaptive(AdaptiveConfig {
        min_rate: 2.0,
        ..AdaptiveConfig::default()
    });
    let learner = Learner::new(limiter(10.0, 1), policy).unwrap();
    let k = key();
    for _ in 0..60 {
        learner.observe(&k, Instant::now(), &status(429));
        tokio::time::advance(Duration::from_millis(5)).await;
        learner.observe(&k, Instant::now(), &status(200));
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    assert!(learner.rate(&k) >= 2.0);
    for _ in 0..20 {
        learner.observe(&k, Instant::now(), &status(429));
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(learner.rate(&k), 2.0);
    assert_eq!(learner.status("p", "example.org").unwrap().recovery_times.len(), 50);
    assert!(Learner::new(
        limiter(1.0, 1),
        LearningPolicy::Adaptive(AdaptiveConfig {
            beta: 1.5,
            ..AdaptiveConfig::default()
        })
    )
    .is_err());
}

#[tokio::test(start_paused = true)]
async fn throttling_signals_from_the_simulator() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/busy", [Reply::status(503).retry_after_secs(1)]);
    sim.on("/down", [Reply::status(503)]);
    sim.on("/missing", [Reply::status(404)]);
    let learner = Learner::new(limiter(10.0, 10), LearningPolicy::default()).unwrap();
    let stack = stack(&learner);
    let host = sim.addr().to_string();
    get(&stack, &sim.url("/down")).await;
    get(&stack, &sim.url("/missing")).await;
    assert_eq!(
        learner.status("sim", &host).unwrap().phase,
        Phase::Normal,
        "a bare 503 teaches nothing"
    );
    get(&stack, &sim.url("/busy")).await;
    let st = learner.status("sim", &host).unwrap();
    // the first throttle, with a Retry-After, before the rate ran for a second: β² (0.49)
    assert_eq!(st.phase, Phase::Reducing, "503 + Retry-After is throttling");
    assert!((st.rate - 4.9).abs() < 1e-9, "{}", st.rate);
}

#[tokio::test(start_paused = true)]
async fn advertised_limits_set_the_ceiling_and_a_spent_quota_holds() {
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/crossref",
        [Reply::ok()
            .header("x-rate-limit-limit", "5")
            .header("x-rate-limit-interval", "1s")],
    );
    sim.on(
        "/spent",
        [
            Reply::ok()
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", "3"),
            Reply::ok(),
        ],
    );
    let learner = Learner::new(limiter(50.0, 1), LearningPolicy::default()).unwrap();
    let stack = stack(&learner);
    let host = sim.addr().to_string();
    get(&stack, &sim.url("/crossref")).await;
    let st = learner.status("sim", &host).unwrap();
    assert_eq!((st.rate, st.ceiling, st.advertised), (5.0, 5.0, true));

    // spent quota: the next request waits for the reset (3 s), not the 200 ms interval
    tokio::time::advance(Duration::from_secs(1)).await;
    get(&stack, &sim.url("/spent")).await;
    let res = get(&stack, &sim.url("/spent")).await;
    let waited = RateLimitWait::of(&res);
    assert!(
        waited >= Duration::from_millis(2900) && waited <= Duration::from_secs(3),
        "waited {waited:?}"
    );
}

/// Hidden-rate throttle: the server allows 20/s (burst 5), the client is configured for
/// 100/s; 16 workers ask as fast as the limiter lets them.
#[tokio::test(start_paused = true)]
async fn adaptive_finds_a_hidden_rate_and_rises_when_it_loosens() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/api/*", [Reply::ok().body("ok")]);
    sim.throttle("/api/*", Throttle::new(20.0, 5));
    let learner = Learner::new(limiter(100.0, 1), LearningPolicy::default()).unwrap();
    let stack = stack(&learner);
    let key = PartitionKey::new("sim", sim.addr().to_string());

    let run = |until: Instant| {
        let mut workers = Vec::new();
        for w in 0..16 {
            let stack = stack.clone();
            let url = sim.url(&format!("/api/{w}"));
            workers.push(tokio::spawn(async move {
                // bounded: at most 100/s × 40 s in total
                for _ in 0..4000 {
                    if Instant::now() >= until {
                        break;
                    }
                    get(&stack, &url).await;
                }
            }));
        }
        async move {
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    let start = Instant::now();
    let converged = start + Duration::from_secs(10);
    let phase1_end = start + Duration::from_secs(40);
    run(phase1_end).await;

    let window = |from: Instant, to: Instant| {
        let seen: Vec<_> = sim
            .requests_to("/api/*")
            .into_iter()
            .filter(|r| r.at >= from && r.at < to)
            .collect();
        let ok = seen.iter().filter(|r| r.status == StatusCode::OK).count();
        (seen.len(), ok)
    };
    if std::env::var_os("LEARNING_TRACE").is_some() {
        let reqs = sim.requests_to("/api/*");
        for (i, r) in reqs.iter().enumerate() {
            if r.status != StatusCode::OK {
                let from = i.saturating_sub(3);
                let ctx: Vec<String> = reqs[from..(i + 2).min(reqs.len())]
                    .iter()
                    .map(|r| format!("{:.3}:{}", (r.at - start).as_secs_f64(), r.status.as_u16()))
                    .collect();
                println!("{}", ctx.join(" "));
            }
        }
    }
    let (total, ok) = window(converged, phase1_end);
    let secs = (phase1_end - converged).as_secs_f64();
    let goodput = ok as f64 / secs;
    let throttled = (total - ok) as f64 / total as f64;
    println!(
        "phase 1: {total} requests, goodput {goodput:.2}/s, {:.1}% 429",
        throttled * 100.0
    );
    assert!(
        goodput >= 18.0,
        "goodput {goodput:.2}/s is under 90% of the hidden 20/s"
    );
    assert!(
        throttled <= 0.05,
        "{:.1}% of requests were answered 429",
        throttled * 100.0
    );
    let rate1 = learner.rate(&key);
    assert!(
        rate1 < 30.0,
        "learned rate {rate1:.1} should be near 20, not the configured 100"
    );

    // the server loosens: the client's rate rises again
    sim.set_throttle_rate("/api/*", 50.0);
    let phase2_end = phase1_end + Duration::from_secs(30);
    run(phase2_end).await;
    let (_, ok2) = window(phase2_end - Duration::from_secs(10), phase2_end);
    let goodput2 = ok2 as f64 / 10.0;
    let rate2 = learner.rate(&key);
    println!("phase 2: goodput {goodput2:.2}/s over the last 10 s, learned rate {rate2:.1}");
    assert!(
        rate2 > 35.0,
        "learned rate {rate2:.1} did not rise after the server loosened"
    );
    assert!(
        goodput2 >= 35.0,
        "goodput {goodput2:.2}/s after the server loosened to 50/s"
    );
}

fn learned(path: &std::path::Path) -> Learner {
    Learner::with_persistence(limiter(10.0, 1), LearningPolicy::default(), path).unwrap()
}

fn aside_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".corrupt-"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn persistence_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learning.json");
    let a = learned(&path);
    assert!(a.statuses().is_empty(), "a missing file starts fresh");
    let k = key();
    for _ in 0..3 {
        a.observe(&k, Instant::now(), &status(429));
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    a.observe(&k, Instant::now(), &status(200));
    a.observe(&PartitionKey::new("other", "b.example"), Instant::now(), &status(200));
    a.persist().unwrap();

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["policy"], "adaptive");

    let b = learned(&path);
    let (sa, sb) = (
        a.status("p", "example.org").unwrap(),
        b.status("p", "example.org").unwrap(),
    );
    assert!((sa.rate - sb.rate).abs() < 1e-9 && sb.rate < 10.0, "{sa:?} vs {sb:?}");
    assert_eq!((sb.throttles, sb.successes, sb.phase), (3, 1, Phase::Recovering));
    assert_eq!(sb.recovery_times.len(), 1);
    assert!((sb.recovery_times[0].as_secs_f64() - sa.recovery_times[0].as_secs_f64()).abs() < 1e-6);
    assert_eq!(b.limiter().rate(&k), sb.rate, "loaded rates reach the limiter");
    assert_eq!(b.statuses().len(), 2);
    // and it recovers from where it left off
    tokio::time::advance(Duration::from_secs(30)).await;
    b.observe(&k, Instant::now(), &status(200));
    assert_eq!(b.rate(&k), 10.0);
}

#[tokio::test]
async fn a_corrupt_or_foreign_file_is_moved_aside_and_learning_starts_fresh() {
    for content in [
        "{ not json".to_owned(),
        r#"{"version": 99, "partitions": []}"#.to_owned(),
        r#"{"partitions": []}"#.to_owned(),
        r#"{"version": 1, "partitions": "nope"}"#.to_owned(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learning.json");
        std::fs::write(&path, &content).unwrap();
        let learner = learned(&path);
        assert!(learner.statuses().is_empty(), "{content}");
        assert!(!path.exists(), "{content}: the bad file should have been moved");
        let aside = aside_files(dir.path());
        assert_eq!(aside.len(), 1, "{content}: {aside:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(), content);
        // a fresh file is written where the bad one was
        learner.observe(&key(), Instant::now(), &status(429));
        learner.persist().unwrap();
        assert_eq!(learned(&path).statuses().len(), 1);
    }
    // a record with an impossible rate is skipped, the rest kept
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learning.json");
    let text = r#"{"version":1,"policy":"adaptive","saved_at_unix":0,"partitions":[
        {"provider":"p","host":"a","rate":-3.0},{"provider":"p","host":"b","rate":2.5}]}"#;
    std::fs::write(&path, text).unwrap();
    let learner = learned(&path);
    assert_eq!(learner.statuses().len(), 1);
    assert_eq!(learner.status("p", "b").unwrap().rate, 2.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_leave_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learning.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && reads < 100_000 {
                if let Ok(bytes) = std::fs::read(&path) {
                    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a complete JSON file");
                    assert_eq!(json["version"], 1);
                    reads += 1;
                }
            }
            reads
        })
    };
    // separate learners (as separate processes would be), each with its own state; all
    // built before anyone saves, so none starts from another's file
    let learners: Vec<_> = (0..8)
        .map(|_| Learner::with_persistence(limiter(10.0, 1), LearningPolicy::default(), &path).unwrap())
        .collect();
    let writers: Vec<_> = learners
        .into_iter()
        .enumerate()
        .map(|(w, learner)| {
            std::thread::spawn(move || {
                for p in 0..=w {
                    learner.record_throttle(&PartitionKey::new(format!("w{w}"), format!("h{p}")), Instant::now());
                }
                for _ in 0..25 {
                    learner.persist().unwrap();
                }
                w + 1
            })
        })
        .collect();
    let sizes: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    // the file is one writer's complete state
    let last = learned(&path).statuses();
    assert!(sizes.contains(&last.len()), "{} partitions", last.len());
    let provider = last[0].partition.provider().clone();
    assert!(last.iter().all(|s| s.partition.provider() == &provider));
    assert!(aside_files(dir.path()).is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary files left behind");
}

#[tokio::test(start_paused = true)]
async fn periodic_saves_and_a_final_save_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learning.json");
    let learner = learned(&path);
    let task = learner.spawn_persist_task(Duration::from_secs(60));
    learner.observe(&key(), Instant::now(), &status(429));
    assert!(!path.exists());
    // the save at 60 s runs in spawn_blocking, which holds the paused clock until it is done
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(learned(&path).statuses().len(), 1, "saved after one period");
    learner.observe(&PartitionKey::new("q", "example.org"), Instant::now(), &status(429));
    task.shutdown().await.unwrap();
    assert_eq!(learned(&path).statuses().len(), 2, "saved on shutdown");
    // without a path, persist does nothing
    assert!(Learner::new(limiter(1.0, 1), LearningPolicy::Progressive)
        .unwrap()
        .persist()
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn inspect_reads_the_file_and_changes_nothing() {
    use contentdownload::layers::learning::InspectError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("learning.json");
    let inspect = |p: &std::path::Path| Learner::inspect(limiter(10.0, 1), LearningPolicy::default(), p);
    // missing: empty, and no file made
    assert!(inspect(&path).unwrap().statuses().is_empty());
    assert!(!path.exists());
    // a saved state reads back; the inspecting learner never saves
    let a = learned(&path);
    a.observe(&key(), Instant::now(), &status(429));
    a.persist().unwrap();
    let saved = std::fs::read(&path).unwrap();
    let seen = inspect(&path).unwrap();
    assert_eq!(seen.statuses().len(), 1);
    seen.observe(&PartitionKey::new("other", "b.example"), Instant::now(), &status(429));
    seen.persist().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), saved, "inspect never writes");
    // corrupt: an error naming the file and the fault, and the file stays where it is
    std::fs::write(&path, "{ not json").unwrap();
    match inspect(&path) {
        Err(InspectError::File(e)) => {
            assert!(
                e.corrupt && e.path == path && e.reason.contains("not valid JSON"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    assert!(aside_files(dir.path()).is_empty());
}

/// A 429 with `Retry-After: 1` holds the whole partition, the requests already queued in
/// the rate limiter included: none reaches the server within the second it asked for.
/// (Before, only requests that had not yet passed the cool-down waited; the queued ones went
/// out at the old spacing, and a limiter that counts refusals answered each with a 429.)
#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_the_requests_already_queued() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/q/*", [Reply::status(429).retry_after_secs(1), Reply::ok().body("ok")]);
    let learner = Learner::new(limiter(10.0, 1), LearningPolicy::default()).unwrap();
    let stack = stack(&learner);
    // eight requests at once: the limiter spaces them 100 ms apart, so seven are queued
    // when the first one's 429 comes back
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let stack = stack.clone();
            let url = sim.url(&format!("/q/{i}"));
            tokio::spawn(async move { get(&stack, &url).await.status() })
        })
        .collect();
    for r in requests {
        r.await.unwrap();
    }
    let seen = sim.requests_to("/q/*");
    assert_eq!(seen.len(), 8, "each request was sent once");
    let throttled = seen
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("the first request was throttled");
    let early: Vec<f64> = seen
        .iter()
        .filter(|r| r.at > throttled.at && r.at < throttled.at + Duration::from_millis(999))
        .map(|r| (r.at - throttled.at).as_secs_f64())
        .collect();
    assert!(early.is_empty(), "sent within the Retry-After second: {early:?}");
    assert!(seen.iter().filter(|r| r.status == StatusCode::OK).count() == 7);
}

/// A 429 that says the allowance is spent ("credits spent, reset in 3 h", the headers
/// OpenAlex sends) is no rate signal: the learned rate stays, the partition is paused until
/// the reset, and the pause is told; a plain 429 still drops the rate.
#[tokio::test(start_paused = true)]
async fn a_spent_allowance_pauses_the_provider_and_leaves_the_rate() {
    let sim = Simulator::start().await.unwrap();
    let spent = || {
        Reply::status(429)
            .header("x-ratelimit-limit", "100000")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-credits-used", "1")
            .header("x-ratelimit-reset", "10800")
    };
    sim.on("/works", [spent(), spent()]);
    let learner = Learner::new(limiter(10.0, 10), LearningPolicy::default()).unwrap();
    let spent_stack = stack(&learner);
    let host = sim.addr().to_string();
    let key = PartitionKey::new("sim", &host);
    let started = Instant::now();
    get(&spent_stack, &sim.url("/works")).await;
    let st = learner.status("sim", &host).unwrap();
    assert_eq!(st.rate, 10.0, "a spent allowance does not drag the rate down");
    assert_eq!(st.consecutive_429, 0);
    let until = learner.quota_paused_until(&key).expect("paused");
    assert_eq!(until - started, Duration::from_secs(10_800));
    let wait = learner.limiter().ready_in(&key);
    assert!(
        wait > Duration::from_secs(10_700) && wait <= Duration::from_secs(10_800),
        "the partition waits for the reset: {wait:?}"
    );

    // a plain 429 on another partition still teaches a lower rate
    sim.on("/busy", [Reply::status(429).retry_after_secs(1)]);
    let other = Learner::new(limiter(10.0, 10), LearningPolicy::default()).unwrap();
    get(&stack(&other), &sim.url("/busy")).await;
    assert!(other.status("sim", &host).unwrap().rate < 10.0);
    assert_eq!(other.quota_paused_until(&key), None);
}

/// A spent allowance outlives the run: the learning file keeps its reset, so the next run
/// (and `status`, reading the file) knows the provider is paused without asking it.
#[tokio::test]
async fn a_spent_allowance_is_kept_in_the_learning_file_until_its_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_learning.json");
    let key = PartitionKey::new("unpaywall", "api.unpaywall.org");
    let learner = Learner::with_persistence(limiter(10.0, 1), LearningPolicy::default(), &path).unwrap();
    let spent = Response::builder()
        .status(429)
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "10800")
        .body(())
        .unwrap();
    learner.observe(&key, Instant::now(), &spent);
    let first = learner.quota_pause(&key).expect("paused");
    learner.persist().unwrap();

    for again in [
        Learner::with_persistence(limiter(10.0, 1), LearningPolicy::default(), &path).unwrap(),
        Learner::inspect(limiter(10.0, 1), LearningPolicy::default(), &path).unwrap(),
    ] {
        let pause = again.quota_pause(&key).expect("still paused after a reload");
        let drift = pause
            .resets_at
            .duration_since(first.resets_at)
            .unwrap_or_else(|e| e.duration());
        assert!(drift <= Duration::from_secs(1), "the same reset: {drift:?}");
        assert!(
            again.limiter().ready_in(&key) > Duration::from_secs(10_000),
            "nothing is sent until then"
        );
        assert_eq!(again.rate(&key), 10.0);
    }

    // a reset that has passed is forgotten
    let text = std::fs::read_to_string(&path).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
    file["quota_spent"][0]["resets_at_unix"] = serde_json::json!(1);
    std::fs::write(&path, file.to_string()).unwrap();
    let later = Learner::inspect(limiter(10.0, 1), LearningPolicy::default(), &path).unwrap();
    assert_eq!(later.quota_pause(&key), None);
}
