//! The composed per-operation stack against the simulator: the layers work together.
#![cfg(feature = "simulator")]

use std::time::Duration;

use contentdownload::context::{OperationType, Provider};
use contentdownload::error::{Deferred, FailedOver};
use contentdownload::layers::rate_limit::{Quota, RateLimitConfig};
use contentdownload::service::{HttpService, Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use http::{Request, StatusCode};
use tower::ServiceExt;

fn get(url: &str, provider: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::get(url)
        .extension(Provider::new(provider))
        .body(Default::default())
        .unwrap()
}

fn stack(config: StackConfig) -> Stack {
    Stack::new(&config).unwrap()
}

async fn send(
    svc: &HttpService,
    req: Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<StatusCode, contentdownload::error::BoxError> {
    svc.clone().oneshot(req).await.map(|r| r.status())
}

#[tokio::test(start_paused = true)]
async fn a_download_retries_through_server_errors() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/f.pdf", [Reply::status(503), Reply::status(503), Reply::pdf(2000)]);
    let s = stack(StackConfig::default());
    let status = send(&s.service(OperationType::Download), get(&sim.url("/f.pdf"), "pub"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.count("/f.pdf"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_resolve_429_fails_over_after_one_request_and_throttling_is_learned() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/v2/*", [Reply::status(429)]);
    let s = stack(StackConfig::default());
    let err = send(
        &s.service(OperationType::Resolve),
        get(&sim.url("/v2/10.1/x"), "unpaywall"),
    )
    .await
    .unwrap_err();
    assert!(err.downcast_ref::<FailedOver>().is_some(), "{err}");
    assert_eq!(sim.count("/v2/*"), 1);
    let status = s
        .learner()
        .unwrap()
        .status("unpaywall", &sim.addr().to_string())
        .expect("the 429 was observed");
    assert_eq!(status.throttles, 1);
}

#[tokio::test(start_paused = true)]
async fn a_validate_429_is_deferred() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/head", [Reply::status(429)]);
    let s = stack(StackConfig::default());
    let err = send(&s.service(OperationType::Validate), get(&sim.url("/head"), "pub"))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Deferred>().is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn without_contextual_retry_a_resolve_429_is_retried() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/v2/x", [Reply::status(429), Reply::ok()]);
    let s = stack(StackConfig {
        contextual_retry: false,
        ..StackConfig::default()
    });
    let status = send(&s.service(OperationType::Resolve), get(&sim.url("/v2/x"), "unpaywall"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.count("/v2/x"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_configured_rate_spaces_requests_across_operations() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/r", [Reply::ok()]);
    let s = stack(StackConfig {
        rate_limit: RateLimitConfig::default().provider("crossref", Quota::new(2.0, 1)),
        ..StackConfig::default()
    });
    let start = tokio::time::Instant::now();
    for op in [
        OperationType::Resolve,
        OperationType::Download,
        OperationType::Resolve,
        OperationType::Extract,
        OperationType::Resolve,
    ] {
        send(&s.service(op), get(&sim.url("/r"), "crossref")).await.unwrap();
    }
    // 5 requests at 2/s with a burst of 1: the 5th leaves at 2 s
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1990) && elapsed < Duration::from_millis(2100),
        "{elapsed:?}"
    );
    let seen = sim.requests_to("/r");
    assert!(seen.windows(2).all(|w| w[1].at - w[0].at >= Duration::from_millis(490)));
}

#[tokio::test]
async fn metadata_operations_ask_for_compression_and_downloads_do_not() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/m", [Reply::ok()]);
    let s = stack(StackConfig::default());
    send(&s.service(OperationType::Resolve), get(&sim.url("/m"), "x"))
        .await
        .unwrap();
    send(&s.service(OperationType::Download), get(&sim.url("/m"), "x"))
        .await
        .unwrap();
    let seen = sim.requests_to("/m");
    assert!(seen[0].header("accept-encoding").is_some_and(|v| v.contains("gzip")));
    assert_eq!(seen[1].header("accept-encoding"), None);
}

/// The download service and the metadata services are built over different bottoms (the
/// metadata ones decompress): one stack hands out both, each with its own body.
#[tokio::test]
async fn a_gzipped_answer_is_decompressed_for_metadata_and_left_as_sent_for_downloads() {
    use http_body_util::BodyExt;
    // `{"doi":"10.1/x"}`, gzipped
    const GZIPPED: [u8; 36] = [
        31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 171, 86, 74, 201, 207, 84, 178, 82, 50, 52, 208, 51, 212, 175, 80, 170, 5, 0,
        28, 69, 60, 38, 16, 0, 0, 0,
    ];
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/g",
        [Reply::ok().header("content-encoding", "gzip").body(GZIPPED.to_vec())],
    );
    let s = stack(StackConfig::default());
    let body = |op| {
        let svc = s.service(op);
        let req = get(&sim.url("/g"), "x");
        async move {
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.into_body().collect().await.unwrap().to_bytes()
        }
    };
    assert_eq!(body(OperationType::Resolve).await, r#"{"doi":"10.1/x"}"#);
    assert_eq!(body(OperationType::Download).await, GZIPPED.as_slice());
    assert_eq!(body(OperationType::Extract).await, r#"{"doi":"10.1/x"}"#);
    assert_eq!(sim.count("/g"), 3);
}

#[tokio::test(start_paused = true)]
async fn attempts_are_recorded_and_an_empty_budget_is_reported() {
    use contentdownload::layers::retry::{BudgetConfig, RetryConfig};
    use contentdownload::layers::telemetry::{MemorySink, RecordWriter, RetryBudgetExhausted};
    let sim = Simulator::start().await.unwrap();
    sim.on("/flaky", [Reply::status(503), Reply::ok()]);
    sim.on("/down", [Reply::status(503)]);
    let sink = MemorySink::new();
    let writer = RecordWriter::spawn(sink.clone(), 64);
    let retry = RetryConfig {
        budget: BudgetConfig {
            enabled: true,
            ttl_secs: 10,
            min_retries_per_sec: 0,
            retry_ratio: 0.2,
        },
        ..RetryConfig::default()
    };
    let s = stack(StackConfig {
        retry,
        records: Some(writer.clone()),
        run_id: Some("run-7".into()),
        ..StackConfig::default()
    });
    // the budget starts empty: a 503 is handed back at once, marked for telemetry
    let res = s
        .service(OperationType::Download)
        .oneshot(get(&sim.url("/down"), "pub"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.extensions().get::<RetryBudgetExhausted>().is_some());
    drop(res);
    // five first attempts buy one retry
    sim.on("/r-ok", [Reply::ok()]);
    for _ in 0..5 {
        send(&s.service(OperationType::Download), get(&sim.url("/r-ok"), "other"))
            .await
            .unwrap();
    }
    let flaky = s
        .service(OperationType::Download)
        .oneshot(get(&sim.url("/flaky"), "other"))
        .await
        .unwrap();
    assert_eq!(flaky.status(), StatusCode::OK);
    drop(flaky);
    writer.flush().await.expect("records flushed");
    let records = sink.records();
    let flaky: Vec<_> = records.iter().filter(|r| r.url.ends_with("/flaky")).collect();
    assert_eq!(flaky.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.run_id.as_deref() == Some("run-7")));
}

/// Each redirect hop is its own attempt to its own partition: the origin redirects to a
/// second host that answers 429 (`Retry-After: 1`), then the PDF. The second host is
/// throttled and cooled, the origin is not, and the attempt records show every hop.
#[tokio::test(start_paused = true)]
async fn a_redirect_hop_is_its_own_partition_and_a_429_there_cools_that_host() {
    use contentdownload::context::PartitionKey;
    use contentdownload::layers::telemetry::{MemorySink, RecordWriter};
    let origin = Simulator::start().await.unwrap();
    let cdn = Simulator::start().await.unwrap();
    origin.on("/doi/x", [Reply::redirect(302, &cdn.url("/f.pdf"))]);
    cdn.on("/f.pdf", [Reply::status(429).retry_after_secs(1), Reply::pdf(2000)]);
    let (origin_host, cdn_host) = (origin.addr().to_string(), cdn.addr().to_string());
    let sink = MemorySink::new();
    let writer = RecordWriter::spawn(sink.clone(), 64);
    let s = stack(StackConfig {
        records: Some(writer.clone()),
        ..StackConfig::default()
    });
    let svc = s.service(OperationType::Download);
    let op = tokio::spawn(svc.clone().oneshot(get(&origin.url("/doi/x"), "doi")));

    // While the download waits to retry, the CDN (and only the CDN) cools down.
    let mut cooled = Vec::new();
    for _ in 0..500 {
        cooled = s.cooldowns().active();
        if !cooled.is_empty() || op.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cooled: Vec<PartitionKey> = cooled.into_iter().map(|(k, _)| k).collect();
    assert_eq!(cooled, [PartitionKey::new(cdn_host.as_str(), cdn_host.as_str())]);

    assert_eq!(op.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(origin.count("/doi/x"), 2);
    assert_eq!(cdn.count("/f.pdf"), 2);
    let learner = s.learner().unwrap();
    assert_eq!(
        learner
            .status(&cdn_host, &cdn_host)
            .expect("the CDN was seen")
            .throttles,
        1
    );
    assert_eq!(learner.status("doi", &origin_host).map_or(0, |st| st.throttles), 0);
    assert!(
        learner.status("doi", &cdn_host).is_none(),
        "the provider stayed on its host"
    );

    writer.flush().await.expect("records flushed");
    let hops: Vec<(String, String, Option<u16>)> = sink
        .records()
        .iter()
        .map(|r| {
            let host = r.url.split('/').nth(2).unwrap_or_default().to_owned();
            (host, r.provider.clone(), r.status)
        })
        .collect();
    let o = (origin_host.clone(), "doi".to_owned());
    let c = (cdn_host.clone(), cdn_host.clone());
    assert_eq!(
        hops,
        [
            (o.0.clone(), o.1.clone(), Some(302)),
            (c.0.clone(), c.1.clone(), Some(429)),
            (o.0.clone(), o.1.clone(), Some(302)),
            (c.0.clone(), c.1.clone(), Some(200)),
        ]
    );
    let records = sink.records();
    assert_eq!(records[1].retry_after_us, Some(1_000_000), "{records:?}");
    assert!(records[0].work_id.is_none() && records.iter().all(|r| r.operation == OperationType::Download));
}

/// For the per-host cap tests (a cap of 2 on `slow`): two requests reach `slow`, and while
/// a third waits for it, a request to `fast` goes through; the third has not arrived.
async fn two_in_and_a_third_waits(
    s: &Stack,
    svc: &HttpService,
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    slow: std::net::SocketAddr,
    fast: &Simulator,
    third_arrived: &str,
) {
    let bound = Duration::from_secs(10);
    for _ in 0..2 {
        tokio::time::timeout(bound, arrivals.recv())
            .await
            .expect("two reach the host");
    }
    let status = tokio::time::timeout(bound, send(svc, get(&fast.url("/ok"), "fast")))
        .await
        .expect("another host is not held up")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(arrivals.try_recv().is_err(), "{third_arrived}");
    assert_eq!(s.limiter().in_flight_to(&slow.to_string()), 2);
}

/// A request over the per-host cap waits (holding no global permit) while another host
/// proceeds; a loopback server holds the first host's responses until released.
#[tokio::test]
async fn the_per_host_cap_holds_a_third_request_while_another_host_proceeds() {
    use std::sync::Arc;
    use tokio::sync::{mpsc, Semaphore};

    async fn gated_server(gate: Arc<Semaphore>, arrived: mpsc::UnboundedSender<()>) -> std::net::SocketAddr {
        let app = axum::Router::new().fallback(move || {
            let (gate, arrived) = (gate.clone(), arrived.clone());
            async move {
                let _ = arrived.send(());
                let _permit = gate.acquire().await;
                "held"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
    let bound = Duration::from_secs(10);
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let slow = gated_server(gate.clone(), tx).await;
    let fast = Simulator::start().await.unwrap();
    fast.on("/ok", [Reply::ok()]);

    let s = stack(StackConfig {
        rate_limit: RateLimitConfig {
            default: Quota::new(1000.0, 100),
            max_in_flight: Some(3),
            max_per_host: Some(2),
            ..RateLimitConfig::default()
        },
        ..StackConfig::default()
    });
    let svc = s.service(OperationType::Resolve);
    let held: Vec<_> = (0..3)
        .map(|i| tokio::spawn(svc.clone().oneshot(get(&format!("http://{slow}/{i}"), "slow"))))
        .collect();
    // the third waits for the host, and holds no global permit: the other host proceeds
    two_in_and_a_third_waits(
        &s,
        &svc,
        &mut arrivals,
        slow,
        &fast,
        "a third request reached the capped host",
    )
    .await;
    assert!(held.iter().all(|h| !h.is_finished()));

    gate.add_permits(1);
    tokio::time::timeout(bound, arrivals.recv())
        .await
        .expect("the third is sent once a slot frees");
    gate.add_permits(2);
    for h in held {
        let res = tokio::time::timeout(bound, h).await.expect("bounded").unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(s.limiter().in_flight_to(&slow.to_string()), 0);
}

/// With `host_slot_with_response` (the runner's setting), a download counts against the
/// per-host cap until its body is read, not only until its head came: a response carries
/// its host's slot (`HostPermit`) until it is dropped. A
/// loopback server sends each head and a first chunk at once and the rest when released.
#[tokio::test]
async fn a_streaming_body_keeps_its_host_slot_until_the_response_is_dropped() {
    use std::sync::Arc;

    use contentdownload::layers::rate_limit::HostPermit;
    use http_body_util::BodyExt;
    use tokio::sync::{mpsc, Semaphore};

    let bound = Duration::from_secs(10);
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let app = {
        let gate = gate.clone();
        axum::Router::new().fallback(move || {
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                let _ = tx.send(());
                let chunks = futures_util::stream::unfold(0u8, move |i| {
                    let gate = gate.clone();
                    async move {
                        match i {
                            0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"first")), 1)),
                            1 => {
                                gate.acquire().await.ok()?.forget();
                                Some((Ok(bytes::Bytes::from_static(b"rest")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                axum::body::Body::from_stream(chunks)
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let fast = Simulator::start().await.unwrap();
    fast.on("/ok", [Reply::ok()]);

    let s = stack(StackConfig {
        rate_limit: RateLimitConfig {
            default: Quota::new(1000.0, 100),
            max_per_host: Some(2),
            host_slot_with_response: true,
            ..RateLimitConfig::default()
        },
        ..StackConfig::default()
    });
    let svc = s.service(OperationType::Download);
    // two downloads whose heads and first chunks are in, their bodies still streaming
    let mut streaming = Vec::new();
    for i in 0..2 {
        let mut res = tokio::time::timeout(bound, svc.clone().oneshot(get(&format!("http://{slow}/{i}"), "slow")))
            .await
            .expect("bounded")
            .unwrap();
        assert!(res.extensions().get::<HostPermit>().is_some());
        let frame = tokio::time::timeout(bound, res.body_mut().frame())
            .await
            .expect("bounded");
        assert!(frame.is_some());
        streaming.push(res);
    }
    let third = tokio::spawn(svc.clone().oneshot(get(&format!("http://{slow}/2"), "slow")));
    // the third waits for the host while both bodies stream; another host proceeds
    two_in_and_a_third_waits(
        &s,
        &svc,
        &mut arrivals,
        slow,
        &fast,
        "a third request reached the host during two bodies",
    )
    .await;
    // the first body ends and its response goes: the third is sent
    gate.add_permits(1);
    let first = streaming.remove(0);
    let rest = tokio::time::timeout(bound, first.into_body().collect())
        .await
        .expect("bounded")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"rest");
    tokio::time::timeout(bound, arrivals.recv())
        .await
        .expect("the third is sent once a body is done");
    gate.add_permits(2);
    let res = tokio::time::timeout(bound, third)
        .await
        .expect("bounded")
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(bound, res.into_body().collect())
        .await
        .expect("bounded");
    drop(streaming);
    assert_eq!(s.limiter().in_flight_to(&slow.to_string()), 0);
}
