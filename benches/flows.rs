//! What the Faspex flows cost per request: the gateway in-process over real TLS and loopback
//! sockets, in front of the built-in Faspex 4 emulator, against the emulator asked directly.
//!
//! `cargo bench --bench flows`. Rows: the same small Faspex answers fetched directly (plain
//! HTTP), through the gateway on a public path (no credentials), with the gateway's session
//! cookie (JWT check, session lookup, activity, Faspex cookie binding), and with HTTP Basic
//! (verification-cache hit and client-session lookup). The access log is not written here
//! (no subscriber), so these figures are the request path alone. The side-by-side comparison
//! with nginx is `benches/` work of its own.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;

use bytes::Bytes;
use faspex_emulator::{Emulator, EmulatorConfig};
use faspex_gate::config::Config;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn empty() -> Body {
    Empty::<Bytes>::new().boxed()
}

async fn fetch(
    c: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    req: Request<Body>,
) -> (StatusCode, http::HeaderMap) {
    let resp = c.request(req).await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let _ = resp.into_body().collect().await.expect("body");
    (status, headers)
}

fn row(what: &str, workers: usize, per_sec: f64, direct: f64) {
    println!(
        "| {what:<52} | {workers:>7} | {per_sec:>10.0} | {:>8.2} |",
        per_sec / direct
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emulator = Emulator::new(EmulatorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = listener.local_addr().unwrap();
    tokio::spawn(emulator.serve(listener, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = faspex_gate::tls::write_self_signed(dir.path(), &["localhost"]).unwrap();
    let secret = dir.path().join("secret");
    faspex_gate::util::write_private(&secret, &[b'k'; 48]).unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[users.ann]\nhash = \"{}\"\n",
            faspex_gate::auth::password::hash("apple").unwrap()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let cfg_path = dir.path().join("faspex-gate.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
[tls]
cert_file = "{cert}"
key_file = "{key}"
[upstream]
url = "http://{emu}"
[admin]
listen = ""
[session]
secret_file = "{secret}"
[policy]
public_requests_per_ip_per_minute = 100000000
[auth]
backend = "file"
[auth.file]
path = "{users}"
[store]
path = "{state}"
[audit]
path = "{audit}"
"#,
            cert = cert.display(),
            key = key.display(),
            secret = secret.display(),
            users = users.display(),
            state = dir.path().join("state").display(),
            audit = dir.path().join("audit.log").display(),
        ),
    )
    .unwrap();
    let cfg = Config::load_with_env(&cfg_path, &[]).unwrap();
    let app = faspex_gate::app::build(&cfg).await.unwrap();
    let server = faspex_gate::server::Server::bind(&cfg, app.gateway.clone(), app.certs.clone())
        .await
        .unwrap();
    let gw = server.https_addr().unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(server.run(stopped));

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cert).unwrap();
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).unwrap();
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let client = Arc::new(client);
    let base = format!("https://localhost:{}", gw.port());

    // A browser session: the form login, through the gateway.
    let form = "user%5Bname%5D=ann&user%5Bpassword%5D=apple";
    let (status, headers) = fetch(
        &client,
        Request::post(format!("{base}/aspera/faspex/login"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)).boxed())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FOUND);
    let cookie: String = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next())
        .collect::<Vec<_>>()
        .join("; ");
    let faspex_cookie: String = cookie
        .split("; ")
        .filter(|c| c.starts_with("_faspex_session="))
        .collect();
    let cookie = Arc::new(cookie);
    let faspex_cookie = Arc::new(faspex_cookie);

    println!("the Faspex flows per request: 16 connections, small answers, loopback");
    println!(
        "| request                                              | workers |  per second | vs direct |"
    );
    println!(
        "|------------------------------------------------------|---------|-------------|-----------|"
    );
    let total = 40_000;
    for workers in [16] {
        let (c, fc) = (client.clone(), faspex_cookie.clone());
        let direct = support::run(workers, total, move |_| {
            let (c, fc) = (c.clone(), fc.clone());
            async move {
                let req = Request::get(format!("http://{emu}/aspera/faspex/me"))
                    .header(header::COOKIE, fc.as_str())
                    .body(empty())
                    .unwrap();
                assert_eq!(fetch(&c, req).await.0, StatusCode::OK);
            }
        })
        .await;
        row(
            "GET /me from the emulator directly (plain HTTP)",
            workers,
            direct,
            direct,
        );

        let (c, b) = (client.clone(), base.clone());
        let rate = support::run(workers, total, move |_| {
            let (c, b) = (c.clone(), b.clone());
            async move {
                let req = Request::get(format!("{b}/aspera/faspex/javascripts/application.js"))
                    .body(empty())
                    .unwrap();
                assert_eq!(fetch(&c, req).await.0, StatusCode::OK);
            }
        })
        .await;
        row(
            "public asset through the gateway (TLS)",
            workers,
            rate,
            direct,
        );

        let (c, b, k) = (client.clone(), base.clone(), cookie.clone());
        let rate = support::run(workers, total, move |_| {
            let (c, b, k) = (c.clone(), b.clone(), k.clone());
            async move {
                let req = Request::get(format!("{b}/aspera/faspex/me"))
                    .header(header::COOKIE, k.as_str())
                    .body(empty())
                    .unwrap();
                assert_eq!(fetch(&c, req).await.0, StatusCode::OK);
            }
        })
        .await;
        row(
            "GET /me with the gateway's session cookie (TLS)",
            workers,
            rate,
            direct,
        );

        let (c, b) = (client.clone(), base.clone());
        // ann's browser session holds the account: Basic callers are another client, so use
        // "replace"-free ground: log the browser out first.
        fetch(
            &c,
            Request::get(format!("{b}/aspera/faspex/logout"))
                .header(header::COOKIE, cookie.as_str())
                .body(empty())
                .unwrap(),
        )
        .await;
        let rate = support::run(workers, total, move |_| {
            let (c, b) = (c.clone(), b.clone());
            async move {
                let req = Request::get(format!("{b}/aspera/faspex/me"))
                    .header(header::AUTHORIZATION, "Basic YW5uOmFwcGxl")
                    .header(header::USER_AGENT, "bench")
                    .body(empty())
                    .unwrap();
                assert_eq!(fetch(&c, req).await.0, StatusCode::OK);
            }
        })
        .await;
        row(
            "GET /me with HTTP Basic, cache hits (TLS)",
            workers,
            rate,
            direct,
        );
    }
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}
