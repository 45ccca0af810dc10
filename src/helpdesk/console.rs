//! The console's requests: sign-in, sign-out, the console page, and its three actions (unlock,
//! kick, lock for a duration), each a POST with the session's CSRF token answered by a redirect
//! back to the page (POST/redirect/GET) that shows what it came to.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the console, or the sign-in page without a session; `?why=NAME` adds the answer to "why can't NAME log in?" |
//! | `GET /console.css` | the style sheet |
//! | `POST /signin` | `username`, `password`, `csrf` (bound to the sign-in cookie) |
//! | `POST /signout` | `csrf` |
//! | `POST /unlock`, `POST /kick` | `user`, `csrf` |
//! | `POST /lock` | `user`, `for` (optional), `csrf` |
//!
//! **Signing in** runs [`Policy::verify`]: the throttle, lockout and ceiling of any login (a
//! wrong password counts towards the lock), and no seat. Then membership of `helpdesk.group`
//! ([`crate::auth::Directory::member_of`]), asked again at least every `auth.cache_ttl` while the
//! session lives, with the lock state of the person's account: a person taken out of the group
//! (or out of the directory) or whose account is locked is signed out on their next request
//! after that; an administrator's kick or lock ends it at once ([`super::revoke`]). Nobody acts
//! on their own account here. The names the admin API refuses are refused here with its words
//! ([`crate::admin::user_refused`]), and the actions are the admin API's ([`Policy::unlock`],
//! [`Policy::kick`], [`Policy::lock_with`]), audited as its are (`unlock`, `kick`,
//! `admin_lock`) with `actor` the helpdesk person's account, `source` their address and
//! `via = "helpdesk"`. Sign-ins are audited as `helpdesk_signin` (with their `result`),
//! sign-outs as `helpdesk_signout` (with their `reason`), and requests refused for their network
//! or a missing or wrong CSRF token as `helpdesk_refused` (at most 10 a second for each reason).
//! A request's body must arrive within the request read limit, and every refusal closes its
//! connection (`Connection: close`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::admin::{lock_duration, user_refused};
use crate::audit::{AuditLog, Record};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{LoginRefused, Policy, CHECK_TIMEOUT};
use crate::proxy::pages::Site;
use crate::proxy::Gateway;

use super::pages::{self, View};
use super::revoke::{audit_signout, Revoker};
use super::sessions::{csrf_ok, random_token, ConsoleSession, Created, Found, Notice, Sessions};

/// The console session's cookie.
pub const COOKIE: &str = "__Host-faspex-gate-helpdesk";
/// The sign-in form's cookie, to which its CSRF token is bound.
pub const SIGNIN_COOKIE: &str = "__Host-faspex-gate-helpdesk-signin";

/// The largest form read.
const MAX_FORM: usize = 8 * 1024;

/// Refused requests recorded in the audit log per second, at most, for each reason.
const REFUSALS_PER_SECOND: u32 = 10;

/// The longest a request may take to arrive, headers and body each (`server.header_read_timeout`
/// when that is shorter).
pub const MAX_REQUEST_READ: Duration = Duration::from_secs(10);

/// The console's Content-Security-Policy: its own style sheet, forms to itself, nothing else.
const CSP: &str = "default-src 'none'; style-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The settings a reload may change.
#[derive(Clone)]
struct Settings {
    site: Site,
    group: String,
    allowed: Vec<ipnet::IpNet>,
    cache_ttl: Duration,
    hsts: Option<HeaderValue>,
    /// How long a request's headers, and then its body, may take to arrive.
    read_timeout: Duration,
}

impl Settings {
    fn of(cfg: &Config) -> Self {
        Settings {
            site: Site {
                helpdesk: cfg.pages.helpdesk.clone(),
                tz: cfg.pages.tz.clone(),
                login_path: cfg.faspex.login_path.clone(),
            },
            group: cfg.helpdesk.group.clone().unwrap_or_default(),
            allowed: cfg.helpdesk.allowed_networks.clone(),
            cache_ttl: cfg.auth.cache_ttl,
            hsts: cfg.server.hsts.clone(),
            read_timeout: read_timeout(cfg),
        }
    }
}

/// The helpdesk console. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    /// For the credential backend in force (a reload swaps it).
    gateway: Gateway,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    settings: ArcSwap<Settings>,
    /// The audit budget for refusals, one for each reason, so that a flood of one kind cannot
    /// hide the other.
    refusals: [Budget; 2],
}

/// At most [`REFUSALS_PER_SECOND`] audit records a second, and how many were left out.
struct Budget {
    limiter: governor::DefaultDirectRateLimiter,
    dropped: AtomicU64,
}

impl Budget {
    fn new() -> Self {
        Budget {
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(
                NonZeroU32::new(REFUSALS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
            )),
            dropped: AtomicU64::new(0),
        }
    }
}

/// The request read limit for `cfg`: `server.header_read_timeout`, at most [`MAX_REQUEST_READ`].
pub(super) fn read_timeout(cfg: &Config) -> Duration {
    cfg.server.header_read_timeout.min(MAX_REQUEST_READ)
}

/// A response of the console.
pub type Answer = Response<Full<Bytes>>;

impl Console {
    /// The console over `policy`; its sessions are `revoker`'s, which the engine's kicks and
    /// administrators' locks reach.
    pub fn new(
        cfg: &Config,
        policy: Policy,
        gateway: Gateway,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        revoker: &Revoker,
    ) -> Self {
        Console {
            inner: Arc::new(Inner {
                policy,
                gateway,
                audit,
                metrics,
                sessions: Arc::clone(&revoker.sessions),
                settings: ArcSwap::from_pointee(Settings::of(cfg)),
                refusals: [Budget::new(), Budget::new()],
            }),
        }
    }

    /// Take the reloadable settings of `cfg`: `helpdesk.allowed_networks`, the pages' words and
    /// time zone, `auth.cache_ttl`.
    pub fn reload(&self, cfg: &Config) {
        self.inner.settings.store(Arc::new(Settings::of(cfg)));
    }

    /// Whether `helpdesk.allowed_networks` lets `peer` reach the console.
    pub fn allows(&self, peer: SocketAddr) -> bool {
        let s = self.inner.settings.load();
        let ip = crate::conn::address_key(peer.ip(), 128);
        s.allowed.is_empty() || s.allowed.iter().any(|n| n.contains(&ip))
    }

    /// A connection or request from outside `helpdesk.allowed_networks` refused: audited
    /// (`reason = "network"`, within its own budget) and logged at most as often.
    pub fn refuse_network(&self, peer: SocketAddr) {
        let mut rec = self.inner.audit.record("helpdesk_refused");
        rec.reason = Some("network");
        rec.source = Some(peer);
        if self.write_refusal(rec, 0) {
            tracing::warn!(source = %peer, "helpdesk console: a connection from outside helpdesk.allowed_networks refused");
        }
    }

    /// The answer to a request, on a connection opened while its network was allowed, after a
    /// reload took the network out of `helpdesk.allowed_networks`: 403, and the connection closes.
    pub fn network_page(&self) -> Answer {
        closing(self.page(
            StatusCode::FORBIDDEN,
            pages::refusal(
                "Not from this network",
                "The helpdesk console cannot be reached from your network.",
                false,
            ),
        ))
    }

    /// Answer one request from `peer`. Never fails. `helpdesk.allowed_networks` is checked
    /// again for every request, so that a reload narrowing it reaches open connections.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Answer {
        if !self.allows(peer) {
            self.refuse_network(peer);
            return self.network_page();
        }
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (method.clone(), path.as_str()) {
            (Method::GET | Method::HEAD, pages::STYLE_PATH) => self.style(),
            (Method::GET | Method::HEAD, "/") => {
                let why = why_param(req.uri().query());
                self.get(req.headers(), why.as_deref(), peer).await
            }
            (Method::POST, "/signin" | "/signout" | "/unlock" | "/kick" | "/lock") => {
                let headers = req.headers().clone();
                let within = self.inner.settings.load().read_timeout;
                let read = tokio::time::timeout(within, read_form(req.into_body())).await;
                let form = match read {
                    Ok(Ok(f)) => f,
                    Ok(Err(status)) => {
                        return closing(self.page(
                            status,
                            pages::refusal(
                                "Form not read",
                                "The form could not be read (too large, or not a form).",
                                true,
                            ),
                        ))
                    }
                    Err(_) => {
                        tracing::debug!(source = %peer, "helpdesk console: a form did not arrive in time");
                        return closing(self.page(
                            StatusCode::REQUEST_TIMEOUT,
                            pages::refusal(
                                "Too slow",
                                "The form did not arrive in time. Please send it again.",
                                true,
                            ),
                        ));
                    }
                };
                if path == "/signin" {
                    self.signin(&headers, &form, peer).await
                } else {
                    self.action(&path, &headers, &form, peer).await
                }
            }
            (_, "/" | "/signin" | "/signout" | "/unlock" | "/kick" | "/lock")
            | (_, pages::STYLE_PATH) => {
                let mut r = self.page(
                    StatusCode::METHOD_NOT_ALLOWED,
                    pages::refusal("Not allowed", "This page does not take that method.", true),
                );
                let allow = if path == "/" || path == pages::STYLE_PATH {
                    "GET, HEAD"
                } else {
                    "POST"
                };
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => self.page(
                StatusCode::NOT_FOUND,
                pages::refusal("Not found", "There is no such page here.", true),
            ),
        }
    }

    // ----- pages -----

    async fn get(&self, headers: &HeaderMap, why: Option<&str>, peer: SocketAddr) -> Answer {
        let now = self.inner.policy.now();
        let cookie = cookie(headers, COOKIE);
        let (cookie, session) = match self.session(cookie.as_deref(), headers, now, peer).await {
            Ok(Some(found)) => found,
            Ok(None) => return self.signin_page(headers, StatusCode::OK, None, ""),
            Err(answer) => return answer,
        };
        let settings = self.inner.settings.load_full();
        let policy = &self.inner.policy;
        let (status, sessions, locks) = match tokio::join!(
            policy.status(),
            policy.sessions(),
            policy.lockouts()
        ) {
            (Ok(st), Ok(se), Ok(lo)) => (st, se, lo),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!(error = %e, "helpdesk console: the state store could not be read");
                return self.page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::refusal(
                        "State store unavailable",
                        "The gateway's state store cannot be read right now; see the gateway's \
                         log. Try again in a minute.",
                        true,
                    ),
                );
            }
        };
        let why = match why {
            Some(name) => Some((name, self.diagnose(name).await)),
            None => None,
        };
        let notice = self.inner.sessions.take_notice(&cookie);
        let html = pages::console(&View {
            site: &settings.site,
            now,
            me: &session.account,
            csrf: &session.csrf,
            notice,
            seats_used: status.seats_used,
            seats_limit: status.seats_limit,
            sessions: &sessions,
            locks: &locks,
            why,
        });
        self.page(StatusCode::OK, html)
    }

    async fn diagnose(&self, name: &str) -> Result<crate::policy::Diagnosis, String> {
        let name = name.trim();
        if let Some(reason) = user_refused(&self.inner.policy, name) {
            return Err(reason);
        }
        self.inner.policy.diagnose(name).await.map_err(|e| {
            tracing::error!(error = %e, "helpdesk console: the question could not be answered");
            format!("This could not be answered now: {e}")
        })
    }

    /// The sign-in page, with a sign-in cookie (a new one unless the request has one).
    fn signin_page(
        &self,
        headers: &HeaderMap,
        status: StatusCode,
        message: Option<&str>,
        username: &str,
    ) -> Answer {
        let (pre, fresh) = match cookie(headers, SIGNIN_COOKIE) {
            Some(p) if p.len() >= 40 && p.len() <= 64 => (p, false),
            _ => match random_token() {
                Ok(p) => (p, true),
                Err(e) => {
                    tracing::error!(error = %e, "helpdesk console: no random bytes");
                    return self.page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::refusal("Unavailable", "Try again in a minute.", false),
                    );
                }
            },
        };
        let token = self.inner.sessions.signin_token(&pre);
        let mut r = self.page(status, pages::signin(&token, message, username));
        if fresh {
            set_cookie(&mut r, SIGNIN_COOKIE, &pre);
        }
        r
    }

    fn style(&self) -> Answer {
        let mut r = self.page(StatusCode::OK, pages::STYLE.clone());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        );
        r
    }

    /// An HTML answer with the console's headers.
    fn page(&self, status: StatusCode, body: String) -> Answer {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        for (name, value) in [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        if let Some(hsts) = &self.inner.settings.load().hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        r
    }

    fn see_other(&self, to: &str) -> Answer {
        let mut r = self.page(StatusCode::SEE_OTHER, String::new());
        if let Ok(v) = HeaderValue::try_from(to) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    }

    // ----- sessions -----

    /// The live session the request's cookie names, its membership and its account's lock
    /// state confirmed within `auth.cache_ttl`: `Ok(None)` without one (the sign-in page
    /// follows), `Err` with the answer when it ended now (idle, no longer a member, locked) or
    /// cannot be confirmed.
    async fn session(
        &self,
        cookie: Option<&str>,
        headers: &HeaderMap,
        now: crate::clock::Timestamp,
        peer: SocketAddr,
    ) -> Result<Option<(String, ConsoleSession)>, Answer> {
        let Some(cookie) = cookie else {
            return Ok(None);
        };
        let s = match self.inner.sessions.find(cookie, now) {
            Found::None => return Ok(None),
            Found::Idle(s) => {
                audit_signout(&self.inner.audit, &s, "idle", None);
                let mut r = self.signin_page(
                    headers,
                    StatusCode::OK,
                    Some("You were signed out after 15 minutes without activity. Please sign in again."),
                    &s.name,
                );
                clear_cookie(&mut r, COOKIE);
                return Err(r);
            }
            Found::Live(s) => s,
        };
        let settings = self.inner.settings.load();
        if now.since(s.checked_at) >= settings.cache_ttl {
            let locked = match self.inner.policy.account_lock(&s.account, peer.ip()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(account = %s.account, error = %e, "helpdesk console: the account's lock state could not be read");
                    return Err(self.page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::refusal(
                            "State store unavailable",
                            "Your account's state cannot be confirmed right now, so the console \
                             cannot be used. Try again in a minute.",
                            false,
                        ),
                    ));
                }
            };
            if let Some(lock) = locked {
                self.inner.sessions.remove(cookie);
                audit_signout(&self.inner.audit, &s, "locked", None);
                tracing::warn!(account = %s.account, "helpdesk console: the account is locked; signed out");
                let site = &settings.site;
                let mut r = self.page(
                    StatusCode::FORBIDDEN,
                    pages::refusal(
                        "Signed out",
                        &format!(
                            "Your account is locked until {}, so you have been signed out of \
                             the console.",
                            site.clock(lock.until, now)
                        ),
                        false,
                    ),
                );
                clear_cookie(&mut r, COOKIE);
                return Err(r);
            }
            match self.member(&s.name, &s.account, &settings.group).await {
                Ok(true) => self.inner.sessions.confirmed(cookie, now),
                Ok(false) => {
                    self.inner.sessions.remove(cookie);
                    audit_signout(&self.inner.audit, &s, "not_member", None);
                    tracing::warn!(account = %s.account, "helpdesk console: no longer in helpdesk.group; signed out");
                    let mut r = self.page(
                        StatusCode::FORBIDDEN,
                        pages::refusal(
                            "Signed out",
                            "Your account is no longer in the helpdesk group (or no longer in \
                             the directory), so you have been signed out of the console.",
                            false,
                        ),
                    );
                    clear_cookie(&mut r, COOKIE);
                    return Err(r);
                }
                Err(e) => {
                    tracing::warn!(account = %s.account, error = %e, "helpdesk console: membership could not be confirmed");
                    return Err(self.page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::refusal(
                            "Directory unavailable",
                            "Your membership of the helpdesk group cannot be confirmed right \
                             now, so the console cannot be used. Try again in a minute.",
                            false,
                        ),
                    ));
                }
            }
        }
        Ok(Some((cookie.to_owned(), s)))
    }

    async fn member(&self, name: &str, account: &str, group: &str) -> Result<bool, String> {
        let directory = self.inner.gateway.directory();
        match tokio::time::timeout(CHECK_TIMEOUT, directory.member_of(name, account, group)).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
        }
    }

    // ----- sign-in -----

    async fn signin(&self, headers: &HeaderMap, form: &Form, peer: SocketAddr) -> Answer {
        let pre = cookie(headers, SIGNIN_COOKIE);
        let token = form.get("csrf").unwrap_or("");
        let bound = pre
            .as_deref()
            .is_some_and(|pre| self.inner.sessions.signin_token_ok(pre, token));
        if !bound {
            self.refuse_csrf(peer, "/signin");
            return closing(self.signin_page(
                headers,
                StatusCode::FORBIDDEN,
                Some("The sign-in form had expired or was not sent from this page. Please try again."),
                "",
            ));
        }
        let username = form.get("username").unwrap_or("");
        let password = form.get("password").unwrap_or("");
        let policy = &self.inner.policy;
        let directory = self.inner.gateway.directory();
        let audit = |result: &'static str, user: Option<&str>| {
            self.inner.metrics.helpdesk_signin(result);
            let mut rec = self.inner.audit.record("helpdesk_signin");
            rec.user = user;
            rec.result = Some(result);
            rec.source = Some(peer);
            self.inner.audit.write(&rec);
        };
        let verified = match policy
            .verify(username, password, peer.ip(), &directory)
            .await
        {
            Ok(v) => v,
            Err((account, refused)) => {
                audit(refused.result().as_str(), account.as_deref());
                let now = policy.now();
                let site = self.inner.settings.load().site.clone();
                let (status, message) = match &refused {
                    LoginRefused::InvalidUsername(e) => (
                        StatusCode::BAD_REQUEST,
                        format!("That user name cannot be used: {e}."),
                    ),
                    LoginRefused::BadCredentials => (
                        StatusCode::UNAUTHORIZED,
                        "The user name or password was not right. After several failed tries \
                         in a row the account is locked for a while."
                            .to_owned(),
                    ),
                    LoginRefused::AccountLocked { until, .. } => (
                        StatusCode::FORBIDDEN,
                        format!(
                            "This account is locked until {}. Another helpdesk member can unlock \
                             it.",
                            site.clock(*until, now)
                        ),
                    ),
                    LoginRefused::Throttled { retry_after } => (
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "Too many attempts from your address. Please wait {} seconds.",
                            retry_after.as_secs()
                        ),
                    ),
                    _ => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Passwords cannot be checked right now (this did not count as a failed \
                         sign-in). Please try again in a minute."
                            .to_owned(),
                    ),
                };
                return self.signin_page(headers, status, Some(&message), username);
            }
        };
        let group = self.inner.settings.load().group.clone();
        match self.member(&verified.name, &verified.account, &group).await {
            Ok(true) => {}
            Ok(false) => {
                audit("not_member", Some(&verified.account));
                tracing::warn!(account = %verified.account, source = %peer, "helpdesk console: sign-in refused, not in helpdesk.group");
                return self.signin_page(
                    headers,
                    StatusCode::FORBIDDEN,
                    Some(
                        "Your account is not in the helpdesk group, so it cannot use this console.",
                    ),
                    username,
                );
            }
            Err(e) => {
                audit("directory_error", Some(&verified.account));
                tracing::warn!(account = %verified.account, error = %e, "helpdesk console: membership could not be checked");
                return self.signin_page(
                    headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Your membership of the helpdesk group cannot be checked right now. Please try again in a minute."),
                    username,
                );
            }
        }
        let now = policy.now();
        let new_cookie = match self
            .inner
            .sessions
            .create(&verified.name, &verified.account, now)
        {
            Ok(Some(Created { cookie, ended })) => {
                if let Some(old) = ended {
                    audit_signout(&self.inner.audit, &old, "replaced", None);
                }
                cookie
            }
            Ok(None) | Err(_) => {
                audit("full", Some(&verified.account));
                return self.signin_page(
                    headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Too many people are signed in to the console on this gateway. Please try again later."),
                    username,
                );
            }
        };
        audit("success", Some(&verified.account));
        tracing::info!(account = %verified.account, source = %peer, "helpdesk console: signed in");
        // (the old session, if the browser had one, ends: one cookie, one session)
        if let Some(old) = cookie(headers, COOKIE) {
            self.inner.sessions.remove(&old);
        }
        let mut r = self.see_other("/");
        set_cookie(&mut r, COOKIE, &new_cookie);
        clear_cookie(&mut r, SIGNIN_COOKIE);
        r
    }

    // ----- actions -----

    async fn action(
        &self,
        path: &str,
        headers: &HeaderMap,
        form: &Form,
        peer: SocketAddr,
    ) -> Answer {
        let now = self.inner.policy.now();
        let cookie = cookie(headers, COOKIE);
        let (cookie, s) = match self.session(cookie.as_deref(), headers, now, peer).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.refuse_csrf(peer, path);
                return closing(self.page(
                    StatusCode::FORBIDDEN,
                    pages::refusal(
                        "Not signed in",
                        "This needs a console session. Sign in first.",
                        true,
                    ),
                ));
            }
            Err(answer) => return answer,
        };
        if !csrf_ok(&s, form.get("csrf").unwrap_or("")) {
            self.refuse_csrf(peer, path);
            return closing(self.page(
                StatusCode::FORBIDDEN,
                pages::refusal(
                    "Refused",
                    "This form was not sent from the console page (its token is missing or \
                     wrong). Nothing was changed.",
                    true,
                ),
            ));
        }
        if path == "/signout" {
            self.inner.sessions.remove(&cookie);
            audit_signout(&self.inner.audit, &s, "signed_out", Some(peer));
            let mut r = self.see_other("/");
            clear_cookie(&mut r, COOKIE);
            return r;
        }
        let user = form.get("user").unwrap_or("").trim();
        let notice = match user_refused(&self.inner.policy, user) {
            Some(reason) => Notice {
                done: false,
                text: reason,
            },
            None if self.own(user, &s) => Notice {
                done: false,
                text: "That is your own account: the console does not unlock, kick or lock the \
                       account of the person signed in. Ask another helpdesk member."
                    .to_owned(),
            },
            None => match path {
                "/unlock" => self.unlock(user, &s, peer).await,
                "/kick" => self.kick(user, &s, peer).await,
                _ => match form.get("for").map(str::trim).filter(|t| !t.is_empty()) {
                    None => self.lock(user, None, &s, peer).await,
                    Some(text) => match lock_duration(text) {
                        Ok(d) => self.lock(user, Some(d), &s, peer).await,
                        Err(reason) => Notice {
                            done: false,
                            text: reason,
                        },
                    },
                },
            },
        };
        self.inner.sessions.set_notice(&cookie, notice);
        self.see_other("/")
    }

    /// Whether `user` names the signed-in person's own account.
    fn own(&self, user: &str, s: &ConsoleSession) -> bool {
        let policy = &self.inner.policy;
        policy
            .account(user)
            .is_ok_and(|a| a == s.account || policy.account(&s.name).is_ok_and(|mine| mine == a))
    }

    fn stamp<'a>(&self, rec: &mut Record<'a>, s: &'a ConsoleSession, peer: SocketAddr) {
        rec.actor = Some(&s.account);
        rec.source = Some(peer);
        rec.via = Some("helpdesk");
    }

    async fn unlock(&self, user: &str, s: &ConsoleSession, peer: SocketAddr) -> Notice {
        let u = match self.inner.policy.unlock(user).await {
            Ok(u) => u,
            Err(e) => return failed(&e.to_string()),
        };
        let account = self.inner.policy.account(user).unwrap_or_default();
        let was_locked = !u.lifted.is_empty();
        let mut rec = self.inner.audit.record("unlock");
        rec.user = Some(&account);
        rec.was_locked = Some(was_locked);
        self.stamp(&mut rec, s, peer);
        self.inner.audit.write(&rec);
        tracing::info!(account, was_locked, actor = %s.account, source = %peer, "helpdesk unlock");
        Notice {
            done: was_locked,
            text: if was_locked {
                format!("{account} is unlocked; they can log in now.")
            } else {
                format!("{account} was not locked: nothing to do.")
            },
        }
    }

    async fn kick(&self, user: &str, s: &ConsoleSession, peer: SocketAddr) -> Notice {
        let ended = match self.inner.policy.kick(user).await {
            Ok(e) => e,
            Err(e) => return failed(&e.to_string()),
        };
        let account = self.inner.policy.account(user).unwrap_or_default();
        let mut rec = self.inner.audit.record("kick");
        rec.user = Some(&account);
        rec.sessions = Some(ended.len());
        self.stamp(&mut rec, s, peer);
        self.inner.audit.write(&rec);
        tracing::info!(account, sessions = ended.len(), actor = %s.account, source = %peer, "helpdesk kick");
        match ended.len() {
            0 => Notice {
                done: false,
                text: format!("No session for {account}: nothing to do."),
            },
            1 => Notice {
                done: true,
                text: format!("{account}'s session is ended and its seat free."),
            },
            n => Notice {
                done: true,
                text: format!("{account}'s {n} sessions are ended and the seat free."),
            },
        }
    }

    async fn lock(
        &self,
        user: &str,
        duration: Option<Duration>,
        s: &ConsoleSession,
        peer: SocketAddr,
    ) -> Notice {
        let directory = self.inner.gateway.directory();
        let l = match self
            .inner
            .policy
            .lock_with(user, duration, Some(&directory))
            .await
        {
            Ok(l) => l,
            Err(e) => return failed(&e.to_string()),
        };
        let mut rec = self.inner.audit.record("admin_lock");
        rec.user = Some(&l.key.account);
        rec.since = Some(l.since.rfc3339());
        rec.until = Some(l.until.rfc3339());
        rec.by_admin = Some(true);
        self.stamp(&mut rec, s, peer);
        self.inner.audit.write(&rec);
        tracing::info!(account = %l.key.account, until = %l.until, actor = %s.account, source = %peer, "helpdesk lock");
        let site = self.inner.settings.load().site.clone();
        Notice {
            done: true,
            text: format!(
                "{} is locked until {}. A live session goes on: kick it too to end access now.",
                l.key.account,
                site.clock(l.until, self.inner.policy.now())
            ),
        }
    }

    // ----- audit -----

    fn refuse_csrf(&self, peer: SocketAddr, path: &str) {
        let mut rec = self.inner.audit.record("helpdesk_refused");
        rec.reason = Some("csrf");
        rec.source = Some(peer);
        rec.method = Some("POST");
        rec.path = Some(path);
        if self.write_refusal(rec, 1) {
            tracing::warn!(source = %peer, path, "helpdesk console: a POST without its CSRF token refused (403)");
        }
    }

    /// Audit a refusal within budget `which` (0: network, 1: CSRF), at most
    /// [`REFUSALS_PER_SECOND`] a second each; the next record written says how many of its
    /// kind were left out. Whether it was written.
    fn write_refusal(&self, mut rec: Record<'_>, which: usize) -> bool {
        let Some(budget) = self.inner.refusals.get(which) else {
            return false;
        };
        if budget.limiter.check().is_err() {
            budget.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let dropped = budget.dropped.swap(0, Ordering::Relaxed);
        rec.suppressed = (dropped > 0).then_some(dropped);
        self.inner.audit.write(&rec);
        true
    }
}

/// `r`, closing its connection after it (a refusal: the client gets no second try on it).
fn closing(mut r: Answer) -> Answer {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn failed(reason: &str) -> Notice {
    tracing::error!(error = reason, "helpdesk console: an action failed");
    Notice {
        done: false,
        text: format!("That could not be done now: {reason}"),
    }
}

/// A form's fields, first value of each name.
struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_form(body: Incoming) -> Result<Form, StatusCode> {
    let bytes = match Limited::new(body, MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    Ok(Form(
        url::form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

/// `?why=NAME`, decoded; `None` when absent or empty.
fn why_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "why")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(256).collect())
}

/// The value of cookie `name` in the request, if it has exactly one.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim().to_owned())
        });
    let first = found.next()?;
    match found.next() {
        None if !first.is_empty() => Some(first),
        _ => None,
    }
}

fn set_cookie(r: &mut Answer, name: &str, value: &str) {
    if let Ok(v) = HeaderValue::try_from(format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn clear_cookie(r: &mut Answer, name: &str) {
    if let Ok(v) = HeaderValue::try_from(format!(
        "{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_the_question_are_read_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-faspex-gate-helpdesk=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, SIGNIN_COOKIE), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-faspex-gate-helpdesk=other"),
        );
        assert_eq!(cookie(&h, COOKIE), None, "two values: neither is believed");
        assert_eq!(why_param(Some("why=ann+lee")).as_deref(), Some("ann lee"));
        assert_eq!(why_param(Some("why=")), None);
        assert_eq!(why_param(None), None);
    }
}
