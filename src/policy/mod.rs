//! The policy engine: the site's four Faspex policies, independent of HTTP and LDAP.
//!
//! - **Licence seats**: at most `policy.max_sessions` accounts hold a session at once; admission
//!   is one atomic store step ([`PolicyStore::admit`]).
//! - **One client per account**: a second client is refused (`reject`) or replaces the first
//!   (`replace`); [`LoginRequest::takeover`] is the 409 page's "sign the other client out".
//! - **Idle and absolute timeouts**: every request on a session checks its deadline; the
//!   [`Policy::spawn_sweeper`] task ends sessions within [`SWEEP_EVERY`] of their deadline with no
//!   traffic at all, so seats and gauges are always right.
//! - **Lockout**: `lockout_threshold` wrong-credential attempts in the sliding `lockout_window`
//!   lock the account for `lockout_duration`. Before a credential check runs it reserves a place
//!   ([`PolicyStore::begin_attempt`]); failures plus checks in flight never exceed the threshold,
//!   so however many guesses arrive at once, at most `lockout_threshold` reach the directory per
//!   window. A locked account's guesses never reach a bind (with search-then-bind, a spelling not
//!   looked up lately costs one search first: see "Which account" below).
//!
//! A login runs: validate the name → find the account it counts as → single-flight on (lock key,
//! name, password) → per-address throttle → lockout reservation → the global
//! `auth.max_checks_per_second` ceiling → credential check → record the result → admission.
//!
//! **Which account.** A name is prepared as LDAP prepares it (RFC 4518; [`account`]), so that
//! `Ann  Lee` and `ann\u{A0}lee` are `ann lee`. With search-then-bind (`auth.ldap.bind_dn`),
//! the directory itself says which entry a name belongs to ([`Directory::lookup`], remembered for
//! `auth.cache_ttl`), and failures, locks, seats and sessions are keyed by that entry: its own
//! name, prepared ([`account::entry_key`]). A search that reaches the directory for a name not
//! remembered takes the per-address and global tokens the check would have taken; an outage
//! during it is a 503 that counts against no one. An HTTP Basic caller's later requests go through
//! [`Policy::recheck`], which the verification cache answers without a check when it can. Everything takes
//! `now` from the injected [`Clock`]. Events go to an [`Observer`] (logs now; metrics and the
//! audit log attach there).

pub mod account;
pub mod singleflight;
pub mod throttle;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::auth::cache::VerificationCache;
use crate::auth::{Directory, Lookup, Verdict};
use crate::clock::{Clock, Timestamp};
use crate::config::{AuthConfig, LocalAccounts, LockoutKey, PolicyConfig};
use crate::store::{
    AccountKind, Admission, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart, AttemptTicket,
    ClientId, ClientKind, Counts, EndReason, Lock, LockKey, LockoutRules, PolicyStore, SeatRules,
    Session, SessionKey, SessionState, SessionToken, StoreError, Swept, Timeouts, Unlocked,
};

pub use account::{normalize, InvalidUsername};
use singleflight::SingleFlight;
use throttle::Throttle;

/// How often the sweeper runs: sessions end, and locks lift, at most this long after their
/// deadline even when no request comes.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The longest one credential check may take; past it, the directory counts as unavailable (the
/// backends have their own, shorter timeouts: this is the engine's safety net).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a credential check holds its lockout reservation before it is presumed dead: well
/// past [`CHECK_TIMEOUT`], so a live check never loses its place.
const TICKET_TTL: Duration = Duration::from_secs(180);

/// How long a login waits behind checks in flight for the same account before giving up (they
/// all end within [`CHECK_TIMEOUT`]).
const BUSY_WAIT_LIMIT: Duration = Duration::from_secs(65);

/// The `[auth]` settings the engine applies around credential checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckRules {
    /// `auth.max_checks_per_second`: the global ceiling on checks that reach the directory.
    pub max_checks_per_second: u32,
    /// `auth.cache_ttl`: how long a Basic caller's verified password is remembered.
    pub cache_ttl: Duration,
    /// `auth.local_accounts`: who checks a name the directory does not know.
    pub local: LocalAccounts,
}

impl Default for CheckRules {
    /// The contract's defaults: 50 checks per second, a 5-minute cache.
    fn default() -> Self {
        Self {
            max_checks_per_second: 50,
            cache_ttl: Duration::from_secs(300),
            local: LocalAccounts::None,
        }
    }
}

impl From<&AuthConfig> for CheckRules {
    fn from(a: &AuthConfig) -> Self {
        Self {
            max_checks_per_second: a.max_checks_per_second,
            cache_ttl: a.cache_ttl,
            local: a.local_accounts,
        }
    }
}

/// How a Basic caller's credentials were confirmed by [`Policy::recheck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rechecked {
    /// The verification cache held them: no credential check ran.
    Cached,
    /// A credential check ran and accepted them (and the cache now holds them).
    Checked,
}

/// The outcome of a login, as `faspex_gate_logins_total{result}` and the audit log name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoginResult {
    Success,
    BadCredentials,
    Locked,
    LicenseFull,
    OtherClient,
    Throttled,
    DirectoryError,
    UpstreamRefused,
    Invalid,
    /// The state store could not record the session (the login is refused: fail closed).
    StoreError,
}

impl LoginResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::BadCredentials => "bad_credentials",
            LoginResult::Locked => "locked",
            LoginResult::LicenseFull => "license_full",
            LoginResult::OtherClient => "other_client",
            LoginResult::Throttled => "throttled",
            LoginResult::DirectoryError => "directory_error",
            LoginResult::UpstreamRefused => "upstream_refused",
            LoginResult::Invalid => "invalid",
            LoginResult::StoreError => "store_error",
        }
    }
}

/// Why a login was refused. Each maps to one row of the contract's status table.
#[derive(Debug, thiserror::Error)]
pub enum LoginRefused {
    #[error("{0}")]
    InvalidUsername(InvalidUsername),
    #[error("wrong username or password")]
    BadCredentials,
    #[error("the account is locked until {until}")]
    AccountLocked {
        until: Timestamp,
        retry_after: Duration,
        /// An administrator placed the lock (not failed logins).
        by_admin: bool,
    },
    #[error("all licence seats are in use")]
    LicenseFull { retry_after: Duration },
    #[error("the account is active on another client since {since}")]
    OtherClientActive {
        since: Timestamp,
        ip: IpAddr,
        kind: ClientKind,
    },
    #[error("too many attempts from this address")]
    Throttled { retry_after: Duration },
    #[error("the directory is unavailable")]
    DirectoryUnavailable,
    /// Faspex, checking one of its own accounts, could not answer: not a wrong password.
    #[error("Faspex could not check the account")]
    FaspexUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LoginRefused {
    /// The status an API client gets (the contract's right-hand column), and `Retry-After`.
    pub fn status(&self) -> (http::StatusCode, Option<Duration>) {
        use http::StatusCode as S;
        match self {
            LoginRefused::InvalidUsername(_) | LoginRefused::BadCredentials => {
                (S::UNAUTHORIZED, None)
            }
            LoginRefused::AccountLocked { retry_after, .. } => (S::FORBIDDEN, Some(*retry_after)),
            LoginRefused::LicenseFull { retry_after } => {
                (S::SERVICE_UNAVAILABLE, Some(*retry_after))
            }
            LoginRefused::OtherClientActive { .. } => (S::CONFLICT, None),
            LoginRefused::Throttled { retry_after } => (S::TOO_MANY_REQUESTS, Some(*retry_after)),
            LoginRefused::DirectoryUnavailable | LoginRefused::Store(_) => {
                (S::SERVICE_UNAVAILABLE, None)
            }
            LoginRefused::FaspexUnavailable => (S::BAD_GATEWAY, None),
        }
    }

    pub fn result(&self) -> LoginResult {
        match self {
            LoginRefused::InvalidUsername(_) => LoginResult::Invalid,
            LoginRefused::BadCredentials => LoginResult::BadCredentials,
            LoginRefused::AccountLocked { .. } => LoginResult::Locked,
            LoginRefused::LicenseFull { .. } => LoginResult::LicenseFull,
            LoginRefused::OtherClientActive { .. } => LoginResult::OtherClient,
            LoginRefused::Throttled { .. } => LoginResult::Throttled,
            LoginRefused::DirectoryUnavailable => LoginResult::DirectoryError,
            LoginRefused::FaspexUnavailable => LoginResult::UpstreamRefused,
            LoginRefused::Store(_) => LoginResult::StoreError,
        }
    }
}

/// A login attempt: credentials plus who is asking. `Debug` leaves the password out.
#[derive(Clone)]
pub struct LoginRequest<'a> {
    pub username: &'a str,
    pub password: &'a str,
    /// The source address: the socket's, or `X-Forwarded-For`'s from a trusted proxy.
    pub ip: IpAddr,
    pub agent: &'a str,
    pub client: ClientId,
    pub kind: ClientKind,
    /// Replace the account's session on another client (after this fresh check), whatever
    /// `one_client_per_account` says.
    pub takeover: bool,
}

impl std::fmt::Debug for LoginRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("ip", &self.ip)
            .field("agent", &self.agent)
            .field("client", &self.client)
            .field("kind", &self.kind)
            .field("takeover", &self.takeover)
            .finish()
    }
}

impl LoginRequest<'_> {
    /// The client id of an HTTP Basic caller: its source address and User-Agent.
    pub fn basic_client(ip: IpAddr, agent: &str) -> ClientId {
        let d = ring::digest::digest(&ring::digest::SHA256, agent.as_bytes());
        let short = crate::util::hex(&d.as_ref()[..8]);
        ClientId(format!("basic:{ip}:{short}"))
    }
}

/// A successful login: the new session and the token that names it.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub token: SessionToken,
    pub session: Session,
    /// Other clients' sessions this login replaces when it is confirmed.
    pub replaces: Vec<SessionKey>,
    /// The same client had a live session; it was renewed under this new token.
    pub renewed: bool,
}

/// Why a request's session is not live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionGone {
    /// It passed its deadline (this request ended it, or the sweeper had).
    #[error("the session ended ({})", .0.as_str())]
    Expired(EndReason),
    /// No such session.
    #[error("no such session")]
    Unknown,
}

/// Gauges and limits, for `admin status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub seats_used: usize,
    pub seats_limit: u32,
    pub sessions: usize,
    pub accounts_locked: usize,
    /// Of `seats_used` and `accounts_locked`, those of local accounts.
    pub local_seats: usize,
    pub local_accounts_locked: usize,
    pub tracked_windows: usize,
}

/// What the engine tells its observers.
#[derive(Debug)]
pub enum PolicyEvent<'a> {
    /// A login finished (one per [`Policy::login`] call).
    Login {
        /// `None` when the name was not a valid account name.
        account: Option<&'a str>,
        /// Whose account it is, when that was found out.
        account_kind: Option<AccountKind>,
        ip: IpAddr,
        kind: ClientKind,
        result: LoginResult,
    },
    /// A Basic caller's credentials, not in the verification cache, were checked again
    /// ([`Policy::recheck`]; cache hits report nothing).
    Recheck {
        account: Option<&'a str>,
        ip: IpAddr,
        result: LoginResult,
    },
    /// Failures reached the threshold.
    LockedOut(&'a Lock),
    /// A lock passed its end.
    LockExpired(&'a Lock),
    /// An administrator lifted locks (possibly none).
    Unlocked {
        account: &'a str,
        lifted: &'a [Lock],
    },
    /// An administrator locked an account.
    AdminLocked(&'a Lock),
    /// A session began. `renewed` when it continues the same client's earlier session, whose
    /// token it replaces (no end is reported for that one).
    SessionStarted {
        session: &'a Session,
        renewed: bool,
    },
    SessionEnded(&'a Session, EndReason),
    /// A credential check reached the directory (or the users file) and came back: for
    /// `faspex_gate_directory_duration_seconds{result}` and the "directory errors" alert.
    DirectoryCheck {
        result: DirectoryResult,
        elapsed: Duration,
    },
}

/// How a check that reached the directory ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectoryResult {
    Ok,
    Rejected,
    /// Unreachable, silent past its timeout, or misconfigured: a 503, counted against no one.
    Error,
}

impl DirectoryResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryResult::Ok => "ok",
            DirectoryResult::Rejected => "rejected",
            DirectoryResult::Error => "error",
        }
    }
}

/// Receives [`PolicyEvent`]s, synchronously: keep it quick, spawn anything slow.
pub trait Observer: Send + Sync + 'static {
    fn event(&self, e: &PolicyEvent<'_>);
}

/// Several observers, each told every event in turn.
pub struct Observers(pub Vec<Arc<dyn Observer>>);

impl Observer for Observers {
    fn event(&self, e: &PolicyEvent<'_>) {
        for o in &self.0 {
            o.event(e);
        }
    }
}

/// The default observer: structured log lines, with no secrets in them.
pub struct LogObserver;

impl Observer for LogObserver {
    fn event(&self, e: &PolicyEvent<'_>) {
        match e {
            PolicyEvent::Login {
                account,
                account_kind,
                ip,
                kind,
                result,
            } => tracing::info!(
                target: "faspex_gate::policy",
                account = account.unwrap_or("<invalid>"),
                account_kind = account_kind.map_or("-", AccountKind::as_str),
                client_ip = %ip,
                kind = kind.as_str(),
                result = result.as_str(),
                "login"
            ),
            PolicyEvent::Recheck {
                account,
                ip,
                result,
            } => tracing::info!(
                target: "faspex_gate::policy",
                account = account.unwrap_or("<invalid>"),
                client_ip = %ip,
                result = result.as_str(),
                "credential recheck"
            ),
            PolicyEvent::LockedOut(l) => tracing::warn!(
                target: "faspex_gate::policy",
                account = %l.key.account,
                ip = ?l.key.ip,
                until = %l.until,
                failures = l.failures,
                "account locked"
            ),
            PolicyEvent::LockExpired(l) => tracing::info!(
                target: "faspex_gate::policy",
                account = %l.key.account,
                "lock expired"
            ),
            PolicyEvent::Unlocked { account, lifted } => tracing::info!(
                target: "faspex_gate::policy",
                account,
                was_locked = !lifted.is_empty(),
                "account unlocked"
            ),
            PolicyEvent::AdminLocked(l) => tracing::warn!(
                target: "faspex_gate::policy",
                account = %l.key.account,
                until = %l.until,
                "account locked by an administrator"
            ),
            PolicyEvent::SessionStarted {
                session: s,
                renewed,
            } => tracing::info!(
                target: "faspex_gate::policy",
                account = %s.account,
                session = %s.key,
                kind = s.kind.as_str(),
                client_ip = %s.ip,
                renewed,
                "session started"
            ),
            PolicyEvent::SessionEnded(s, why) => tracing::info!(
                target: "faspex_gate::policy",
                account = %s.account,
                session = %s.key,
                reason = why.as_str(),
                "session ended"
            ),
            PolicyEvent::DirectoryCheck { result, elapsed } => tracing::debug!(
                target: "faspex_gate::policy",
                result = result.as_str(),
                elapsed_ms = elapsed.as_millis() as u64,
                "credential check"
            ),
        }
    }
}

/// What one credential check (possibly shared) came to.
#[derive(Clone, Debug)]
enum Check {
    Verified,
    BadCredentials,
    Locked(Lock),
    Throttled(Duration),
    DirectoryUnavailable,
    FaspexUnavailable,
    Store(StoreError),
}

/// The engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PolicyStore>,
    clock: Arc<dyn Clock>,
    cfg: ArcSwap<PolicyConfig>,
    throttle: ArcSwap<Throttle>,
    flights: SingleFlight<Check>,
    /// Per-process key for single-flight keys: a password is never held, even hashed plainly.
    flight_key: ring::hmac::Key,
    /// Woken whenever a credential check finishes, for logins waiting behind one.
    attempt_finished: Notify,
    checks: ArcSwap<CheckRules>,
    cache: VerificationCache,
    /// Which account names were found to be lately ([`Directory::lookup`]).
    names: account::Names,
    observer: Arc<dyn Observer>,
}

/// A login's name, and the account it counts as.
#[derive(Clone, Debug)]
struct Resolved {
    /// As typed, less a listed domain: what the directory is given.
    name: String,
    account: String,
    /// What the directory said about the name ([`Lookup::Unsupported`] when it was not asked).
    found: Lookup,
    /// The lookup reached the directory, and took the per-address and global tokens the check
    /// would otherwise take.
    charged: bool,
    /// Whose account the name is.
    kind: AccountKind,
    /// Who checks it, when it is a local account.
    local: LocalAccounts,
}

impl Resolved {
    /// A name Faspex itself checks (`auth.local_accounts = "faspex"`).
    fn faspex_checks(&self) -> bool {
        self.kind == AccountKind::Local && self.local == LocalAccounts::Faspex
    }
}

impl Policy {
    pub fn new(
        cfg: PolicyConfig,
        checks: CheckRules,
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let throttle = Throttle::new(&cfg, checks.max_checks_per_second, Arc::clone(&clock));
        let rng = ring::rand::SystemRandom::new();
        let flight_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"unavailable"));
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                cfg: ArcSwap::from_pointee(cfg),
                throttle: ArcSwap::from_pointee(throttle),
                flights: SingleFlight::default(),
                flight_key,
                attempt_finished: Notify::new(),
                checks: ArcSwap::from_pointee(checks),
                cache: VerificationCache::default(),
                names: account::Names::default(),
                observer,
            }),
        }
    }

    /// Take new settings. Live sessions are kept whatever the new numbers; a lower cap only stops
    /// admissions until the count is below it. Changed rates start with fresh budgets.
    ///
    /// A changed `cache_ttl` empties the verification cache, so no entry outlives the new TTL.
    pub fn reload(&self, cfg: PolicyConfig, checks: CheckRules) {
        let old = self.inner.cfg.load();
        let old_checks = **self.inner.checks.load();
        if old.login_attempts_per_ip_per_minute != cfg.login_attempts_per_ip_per_minute
            || old.public_requests_per_ip_per_minute != cfg.public_requests_per_ip_per_minute
            || old_checks.max_checks_per_second != checks.max_checks_per_second
        {
            self.inner.throttle.store(Arc::new(Throttle::new(
                &cfg,
                checks.max_checks_per_second,
                Arc::clone(&self.inner.clock),
            )));
        }
        if old_checks.cache_ttl != checks.cache_ttl {
            self.inner.cache.clear();
        }
        // The directory, its filter or the domains may have changed: names are looked up again.
        self.inner.names.clear();
        self.inner.checks.store(Arc::new(checks));
        self.inner.cfg.store(Arc::new(cfg));
    }

    /// The verification cache (for the admin view and tests).
    pub fn cache(&self) -> &VerificationCache {
        &self.inner.cache
    }

    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn cfg(&self) -> arc_swap::Guard<Arc<PolicyConfig>> {
        self.inner.cfg.load()
    }

    fn timeouts(cfg: &PolicyConfig) -> Timeouts {
        Timeouts {
            idle: cfg.idle_timeout,
            api_idle: cfg.api_idle_timeout,
            absolute: cfg.absolute_timeout,
        }
    }

    fn lockout_rules(cfg: &PolicyConfig) -> LockoutRules {
        LockoutRules {
            threshold: cfg.lockout_threshold,
            window: cfg.lockout_window,
            duration: cfg.lockout_duration,
            max_tracked: cfg.max_tracked_usernames,
            ticket_ttl: TICKET_TTL,
        }
    }

    fn emit(&self, e: PolicyEvent<'_>) {
        self.inner.observer.event(&e);
    }

    fn emit_ended(&self, ended: &[(Session, EndReason)]) {
        for (s, why) in ended {
            self.emit(PolicyEvent::SessionEnded(s, *why));
        }
    }

    /// The account name `username` counts as: the entry's account when the directory said so
    /// lately (a login with this spelling within `auth.cache_ttl`), else the prepared name.
    pub fn account(&self, username: &str) -> Result<String, InvalidUsername> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(username, &cfg.username_domains)?;
        Ok(self
            .inner
            .names
            .account(name, self.now())
            .unwrap_or(prepared))
    }

    /// Every account `username` may be stored under: [`Policy::account`], and the prepared name
    /// when that differs (a lock taken before the entry was known by this spelling).
    fn accounts(&self, username: &str) -> Result<Vec<String>, InvalidUsername> {
        let prepared = normalize(username, &self.cfg().username_domains)?;
        let mut all = vec![self.account(username)?, prepared.clone()];
        // (a Faspex account counts under the name as Faspex matches it)
        if self.inner.checks.load().local == LocalAccounts::Faspex {
            all.push(account::faspex_key(&prepared));
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|a| seen.insert(a.clone()));
        Ok(all)
    }

    /// The account `user` is, and whose, as the directory says now (for an administrator's lock).
    async fn admin_account(
        &self,
        user: &str,
        directory: &Arc<dyn Directory>,
    ) -> Result<(String, AccountKind), InvalidUsername> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(user, &cfg.username_domains)?;
        let local = self.inner.checks.load().local;
        let found = tokio::time::timeout(CHECK_TIMEOUT, directory.lookup(name)).await;
        Ok(match found {
            Ok(Ok(Lookup::Entry { dn, name: own })) => (
                account::entry_key(&dn, own.as_deref(), &cfg.username_domains),
                AccountKind::Directory,
            ),
            Ok(Ok(Lookup::NoEntry)) if local == LocalAccounts::Faspex => {
                (account::faspex_key(&prepared), AccountKind::Local)
            }
            Ok(Ok(Lookup::NoEntry)) if local == LocalAccounts::File => {
                (prepared, AccountKind::Local)
            }
            Ok(Ok(_)) => (prepared, AccountKind::Directory),
            // (the directory cannot say now: what the engine saw lately decides)
            _ => {
                let account = self.account(user)?;
                let kind = self.kind_of(&account).await;
                (account, kind)
            }
        })
    }

    /// Whose account `account` is, as far as the engine can tell without asking the directory:
    /// its live sessions', or a lock's, or the names it resolved lately; else the directory's.
    async fn kind_of(&self, account: &str) -> AccountKind {
        if let Ok(sessions) = self.inner.store.sessions().await {
            if let Some(s) = sessions.iter().find(|s| s.account == account) {
                return s.account_kind;
            }
        }
        if let Ok(locks) = self.inner.store.lockouts(self.now()).await {
            if let Some(l) = locks.iter().find(|l| l.key.account == account) {
                return l.account_kind;
            }
        }
        if self.inner.checks.load().local != LocalAccounts::None
            && self.inner.names.is_local(account, self.now())
        {
            return AccountKind::Local;
        }
        AccountKind::Directory
    }

    /// The account a login's name counts as. Where the directory can say which entry the name
    /// belongs to, it is asked (unless it was lately), before any lock is looked at: the entry,
    /// not the spelling, is the account. Not for an empty password, which reaches no one.
    ///
    /// A refusal here comes with the account to report it under, when there is one.
    async fn resolve(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
        directory: &Arc<dyn Directory>,
    ) -> Result<Resolved, (Option<String>, LoginRefused)> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(username, &cfg.username_domains)
            .map_err(|e| (None, LoginRefused::InvalidUsername(e)))?;
        let local = self.inner.checks.load().local;
        // A name the directory does not know is a local account's, when there are any.
        let kind_of = |found: &Lookup| match (found, local) {
            (Lookup::NoEntry, LocalAccounts::File | LocalAccounts::Faspex) => AccountKind::Local,
            _ => AccountKind::Directory,
        };
        let resolved = |found: Lookup, account: String, charged: bool| {
            let kind = kind_of(&found);
            Resolved {
                name: name.to_owned(),
                account,
                found,
                charged,
                kind,
                local,
            }
        };
        if password.is_empty() || !directory.looks_up() {
            return Ok(resolved(Lookup::Unsupported, prepared, false));
        }
        let now = self.now();
        if let Some((found, account)) = self.inner.names.get(name, now) {
            return Ok(resolved(found, account, false));
        }
        // A search reaches the directory: it takes the tokens the check would have taken.
        let throttle = self.inner.throttle.load();
        let charge = throttle.login(ip).and_then(|()| throttle.ceiling());
        if let Err(wait) = charge {
            let refused = LoginRefused::Throttled {
                retry_after: retry_after(wait),
            };
            return Err((Some(prepared), refused));
        }
        let started = std::time::Instant::now();
        let found = match tokio::time::timeout(CHECK_TIMEOUT, directory.lookup(name)).await {
            Ok(Ok(found)) => found,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
                };
                tracing::warn!(
                    target: "faspex_gate::policy",
                    account = %prepared,
                    %error,
                    "the directory could not say which entry a name belongs to (503, not counted)"
                );
                self.emit(PolicyEvent::DirectoryCheck {
                    result: DirectoryResult::Error,
                    elapsed: started.elapsed(),
                });
                return Err((Some(prepared), LoginRefused::DirectoryUnavailable));
            }
        };
        let account = match &found {
            Lookup::Entry { dn, name: own } => {
                account::entry_key(dn, own.as_deref(), &cfg.username_domains)
            }
            // One Faspex checks counts under the name as Faspex matches it.
            Lookup::NoEntry if local == LocalAccounts::Faspex => account::faspex_key(&prepared),
            Lookup::NoEntry | Lookup::Ambiguous | Lookup::Known | Lookup::Unsupported => prepared,
        };
        let ttl = self.inner.checks.load().cache_ttl;
        self.inner
            .names
            .insert(name, found.clone(), account.clone(), now, ttl);
        Ok(resolved(found, account, true))
    }

    /// The key failures of `account` from `ip` count under.
    pub fn lock_key(&self, account: &str, ip: IpAddr) -> LockKey {
        match self.cfg().lockout_key {
            LockoutKey::Account => LockKey::account(account),
            LockoutKey::AccountIp => LockKey {
                account: account.to_owned(),
                ip: Some(throttle::source_key(ip)),
            },
        }
    }

    /// Whether a request to `path` counts as activity on its session.
    pub fn counts_as_activity(&self, path: &str) -> bool {
        !self
            .cfg()
            .activity_exempt_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// One request to a public path from `ip`: within `public_requests_per_ip_per_minute`?
    pub fn throttle_public(&self, ip: IpAddr) -> Result<(), Duration> {
        self.inner.throttle.load().public(ip)
    }

    // ----- logins -----

    /// A full login: credential check under throttle and lockout, then seat and one-client
    /// admission, taken as final at once. `directory` runs the check.
    pub async fn login(
        &self,
        req: LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<Admitted, LoginRefused> {
        match self.login_pending(req, directory).await {
            Ok(p) => Ok(p.confirm().await),
            Err(e) => Err(e),
        }
    }

    /// A full login whose admission waits for Faspex's word: [`PendingLogin::confirm`] when
    /// Faspex accepts it, [`PendingLogin::refuse`] when Faspex refuses (the seat is given back).
    /// A refusal here is reported at once; a success only when it is confirmed.
    pub async fn login_pending(
        &self,
        req: LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<PendingLogin, LoginRefused> {
        // (before the check: an admin lock or kick during it must keep its success uncached)
        let epoch = self.inner.cache.epoch();
        let resolved = self
            .resolve(req.username, req.password, req.ip, directory)
            .await;
        let account_kind = resolved.as_ref().ok().map(|r| r.kind);
        let (account, result) = match resolved {
            // Faspex's own account, by the login form: Faspex's answer to the login is the check.
            Ok(r) if r.faspex_checks() && req.kind == ClientKind::Browser => {
                let result = self.login_deferred(&r, &req).await;
                (Some(r.account), result)
            }
            Ok(r) => {
                let result = self
                    .login_account(&r, &req, directory, epoch)
                    .await
                    .map(|a| (a, None));
                (Some(r.account), result)
            }
            Err((account, e)) => (account, Err(e)),
        };
        match (account, result) {
            (Some(account), Ok((admitted, verdict))) => Ok(PendingLogin {
                policy: self.clone(),
                admitted,
                decided: false,
                account,
                password: req.password.to_owned(),
                ip: req.ip,
                kind: req.kind,
                epoch,
                verdict,
            }),
            (account, Err(e)) => {
                self.emit(PolicyEvent::Login {
                    account: account.as_deref(),
                    account_kind,
                    ip: req.ip,
                    kind: req.kind,
                    result: e.result(),
                });
                Err(e)
            }
            // (a success always has its account)
            (None, Ok(_)) => Err(LoginRefused::DirectoryUnavailable),
        }
    }

    /// Confirm a Basic caller's credentials on a request to its live session: a hit in the
    /// verification cache needs no check; otherwise a full credential check runs, under the same
    /// throttle, lockout and ceiling as a login, and a success is cached. (Without a live
    /// session, the caller logs in with [`Policy::login`] instead.)
    pub async fn recheck(
        &self,
        req: &LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<Rechecked, LoginRefused> {
        let account = match self.account(req.username) {
            Ok(a) => a,
            Err(e) => {
                self.emit(PolicyEvent::Recheck {
                    account: None,
                    ip: req.ip,
                    result: LoginResult::Invalid,
                });
                return Err(LoginRefused::InvalidUsername(e));
            }
        };
        let now = self.now();
        if self.inner.cache.hit(&account, req.password, now) {
            return Ok(Rechecked::Cached);
        }
        let epoch = self.inner.cache.epoch();
        let (account, result) = match self
            .resolve(req.username, req.password, req.ip, directory)
            .await
        {
            Ok(r) => match self.check(&r, req.password, req.ip, directory, epoch).await {
                Check::Verified => {
                    let ttl = self.inner.checks.load().cache_ttl;
                    self.inner
                        .cache
                        .insert(&r.account, req.password, self.now(), ttl, epoch);
                    (r.account, Ok(Rechecked::Checked))
                }
                refused => (r.account, Err(self.refusal(refused))),
            },
            Err((resolved, e)) => (resolved.unwrap_or(account), Err(e)),
        };
        self.emit(PolicyEvent::Recheck {
            account: Some(&account),
            ip: req.ip,
            result: match &result {
                Ok(_) => LoginResult::Success,
                Err(e) => e.result(),
            },
        });
        result
    }

    /// The refusal a failed check gives.
    fn refusal(&self, check: Check) -> LoginRefused {
        match check {
            Check::Verified | Check::BadCredentials => LoginRefused::BadCredentials,
            Check::Locked(lock) => LoginRefused::AccountLocked {
                until: lock.until,
                retry_after: retry_after(lock.until.since(self.now())),
                by_admin: lock.by_admin,
            },
            Check::Throttled(wait) => LoginRefused::Throttled {
                retry_after: retry_after(wait),
            },
            Check::DirectoryUnavailable => LoginRefused::DirectoryUnavailable,
            Check::FaspexUnavailable => LoginRefused::FaspexUnavailable,
            Check::Store(e) => LoginRefused::Store(e),
        }
    }

    async fn login_account(
        &self,
        r: &Resolved,
        req: &LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
        epoch: u64,
    ) -> Result<Admitted, LoginRefused> {
        match self.check(r, req.password, req.ip, directory, epoch).await {
            Check::Verified => self.admit(&r.account, r.kind, req).await,
            refused => Err(self.refusal(refused)),
        }
    }

    /// A login Faspex itself checks (one of its own accounts, by the login form): the pipeline
    /// runs as for anyone (the per-address throttle, a place under the lockout, the global
    /// ceiling, the seat), and the check is Faspex's answer to the login, which the caller
    /// reports with [`PendingLogin::confirm`], [`PendingLogin::reject`] or
    /// [`PendingLogin::refuse`]. The place is held until then, so no more guesses reach Faspex
    /// at once than could reach the threshold.
    async fn login_deferred(
        &self,
        r: &Resolved,
        req: &LoginRequest<'_>,
    ) -> Result<(Admitted, Option<TicketGuard>), LoginRefused> {
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().login(req.ip) {
                return Err(self.refusal(Check::Throttled(wait)));
            }
        }
        let key = self.lock_key(&r.account, req.ip);
        let mut ticket = self.reserve(&key).await.map_err(|c| self.refusal(c))?;
        ticket.account_kind = r.kind;
        let mut guard = TicketGuard {
            policy: self.clone(),
            ticket: Some(ticket),
        };
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().ceiling() {
                if let Some(ticket) = guard.ticket.take() {
                    self.finish(ticket, AttemptResult::Aborted)
                        .await
                        .map_err(LoginRefused::Store)?;
                }
                return Err(self.refusal(Check::Throttled(wait)));
            }
        }
        match self.admit(&r.account, r.kind, req).await {
            Ok(admitted) => Ok((admitted, Some(guard))),
            Err(refused) => {
                // No seat, no check: the place goes back uncounted.
                if let Some(ticket) = guard.ticket.take() {
                    self.finish(ticket, AttemptResult::Aborted)
                        .await
                        .map_err(LoginRefused::Store)?;
                }
                Err(refused)
            }
        }
    }

    /// A credential check, shared by parallel callers with the same lock key, name and password. It
    /// runs on its own task, so a caller that goes away cannot cancel it half-way: a guess that
    /// reached the directory is always counted.
    ///
    /// `epoch` is the verification cache's, taken by the caller before it asked: a caller that
    /// comes after an administrator's kick or lock never joins a check that began before it, so
    /// it cannot cache that check's success past the lock.
    async fn check(
        &self,
        r: &Resolved,
        password: &str,
        ip: IpAddr,
        directory: &Arc<dyn Directory>,
        epoch: u64,
    ) -> Check {
        let key = self.lock_key(&r.account, ip);
        let mut ctx = ring::hmac::Context::with_key(&self.inner.flight_key);
        ctx.update(&epoch.to_be_bytes());
        ctx.update(key.encode().as_bytes());
        ctx.update(&[0]);
        // (the name as typed: two spellings share a lockout budget, never a directory's answer)
        ctx.update(&(r.name.len() as u64).to_be_bytes());
        ctx.update(r.name.as_bytes());
        ctx.update(password.as_bytes());
        let mut flight = [0u8; 32];
        flight.copy_from_slice(ctx.sign().as_ref());
        let work = self.clone().check_alone(
            key,
            r.clone(),
            password.to_owned(),
            ip,
            Arc::clone(directory),
        );
        let (check, _) = self.inner.flights.run(flight, work).await;
        check.unwrap_or(Check::DirectoryUnavailable)
    }

    async fn check_alone(
        self,
        key: LockKey,
        r: Resolved,
        password: String,
        ip: IpAddr,
        directory: Arc<dyn Directory>,
    ) -> Check {
        // (a lookup that reached the directory took this token, and the ceiling's, already)
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().login(ip) {
                return Check::Throttled(wait);
            }
        }
        let mut ticket = match self.reserve(&key).await {
            Ok(t) => t,
            Err(c) => return c,
        };
        ticket.account_kind = r.kind;
        let mut guard = TicketGuard {
            policy: self.clone(),
            ticket: Some(ticket),
        };
        // The global ceiling protects the directory from many addresses at once. It is taken
        // after the lockout reservation, so guesses at a locked account (which never reach the
        // directory) cannot use it up; a refusal here releases the reservation uncounted.
        if !password.is_empty() && !r.charged {
            if let Err(wait) = self.inner.throttle.load().ceiling() {
                if let Some(ticket) = guard.ticket.take() {
                    if let Err(e) = self.finish(ticket, AttemptResult::Aborted).await {
                        return Check::Store(e);
                    }
                }
                return Check::Throttled(wait);
            }
        }
        // An empty simple bind is an unauthenticated bind: never ask; it is a wrong password.
        let verdict = if password.is_empty() {
            Ok(Verdict::Rejected)
        } else {
            let started = std::time::Instant::now();
            let check = directory.verify_login(&r.name, &r.account, &r.found, &password);
            let v = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(v) => v,
                Err(_) => Err(crate::auth::DirectoryError(format!(
                    "no answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ))),
            };
            self.emit(PolicyEvent::DirectoryCheck {
                result: match &v {
                    Ok(Verdict::Accepted) => DirectoryResult::Ok,
                    Ok(Verdict::Rejected) => DirectoryResult::Rejected,
                    Err(_) => DirectoryResult::Error,
                },
                elapsed: started.elapsed(),
            });
            v
        };
        drop(password);
        let result = match &verdict {
            Ok(Verdict::Accepted) => AttemptResult::Accepted,
            Ok(Verdict::Rejected) => AttemptResult::Rejected,
            Err(e) => {
                tracing::warn!(
                    target: "faspex_gate::policy",
                    account = %r.account,
                    error = %e,
                    "the directory could not answer a credential check (503, not counted)"
                );
                AttemptResult::Aborted
            }
        };
        let Some(ticket) = guard.ticket.take() else {
            return Check::DirectoryUnavailable;
        };
        let end = self.finish(ticket, result).await;
        match (end, verdict) {
            (Err(e), _) => Check::Store(e),
            (Ok(AttemptEnd::Locked(lock)), _) => {
                self.emit(PolicyEvent::LockedOut(&lock));
                Check::Locked(lock)
            }
            (Ok(AttemptEnd::AlreadyLocked(lock)), _) => Check::Locked(lock),
            (Ok(_), Ok(Verdict::Accepted)) => Check::Verified,
            (Ok(_), Ok(Verdict::Rejected)) => Check::BadCredentials,
            (Ok(_), Err(_)) if r.faspex_checks() => Check::FaspexUnavailable,
            (Ok(_), Err(_)) => Check::DirectoryUnavailable,
        }
    }

    /// Record a credential check's result (or its abandonment) and wake the logins waiting
    /// behind it.
    async fn finish(
        &self,
        ticket: AttemptTicket,
        result: AttemptResult,
    ) -> Result<AttemptEnd, StoreError> {
        let rules = Self::lockout_rules(&self.cfg());
        let end = self
            .inner
            .store
            .finish_attempt(ticket, result, self.now(), rules)
            .await;
        self.inner.attempt_finished.notify_waiters();
        end
    }

    /// Wait for a place to run a credential check under `key`.
    async fn reserve(&self, key: &LockKey) -> Result<AttemptTicket, Check> {
        let give_up = tokio::time::Instant::now() + BUSY_WAIT_LIMIT;
        loop {
            let notified = self.inner.attempt_finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rules = Self::lockout_rules(&self.cfg());
            match self.inner.store.begin_attempt(key, self.now(), rules).await {
                Ok(AttemptStart::Proceed(t)) => return Ok(t),
                Ok(AttemptStart::Locked(lock)) => return Err(Check::Locked(lock)),
                Ok(AttemptStart::Busy) => {}
                Err(e) => return Err(Check::Store(e)),
            }
            // Checks in flight could reach the threshold: wait for one to finish. A shared store
            // has no wake-up across processes, so poll as well.
            if tokio::time::Instant::now() >= give_up {
                return Err(Check::DirectoryUnavailable);
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    async fn admit(
        &self,
        account: &str,
        account_kind: AccountKind,
        req: &LoginRequest<'_>,
    ) -> Result<Admitted, LoginRefused> {
        let cfg = self.cfg();
        let token = SessionToken::generate()?;
        let now = self.now();
        // Should this caller go away before it has the token, the session must not keep a seat.
        let mut rollback = RollbackGuard {
            policy: self.clone(),
            key: Some(token.key()),
        };
        let admit = self
            .inner
            .store
            .admit(
                Admission {
                    key: token.key(),
                    account: account.to_owned(),
                    account_kind,
                    client: req.client.clone(),
                    kind: req.kind,
                    ip: req.ip,
                    agent: truncate(req.agent, 256).to_owned(),
                    takeover: req.takeover,
                    now,
                },
                SeatRules {
                    max_sessions: cfg.max_sessions,
                    one_client: cfg.one_client_per_account,
                    timeouts: Self::timeouts(&cfg),
                },
            )
            .await?;
        self.emit_ended(&admit.ended);
        rollback.key = None;
        match admit.outcome {
            AdmitOutcome::Unsaved { error } => Err(LoginRefused::Store(error)),
            AdmitOutcome::Admitted {
                session,
                renewed_from,
                replaces,
            } => {
                self.emit(PolicyEvent::SessionStarted {
                    session: &session,
                    renewed: renewed_from.is_some(),
                });
                Ok(Admitted {
                    token,
                    session,
                    replaces,
                    renewed: renewed_from.is_some(),
                })
            }
            AdmitOutcome::LicenseFull { soonest_end } => Err(LoginRefused::LicenseFull {
                retry_after: soonest_end
                    .map(|t| {
                        t.since(now)
                            .clamp(Duration::from_secs(5), Duration::from_secs(900))
                    })
                    .unwrap_or(Duration::from_secs(60)),
            }),
            AdmitOutcome::OtherClient { active } => Err(LoginRefused::OtherClientActive {
                since: active.started,
                ip: active.ip,
                kind: active.kind,
            }),
        }
    }

    // ----- sessions -----

    fn state(&self, state: SessionState) -> Result<Session, SessionGone> {
        match state {
            SessionState::Live(s) => Ok(s),
            SessionState::Ended(s, why) => {
                self.emit(PolicyEvent::SessionEnded(&s, why));
                Err(SessionGone::Expired(why))
            }
            SessionState::Unknown => Err(SessionGone::Unknown),
        }
    }

    /// The live session behind `token`, for a request to `path` (which counts as activity unless
    /// it is under `activity_exempt_paths`). A session past its deadline ends here.
    pub async fn session(
        &self,
        token: &SessionToken,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        self.session_by_key(&token.key(), path).await
    }

    /// [`Policy::session`] by the token's key, for a caller that has it at hand already.
    pub async fn session_by_key(
        &self,
        key: &SessionKey,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        let t = Self::timeouts(&self.cfg());
        let state = self
            .inner
            .store
            .session(key, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// The live session of `account` on `client` (an HTTP Basic caller's), as [`Policy::session`].
    pub async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        self.client_session_with(account, client, activity).await
    }

    /// The live session of `account` on `client`, without counting this as activity (for a
    /// Basic caller whose credentials are still to be confirmed).
    pub async fn client_session_peek(
        &self,
        account: &str,
        client: &ClientId,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        self.client_session_with(account, client, false).await
    }

    async fn client_session_with(
        &self,
        account: &str,
        client: &ClientId,
        activity: bool,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let t = Self::timeouts(&self.cfg());
        let state = self
            .inner
            .store
            .client_session(account, client, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// The live session a bearer token was issued to, for a request to `path`, as
    /// [`Policy::session`]. Only the token's hash is ever stored.
    pub async fn bearer_session(
        &self,
        bearer: &str,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        let t = Self::timeouts(&self.cfg());
        let key = SessionToken::from_client(bearer).key();
        let state = self
            .inner
            .store
            .bearer_session(&key, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// Tie a bearer token Faspex issued to the session that asked for it. False when that
    /// session has ended meanwhile.
    pub async fn add_bearer(&self, key: &SessionKey, bearer: &str) -> Result<bool, StoreError> {
        let bearer = SessionToken::from_client(bearer).key();
        self.inner.store.add_bearer(key, bearer).await
    }

    /// Keep Faspex's session cookie with the session, to log Faspex out when it ends.
    pub async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError> {
        self.inner.store.set_upstream_cookie(key, cookie).await
    }

    /// End a session: the user logged out (`Logout`), or Faspex refused the login after admission
    /// (`Rollback`). Its seat is free when this returns.
    pub async fn end(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        let s = self.inner.store.end_session(key, reason).await?;
        if let Some(s) = &s {
            self.emit(PolicyEvent::SessionEnded(s, reason));
        }
        Ok(s)
    }

    /// End expired sessions, lift expired locks and drop empty failure windows, now.
    pub async fn sweep(&self) -> Result<Swept, StoreError> {
        let cfg = self.cfg();
        let swept = self
            .inner
            .store
            .sweep(self.now(), Self::timeouts(&cfg), cfg.lockout_window)
            .await?;
        self.emit_ended(&swept.ended);
        for l in &swept.lifted {
            self.emit(PolicyEvent::LockExpired(l));
        }
        Ok(swept)
    }

    /// Sweep every [`SWEEP_EVERY`] until the task is dropped or aborted.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let policy = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                if let Err(e) = policy.sweep().await {
                    tracing::error!(error = %e, "sweep failed");
                }
                n += 1;
                if n % 240 == 0 {
                    policy.inner.throttle.load().forget_idle();
                    policy.inner.cache.sweep(policy.now());
                }
            }
        })
    }

    /// Write everything written behind (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.store.flush().await
    }

    /// Prove the store can be written now (`/readyz`).
    pub async fn probe_store(&self) -> Result<(), StoreError> {
        self.inner.store.probe().await
    }

    // ----- administration -----

    /// Gauges and the limit.
    pub async fn status(&self) -> Result<Status, StoreError> {
        let Counts {
            seats,
            sessions,
            accounts_locked,
            local_seats,
            local_accounts_locked,
            tracked_windows,
            ..
        } = self.inner.store.counts(self.now()).await?;
        Ok(Status {
            seats_used: seats,
            seats_limit: self.cfg().max_sessions,
            sessions,
            accounts_locked,
            local_seats,
            local_accounts_locked,
            tracked_windows,
        })
    }

    /// Live sessions, oldest first.
    pub async fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        let now = self.now();
        let t = Self::timeouts(&self.cfg());
        let mut v: Vec<Session> = self
            .inner
            .store
            .sessions()
            .await?
            .into_iter()
            .filter(|s| s.expired(now, &t).is_none())
            .collect();
        v.sort_by(|a, b| (a.started, &a.account).cmp(&(b.started, &b.account)));
        Ok(v)
    }

    /// End every session of `user` now, freeing its seat. An unknown user is a no-op.
    pub async fn kick(&self, user: &str) -> Result<Vec<Session>, AdminError> {
        let mut ended = Vec::new();
        for account in self.accounts(user)? {
            // Its Basic callers' cached passwords go too: their next request is checked afresh.
            self.inner.cache.forget(&account);
            ended.extend(
                self.inner
                    .store
                    .end_account(&account, EndReason::Admin)
                    .await?,
            );
        }
        for s in &ended {
            self.emit(PolicyEvent::SessionEnded(s, EndReason::Admin));
        }
        Ok(ended)
    }

    /// Locks in force.
    pub async fn lockouts(&self) -> Result<Vec<Lock>, StoreError> {
        self.inner.store.lockouts(self.now()).await
    }

    /// Lift `user`'s locks (every address under `account+ip`) and clear its failure windows.
    pub async fn unlock(&self, user: &str) -> Result<Unlocked, AdminError> {
        let accounts = self.accounts(user)?;
        let now = self.now();
        let mut u = Unlocked::default();
        for account in &accounts {
            let one = self.inner.store.unlock_account(account).await?;
            u.lifted.extend(one.lifted);
            u.windows_cleared += one.windows_cleared;
        }
        u.lifted.retain(|l| l.until > now);
        let account = accounts.first().cloned().unwrap_or_default();
        self.emit(PolicyEvent::Unlocked {
            account: &account,
            lifted: &u.lifted,
        });
        Ok(u)
    }

    /// Lock `user` now, for `duration` (default `policy.lockout_duration`). Live sessions are
    /// not ended: kick them as well to end access now.
    pub async fn lock(&self, user: &str, duration: Option<Duration>) -> Result<Lock, AdminError> {
        self.lock_with(user, duration, None).await
    }

    /// [`Policy::lock`], asking `directory` (when given, and it looks names up) whose account
    /// `user` is: an entry's, or, for a name it does not know, a local account's under the key
    /// its logins count under (Faspex's accounts' folded name). Without an answer, the names
    /// resolved lately decide, as for [`Policy::lock`].
    pub async fn lock_with(
        &self,
        user: &str,
        duration: Option<Duration>,
        directory: Option<&Arc<dyn Directory>>,
    ) -> Result<Lock, AdminError> {
        let (account, kind) = match directory {
            Some(d) if d.looks_up() => self.admin_account(user, d).await?,
            _ => {
                let account = self.account(user)?;
                let kind = self.kind_of(&account).await;
                (account, kind)
            }
        };
        let now = self.now();
        let d = duration.unwrap_or(self.cfg().lockout_duration);
        let lock = self
            .inner
            .store
            .lock_account(&account, kind, now, now + d)
            .await?;
        // No cached password may carry a Basic caller past the lock.
        self.inner.cache.forget(&account);
        self.emit(PolicyEvent::AdminLocked(&lock));
        Ok(lock)
    }

    /// The lock in force on `user` (from `ip`, under `account+ip`), if any.
    pub async fn lock_state(&self, user: &str, ip: IpAddr) -> Result<Option<Lock>, AdminError> {
        let account = self.account(user)?;
        Ok(self
            .inner
            .store
            .lock_state(&self.lock_key(&account, ip), self.now())
            .await?)
    }
}

/// An administrative call's failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidUsername(#[from] InvalidUsername),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An admitted login that waits for Faspex's word. The session holds its seat meanwhile.
/// Dropped without a decision (the client went away before Faspex answered), it is rolled back
/// and reported as refused upstream. `Debug` leaves the password out.
pub struct PendingLogin {
    policy: Policy,
    admitted: Admitted,
    /// Confirmed or refused: nothing left for `Drop` to do.
    decided: bool,
    account: String,
    /// Kept to fill the verification cache once Faspex confirms a Basic caller's login.
    password: String,
    ip: IpAddr,
    kind: ClientKind,
    epoch: u64,
    /// For a login Faspex itself checks: its place under the lockout, to report the verdict on.
    verdict: Option<TicketGuard>,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("admitted", &self.admitted)
            .field("account", &self.account)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PendingLogin {
    /// The session being admitted, and its token.
    pub fn admitted(&self) -> &Admitted {
        &self.admitted
    }

    /// Faspex accepted the login: the sessions it replaces end now, it counts as a success, and
    /// a Basic caller's credentials are cached.
    pub async fn confirm(mut self) -> Admitted {
        self.decided = true;
        // Faspex said yes to one of its own accounts: a success, the failures cleared.
        if let Some(ticket) = self.verdict.as_mut().and_then(|g| g.ticket.take()) {
            if let Err(e) = self.policy.finish(ticket, AttemptResult::Accepted).await {
                tracing::error!(
                    target: "faspex_gate::policy",
                    error = %e,
                    "could not record a login Faspex accepted"
                );
            }
        }
        for key in &self.admitted.replaces {
            if let Err(e) = self.policy.end(key, EndReason::Replaced).await {
                tracing::error!(
                    target: "faspex_gate::policy",
                    error = %e,
                    session = %key,
                    "could not end the session a take-over replaces"
                );
            }
        }
        let p = &self.policy;
        if self.kind == ClientKind::Basic {
            let ttl = p.inner.checks.load().cache_ttl;
            p.inner
                .cache
                .insert(&self.account, &self.password, p.now(), ttl, self.epoch);
        }
        p.emit(PolicyEvent::Login {
            account: Some(&self.account),
            account_kind: Some(self.admitted.session.account_kind),
            ip: self.ip,
            kind: self.kind,
            result: LoginResult::Success,
        });
        self.admitted.clone()
    }

    /// Whether Faspex's answer is the check itself (one of Faspex's own accounts): a refusal
    /// is then [`PendingLogin::reject`], a wrong password.
    pub fn faspex_checks(&self) -> bool {
        self.verdict.is_some()
    }

    /// Faspex refused one of its own accounts' credentials: a failed login like a wrong
    /// directory password (counted, and locking at the threshold). The session ends and its
    /// seat is free when this returns. The refusal to give the client is returned.
    pub async fn reject(mut self) -> LoginRefused {
        self.decided = true;
        let ticket = self.verdict.as_mut().and_then(|g| g.ticket.take());
        let refused = match ticket {
            Some(ticket) => match self.policy.finish(ticket, AttemptResult::Rejected).await {
                Ok(AttemptEnd::Locked(lock)) => {
                    self.policy.emit(PolicyEvent::LockedOut(&lock));
                    self.policy.refusal(Check::Locked(lock))
                }
                Ok(AttemptEnd::AlreadyLocked(lock)) => self.policy.refusal(Check::Locked(lock)),
                Ok(_) => LoginRefused::BadCredentials,
                Err(e) => LoginRefused::Store(e),
            },
            None => LoginRefused::BadCredentials,
        };
        self.policy.emit(PolicyEvent::Login {
            account: Some(&self.account),
            account_kind: Some(self.admitted.session.account_kind),
            ip: self.ip,
            kind: self.kind,
            result: refused.result(),
        });
        if let Err(e) = self
            .policy
            .end(&self.admitted.session.key, EndReason::Rollback)
            .await
        {
            return LoginRefused::Store(e);
        }
        refused
    }

    /// Faspex refused the login the directory accepted, or gave no verdict on one of its own
    /// accounts (an error, no answer): the session ends (`rollback`) and its seat is free when
    /// this returns. Not a wrong password: nothing counts toward lockout.
    pub async fn refuse(mut self) -> Result<(), StoreError> {
        self.decided = true;
        if let Some(ticket) = self.verdict.as_mut().and_then(|g| g.ticket.take()) {
            self.policy.finish(ticket, AttemptResult::Aborted).await?;
        }
        self.policy.emit(PolicyEvent::Login {
            account: Some(&self.account),
            account_kind: Some(self.admitted.session.account_kind),
            ip: self.ip,
            kind: self.kind,
            result: LoginResult::UpstreamRefused,
        });
        self.policy
            .end(&self.admitted.session.key, EndReason::Rollback)
            .await
            .map(|_| ())
    }
}

impl Drop for PendingLogin {
    fn drop(&mut self) {
        if self.decided {
            return;
        }
        self.policy.emit(PolicyEvent::Login {
            account: Some(&self.account),
            account_kind: Some(self.admitted.session.account_kind),
            ip: self.ip,
            kind: self.kind,
            result: LoginResult::UpstreamRefused,
        });
        let policy = self.policy.clone();
        let key = self.admitted.session.key.clone();
        spawn_detached(async move {
            if let Err(e) = policy.end(&key, EndReason::Rollback).await {
                tracing::error!(
                    target: "faspex_gate::policy",
                    error = %e,
                    session = %key,
                    "could not roll back an abandoned login; its seat is held until it idles out"
                );
            }
        });
    }
}

/// Releases a credential check's reservation if the check never reports (it was cancelled).
struct TicketGuard {
    policy: Policy,
    ticket: Option<AttemptTicket>,
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let policy = self.policy.clone();
        spawn_detached(async move {
            let _ = policy.finish(ticket, AttemptResult::Aborted).await;
        });
    }
}

/// Ends a just-admitted session if the login is abandoned before its token is handed over.
struct RollbackGuard {
    policy: Policy,
    key: Option<SessionKey>,
}

impl Drop for RollbackGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let policy = self.policy.clone();
        spawn_detached(async move {
            let _ = policy.end(&key, EndReason::Rollback).await;
        });
    }
}

/// Finish clean-up from a `Drop`, on the runtime if there is one (there always is while serving).
fn spawn_detached(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

/// A `Retry-After` worth sending: whole seconds, at least one.
fn retry_after(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
