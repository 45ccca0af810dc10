//! The engine's vocabulary: the rules it applies around checks, a login request and its outcomes,
//! why a login or a session lookup was refused, and the gauges. No HTTP here: the status a
//! refusal gets is decided where errors become responses (`crate::proxy::error`).

use std::net::IpAddr;
use std::time::Duration;

use crate::account::InvalidUsername;
use crate::clock::Timestamp;
use crate::config::{AuthConfig, LocalAccounts};
use crate::store::{
    ClientId, ClientKind, EndReason, Lock, Session, SessionKey, SessionToken, StoreError,
};

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

/// How a Basic caller's credentials were confirmed by [`Policy::recheck`](super::Policy::recheck).
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

/// The part of a Basic caller's client id that stands for its User-Agent: the hex of the first 8
/// bytes of its SHA-256.
fn agent_digest(agent: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, agent.as_bytes());
    crate::util::hex(&d.as_ref()[..8])
}

/// The longest User-Agent [`LoginRequest::basic_client`] remembers (browsers' and curl's are far
/// shorter).
const REMEMBERED_AGENT: usize = 512;

impl LoginRequest<'_> {
    /// The client id of an HTTP Basic caller: its source address and User-Agent.
    ///
    /// Made for every Basic request: the User-Agent's digest is remembered for the last agent
    /// seen on this thread (a caller sends the same one every time), and the id is written with
    /// pushes, not `format!` (the two were 5,200 of a Basic GET's 72,500 instructions).
    pub fn basic_client(ip: IpAddr, agent: &str) -> ClientId {
        thread_local! {
            /// The last agent this thread saw, and the hex of its digest's first 8 bytes.
            static LAST: std::cell::RefCell<(String, String)> =
                const { std::cell::RefCell::new((String::new(), String::new())) };
        }
        let mut id = String::with_capacity(64);
        id.push_str("basic:");
        crate::util::push_ip(&mut id, ip);
        id.push(':');
        // (a long agent is not remembered: a thread would keep the longest one it saw)
        if agent.len() > REMEMBERED_AGENT {
            id.push_str(&agent_digest(agent));
            return ClientId(id.into());
        }
        LAST.with_borrow_mut(|(last, short)| {
            if short.is_empty() || last != agent {
                *short = agent_digest(agent);
                last.clear();
                last.push_str(agent);
            }
            id.push_str(short);
        });
        ClientId(id.into())
    }
}

/// Credentials [`Policy::verify`](super::Policy::verify) accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// As typed, a listed domain removed: what the directory is given.
    pub name: String,
    /// The account it counts as.
    pub account: String,
}

/// What the engine knows about why an account may not get in now
/// ([`Policy::diagnose`](super::Policy::diagnose)).
#[derive(Clone, Debug)]
pub struct Diagnosis {
    /// The account the name counts as.
    pub account: String,
    /// Locks in force on it (one per address under `account+ip`).
    pub locks: Vec<Lock>,
    /// Its live sessions.
    pub sessions: Vec<Session>,
    pub seats_used: usize,
    pub seats_limit: u32,
    /// `policy.one_client_per_account` refuses a second client (`reject`).
    pub one_client_rejects: bool,
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

/// What one credential check (possibly shared) came to.
#[derive(Clone, Debug)]
pub(super) enum Check {
    Verified,
    BadCredentials,
    Locked(Lock),
    Throttled(Duration),
    DirectoryUnavailable,
    FaspexUnavailable,
    Store(StoreError),
}

impl Check {
    /// The refusal a failed check gives, at `now`.
    pub(super) fn refusal(self, now: Timestamp) -> LoginRefused {
        match self {
            Check::Verified | Check::BadCredentials => LoginRefused::BadCredentials,
            Check::Locked(lock) => LoginRefused::AccountLocked {
                until: lock.until,
                retry_after: retry_after(lock.until.since(now)),
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
}

/// A `Retry-After` worth sending: whole seconds, at least one.
pub(super) fn retry_after(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id as it was first written (sessions in a shared store carry it): `format!` over the
    /// digest, with no memory of the last agent.
    fn oracle(ip: IpAddr, agent: &str) -> ClientId {
        let d = ring::digest::digest(&ring::digest::SHA256, agent.as_bytes());
        let short = crate::util::hex(&d.as_ref()[..8]);
        ClientId(format!("basic:{ip}:{short}").into())
    }

    #[test]
    fn a_basic_clients_id_is_the_same_whatever_came_before() {
        let ips: [IpAddr; 3] = [
            "192.0.2.44".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
        ];
        // Repeated and alternating agents, the empty one and one that is a prefix of another:
        // the remembered digest must never answer for another agent.
        let long = "x".repeat(REMEMBERED_AGENT + 1);
        let agents = [
            "curl/8.5",
            "curl/8.5",
            "",
            "curl/8",
            "curl/8.5",
            &long,
            "curl/8.5",
            "Mozilla/5.0 (X11)",
            "",
        ];
        for ip in ips {
            for agent in agents {
                assert_eq!(LoginRequest::basic_client(ip, agent), oracle(ip, agent));
            }
        }
        // Another thread starts with nothing remembered.
        let ip = ips[0];
        std::thread::spawn(move || {
            assert_eq!(
                LoginRequest::basic_client(ip, "curl/8.5"),
                oracle(ip, "curl/8.5")
            );
        })
        .join()
        .unwrap();
    }
}
