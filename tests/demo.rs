//! `faspex-gate demo` works with no setup: it starts, prints where to go, and serves the Faspex
//! emulator through the gateway over TLS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Request;

use crate::flows::cookies_from;
use crate::util::*;

/// `faspex-gate demo` with `extra` arguments, on free loopback ports; its stdout's lines arrive
/// on the receiver as it prints them.
fn start_demo(extra: &[&str]) -> (Reap, std::sync::mpsc::Receiver<String>) {
    let mut args = vec!["demo"];
    args.extend_from_slice(extra);
    args.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut child = Reap(
        Command::new(bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_starts_and_serves_the_emulator_through_the_gateway() {
    let (mut child, rx) = start_demo(&[]);
    let mut banner = Vec::new();
    let mut base = None;
    while base.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the demo printed its banner");
        if let Some(url) = line.trim().strip_prefix("Open") {
            base = url
                .trim()
                .strip_suffix("/aspera/faspex/")
                .map(str::to_owned);
        }
        banner.push(line);
    }
    let base = base.unwrap();
    // Read the rest of the banner (it names the users and the things to try).
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        banner.push(line);
    }
    let banner = banner.join("\n");
    assert!(banner.contains("ann / demo-ann"), "{banner}");
    assert!(banner.contains("extern.collab / demo-collab"), "{banner}");
    assert!(banner.contains("received/4044"), "{banner}");

    // The demo's certificate is self-signed; this client accepts it as curl -k would.
    let c = insecure_client();
    let (st, _, body) = send(
        &c,
        Request::get(format!("{base}/aspera/faspex/login"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("user[password]"));

    // Seed 001: the package's XML over Basic.
    let req = Request::get(format!("{base}/aspera/faspex/received/4044"))
        .header("authorization", "Basic YW5uOmRlbW8tYW5u")
        .header("accept", "application/xml")
        .body(empty())
        .unwrap();
    let (st, _, body) = send(&c, req).await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("faspe://"));

    // The helpdesk's command against the demo: its token from the demo's configuration.
    let field = |label: &str| {
        banner
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {label} line in\n{banner}"))
    };
    let admin_url = field("Admin").split_whitespace().next().unwrap().to_owned();
    let config = field("Config")
        .rsplit_once(' ')
        .map(|(_, p)| p.to_owned())
        .unwrap();
    let out = Command::new(bin())
        .args(["admin", "--config", &config, "--url", &admin_url, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Seats in use:     1 of 3"), "{text}");

    // The external collaborator: a local account only Faspex (the emulator) knows, not in the
    // users file. It logs in with the form through the gateway and takes a seat.
    let admin = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["admin", "--config", &config, "--url", &admin_url])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let (st, headers, body) = form_login(&c, &base, "extern.collab", "demo-collab", None).await;
    assert_eq!(st, 302, "{}", String::from_utf8_lossy(&body));
    let location = headers[http::header::LOCATION].to_str().unwrap();
    assert!(location.ends_with("/aspera/faspex/inbox"), "{location}");
    let collab = cookies_from(&headers);
    let inbox = Request::get(format!("{base}/aspera/faspex/inbox"))
        .header("cookie", &collab)
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let (st, _, body) = send(&c, inbox).await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("extern.collab"));
    let text = admin(&["status"]);
    assert!(text.contains("Seats in use:     2 of 3"), "{text}");

    // Faspex's "Log out" through the gateway frees the seat.
    let logout = Request::get(format!("{base}/aspera/faspex/logout"))
        .header("cookie", &collab)
        .header("accept", "text/html")
        .header("sec-fetch-site", "same-origin")
        .body(empty())
        .unwrap();
    let (st, _, _) = send(&c, logout).await;
    assert_eq!(st, 302);
    let text = admin(&["status"]);
    assert!(text.contains("Seats in use:     1 of 3"), "{text}");

    // Five wrong passwords (each one checked by Faspex) lock it at the gateway; then even the
    // right one is refused, by the form and over Basic.
    for i in 0..4 {
        let (st, _, _) = form_login(&c, &base, "extern.collab", &format!("wrong{i}"), None).await;
        assert_eq!(st, 401, "wrong password {i}");
    }
    let (st, _, body) = form_login(&c, &base, "extern.collab", "wrong4", None).await;
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&body).contains("Account locked"));
    let (st, _, _) = form_login(&c, &base, "extern.collab", "demo-collab", None).await;
    assert_eq!(st, 403);
    let me = Request::get(format!("{base}/aspera/faspex/me"))
        .header(
            "authorization",
            "Basic ZXh0ZXJuLmNvbGxhYjpkZW1vLWNvbGxhYg==",
        )
        .body(empty())
        .unwrap();
    let (st, _, _) = send(&c, me).await;
    assert_eq!(st, 403);
    let text = admin(&["lockouts"]);
    assert!(text.contains("extern.collab"), "{text}");
    // The helpdesk's unlock lifts it: the collaborator logs in at once.
    admin(&["unlock", "extern.collab"]);
    let (st, _, body) = form_login(&c, &base, "extern.collab", "demo-collab", None).await;
    assert_eq!(st, 302, "{}", String::from_utf8_lossy(&body));

    let req = Request::post(format!("{base}/aspera/faspex/package_relay/relay_package"))
        .body(empty())
        .unwrap();
    let (st, _, _) = send(&c, req).await;
    assert_eq!(st, 403);

    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let mut exited = false;
    for _ in 0..200 {
        if child.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited {
        let _ = child.0.kill();
    }
    assert!(exited, "the demo did not stop on SIGTERM");
}

/// `faspex-gate demo --ha`: two gateways on the Redis it starts itself. Both serve; a login
/// through one shows on the other's status (one cap); on SIGTERM it stops, and its redis-server
/// with it.
#[tokio::test(flavor = "multi_thread")]
async fn demo_ha_runs_two_gateways_on_one_redis_and_stops_it() {
    let (mut child, rx) = start_demo(&["--ha"]);
    let mut banner = Vec::new();
    while !banner.iter().any(|l: &String| l.contains("Files")) {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the demo printed its banner:\n{}", banner.join("\n")));
        banner.push(line);
    }
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        banner.push(line);
    }
    let banner = banner.join("\n");
    let fields = |label: &str| -> Vec<String> {
        banner
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{banner}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // "Gateway A   https://…/aspera/faspex/   admin http://…   config …"
    let gateway = |label: &str| {
        let f = fields(label);
        let base = f[0].strip_suffix("/aspera/faspex/").unwrap().to_owned();
        (base, f[2].clone())
    };
    let (base_a, admin_a) = gateway("Gateway A");
    let (base_b, admin_b) = gateway("Gateway B");
    assert_ne!(base_a, base_b);
    // "Redis       redis-server at 127.0.0.1:PORT (pid N), …"
    let redis = fields("Redis");
    let redis_addr: std::net::SocketAddr = redis[2].parse().unwrap();
    let redis_pid = redis[4].trim_end_matches("),").to_owned();
    let token_file = std::path::Path::new(&fields("Files")[0]).join("admin-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(banner.contains("admin/v1/status"), "{banner}");

    let c = insecure_client();
    let seats = |admin: String| {
        let token = token.clone();
        async move {
            let (st, _, body) = crate::ops::admin_req(
                "GET",
                &format!("{admin}/admin/v1/status"),
                &[("authorization", &format!("Bearer {}", token.trim()))],
                "",
            )
            .await;
            assert_eq!(st, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["seats_used"].clone()
        }
    };
    assert_eq!(seats(admin_a.clone()).await, 0);
    let st = basic_get(&c, &format!("{base_a}/aspera/faspex/me"), "ann", "demo-ann").await;
    assert_eq!(st, 200);
    assert_eq!(seats(admin_b.clone()).await, 1, "A's login on B's status");
    let st = basic_get(&c, &format!("{base_b}/aspera/faspex/me"), "bob", "demo-bob").await;
    assert_eq!(st, 200);
    assert_eq!(seats(admin_a.clone()).await, 2, "B's login on A's status");
    let st = basic_get(&c, &format!("{base_b}/aspera/faspex/me"), "cat", "demo-cat").await;
    assert_eq!(st, 200);
    let st = basic_get(&c, &format!("{base_a}/aspera/faspex/me"), "dan", "demo-dan").await;
    assert_eq!(st, 503, "3 seats across both");

    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let mut exited = false;
    for _ in 0..400 {
        if child.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(exited, "the demo did not stop on SIGTERM");
    assert!(
        std::net::TcpStream::connect(redis_addr).is_err(),
        "its redis-server is gone"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{redis_pid}")).exists(),
        "redis-server pid {redis_pid} is gone"
    );
}

/// Without `redis-server` on the PATH, `demo --ha` says how to get it and starts nothing (exit 2).
#[test]
fn demo_ha_without_redis_server_says_how_to_get_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "demo",
            "--ha",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("apt install redis-server"), "{err}");
    assert!(out.stdout.is_empty());
}

/// The demo's process, killed if the test ends without stopping it (a failed assertion), so that
/// no demo outlives the test run.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A browser's form login through the gateway, optionally with the cookies it already has.
async fn form_login(
    c: &HttpsClient,
    base: &str,
    user: &str,
    password: &str,
    cookie: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("authenticity_token", "demo")
        .append_pair("user[name]", user)
        .append_pair("user[password]", password)
        .finish();
    let mut req = Request::post(format!("{base}/aspera/faspex/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "text/html,application/xhtml+xml")
        .header("user-agent", "Mozilla/5.0 demo test");
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    send(c, req.body(full(form)).unwrap()).await
}

/// A client that skips certificate verification, like `curl -k`, for the demo's fresh certificate.
fn insecure_client() -> HttpsClient {
    #[derive(Debug)]
    struct AcceptAny(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}
