//! The Retry-After layer over the shared client against the loopback simulator, and
//! property tests of the hint parser.
#![cfg(feature = "simulator")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use contentdownload::context::{CooldownWait, PartitionKey, Provider, RetryAfterHint};
use contentdownload::error::{BoxError, CoolingDown};
use contentdownload::layers::retry_after::{
    hint_from_headers, parse_rate_limit_field, parse_rate_limit_reset, parse_retry_after, Cooldowns, RetryAfter,
    RetryAfterLayer, MAX_HINT,
};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn service(layer: &RetryAfterLayer) -> RetryAfter<HttpClient> {
    layer.layer(HttpClient::new(&HttpConfig::default()).expect("client builds"))
}

async fn get(
    svc: &RetryAfter<HttpClient>,
    url: &str,
    provider: Option<&str>,
) -> Result<Response<ResponseBody>, BoxError> {
    let mut req = Request::get(url).body(Full::<Bytes>::default())?;
    if let Some(p) = provider {
        req.extensions_mut().insert(Provider::new(p));
    }
    svc.clone().oneshot(req).await
}

fn hint(res: &Response<ResponseBody>) -> Option<Duration> {
    res.extensions().get::<RetryAfterHint>().map(|h| h.delay)
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_the_provider_down_for_every_clone() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/limited", [Reply::status(429).retry_after_secs(2)]);
    sim.on("/other", [Reply::ok()]);
    let layer = RetryAfterLayer::new();
    let svc = service(&layer);

    let res = get(&svc, &sim.url("/limited"), Some("crossref")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(hint(&res), Some(Duration::from_secs(2)));
    let throttled_at = Instant::now();

    // another provider on the same host is not held
    let res = get(&svc, &sim.url("/other"), Some("unpaywall")).await.unwrap();
    assert_eq!(res.extensions().get::<CooldownWait>(), None);
    assert!(throttled_at.elapsed() < Duration::from_millis(100));

    // the same provider, through a service built from a clone of the layer, waits 2 s
    let clone = service(&layer.clone());
    let res = get(&clone, &sim.url("/other"), Some("crossref")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.extensions().get::<CooldownWait>(),
        Some(&CooldownWait(Duration::from_secs(2)))
    );
    let seen = sim.requests_to("/other");
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at >= throttled_at + Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_the_maximum_fails_at_once_with_the_end_instant() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/limited", [Reply::status(503).retry_after_secs(30)]);
    let layer = RetryAfterLayer::new().max_wait(Duration::from_secs(5));
    let svc = service(&layer);
    get(&svc, &sim.url("/limited"), None).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);

    let err = get(&svc, &sim.url("/limited"), None).await.unwrap_err();
    let cooling = err.downcast_ref::<CoolingDown>().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(cooling.until, until);
    assert_eq!(cooling.partition.host(), format!("127.0.0.1:{}", sim.addr().port()));
    assert!(err.to_string().contains("cooling down"), "{err}");
    assert_eq!(sim.count("/limited"), 1, "the refused request was not sent");

    // after the pause, requests flow again
    tokio::time::advance(Duration::from_secs(30)).await;
    sim.on("/limited", [Reply::ok()]);
    assert_eq!(
        get(&svc, &sim.url("/limited"), None).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn shared_cooldowns_span_stacks() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/x", [Reply::status(429).retry_after_secs(60)]);
    let cooldowns = Cooldowns::new();
    let a = service(&RetryAfterLayer::new().with_cooldowns(cooldowns.clone()));
    let b = service(&RetryAfterLayer::new().with_cooldowns(cooldowns.clone()));
    get(&a, &sim.url("/x"), Some("p")).await.unwrap();
    let err = get(&b, &sim.url("/x"), Some("p")).await.unwrap_err();
    assert!(err.is::<CoolingDown>(), "{err}");
    let active = cooldowns.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].0.provider().as_str(), "p");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_headers_give_hints() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/ietf", [Reply::status(429).header("ratelimit", "\"default\";r=0;t=7")]);
    sim.on("/legacy", [Reply::status(429).header("x-ratelimit-reset", "11")]);
    sim.on("/quota", [Reply::ok().header("x-ratelimit-reset", "11")]);
    sim.on("/garbage", [Reply::status(429).header("retry-after", "tomorrow-ish")]);
    let layer = RetryAfterLayer::new();
    let svc = service(&layer);
    let ietf = get(&svc, &sim.url("/ietf"), Some("a")).await.unwrap();
    assert_eq!(hint(&ietf), Some(Duration::from_secs(7)));
    let legacy = get(&svc, &sim.url("/legacy"), Some("b")).await.unwrap();
    assert_eq!(hint(&legacy), Some(Duration::from_secs(11)));
    // a reset time on an ordinary success is the quota window, not a request to wait
    let quota = get(&svc, &sim.url("/quota"), Some("c")).await.unwrap();
    assert_eq!(hint(&quota), None);
    let garbage = get(&svc, &sim.url("/garbage"), Some("d")).await.unwrap();
    assert_eq!(hint(&garbage), None);
    let cooling: Vec<PartitionKey> = layer.cooldowns().active().into_iter().map(|(k, _)| k).collect();
    assert_eq!(cooling.len(), 2, "{cooling:?}");
}

fn now_whole_secs() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1_700_000_000);
    UNIX_EPOCH + Duration::from_secs(secs)
}

proptest! {
    #[test]
    fn never_panics_on_any_text(s in "\\PC*") {
        let now = SystemTime::now();
        let _ = parse_retry_after(&s, now);
        let _ = parse_rate_limit_reset(&s, now);
        let _ = parse_rate_limit_field(&s);
    }

    #[test]
    fn never_panics_on_any_header_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64), status in 100u16..600) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", value.clone());
            headers.insert("ratelimit", value.clone());
            headers.insert("x-ratelimit-reset", value);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            if let Some(h) = hint_from_headers(status, &headers, SystemTime::now()) {
                prop_assert!(h <= MAX_HINT);
            }
        }
    }

    #[test]
    fn delta_seconds_round_trip(secs in 0u64..=900) {
        prop_assert_eq!(parse_retry_after(&secs.to_string(), SystemTime::now()), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn longer_delays_are_capped(secs in 901u64..=31_000_000) {
        prop_assert_eq!(parse_retry_after(&secs.to_string(), SystemTime::now()), Some(MAX_HINT));
    }

    #[test]
    fn http_dates_round_trip(secs in 1u64..=900) {
        let now = now_whole_secs();
        let date = httpdate::fmt_http_date(now + Duration::from_secs(secs));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn past_dates_and_negative_numbers_give_nothing(secs in 0u64..=10_000_000) {
        let now = now_whole_secs();
        let date = httpdate::fmt_http_date(now - Duration::from_secs(secs));
        prop_assert_eq!(parse_retry_after(&date, now), None);
        prop_assert_eq!(parse_retry_after(&format!("-{secs}"), now), None);
    }
}
