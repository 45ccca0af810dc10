//! The benchmark's own processes besides the proxies: the fast upstream every proxy forwards to,
//! the minimal relay that is the ceiling for streams, and the minimal HTTP proxy on the gateway's
//! own libraries that is the floor under its instruction count. They run as `versus upstream …`,
//! `versus relay …` and `versus floor …`, separate processes, so that their CPU is not the
//! orchestrator's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The small answer: 1 KiB.
pub const SMALL: usize = 1024;
const CHUNK: usize = 64 * 1024;

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
    }
}

/// The value after `name` on the command line (`--name VALUE`).
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn parsed<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    arg(args, name).and_then(|a| a.parse().ok())
}

// ------------------------------------------------------------------------------------ upstream

#[derive(Default)]
struct Stats {
    small: AtomicU64,
    auth: AtomicU64,
    logins: AtomicU64,
    uploaded: AtomicU64,
    downloads: AtomicU64,
}

/// A body of `left` bytes made of one shared 64 KiB chunk: costs the upstream next to nothing.
struct Stream {
    chunk: Bytes,
    left: u64,
    exact: bool,
}

impl Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

type UpBody = http_body_util::Either<http_body_util::Full<Bytes>, Stream>;

fn full(status: StatusCode, body: Bytes) -> Response<UpBody> {
    let mut r = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        body,
    )));
    *r.status_mut() = status;
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    })
}

async fn serve(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    small: Bytes,
    chunk: Bytes,
) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (_, "/auth") => {
            stats.auth.fetch_add(1, Ordering::Relaxed);
            full(StatusCode::NO_CONTENT, Bytes::new())
        }
        (Method::GET, "/_stats") => full(
            StatusCode::OK,
            Bytes::from(format!(
                "small {}\nauth {}\nlogins {}\nuploaded {}\ndownloads {}\n",
                stats.small.load(Ordering::Relaxed),
                stats.auth.load(Ordering::Relaxed),
                stats.logins.load(Ordering::Relaxed),
                stats.uploaded.load(Ordering::Relaxed),
                stats.downloads.load(Ordering::Relaxed),
            )),
        ),
        (Method::POST, "/aspera/faspex/login") => {
            // Faspex's answer to a good login: a redirect into the app and its session cookie.
            let _ = req.into_body().collect().await;
            let n = stats.logins.fetch_add(1, Ordering::Relaxed);
            let mut r = full(StatusCode::FOUND, Bytes::new());
            r.headers_mut().insert(
                header::LOCATION,
                http::HeaderValue::from_static("/aspera/faspex/"),
            );
            if let Ok(v) =
                http::HeaderValue::from_str(&format!("_faspex_session=s{n}; path=/; HttpOnly"))
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        (_, "/aspera/faspex/logout") => {
            let _ = req.into_body().collect().await;
            let mut r = full(StatusCode::FOUND, Bytes::new());
            r.headers_mut().insert(
                header::LOCATION,
                http::HeaderValue::from_static("/aspera/faspex/login"),
            );
            r
        }
        (Method::GET, "/big") => {
            stats.downloads.fetch_add(1, Ordering::Relaxed);
            let bytes = query(&req, "bytes")
                .and_then(|b| b.parse().ok())
                .unwrap_or(0);
            let exact = query(&req, "chunked").as_deref() != Some("1");
            let mut r = Response::new(http_body_util::Either::Right(Stream {
                chunk,
                left: bytes,
                exact,
            }));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (Method::PUT | Method::POST, _) => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                        }
                    }
                    Err(_) => return Ok(full(StatusCode::BAD_REQUEST, Bytes::new())),
                }
            }
            stats.uploaded.fetch_add(n, Ordering::Relaxed);
            full(StatusCode::OK, Bytes::from(n.to_string()))
        }
        (Method::GET, _) => {
            stats.small.fetch_add(1, Ordering::Relaxed);
            let mut r = full(StatusCode::OK, small);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            r
        }
        _ => full(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    };
    Ok(resp)
}

/// `versus upstream --listen ADDR [--threads N]`: plain HTTP/1.1, keep-alive.
pub fn upstream(args: &[String]) {
    let listen: SocketAddr = parsed(args, "--listen").expect("--listen ADDR");
    let threads: usize = parsed(args, "--threads").unwrap_or(1);
    let stats = Arc::new(Stats::default());
    let small = Bytes::from(vec![b'x'; SMALL]);
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    runtime(threads).block_on(accept_each(listen, move |stream| {
        let (stats, small, chunk) = (stats.clone(), small.clone(), chunk.clone());
        async move {
            let service = hyper::service::service_fn(move |req| {
                serve(req, stats.clone(), small.clone(), chunk.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    }));
}

// --------------------------------------------------------------------------------------- relay

/// `versus relay --listen ADDR --upstream ADDR [--cert PEM --key PEM] [--threads N]`: accept,
/// terminate TLS when given a certificate, and copy bytes both ways with 64 KiB buffers. The
/// least work any TLS-terminating proxy can do: the ceiling for streams.
pub fn relay(args: &[String]) {
    let listen: SocketAddr = parsed(args, "--listen").expect("--listen ADDR");
    let upstream: SocketAddr = parsed(args, "--upstream").expect("--upstream ADDR");
    let threads: usize = parsed(args, "--threads").unwrap_or(1);
    let tls = match (arg(args, "--cert"), arg(args, "--key")) {
        (Some(cert), Some(key)) => Some(acceptor(&cert, &key)),
        _ => None,
    };
    runtime(threads).block_on(accept_each(listen, move |client| {
        let tls = tls.clone();
        async move {
            let Some(server) = connect(upstream).await else {
                return;
            };
            match tls {
                Some(acceptor) => {
                    if let Ok(client) = acceptor.accept(client).await {
                        copy_both_ways(client, server).await;
                    }
                }
                None => copy_both_ways(client, server).await,
            }
        }
    }));
}

// --------------------------------------------------------------------------------------- floor

/// `versus floor --listen ADDR --upstream ADDR --cert PEM --key PEM`: the least an HTTP proxy on
/// the gateway's own libraries does. TLS (rustls, ring) and HTTP/1.1 (hyper's server) towards the
/// client, and for each client connection one hyper HTTP/1.1 client connection to the upstream,
/// driven by a task of its own as hyper's client is; each request forwarded as it came, with no
/// check, no header rule, no pool, no timer and no log. `benches/instructions.sh 10000 floor`
/// counts it as it counts the gateway: the floor under the gateway's count that its policy path
/// and its safeguards add to.
pub fn floor(args: &[String]) {
    let listen: SocketAddr = parsed(args, "--listen").expect("--listen ADDR");
    let upstream: SocketAddr = parsed(args, "--upstream").expect("--upstream ADDR");
    let cert = arg(args, "--cert").expect("--cert PEM");
    let key = arg(args, "--key").expect("--key PEM");
    let tls = acceptor(&cert, &key);
    runtime(1).block_on(accept_each(listen, move |client| {
        let tls = tls.clone();
        async move {
            let Ok(client) = tls.accept(client).await else {
                return;
            };
            let Some(server) = connect(upstream).await else {
                return;
            };
            let Ok((sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(server)).await
            else {
                return;
            };
            tokio::spawn(conn);
            let sender = Arc::new(tokio::sync::Mutex::new(sender));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sender = sender.clone();
                async move {
                    let mut sender = sender.lock().await;
                    sender.send_request(req).await
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(client), service)
                .await;
        }
    }));
}

/// Bind `listen`, say `ready`, and serve each connection accepted (without Nagle's delay) with
/// `serve`, in a task of its own. Never returns.
async fn accept_each<F, Fut>(listen: SocketAddr, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("ready");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}

/// A connection to the upstream, without Nagle's delay.
async fn connect(upstream: SocketAddr) -> Option<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

/// Copy bytes between `client` and `server` both ways, `CHUNK` at a time, until either closes.
async fn copy_both_ways<C>(mut client: C, mut server: tokio::net::TcpStream)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, CHUNK, CHUNK).await;
}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .filter_map(Result::ok)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
