use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower_test::mock;

use super::*;
use crate::context::{CooldownWait, PartitionKey, Provider, RetryAfterHint};
use crate::error::CoolingDown;

type Req = Request<&'static str>;
type Res = Response<&'static str>;

fn req(host: &str) -> Req {
    Request::get(format!("https://{host}/x")).body("").unwrap()
}

fn throttled(retry_after: &str) -> Res {
    Response::builder()
        .status(429)
        .header("retry-after", retry_after)
        .body("")
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn hint_is_attached_and_the_partition_cools_down() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(RetryAfterLayer::new());

    assert_ready!(svc.poll_ready()).unwrap();
    let mut first = tokio_test::task::spawn(svc.call(req("a.example")));
    assert_pending!(first.poll(), "sent when polled");
    let (r, send) = handle.next_request().await.unwrap();
    assert_eq!(
        r.extensions().get::<PartitionKey>(),
        Some(&PartitionKey::new("a.example", "a.example"))
    );
    send.send_response(throttled("2"));
    let res = assert_ready!(first.poll()).unwrap();
    assert_eq!(
        res.extensions().get::<RetryAfterHint>(),
        Some(&RetryAfterHint {
            delay: Duration::from_secs(2)
        })
    );
    assert!(res.extensions().get::<CooldownWait>().is_none());

    // another partition is not held
    assert_ready!(svc.poll_ready()).unwrap();
    let mut other = tokio_test::task::spawn(svc.call(req("b.example")));
    assert_pending!(other.poll(), "sent when polled");
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(""));
    assert_ready!(other.poll()).unwrap();

    // the same partition waits 2 s before reaching the inner service
    let started = Instant::now();
    assert_ready!(svc.poll_ready()).unwrap();
    let mut second = tokio_test::task::spawn(svc.call(req("a.example")));
    assert_pending!(second.poll());
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_pending!(second.poll());
    assert!(handle.poll_request().is_pending(), "sent during the cool-down");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(second.poll());
    let (_, send) = handle.next_request().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    send.send_response(Response::new(""));
    let res = assert_ready!(second.poll()).unwrap();
    assert_eq!(
        res.extensions().get::<CooldownWait>(),
        Some(&CooldownWait(Duration::from_secs(2)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_the_maximum_fails_at_once() {
    let layer = RetryAfterLayer::new().max_wait(Duration::from_secs(5));
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    assert_ready!(svc.poll_ready()).unwrap();
    let mut first = tokio_test::task::spawn(svc.call(req("a.example")));
    assert_pending!(first.poll(), "sent when polled");
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(throttled("30"));
    assert_ready!(first.poll()).unwrap();

    assert_ready!(svc.poll_ready()).unwrap();
    let mut second = tokio_test::task::spawn(svc.call(req("a.example")));
    let err = assert_ready!(second.poll()).unwrap_err();
    let cooling = err.downcast_ref::<CoolingDown>().expect("a CoolingDown error");
    assert_eq!(cooling.partition, PartitionKey::new("a.example", "a.example"));
    assert_eq!(cooling.until, Instant::now() + Duration::from_secs(30));
    assert!(handle.poll_request().is_pending(), "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn a_cool_down_extended_during_the_wait_is_waited_or_refused() {
    let layer = RetryAfterLayer::new().max_wait(Duration::from_secs(5));
    let cooldowns = layer.cooldowns().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    let mut r = req("a.example");
    r.extensions_mut().insert(Provider::new("p"));
    let p = PartitionKey::compute(&r);
    cooldowns.extend(p.clone(), Instant::now() + Duration::from_secs(1));

    assert_ready!(svc.poll_ready()).unwrap();
    let mut waiting = tokio_test::task::spawn(svc.call(r));
    assert_pending!(waiting.poll());
    // pushed to 3 s from the start: still under the maximum, so waited
    cooldowns.extend(p.clone(), Instant::now() + Duration::from_secs(3));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_pending!(waiting.poll());
    // pushed to 9 s from the start: over the maximum
    cooldowns.extend(p.clone(), Instant::now() + Duration::from_secs(8));
    tokio::time::advance(Duration::from_secs(2)).await;
    let err = assert_ready!(waiting.poll()).unwrap_err();
    assert!(err.downcast_ref::<CoolingDown>().is_some(), "{err}");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn only_throttling_statuses_start_a_cool_down() {
    let layer = RetryAfterLayer::new();
    let cooldowns = layer.cooldowns().clone();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(layer);
    for status in [200u16, 301, 500] {
        assert_ready!(svc.poll_ready()).unwrap();
        let mut f = tokio_test::task::spawn(svc.call(req("a.example")));
        assert_pending!(f.poll(), "sent when polled");
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(
            Response::builder()
                .status(status)
                .header("retry-after", "10")
                .body("")
                .unwrap(),
        );
        let res = assert_ready!(f.poll()).unwrap();
        assert!(res.extensions().get::<RetryAfterHint>().is_some(), "hint on {status}");
        assert!(cooldowns.active().is_empty(), "{status} started a cool-down");
    }
    assert_ready!(svc.poll_ready()).unwrap();
    let mut f = tokio_test::task::spawn(svc.call(req("a.example")));
    assert_pending!(f.poll(), "sent when polled");
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .status(503)
            .header("retry-after", "1")
            .body("")
            .unwrap(),
    );
    assert_ready!(f.poll()).unwrap();
    assert_eq!(cooldowns.active().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through() {
    let (mut svc, mut handle) = mock::spawn_layer::<Req, Res, _>(RetryAfterLayer::new());
    assert_ready!(svc.poll_ready()).unwrap();
    let mut f = tokio_test::task::spawn(svc.call(req("a.example")));
    assert_pending!(f.poll(), "sent when polled");
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
    let err = assert_ready!(f.poll()).unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err}");
}
