//! The shared client over TLS, against an HTTPS server on 127.0.0.1 whose certificates are
//! made for each test by a throw-away CA (rcgen): verification on by default, the loud
//! escape hatch, extra trusted roots from PEM files, host-name checks, and HTTP/2 or
//! HTTP/1.1 chosen by ALPN.
#![cfg(feature = "simulator")]

use std::convert::Infallible;
use std::error::Error as StdError;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use contentdownload::error::BoxError;
use contentdownload::service::{ConfigError, HttpClient, HttpConfig, ResponseBody};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::CertificateError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// A test CA and a leaf certificate it signed for some names.
struct Pki {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: PrivatePkcs8KeyDer<'static>,
}

fn pki(leaf_names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "contentdownload test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let names: Vec<String> = leaf_names.iter().map(|n| n.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).unwrap();
    leaf_params.distinguished_name.push(DnType::CommonName, leaf_names[0]);
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
    }
}

/// An HTTPS server on 127.0.0.1 offering `alpn`; it answers every request with the HTTP
/// version it saw. Dropping it aborts the accept loop and every connection.
struct TlsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    async fn start(pki: &Pki, alpn: &[&[u8]]) -> TlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.leaf.clone()], PrivateKeyDer::Pkcs8(pki.leaf_key.clone_key()))
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // owned by the accept loop: aborting it drops the set, which aborts every connection
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // a client that rejects our certificate ends the handshake: nothing to serve
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                // reap finished connections so the set stays small
                while connections.try_join_next().is_some() {}
            }
        });
        TlsServer { addr, task }
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/hello", self.addr.port())
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

async fn get(client: &HttpClient, url: &str) -> Result<Response<ResponseBody>, BoxError> {
    let req = Request::get(url).body(Full::<Bytes>::default())?;
    client.clone().oneshot(req).await
}

/// The rustls error somewhere in the chain. `io::Error::source` skips the error it wraps
/// (it returns that error's own source), and hyper-rustls wraps tokio-rustls's `io::Error`
/// in another one, so an `io::Error` is looked into with `get_ref` instead.
fn rustls_error(err: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut current = Some(err);
    for _ in 0..32 {
        let e = current?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        current = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Every message of the chain, joined: what a user sees with `{:#}`-style reporting.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current.filter(|_| parts.len() < 32) {
        parts.push(e.to_string());
        current = e.source();
    }
    parts.join(": ")
}

async fn body_text(res: Response<ResponseBody>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn verification_is_on_by_default_and_rejects_an_unknown_issuer() {
    let pki = pki(&["localhost", "127.0.0.1"]);
    let server = TlsServer::start(&pki, &[b"h2", b"http/1.1"]).await;
    let client = HttpClient::new(&HttpConfig::default()).unwrap();

    let err = get(&client, &server.url("localhost")).await.unwrap_err();
    assert_eq!(
        rustls_error(&*err),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        "{}",
        chain(&*err)
    );
    assert!(
        chain(&*err).contains("invalid peer certificate"),
        "the message says it is the certificate: {}",
        chain(&*err)
    );
}

/// A writer for the captured log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn accepting_invalid_certs_connects_and_warns() {
    let pki = pki(&["localhost"]);
    let server = TlsServer::start(&pki, &[b"h2", b"http/1.1"]).await;
    let cfg = HttpConfig {
        danger_accept_invalid_certs: true,
        ..HttpConfig::default()
    };

    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let client = tracing::subscriber::with_default(subscriber, || HttpClient::new(&cfg)).unwrap();
    let log = log.text();
    assert!(
        log.contains("WARN") && log.contains("verification is OFF") && log.contains("danger_accept_invalid_certs"),
        "building the client logs a warning naming the setting:\n{log}"
    );

    let res = get(&client, &server.url("localhost")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // no certificate check at all: a name the certificate does not cover is accepted too
    let res = get(&client, &server.url("127.0.0.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_trusted_extra_root_verifies_the_server() {
    let pki = pki(&["localhost", "127.0.0.1"]);
    let server = TlsServer::start(&pki, &[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca_pem);
    let client = HttpClient::new(&HttpConfig {
        extra_root_certificates: vec![ca],
        ..HttpConfig::default()
    })
    .unwrap();

    for host in ["localhost", "127.0.0.1"] {
        let res = get(&client, &server.url(host))
            .await
            .unwrap_or_else(|e| panic!("{host}: {}", chain(&*e)));
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        body_text(res).await;
    }
}

#[tokio::test]
async fn a_trusted_root_does_not_excuse_a_name_mismatch() {
    let pki = pki(&["files.example.org"]);
    let server = TlsServer::start(&pki, &[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca_pem);
    let client = HttpClient::new(&HttpConfig {
        extra_root_certificates: vec![ca],
        ..HttpConfig::default()
    })
    .unwrap();

    let err = get(&client, &server.url("localhost")).await.unwrap_err();
    match rustls_error(&*err) {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => {}
        other => panic!("expected a name mismatch, got {other:?}: {}", chain(&*err)),
    }
}

#[tokio::test]
async fn alpn_picks_http2_when_offered_and_http1_otherwise() {
    let pki = pki(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca_pem);
    let cfg = HttpConfig {
        extra_root_certificates: vec![ca],
        ..HttpConfig::default()
    };
    let client = HttpClient::new(&cfg).unwrap();

    let both = TlsServer::start(&pki, &[b"h2", b"http/1.1"]).await;
    let res = get(&client, &both.url("localhost")).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(body_text(res).await, "HTTP/2.0", "the server saw HTTP/2 too");

    let h1_only = TlsServer::start(&pki, &[b"http/1.1"]).await;
    let res = get(&client, &h1_only.url("localhost")).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
    assert_eq!(body_text(res).await, "HTTP/1.1");

    // `http2: false` keeps to HTTP/1.1 even where the server offers h2
    let h1_client = HttpClient::new(&HttpConfig { http2: false, ..cfg }).unwrap();
    let res = get(&h1_client, &both.url("localhost")).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_11);
}

#[test]
fn an_unusable_root_file_is_a_config_error_naming_the_field_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = write_pem(dir.path(), "notes.txt", "just some text, no PEM block\n");
    let broken = write_pem(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let garbage_der = write_pem(
        dir.path(),
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    for path in [missing, not_pem, broken, garbage_der] {
        let err = HttpClient::new(&HttpConfig {
            extra_root_certificates: vec![path.clone()],
            ..HttpConfig::default()
        })
        .unwrap_err();
        let ConfigError::Invalid { field, reason } = &err else {
            panic!("{path:?}: expected ConfigError::Invalid, got {err:?}");
        };
        assert_eq!(*field, "extra_root_certificates");
        assert!(
            reason.contains(&path.display().to_string()),
            "the message names the file: {err}"
        );
        assert!(err.to_string().contains("`extra_root_certificates`"), "{err}");
    }
}
