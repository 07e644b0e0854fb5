//! Adaptive learning against deterministic models of nginx's `limit_req` (a leaky bucket)
//! and HAProxy's `http_req_rate` (a sliding one-second count that includes the requests it
//! refuses), both answering 429 + `Retry-After: 1`, on tokio's paused clock: the learned
//! rate settles just under the hidden limit, probes above it less and less often, and
//! climbs back when the limit triples.
//!
//! The model client sends evenly at the learned rate (a GCRA limiter with burst 1 and
//! more workers than it needs), each response comes back after a fixed round trip, and a
//! 429 cools the whole partition for the second its `Retry-After` asks.

use std::collections::VecDeque;
use std::time::Duration;

use contentdownload::context::PartitionKey;
use contentdownload::layers::learning::{Learner, LearningPolicy};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};
use http::Response;
use proptest::prelude::*;
use tokio::time::Instant;

/// nginx's `limit_req` arithmetic: `excess` (in requests) drains at `rate` per second; a
/// request that would push it above `burst` is rejected and changes nothing.
struct LeakyBucket {
    rate: f64,
    burst: f64,
    excess: f64,
    last: Option<Instant>,
}

impl LeakyBucket {
    fn new(rate: f64, burst: u32) -> Self {
        LeakyBucket {
            rate,
            burst: burst as f64,
            excess: 0.0,
            last: None,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = self.last.map_or(0.0, |l| (now - l).as_secs_f64());
        let excess = (self.excess - self.rate * elapsed).max(0.0) + 1.0;
        // nginx counts the request itself as the first of the burst: excess 1 with burst 0
        if excess - 1.0 > self.burst + 1e-9 {
            return false;
        }
        self.excess = excess;
        self.last = Some(now);
        true
    }
}

/// HAProxy's `http_req_rate(1s)` arithmetic (`freq_ctr`): a count per wall-clock second,
/// read as `current + previous × (share of the current second still to come)`. Every
/// request is counted, the refused ones too (`track-sc0` comes before the check), and a
/// request is refused when the count of the ones before it is above the limit (`gt`):
/// HAProxy 2.6 on loopback let an even 20.06/s through a limit of 20 for many seconds.
struct WindowCounter {
    limit: f64,
    epoch: Instant,
    second: u64,
    current: u32,
    previous: u32,
}

impl WindowCounter {
    fn new(limit: f64) -> Self {
        WindowCounter {
            limit,
            epoch: Instant::now(),
            second: 0,
            current: 0,
            previous: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        let elapsed = (now - self.epoch).as_secs_f64();
        let second = elapsed.floor() as u64;
        if second != self.second {
            self.previous = if second == self.second + 1 { self.current } else { 0 };
            self.current = 0;
            self.second = second;
        }
        let into = elapsed - second as f64;
        let rate = f64::from(self.current) + f64::from(self.previous) * (1.0 - into);
        self.current += 1;
        rate <= self.limit
    }
}

/// The server's limiter.
enum Limit {
    Leaky(LeakyBucket),
    Window(WindowCounter),
}

impl Limit {
    fn admit(&mut self, now: Instant) -> bool {
        match self {
            Limit::Leaky(b) => b.admit(now),
            Limit::Window(w) => w.admit(now),
        }
    }

    fn set_rate(&mut self, rate: f64) {
        match self {
            Limit::Leaky(b) => b.rate = rate,
            Limit::Window(w) => w.limit = rate,
        }
    }
}

/// One second of the model's life.
#[derive(Debug, Default, Clone, Copy)]
struct Second {
    sent: u32,
    throttled: u32,
    ok: u32,
    rate: f64,
}

struct Model {
    learner: Learner,
    key: PartitionKey,
    bucket: Limit,
    rtt: Duration,
    start: Instant,
    next_send: Instant,
    cooled_until: Instant,
    in_flight: VecDeque<(Instant, Instant, bool)>,
    seconds: Vec<Second>,
    /// When each 429 that arrived was first seen after a quiet spell (a throttling episode).
    episodes: Vec<f64>,
    last_429: Option<Instant>,
    /// Each request reaches the server up to this long after it was sent (uniform, from a
    /// fixed-seed generator): the scheduling and network jitter of a real client.
    jitter: Duration,
    rng: fastrand::Rng,
}

impl Model {
    fn new(hidden: f64, burst: u32, told: f64) -> Model {
        Model::with_limit(Limit::Leaky(LeakyBucket::new(hidden, burst)), told)
    }

    fn haproxy(hidden: f64, told: f64) -> Model {
        Model::with_limit(Limit::Window(WindowCounter::new(hidden)), told)
    }

    fn with_limit(bucket: Limit, told: f64) -> Model {
        let limiter = RateLimiter::new(RateLimitConfig {
            default: Quota::new(told, 1),
            ..RateLimitConfig::default()
        })
        .unwrap();
        let learner = Learner::new(limiter, LearningPolicy::default()).unwrap();
        let now = Instant::now();
        Model {
            learner,
            key: PartitionKey::new("bench", "127.0.0.1:8080"),
            bucket,
            rtt: Duration::from_millis(5),
            start: now,
            next_send: now,
            cooled_until: now,
            in_flight: VecDeque::new(),
            seconds: Vec::new(),
            episodes: Vec::new(),
            last_429: None,
            jitter: Duration::ZERO,
            rng: fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn second(&mut self, at: Instant) -> &mut Second {
        let s = (at - self.start).as_secs() as usize;
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, Second::default());
        }
        &mut self.seconds[s]
    }

    /// Runs the model until `until` (bounded: one event per loop, each at least 100 µs on).
    async fn run_until(&mut self, until: Instant) {
        for _ in 0..10_000_000 {
            let send_at = self.next_send.max(self.cooled_until);
            let arrive_at = self.in_flight.front().map(|f| f.0);
            let next = arrive_at.map_or(send_at, |a| a.min(send_at));
            if next >= until {
                tokio::time::advance(until.saturating_duration_since(Instant::now())).await;
                return;
            }
            tokio::time::advance(next.saturating_duration_since(Instant::now())).await;
            let now = Instant::now();
            if arrive_at == Some(next) {
                let (_, sent_at, ok) = self.in_flight.pop_front().expect("a response was due");
                let response = if ok {
                    Response::builder().status(200).body(()).unwrap()
                } else {
                    Response::builder()
                        .status(429)
                        .header("retry-after", "1")
                        .body(())
                        .unwrap()
                };
                self.learner.observe(&self.key, sent_at, &response);
                if !ok {
                    // honour Retry-After: the partition waits a second
                    self.cooled_until = self.cooled_until.max(now + Duration::from_secs(1));
                    if self.last_429.is_none_or(|l| now - l > Duration::from_secs(2)) {
                        self.episodes.push((now - self.start).as_secs_f64());
                    }
                    self.last_429 = Some(now);
                }
                continue;
            }
            // send one request at the learned rate
            let arrival = now + self.next_jitter();
            let ok = self.bucket.admit(arrival);
            let rate = self.learner.rate(&self.key);
            let second = self.second(now);
            second.rate = rate;
            second.sent += 1;
            if ok {
                second.ok += 1;
            } else {
                second.throttled += 1;
            }
            self.in_flight.push_back((now + self.rtt, now, ok));
            let rate = self.learner.rate(&self.key).max(0.1);
            self.next_send = now + Duration::from_secs_f64(1.0 / rate);
        }
        panic!("the model did not reach its end time");
    }

    /// A delay in `0..jitter`, from a seeded generator (the same delays every run).
    fn next_jitter(&mut self) -> Duration {
        self.jitter.mul_f64(self.rng.f64())
    }

    /// (goodput / hidden, share of 429s) over seconds `from..to`.
    fn score(&self, from: usize, to: usize, hidden: f64) -> (f64, f64) {
        if std::env::var_os("LEARNING_TRACE").is_some() {
            for (i, s) in self.seconds.iter().enumerate() {
                println!(
                    "{i:>4} sent {:>4} ok {:>4} 429 {:>3} rate {:.2}",
                    s.sent, s.ok, s.throttled, s.rate
                );
            }
        }
        self.score_quiet(from, to, hidden)
    }

    fn score_quiet(&self, from: usize, to: usize, hidden: f64) -> (f64, f64) {
        let window = &self.seconds[from..to.min(self.seconds.len())];
        let sent: u32 = window.iter().map(|s| s.sent).sum();
        let ok: u32 = window.iter().map(|s| s.ok).sum();
        let throttled: u32 = window.iter().map(|s| s.throttled).sum();
        let goodput = ok as f64 / window.len() as f64 / hidden;
        (goodput, throttled as f64 / sent.max(1) as f64)
    }
}

#[tokio::test(start_paused = true)]
async fn settles_just_under_a_leaky_bucket_and_probes_less_and_less() {
    let mut model = Model::new(20.0, 5, 100.0);
    let end = model.start + Duration::from_secs(120);
    model.run_until(end).await;
    let (goodput, throttled) = model.score(5, 120, 20.0);
    println!(
        "goodput {goodput:.3}× hidden, {:.2}% 429s, episodes at {:?}",
        throttled * 100.0,
        model.episodes
    );
    // each probe that meets the limit costs the second of cool-down its Retry-After asks
    assert!(goodput >= 0.95, "goodput {goodput:.3}× the hidden rate");
    assert!(throttled <= 0.02, "{:.2}% of requests throttled", throttled * 100.0);
    let rate = model.learner.rate(&model.key);
    assert!((18.0..=21.0).contains(&rate), "learned {rate:.2}/s for a hidden 20/s");
    // after discovery (a few quick step-downs of a plateau that was a little too high),
    // throttling episodes are the probes, as far apart as the longest hold allows
    let later: Vec<f64> = model.episodes.iter().copied().filter(|t| *t > 10.0).collect();
    assert!(later.len() <= 10, "too many probes that met the limit: {later:?}");
    let gaps: Vec<f64> = later.windows(2).map(|w| w[1] - w[0]).collect();
    // once the ceiling is confirmed, a probe at most every max_probe_hold_secs (16 s) plus
    // its climb, and no more often than that
    let settled: Vec<f64> = later.iter().copied().filter(|t| *t > 45.0).collect();
    assert!(settled.len() >= 2, "it still probes: {later:?}");
    assert!(
        settled.windows(2).all(|w| (16.0..=26.0).contains(&(w[1] - w[0]))),
        "probe gaps {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn recovers_within_30_s_when_the_limit_triples() {
    let mut model = Model::new(20.0, 5, 100.0);
    let change = model.start + Duration::from_secs(90);
    model.run_until(change).await;
    model.bucket.set_rate(60.0);
    model.run_until(change + Duration::from_secs(40)).await;
    let after = 90;
    let reached = (after..after + 38).find(|&s| {
        let ok: u32 = model.seconds[s..s + 3].iter().map(|x| x.ok).sum();
        ok as f64 / 3.0 >= 0.9 * 60.0
    });
    println!(
        "0.9× of 60/s after {:?} s; episodes {:?}",
        reached.map(|s| s - after),
        model.episodes
    );
    let reached = reached.expect("never reached 0.9× the tripled rate");
    // the issue asks for 30 s; the probe doubles once past 1.5× the old ceiling and takes
    // its ceiling from what was accepted when it overshoots, so it takes 17 s here (21 s
    // along the cubic alone, 27 s doubling without the measured ceiling)
    assert!(reached - after <= 20, "took {} s", reached - after);
    let (goodput, throttled) = model.score(after + 32, after + 40, 60.0);
    assert!(
        goodput >= 0.85 && throttled <= 0.05,
        "after: {goodput:.3}, {throttled:.3}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lowered_limit_is_followed_down() {
    let mut model = Model::new(40.0, 5, 100.0);
    let change = model.start + Duration::from_secs(60);
    model.run_until(change).await;
    model.bucket.set_rate(10.0);
    model.run_until(change + Duration::from_secs(40)).await;
    let (goodput, throttled) = model.score(70, 100, 10.0);
    println!("after lowering: goodput {goodput:.3}, {:.2}% 429s", throttled * 100.0);
    assert!(goodput >= 0.9 && throttled <= 0.03, "{goodput:.3}, {throttled:.3}");
}

fn converges(hidden: f64, burst: u32) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut model = Model::new(hidden, burst, hidden * 5.0);
        let end = model.start + Duration::from_secs(90);
        model.run_until(end).await;
        model.score(15, 90, hidden)
    })
}

// Below ~5/s each probe's single 429 is already a few percent of all requests: the
// share of 429s is bounded by the probe spacing (20 s at most), not by the policy.
//
// The seed is fixed: the same 24 cases in every run, so CI does not pass or fail by the
// draw (with a random seed, hidden 9/s burst 1 came up now and then and failed at 0.862,
// before a raise that met the limit went back to the plateau that held).
proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_1ea2),
        ..ProptestConfig::default()
    })]
    #[test]
    fn converges_for_any_hidden_rate_and_burst(hidden in 5.0f64..200.0, burst in 0u32..10) {
        let (goodput, throttled) = converges(hidden, burst);
        prop_assert!(goodput >= 0.88, "hidden {hidden:.1}/s burst {burst}: goodput {goodput:.3}");
        prop_assert!(throttled <= 0.03, "hidden {hidden:.1}/s burst {burst}: {throttled:.3} throttled");
    }
}

/// The cases random draws found hard (proptest's regression file is not read for an
/// integration test, so they are spelled out): precise limiters (burst 0 or 1), and the
/// lowest rate, where a second's count is coarse.
#[test]
fn converges_in_the_cases_found_hard() {
    for (hidden, burst) in [(196.03, 0), (53.5, 0), (113.64, 1), (9.0, 1), (5.0, 0), (5.0, 3)] {
        let (goodput, throttled) = converges(hidden, burst);
        assert!(
            goodput >= 0.88,
            "hidden {hidden:.1}/s burst {burst}: goodput {goodput:.3}"
        );
        assert!(
            throttled <= 0.03,
            "hidden {hidden:.1}/s burst {burst}: {throttled:.3} throttled"
        );
    }
}

#[test]
#[ignore = "a debugging aid: LEARNING_CASE=rate,burst LEARNING_TRACE=1"]
fn one_case() {
    let case = std::env::var("LEARNING_CASE").unwrap_or_else(|_| "20,5".into());
    let (r, b) = case.split_once(',').unwrap();
    println!("{:?}", converges(r.parse().unwrap(), b.parse().unwrap()));
}

/// A limiter that counts its own refusals (HAProxy's `http_req_rate`) answers 429 to every
/// request for a while; the requests the client had queued then each come back 429. One
/// decrease per `Retry-After` period (at most 250 ms), not one per round trip.
#[tokio::test(start_paused = true)]
async fn one_decrease_per_retry_after_period() {
    let limiter = RateLimiter::new(RateLimitConfig {
        default: Quota::new(100.0, 1),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let learner = Learner::new(limiter, LearningPolicy::default()).unwrap();
    let key = PartitionKey::new("bench", "127.0.0.1:8080");
    let throttled = || {
        Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(())
            .unwrap()
    };
    // the first throttle: the rate never ran for a second, so it drops by β² (0.49)
    learner.observe(&key, Instant::now(), &throttled());
    assert!((learner.rate(&key) - 49.0).abs() < 1e-9, "{}", learner.rate(&key));
    // sent after the decrease, answered within the quiet period: not news
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(10)).await;
        learner.observe(&key, Instant::now(), &throttled());
    }
    assert!((learner.rate(&key) - 49.0).abs() < 1e-9, "{}", learner.rate(&key));
    // a quarter second on, still throttled (no success yet at the new rate): the next
    // decrease, β² again
    tokio::time::advance(Duration::from_millis(60)).await;
    learner.observe(&key, Instant::now(), &throttled());
    let after_two = 49.0 * 0.49;
    assert!((learner.rate(&key) - after_two).abs() < 1e-9, "{}", learner.rate(&key));
    // without Retry-After, the round trip alone is the window (and a step costs no
    // pause, so it is β)
    let plain = Response::builder().status(429).body(()).unwrap();
    tokio::time::advance(Duration::from_millis(300)).await;
    learner.observe(&key, Instant::now(), &plain);
    tokio::time::advance(Duration::from_millis(1)).await;
    learner.observe(&key, Instant::now(), &plain);
    assert!(
        (learner.rate(&key) - after_two * 0.7 * 0.7).abs() < 1e-9,
        "{}",
        learner.rate(&key)
    );
}

/// The politeness bench's scoring (60 s, the client told 5× the hidden rate, from the
/// sixth second on), for both limiters. The goal is goodput ≥ 0.95× and ≤ 2% 429s;
/// the model (whose numbers matched the real nginx and HAProxy runs within 0.01) reaches
/// 0.959 and 0.926 (0.925 and 0.885 before the descent aimed low and fast convergence
/// measured the provider's acceptance; HAProxy 0.915 before a probe that met the limit
/// within 5% of the plateau that held stopped raising the ceiling), so these guard
/// against losing that: each probe or
/// step that meets the limit costs the whole second its `Retry-After` asks, and the first
/// seconds go to the descent from 5×.
async fn sixty_seconds(mut model: Model, hidden: f64) -> (f64, f64) {
    let end = model.start + Duration::from_secs(60);
    model.run_until(end).await;
    let (goodput, throttled) = model.score(5, 60, hidden);
    println!(
        "goodput {goodput:.3}× hidden, {:.2}% 429s, episodes at {:?}",
        throttled * 100.0,
        model.episodes
    );
    (goodput, throttled)
}

#[tokio::test(start_paused = true)]
async fn sixty_seconds_against_a_leaky_bucket() {
    let (goodput, throttled) = sixty_seconds(Model::new(20.0, 5, 100.0), 20.0).await;
    assert!(goodput >= 0.955, "goodput {goodput:.3}× the hidden rate");
    assert!(throttled <= 0.01, "{:.2}% of requests throttled", throttled * 100.0);
}

#[tokio::test(start_paused = true)]
async fn sixty_seconds_against_a_window_that_counts_refusals() {
    let (goodput, throttled) = sixty_seconds(Model::haproxy(20.0, 100.0), 20.0).await;
    assert!(goodput >= 0.92, "goodput {goodput:.3}× the hidden rate");
    assert!(throttled <= 0.01, "{:.2}% of requests throttled", throttled * 100.0);
}

/// Tripling the window limiter's rate at any of 26 moments from 25 to 75 s (so on the
/// plateau, during a probe and right after one): 0.9× the new rate within 30 s. The
/// worst case is the longest hold (16 s) plus the probe's climb past 1.5× the old ceiling
/// (4.6 s) and its doubling from there.
#[tokio::test(start_paused = true)]
async fn a_window_limit_that_triples_is_found_within_30_s() {
    for at in (25u64..=75).step_by(2) {
        let mut model = Model::haproxy(20.0, 100.0);
        let change = model.start + Duration::from_secs(at);
        model.run_until(change).await;
        model.bucket.set_rate(60.0);
        model.run_until(change + Duration::from_secs(40)).await;
        let after = at as usize;
        let reached = (after..after + 38).find(|&s| {
            let ok: u32 = model.seconds[s..s + 3].iter().map(|x| x.ok).sum();
            ok as f64 / 3.0 >= 0.9 * 60.0
        });
        let took = reached.map(|s| s - after);
        assert!(
            took.is_some_and(|t| t <= 30),
            "tripled at {at} s: 0.9× after {took:?} s"
        );
    }
}

/// A throttle that asks for a wait within a second of the rate's start says the rate was
/// far above the limit: the rate drops by β² and climbs back only to the plateau under
/// β × the throttled rate (a guess, held for half the usual hold), not to the throttled
/// rate, which would only meet the limit again and cost another pause.
#[tokio::test(start_paused = true)]
async fn after_an_early_throttle_the_climb_aims_below_the_throttled_rate() {
    let limiter = RateLimiter::new(RateLimitConfig {
        default: Quota::new(100.0, 1),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let learner = Learner::new(limiter, LearningPolicy::default()).unwrap();
    let key = PartitionKey::new("bench", "127.0.0.1:8080");
    let throttled = Response::builder()
        .status(429)
        .header("retry-after", "1")
        .body(())
        .unwrap();
    learner.observe(&key, Instant::now(), &throttled);
    assert!((learner.rate(&key) - 49.0).abs() < 1e-9, "{}", learner.rate(&key));
    let ok = Response::builder().status(200).body(()).unwrap();
    // six seconds of successes, 20 a second: the climb flattens at 0.97 × 70 (after 3.6 s)
    let plateau = 0.97 * 70.0;
    let mut highest: f64 = 0.0;
    for _ in 0..120 {
        tokio::time::advance(Duration::from_millis(50)).await;
        learner.observe(&key, Instant::now(), &ok);
        highest = highest.max(learner.rate(&key));
    }
    assert!((highest - plateau).abs() < 1e-6, "climbed to {highest:.2}");
    // the guessed ceiling is probed after half the 8 s hold: above it 10 s in, not 15 s
    for _ in 0..80 {
        tokio::time::advance(Duration::from_millis(50)).await;
        learner.observe(&key, Instant::now(), &ok);
    }
    let rate = learner.rate(&key);
    assert!(rate > plateau * 1.01, "still on the plateau at {rate:.2} after 10 s");
}

/// The bench's 60 s again, each request reaching the server up to 5 ms late (uniform):
/// with that jitter the model (HAProxy 0.913, nginx 0.959) comes within about 0.01 of what
/// the real limiters gave (politeness_bench, 2026-11-28: nginx 0.958, 0.958, 0.963; HAProxy
/// 0.900–0.908, where the real runs had an extra pause a few seconds after a probe that
/// raised the plateau). Without jitter the model gives HAProxy 0.926: its count never
/// passes its limit at a plateau a hair under it. (An earlier draw of the jitter, from a
/// hand-written generator, gave 0.907 and showed that extra pause; this one does not.)
#[tokio::test(start_paused = true)]
async fn sixty_seconds_with_a_real_client_s_jitter() {
    let mut haproxy = Model::haproxy(20.0, 100.0);
    haproxy.jitter = Duration::from_millis(5);
    let (goodput, throttled) = sixty_seconds(haproxy, 20.0).await;
    assert!(goodput >= 0.90, "HAProxy: goodput {goodput:.3}× the hidden rate");
    assert!(throttled <= 0.01, "HAProxy: {:.2}% throttled", throttled * 100.0);
    let mut nginx = Model::new(20.0, 5, 100.0);
    nginx.jitter = Duration::from_millis(5);
    let (goodput, throttled) = sixty_seconds(nginx, 20.0).await;
    assert!(goodput >= 0.95, "nginx: goodput {goodput:.3}× the hidden rate");
    assert!(throttled <= 0.01, "nginx: {:.2}% throttled", throttled * 100.0);
}

/// A debugging aid for tuning the policy: the bench's 60 s against both limiters over
/// eight jitter draws, with and without jitter, and grids of hidden rates, as means and
/// minima (run with `--ignored --nocapture`). Nothing is asserted: the tests above guard
/// the levels; this shows what a change to the policy does to all of them at once.
#[test]
#[ignore = "a tuning aid: cargo test --test learning_convergence scoreboard -- --ignored --nocapture"]
fn scoreboard() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // each model is made inside the runtime, on its paused clock
    let run = |make: &dyn Fn() -> Model, hidden: f64, secs: u64| {
        rt.block_on(async {
            let mut model = make();
            let end = model.start + Duration::from_secs(secs);
            model.run_until(end).await;
            model.score_quiet(5, secs as usize, hidden)
        })
    };
    let summary = |name: &str, scores: &[(f64, f64)]| {
        let mean = scores.iter().map(|s| s.0).sum::<f64>() / scores.len() as f64;
        let min = scores.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
        let worst_429 = scores.iter().map(|s| s.1).fold(0.0, f64::max);
        println!(
            "{name:<28} mean {mean:.4} min {min:.4} worst 429s {:.2}%",
            worst_429 * 100.0
        );
    };
    for (name, haproxy) in [("nginx 20/s burst 5", false), ("haproxy 20/s", true)] {
        let make = |seed: u64, jitter: u64| {
            let mut m = if haproxy {
                Model::haproxy(20.0, 100.0)
            } else {
                Model::new(20.0, 5, 100.0)
            };
            m.jitter = Duration::from_millis(jitter);
            m.rng = fastrand::Rng::with_seed(seed);
            m
        };
        let plain = run(&|| make(0, 0), 20.0, 60);
        summary(&format!("{name}, no jitter"), &[plain]);
        let jittered: Vec<_> = (1..=8).map(|seed| run(&|| make(seed, 5), 20.0, 60)).collect();
        summary(&format!("{name}, jitter ×8"), &jittered);
    }
    let window: Vec<_> = [6.0, 10.0, 15.0, 20.0, 35.0, 50.0, 80.0, 150.0]
        .iter()
        .map(|&r| {
            let make = || {
                let mut m = Model::haproxy(r, r * 5.0);
                m.jitter = Duration::from_millis(5);
                m
            };
            run(&make, r, 90)
        })
        .collect();
    summary("haproxy grid ×8, jitter", &window);
    let mut leaky = Vec::new();
    for r in [7.0, 20.0, 53.5, 113.64, 196.03, 9.0] {
        for b in [0, 1, 5] {
            let s = run(&|| Model::new(r, b, r * 5.0), r, 90);
            if std::env::var_os("SCOREBOARD_CASES").is_some() {
                println!("  leaky {r}/s burst {b}: {:.4}", s.0);
            }
            leaky.push(s);
        }
    }
    summary("leaky grid ×18", &leaky);
}
