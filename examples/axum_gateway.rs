//! An axum app whose handler calls an upstream API (the local simulator) through one
//! shared [`Stack`] service held in the router state: every request the gateway serves
//! shares the upstream's connection pool, rate limit, learner and cool-downs. The example
//! starts the gateway on 127.0.0.1, sends it a few requests itself and exits.
//!
//! ```sh
//! cargo run --example axum_gateway --features simulator
//! cargo run --example axum_gateway --no-default-features --features simulator   # the layers alone, no runner
//! ```

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use contentdownload::context::{OperationType, Provider};
use contentdownload::error::BoxError;
use contentdownload::service::{read_metadata, HttpClient, HttpConfig, HttpService, Stack, StackConfig};
use contentdownload::simulator::{Reply, Simulator};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

/// The router state: the upstream's base URL and the shared stack service (cheap to clone).
#[derive(Clone)]
struct Gateway {
    upstream: String,
    resolve: HttpService,
}

async fn paper(State(gw): State<Gateway>, Path(id): Path<String>) -> (StatusCode, String) {
    let req = match http::Request::get(format!("{}/works/{id}", gw.upstream))
        .extension(Provider::new("upstream"))
        .body(Full::default())
    {
        Ok(req) => req,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad work id {id:?}: {e}")),
    };
    match gw.resolve.oneshot(req).await {
        Ok(res) if res.status().is_success() => match res.into_body().collect().await {
            Ok(body) => (StatusCode::OK, String::from_utf8_lossy(&body.to_bytes()).into_owned()),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream body failed: {e}")),
        },
        Ok(res) => (StatusCode::BAD_GATEWAY, format!("upstream answered {}", res.status())),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream failed: {e}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let upstream = Simulator::start().await?;
    upstream.on(
        "/works/*",
        [
            Reply::status(503),
            Reply::json(&serde_json::json!({"title": "A paper", "oa": true})),
        ],
    );

    let stack = Stack::new(&StackConfig::default())?;
    let state = Gateway {
        upstream: upstream.url(""),
        resolve: stack.service(OperationType::Resolve),
    };
    let app = Router::new().route("/paper/{id}", get(paper)).with_state(state);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    println!("gateway listening on http://{addr}");

    let client = HttpClient::new(&HttpConfig::default())?;
    for id in ["W1", "W2", "W3"] {
        let req = http::Request::get(format!("http://{addr}/paper/{id}")).body(Full::default())?;
        let res = client.clone().oneshot(req).await?;
        let status = res.status();
        let body = read_metadata(res, 64 * 1024).await?;
        println!("gateway answered {id}: {status} {}", String::from_utf8_lossy(&body));
    }
    println!(
        "upstream saw {} requests (the 503 was retried by the stack)",
        upstream.count("/works/*")
    );

    let _ = stop.send(());
    server.await??;
    Ok(())
}
