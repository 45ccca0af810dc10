//! Policy state: sessions (which hold the licence seats), failure windows and locks, behind the
//! [`PolicyStore`] trait.
//!
//! The store persists state and makes each step atomic; it decides nothing. Each method is one
//! atomic step over the whole state, given the rules' parameters as arguments ([`SeatRules`],
//! [`Timeouts`], [`LockoutRules`]), and inside that step it applies the rules as coded in their
//! own files: [`crate::policy::seats`], [`crate::policy::one_client`],
//! [`crate::policy::timeouts`], [`crate::policy::lockout`]. The policy engine
//! ([`crate::policy`]) decides *when* to call what.
//!
//! Every backend must pass the conformance suite (`conformance.rs`, in test builds only): that
//! suite, not a comment, is what binds a second backend (a shared one that runs each step as one
//! server-side script in one round trip) to the rules the embedded store applies.
//!
//! [`embedded::EmbeddedStore`] is the default: the state lives in memory ([`tables::Tables`],
//! authoritative while the process runs) and is persisted to a redb file. Session creation and
//! end, lockouts, unlocks and admin locks are written through (durable before the call returns);
//! failure windows and last-activity times are written behind, at most [`WRITE_BEHIND`] late.
//!
//! [`redis::RedisStore`] is the shared store (`store.kind = "redis"`, Redis 7.0 or later): every
//! step is one function of a Redis function library, run atomically on the master, everything
//! written through.
//!
//! [`migrate`] moves a site from the first to the second (`faspex-gate migrate-store`).

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
pub mod embedded;
#[cfg(any(test, feature = "test-support"))]
pub mod failing;
pub mod migrate;
pub mod redis;
pub mod tables;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
pub use crate::config::OneClient;

/// The most that write-behind state (failure windows, last activity) may lag behind memory.
pub const WRITE_BEHIND: Duration = Duration::from_millis(500);

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u64 = 1;

/// The most bearer tokens one session keeps; asking for more forgets the oldest.
pub const MAX_BEARER_TOKENS: usize = 8;

/// What a store call can fail with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened, read or understood. The gateway refuses to start.
    #[error("the state store {file} {reason}")]
    Open { file: PathBuf, reason: String },
    /// A write could not be made durable. The caller fails closed.
    #[error("the state store {file} could not be written: {reason}")]
    Write { file: PathBuf, reason: String },
    /// The store has shut down.
    #[error("the state store is closed")]
    Closed,
    /// The shared store (Redis) cannot be reached, refused a step, or failed it. The caller fails
    /// closed: nothing is admitted, counted or unlocked from local state.
    #[error("the Redis store: {reason}")]
    Remote { reason: String },
    /// A setting does not fit the server found (its version, the ACL user's rights, the
    /// password, the session secret's fingerprint): the gateway exits 2 naming `key`.
    #[error("{key}: {reason}")]
    Setting { key: &'static str, reason: String },
}

/// The public handle of a session: what the client's cookie (or bearer mapping) leads to. Only its
/// hash, the [`SessionKey`], is stored, so a copy of the store file lets nobody in.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A fresh token: 32 bytes from the system's secure random source, base64url.
    pub fn generate() -> Result<Self, StoreError> {
        use base64::Engine as _;
        let bytes = crate::util::random_bytes(32).map_err(|_| StoreError::Closed)?;
        Ok(Self(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// Wrap a token the client presented.
    pub fn from_client(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key the store files this session under.
    pub fn key(&self) -> SessionKey {
        let d = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        SessionKey(crate::util::hex(&d.as_ref()[..16]).into())
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// A session's identity in the store and in logs: 32 hex digits of SHA-256 of its token.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionKey(pub Arc<str>);

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose account a name is: the directory's, or one outside it (`auth.local_accounts`: the
/// users file beside the directory, or Faspex's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// The directory's (or, with `auth.backend = "file"`, the users file's), and every account
    /// recorded before local accounts existed.
    #[default]
    Directory,
    /// Outside the directory.
    Local,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Directory => "directory",
            AccountKind::Local => "local",
        }
    }
}

/// How a session's client authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// The login form and the gateway's cookie.
    Browser,
    /// HTTP Basic on every request.
    Basic,
    /// A bearer token Faspex issued to the session.
    Bearer,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Browser => "browser",
            ClientKind::Basic => "basic",
            ClientKind::Bearer => "bearer",
        }
    }
}

/// Which client a session belongs to: one browser cookie, one (source IP, User-Agent) pair for a
/// Basic caller. Opaque to the store; two requests are the same client when these are equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub Arc<str>);

/// One logged-in session. An account with a live session holds one licence seat. `Debug` leaves
/// Faspex's cookie out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub key: SessionKey,
    /// The account: the prepared name, or with search-then-bind the directory entry's own
    /// ([`crate::account`]).
    pub account: Arc<str>,
    pub client: ClientId,
    pub kind: ClientKind,
    pub ip: IpAddr,
    /// The User-Agent, cut to 256 bytes.
    pub agent: Arc<str>,
    pub started: Timestamp,
    pub last_activity: Timestamp,
    /// Faspex's own session cookie, kept to log Faspex out when the gateway ends the session.
    #[serde(default)]
    pub upstream_cookie: Option<Arc<str>>,
    /// The keys (hashes) of the OAuth2 bearer tokens Faspex issued to this session, newest last,
    /// at most [`MAX_BEARER_TOKENS`]. They die with the session.
    #[serde(default)]
    pub bearer: Vec<SessionKey>,
    /// Whose account it is.
    #[serde(default)]
    pub account_kind: AccountKind,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("account", &self.account)
            .field("client", &self.client)
            .field("kind", &self.kind)
            .field("ip", &self.ip)
            .field("agent", &self.agent)
            .field("started", &self.started)
            .field("last_activity", &self.last_activity)
            .field(
                "upstream_cookie",
                &self.upstream_cookie.as_ref().map(|_| "<redacted>"),
            )
            .field("bearer_tokens", &self.bearer.len())
            .finish()
    }
}

/// Why a session ended. The first five are the metric's `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    Logout,
    Idle,
    Absolute,
    Replaced,
    Admin,
    /// The upstream refused the login after admission: the session never really began.
    Rollback,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Idle => "idle",
            EndReason::Absolute => "absolute",
            EndReason::Replaced => "replaced",
            EndReason::Admin => "admin",
            EndReason::Rollback => "rollback",
        }
    }
}

/// The session timeouts, from `[policy]`: the parameters of [`crate::policy::timeouts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Duration,
    pub api_idle: Duration,
    pub absolute: Option<Duration>,
}

/// The rules for admission, from `[policy]`: the parameters of [`crate::policy::seats`],
/// [`crate::policy::one_client`] and [`crate::policy::timeouts`].
#[derive(Clone, Copy, Debug)]
pub struct SeatRules {
    pub max_sessions: u32,
    pub one_client: OneClient,
    pub timeouts: Timeouts,
}

/// A request for a seat, after a successful credential check.
#[derive(Clone, Debug)]
pub struct Admission {
    /// The key of the new session (the hash of a token the engine made).
    pub key: SessionKey,
    pub account: String,
    pub account_kind: AccountKind,
    pub client: ClientId,
    pub kind: ClientKind,
    pub ip: IpAddr,
    pub agent: String,
    /// The 409 page's "sign the other client out": replace whatever `one_client` says.
    pub takeover: bool,
    pub now: Timestamp,
}

/// What an admission did.
#[derive(Clone, Debug)]
pub enum AdmitOutcome {
    Admitted {
        session: Session,
        /// The same client logged in again: its old session (this key) was renewed in place.
        renewed_from: Option<SessionKey>,
        /// Other clients' sessions of the account, to end as replaced once the login is
        /// confirmed (`replace`, or a take-over).
        replaces: Vec<SessionKey>,
    },
    /// Every seat is taken.
    LicenseFull {
        /// When the soonest session would end without activity.
        soonest_end: Option<Timestamp>,
    },
    /// The account is live on another client and `one_client` is `reject`.
    OtherClient { active: Session },
    /// The admission could not be made durable, so it was undone: nobody was admitted (the
    /// sessions in [`Admit::ended`] did end).
    Unsaved { error: StoreError },
}

/// An admission's decision, and every session it ended on the way: the other client's
/// (replaced), and any that had passed their deadline.
#[derive(Clone, Debug)]
pub struct Admit {
    pub outcome: AdmitOutcome,
    pub ended: Vec<(Session, EndReason)>,
}

/// What a request on a session found.
#[derive(Clone, Debug)]
pub enum SessionState {
    Live(Session),
    /// It had expired; this call ended it.
    Ended(Session, EndReason),
    /// No such session (never was, or already ended).
    Unknown,
}

/// The key failures are counted and locks are held under: the account, or with `lockout_key =
/// "account+ip"` the account and the source address. An admin lock is always account-wide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockKey {
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

impl LockKey {
    pub fn account(account: impl Into<String>) -> Self {
        Self {
            account: account.into(),
            ip: None,
        }
    }

    /// The store's key string: the account, or `account␀ip`.
    pub fn encode(&self) -> String {
        match self.ip {
            None => self.account.clone(),
            Some(ip) => format!("{}\u{0}{ip}", self.account),
        }
    }
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            None => f.write_str(&self.account),
            Some(ip) => write!(f, "{} from {ip}", self.account),
        }
    }
}

/// A lock on an account (or account and address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub key: LockKey,
    pub since: Timestamp,
    pub until: Timestamp,
    /// Failures in the window when it locked (0 for an admin lock).
    pub failures: u32,
    /// Set by `admin lock`, not by failures.
    pub by_admin: bool,
    /// Whose account is locked.
    #[serde(default)]
    pub account_kind: AccountKind,
    /// Where the failures that made it came from: the window's last few distinct source
    /// addresses, newest first ([`crate::policy::lockout::remember_source`]). None for an
    /// administrator's lock, nor for one recorded before they were kept.
    #[serde(default)]
    pub sources: Vec<IpAddr>,
}

/// The rules for lockout, from `[policy]`: the parameters of [`crate::policy::lockout`].
#[derive(Clone, Copy, Debug)]
pub struct LockoutRules {
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
    /// The most failure windows kept. Locks are never evicted.
    pub max_tracked: usize,
    /// How long an unfinished credential check holds its place before it is presumed dead.
    pub ticket_ttl: Duration,
}

/// A reserved place for one credential check under a [`LockKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptTicket {
    pub key: LockKey,
    pub id: u64,
    /// Whose account the check is for: a lock it sets says so. The engine sets it; the store
    /// makes tickets for the directory's.
    pub account_kind: AccountKind,
    /// The end client's address (what the engine has as the login's source): a failure this
    /// check reports is remembered as coming from it. The engine sets it; the store makes
    /// tickets without one.
    pub source: Option<IpAddr>,
}

/// The answer to "may a credential check run now?".
#[derive(Clone, Debug)]
pub enum AttemptStart {
    /// Yes; report how it went with [`PolicyStore::finish_attempt`].
    Proceed(AttemptTicket),
    /// No: locked.
    Locked(Lock),
    /// Not yet: the checks already running could reach the threshold. Ask again when one ends.
    Busy,
}

/// How a credential check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// Right credentials: the key's failures are cleared.
    Accepted,
    /// Wrong credentials: one failure.
    Rejected,
    /// No verdict (directory down, cancelled): nothing counted.
    Aborted,
}

/// What finishing a check did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Accepted, or aborted.
    Done,
    /// A failure was counted; `failures` are now in the window.
    Counted { failures: u32 },
    /// The failure reached the threshold: the key is now locked.
    Locked(Lock),
    /// A lock was placed while the check ran (an administrator's): whatever the result, the
    /// answer is this lock.
    AlreadyLocked(Lock),
}

/// What an unlock did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unlocked {
    /// The locks lifted (several under `account+ip`).
    pub lifted: Vec<Lock>,
    /// Failure windows cleared.
    pub windows_cleared: usize,
}

/// What a sweep ended.
#[derive(Clone, Debug, Default)]
pub struct Swept {
    pub ended: Vec<(Session, EndReason)>,
    pub lifted: Vec<Lock>,
    pub windows_dropped: usize,
}

/// Gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accounts holding a seat.
    pub seats: usize,
    pub sessions: usize,
    /// Distinct accounts with a lock in force.
    pub accounts_locked: usize,
    /// Of `seats` and `accounts_locked`, those of local accounts ([`AccountKind::Local`]).
    pub local_seats: usize,
    pub local_accounts_locked: usize,
    pub locks: usize,
    pub tracked_windows: usize,
}

/// The policy state. Every method is atomic; see the module documentation.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Admit `a` to a seat under `rules`: renew the same client's session, replace or refuse
    /// another client's, or take a free seat, in one step. Durable before it returns.
    async fn admit(&self, a: Admission, rules: SeatRules) -> Result<Admit, StoreError>;

    /// The session under `key` at `now`; an expired one is ended. When `activity` is set, its
    /// last activity becomes `now` (written behind).
    async fn session(
        &self,
        key: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError>;

    /// The live session of `account` on `client`, as [`PolicyStore::session`] does.
    async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError>;

    /// Remember Faspex's cookie for a session (written through).
    async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError>;

    /// Tie a bearer token (its key) to a session: later requests with it count as that session's
    /// activity. A session keeps at most [`MAX_BEARER_TOKENS`]. Durable before it returns.
    async fn add_bearer(&self, key: &SessionKey, bearer: SessionKey) -> Result<bool, StoreError>;

    /// The session a bearer token (its key) is tied to, as [`PolicyStore::session`] does.
    async fn bearer_session(
        &self,
        bearer: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError>;

    /// End one session now. Durable before it returns.
    async fn end_session(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError>;

    /// End every session of `account` now. Durable before it returns.
    async fn end_account(
        &self,
        account: &str,
        reason: EndReason,
    ) -> Result<Vec<Session>, StoreError>;

    /// Every session, live or not yet swept.
    async fn sessions(&self) -> Result<Vec<Session>, StoreError>;

    /// End sessions past their deadline, lift locks past theirs, drop failure windows that have
    /// slid empty.
    async fn sweep(
        &self,
        now: Timestamp,
        t: Timeouts,
        window: Duration,
    ) -> Result<Swept, StoreError>;

    /// Reserve a place for a credential check under `key`, unless it is locked or the checks in
    /// flight could already reach the threshold.
    async fn begin_attempt(
        &self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptStart, StoreError>;

    /// Report a reserved check's result. A failure that reaches the threshold locks the key,
    /// durably before this returns.
    async fn finish_attempt(
        &self,
        ticket: AttemptTicket,
        result: AttemptResult,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptEnd, StoreError>;

    /// The lock in force on `key` at `now` (the account-wide one counts for every address).
    async fn lock_state(&self, key: &LockKey, now: Timestamp) -> Result<Option<Lock>, StoreError>;

    /// Lock `account` (every address) until `until`, as an administrator asked. Durable.
    async fn lock_account(
        &self,
        account: &str,
        kind: AccountKind,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Lock, StoreError>;

    /// Lift every lock of `account` and clear all its failure windows. Durable.
    async fn unlock_account(&self, account: &str) -> Result<Unlocked, StoreError>;

    /// Locks in force at `now`.
    async fn lockouts(&self, now: Timestamp) -> Result<Vec<Lock>, StoreError>;

    /// The gauges at `now`.
    async fn counts(&self, now: Timestamp) -> Result<Counts, StoreError>;

    /// Write everything written behind now (at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Write something now, even with nothing to save: `Ok` proves the store can be written
    /// (`/readyz`).
    async fn probe(&self) -> Result<(), StoreError>;
}
