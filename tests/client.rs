//! The shared client against the loopback simulator: pooling, User-Agent, redirects,
//! timeouts, body limits and streaming.
#![cfg(feature = "simulator")]

use std::time::Duration;

use bytes::Bytes;
use contentdownload::error::BoxError;
use contentdownload::service::{
    read_metadata, BodyTooLarge, HttpClient, HttpConfig, ReadTimeout, TooManyRedirects, UnsupportedRedirectScheme,
};
use contentdownload::simulator::{BodySpec, Reply, Simulator};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

fn client_with(cfg: HttpConfig) -> HttpClient {
    HttpClient::new(&cfg).expect("client builds")
}

fn client() -> HttpClient {
    client_with(HttpConfig::default())
}

async fn get(client: &HttpClient, url: &str) -> Result<Response<contentdownload::service::ResponseBody>, BoxError> {
    let req = Request::get(url).body(Full::<Bytes>::default())?;
    client.clone().oneshot(req).await
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/ok", [Reply::ok().body("hi")]);
    let client = client();
    for _ in 0..50 {
        let res = get(&client, &sim.url("/ok")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // the body must be read to the end for the connection to go back to the pool
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
    }
    assert_eq!(sim.count("/ok"), 50);
    assert_eq!(
        sim.connections(),
        1,
        "50 sequential requests should share one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_use_few_connections() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/ok", [Reply::ok().body("hi")]);
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let url = sim.url("/ok");
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let res = get(&client, &url).await.unwrap();
                res.into_body().collect().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sim.count("/ok"), 200);
    // hyper's pool races a new connect against an idle connection coming back, so a few
    // more than 8 can open; one connection per request would be 200.
    assert!(
        sim.connections() <= 24,
        "200 requests from 8 tasks opened {} connections",
        sim.connections()
    );
}

#[tokio::test]
async fn user_agent_with_mailto_reaches_the_server() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/ua", [Reply::ok()]);
    let client = client_with(HttpConfig {
        mailto: Some("harvest@example.org".into()),
        ..HttpConfig::default()
    });
    get(&client, &sim.url("/ua")).await.unwrap();
    let seen = sim.requests_to("/ua");
    assert_eq!(
        seen[0].header("user-agent"),
        Some(
            format!(
                "contentdownload/{} (+mailto:harvest@example.org)",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );

    // a caller's own User-Agent is left alone
    let req = Request::get(sim.url("/ua"))
        .header("user-agent", "mine/1.0")
        .body(Full::default())
        .unwrap();
    client.clone().oneshot(req).await.unwrap();
    assert_eq!(sim.requests_to("/ua")[1].header("user-agent"), Some("mine/1.0"));
}

#[tokio::test]
async fn a_bad_mailto_is_a_config_error_naming_the_field() {
    let err = HttpClient::new(&HttpConfig {
        mailto: Some("bad\naddress".into()),
        ..HttpConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("`mailto`"), "{err}");
}

#[tokio::test]
async fn redirect_chain_is_followed() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/r1", [Reply::redirect(301, "/r2")]);
    sim.on("/r2", [Reply::redirect(302, &sim.url("/r3"))]);
    sim.on("/r3", [Reply::redirect(307, "/final")]);
    sim.on("/final", [Reply::ok().body("landed")]);
    let res = get(&client(), &sim.url("/r1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"landed");
    for path in ["/r1", "/r2", "/r3", "/final"] {
        assert_eq!(sim.count(path), 1, "{path}");
    }
}

#[tokio::test]
async fn an_eleven_hop_loop_is_refused() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/loop", [Reply::redirect(302, "/loop")]);
    let err = get(&client(), &sim.url("/loop")).await.unwrap_err();
    let too_many = err
        .downcast_ref::<TooManyRedirects>()
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    assert_eq!(too_many.max, 10);
    assert!(err.to_string().contains("too many redirects"));
    // the first request and 10 followed hops; the 11th hop is not taken
    assert_eq!(sim.count("/loop"), 11);
}

#[tokio::test]
async fn ten_hops_are_allowed() {
    let sim = Simulator::start().await.unwrap();
    for i in 0..10 {
        sim.on(&format!("/h{i}"), [Reply::redirect(302, &format!("/h{}", i + 1))]);
    }
    sim.on("/h10", [Reply::ok()]);
    let res = get(&client(), &sim.url("/h0")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn redirects_to_other_schemes_are_refused() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/ftp", [Reply::redirect(302, "ftp://127.0.0.1/secret")]);
    sim.on("/file", [Reply::redirect(302, "file:///etc/passwd")]);
    for (path, scheme) in [("/ftp", "ftp"), ("/file", "file")] {
        let err = get(&client(), &sim.url(path)).await.unwrap_err();
        let refused = err
            .downcast_ref::<UnsupportedRedirectScheme>()
            .unwrap_or_else(|| panic!("{path}: unexpected error: {err}"));
        assert_eq!(refused.scheme, scheme);
    }
}

#[tokio::test]
async fn credentials_are_not_forwarded_to_another_origin() {
    let a = Simulator::start().await.unwrap();
    let b = Simulator::start().await.unwrap();
    a.on("/go", [Reply::redirect(302, &b.url("/land"))]);
    a.on("/same", [Reply::redirect(302, "/here")]);
    a.on("/here", [Reply::ok()]);
    b.on("/land", [Reply::ok()]);
    let client = client();
    for path in ["/go", "/same"] {
        let req = Request::get(a.url(path))
            .header("authorization", "Bearer s3cret")
            .body(Full::default())
            .unwrap();
        assert_eq!(client.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(a.requests_to("/go")[0].header("authorization"), Some("Bearer s3cret"));
    assert_eq!(b.requests_to("/land")[0].header("authorization"), None);
    assert_eq!(a.requests_to("/here")[0].header("authorization"), Some("Bearer s3cret"));
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_fires() {
    let listener = contentdownload::simulator::UnresponsiveListener::bind().unwrap();
    let url = format!("http://{}/", listener.addr().unwrap());
    let started = tokio::time::Instant::now();
    let err = get(&client(), &url).await.unwrap_err();
    // named (host:port and cause), with hyper-util's error as its source
    let named = err
        .downcast_ref::<contentdownload::service::ConnectFailed>()
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    let client_err = std::error::Error::source(named)
        .and_then(|s| s.downcast_ref::<hyper_util::client::legacy::Error>())
        .unwrap_or_else(|| panic!("unexpected source: {named:?}"));
    assert!(client_err.is_connect(), "{client_err:?}");
    assert_eq!(named.cause, contentdownload::service::ConnectCause::TimedOut, "{named}");
    assert_eq!(named.target, listener.addr().unwrap().to_string());
    // the paused clock jumped straight to the 10 s connect timeout
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn read_timeout_fires_when_the_head_never_comes() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/stall", [Reply::ok().stall()]);
    let started = tokio::time::Instant::now();
    let err = get(&client(), &sim.url("/stall")).await.unwrap_err();
    let timeout = err
        .downcast_ref::<ReadTimeout>()
        .unwrap_or_else(|| panic!("unexpected error: {err}"));
    assert_eq!(timeout.after, Duration::from_secs(60));
    assert!(started.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn read_timeout_fires_when_the_body_goes_idle() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/idle", [Reply::ok().body_spec(BodySpec::StallAfter { sent: 100_000 })]);
    let client = client_with(HttpConfig {
        read_timeout_ms: 5_000,
        ..HttpConfig::default()
    });
    let res = get(&client, &sim.url("/idle")).await.unwrap();
    let mut body = res.into_body();
    let mut received = 0usize;
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.into_data().map_or(0, |d| d.len()),
            Some(Err(e)) => break e,
            None => panic!("the body ended instead of timing out"),
        }
    };
    assert_eq!(received, 100_000);
    assert_eq!(
        err.downcast_ref::<ReadTimeout>(),
        Some(&ReadTimeout {
            after: Duration::from_secs(5)
        })
    );
}

#[tokio::test]
async fn a_metadata_body_over_the_limit_is_refused() {
    let sim = Simulator::start().await.unwrap();
    sim.on("/big", [Reply::ok().stream(2 * 1024 * 1024)]);
    sim.on("/small", [Reply::ok().body("{\"ok\":true}")]);
    let client = client_with(HttpConfig {
        max_metadata_body_bytes: 1024 * 1024,
        ..HttpConfig::default()
    });
    let res = get(&client, &sim.url("/big")).await.unwrap();
    let err = read_metadata(res, client.metadata_limit()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<BodyTooLarge>(),
        Some(&BodyTooLarge { limit: 1024 * 1024 })
    );
    let res = get(&client, &sim.url("/small")).await.unwrap();
    assert_eq!(
        &read_metadata(res, client.metadata_limit()).await.unwrap()[..],
        b"{\"ok\":true}"
    );
}

#[tokio::test]
async fn a_metadata_body_without_length_is_cut_at_the_limit() {
    // no Content-Length: the limit must be enforced while reading
    let chunks =
        (0..64).map(|_| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b'a'; 1024]))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let err = read_metadata(Response::new(body), 10 * 1024).await.unwrap_err();
    assert!(err.is::<BodyTooLarge>(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_body_streams_without_buffering() {
    const LEN: u64 = 100 * 1024 * 1024;
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/huge",
        [Reply::ok().header("content-type", "application/pdf").stream(LEN)],
    );
    let res = get(&client(), &sim.url("/huge")).await.unwrap();
    assert_eq!(res.headers()["content-length"], LEN.to_string().as_str());
    let mut body = res.into_body();
    let mut received = 0u64;
    let mut largest_frame = 0usize;
    let mut sent_at_first_frame = None;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        if sent_at_first_frame.is_none() {
            sent_at_first_frame = Some(sim.bytes_sent());
        }
        largest_frame = largest_frame.max(data.len());
        received += data.len() as u64;
    }
    assert_eq!(received, LEN);
    // The first frame reached us while the server had produced only a small part of the
    // body: nothing between the socket and the caller waited for the whole of it.
    let sent = sent_at_first_frame.unwrap();
    assert!(
        sent < LEN / 4,
        "server had sent {sent} bytes before the first frame arrived"
    );
    assert!(largest_frame <= 1024 * 1024, "a frame of {largest_frame} bytes");
}
