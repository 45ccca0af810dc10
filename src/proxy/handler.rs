//! The handler on top: [`Gateway`], the handle every connection shares (swapped whole by
//! [`Gateway::reload`]), and the request's way through the proxy.
//!
//! [`Handler::handle`] is the outer handler: it times the request, calls the inner handler, turns
//! any [`GatewayError`] into a response (the only place that does), and wraps the response body
//! so that exactly one access-log line is written when the body ends, however it ends. The inner
//! handler reads the request ([`request`](super::request)), has the gate classify and read it
//! ([`gate`](super::gate)), and dispatches on the gate's [`Pass`] to a route
//! ([`routes`](super::routes)), which makes the [`Permit`](super::permit::Permit) that
//! forwarding takes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::access::AccessRecord;
use super::body::{LoggedBody, ProxyBody};
use super::classify::Route;
use super::context::Context;
use super::dispatch::TunnelLog;
use super::error::{self, Answer, GatewayError};
use super::gate::{self, BodyRule, Pass};
use super::intake;
use super::request::{self, forward_path, public_origin, request_host, ClientSide, Inspected};
use super::routes::{login, logout, own, protected, public};
use super::upstream;
use crate::auth::Directory;
use crate::config::Config;
use crate::conn::ConnInfo;
use crate::metrics::Metrics;

/// The gateway's request handler: a cheap-to-clone handle shared by every connection. Its
/// settings are swapped whole by [`Gateway::reload`]; each request runs on the settings it found
/// when it arrived.
#[derive(Clone)]
pub struct Gateway {
    current: Arc<ArcSwap<Context>>,
}

/// One request's view of the gateway: the settings in force when it arrived.
struct Handler {
    cx: Arc<Context>,
}

impl Gateway {
    /// The handler, on its first settings and state ([`Context::new`]).
    pub fn new(cx: Context) -> Self {
        Gateway {
            current: Arc::new(ArcSwap::from_pointee(cx)),
        }
    }

    /// Take the settings of `cfg`, the configuration in force after a reload (its restart-only
    /// keys, [`crate::config::RestartOnly`], are the running ones), and the new credential
    /// backend. Requests in flight finish on the settings they started with; sessions are
    /// untouched.
    pub fn reload(&self, cfg: &Config, directory: Arc<dyn Directory>) {
        let old = self.current.load_full();
        self.current.store(Arc::new(old.reloaded(cfg, directory)));
    }

    /// Whether Faspex and the credential backend answer now, for `/readyz`: Faspex must answer
    /// `GET faspex.login_path` with a status below 500 within `limit`, and the directory its
    /// [`Directory::probe`]. Each is `Err` with the reason when not ready.
    pub async fn readiness(&self, limit: Duration) -> (Result<(), String>, Result<(), String>) {
        let inner = self.current.load_full();
        let upstream = async {
            match inner.upstream.probe(&inner.faspex.login_path, limit).await {
                Ok(status) if status.as_u16() < 500 => Ok(()),
                Ok(status) => Err(format!("Faspex answered {status}")),
                Err(e) => Err(e.to_string()),
            }
        };
        let directory = async {
            match tokio::time::timeout(limit, inner.directory.probe()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        };
        tokio::join!(upstream, directory)
    }

    /// The credential backend in force (the admin API asks it whose account a name is).
    pub fn directory(&self) -> Arc<dyn Directory> {
        Arc::clone(&self.current.load().directory)
    }

    /// The metrics the gateway feeds (the server counts the connections it refuses there).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.current.load().metrics)
    }

    /// Handle one request on the settings in force now: see [`Handler::handle`].
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        Handler {
            cx: self.current.load_full(),
        }
        .handle(req, conn)
        .await
    }
}

impl Handler {
    /// The outer handler: never fails, always logs and counts.
    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let (client_ip, peer_trusted) =
            request::client_ip(conn.peer.ip(), req.headers(), &self.cx.trusted_proxies);
        let browser = error::BrowserSigns::of(req.headers(), &self.cx.cookies);
        let mut log = AccessRecord {
            method,
            route: None,
            path: String::new(),
            status: StatusCode::OK,
            client_ip,
            started,
        };

        // Boxed, as forwarding is ([`super::dispatch::pass`], which says how): hyper keeps a
        // slot the size of this future for every open connection, idle ones too.
        let inner = Box::write(
            Box::new_uninit(),
            self.handle_inner(req, conn, client_ip, peer_trusted, &mut log),
        );
        let resp = match Box::into_pin(inner).await {
            Ok(resp) => resp,
            Err(err) => {
                match &err {
                    GatewayError::Upstream(upstream::UpstreamError::Busy(wait)) => {
                        self.cx.metrics.upstream_busy();
                        tracing::warn!(
                            waited = ?wait,
                            route = %log.route.map(Route::as_str).unwrap_or("-"),
                            "every connection to Faspex this request may use stayed taken (503); \
                             see upstream.max_connections"
                        )
                    }
                    GatewayError::Upstream(e) => {
                        self.cx.metrics.upstream_error(e.kind());
                        tracing::warn!(
                            kind = %e.kind(),
                            error = %e,
                            route = %log.route.map(Route::as_str).unwrap_or("-"),
                            "upstream request failed"
                        )
                    }
                    GatewayError::Store(e) => {
                        tracing::error!(error = %e, "the state store failed a request (503)")
                    }
                    GatewayError::Gate(r) => {
                        if let Some(reason) = r.metric_reason() {
                            self.cx.metrics.refused(reason);
                        }
                        tracing::debug!(error = %r, "request refused by the gate")
                    }
                    other => tracing::debug!(error = %other, "request refused"),
                }
                err.into_response(&Answer {
                    browser: browser.is_browser(),
                    site: &self.cx.site,
                    clear_cookie: self.cx.cookies.clear(),
                    now: self.cx.policy.now(),
                })
            }
        };
        let mut resp = resp;
        if let (Some(hsts), "https") = (&self.cx.hsts, conn.scheme) {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        if browser.is_browser() && resp.headers().contains_key(header::WWW_AUTHENTICATE) {
            // Whoever produced it (Faspex too): a browser must never show a password prompt.
            resp.headers_mut().remove(header::WWW_AUTHENTICATE);
        }
        log.status = resp.status();
        self.cx.metrics.request(
            log.route.map(Route::as_str).unwrap_or("protected"),
            log.status,
            started.elapsed(),
        );
        // A tunnel writes its line when it closes, with its bytes each way.
        if let Some(tunnel) = resp.extensions_mut().remove::<TunnelLog>() {
            tunnel.send(log);
            return resp;
        }
        resp.map(|body| LoggedBody::new(body, log).boxed_unsync())
    }

    /// The inner handler: uses `?` freely; the outer one turns errors into responses.
    ///
    /// The request is classified, its body read where the gate must inspect it, and the gate's
    /// [`Pass`] decides the route: nothing reaches a route, and so Faspex, that the gate has
    /// not read and passed.
    async fn handle_inner(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        client_ip: IpAddr,
        peer_trusted: bool,
        log: &mut AccessRecord,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let cx = &*self.cx;
        let gate = &cx.gate;
        let dropped = gate.headers(req.headers_mut())?;
        if dropped > 0 {
            self.cx.metrics.headers_dropped(dropped);
        }
        let classified = match gate.classify(req.method(), req.uri().path()) {
            Ok(c) => c,
            Err(e) => {
                log.path = "-".into();
                return Err(gate::Refusal::Path(e).into());
            }
        };
        log.route = Some(classified.route);
        log.path = classified.path.clone();

        match classified.route {
            Route::Denied => return Err(GatewayError::Denied),
            Route::Gateway => return own::serve(cx, &req, &classified.path),
            Route::Public | Route::Login | Route::Logout | Route::Protected => {}
        }

        let host = request_host(&req)?;
        let (scheme, public_host) = public_origin(req.headers(), peer_trusted, conn.scheme, &host);
        let side = ClientSide {
            client_ip,
            peer_ip: conn.peer.ip().to_canonical(),
            peer_trusted,
            scheme,
            host,
            public_host,
        };

        // The gate: no tunnel but a WebSocket where one belongs; read what must be read, then
        // decide on what was read.
        gate.upgrade(req.method(), &classified, req.headers())?;
        let rule = gate.body(
            req.method(),
            &classified,
            req.headers(),
            req.body().is_end_stream(),
        )?;
        // A request with no session counts against its address while it is still arriving.
        // So does one whose body the gate reads before any session is looked at, unless it
        // carries the gateway's cookie: the body would otherwise be read for anyone at all.
        let mut inflight = match classified.route {
            Route::Public | Route::Login => Some(cx.enter_public(client_ip)?),
            Route::Logout | Route::Protected
                if matches!(rule, BodyRule::Inspect { .. })
                    && self.cx.cookies.verify(req.headers()).is_none() =>
            {
                Some(cx.enter_public(client_ip)?)
            }
            Route::Logout | Route::Protected | Route::Denied | Route::Gateway => None,
        };
        let (mut parts, body) = req.into_parts();
        forward_path(&mut parts.uri, &classified)?;
        let (pass, body) = match rule {
            BodyRule::Inspect { kind, limit } => {
                let bytes = intake::read_client(body, limit, cx.body_idle_timeout).await?;
                // (it has arrived)
                inflight = None;
                // Faspex gets the bytes inspected here, whole, with their length.
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                let pass = gate.pass(parts, &classified, Some((&kind, &bytes)))?;
                (pass, Inspected::Read(bytes))
            }
            BodyRule::Empty | BodyRule::Stream => (
                gate.pass(parts, &classified, None)?,
                Inspected::Stream(body),
            ),
        };
        let path = classified.path.as_str();
        match pass {
            // (answered above, before any body was read)
            Pass::Gateway => Err(GatewayError::NotFound),
            Pass::Public(pass) => public::serve(cx, pass, body, path, &side, inflight).await,
            Pass::Login {
                username,
                password,
                gate,
            } => {
                let Inspected::Read(bytes) = body else {
                    return Err(GatewayError::BadRequest(
                        "a login must be sent as a form (application/x-www-form-urlencoded)",
                    ));
                };
                Box::pin(login::serve(cx, gate, &bytes, username, password, &side)).await
            }
            Pass::Logout(parts) => Box::pin(logout::serve(cx, &parts, &side)).await,
            Pass::Token(gate) => {
                Box::pin(protected::token(cx, gate, body.into_body(), &side, path)).await
            }
            Pass::PasswordForm(gate) => {
                Box::pin(protected::serve(cx, gate, body.into_body(), &side, path)).await
            }
            Pass::Protected(gate) => {
                protected::serve(cx, gate, body.into_body(), &side, path).await
            }
        }
    }
}
