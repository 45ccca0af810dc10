//! The admin listener (`admin.listen`, plain HTTP, loopback by default): Prometheus metrics,
//! health and readiness, and the helpdesk's admin API, which `faspex-gate admin` ([`client`])
//! calls.
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /metrics` | none | the Prometheus text format; the gauges are read from the store now |
//! | `GET /healthz` | none | `200 ok`: the process answers |
//! | `GET /readyz` | none | `200 ready`, or `503` naming each of upstream, directory and store that is not |
//! | `GET /admin/v1/status` | bearer | seats used and the limit, sessions, locked accounts |
//! | `GET /admin/v1/sessions` | bearer | live sessions |
//! | `DELETE /admin/v1/sessions/{user}` | bearer | kick: end the user's sessions |
//! | `GET /admin/v1/lockouts` | bearer | locks in force |
//! | `DELETE /admin/v1/lockouts/{user}` | bearer | unlock |
//! | `POST /admin/v1/lockouts/{user}` | bearer | lock, body optional `{"for":"1h"}` |
//! | `POST /admin/v1/clock` | bearer | test builds on a manual clock only ([`clock`]): `{"advance_secs":3600}` |
//!
//! The bearer token (`admin.token_file`) is compared in constant time (as SHA-256 digests, so
//! not even its length shows). A missing or wrong token gets `401` and an `admin_refused` audit
//! record. Every unlock, lock and kick is audited with the operator (`X-Admin-Actor`) and the
//! caller's address. Bodies are JSON; an error is `{"error": "…"}` with a 4xx or 5xx status.

mod body;
pub mod client;
#[cfg(feature = "test-support")]
mod clock;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::audit::AuditLog;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::policy::{AdminError, Policy};
use crate::proxy::Gateway;
use crate::store::{Lock, Session};
use body::{Refused, MAX_BODY};

/// The API's path prefix.
pub const API_PREFIX: &str = "/admin/v1/";

/// The header the CLI puts the operator's login name in.
pub const ACTOR_HEADER: &str = "x-admin-actor";

/// The most admin connections open at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;

/// The longest a scrape of `/metrics` waits on the store.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

/// How long each readiness check may take.
const READY_LIMIT: Duration = Duration::from_secs(5);

/// The longest `admin lock --for` accepted.
pub const MAX_LOCK: Duration = Duration::from_secs(366 * 24 * 3600);

/// What the admin listener serves from. Cheap to clone.
#[derive(Clone)]
pub struct AdminApi {
    inner: Arc<ApiInner>,
}

struct ApiInner {
    policy: Policy,
    gateway: Gateway,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    /// SHA-256 of the token; swapped when a reload reads a new token file.
    token: ArcSwap<[u8; 32]>,
    /// The audit budget for refused calls, and how many went unrecorded since the last one.
    refusals: governor::DefaultDirectRateLimiter,
    refusals_dropped: AtomicU64,
    /// The last readiness answer and when it was made: checks run at most once a second,
    /// one at a time, whoever asks.
    readiness: tokio::sync::Mutex<Option<(Instant, StatusCode, String)>>,
    /// The manual clock that `POST /admin/v1/clock` moves (`faspex-gate run --manual-clock`).
    #[cfg(feature = "test-support")]
    manual_clock: std::sync::OnceLock<crate::clock::ManualClock>,
}

/// Refused admin calls recorded in the audit log per second, at most.
const REFUSALS_PER_SECOND: u32 = 10;

/// How long a readiness answer is reused.
const READY_REUSE: Duration = Duration::from_secs(1);

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl AdminApi {
    pub fn new(
        policy: Policy,
        gateway: Gateway,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        token: &Secret,
    ) -> Self {
        Self {
            inner: Arc::new(ApiInner {
                policy,
                gateway,
                metrics,
                audit,
                token: ArcSwap::from_pointee(digest(token.expose())),
                refusals: governor::RateLimiter::direct(governor::Quota::per_second(
                    std::num::NonZeroU32::new(REFUSALS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
                )),
                refusals_dropped: AtomicU64::new(0),
                readiness: tokio::sync::Mutex::new(None),
                #[cfg(feature = "test-support")]
                manual_clock: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serve `POST /admin/v1/clock`, which moves `clock` (tests only).
    #[cfg(feature = "test-support")]
    pub fn with_manual_clock(self, clock: crate::clock::ManualClock) -> Self {
        let _ = self.inner.manual_clock.set(clock);
        self
    }

    /// Take a new token (a reload of `admin.token_file`).
    pub fn set_token(&self, token: &Secret) {
        self.inner.token.store(Arc::new(digest(token.expose())));
    }

    /// Answer one request from `peer`. Never fails.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (path.as_str(), &method) {
            ("/metrics", &Method::GET) => return self.metrics().await,
            ("/healthz", &Method::GET) => return text(StatusCode::OK, "ok\n"),
            ("/readyz", &Method::GET) => return self.ready().await,
            ("/metrics" | "/healthz" | "/readyz", _) => {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix(API_PREFIX) else {
            return error(StatusCode::NOT_FOUND, "no such admin endpoint");
        };
        // The token first: nothing about a request without it is answered but 401 (and audited).
        let actor = actor(req.headers());
        if let Err(reason) = self.authorise(req.headers()) {
            let shown_actor = actor.as_deref().unwrap_or("(invalid)");
            let mut rec = self.inner.audit.record("admin_refused");
            rec.reason = Some(reason);
            rec.actor = Some(shown_actor);
            rec.source = Some(peer);
            rec.method = Some(method.as_str());
            let shown: String = path.chars().take(256).collect();
            rec.path = Some(&shown);
            self.write_refusal(rec);
            tracing::warn!(source = %peer, reason, "admin call refused (401)");
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer <admin.token_file>)",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"faspex-gate admin\""),
            );
            return resp;
        }
        let actor = match actor {
            Ok(a) => a,
            Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        };
        let call = Call {
            actor: &actor,
            peer,
        };
        let result = match split_user(rest) {
            Err(reason) => Err(Refused::BadRequest(reason)),
            Ok(("status", None)) => guarded(&method, Method::GET, self.status()).await,
            Ok(("sessions", None)) => guarded(&method, Method::GET, self.sessions()).await,
            Ok(("lockouts", None)) => guarded(&method, Method::GET, self.lockouts()).await,
            Ok(("sessions", Some(user))) => {
                guarded(&method, Method::DELETE, self.kick(&user, &call)).await
            }
            Ok(("lockouts", Some(user))) => match method {
                Method::DELETE => self.unlock(&user, &call).await,
                Method::POST => match lock_for(req.into_body()).await {
                    Ok(d) => self.lock(&user, d, &call).await,
                    Err(e) => Err(e),
                },
                _ => Err(Refused::Method("DELETE, POST")),
            },
            #[cfg(feature = "test-support")]
            Ok(("clock", None)) if self.inner.manual_clock.get().is_some() => match method {
                Method::POST => match self.inner.manual_clock.get() {
                    Some(c) => clock::advance(c, req.into_body()).await,
                    None => Err(Refused::NotFound),
                },
                _ => Err(Refused::Method("POST")),
            },
            Ok(_) => Err(Refused::NotFound),
        };
        match result {
            Ok(body) => json(StatusCode::OK, &body),
            Err(Refused::BadRequest(reason)) => error(StatusCode::BAD_REQUEST, &reason),
            Err(Refused::NotFound) => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
            Err(Refused::Method(allow)) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("this endpoint takes {allow}"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            Err(Refused::TooLarge) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY} bytes"),
            ),
            Err(Refused::Store(e)) => {
                tracing::error!(error = %e, "admin call failed: the state store");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the state store failed; see the gateway's log",
                )
            }
        }
    }

    /// Audit a refused call, at most [`REFUSALS_PER_SECOND`] a second: a flood of bad tokens
    /// must not fill the disk. The next record written says how many were left out.
    fn write_refusal(&self, mut rec: crate::audit::Record<'_>) {
        if self.inner.refusals.check().is_err() {
            self.inner.refusals_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dropped = self.inner.refusals_dropped.swap(0, Ordering::Relaxed);
        rec.suppressed = (dropped > 0).then_some(dropped);
        self.inner.audit.write(&rec);
    }

    fn authorise(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return Err("missing_token");
        };
        let given = v
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| v.as_bytes().strip_prefix(b"bearer "))
            .ok_or("missing_token")?;
        let expected = self.inner.token.load();
        if bool::from(digest(given.trim_ascii()).ct_eq(&**expected)) {
            Ok(())
        } else {
            Err("wrong_token")
        }
    }

    async fn metrics(&self) -> Response<Full<Bytes>> {
        // A scrape never waits on the store for more than SCRAPE_WAIT; the gauges then keep the
        // last value read (every other series is still right).
        match tokio::time::timeout(SCRAPE_WAIT, self.inner.policy.status()).await {
            Ok(Ok(s)) => self.inner.metrics.set_state(&s),
            Ok(Err(e)) => tracing::error!(error = %e, "metrics: the state store could not be read"),
            Err(_) => tracing::warn!(
                "metrics: the state store did not answer within {SCRAPE_WAIT:?}; the gauges \
                 show the last value read"
            ),
        }
        let mut r = Response::new(Full::new(Bytes::from(self.inner.metrics.render())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        let mut last = self.inner.readiness.lock().await;
        let (status, body) = match last.as_ref() {
            Some((at, status, body)) if at.elapsed() < READY_REUSE => (*status, body.clone()),
            _ => {
                let (status, body) = match tokio::time::timeout(
                    READY_LIMIT + Duration::from_secs(1),
                    self.check_ready(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: the checks took longer than {READY_LIMIT:?}\n"),
                    ),
                };
                *last = Some((Instant::now(), status, body.clone()));
                (status, body)
            }
        };
        drop(last);
        text(status, &body)
    }

    async fn check_ready(&self) -> (StatusCode, String) {
        let store = async {
            match tokio::time::timeout(READY_LIMIT, self.inner.policy.probe_store()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no write finished within {READY_LIMIT:?}")),
            }
        };
        let ((upstream, directory), store) =
            tokio::join!(self.inner.gateway.readiness(READY_LIMIT), store);
        let mut not_ready = String::new();
        for (what, r) in [
            ("upstream", upstream),
            ("directory", directory),
            ("store", store),
        ] {
            if let Err(reason) = r {
                not_ready.push_str(&format!("{what}: not ready: {reason}\n"));
            }
        }
        if not_ready.is_empty() {
            (StatusCode::OK, "ready\n".into())
        } else {
            tracing::warn!(reasons = %not_ready.trim_end().replace('\n', "; "), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, not_ready)
        }
    }

    async fn status(&self) -> Result<Value, Refused> {
        let s = self.inner.policy.status().await.map_err(store_err)?;
        Ok(serde_json::json!({
            "seats_used": s.seats_used,
            "seats_limit": s.seats_limit,
            "sessions": s.sessions,
            "accounts_locked": s.accounts_locked,
            "local_seats_used": s.local_seats,
            "local_accounts_locked": s.local_accounts_locked,
            "version": env!("CARGO_PKG_VERSION"),
        }))
    }

    async fn sessions(&self) -> Result<Value, Refused> {
        let list = self.inner.policy.sessions().await.map_err(store_err)?;
        Ok(serde_json::json!({
            "sessions": list.iter().map(SessionView::from).collect::<Vec<_>>(),
        }))
    }

    async fn lockouts(&self) -> Result<Value, Refused> {
        let list = self.inner.policy.lockouts().await.map_err(store_err)?;
        Ok(serde_json::json!({
            "lockouts": list.iter().map(LockView::from).collect::<Vec<_>>(),
        }))
    }

    async fn kick(&self, user: &str, call: &Call<'_>) -> Result<Value, Refused> {
        let ended = self.inner.policy.kick(user).await.map_err(admin_err)?;
        let account = self
            .inner
            .policy
            .account(user)
            .map_err(|e| Refused::BadRequest(format!("user: {e}")))?;
        let mut rec = self.inner.audit.record("kick");
        rec.user = Some(&account);
        rec.sessions = Some(ended.len());
        call.stamp(&mut rec);
        self.inner.audit.write(&rec);
        tracing::info!(account, sessions = ended.len(), actor = call.actor, source = %call.peer, "admin kick");
        Ok(serde_json::json!({
            "user": account,
            "ended": ended.len(),
            "sessions": ended.iter().map(SessionView::from).collect::<Vec<_>>(),
        }))
    }

    async fn unlock(&self, user: &str, call: &Call<'_>) -> Result<Value, Refused> {
        let u = self.inner.policy.unlock(user).await.map_err(admin_err)?;
        let account = self
            .inner
            .policy
            .account(user)
            .map_err(|e| Refused::BadRequest(format!("user: {e}")))?;
        let was_locked = !u.lifted.is_empty();
        let mut rec = self.inner.audit.record("unlock");
        rec.user = Some(&account);
        rec.was_locked = Some(was_locked);
        call.stamp(&mut rec);
        self.inner.audit.write(&rec);
        tracing::info!(account, was_locked, actor = call.actor, source = %call.peer, "admin unlock");
        Ok(serde_json::json!({
            "user": account,
            "was_locked": was_locked,
            "locks_lifted": u.lifted.len(),
            "failure_windows_cleared": u.windows_cleared,
        }))
    }

    async fn lock(
        &self,
        user: &str,
        duration: Option<Duration>,
        call: &Call<'_>,
    ) -> Result<Value, Refused> {
        let l = self
            .inner
            .policy
            .lock_with(user, duration, Some(&self.inner.gateway.directory()))
            .await
            .map_err(admin_err)?;
        let mut rec = self.inner.audit.record("admin_lock");
        rec.user = Some(&l.key.account);
        rec.since = Some(l.since.rfc3339());
        rec.until = Some(l.until.rfc3339());
        rec.by_admin = Some(true);
        call.stamp(&mut rec);
        self.inner.audit.write(&rec);
        tracing::info!(account = %l.key.account, until = %l.until, actor = call.actor, source = %call.peer, "admin lock");
        Ok(serde_json::to_value(LockView::from(&l)).unwrap_or_default())
    }
}

/// Who called, for the audit record.
struct Call<'a> {
    actor: &'a str,
    peer: SocketAddr,
}

impl<'a> Call<'a> {
    fn stamp(&self, rec: &mut crate::audit::Record<'a>) {
        rec.actor = Some(self.actor);
        rec.source = Some(self.peer);
    }
}

fn store_err(e: crate::store::StoreError) -> Refused {
    Refused::Store(e.to_string())
}

fn admin_err(e: AdminError) -> Refused {
    match e {
        AdminError::InvalidUsername(e) => Refused::BadRequest(format!("user: {e}")),
        AdminError::Store(e) => store_err(e),
    }
}

/// Run `call` when `method` is the one `allowed` (GET or DELETE); else 405. (`call` is a
/// future: nothing of it runs unless the method is right.)
async fn guarded(
    method: &Method,
    allowed: Method,
    call: impl std::future::Future<Output = Result<Value, Refused>>,
) -> Result<Value, Refused> {
    if *method == allowed {
        call.await
    } else if allowed == Method::GET {
        Err(Refused::Method("GET"))
    } else {
        Err(Refused::Method("DELETE"))
    }
}

/// `sessions`, `lockouts`, `status`, or one of the first two with a user: `lockouts/ann`. The
/// user segment is percent-decoded and must be UTF-8 with no further `/`.
fn split_user(rest: &str) -> Result<(&str, Option<String>), String> {
    let (what, user) = match rest.split_once('/') {
        None => return Ok((rest, None)),
        Some((what, user)) => (what, user),
    };
    if user.is_empty() {
        return Err("the user is missing from the path".into());
    }
    if user.contains('/') {
        return Err("the user in the path may not contain '/'".into());
    }
    // Every `%` must start an escape: a stray one is refused, not taken literally.
    let b = user.as_bytes();
    let bad_escape = b.iter().enumerate().any(|(i, &c)| {
        c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if bad_escape {
        return Err("the user in the path has an invalid percent-escape".into());
    }
    let decoded = percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .map_err(|_| "the user in the path is not UTF-8".to_owned())?;
    if decoded.contains(['/', '\\']) {
        return Err(SLASH_IN_USER.into());
    }
    Ok((what, Some(decoded.into_owned())))
}

/// The API's refusal of a user name with a slash or backslash in it.
const SLASH_IN_USER: &str = "the user in the path may not contain '/' or '\\', encoded or not";

/// Why the admin API refuses `user` (decoded) as the user of an unlock, kick or lock, in its
/// own words, or `None` when it takes it. The helpdesk console refuses the same names with the
/// same message.
pub fn user_refused(policy: &Policy, user: &str) -> Option<String> {
    if user.is_empty() {
        return Some("the user is missing from the path".into());
    }
    if user.contains(['/', '\\']) {
        return Some(SLASH_IN_USER.into());
    }
    policy.account(user).err().map(|e| format!("user: {e}"))
}

/// A lock's `for`: a duration from 1 s to 366 days, as `admin lock --for` and the API read it,
/// or the API's refusal.
pub fn lock_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("for: {e} (use e.g. \"30m\", \"1h\", \"2d\")"))?;
    if d < Duration::from_secs(1) || d > MAX_LOCK {
        return Err("for: a lock lasts from 1s to 366d".into());
    }
    Ok(d)
}

/// `X-Admin-Actor`: the operator's login name, for the audit log. Optional (`"-"` when absent);
/// when present it must be 1 to 64 visible ASCII characters without spaces or quotes.
fn actor(headers: &http::HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(ACTOR_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok("-".into()),
        (Some(_), Some(_)) => Err("X-Admin-Actor: give it once".into()),
        (Some(v), None) => {
            let b = v.as_bytes();
            if b.is_empty()
                || b.len() > 64
                || !b
                    .iter()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\'))
            {
                return Err(
                    "X-Admin-Actor: 1 to 64 visible ASCII characters, no spaces or quotes".into(),
                );
            }
            Ok(String::from_utf8_lossy(b).into_owned())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    #[serde(rename = "for")]
    duration: Option<String>,
}

/// A lock's JSON body: an object, `{"for": "1h"}`, and nothing else.
fn lock_body(bytes: &[u8]) -> Result<LockBody, Refused> {
    body::json_object(bytes, r#"{"for": "1h"}"#)
}

/// A lock's body: empty, or `{"for": "1h"}` (a duration from 1 s to 366 days).
async fn lock_for(body: Incoming) -> Result<Option<Duration>, Refused> {
    let bytes = body::read(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b = lock_body(&bytes)?;
    let Some(text) = b.duration else {
        return Ok(None);
    };
    lock_duration(&text).map(Some).map_err(Refused::BadRequest)
}

/// A session as the API shows it: no token, no cookie, no key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub user: String,
    /// Whose account: `directory` or `local`.
    #[serde(default)]
    pub account_kind: String,
    pub client_ip: String,
    pub user_agent: String,
    pub kind: String,
    pub started: String,
    pub last_activity: String,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        Self {
            user: s.account.to_string(),
            account_kind: s.account_kind.as_str().into(),
            client_ip: s.ip.to_string(),
            user_agent: s.agent.to_string(),
            kind: s.kind.as_str().into(),
            started: s.started.rfc3339(),
            last_activity: s.last_activity.rfc3339(),
        }
    }
}

/// A lock as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LockView {
    pub user: String,
    /// Whose account: `directory` or `local`.
    #[serde(default)]
    pub account_kind: String,
    /// Under `lockout_key = "account+ip"`: the address the lock holds for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    pub locked_since: String,
    pub unlocks_at: String,
    pub failures: u32,
    pub by_admin: bool,
    /// Where the failures that made the lock came from: at most five distinct addresses, newest
    /// first (none for an administrator's lock).
    #[serde(default)]
    pub sources: Vec<String>,
}

impl From<&Lock> for LockView {
    fn from(l: &Lock) -> Self {
        Self {
            user: l.key.account.clone(),
            account_kind: l.account_kind.as_str().into(),
            client_ip: l.key.ip.map(|ip| ip.to_string()),
            locked_since: l.since.rfc3339(),
            unlocks_at: l.until.rfc3339(),
            failures: l.failures,
            by_admin: l.by_admin,
            sources: l.sources.iter().map(ToString::to_string).collect(),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": reason }))
}

/// The bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    api: AdminApi,
}

impl AdminServer {
    /// Bind `admin.listen`. An address in use is a start-up error naming the key.
    pub async fn bind(addr: SocketAddr, api: AdminApi) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("admin.listen: cannot listen on {addr}"))?;
        Ok(Self { listener, api })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serve until `stop` turns true. Connections are HTTP/1.1, at most [`MAX_CONNECTIONS`] at
    /// once, with a 10 s header timeout.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "admin listener ready");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Some((stream, peer)) =
                crate::server::accept(&self.listener, &mut stop, "admin").await
            else {
                break;
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, "admin listener: too many connections; one refused");
                continue;
            };
            let api = self.api.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol review's findings: `%2F` inside `{user}` acted on a user named
    /// `../../status`, an invalid escape was taken literally, and `["1h"]` was read as a lock.
    #[test]
    fn paths_and_bodies_the_readme_refuses_are_refused() {
        assert_eq!(
            split_user("lockouts/ann%20lee").unwrap(),
            ("lockouts", Some("ann lee".to_owned()))
        );
        for bad in [
            "lockouts/..%2F..%2Fstatus",
            "lockouts/a%5Cb",
            "lockouts/a%zz",
            "lockouts/a%",
            "lockouts/a%2",
            "lockouts/%FF",
            "lockouts/",
            "lockouts/a/b",
        ] {
            assert!(split_user(bad).is_err(), "{bad}");
        }
        assert!(lock_body(br#"{"for":"1h"}"#).is_ok());
        assert!(lock_body(br#"{}"#).is_ok());
        for bad in [
            &br#"["1h"]"#[..],
            b"\"1h\"",
            b"1",
            b"null",
            br#"{"for":"1h","x":1}"#,
        ] {
            assert!(lock_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
