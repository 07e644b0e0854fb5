//! The telemetry layer against the loopback simulator, observed through OpenTelemetry's
//! in-memory exporters: span names and attributes, redaction, the resend count, metric
//! values after a scripted sequence, and attempt records through JSONL and CSV.
#![cfg(feature = "simulator")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use contentdownload::context::{
    AttemptNumber, CooldownWait, OperationType, PartitionKey, Provider, RateLimitWait, RequestContextExt, WorkId,
};
use contentdownload::error::{BoxError, CoolingDown, Deferred, FailedOver};
use contentdownload::layers::telemetry::{
    names, otel, AttemptRecord, CsvSink, JsonlSink, MemorySink, RecordWriter, RetryBudgetExhausted, TelemetryLayer,
    TelemetryMetrics,
};
use contentdownload::service::{HttpClient, HttpConfig, ResponseBody};
use contentdownload::simulator::{Reply, Simulator};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

type Req = Request<Full<Bytes>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A tiny stand-in for the retry layer (built elsewhere): retries 429 and 5xx up to `max`
/// attempts, sets `AttemptNumber` on every attempt, records its decision on the current
/// (operation) span, ends a throttled Validate as `Deferred` and a throttled Resolve as
/// `FailedOver`, and marks the response when its shared budget is empty.
#[derive(Clone)]
struct TinyRetry<S> {
    inner: S,
    max: u32,
    budget: Arc<AtomicU32>,
}

impl<S> TinyRetry<S> {
    fn layer(max: u32, budget: u32) -> impl Layer<S, Service = TinyRetry<S>> + Clone {
        let budget = Arc::new(AtomicU32::new(budget));
        tower::layer::layer_fn(move |inner| TinyRetry {
            inner,
            max,
            budget: Arc::clone(&budget),
        })
    }
}

impl<S, B> Service<Req> for TinyRetry<S>
where
    S: Service<Req, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFut<Response<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = self.inner.clone();
        let (max, budget) = (self.max, Arc::clone(&self.budget));
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let op = parts.extensions.get::<OperationType>().copied().unwrap_or_default();
            let decide = |d: &str| {
                tracing::Span::current().record("contentdownload.retry.decision", d);
            };
            for attempt in 1..=max {
                let mut req = Request::from_parts(parts.clone(), body.clone());
                req.extensions_mut().insert(AttemptNumber(attempt));
                let result = inner.ready().await?.call(req).await;
                let status = match &result {
                    Ok(res) if res.status() == 429 || res.status().is_server_error() => res.status(),
                    _ => {
                        decide(if result.is_ok() { "done" } else { "fail" });
                        return result;
                    }
                };
                if attempt == max && status == 429 && op == OperationType::Validate {
                    decide("defer");
                    return Err(Box::new(Deferred {
                        operation: op,
                        status: Some(status),
                        retry_after: None,
                        attempts: attempt,
                        reason: "throttled (429)".into(),
                    }));
                }
                if attempt == max && status == 429 && op == OperationType::Resolve {
                    decide("failover");
                    return Err(Box::new(FailedOver {
                        operation: op,
                        status: Some(status),
                        retry_after: None,
                        attempts: attempt,
                        reason: "throttled (429)".into(),
                    }));
                }
                let no_budget = budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_err();
                if attempt == max || no_budget {
                    decide("fail");
                    let mut res = result?;
                    if no_budget {
                        res.extensions_mut().insert(RetryBudgetExhausted);
                    }
                    return Ok(res);
                }
                decide("retry");
            }
            Err("TinyRetry needs max >= 1".into())
        })
    }
}

/// What the test asks the stand-in lower layers (cool-down, rate limiter) to report.
#[derive(Clone, Copy, Debug)]
enum Inject {
    Waited(Duration),
    Refused,
}

/// The client, plus what the lower layers would attach to a response.
fn client_with_injections(
) -> impl Service<Req, Response = Response<ResponseBody>, Error = BoxError, Future = BoxFut<Response<ResponseBody>>>
       + Clone
       + Send
       + 'static {
    let client = HttpClient::new(&HttpConfig::default()).expect("client builds");
    tower::service_fn(move |mut req: Req| {
        let client = client.clone();
        let fut: BoxFut<Response<ResponseBody>> = Box::pin(async move {
            let inject = req.extensions_mut().remove::<Inject>();
            if let Some(Inject::Refused) = inject {
                return Err(Box::new(CoolingDown {
                    partition: PartitionKey::compute(&req),
                    until: tokio::time::Instant::now() + Duration::from_secs(30),
                }) as BoxError);
            }
            let mut res = client.oneshot(req).await?;
            res.extensions_mut().insert(RateLimitWait(Duration::from_millis(7)));
            if let Some(Inject::Waited(d)) = inject {
                res.extensions_mut().insert(CooldownWait(d));
            }
            Ok(res)
        });
        fut
    })
}

fn request(url: &str, op: OperationType) -> Req {
    let mut req = Request::get(url).body(Full::default()).expect("valid request");
    req.set_operation(op);
    req
}

async fn drain<B>(res: Response<B>) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.expect("body reads").to_bytes()
}

fn last_attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .rev()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn str_attr(span: &SpanData, key: &str) -> Option<String> {
    last_attr(span, key).map(|v| v.as_str().into_owned())
}

fn int_attr(span: &SpanData, key: &str) -> Option<i64> {
    match last_attr(span, key) {
        None => None,
        Some(Value::I64(i)) => Some(*i),
        Some(other) => panic!("{key} should be an integer, is {other:?}"),
    }
}

/// The span exporter. One global subscriber for the whole test binary: tracing caches a
/// callsite's interest, and per-test `set_default` subscribers race on that cache when tests
/// run in parallel. Tests tell their spans apart by the port of their own server.
fn span_exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static SPANS: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    SPANS.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(otel::tracing_layer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        (exporter, provider)
    })
}

/// The finished spans of requests whose `url.full` starts with `prefix`. The exporter keeps
/// the spans of every test in the binary, and the kernel may hand a port that an earlier
/// test's server has closed to a later one, so tests filter on port *and* a path that no
/// other test uses.
fn finished_spans(prefix: &str) -> Vec<SpanData> {
    let (exporter, provider) = span_exporter();
    provider.force_flush().unwrap();
    let all = exporter.get_finished_spans().unwrap();
    all.into_iter()
        .filter(|s| str_attr(s, "url.full").is_some_and(|u| u.starts_with(prefix)))
        .collect()
}

#[tokio::test]
async fn spans_carry_semantic_convention_attributes_redaction_and_the_resend_count() {
    span_exporter();
    let sim = Simulator::start().await.unwrap();
    sim.on("/v2/10.1/x", [Reply::status(503), Reply::ok().body("%PDF-1.7 tiny")]);
    let stack = ServiceBuilder::new()
        .layer(TelemetryLayer::operation())
        .layer(TinyRetry::layer(3, 10))
        .layer(TelemetryLayer::attempt())
        .service(client_with_injections());

    let url = format!(
        "{}?email=me@example.org&API_KEY=s3cr3tvalue&page=2",
        sim.url("/v2/10.1/x")
    );
    let mut req = request(&url, OperationType::Resolve);
    req.set_provider(Provider::new("unpaywall"));
    req.set_work_id(WorkId::new("W2741809807"));
    let res = stack.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(&drain(res).await[..], b"%PDF-1.7 tiny");
    assert_eq!(sim.count("/v2/10.1/x"), 2);

    let port = i64::from(sim.addr().port());
    let spans = finished_spans(&sim.url("/v2/10.1/x"));
    assert_eq!(spans.len(), 3, "one operation span and two attempt spans: {spans:#?}");
    let op = spans
        .iter()
        .find(|s| s.name == "resolve")
        .expect("an operation span named after the operation");
    let mut attempts: Vec<&SpanData> = spans.iter().filter(|s| s.name == "GET").collect();
    attempts.sort_by_key(|s| int_attr(s, "http.request.resend_count").unwrap_or(0));
    assert_eq!(attempts.len(), 2);

    for span in spans.iter() {
        let url_full = str_attr(span, "url.full").expect("url.full");
        assert!(
            url_full.starts_with(&format!("http://127.0.0.1:{port}/v2/10.1/x?")),
            "{url_full}"
        );
        assert!(
            url_full.ends_with("?email=REDACTED&API_KEY=REDACTED&page=2"),
            "{url_full}"
        );
        for kv in &span.attributes {
            let v = kv.value.as_str();
            assert!(
                !v.contains("s3cr3tvalue") && !v.contains("me@example.org"),
                "secret leaked in {kv:?}"
            );
        }
        assert_eq!(str_attr(span, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(str_attr(span, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(int_attr(span, "server.port"), Some(port));
        assert_eq!(str_attr(span, "contentdownload.operation").as_deref(), Some("resolve"));
        assert_eq!(str_attr(span, "contentdownload.provider").as_deref(), Some("unpaywall"));
        assert_eq!(
            str_attr(span, "contentdownload.work_id").as_deref(),
            Some("W2741809807")
        );
    }

    // attempts: client spans, children of the operation span
    for span in &attempts {
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.parent_span_id, op.span_context.span_id());
        assert_eq!(int_attr(span, "contentdownload.ratelimit.wait_ms"), Some(7));
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(int_attr(first, "http.request.resend_count"), None);
    assert_eq!(int_attr(first, "http.response.status_code"), Some(503));
    assert_eq!(str_attr(first, "error.type").as_deref(), Some("503"));
    assert_eq!(int_attr(second, "http.request.resend_count"), Some(1));
    assert_eq!(int_attr(second, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(second, "error.type"), None);
    assert_eq!(int_attr(second, "http.response.body.size"), Some(13));

    // the operation span: the final status, and the retry layer's decision
    assert_eq!(int_attr(op, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(op, "contentdownload.retry.decision").as_deref(), Some("done"));
    assert!(op
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "contentdownload.retry.decision" && kv.value.as_str() == "retry"));
    assert_eq!(int_attr(op, "http.request.resend_count"), None);
}

/// The learning layer below the attempt layer records the partition's rate after each
/// response on the attempt span; its `LearnedRate` extension is on the response that
/// changed the rate only.
#[tokio::test]
async fn the_attempt_span_carries_the_learned_rate_and_the_changing_response_the_extension() {
    use contentdownload::layers::learning::{LearnedRate, Learner, LearningPolicy, ProviderLearningLayer};
    use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};

    span_exporter();
    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/learned-rate-on-the-span",
        [Reply::status(429), Reply::ok().body("ok")],
    );
    let limiter = RateLimiter::new(RateLimitConfig {
        default: Quota::new(10.0, 10),
        ..RateLimitConfig::default()
    })
    .unwrap();
    let learner = Learner::new(limiter, LearningPolicy::default()).unwrap();
    let stack = ServiceBuilder::new()
        .layer(TelemetryLayer::attempt())
        .layer(ProviderLearningLayer::new(learner.clone()))
        .service(HttpClient::new(&HttpConfig::default()).unwrap());
    let url = sim.url("/learned-rate-on-the-span");

    let throttled = stack
        .clone()
        .oneshot(request(&url, OperationType::Download))
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let lowered = throttled
        .extensions()
        .get::<LearnedRate>()
        .copied()
        .expect("the 429 lowered the rate");
    assert!(lowered.0 < 10.0, "{lowered:?}");
    drain(throttled).await;
    let ok = stack.oneshot(request(&url, OperationType::Download)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.extensions().get::<LearnedRate>(),
        None,
        "one success changes no rate"
    );
    drain(ok).await;

    let mut spans = finished_spans(&url);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    spans.sort_by_key(|s| s.start_time);
    for span in &spans {
        match last_attr(span, "contentdownload.learning.rate") {
            Some(Value::F64(rate)) => assert_eq!(*rate, lowered.0, "{span:#?}"),
            other => panic!("contentdownload.learning.rate should be the rate, is {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_error_sets_error_type_and_span_status() {
    span_exporter();
    // a port bound but not listening (so no other test can take it): a connect error
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let url = format!("http://{addr}/an-error-sets-error-type");
    let stack = TelemetryLayer::standalone().layer(client_with_injections());
    let err = stack.oneshot(request(&url, OperationType::Download)).await.unwrap_err();
    assert!(
        err.downcast_ref::<contentdownload::service::ConnectFailed>().is_some(),
        "{err}"
    );

    let spans = finished_spans(&url);
    assert_eq!(spans.len(), 1);
    assert_eq!(str_attr(&spans[0], "error.type").as_deref(), Some("connect_error"));
    assert_eq!(int_attr(&spans[0], "http.response.status_code"), None);
    assert!(
        matches!(spans[0].status, opentelemetry::trace::Status::Error { .. }),
        "{:?}",
        spans[0].status
    );
}

fn counter(metrics: &ResourceMetrics, name: &str, filter: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for metric in metrics
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .filter(|m| m.name() == name)
    {
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("{name} should be a u64 sum");
        };
        for point in sum.data_points() {
            if matches_filter(point.attributes(), filter) {
                total += point.value();
            }
        }
    }
    total
}

fn matches_filter<'a>(attrs: impl Iterator<Item = &'a KeyValue>, filter: &[(&str, &str)]) -> bool {
    let attrs: Vec<&KeyValue> = attrs.collect();
    filter
        .iter()
        .all(|(k, v)| attrs.iter().any(|kv| kv.key.as_str() == *k && kv.value.as_str() == *v))
}

/// (count, sum) of the duration histogram's points matching `filter`.
fn durations(metrics: &ResourceMetrics, filter: &[(&str, &str)]) -> (u64, f64) {
    let mut out = (0, 0.0);
    for metric in metrics.scope_metrics().flat_map(|s| s.metrics()) {
        if metric.name() != names::REQUEST_DURATION {
            continue;
        }
        assert_eq!(metric.unit(), "s");
        let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
            panic!("the duration should be an f64 histogram");
        };
        for point in h.data_points() {
            if matches_filter(point.attributes(), filter) {
                out.0 += point.count();
                out.1 += point.sum();
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn metrics_and_records_after_a_scripted_sequence() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let metrics = TelemetryMetrics::new(&provider.meter("test"));
    metrics.register_rate_source(|| vec![(PartitionKey::new("crossref", "api.crossref.org"), 4.5)]);
    let sink = MemorySink::new();
    let writer = RecordWriter::spawn(sink.clone(), 64);

    let sim = Simulator::start().await.unwrap();
    sim.on(
        "/throttled",
        [
            Reply::status(429),
            Reply::status(429),
            Reply::ok().delay(Duration::from_millis(300)).body("ok"),
        ],
    );
    sim.on("/validate", [Reply::status(429)]);
    sim.on("/resolve", [Reply::status(429)]);
    sim.on("/budget", [Reply::status(503)]);
    sim.on("/cool", [Reply::ok().body("c")]);

    let stack = |budget: u32| {
        ServiceBuilder::new()
            .layer(TelemetryLayer::operation().metrics(metrics.clone()))
            .layer(TinyRetry::layer(3, budget))
            .layer(
                TelemetryLayer::attempt()
                    .metrics(metrics.clone())
                    .records(writer.clone())
                    .run_id("run-7"),
            )
            .service(client_with_injections())
    };

    // 429, 429, 200 (after 300 ms): 3 attempts, 2 retries, 2 throttled
    let res = stack(10)
        .oneshot(request(&sim.url("/throttled"), OperationType::Download))
        .await
        .unwrap();
    assert_eq!(&drain(res).await[..], b"ok");
    // Validate meets 429 three times: deferred
    let err = stack(10)
        .oneshot(request(&sim.url("/validate"), OperationType::Validate))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Deferred>().is_some(), "{err}");
    // Resolve meets 429 three times: failed over
    let err = stack(10)
        .oneshot(request(&sim.url("/resolve"), OperationType::Resolve))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<FailedOver>().is_some(), "{err}");
    // a 503 with an empty retry budget: one attempt, budget exhausted
    let res = stack(0)
        .oneshot(request(&sim.url("/budget"), OperationType::Extract))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    drain(res).await;
    // one attempt held 250 ms by a cool-down, one refused by it
    let mut req = request(&sim.url("/cool"), OperationType::Download);
    req.extensions_mut().insert(Inject::Waited(Duration::from_millis(250)));
    drain(stack(10).oneshot(req).await.unwrap()).await;
    let mut req = request(&sim.url("/cool"), OperationType::Download);
    req.extensions_mut().insert(Inject::Refused);
    let err = stack(10).oneshot(req).await.unwrap_err();
    assert!(err.downcast_ref::<CoolingDown>().is_some(), "{err}");

    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let m = all.last().expect("metrics were exported");
    assert_eq!(counter(m, names::ATTEMPTS, &[]), 3 + 3 + 3 + 1 + 2);
    assert_eq!(counter(m, names::RETRIES, &[]), 2 + 2 + 2);
    assert_eq!(counter(m, names::THROTTLED, &[]), 2 + 3 + 3);
    assert_eq!(
        counter(m, names::THROTTLED, &[("contentdownload.operation", "validate")]),
        3
    );
    assert_eq!(
        counter(m, names::DEFERRALS, &[("contentdownload.operation", "validate")]),
        1
    );
    assert_eq!(counter(m, names::DEFERRALS, &[]), 1);
    assert_eq!(
        counter(m, names::FAILOVERS, &[("contentdownload.operation", "resolve")]),
        1
    );
    assert_eq!(counter(m, names::FAILOVERS, &[]), 1);
    assert_eq!(
        counter(m, names::BUDGET_EXHAUSTED, &[("contentdownload.operation", "extract")]),
        1
    );
    assert_eq!(counter(m, names::COOLDOWN_WAITS, &[("outcome", "waited")]), 1);
    assert_eq!(counter(m, names::COOLDOWN_WAITS, &[("outcome", "refused")]), 1);
    assert_eq!(counter(m, names::RECORDS_DROPPED, &[]), 0);

    // every attempt measured once; the 429s under their status; the slow 200 took >= 300 ms
    let (count, _) = durations(m, &[]);
    assert_eq!(count, 12);
    let throttled: u64 = durations(m, &[("error.type", "429")]).0;
    assert_eq!(throttled, 8);
    let port = sim.addr().port().to_string();
    let semconv = [
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
    ];
    let (ok_count, ok_sum) = durations(m, &semconv);
    assert_eq!(ok_count, 12, "every attempt carries the semantic-convention attributes");
    assert!(ok_sum >= 0.3, "the delayed reply took {ok_sum}s in total");

    // the learned-rate gauge, from the registered source
    let gauge = m
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .find(|metric| metric.name() == names::LEARNED_RATE)
        .expect("the learned-rate gauge");
    let AggregatedMetrics::F64(MetricData::Gauge(g)) = gauge.data() else {
        panic!("the learned rate should be an f64 gauge");
    };
    let point = g.data_points().next().expect("one partition");
    assert_eq!(point.value(), 4.5);
    assert!(matches_filter(
        point.attributes(),
        &[("contentdownload.provider", "crossref")]
    ));

    // one record per attempt
    writer.flush().await.unwrap();
    let records = sink.records();
    assert_eq!(records.len(), 12);
    let throttled: Vec<&AttemptRecord> = records.iter().filter(|r| r.url.ends_with("/throttled")).collect();
    assert_eq!(throttled.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(throttled[0].reason.as_deref(), Some("429"));
    let ok = throttled[2];
    assert_eq!((ok.status, ok.reason.as_deref(), ok.bytes), (Some(200), None, 2));
    assert!(ok.elapsed_us >= 300_000, "{ok:?}");
    assert!(
        ok.head_us.unwrap() >= 300_000 && ok.ttfb_us.unwrap() >= ok.head_us.unwrap(),
        "{ok:?}"
    );
    assert_eq!(ok.ratelimit_wait_us, Some(7_000));
    assert_eq!(ok.run_id.as_deref(), Some("run-7"));
    let refused = records
        .iter()
        .find(|r| r.status.is_none())
        .expect("the refused attempt");
    assert_eq!(refused.reason.as_deref(), Some("cooling_down"));
    let waited = records
        .iter()
        .find(|r| r.cooldown_wait_us.is_some())
        .expect("the held attempt");
    assert_eq!(waited.cooldown_wait_us, Some(250_000));
    writer.close().await.unwrap();
}

#[tokio::test]
async fn records_round_trip_through_jsonl_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl_path = dir.path().join("attempts.jsonl");
    let csv_path = dir.path().join("attempts.csv");
    let writer = RecordWriter::spawn(JsonlSink::create(&jsonl_path).unwrap(), 16);

    let sim = Simulator::start().await.unwrap();
    sim.on("/flaky", [Reply::status(500), Reply::ok().body("0123456789")]);
    let stack = ServiceBuilder::new()
        .layer(TinyRetry::layer(3, 10))
        .layer(TelemetryLayer::attempt().records(writer.clone()).run_id("rt"))
        .service(client_with_injections());
    let mut req = request(
        &format!("{}?mailto=a@b.org", sim.url("/flaky")),
        OperationType::Download,
    );
    req.set_work_id(WorkId::new("W1, \"quoted\""));
    drain(stack.oneshot(req).await.unwrap()).await;
    writer.close().await.unwrap();

    let text = std::fs::read_to_string(&jsonl_path).unwrap();
    let from_jsonl: Vec<AttemptRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_jsonl.len(), 2);
    assert_eq!(from_jsonl[0].status, Some(500));
    assert_eq!(from_jsonl[1].bytes, 10);
    assert!(from_jsonl
        .iter()
        .all(|r| r.url.ends_with("/flaky?mailto=REDACTED") && !text.contains("a@b.org")));
    assert!(from_jsonl
        .iter()
        .all(|r| r.schema_version == 1 && r.work_id.as_deref() == Some("W1, \"quoted\"")));

    let csv_writer = RecordWriter::spawn(CsvSink::create(&csv_path).unwrap(), 16);
    for r in &from_jsonl {
        assert!(csv_writer.try_write(r.clone()));
    }
    csv_writer.close().await.unwrap();
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let from_csv: Vec<AttemptRecord> = reader.deserialize().collect::<Result<_, _>>().unwrap();
    assert_eq!(from_csv, from_jsonl);
}

#[tokio::test]
async fn a_body_dropped_early_is_reported_with_what_was_read() {
    let sink = MemorySink::new();
    let writer = RecordWriter::spawn(sink.clone(), 16);
    let sim = Simulator::start().await.unwrap();
    sim.on("/big", [Reply::ok().stream(4 << 20)]);
    let stack = TelemetryLayer::attempt()
        .records(writer.clone())
        .layer(client_with_injections());
    let res = stack
        .oneshot(request(&sim.url("/big"), OperationType::Validate))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    let read = first.data_ref().map_or(0, |d| d.len()) as u64;
    assert!(read > 0);
    drop(body);
    writer.flush().await.unwrap();
    let records = sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason.as_deref(), Some("body_dropped"));
    assert_eq!(records[0].bytes, read);
    assert!(records[0].ttfb_us.is_some());
}

#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_exports_spans_and_metrics_over_http() {
    use contentdownload::layers::telemetry::otel::otlp::{self, OtlpConfig};
    use opentelemetry::trace::{Span as _, Tracer as _};

    let sim = Simulator::start().await.unwrap();
    sim.on("/v1/*", [Reply::ok()]);
    let endpoint = sim.url("");
    let bad = otlp::init(&OtlpConfig {
        endpoint: Some("not a url".into()),
        ..OtlpConfig::default()
    });
    assert!(bad.is_err(), "an invalid endpoint is refused");
    // Building works inside the runtime (as in an async main) ...
    let guard = otlp::init(&OtlpConfig {
        endpoint: Some(endpoint),
        service_name: "telemetry-test".into(),
        metrics_interval: Duration::from_secs(3600),
    })
    .expect("exporters build");
    // ... but shutting down waits for the exports: keep that off the runtime's threads.
    let exported = tokio::task::spawn_blocking(move || {
        guard
            .metrics()
            .register_rate_source(|| vec![(PartitionKey::new("crossref", "api.crossref.org"), 2.0)]);
        let mut span = guard.tracer().start("otlp-test-span");
        span.end();
        guard.shutdown()
    })
    .await
    .unwrap();
    exported.expect("spans and metrics were accepted");
    let traces = sim.requests_to("/v1/traces");
    let metrics = sim.requests_to("/v1/metrics");
    assert_eq!((traces.len(), metrics.len()), (1, 1), "{:?}", sim.requests());
    assert_eq!(traces[0].header("content-type"), Some("application/x-protobuf"));
    assert!(traces[0]
        .body
        .windows(b"otlp-test-span".len())
        .any(|w| w == b"otlp-test-span"));
    assert!(metrics[0]
        .body
        .windows(names::LEARNED_RATE.len())
        .any(|w| w == names::LEARNED_RATE.as_bytes()));
}
