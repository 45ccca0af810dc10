//! The benchmark's own clients, for what wrk and oha cannot do: log in many accounts, keep 50
//! users working at a fixed rate from their own addresses while a password spray comes from
//! thousands of others, hold idle keep-alive connections open, and count full TLS handshakes.
//! Every client speaks real HTTP/1.1 (hyper) over real TLS (rustls) on loopback sockets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

pub type Sender = SendRequest<Full<Bytes>>;

/// TLS client settings trusting the benchmark's certificate. `resume: false` makes every
/// handshake a full one.
pub fn connector(cert_pem: &[u8], resume: bool) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem).flatten() {
        roots.add(c).expect("trust the benchmark's certificate");
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The `n`-th of many distinct loopback source addresses, in 127.`base`.0.0/16.
pub fn source(base: u8, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        base,
        ((n / 250) % 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

async fn tcp(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One keep-alive HTTP/1.1 connection over TLS, from `from` when given.
pub async fn connect(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    from: Option<IpAddr>,
) -> anyhow::Result<Sender> {
    let stream = tcp(addr, from).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let stream = tls.connect(name, stream).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Send one request and read its whole answer: status, headers and body length.
pub async fn call(
    send: &mut Sender,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, http::HeaderMap, usize)> {
    send.ready().await?;
    let resp = send.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body.len()))
}

pub fn get(path: &str, cookie: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .header(header::COOKIE, cookie)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

pub fn login_form(user: &str, password: &str) -> Request<Full<Bytes>> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("user[name]", user)
        .append_pair("user[password]", password)
        .finish();
    Request::post("/aspera/faspex/login")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::USER_AGENT, "versus-bench")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// The gateway's session cookie (`name=value`) from a login answer.
pub fn session_cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
        .map(str::to_owned)
}

/// Log `user` in on `send`; the gateway's cookie, or why not.
pub async fn login(
    send: &mut Sender,
    user: &str,
    password: &str,
    cookie_name: &str,
) -> anyhow::Result<String> {
    let (status, headers, _) = call(send, login_form(user, password)).await?;
    anyhow::ensure!(
        status == StatusCode::FOUND || status == StatusCode::SEE_OTHER,
        "login of {user} answered {status}"
    );
    session_cookie(&headers, cookie_name)
        .ok_or_else(|| anyhow::anyhow!("login of {user} set no gateway cookie"))
}

/// Log in every `(user, password)` over `workers` keep-alive connections from 127.0.0.1:
/// the cookies, in order, and logins per second.
pub async fn bulk_logins(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    users: Arc<Vec<(String, String)>>,
    workers: usize,
    cookie_name: &str,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (tls, users, next) = (tls.clone(), users.clone(), next.clone());
        let cookie_name = cookie_name.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut send = connect(&tls, addr, None).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((u, p)) = users.get(i) else {
                    return anyhow::Ok(());
                };
                login(&mut send, u, p, &cookie_name).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(users.len() as f64 / start.elapsed().as_secs_f64())
}

/// Latencies of a fixed-rate load, measured from when each request was due (so a stall counts
/// in full, not only for the one request that met it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Each of `users` (its source address and cookie) sends `rate` GETs a second for `secs` on its
/// own keep-alive connection.
pub async fn users_load(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    users: &[(IpAddr, String)],
    rate: f64,
    secs: f64,
) -> anyhow::Result<Latency> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * secs) as u64;
    let mut senders = Vec::new();
    for (ip, cookie) in users {
        senders.push((connect(tls, addr, Some(*ip)).await?, cookie.clone()));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (k, (mut send, cookie)) in senders.into_iter().enumerate() {
        // Spread the users over one interval so they do not all fire at once.
        let offset = interval.mul_f64(k as f64 / users.len() as f64);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total as usize);
            let mut errors = 0u64;
            for i in 0..total {
                let due = start + offset + interval * i as u32;
                tokio::time::sleep_until(due).await;
                match call(&mut send, get("/aspera/faspex/small", &cookie)).await {
                    Ok((StatusCode::OK, _, n)) if n == super::peers::SMALL => {}
                    _ => errors += 1,
                }
                lat.push(due.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    Ok(Latency {
        requests: all.len() as u64,
        errors,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        max_ms: all.last().copied().unwrap_or(f64::NAN),
    })
}

/// What a password spray got back.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Spray {
    pub attempts: u64,
    pub per_second: f64,
    pub sources: usize,
    pub statuses: BTreeMap<u16, u64>,
    pub reconnects: u64,
}

/// `conns` connections, each from its own 127.`base`.x.y address, send wrong-password login
/// POSTs (for `names`, round-robin) at `rate` a second in all, for `secs`. A connection the
/// gateway closes is opened again.
pub async fn spray(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    names: Arc<Vec<String>>,
    conns: usize,
    rate: f64,
    secs: f64,
) -> anyhow::Result<Spray> {
    let per_conn = rate / conns as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = (per_conn * secs).ceil() as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (tls, names) = (tls.clone(), names.clone());
        let offset = interval.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let from = source(2, c);
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut reconnects = 0u64;
            let mut send: Option<Sender> = None;
            for i in 0..total {
                tokio::time::sleep_until(start + offset + interval * i as u32).await;
                let name = &names[(c + i as usize * conns) % names.len()];
                for _attempt in 0..3 {
                    let s = match send.as_mut() {
                        Some(s) if !s.is_closed() => s,
                        _ => {
                            if send.is_some() {
                                reconnects += 1;
                            }
                            match connect(&tls, addr, Some(from)).await {
                                Ok(s) => send.insert(s),
                                Err(_) => continue,
                            }
                        }
                    };
                    match call(s, login_form(name, "Winter2026!")).await {
                        Ok((status, _, _)) => {
                            *statuses.entry(status.as_u16()).or_default() += 1;
                            break;
                        }
                        Err(_) => send = None,
                    }
                }
            }
            (statuses, reconnects)
        }));
    }
    let mut out = Spray {
        sources: conns,
        ..Spray::default()
    };
    for t in tasks {
        let (s, r) = t.await?;
        for (k, v) in s {
            out.attempts += v;
            *out.statuses.entry(k).or_default() += v;
        }
        out.reconnects += r;
    }
    out.per_second = out.attempts as f64 / began.elapsed().as_secs_f64();
    Ok(out)
}

/// Full TLS handshakes a second (no resumption): `concurrency` clients connecting, shaking
/// hands and closing, for `secs`.
pub async fn handshakes(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (tls, done, failed) = (tls.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ok = async {
                    let s = tcp(addr, None).await?;
                    let name = rustls_pki_types::ServerName::try_from("localhost")?;
                    let mut s = tls.connect(name, s).await?;
                    tokio::io::AsyncWriteExt::shutdown(&mut s).await?;
                    anyhow::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    ))
}

/// Open `n` keep-alive connections, each after one GET with `cookie`, and keep them open.
pub async fn idle_connections(
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    n: usize,
    cookie: &str,
    keep: &mut Vec<Sender>,
) -> anyhow::Result<()> {
    for i in 0..n {
        let mut s = connect(tls, addr, Some(source(3, keep.len() + i))).await?;
        let (status, _, _) = call(&mut s, get("/aspera/faspex/small", cookie)).await?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "an idle connection's GET got {status}"
        );
        keep.push(s);
    }
    Ok(())
}
