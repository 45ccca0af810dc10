//! The request path from a parsed HTTP request to a response: classify, credentials and
//! session, policy, forward, and log.
//!
//! - **Public** paths (and the login page) pass under `public_requests_per_ip_per_minute`,
//!   holding no seat. Basic credentials are taken off them: Faspex must never check a password
//!   the gateway has not.
//! - **Login** (the form's POST): throttle, lockout, credential check, admission, then Faspex's
//!   own login; the gateway's cookie is set only when Faspex confirms, else the seat is given
//!   back.
//! - **Logout**: the gateway session ends, then the request goes on to Faspex.
//! - **Protected**: a live session is required: HTTP Basic (one client per address and
//!   User-Agent, the verification cache, a login on the first request), a bearer token Faspex
//!   issued to a session, or the gateway's cookie. A Faspex cookie alone is never enough.
//!
//! [`Gateway::handle`] is the outer handler: it times the request, calls the inner handler, turns
//! any [`GatewayError`] into a response (the only place that does), and wraps the response body
//! so that exactly one access-log line is written when the body ends, however it ends.

pub mod access;
pub mod classify;
pub mod client;
pub mod ends;
pub mod error;
pub mod faspex_check;
pub mod forward;
pub mod gate;
pub mod inflight;
pub mod pages;
pub mod session;
pub mod streams;
pub mod transfer;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use access::AccessRecord;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use arc_swap::ArcSwap;

use crate::auth::Directory;
use crate::config::{Config, FaspexConfig};
use crate::metrics::Metrics;
use crate::policy::{LoginRequest, Policy, SessionGone};
use crate::store::{ClientKind, EndReason, SessionKey};
use classify::{Classified, DenyPrefix, Route, RouteProfile};
use ends::{EndedMemo, Ends, FaspexLogouts};
pub use error::GatewayError;
use error::{Answer, Refusal};
use forward::{ClientSide, Lane, ProxyBody, Upstream};
use gate::{BodyRule, Gate, PasswordForm, Plan};
use inflight::{InflightGuard, PublicInflight};
use pages::{LoginForm, Site, TAKEOVER_FIELD};
use session::SessionCookies;
use streams::SessionStreams;

/// The most the gateway reads of a body it must look into: the login form, the token response.
pub const READ_LIMIT: usize = gate::LOGIN_READ_LIMIT;

use gate::HTTP_GATEWAY_PREFIX;

/// How much of a public request's body the gateway holds before it takes a connection to Faspex:
/// a body that stalls before this much has come holds none.
pub const PUBLIC_READ_AHEAD: usize = 64 * 1024;

/// The longest a login form may take to arrive, however it trickles.
const FORM_READ_LIMIT: Duration = Duration::from_secs(30);

/// What the server knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `"https"` on the TLS listener, `"http"` on the plain one.
    pub scheme: &'static str,
}

/// A connection's places under `server.max_connections` and `server.max_connections_per_ip`,
/// shared by the connection task and any tunnel it upgrades into. The server puts it in each
/// HTTP/1.1 request's extensions; the places are freed when the last holder is gone.
#[derive(Clone)]
pub struct ConnPermit(pub Arc<crate::server::ConnSlots>);

/// The gateway's request handler: a cheap-to-clone handle shared by every connection. Its
/// settings are swapped whole by [`Gateway::reload`]; each request runs on the settings it found
/// when it arrived.
#[derive(Clone)]
pub struct Gateway {
    current: Arc<ArcSwap<Inner>>,
}

/// One request's view of the gateway: the settings in force when it arrived.
struct Handler {
    inner: Arc<Inner>,
}

struct Inner {
    /// Which paths are public, denied, the login form, or the gateway's own, and which
    /// credentials a request may carry to Faspex.
    gate: Gate,
    /// Faspex, over its pool of keep-alive connections.
    upstream: Upstream,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// How long an upgraded tunnel, or a body the gateway reads, may be silent.
    body_idle_timeout: Duration,
    /// The four policies, the throttles and the verification cache.
    policy: Policy,
    /// Where credential checks go.
    directory: Arc<dyn Directory>,
    /// The gateway's session cookie; its name also marks a request as a browser's.
    cookies: Arc<SessionCookies>,
    /// Why sessions ended lately, for the page a returning browser sees.
    memo: Arc<EndedMemo>,
    /// Faspex logouts, for a login Faspex accepted that the gateway could not keep.
    logouts: FaspexLogouts,
    /// The sessions' open tunnels and long responses, ended with their session.
    streams: Arc<SessionStreams>,
    /// Public requests still arriving, per address, and how many may be.
    inflight: Arc<PublicInflight>,
    public_inflight_per_ip: u32,
    /// Connections to Faspex held for public requests, per address, and how many may be.
    public_upstream: Arc<PublicInflight>,
    address_share: u32,
    /// `server.ipv6_prefix_len`: an IPv6 "address" for the per-address counts.
    ipv6_prefix_len: u8,
    /// `Strict-Transport-Security` for the HTTPS listener's answers.
    hsts: Option<HeaderValue>,
    /// What the pages say.
    site: Site,
    /// Faspex's form field names, its session cookie and its token path.
    faspex: FaspexConfig,
    /// Requests by route and status, latency, upstream errors.
    metrics: Arc<Metrics>,
}

/// Credentials a protected request carries, classified by its headers.
enum Credentials {
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
    /// An `Authorization` header the gateway cannot read: 400.
    Malformed,
    /// No `Authorization` (or a scheme Faspex 4 does not use): the session cookie decides.
    None,
}

impl Gateway {
    /// The handler over an engine, a credential backend and the upstream. `memo` is the one the
    /// engine's [`ends::SessionEnds`] observer fills.
    pub fn new(
        cfg: &Config,
        policy: Policy,
        directory: Arc<dyn Directory>,
        upstream: Upstream,
        ends: Ends,
        metrics: Arc<Metrics>,
    ) -> Self {
        let inner = Inner {
            gate: gate(cfg),
            upstream,
            body_idle_timeout: cfg.server.body_idle_timeout,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            policy,
            directory,
            cookies: Arc::new(SessionCookies::new(
                &cfg.session.cookie_name,
                cfg.session.secret.expose(),
            )),
            memo: ends.memo,
            logouts: ends.logouts,
            streams: ends.streams,
            inflight: PublicInflight::new(),
            public_inflight_per_ip: cfg.policy.public_inflight_per_ip,
            public_upstream: PublicInflight::new(),
            address_share: forward::address_share(cfg.upstream.max_connections),
            ipv6_prefix_len: cfg.server.ipv6_prefix_len,
            hsts: cfg.server.hsts.clone(),
            site: site(cfg),
            faspex: cfg.faspex.clone(),
            metrics,
        };
        Gateway {
            current: Arc::new(ArcSwap::from_pointee(inner)),
        }
    }

    /// Take the reloadable settings of `cfg`: the route profile (public paths, deny list, login
    /// and logout paths), Faspex's field and cookie names, trusted proxies, the pages, and the
    /// credential backend. Requests in flight finish on the settings they started with; sessions
    /// are untouched. The rest (listeners, upstream, session cookie, store) needs a restart.
    pub fn reload(&self, cfg: &Config, directory: Arc<dyn Directory>) {
        let old = self.current.load_full();
        self.current.store(Arc::new(Inner {
            gate: gate(cfg),
            upstream: old.upstream.clone(),
            body_idle_timeout: old.body_idle_timeout,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
            policy: old.policy.clone(),
            directory,
            cookies: Arc::clone(&old.cookies),
            memo: Arc::clone(&old.memo),
            logouts: old.logouts.clone(),
            streams: Arc::clone(&old.streams),
            inflight: Arc::clone(&old.inflight),
            public_inflight_per_ip: cfg.policy.public_inflight_per_ip,
            public_upstream: Arc::clone(&old.public_upstream),
            address_share: old.address_share,
            ipv6_prefix_len: old.ipv6_prefix_len,
            hsts: old.hsts.clone(),
            site: site(cfg),
            faspex: cfg.faspex.clone(),
            metrics: Arc::clone(&old.metrics),
        }));
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
            inner: self.current.load_full(),
        }
        .handle(req, conn)
        .await
    }
}

fn gate(cfg: &Config) -> Gate {
    let f = &cfg.faspex;
    Gate::new(
        route_profile(cfg),
        &f.username_field,
        &f.password_field,
        f.password_forms
            .iter()
            .map(|r| PasswordForm {
                method: r.method.clone(),
                path: r.path.clone(),
            })
            .collect(),
        f.max_inspected_body,
    )
}

fn route_profile(cfg: &Config) -> RouteProfile {
    RouteProfile {
        login_path: cfg.faspex.login_path.clone(),
        logout_path: cfg.faspex.logout_path.clone(),
        token_path: cfg.faspex.token_path.clone(),
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
    }
}

fn site(cfg: &Config) -> Site {
    Site {
        helpdesk: cfg.pages.helpdesk.clone(),
        tz: cfg.pages.tz.clone(),
        login_path: cfg.faspex.login_path.clone(),
    }
}

impl Handler {
    /// The outer handler: never fails, always logs and counts.
    async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let (client_ip, peer_trusted) =
            forward::client_ip(conn.peer.ip(), req.headers(), &self.inner.trusted_proxies);
        let browser = error::BrowserSigns::of(req.headers(), &self.inner.cookies);
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
                    GatewayError::Upstream(forward::UpstreamError::Busy(wait)) => {
                        self.inner.metrics.upstream_busy();
                        tracing::warn!(
                            waited = ?wait,
                            route = %log.route.map(Route::as_str).unwrap_or("-"),
                            "every connection to Faspex this request may use stayed taken (503); \
                             see upstream.max_connections"
                        )
                    }
                    GatewayError::Upstream(e) => {
                        self.inner.metrics.upstream_error(e.kind());
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
                            self.inner.metrics.refused(reason);
                        }
                        tracing::debug!(error = %r, "request refused by the gate")
                    }
                    other => tracing::debug!(error = %other, "request refused"),
                }
                err.into_response(&Answer {
                    browser: browser.is_browser(),
                    site: &self.inner.site,
                    clear_cookie: self.inner.cookies.clear(),
                    now: self.inner.policy.now(),
                })
            }
        };
        let mut resp = resp;
        if let (Some(hsts), "https") = (&self.inner.hsts, conn.scheme) {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        if resp.headers().contains_key(header::WWW_AUTHENTICATE) && browser.is_browser() {
            // Whoever produced it (Faspex too): a browser must never show a password prompt.
            resp.headers_mut().remove(header::WWW_AUTHENTICATE);
        }
        log.status = resp.status();
        self.inner.metrics.request(
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
    /// [`Plan`] decides the route: nothing reaches a route, and so Faspex, that the gate has
    /// not read.
    async fn handle_inner(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        client_ip: IpAddr,
        peer_trusted: bool,
        log: &mut AccessRecord,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let gate = &self.inner.gate;
        let dropped = gate.headers(req.headers_mut())?;
        if dropped > 0 {
            self.inner.metrics.headers_dropped(dropped);
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
            Route::Gateway => return self.gateway_page(&req, &classified.path),
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
            Route::Public | Route::Login => Some(self.enter_public(client_ip)?),
            Route::Logout | Route::Protected
                if matches!(rule, BodyRule::Inspect { .. })
                    && self.inner.cookies.verify(req.headers()).is_none() =>
            {
                Some(self.enter_public(client_ip)?)
            }
            Route::Logout | Route::Protected | Route::Denied | Route::Gateway => None,
        };
        let (mut parts, body) = req.into_parts();
        forward_path(&mut parts.uri, &classified)?;
        let query = parts.uri.query();
        let (plan, body) = match rule {
            BodyRule::Inspect { kind, limit } => {
                let bytes = self.read_client(body, limit).await?;
                // (it has arrived)
                inflight = None;
                let plan = gate.decide(
                    &parts.method,
                    &classified,
                    &parts.headers,
                    query,
                    Some((&kind, &bytes)),
                );
                // Faspex gets the bytes inspected here, whole, with their length.
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                (plan, Inspected::Read(bytes))
            }
            BodyRule::Empty | BodyRule::Stream => (
                gate.decide(&parts.method, &classified, &parts.headers, query, None),
                Inspected::Stream(body),
            ),
        };
        let path = classified.path.as_str();
        match plan {
            Plan::Refuse(refusal) => Err(refusal.into()),
            // (answered above, before any body was read)
            Plan::Gateway => Err(GatewayError::NotFound),
            Plan::Public => {
                self.inner
                    .policy
                    .throttle_public(client_ip)
                    .map_err(GatewayError::PublicThrottled)?;
                // Public paths need no credentials, so none go with them: Faspex must never
                // check a password the gateway has not (that would bypass the lockout). Rails'
                // Basic support decodes whatever follows the scheme, whatever the scheme, so
                // every `Authorization` goes. Only the HTTP Gateway, a separate service that
                // takes Faspex's transfer tokens there, keeps its non-Basic ones.
                let transfer = classify::under_prefix(path, HTTP_GATEWAY_PREFIX);
                if !transfer || basic_credentials(&parts.headers) {
                    parts.headers.remove(header::AUTHORIZATION);
                }
                let body = match body {
                    Inspected::Read(bytes) => error::full(bytes),
                    Inspected::Stream(body) => self.read_ahead(body, inflight).await?,
                };
                self.pass(Request::from_parts(parts, body), &side, Via::PUBLIC)
                    .await
            }
            Plan::Login { username, password } => {
                parts.headers.remove(header::AUTHORIZATION);
                let Inspected::Read(bytes) = body else {
                    return Err(GatewayError::BadRequest(
                        "a login must be sent as a form (application/x-www-form-urlencoded)",
                    ));
                };
                Box::pin(self.form_login(parts, &bytes, username, password, &side)).await
            }
            Plan::Logout => Box::pin(self.logout(&parts, &side)).await,
            Plan::Token { username, password } => {
                let named = Named { username, password };
                Box::pin(self.protected(body.into_request(parts), &side, path, Some(named), false))
                    .await
            }
            Plan::PasswordForm => {
                Box::pin(self.protected(body.into_request(parts), &side, path, None, true)).await
            }
            Plan::Protected => {
                self.protected(body.into_request(parts), &side, path, None, false)
                    .await
            }
        }
    }

    // ----- the routes -----

    /// A protected request: it must carry a live session, by Basic credentials, a bearer token
    /// or the gateway's cookie. `token` holds the credentials a token grant names, which must be
    /// its Basic ones; `password_form` marks a form that carries a password of its own (Faspex's
    /// answer to it is never taken as a rotation of the session's cookie).
    async fn protected(
        &self,
        req: Request<ProxyBody>,
        side: &ClientSide,
        path: &str,
        token: Option<Named>,
        password_form: bool,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let policy = &self.inner.policy;
        let creds = credentials(req.headers());
        if token.is_some() && !matches!(creds, Credentials::Basic { .. } | Credentials::Malformed) {
            // Faspex grants tokens for the credentials in the request: only ones the gateway
            // has checked may reach it.
            return Err(GatewayError::BadRequest(
                "the token endpoint takes HTTP Basic credentials",
            ));
        }
        match creds {
            Credentials::Basic { user, password } => {
                Box::pin(self.basic(req, side, path, &user, &password, token)).await
            }
            Credentials::Bearer(token) => match policy.bearer_session(&token, path).await? {
                // An API client's credentials are its token: no Faspex session rides along.
                Ok(session) => self.pass(req, side, Via::session(&session.key, None)).await,
                Err(_) => Err(GatewayError::NoSession(None)),
            },
            Credentials::Malformed => Err(GatewayError::BadRequest(
                "the Authorization header is malformed, not UTF-8, or of an unknown scheme",
            )),
            Credentials::None => {
                let Some(claims) = self.inner.cookies.verify(req.headers()) else {
                    return Err(GatewayError::NoSession(None));
                };
                let key = claims.key();
                let session = match policy.session_by_key(key, path).await? {
                    Ok(s) => s,
                    Err(SessionGone::Expired(why)) => {
                        return Err(GatewayError::NoSession(Some(why)))
                    }
                    Err(SessionGone::Unknown) => {
                        return Err(GatewayError::NoSession(self.inner.memo.why(key)))
                    }
                };
                // The session's own Faspex session, whatever Faspex cookie the browser sent:
                // a gateway session never rides on another account's Faspex session.
                let via = Via::session(&session.key, session.upstream_cookie.as_deref());
                let resp = self.pass(req, side, via).await?;
                // Faspex rotated its session cookie on a request that carried no credential:
                // keep the new one for the logout.
                let name = &self.inner.faspex.session_cookie;
                if !password_form {
                    if let Some(fresh) = session::set_cookie_pair(resp.headers(), name) {
                        if session.upstream_cookie.as_deref() != Some(fresh.as_str()) {
                            if let Err(e) =
                                policy.set_upstream_cookie(&session.key, Some(fresh)).await
                            {
                                // Faspex has answered: the answer goes out whatever the store
                                // says.
                                tracing::error!(error = %e, "could not keep Faspex's rotated cookie");
                            }
                        }
                    }
                }
                Ok(resp)
            }
        }
    }

    /// An HTTP Basic caller: one client per (source address, User-Agent). Its first request
    /// (and the first after its session ends) is a login; later ones are confirmed by the
    /// verification cache, or by a fresh check under the same lockout.
    async fn basic(
        &self,
        mut req: Request<ProxyBody>,
        side: &ClientSide,
        path: &str,
        user: &str,
        password: &str,
        token: Option<Named>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let policy = &self.inner.policy;
        let directory = &self.inner.directory;
        let agent = user_agent(req.headers());
        let client = LoginRequest::basic_client(side.client_ip, &agent);
        let login = LoginRequest {
            username: user,
            password,
            ip: side.client_ip,
            agent: &agent,
            client: client.clone(),
            kind: ClientKind::Basic,
            takeover: false,
        };
        let token_request = token.is_some();
        if let Some(named) = token {
            // Faspex is never asked for a token for other credentials than the ones checked
            // here.
            let same_user = named
                .username
                .as_deref()
                .is_none_or(|v| policy.account(v).ok() == policy.account(user).ok());
            let same_password = named.password.as_deref().is_none_or(|v| v == password);
            if !same_user || !same_password {
                return Err(GatewayError::BadRequest(
                    "the token request names other credentials than its Authorization",
                ));
            }
            // The gateway reads the answer: it must be plain JSON.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }

        if let Ok(account) = policy.account(user) {
            let live = if policy.cache().hit(&account, password, policy.now()) {
                policy.client_session(&account, &client, path).await?.ok()
            } else if policy.client_session_peek(&account, &client).await?.is_ok() {
                policy.recheck(&login, directory).await?;
                policy.client_session(&account, &client, path).await?.ok()
            } else {
                None
            };
            if let Some(session) = live {
                let resp = self
                    .pass(req, side, Via::session(&session.key, None))
                    .await?;
                if basic_challenge(&resp) {
                    // Faspex no longer takes these credentials: neither may the gateway.
                    policy.cache().forget(&account);
                    if let Err(e) = policy.end(&session.key, EndReason::Rollback).await {
                        tracing::error!(error = %e, "could not end a session Faspex refused");
                    }
                    return Ok(resp);
                }
                return self.after_api(resp, &session.key, token_request).await;
            }
        }

        let pending = policy.login_pending(login, directory).await?;
        let key = pending.admitted().session.key.clone();
        let resp = match self.pass(req, side, Via::session(&key, None)).await {
            Ok(resp) => resp,
            Err(e) => {
                // The login never reached Faspex, or Faspex never answered: no seat is kept.
                self.refused_upstream(pending).await;
                return Err(e);
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Faspex refused credentials the directory accepted.
            self.refused_upstream(pending).await;
            return Ok(resp);
        }
        pending.confirm().await;
        self.after_api(resp, &key, token_request).await
    }

    /// After an API request on session `key`: a token response ties its access token to it.
    async fn after_api(
        &self,
        resp: Response<ProxyBody>,
        key: &SessionKey,
        token_request: bool,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        if !token_request || !resp.status().is_success() {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        let mut body = body;
        let bytes = read_limited(&mut body, READ_LIMIT)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => GatewayError::TooLarge(READ_LIMIT),
                ReadError::Broken(e) => GatewayError::Upstream(forward::UpstreamError::Protocol(e)),
            })?;
        match access_token(&bytes) {
            Some(token) => {
                if !self.inner.policy.add_bearer(key, &token).await? {
                    // The session ended meanwhile: the token must not outlive it unseen.
                    return Err(GatewayError::NoSession(None));
                }
            }
            None => tracing::warn!(
                status = parts.status.as_u16(),
                "Faspex answered a token request without an access token the gateway can read"
            ),
        }
        Ok(Response::from_parts(parts, error::full(bytes)))
    }

    /// Read a client's body the gateway must look into: at most `limit` bytes (`413`), within
    /// [`FORM_READ_LIMIT`], never standing still longer than the body idle timeout.
    async fn read_client(&self, body: Incoming, limit: usize) -> Result<Bytes, GatewayError> {
        let idle = self.inner.body_idle_timeout;
        let mut body =
            transfer::TransferBody::new(forward::client_body(body), idle, None).boxed_unsync();
        match tokio::time::timeout(FORM_READ_LIMIT, read_limited(&mut body, limit)).await {
            Err(_) => Err(GatewayError::ClientStalled(FORM_READ_LIMIT)),
            Ok(Err(ReadError::TooLarge)) => {
                // Let a client that sends a little too much finish sending, so that it reads
                // the 413 instead of a reset connection; a flood is cut off.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut drained = 0usize;
                    while let Some(Ok(frame)) = body.frame().await {
                        drained += frame.data_ref().map_or(0, |d| d.len());
                        if drained > 1024 * 1024 {
                            break;
                        }
                    }
                })
                .await;
                Err(gate::Refusal::TooLarge(limit).into())
            }
            Ok(Err(ReadError::Broken(e))) if e.is::<transfer::BodyIdle>() => {
                Err(GatewayError::ClientStalled(idle))
            }
            Ok(Err(ReadError::Broken(_))) => Err(GatewayError::ClientAborted),
            Ok(Ok(bytes)) => Ok(bytes),
        }
    }

    /// The login form's POST: throttle, lockout, credential check and admission, then Faspex's
    /// own login. Only when Faspex confirms it does the browser get the gateway's cookie.
    ///
    /// `username` and `password` are the credentials the gate read from the form, exactly as
    /// Rails reads them; the form Faspex gets is rebuilt from the fields read here, with no
    /// query string and no `Content-Encoding`.
    async fn form_login(
        &self,
        mut parts: http::request::Parts,
        bytes: &[u8],
        username: String,
        password: String,
        side: &ClientSide,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        // (Rack would turn the POST into another method on request)
        parts
            .headers
            .remove(header::HeaderName::from_static("x-http-method-override"));
        let f = &self.inner.faspex;
        // The fields as the gate read them (Rack's reading: spaces after a separator dropped),
        // so that the form Faspex gets is the one checked.
        let mut params = Vec::new();
        crate::faspex::rack::form_params(bytes, &mut params)?;
        let pairs: Vec<(String, String)> = params
            .into_iter()
            .map(|p| (p.name, String::from_utf8_lossy(&p.value).into_owned()))
            .collect();
        if pairs.iter().filter(|(k, _)| k == TAKEOVER_FIELD).count() > 1 {
            return Err(GatewayError::BadRequest(
                "the login form repeats a credential field",
            ));
        }
        let takeover = pairs.iter().any(|(k, v)| k == TAKEOVER_FIELD && v == "1");
        let form = LoginForm {
            username: username.clone(),
            hidden: pairs
                .iter()
                .filter(|(k, _)| {
                    *k != f.username_field && *k != f.password_field && k != TAKEOVER_FIELD
                })
                .cloned()
                .collect(),
            username_field: f.username_field.clone(),
            password_field: f.password_field.clone(),
        };
        // Faspex gets exactly the fields checked here, less the gateway's own, and no query
        // string: Rails would let a query parameter override the form's credentials.
        let forward_body = {
            let mut out = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs.iter().filter(|(k, _)| k != TAKEOVER_FIELD) {
                out.append_pair(k, v);
            }
            Bytes::from(out.finish())
        };
        parts.uri = match parts.uri.path().parse() {
            Ok(uri) => uri,
            Err(_) => return Err(GatewayError::BadRequest("the login path is not valid")),
        };

        let previous = self.inner.cookies.verify(&parts.headers);
        let client = match &previous {
            Some(claims) => claims.client(),
            None => SessionCookies::new_client()?,
        };
        let agent = user_agent(&parts.headers);
        let login = LoginRequest {
            username: &username,
            password: &password,
            ip: side.client_ip,
            agent: &agent,
            client: client.clone(),
            kind: ClientKind::Browser,
            takeover,
        };
        let pending = match self
            .inner
            .policy
            .login_pending(login, &self.inner.directory)
            .await
        {
            Ok(p) => p,
            Err(refused) => {
                return Err(GatewayError::Refused(Box::new(Refusal {
                    refused,
                    form: Some(form),
                })))
            }
        };

        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(forward_body.len()),
        );
        // No Faspex cookie goes along: one the browser sent could name another account's live
        // Faspex session, which a login action that skips an already signed-in session would
        // hand back as this login's. (Rails 3 answers a form whose authenticity token has no
        // session by resetting the session and going on with the login.)
        let req = Request::from_parts(parts, error::full(forward_body));
        let mut resp = match self.send(req, side, None, Lane::Session).await {
            Ok(resp) => resp,
            Err(e) => {
                self.refused_upstream(pending).await;
                return Err(e);
            }
        };
        if !self.login_succeeded(&resp, side) {
            // One of Faspex's own accounts: its answer is the check. A refusal is a wrong
            // password, answered as the directory's is; an error is no verdict.
            if pending.faspex_checks() && !resp.status().is_server_error() {
                let refused = pending.reject().await;
                return Err(GatewayError::Refused(Box::new(Refusal {
                    refused,
                    form: None,
                })));
            }
            self.refused_upstream(pending).await;
            return Ok(resp);
        }

        // Faspex has logged the person in. Keep its session cookie with ours.
        let name = &f.session_cookie;
        // Only from Faspex's answer to the login checked here: a cookie the browser sent could
        // name another account's Faspex session.
        let faspex_cookie = session::set_cookie_pair(resp.headers(), name);
        if faspex_cookie.is_none() {
            tracing::warn!(
                cookie = %name,
                "Faspex accepted a login without the session cookie faspex.session_cookie names; \
                 the gateway cannot log that Faspex session out when it ends the session"
            );
        }
        let admitted = pending.admitted().clone();
        let saved = self
            .inner
            .policy
            .set_upstream_cookie(&admitted.session.key, faspex_cookie.clone())
            .await;
        let issued = self.inner.cookies.issue(&admitted.token, &client);
        let failure = match (saved, issued) {
            (Ok(true), Some(cookie)) => {
                resp.headers_mut().append(header::SET_COOKIE, cookie);
                None
            }
            (Ok(false), _) => Some(GatewayError::NoSession(None)),
            (Err(e), _) => Some(GatewayError::Store(e)),
            (Ok(true), None) => Some(GatewayError::Store(crate::store::StoreError::Closed)),
        };
        if let Some(e) = failure {
            // The session ended meanwhile (another login from this browser renewed it), or it
            // could not be saved: give the seat back and log the Faspex session out again.
            tracing::warn!(error = %e, "a login Faspex accepted could not be kept");
            self.refused_upstream(pending).await;
            if let Some(c) = faspex_cookie {
                self.inner.logouts.queue(c);
            }
            return Err(e);
        }
        pending.confirm().await;
        // This browser's earlier session, if it was another (another account's): it ends now.
        if let Some(old) = previous.map(|c| c.key().clone()) {
            if old != admitted.session.key {
                match self.inner.policy.end(&old, EndReason::Logout).await {
                    Ok(Some(ended)) => {
                        if let Some(c) = ended
                            .upstream_cookie
                            .filter(|c| Some(c) != faspex_cookie.as_ref())
                        {
                            self.inner.logouts.queue(c);
                        }
                    }
                    Ok(None) => {}
                    // Faspex has answered and the new session is live: the answer goes out.
                    Err(e) => {
                        tracing::error!(error = %e, "could not end a browser's earlier session")
                    }
                }
            }
        }
        Ok(resp)
    }

    /// Faspex refused (or never answered) a login the engine admitted: give the seat back.
    async fn refused_upstream(&self, pending: crate::policy::PendingLogin) {
        if let Err(e) = pending.refuse().await {
            tracing::error!(error = %e, "could not roll back a login Faspex refused");
        }
    }

    /// The contract's rule: a login succeeded when Faspex answers 3xx with a `Location` on the
    /// same origin and outside the login path.
    fn login_succeeded(&self, resp: &Response<ProxyBody>, side: &ClientSide) -> bool {
        if !resp.status().is_redirection() {
            return false;
        }
        let Some(loc) = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(host) = side.public_host.as_ref().and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let Ok(base) = url::Url::parse(&format!(
            "{}://{}{}",
            side.scheme, host, self.inner.faspex.login_path
        )) else {
            return false;
        };
        let Ok(target) = base.join(loc) else {
            return false;
        };
        let origin = target.origin().ascii_serialization();
        let same_origin =
            target.origin() == base.origin() || self.inner.upstream.origins().contains(&origin);
        same_origin && !self.inner.gate.profile.is_login_page(target.path())
    }

    /// Logout: the gateway ends the session itself (its seat is free) and logs the Faspex
    /// session out with the cookie it kept, as for every session it ends; the browser is sent
    /// to the login page. A GET ends it only when the browser marks it same-origin: a link on
    /// another site gets a page asking to confirm with a button (a POST). Without a session of
    /// the gateway's, nothing ends and it counts as a public request.
    async fn logout(
        &self,
        parts: &http::request::Parts,
        side: &ClientSide,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let had_cookie = self.inner.cookies.present(&parts.headers);
        let claims = self.inner.cookies.verify(&parts.headers);
        if claims.is_some() && !same_origin_request(parts, side) {
            let mut resp = error::html(
                StatusCode::OK,
                pages::confirm_logout(&self.inner.faspex.logout_path),
            );
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(resp);
        }
        let ended = match claims {
            Some(claims) => {
                self.inner
                    .policy
                    .end(claims.key(), EndReason::Logout)
                    .await?
            }
            None => None,
        };
        match ended {
            Some(s) => {
                if let Some(c) = s.upstream_cookie {
                    self.inner.logouts.queue(c);
                }
            }
            None => self
                .inner
                .policy
                .throttle_public(side.client_ip)
                .map_err(GatewayError::PublicThrottled)?,
        }
        let mut resp = Response::new(error::full(Bytes::new()));
        *resp.status_mut() = StatusCode::FOUND;
        if let Ok(to) = HeaderValue::from_str(&self.inner.faspex.login_path) {
            resp.headers_mut().insert(header::LOCATION, to);
        }
        if had_cookie {
            if let Some(clear) = self.inner.cookies.clear() {
                resp.headers_mut().append(header::SET_COOKIE, clear);
            }
        }
        Ok(resp)
    }

    /// The gateway's own pages.
    fn gateway_page(
        &self,
        req: &Request<Incoming>,
        path: &str,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match path {
            "/_faspex-gate/expired" if get => {
                let why = req.uri().query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "reason")
                        .and_then(|(_, v)| match v.as_ref() {
                            "absolute" => Some(EndReason::Absolute),
                            "replaced" => Some(EndReason::Replaced),
                            "admin" => Some(EndReason::Admin),
                            _ => None,
                        })
                });
                let mut resp = error::html(StatusCode::OK, pages::ended(&self.inner.site, why));
                if let Some(clear) = self.inner.cookies.clear() {
                    resp.headers_mut().append(header::SET_COOKIE, clear);
                }
                Ok(resp)
            }
            _ => Err(GatewayError::NotFound),
        }
    }

    // ----- forwarding -----

    /// Forward a client's request as the gate read it, body streaming or read, with a WebSocket
    /// upgrade joined once Faspex agrees. `via` says whose request it is: the session it belongs
    /// to (its tunnels and long responses end with it) and the Faspex cookie that goes with it.
    async fn pass(
        &self,
        mut req: Request<ProxyBody>,
        side: &ClientSide,
        via: Via<'_>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        // A WebSocket upgrade (the gate lets no other ask): keep hold of the client's side of
        // the connection so that, once Faspex agrees with a 101, the two can be joined.
        let client_upgrade = if req.version() <= http::Version::HTTP_11
            && forward::upgrade_protocol(req.headers()).is_some()
        {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };

        let conn_permit = req.extensions_mut().remove::<ConnPermit>();
        if via.lane == Lane::Public && client_upgrade.is_some() {
            // One address's public tunnels may hold only its share of the connections to
            // Faspex: a tunnel lasts as long as a byte crosses it now and then. (Short requests
            // are not held to it: 50 browsers behind one NAT address load a page's assets at
            // once.)
            let key =
                crate::server::per_ip::address_key(side.client_ip, self.inner.ipv6_prefix_len);
            let Some(share) = self
                .inner
                .public_upstream
                .enter(key, self.inner.address_share)
            else {
                self.inner.metrics.refused("public_inflight");
                return Err(GatewayError::PublicInflight);
            };
            req.extensions_mut()
                .insert(forward::AddressShare(Arc::new(share)));
        }
        let mut resp = self.send(req, side, via.faspex_cookie, via.lane).await?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // Faspex switched protocols without being asked: nothing sane to relay.
                return Err(GatewayError::Upstream(forward::UpstreamError::Protocol(
                    "101 Switching Protocols without an upgrade request".into(),
                )));
            };
            // Only the protocol that was asked for (the gate lets only WebSocket ask).
            let agreed = forward::upgrade_protocol(resp.headers())
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !agreed {
                return Err(GatewayError::Upstream(forward::UpstreamError::Protocol(
                    "101 Switching Protocols to another protocol than the one asked for".into(),
                )));
            }
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let slot = resp.extensions_mut().remove::<Arc<forward::UpstreamSlot>>();
            let hold = via.session.map(|k| self.inner.streams.hold(k));
            let idle = self.inner.body_idle_timeout;
            let (log_tx, log_rx) = tokio::sync::oneshot::channel::<AccessRecord>();
            tokio::spawn(async move {
                // The client's connection slot and the upstream connection's are held for as
                // long as the tunnel is open.
                let _held = (conn_permit, slot);
                let ended = async {
                    match &hold {
                        Some(h) => h.ended().await,
                        None => std::future::pending().await,
                    }
                };
                let end = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let client = TokioIo::new(client);
                        let upstream = TokioIo::new(upstream);
                        let end = transfer::tunnel(client, upstream, idle, ended).await;
                        if let Err(e) = &end.outcome {
                            tracing::debug!(error = %e, "a tunnel ended with an error");
                        }
                        Some(end)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        None
                    }
                };
                if let Ok(record) = log_rx.await {
                    if tracing::enabled!(target: access::TARGET, tracing::Level::INFO) {
                        let line = match &end {
                            Some(e) => record.tunnel_line(e.up, e.down, e.outcome.is_ok()),
                            None => record.tunnel_line(0, 0, false),
                        };
                        tracing::info!(target: access::TARGET, line = line.as_str());
                    }
                }
            });
            let (mut parts, _) = resp.into_parts();
            parts.extensions.insert(TunnelLog::new(log_tx));
            return Ok(Response::from_parts(parts, error::full(Bytes::new())));
        }

        // A long response of a session's (a download) ends when the session does.
        if let Some(key) = via.session {
            if streams::long(resp.body()) {
                let hold = self.inner.streams.hold(key);
                return Ok(resp.map(|body| streams::SessionBound::new(body, hold).boxed_unsync()));
            }
        }
        Ok(resp)
    }

    /// Send a request to Faspex over a connection of `lane`'s. Its cookies are an allow-list:
    /// `faspex_cookie` (the session's own Faspex cookie) and `faspex.forward_cookies`; the
    /// gateway's own and every other cookie stay here.
    async fn send(
        &self,
        mut req: Request<ProxyBody>,
        side: &ClientSide,
        faspex_cookie: Option<&str>,
        lane: Lane,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        session::allow_cookies(
            req.headers_mut(),
            &self.inner.faspex.forward_cookies,
            faspex_cookie,
        );
        Ok(self.inner.upstream.forward(req, side, lane).await?)
    }

    /// Count a request with no session against its address (an IPv6 address by its prefix, as
    /// for the connection limit) while it arrives (429 beyond `policy.public_inflight_per_ip`).
    fn enter_public(&self, ip: IpAddr) -> Result<InflightGuard, GatewayError> {
        let key = crate::server::per_ip::address_key(ip, self.inner.ipv6_prefix_len);
        self.inner
            .inflight
            .enter(key, self.inner.public_inflight_per_ip)
            .ok_or_else(|| {
                self.inner.metrics.refused("public_inflight");
                GatewayError::PublicInflight
            })
    }

    /// A public request's body, ready to forward: its first [`PUBLIC_READ_AHEAD`] bytes (or
    /// all of it, when smaller) are read before a connection to Faspex is taken, so that a body
    /// that stalls holds none. The request counts against its address (`inflight`) until the
    /// last of its body has come.
    async fn read_ahead(
        &self,
        body: Incoming,
        inflight: Option<InflightGuard>,
    ) -> Result<ProxyBody, GatewayError> {
        if body.is_end_stream() {
            return Ok(forward::client_body(body));
        }
        let idle = self.inner.body_idle_timeout;
        let mut body =
            transfer::TransferBody::new(forward::client_body(body), idle, None).boxed_unsync();
        let mut head = bytes::BytesMut::new();
        while head.len() < PUBLIC_READ_AHEAD {
            match body.frame().await {
                None => return Ok(error::full(head.freeze())),
                Some(Ok(frame)) => {
                    // (trailers, which Rack never reads, are not forwarded)
                    if let Ok(data) = frame.into_data() {
                        head.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) if e.is::<transfer::BodyIdle>() => {
                    return Err(GatewayError::ClientStalled(idle))
                }
                Some(Err(_)) => return Err(GatewayError::ClientAborted),
            }
            if body.is_end_stream() {
                return Ok(error::full(head.freeze()));
            }
        }
        Ok(ReadAhead {
            head: Some(head.freeze()),
            rest: body,
            inflight,
        }
        .boxed_unsync())
    }
}

/// Whose request goes to Faspex: a public one, or one of a session's.
#[derive(Clone, Copy)]
struct Via<'a> {
    lane: Lane,
    session: Option<&'a SessionKey>,
    /// The session's own Faspex cookie, when it goes along.
    faspex_cookie: Option<&'a str>,
}

impl<'a> Via<'a> {
    const PUBLIC: Via<'static> = Via {
        lane: Lane::Public,
        session: None,
        faspex_cookie: None,
    };

    fn session(key: &'a SessionKey, faspex_cookie: Option<&'a str>) -> Via<'a> {
        Via {
            lane: Lane::Session,
            session: Some(key),
            faspex_cookie,
        }
    }
}

/// Put on a 101 response by [`Handler::pass`]: the outer handler hands the request's access
/// record to the tunnel, which writes the line when it closes.
#[derive(Clone)]
struct TunnelLog(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<AccessRecord>>>>);

impl TunnelLog {
    fn new(tx: tokio::sync::oneshot::Sender<AccessRecord>) -> Self {
        TunnelLog(Arc::new(std::sync::Mutex::new(Some(tx))))
    }

    fn send(self, record: AccessRecord) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(record);
        }
    }
}

/// A public body whose head was read ahead: the head, then the rest as it comes. The request
/// stops counting against its address when the rest has come.
struct ReadAhead {
    head: Option<Bytes>,
    rest: ProxyBody,
    inflight: Option<InflightGuard>,
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = forward::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.rest.is_end_stream() {
            self.inflight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(head));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(head));
        }
        hint
    }
}

/// A request's body after the gate: read whole and inspected, or streaming.
enum Inspected {
    Read(Bytes),
    Stream(Incoming),
}

impl Inspected {
    fn into_request(self, parts: http::request::Parts) -> Request<ProxyBody> {
        match self {
            Inspected::Read(bytes) => Request::from_parts(parts, error::full(bytes)),
            Inspected::Stream(body) => Request::from_parts(parts, forward::client_body(body)),
        }
    }
}

/// The credentials a token grant names in its form.
struct Named {
    username: Option<String>,
    password: Option<String>,
}

/// Put the path the gate classified, normalised, into the request target: the path Faspex
/// receives is the one classified.
fn forward_path(uri: &mut http::Uri, c: &Classified) -> Result<(), GatewayError> {
    let Some(path) = &c.forward else {
        return Ok(());
    };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut builder = http::Uri::builder();
    if let Some(scheme) = uri.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(a) = uri.authority() {
        builder = builder.authority(a.clone());
    }
    *uri = builder
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadRequest("the request path is not valid"))?;
    Ok(())
}

/// Whether a request comes from the gateway's own origin, as the browser tells: a POST not
/// marked cross-site, or a GET marked same-origin (`Sec-Fetch-Site: same-origin` or `none`, a
/// typed address) or carrying a same-origin `Origin` or `Referer`.
fn same_origin_request(parts: &http::request::Parts, side: &ClientSide) -> bool {
    let h = &parts.headers;
    let fetch_site = h
        .get("sec-fetch-site")
        .map(|v| v.as_bytes().to_ascii_lowercase());
    let origin_of = |v: &HeaderValue| -> Option<bool> {
        let url = url::Url::parse(v.to_str().ok()?).ok()?;
        let host = side.public_host.as_ref()?.to_str().ok()?;
        let ours = url::Url::parse(&format!("{}://{host}/", side.scheme)).ok()?;
        Some(url.origin() == ours.origin())
    };
    // Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` even for its own
    // origin's form posts; with `Sec-Fetch-Site` saying same-origin, that null says nothing.
    let origin = h
        .get(header::ORIGIN)
        .filter(|v| {
            !(v.as_bytes() == b"null" && matches!(fetch_site.as_deref(), Some(b"same-origin")))
        })
        .map(|v| origin_of(v).unwrap_or(false));
    let referer = h
        .get(header::REFERER)
        .map(|v| origin_of(v).unwrap_or(false));
    match fetch_site.as_deref() {
        Some(b"same-origin" | b"none") => return origin != Some(false),
        Some(_) => return false,
        None => {}
    }
    if origin == Some(false) || referer == Some(false) {
        return false;
    }
    parts.method == Method::POST || origin == Some(true) || referer == Some(true)
}

/// Why a body could not be read.
enum ReadError {
    TooLarge,
    Broken(forward::BoxError),
}

/// Read a whole body of at most [`READ_LIMIT`] bytes.
async fn read_limited(body: &mut ProxyBody, limit: usize) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The `access_token` of an OAuth2 token response.
fn access_token(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("access_token")?
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The User-Agent, or empty.
fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// Whether the request carries `Authorization: Basic …` (in any of its `Authorization`
/// headers; one that is not text counts too).
fn basic_credentials(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| v.to_str().map_or(true, scheme_is_basic))
}

/// Whether an `Authorization` or `WWW-Authenticate` value is of the Basic scheme.
fn scheme_is_basic(value: &str) -> bool {
    value
        .split_ascii_whitespace()
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("basic"))
}

/// Whether a response is Faspex's Basic challenge: the credentials were refused.
fn basic_challenge(resp: &Response<ProxyBody>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(scheme_is_basic)
}

/// Classify a request's credentials by its `Authorization` header.
fn credentials(headers: &HeaderMap) -> Credentials {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credentials::None;
    };
    if values.next().is_some() {
        return Credentials::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Credentials::Malformed;
    };
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = STANDARD
            .decode(rest)
            .or_else(|_| STANDARD_NO_PAD.decode(rest))
        else {
            return Credentials::Malformed;
        };
        // Not UTF-8, name or password: 400. A lossy reading would check another password than
        // the bytes Faspex receives.
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Credentials::Malformed;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return Credentials::Malformed;
        };
        return Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        };
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Credentials::Malformed;
        }
        return Credentials::Bearer(rest.to_owned());
    }
    // Faspex 4 knows only these two; what it would make of another is not worth guessing.
    Credentials::Malformed
}

/// The authority the client asked for. `Host`, an absolute-form target's authority (HTTP/1.1)
/// and `:authority` (HTTP/2, which hyper puts in the target) pass the same check: each must be a
/// plain `host[:port]`, with no user information, and when a request carries two of them they
/// must name the same authority. Faspex and the redirects see that one. An HTTP/1.1 request must
/// carry exactly one `Host` (RFC 9112 §3.2).
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    if req.version() == http::Version::HTTP_11 && host.is_none() {
        return Err(GatewayError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if let Some(h) = host {
        if !is_authority(h.as_bytes()) {
            return Err(GatewayError::BadRequest(
                "the Host header is not a host name",
            ));
        }
    }
    let Some(target) = req.uri().authority() else {
        return Ok(host.cloned());
    };
    if !is_authority(target.as_str().as_bytes()) {
        return Err(GatewayError::BadRequest(
            "the request target's authority is not a host name",
        ));
    }
    if let Some(h) = host {
        if !h
            .as_bytes()
            .eq_ignore_ascii_case(target.as_str().as_bytes())
        {
            return Err(GatewayError::BadRequest(
                "the Host header and the request target name different hosts",
            ));
        }
        return Ok(Some(h.clone()));
    }
    Ok(HeaderValue::from_str(target.as_str()).ok())
}

/// `host[:port]` with no user information, path or other decoration.
///
/// The host is a DNS name (letters, digits, `-` and `.`), an IPv4 address, or an IPv6 literal in
/// brackets without a zone; the port, when there is a `:`, is 1 to 65535. Anything else a URI
/// allows in a host (`,`, `_`, `!`, `%`-escapes...) is refused: Rack reads a comma list in a
/// host header by its last element, and what Faspex writes into its links must be a plain name.
fn is_authority(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        },
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => std::str::from_utf8(inner)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some(),
        h => {
            !h.is_empty()
                && h.len() <= 253
                && h.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !h.starts_with(b".")
                && !h.windows(2).any(|w| w == b"..")
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|p| (1..=65535).contains(&p))
        }
        _ => false,
    };
    host_ok && port_ok
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
            if tracing::enabled!(target: access::TARGET, tracing::Level::INFO) {
                let line = r.line(self.bytes, complete && !self.failed);
                tracing::info!(target: access::TARGET, line = line.as_str());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_is_a_plain_host_and_port() {
        for ok in [
            "localhost",
            "localhost:8443",
            "faspex.example.org",
            "faspex.example.org.",
            "192.0.2.7:443",
            "[2001:db8::1]",
            "[::1]:8443",
            "a-b.example:1",
            "x:65535",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "evil.example,localhost",
            "user@host",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:99999",
            "evil.example:443.",
            "local_host",
            "[::ffff:1.2.3.4%25eth0]",
            "[::1",
            "::1",
            ".example",
            "a..b",
            "host/path",
            "host?q",
            "h\u{e9}te",
            "%65vil",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
    }
}
