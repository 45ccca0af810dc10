//! The emulator's handle ([`Emulator`]): a cheap-to-clone handle over the shared state (users,
//! local accounts, sessions, bearer tokens, Faspex's own lockout, the event log), its
//! configuration ([`EmulatorConfig`]), what it records ([`EmulatorEvent`], [`RequestSeen`]), and
//! the password check every way of logging in goes through ([`Emulator::check_login`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::Request;

use crate::catalog;
use crate::pattern;

/// The version the emulator claims, sent as `X-IBM-Aspera` on every response.
pub const FASPEX_VERSION: &str = "F4.4.1";

/// The name of the Rails session cookie the emulator sets on a successful form login ([I] in the facts).
pub const SESSION_COOKIE: &str = "_faspex_session";

/// The text Faspex shows when a form login fails ([I] in the facts).
pub const LOGIN_FAILED_TEXT: &str = "Your login was not successful";

/// How many events [`Emulator::events`] keeps; the oldest are dropped beyond this, so that a demo
/// left running for days does not grow without bound. Tests never come near it.
const MAX_EVENTS: usize = 100_000;

/// How many requests [`Emulator::requests`] keeps, headers and all; the oldest are dropped beyond.
const MAX_REQUESTS_SEEN: usize = 10_000;

/// What Faspex answers to a form login with wrong credentials; the facts allow both ([I]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailureStyle {
    /// `200`: the login form rendered again with "Your login was not successful".
    Rerender,
    /// `302` back to `/aspera/faspex/login`.
    RedirectToLogin,
}

/// The text Faspex shows when a login is refused because the account is locked after too many
/// failed logins ([`EmulatorConfig::faspex_lockout`]). Wording is the emulator's own.
pub const ACCOUNT_LOCKED_TEXT: &str =
    "Your account has been locked. Please contact your Faspex administrator.";

/// The text Faspex shows when a login is refused because the account already has a live session
/// ([`EmulatorConfig::prevent_concurrent_login`]). Wording is the emulator's own.
pub const CONCURRENT_LOGIN_TEXT: &str = "This account is already logged in from another location.";

/// How to build an [`Emulator`].
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The directory accounts Faspex knows: (username, password). Logins match as
    /// [`fold_login`] says (case, accents and trailing spaces ignored), passwords exactly. A
    /// directory user's password cannot be changed in Faspex.
    pub users: Vec<(String, String)>,
    /// Faspex's own local accounts, which the directory does not know: (username, password).
    /// External collaborators for whom the helpdesk made an account in Faspex's admin pages. They
    /// log in exactly as [`EmulatorConfig::users`] do (form, HTTP Basic, OAuth2), are matched the
    /// same way, and can change their password (`PUT /aspera/faspex/account/password`); they are
    /// listed by [`Emulator::local_accounts`] with those created at run time. A name that is in
    /// both lists is the directory's (`users` is checked first). Default: one demo collaborator,
    /// `extern.collab` / `collab-pass` (a name no directory test uses).
    pub local_users: Vec<(String, String)>,
    /// Faspex's "lock users after N failed logins": `Some(n)` locks an account (directory or
    /// local) after `n` consecutive wrong passwords, whatever carried them (form, Basic, token,
    /// current password). A locked account is refused even with the right password until
    /// [`Emulator::unlock_faspex_account`] (an administrator's action in Faspex); its live sessions
    /// keep working. A right password resets the count. Unknown names count nothing. `None` (the
    /// default): off.
    pub faspex_lockout: Option<u32>,
    /// Faspex's "prevent concurrent login": a form login with the right password is refused while
    /// the account has a live Faspex session from another client (one the request's own
    /// `_faspex_session` cookie does not name), until that one logs out. HTTP Basic and OAuth2
    /// open no session and are not affected. Off by default.
    pub prevent_concurrent_login: bool,
    /// What a failed form login gets.
    pub login_failure: LoginFailureStyle,
    /// The size of the large package ([`BIG_PACKAGE_ID`]), streamed by the HTTP Gateway.
    pub big_package_bytes: u64,
    /// Rotate a session's cookie after every this many requests it authenticates, as a Rails
    /// cookie store re-issues its cookie when the session changes. `None`: only on
    /// `/aspera/faspex/account`, which always rotates. The old value stays valid until the new one
    /// is used.
    pub rotate_session_every: Option<u32>,
    /// Answer protocol upgrades as Faspex behind Apache with `Protocols h2c http/1.1` does: an
    /// `h2c` upgrade gets `101` and HTTP/2 on the connection, any other token but `websocket` a
    /// `101` and a raw echo (see the `h2c` module). Off by default; [`Emulator::accept_h2c`]
    /// switches it at run time.
    pub h2c: bool,
}

impl Default for EmulatorConfig {
    /// Five demo users (`ann`/`apple`, `bob`/`banana`, `cat`/`cherry`, `dan`/`damson`,
    /// `eve`/`elderberry`), one local collaborator (`extern.collab`/`collab-pass`), failed logins
    /// re-rendered, Faspex's own lockout and concurrent-login prevention off, and a 4 GiB large
    /// package.
    fn default() -> Self {
        let users = [
            ("ann", "apple"),
            ("bob", "banana"),
            ("cat", "cherry"),
            ("dan", "damson"),
            ("eve", "elderberry"),
        ];
        Self {
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
            local_users: vec![("extern.collab".to_owned(), "collab-pass".to_owned())],
            faspex_lockout: None,
            prevent_concurrent_login: false,
            login_failure: LoginFailureStyle::Rerender,
            big_package_bytes: 4 << 30,
            rotate_session_every: None,
            h2c: false,
        }
    }
}

/// Something the emulator saw, in order, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmulatorEvent {
    /// A form login succeeded; `user` is the account name as configured.
    Login { user: String },
    /// A form login was refused (wrong credentials, or [`Emulator::refuse_logins`]); `user` as submitted.
    LoginRefused { user: String },
    /// `/aspera/faspex/logout`; `user` is known when the request carried a live session cookie.
    Logout { user: Option<String> },
    /// One check of HTTP Basic credentials (every Basic request is in effect a login).
    BasicAuth { user: String, ok: bool },
    /// Every password the emulator checked, whatever carried it: one guess that reached Faspex.
    /// `user` as submitted; `ok` is whether Faspex accepted it (false for a wrong password, an
    /// unknown name, a locked account, a concurrent login refused, or
    /// [`Emulator::refuse_logins`]).
    LoginAttempt {
        user: String,
        ok: bool,
        via: LoginVia,
    },
    /// A session's cookie was replaced by a new value (`old` stays valid until `new` is used).
    SessionRotated {
        user: String,
        old: String,
        new: String,
    },
    /// `POST /aspera/faspex/admin/users` created a local account.
    LocalAccountCreated { by: String, login: String },
    /// `PUT /aspera/faspex/account/password` changed a local account's password.
    PasswordChanged { user: String },
    /// Faspex's own lockout ([`EmulatorConfig::faspex_lockout`]) locked the account (`user` as
    /// configured), right after the [`EmulatorEvent::LoginAttempt`] that reached the count.
    FaspexAccountLocked { user: String },
    /// [`Emulator::unlock_faspex_account`] lifted a lock of Faspex's own.
    FaspexAccountUnlocked { user: String },
    /// A form login with the right password was refused because the account already had a live
    /// session ([`EmulatorEvent::LoginAttempt`] says `ok: false` for it); `user` as configured.
    ConcurrentLoginRefused { user: String },
    /// Any request, recorded before it is answered.
    Request {
        method: String,
        path_and_query: String,
    },
    /// The h2c mode switched the connection of the request just recorded to `protocol` (`h2c`,
    /// or the made-up token it echoes).
    Upgraded { protocol: String },
}

/// One request as it reached the emulator: for tests that ask which headers got through, and
/// over which protocol.
#[derive(Clone, Debug)]
pub struct RequestSeen {
    pub method: String,
    pub path_and_query: String,
    /// `HTTP/1.1`, or `HTTP/2` inside an h2c connection.
    pub version: ::http::Version,
    pub headers: ::http::HeaderMap,
}

/// What carried a password the emulator checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginVia {
    /// The login action (`user[name]`/`user[password]`, from any part of the request).
    Form,
    /// An HTTP Basic `Authorization` header.
    Basic,
    /// `username`/`password` parameters of the OAuth2 token grant.
    Token,
    /// `user[current_password]` of the password change form.
    CurrentPassword,
}

/// A running Faspex 4 emulator: a cheap-to-clone handle over shared state.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

/// The state every clone of an [`Emulator`] sees.
struct Shared {
    /// Users, failure style, big package size.
    config: EmulatorConfig,
    /// The seeded packages and public links.
    catalog: catalog::Catalog,
    /// Set by [`Emulator::refuse_logins`]: refuse even correct credentials.
    refuse_logins: AtomicBool,
    /// The h2c mode, from [`EmulatorConfig::h2c`] and [`Emulator::accept_h2c`].
    h2c: AtomicBool,
    /// 64 KiB (+ one pattern period) of the download pattern, sliced by every download body.
    pattern: bytes::Bytes,
    /// Sessions, tokens and events, behind one short-lived lock (never held across `.await`).
    state: Mutex<State>,
}

/// One live session cookie value.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// The account it signs in.
    pub(crate) user: String,
    /// How many requests it has authenticated.
    pub(crate) requests: u64,
    /// The value that replaced it, once rotated; this one stays valid until that one is used.
    pub(crate) successor: Option<String>,
    /// The value it replaced, dropped when this one is first used.
    pub(crate) predecessor: Option<String>,
}

/// A local account ([`EmulatorConfig::local_users`], or created through `POST /admin/users`);
/// the directory does not know it.
#[derive(Clone, Debug)]
pub(crate) struct LocalAccount {
    pub(crate) login: String,
    pub(crate) password: String,
}

/// The mutable part of [`Shared`].
#[derive(Default)]
pub(crate) struct State {
    /// `_faspex_session` cookie value -> its session.
    pub(crate) sessions: HashMap<String, Session>,
    /// Local accounts by folded login ([`fold_login`]).
    pub(crate) local_accounts: HashMap<String, LocalAccount>,
    /// Consecutive wrong passwords per account, by folded login (only with
    /// [`EmulatorConfig::faspex_lockout`]).
    pub(crate) failures: HashMap<String, u32>,
    /// Accounts Faspex's own lockout has locked: folded login -> the account name as configured.
    pub(crate) locked: HashMap<String, String>,
    /// How many times a session cookie was rotated.
    pub(crate) rotations: u64,
    /// OAuth2 access token -> account name.
    pub(crate) bearer_tokens: HashMap<String, String>,
    /// Everything recorded so far, oldest first, at most [`MAX_EVENTS`].
    pub(crate) events: VecDeque<EmulatorEvent>,
    /// Every request with its headers, oldest first, at most [`MAX_REQUESTS_SEEN`].
    pub(crate) requests: VecDeque<RequestSeen>,
    /// How many packages `POST /send` has accepted; new ones are numbered from 5001.
    pub(crate) packages_sent: u64,
}

impl Emulator {
    /// Build an emulator with the seeded packages; nothing listens until [`Emulator::serve`].
    pub fn new(config: EmulatorConfig) -> Self {
        let catalog = catalog::Catalog::seeded(config.big_package_bytes);
        let h2c = AtomicBool::new(config.h2c);
        let mut state = State::default();
        for (login, password) in &config.local_users {
            state
                .local_accounts
                .entry(fold_login(login))
                .or_insert_with(|| LocalAccount {
                    login: login.clone(),
                    password: password.clone(),
                });
        }
        Self {
            shared: Arc::new(Shared {
                config,
                catalog,
                refuse_logins: AtomicBool::new(false),
                h2c,
                pattern: pattern::pattern_block(),
                state: Mutex::new(state),
            }),
        }
    }

    /// Everything recorded so far, oldest first.
    pub fn events(&self) -> Vec<EmulatorEvent> {
        self.state().events.iter().cloned().collect()
    }

    /// Every request so far with its version and headers, oldest first (the last
    /// [`MAX_REQUESTS_SEEN`]).
    pub fn requests(&self) -> Vec<RequestSeen> {
        self.state().requests.iter().cloned().collect()
    }

    /// Turn the h2c mode ([`EmulatorConfig::h2c`]) on or off for requests from now on.
    pub fn accept_h2c(&self, on: bool) {
        self.shared.h2c.store(on, Ordering::SeqCst);
    }

    /// Every password check so far, oldest first: (user as submitted, success, what carried it).
    /// Its length is the number of guesses that reached Faspex.
    pub fn login_attempts(&self) -> Vec<(String, bool, LoginVia)> {
        self.state()
            .events
            .iter()
            .filter_map(|event| match event {
                EmulatorEvent::LoginAttempt { user, ok, via } => Some((user.clone(), *ok, *via)),
                _ => None,
            })
            .collect()
    }

    /// How many times a session cookie has been rotated.
    pub fn session_rotations(&self) -> u64 {
        self.state().rotations
    }

    /// The local accounts, by login: those of [`EmulatorConfig::local_users`] and those created
    /// through `POST /aspera/faspex/admin/users`.
    pub fn local_accounts(&self) -> Vec<String> {
        let mut logins: Vec<String> = self
            .state()
            .local_accounts
            .values()
            .map(|a| a.login.clone())
            .collect();
        logins.sort();
        logins
    }

    /// The accounts Faspex's own lockout ([`EmulatorConfig::faspex_lockout`]) holds locked, by
    /// name as configured, sorted.
    pub fn faspex_locked_accounts(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state().locked.values().cloned().collect();
        names.sort();
        names
    }

    /// An administrator's "unlock" in Faspex's user admin: lift the lock of Faspex's own lockout
    /// on `user` (any spelling [`fold_login`] matches) and clear its failure count. Whether there
    /// was a lock; a lift records [`EmulatorEvent::FaspexAccountUnlocked`].
    pub fn unlock_faspex_account(&self, user: &str) -> bool {
        let key = fold_login(user);
        let lifted = {
            let mut state = self.state();
            state.failures.remove(&key);
            state.locked.remove(&key)
        };
        match lifted {
            Some(user) => {
                self.record(EmulatorEvent::FaspexAccountUnlocked { user });
                true
            }
            None => false,
        }
    }

    /// When `on`, every password check fails, even with correct credentials: form logins, HTTP
    /// Basic requests and OAuth2 token grants. Live sessions and bearer tokens keep working. This
    /// is "Faspex refuses a login the directory accepted".
    pub fn refuse_logins(&self, on: bool) {
        self.shared.refuse_logins.store(on, Ordering::SeqCst);
    }

    /// Record a request that reached the emulator: its [`EmulatorEvent::Request`], and its
    /// [`RequestSeen`].
    pub(crate) fn record_request<B>(&self, request: &Request<B>) {
        let path_and_query = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |pq| pq.as_str().to_owned(),
        );
        let seen = RequestSeen {
            method: request.method().to_string(),
            path_and_query: path_and_query.clone(),
            version: request.version(),
            headers: request.headers().clone(),
        };
        self.record(EmulatorEvent::Request {
            method: request.method().to_string(),
            path_and_query,
        });
        let mut state = self.state();
        if state.requests.len() >= MAX_REQUESTS_SEEN {
            state.requests.pop_front();
        }
        state.requests.push_back(seen);
    }

    /// Record an event, dropping the oldest beyond [`MAX_EVENTS`].
    pub(crate) fn record(&self, event: EmulatorEvent) {
        let mut state = self.state();
        if state.events.len() >= MAX_EVENTS {
            state.events.pop_front();
        }
        state.events.push_back(event);
    }

    /// The mutable state. A panic elsewhere cannot leave it half-updated in a way that matters to
    /// an emulator, so a poisoned lock is simply taken over.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The block every download body slices ([`crate::pattern::pattern_block`]).
    pub(crate) fn pattern(&self) -> &bytes::Bytes {
        &self.shared.pattern
    }

    /// Whether the h2c mode is on.
    pub(crate) fn h2c_on(&self) -> bool {
        self.shared.h2c.load(Ordering::SeqCst)
    }

    pub(crate) fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    pub(crate) fn catalog(&self) -> &catalog::Catalog {
        &self.shared.catalog
    }

    /// Check a password and record the attempt: the account name on success. See
    /// [`Emulator::check_login`].
    pub(crate) fn check_password(
        &self,
        user: &str,
        password: &str,
        via: LoginVia,
    ) -> Option<String> {
        self.check_login(user, password, via, Opens::Nothing).ok()
    }

    /// Check a password as Faspex does and record the attempt ([`EmulatorEvent::LoginAttempt`]):
    /// the account name as configured on success, else why not. Directory users (the configured
    /// ones) are checked first, then local accounts; logins match by [`fold_login`], passwords
    /// exactly. Everyone is refused while [`Emulator::refuse_logins`] is on (nothing counted). With
    /// [`EmulatorConfig::faspex_lockout`], wrong passwords of a known account count and lock it,
    /// and a locked account is refused whatever the password. With
    /// [`EmulatorConfig::prevent_concurrent_login`], a login that `opens` a session is refused
    /// while the account has another live session.
    pub(crate) fn check_login(
        &self,
        user: &str,
        password: &str,
        via: LoginVia,
        opens: Opens<'_>,
    ) -> Result<String, Refusal> {
        let verdict = self.decide(user, password, opens);
        self.record(EmulatorEvent::LoginAttempt {
            user: user.to_owned(),
            ok: verdict.is_ok(),
            via,
        });
        match &verdict {
            Err(Refusal::LockedNow(account)) => self.record(EmulatorEvent::FaspexAccountLocked {
                user: account.clone(),
            }),
            Err(Refusal::Concurrent(account)) => {
                self.record(EmulatorEvent::ConcurrentLoginRefused {
                    user: account.clone(),
                })
            }
            _ => {}
        }
        verdict
    }

    /// The decision of [`Emulator::check_login`], without recording it.
    fn decide(&self, user: &str, password: &str, opens: Opens<'_>) -> Result<String, Refusal> {
        if self.shared.refuse_logins.load(Ordering::SeqCst) {
            return Err(Refusal::Wrong);
        }
        let key = fold_login(user);
        let config = self.config();
        let mut state = self.state();
        let (account, right) = match config
            .users
            .iter()
            .find(|(name, _)| fold_login(name) == key)
        {
            Some((name, pass)) => (name.clone(), pass == password),
            None => match state.local_accounts.get(&key) {
                Some(local) => (local.login.clone(), local.password == password),
                None => return Err(Refusal::Wrong),
            },
        };
        if state.locked.contains_key(&key) {
            return Err(Refusal::Locked);
        }
        if !right {
            if let Some(limit) = config.faspex_lockout {
                let failures = state.failures.entry(key.clone()).or_insert(0);
                *failures += 1;
                if *failures >= limit {
                    state.failures.remove(&key);
                    state.locked.insert(key, account.clone());
                    return Err(Refusal::LockedNow(account));
                }
            }
            return Err(Refusal::Wrong);
        }
        state.failures.remove(&key);
        if let (true, Opens::Session { replacing }) = (config.prevent_concurrent_login, opens) {
            let own = replacing
                .map(|cookie| session_chain(&state.sessions, cookie))
                .unwrap_or_default();
            let elsewhere = state
                .sessions
                .iter()
                .any(|(cookie, s)| fold_login(&s.user) == key && !own.contains(cookie));
            if elsewhere {
                return Err(Refusal::Concurrent(account));
            }
        }
        Ok(account)
    }

    /// Whether `user` is a directory user (configured) rather than a local account.
    pub(crate) fn is_directory_user(&self, user: &str) -> bool {
        let key = fold_login(user);
        self.config()
            .users
            .iter()
            .any(|(name, _)| fold_login(name) == key)
    }
}

/// What a password check is for, as far as "prevent concurrent login" cares.
#[derive(Clone, Copy)]
pub(crate) enum Opens<'a> {
    /// Nothing that lasts: an HTTP Basic request, a token grant, a current-password check.
    Nothing,
    /// A form login opening a session; `replacing` is the session cookie the request carried,
    /// which the login ends (so it is no other client's).
    Session { replacing: Option<&'a str> },
}

/// Why [`Emulator::check_login`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A wrong password, an unknown name, or [`Emulator::refuse_logins`].
    Wrong,
    /// The account was already locked by Faspex's own lockout.
    Locked,
    /// This wrong password reached [`EmulatorConfig::faspex_lockout`] and locked the account.
    LockedNow(String),
    /// The right password, refused by [`EmulatorConfig::prevent_concurrent_login`].
    Concurrent(String),
}

/// Every value of the session `cookie`: itself, and the values it was rotated from and into.
fn session_chain(sessions: &HashMap<String, Session>, cookie: &str) -> Vec<String> {
    let mut chain = vec![cookie.to_owned()];
    let Some(session) = sessions.get(cookie) else {
        return chain;
    };
    let mut next = session.successor.clone();
    while let Some(value) = next {
        next = sessions.get(&value).and_then(|s| s.successor.clone());
        chain.push(value);
    }
    let mut previous = session.predecessor.clone();
    while let Some(value) = previous {
        previous = sessions.get(&value).and_then(|s| s.predecessor.clone());
        chain.push(value);
    }
    chain
}

/// A login as Faspex 4's users table compares it: MySQL's default case- and accent-insensitive
/// collation (`utf8_general_ci`), which ignores trailing spaces (PAD SPACE). Approximated as:
/// trailing spaces dropped, Unicode NFKD, combining marks removed, lower case. So `José`,
/// `jose`, `JOSE ` and `Jose\u{301}` are one account; a leading space, an inner space or another
/// letter is not. (MySQL's own tables differ in corners this does not model: `utf8_general_ci`
/// does not apply compatibility decompositions, and folds `ß` to `s`.)
pub fn fold_login(login: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization as _;
    login
        .trim_end_matches(' ')
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}
