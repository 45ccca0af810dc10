//! The request path from a parsed HTTP request to a response: classify, (later: credentials,
//! session and policy), forward, and log.
//!
//! [`Gateway::handle`] is the outer handler: it times the request, calls the inner handler, turns
//! any [`GatewayError`] into a response (the only place that does), and wraps the response body
//! so that exactly one access-log line is written when the body ends, however it ends.

pub mod classify;
pub mod error;
pub mod forward;
pub mod pages;
pub mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use classify::{DenyPrefix, Route, RouteProfile};
pub use error::GatewayError;
use forward::{ClientSide, ProxyBody, Upstream};

/// What the server knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `"https"` on the TLS listener, `"http"` on the plain one.
    pub scheme: &'static str,
}

/// A connection's place under `server.max_connections`, shared by the connection task and any
/// tunnel it upgrades into. The server puts it in each HTTP/1.1 request's extensions; the slot is
/// freed when the last holder is gone.
#[derive(Clone)]
pub struct ConnPermit(pub Arc<tokio::sync::OwnedSemaphorePermit>);

/// The gateway's request handler: a cheap-to-clone handle shared by every connection.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    /// Which paths are public, denied, the login form, or the gateway's own.
    profile: RouteProfile,
    /// The pooled client to Faspex.
    upstream: Upstream,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The gateway's session cookie name, which also marks a request as a browser's.
    cookie_name: String,
    /// How long an upgraded tunnel may be silent before it is closed.
    body_idle_timeout: Duration,
}

impl Gateway {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let profile = RouteProfile {
            login_path: cfg.faspex.login_path.clone(),
            logout_path: cfg.faspex.logout_path.clone(),
            public_prefixes: cfg.faspex.public_paths.clone(),
            deny: cfg
                .faspex
                .deny
                .iter()
                .map(|d| DenyPrefix {
                    method: d.method.clone(),
                    prefix: d.prefix.clone(),
                })
                .collect(),
        };
        Ok(Gateway {
            inner: Arc::new(Inner {
                profile,
                upstream: Upstream::new(&cfg.upstream, cfg.server.body_idle_timeout)?,
                body_idle_timeout: cfg.server.body_idle_timeout,
                trusted_proxies: cfg.server.trusted_proxies.clone(),
                cookie_name: cfg.session.cookie_name.clone(),
            }),
        })
    }

    /// The outer handler: never fails, always logs.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let (client_ip, peer_trusted) =
            forward::client_ip(conn.peer.ip(), req.headers(), &self.inner.trusted_proxies);
        let browser = error::is_browser(req.headers(), &self.inner.cookie_name);
        let mut log = AccessRecord {
            method,
            route: None,
            path: String::new(),
            status: StatusCode::OK,
            client_ip,
            started,
        };

        let resp = match self
            .handle_inner(req, conn, client_ip, peer_trusted, &mut log)
            .await
        {
            Ok(resp) => resp,
            Err(err) => {
                match &err {
                    GatewayError::Upstream(e) => tracing::warn!(
                        kind = %e.kind(),
                        error = %e,
                        route = %log.route.map(Route::as_str).unwrap_or("-"),
                        "upstream request failed"
                    ),
                    other => tracing::debug!(error = %other, "request refused"),
                }
                err.into_response(browser)
            }
        };
        log.status = resp.status();
        resp.map(|body| LoggedBody::new(body, log).boxed_unsync())
    }

    /// The inner handler: uses `?` freely; the outer one turns errors into responses.
    async fn handle_inner(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        client_ip: IpAddr,
        peer_trusted: bool,
        log: &mut AccessRecord,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let classified = self.inner.profile.classify(req.method(), req.uri().path());
        let classified = match classified {
            Ok(c) => c,
            Err(e) => {
                log.path = "-".into();
                return Err(e.into());
            }
        };
        log.route = Some(classified.route);
        log.path = classified.path;

        match classified.route {
            Route::Denied => return Err(GatewayError::Denied),
            Route::Gateway => return Err(GatewayError::NotFound),
            Route::Public | Route::Login | Route::Logout | Route::Protected => {}
        }

        let host = request_host(&req)?;
        let (scheme, public_host) = public_origin(req.headers(), peer_trusted, conn.scheme, &host);
        let side = ClientSide {
            client_ip,
            peer_ip: conn.peer.ip(),
            peer_trusted,
            scheme,
            host,
            public_host,
        };

        // A WebSocket (or other) upgrade: keep hold of the client's side of the connection so
        // that, once Faspex agrees with a 101, the two can be joined.
        let client_upgrade = if req.version() <= http::Version::HTTP_11
            && forward::upgrade_protocol(req.headers()).is_some()
        {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };

        let conn_permit = req.extensions_mut().remove::<ConnPermit>();
        let req = req.map(forward::client_body);
        let mut resp = self.inner.upstream.forward(req, &side).await?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // Faspex switched protocols without being asked: nothing sane to relay.
                return Err(GatewayError::Upstream(forward::UpstreamError::Protocol(
                    "101 Switching Protocols without an upgrade request".into(),
                )));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let permit = conn_permit;
            let idle = self.inner.body_idle_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let client = TokioIo::new(client);
                        let upstream = TokioIo::new(upstream);
                        if let Err(e) = transfer::tunnel(client, upstream, idle).await {
                            tracing::debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, error::full(Bytes::new())));
        }

        Ok(resp)
    }
}

/// The authority the client asked for: the request target's (absolute form, HTTP/2) or the `Host`
/// header's. An HTTP/1.1 request must carry exactly one `Host` (RFC 9112 §3.2), and it must be a
/// plain authority, since it is forwarded and written into redirects.
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    let hosts: Vec<&HeaderValue> = req.headers().get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    if req.version() == http::Version::HTTP_11 && hosts.is_empty() {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if let Some(h) = hosts.first() {
        if !is_authority(h.as_bytes()) {
            return Err(GatewayError::BadRequest(
                "the Host header is not a host name",
            ));
        }
    }
    Ok(match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => hosts.first().map(|h| (*h).clone()),
    })
}

/// `host[:port]` with no user information, path or other decoration.
fn is_authority(v: &[u8]) -> bool {
    !v.is_empty()
        && !v.contains(&b'@')
        && http::uri::Authority::try_from(v).is_ok_and(|a| a.as_str().len() == v.len())
}

/// The scheme and host the public sees: the listener's, unless a trusted proxy says otherwise in
/// `X-Forwarded-Proto` / `X-Forwarded-Host` (a balancer that terminates TLS in front of us).
fn public_origin(
    headers: &http::HeaderMap,
    peer_trusted: bool,
    scheme: &'static str,
    host: &Option<HeaderValue>,
) -> (&'static str, Option<HeaderValue>) {
    if !peer_trusted {
        return (scheme, host.clone());
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let scheme = match first("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        Some(p) if p.eq_ignore_ascii_case("http") => "http",
        _ => scheme,
    };
    let host = first("x-forwarded-host")
        .filter(|h| is_authority(h.as_bytes()))
        .and_then(|h| HeaderValue::from_str(h).ok())
        .or_else(|| host.clone());
    (scheme, host)
}

/// What the access-log line says about one request. Never credentials, cookies, tokens or the
/// query string (passcodes and transfer tokens travel there).
struct AccessRecord {
    method: Method,
    route: Option<Route>,
    path: String,
    status: StatusCode,
    client_ip: IpAddr,
    started: Instant,
}

/// A response body that counts the bytes it passes and writes the access-log line when it ends,
/// or when it is dropped early (the client went away, or the upstream broke mid-body).
struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    record: Option<AccessRecord>,
    failed: bool,
}

impl LoggedBody {
    fn new(inner: ProxyBody, record: AccessRecord) -> Self {
        let mut body = LoggedBody {
            inner,
            bytes: 0,
            record: Some(record),
            failed: false,
        };
        if body.inner.is_end_stream() {
            body.finish(true);
        }
        body
    }

    fn finish(&mut self, complete: bool) {
        if let Some(r) = self.record.take() {
            tracing::info!(
                target: "faspex_gate::access",
                method = %r.method,
                route = %r.route.map(Route::as_str).unwrap_or("-"),
                path = %r.path,
                status = r.status.as_u16(),
                bytes = self.bytes,
                duration_ms = r.started.elapsed().as_secs_f64() * 1000.0,
                client_ip = %r.client_ip,
                complete = complete && !self.failed,
            );
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = forward::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}
