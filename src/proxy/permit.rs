//! Authorisation as a type: a client's request reaches Faspex only with a [`Permit`], and only
//! the checks make one.
//!
//! A permit is made from the evidence of the checks that passed, and there is no other way to
//! make one:
//!
//! - [`Permit::public`]: the credential gate's [`PublicPass`] for a public path;
//! - [`Permit::cookie`], [`Permit::basic`], [`Permit::bearer`]: the gate's [`Passed`] mark of a
//!   session plan (a protected request or a password form) and a [`LiveSession`], which only
//!   the session lookups here make, by the gateway's cookie, by a Basic caller's client once its
//!   password is [`Confirmed`] (by the verification cache or a fresh check), or by a bearer
//!   token Faspex issued to a session;
//! - [`Permit::login`]: the gate's mark of the login form (or of a Basic caller's first
//!   request) and the login pipeline's [`PendingLogin`], a login the engine checked and admitted
//!   and that waits for Faspex's word.
//!
//! Only [`Gate::pass`](super::gate::Gate::pass) makes the gate's marks, one type per plan
//! ([`plan`]), each holding the head of the request it judged. So a request the gate has not
//! passed cannot become a permit, one plan's mark cannot stand in for another's (a token grant's
//! becomes a protected request's only in the bearer grant, once its credentials are held to its
//! Basic ones: [`Passed::grant`]), and a permit forwards the request it was made for and no
//! other. [`Upstream::forward`] takes the permit by value, and with it the request and what was
//! checked: the [`Lane`] of connections to Faspex the request may use, and the session it
//! belongs to. A route that skips its check has nothing to forward with:
//!
//! ```compile_fail,E0308
//! use faspex_gate::proxy::{body::ProxyBody, request::ClientSide, upstream::Upstream};
//!
//! async fn public(upstream: &Upstream, req: http::Request<ProxyBody>, side: &ClientSide) {
//!     let _ = upstream.forward(req, side).await;
//! }
//! ```
//!
//! The same route with the gate's pass compiles:
//!
//! ```no_run
//! use faspex_gate::proxy::{body::ProxyBody, request::ClientSide, upstream::Upstream};
//! use faspex_gate::proxy::{gate::PublicPass, permit::Permit};
//!
//! async fn public(upstream: &Upstream, pass: PublicPass, body: ProxyBody, side: &ClientSide) {
//!     let _ = upstream.forward(Permit::public(pass, body), side).await;
//! }
//! ```
//!
//! A route cannot forge the evidence, nor attach it to a request of its own choosing:
//!
//! ```compile_fail,E0451
//! use faspex_gate::proxy::body::ProxyBody;
//! use faspex_gate::proxy::gate::{plan::Public, Passed, PublicPass};
//! use faspex_gate::proxy::permit::Permit;
//!
//! fn forge(head: http::request::Parts, plan: Public, body: ProxyBody) -> Permit<'static> {
//!     let pass: PublicPass = Passed { head, plan };
//!     Permit::public(pass, body)
//! }
//! ```
//!
//! while the head a pass holds is the one its permit forwards:
//!
//! ```no_run
//! use faspex_gate::proxy::gate::PublicPass;
//! use faspex_gate::proxy::permit::Permit;
//!
//! fn forward(pass: PublicPass, body: faspex_gate::proxy::body::ProxyBody) -> Permit<'static> {
//!     assert!(pass.head().uri.path().starts_with('/'));
//!     Permit::public(pass, body)
//! }
//! ```
//!
//! Nor can a route pass off one check as another: a session found by a bearer token is not one
//! found by the gateway's cookie, and cannot make a cookie's permit (which would carry the
//! session's Faspex cookie along):
//!
//! ```compile_fail,E0308
//! use faspex_gate::proxy::body::ProxyBody;
//! use faspex_gate::proxy::gate::{plan::Protected, Passed};
//! use faspex_gate::proxy::permit::{ByBearer, LiveSession, Permit};
//!
//! fn cookie<'a>(
//!     gate: Passed<Protected>,
//!     body: ProxyBody,
//!     found_by_bearer: &'a LiveSession<ByBearer>,
//! ) -> Permit<'a> {
//!     Permit::cookie(gate, body, found_by_bearer)
//! }
//! ```
//!
//! while the bearer's own permit compiles:
//!
//! ```no_run
//! use faspex_gate::proxy::body::ProxyBody;
//! use faspex_gate::proxy::gate::{plan::Protected, Passed};
//! use faspex_gate::proxy::permit::{ByBearer, LiveSession, Permit};
//!
//! fn bearer<'a>(
//!     gate: Passed<Protected>,
//!     body: ProxyBody,
//!     found_by_bearer: &'a LiveSession<ByBearer>,
//! ) -> Permit<'a> {
//!     Permit::bearer(gate, body, found_by_bearer)
//! }
//! ```
//!
//! And a token grant's mark is not a protected request's: it cannot make a cookie's permit (nor
//! any other) before the bearer grant has checked what it names.
//!
//! ```compile_fail,E0277
//! use faspex_gate::proxy::body::ProxyBody;
//! use faspex_gate::proxy::gate::{plan::Token, Passed};
//! use faspex_gate::proxy::permit::{ByCookie, LiveSession, Permit};
//!
//! fn cookie<'a>(
//!     gate: Passed<Token>,
//!     body: ProxyBody,
//!     found_by_cookie: &'a LiveSession<ByCookie>,
//! ) -> Permit<'a> {
//!     Permit::cookie(gate, body, found_by_cookie)
//! }
//! ```
//!
//! while a protected request's mark makes one:
//!
//! ```no_run
//! use faspex_gate::proxy::body::ProxyBody;
//! use faspex_gate::proxy::gate::{plan::Protected, Passed};
//! use faspex_gate::proxy::permit::{ByCookie, LiveSession, Permit};
//!
//! fn cookie<'a>(
//!     gate: Passed<Protected>,
//!     body: ProxyBody,
//!     found_by_cookie: &'a LiveSession<ByCookie>,
//! ) -> Permit<'a> {
//!     Permit::cookie(gate, body, found_by_cookie)
//! }
//! ```
//!
//! A permit is the request and a few references, moved along together: it costs no allocation.
//!
//! [`Upstream::forward`]: super::upstream::Upstream::forward

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use http::Request;

use super::body::ProxyBody;
use super::gate::{plan, Passed, PublicPass};
use crate::auth::Directory;
use crate::policy::{LoginRefused, LoginRequest, PendingLogin, Policy, SessionGone};
use crate::store::{ClientId, Session, SessionKey, StoreError};

/// Whose request a connection to Faspex is for: public requests may not take the slots kept
/// for requests with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// No session: public paths, the login page, a login before it is checked.
    Public,
    /// A request that carries a live session (or a checked login), and the gateway's own.
    Session,
}

/// Which check a [`Permit`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// A public path the gate let on with no credentials.
    Public,
    /// A live session found by the gateway's cookie.
    Cookie,
    /// A live session of an HTTP Basic caller's, its credentials confirmed.
    Basic,
    /// A live session found by a bearer token Faspex issued to it.
    Bearer,
    /// A login the engine admitted (lockout, seats, one client), on its way to Faspex. The
    /// directory checked its password; for an account only Faspex knows
    /// (`auth.local_accounts = "faspex"`) the check is Faspex's answer to this very request,
    /// which confirms the admission or undoes it.
    Login,
}

/// A session the engine found live for this request, marked with how it was found (`K`: a
/// [`ByCookie`], [`ByBasic`] or [`ByBearer`] lookup). Only the lookups below make one, and each
/// permit takes the kind its check makes: a session found by a bearer token cannot become a
/// cookie's permit (and carry the session's Faspex cookie), nor one found by the gateway's
/// cookie a Basic caller's.
#[derive(Debug)]
pub struct LiveSession<K> {
    session: Session,
    found: PhantomData<K>,
}

/// A [`LiveSession`] found by the gateway's cookie ([`LiveSession::by_cookie`]).
#[derive(Debug)]
pub enum ByCookie {}
/// A [`LiveSession`] of a Basic caller whose credentials were [`Confirmed`]
/// ([`LiveSession::of_client`]).
#[derive(Debug)]
pub enum ByBasic {}
/// A [`LiveSession`] found by a bearer token Faspex issued to it ([`LiveSession::by_bearer`]).
#[derive(Debug)]
pub enum ByBearer {}

/// What a session lookup answers: a live session, why there is none, or the store's failure.
pub type Lookup<K> = Result<Result<LiveSession<K>, SessionGone>, StoreError>;

impl<K> LiveSession<K> {
    fn found(session: Session) -> Self {
        LiveSession {
            session,
            found: PhantomData,
        }
    }
}

impl LiveSession<ByCookie> {
    /// The session the gateway's cookie names, when it is live (a request on `path` counts as
    /// activity unless the engine says otherwise).
    pub async fn by_cookie(policy: &Policy, key: &SessionKey, path: &str) -> Lookup<ByCookie> {
        Ok(policy.session_by_key(key, path).await?.map(Self::found))
    }
}

impl LiveSession<ByBasic> {
    /// The live session of a Basic caller's `client` on the account whose credentials were
    /// [`Confirmed`]: without that evidence there is no Basic session to find.
    pub async fn of_client(
        policy: &Policy,
        confirmed: &Confirmed,
        client: &ClientId,
        path: &str,
    ) -> Lookup<ByBasic> {
        Ok(policy
            .client_session(&confirmed.account, client, path)
            .await?
            .map(Self::found))
    }
}

impl LiveSession<ByBearer> {
    /// The live session a bearer token Faspex issued belongs to.
    pub async fn by_bearer(policy: &Policy, token: &str, path: &str) -> Lookup<ByBearer> {
        Ok(policy.bearer_session(token, path).await?.map(Self::found))
    }
}

/// Evidence that an HTTP Basic caller's password is right for its account now: the verification
/// cache holds it, or a fresh check under the lockout accepted it. Only [`Confirmed::by_cache`]
/// and [`Confirmed::by_recheck`] make one, and [`LiveSession::of_client`] takes it.
#[derive(Debug)]
pub struct Confirmed {
    account: String,
}

impl Confirmed {
    /// The verification cache holds `password` for `account` (the account the engine keys
    /// `login.username` by).
    pub fn by_cache(policy: &Policy, account: &str, password: &str) -> Option<Confirmed> {
        policy
            .cache()
            .hit(account, password, policy.now())
            .then(|| Confirmed {
                account: account.to_owned(),
            })
    }

    /// A fresh credential check of `login`, under the lockout, accepted it: confirmed for the
    /// account the check itself resolved the name to, never one the caller names.
    pub async fn by_recheck(
        policy: &Policy,
        login: &LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<Confirmed, LoginRefused> {
        let (account, _) = policy.recheck(login, directory).await?;
        Ok(Confirmed { account })
    }

    /// The account the credentials were confirmed for.
    pub fn account(&self) -> &str {
        &self.account
    }
}

impl<K> Deref for LiveSession<K> {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

/// The proof that a request was checked, which forwarding it to Faspex takes, together with the
/// request it was made for: the head the gate judged (taken from the gate's mark) and its body.
/// Its fields are private; its constructors take the checks' evidence (see the [module](self)
/// docs).
#[derive(Debug)]
#[must_use = "a permit is the only way to forward a request"]
pub struct Permit<'a> {
    checked: Checked,
    /// The session the request belongs to: its tunnels and long responses end with it.
    session: Option<&'a SessionKey>,
    /// The account the session is for.
    account: Option<&'a str>,
    /// The session's own Faspex cookie, when it goes along.
    faspex_cookie: Option<&'a str>,
    /// The request the checks were made for.
    request: Request<ProxyBody>,
}

impl<'a> Permit<'a> {
    /// A public path, as the gate let it on, with its body.
    pub fn public(pass: PublicPass, body: ProxyBody) -> Permit<'static> {
        Permit {
            checked: Checked::Public,
            session: None,
            account: None,
            faspex_cookie: None,
            request: Request::from_parts(pass.into_head(), body),
        }
    }

    /// A request with the gateway's cookie of a live session: the session's own Faspex session
    /// goes along, whatever Faspex cookie the browser sent.
    pub fn cookie<P: plan::Session>(
        gate: Passed<P>,
        body: ProxyBody,
        live: &'a LiveSession<ByCookie>,
    ) -> Self {
        Permit {
            faspex_cookie: live.upstream_cookie.as_deref(),
            ..Permit::of(gate, body, Checked::Cookie, live)
        }
    }

    /// An HTTP Basic caller's request on its live session: its credentials are its own, no
    /// Faspex session rides along.
    pub fn basic<P: plan::Session>(
        gate: Passed<P>,
        body: ProxyBody,
        live: &'a LiveSession<ByBasic>,
    ) -> Self {
        Permit::of(gate, body, Checked::Basic, live)
    }

    /// An API client's request with a bearer token tied to a live session: the token is its
    /// credential, no Faspex session rides along.
    pub fn bearer<P: plan::Session>(
        gate: Passed<P>,
        body: ProxyBody,
        live: &'a LiveSession<ByBearer>,
    ) -> Self {
        Permit::of(gate, body, Checked::Bearer, live)
    }

    /// A login the engine admitted, on its way to Faspex for its word (for an account only
    /// Faspex knows, that word is the password check: see [`Checked::Login`]): the login form,
    /// or a Basic caller's first request.
    pub fn login<P: plan::Admits>(
        gate: Passed<P>,
        body: ProxyBody,
        pending: &'a PendingLogin,
    ) -> Self {
        Permit::of(gate, body, Checked::Login, &pending.admitted().session)
    }

    fn of<P>(gate: Passed<P>, body: ProxyBody, checked: Checked, session: &'a Session) -> Self {
        Permit {
            checked,
            session: Some(&session.key),
            account: Some(&session.account),
            faspex_cookie: None,
            request: Request::from_parts(gate.into_head(), body),
        }
    }

    /// The request it was made for, for the forwarding verbs' own edits (the upgrade they
    /// join, the cookies they allow, the connection they hold).
    pub(super) fn request_mut(&mut self) -> &mut Request<ProxyBody> {
        &mut self.request
    }

    /// The request it was made for, and what the checks found of it: only the forwarder takes
    /// a permit apart.
    pub(super) fn into_request(self) -> (Request<ProxyBody>, Lane) {
        let lane = self.lane();
        (self.request, lane)
    }

    /// Which check this permit stands for.
    pub fn checked(&self) -> Checked {
        self.checked
    }

    /// The connections to Faspex the request may use.
    pub fn lane(&self) -> Lane {
        match self.checked {
            Checked::Public => Lane::Public,
            Checked::Cookie | Checked::Basic | Checked::Bearer | Checked::Login => Lane::Session,
        }
    }

    /// The session the request belongs to, if any.
    pub fn session(&self) -> Option<&'a SessionKey> {
        self.session
    }

    /// The account of that session.
    pub fn account(&self) -> Option<&'a str> {
        self.account
    }

    /// The session's own Faspex cookie, when it goes along.
    pub fn faspex_cookie(&self) -> Option<&'a str> {
        self.faspex_cookie
    }
}
