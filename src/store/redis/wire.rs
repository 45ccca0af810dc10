//! What the Redis store's functions answer ([`policy.lua`](./policy.lua)): one JSON document a
//! call, read here into the store's own types. Nothing here talks to Redis.
//!
//! Lua's `cjson` writes an empty array as `{}`, so every list here also accepts an empty object;
//! numbers arrive as JSON numbers (milliseconds fit a double exactly).

use std::net::IpAddr;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::store::tables::decode_lock_key;
use crate::store::{
    AccountKind, AttemptEnd, AttemptStart, AttemptTicket, ClientId, ClientKind, Counts, EndReason,
    Lock, Session, SessionKey, SessionState, StoreError, Swept, Unlocked,
};

/// A reply that is not what the library sends: a library of another version, or a bug.
fn garbled(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        reason: format!("answered {what} in a form this build does not understand ({e})"),
    }
}

pub(crate) fn parse<T: DeserializeOwned>(what: &str, reply: &str) -> Result<T, StoreError> {
    serde_json::from_str(reply).map_err(|e| garbled(what, e))
}

/// A list, or `{}` (cjson's empty array).
fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Object(ref m) if m.is_empty() => Ok(Vec::new()),
        other => serde_json::from_value(other).map_err(serde::de::Error::custom),
    }
}

/// Milliseconds, as a JSON number (at most 9.0e15, where Lua's numbers stop being exact). A
/// time past the year 9999 is read as it is (a lock an older build wrote, with a lockout of
/// millennia, still reads and lifts); it is printed as the last millisecond RFC 3339 can write.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let f = f64::deserialize(d)?;
    if !(0.0..=9.0e15).contains(&f) {
        return Err(serde::de::Error::custom("a time out of range"));
    }
    Ok(Timestamp::from_millis(f.round() as u64))
}

fn opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    millis(d).map(Some)
}

fn account_kind(s: &str) -> AccountKind {
    match s {
        "local" => AccountKind::Local,
        _ => AccountKind::Directory,
    }
}

fn end_reason(s: &str) -> Result<EndReason, StoreError> {
    match s {
        "idle" => Ok(EndReason::Idle),
        "absolute" => Ok(EndReason::Absolute),
        other => Err(garbled("an end reason", other)),
    }
}

/// A session as a hash of the library holds it.
#[derive(Deserialize)]
pub(crate) struct WireSession {
    key: String,
    account: String,
    client: String,
    kind: String,
    ip: String,
    agent: String,
    #[serde(deserialize_with = "millis")]
    started: Timestamp,
    #[serde(deserialize_with = "millis")]
    last: Timestamp,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    bearer: String,
    akind: String,
}

impl WireSession {
    pub(crate) fn into_session(self) -> Result<Session, StoreError> {
        let kind = match self.kind.as_str() {
            "browser" => ClientKind::Browser,
            "basic" => ClientKind::Basic,
            "bearer" => ClientKind::Bearer,
            other => return Err(garbled("a client kind", other)),
        };
        let ip: IpAddr = self.ip.parse().map_err(|e| garbled("an address", e))?;
        Ok(Session {
            key: SessionKey(self.key.into()),
            account: self.account.into(),
            client: ClientId(self.client.into()),
            kind,
            ip,
            agent: self.agent.into(),
            started: self.started,
            last_activity: self.last,
            upstream_cookie: self.cookie.map(Into::into),
            bearer: self
                .bearer
                .split(',')
                .filter(|b| !b.is_empty())
                .map(|b| SessionKey(b.into()))
                .collect(),
            account_kind: account_kind(&self.akind),
        })
    }
}

/// A lock as the library holds it; `epoch` orders it against the account's unlocks.
#[derive(Deserialize)]
pub(crate) struct WireLock {
    key: String,
    #[serde(deserialize_with = "millis")]
    since: Timestamp,
    #[serde(rename = "until", deserialize_with = "millis")]
    until: Timestamp,
    failures: u32,
    admin: bool,
    akind: String,
    #[serde(default)]
    epoch: u64,
    /// The window's source addresses, newest first, comma-joined (none: empty).
    #[serde(default)]
    sources: String,
}

/// A lock as a gateway remembers it and `restore_locks` takes it back: the library's own fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct SeenLock {
    pub key: String,
    pub since: u64,
    #[serde(rename = "until")]
    pub until: u64,
    pub failures: u32,
    pub admin: bool,
    pub akind: String,
    pub epoch: u64,
}

/// An unlock as a gateway remembers it: the account's tombstone, and until when it must last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeenUnlock {
    pub account: String,
    pub epoch: u64,
    pub until: u64,
}

impl WireLock {
    pub(crate) fn seen(&self) -> SeenLock {
        SeenLock {
            key: self.key.clone(),
            since: self.since.as_millis(),
            until: self.until.as_millis(),
            failures: self.failures,
            admin: self.admin,
            akind: self.akind.clone(),
            epoch: self.epoch,
        }
    }

    pub(crate) fn into_lock(self) -> Lock {
        Lock {
            key: decode_lock_key(&self.key),
            since: self.since,
            until: self.until,
            failures: self.failures,
            by_admin: self.admin,
            account_kind: account_kind(&self.akind),
            sources: self
                .sources
                .split(',')
                .filter_map(|a| a.parse().ok())
                .collect(),
        }
    }
}

fn seen(v: &[WireLock]) -> Vec<SeenLock> {
    v.iter().map(WireLock::seen).collect()
}

fn locks(v: Vec<WireLock>) -> Vec<Lock> {
    let mut v: Vec<Lock> = v.into_iter().map(WireLock::into_lock).collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

#[derive(Deserialize)]
struct WireEnded {
    session: WireSession,
    why: String,
}

fn ended(v: Vec<WireEnded>) -> Result<Vec<(Session, EndReason)>, StoreError> {
    let mut out = v
        .into_iter()
        .map(|e| Ok((e.session.into_session()?, end_reason(&e.why)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    Ok(out)
}

/// An admission's answer.
#[derive(Deserialize)]
pub(crate) struct WireAdmit {
    outcome: String,
    #[serde(default)]
    session: Option<WireSession>,
    #[serde(default)]
    renewed: Option<String>,
    #[serde(default, deserialize_with = "list")]
    replaces: Vec<String>,
    #[serde(default)]
    active: Option<WireSession>,
    #[serde(default, deserialize_with = "opt_millis")]
    soonest: Option<Timestamp>,
    #[serde(default, deserialize_with = "list")]
    ended: Vec<WireEnded>,
}

/// An admission's decision, as [`crate::store::Admit`] has it.
pub(crate) enum Decision {
    Admitted {
        session: Session,
        renewed_from: Option<SessionKey>,
        replaces: Vec<SessionKey>,
    },
    LicenseFull {
        soonest_end: Option<Timestamp>,
    },
    OtherClient {
        active: Session,
    },
}

impl WireAdmit {
    pub(crate) fn decode(self) -> Result<(Decision, Vec<(Session, EndReason)>), StoreError> {
        let outcome = match (self.outcome.as_str(), self.session, self.active) {
            ("admitted", Some(s), _) => Decision::Admitted {
                session: s.into_session()?,
                renewed_from: self.renewed.map(|k| SessionKey(k.into())),
                replaces: self
                    .replaces
                    .into_iter()
                    .map(|k| SessionKey(k.into()))
                    .collect(),
            },
            ("full", _, _) => Decision::LicenseFull {
                soonest_end: self.soonest,
            },
            ("other", _, Some(a)) => Decision::OtherClient {
                active: a.into_session()?,
            },
            (other, _, _) => return Err(garbled("an admission", other)),
        };
        Ok((outcome, ended(self.ended)?))
    }
}

/// A lookup's answer.
#[derive(Deserialize)]
pub(crate) struct WireState {
    state: String,
    #[serde(default)]
    session: Option<WireSession>,
    #[serde(default)]
    why: Option<String>,
}

impl WireState {
    pub(crate) fn decode(self) -> Result<SessionState, StoreError> {
        match (self.state.as_str(), self.session, self.why) {
            ("unknown", _, _) => Ok(SessionState::Unknown),
            ("live", Some(s), _) => Ok(SessionState::Live(s.into_session()?)),
            ("ended", Some(s), Some(why)) => {
                Ok(SessionState::Ended(s.into_session()?, end_reason(&why)?))
            }
            (other, _, _) => Err(garbled("a session lookup", other)),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WireFound {
    pub found: bool,
}

#[derive(Deserialize)]
pub(crate) struct WireOneSession {
    #[serde(default)]
    session: Option<WireSession>,
}

impl WireOneSession {
    pub(crate) fn decode(self) -> Result<Option<Session>, StoreError> {
        self.session.map(WireSession::into_session).transpose()
    }
}

#[derive(Deserialize)]
pub(crate) struct WireSessions {
    #[serde(default, deserialize_with = "list")]
    sessions: Vec<WireSession>,
}

impl WireSessions {
    pub(crate) fn decode(self) -> Result<Vec<Session>, StoreError> {
        let mut v = self
            .sessions
            .into_iter()
            .map(WireSession::into_session)
            .collect::<Result<Vec<_>, _>>()?;
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }
}

#[derive(Deserialize)]
pub(crate) struct WireSwept {
    #[serde(default, deserialize_with = "list")]
    ended: Vec<WireEnded>,
    #[serde(default, deserialize_with = "list")]
    lifted: Vec<WireLock>,
    dropped: usize,
}

impl WireSwept {
    /// The locks it lifted (to forget).
    pub(crate) fn lifted(&self) -> Vec<SeenLock> {
        seen(&self.lifted)
    }

    pub(crate) fn decode(self) -> Result<Swept, StoreError> {
        Ok(Swept {
            ended: ended(self.ended)?,
            lifted: locks(self.lifted),
            windows_dropped: self.dropped,
        })
    }
}

/// `begin_attempt`'s answer.
#[derive(Deserialize)]
pub(crate) struct WireStart {
    start: String,
    #[serde(default)]
    lock: Option<WireLock>,
    #[serde(default)]
    id: Option<u64>,
}

impl WireStart {
    pub(crate) fn seen(&self) -> Vec<SeenLock> {
        self.lock.iter().map(WireLock::seen).collect()
    }

    pub(crate) fn decode(self, key: &crate::store::LockKey) -> Result<AttemptStart, StoreError> {
        match (self.start.as_str(), self.lock, self.id) {
            ("locked", Some(l), _) => Ok(AttemptStart::Locked(l.into_lock())),
            ("busy", _, _) => Ok(AttemptStart::Busy),
            ("proceed", _, Some(id)) => Ok(AttemptStart::Proceed(AttemptTicket {
                key: key.clone(),
                id,
                account_kind: AccountKind::default(),
                source: None,
            })),
            (other, _, _) => Err(garbled("a check's start", other)),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WireEnd {
    #[serde(rename = "end")]
    end: String,
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    lock: Option<WireLock>,
}

impl WireEnd {
    pub(crate) fn seen(&self) -> Vec<SeenLock> {
        self.lock.iter().map(WireLock::seen).collect()
    }

    pub(crate) fn decode(self) -> Result<AttemptEnd, StoreError> {
        match (self.end.as_str(), self.failures, self.lock) {
            ("done", _, _) => Ok(AttemptEnd::Done),
            ("counted", Some(failures), _) => Ok(AttemptEnd::Counted { failures }),
            ("locked", _, Some(l)) => Ok(AttemptEnd::Locked(l.into_lock())),
            ("already", _, Some(l)) => Ok(AttemptEnd::AlreadyLocked(l.into_lock())),
            (other, _, _) => Err(garbled("a check's end", other)),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WireLockState {
    #[serde(default)]
    lock: Option<WireLock>,
    /// The account's tombstone (`lock_state` only).
    #[serde(default)]
    unlocked: u64,
}

impl WireLockState {
    pub(crate) fn seen(&self) -> Vec<SeenLock> {
        self.lock.iter().map(WireLock::seen).collect()
    }

    /// The epoch of the account's last unlock that Redis remembers, 0 for none.
    pub(crate) fn unlocked(&self) -> u64 {
        self.unlocked
    }

    pub(crate) fn decode(self) -> Option<Lock> {
        self.lock.map(WireLock::into_lock)
    }
}

#[derive(Deserialize)]
pub(crate) struct WireUnlocked {
    #[serde(default, deserialize_with = "list")]
    lifted: Vec<WireLock>,
    cleared: usize,
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    now: u64,
    #[serde(default)]
    keep: u64,
}

impl WireUnlocked {
    /// The unlock as the gateway remembers it: its tombstone for `account`.
    pub(crate) fn seen(&self, account: &str) -> SeenUnlock {
        SeenUnlock {
            account: account.to_owned(),
            epoch: self.epoch,
            until: self.now.saturating_add(self.keep),
        }
    }

    pub(crate) fn decode(self) -> Unlocked {
        Unlocked {
            lifted: locks(self.lifted),
            windows_cleared: self.cleared,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct WireLocks {
    #[serde(default, deserialize_with = "list")]
    locks: Vec<WireLock>,
}

impl WireLocks {
    pub(crate) fn seen(&self) -> Vec<SeenLock> {
        seen(&self.locks)
    }

    pub(crate) fn decode(self) -> Vec<Lock> {
        locks(self.locks)
    }
}

#[derive(Deserialize)]
pub(crate) struct WireCounts {
    seats: usize,
    sessions: usize,
    accounts_locked: usize,
    local_seats: usize,
    local_accounts_locked: usize,
    locks: usize,
    tracked_windows: usize,
}

impl WireCounts {
    pub(crate) fn decode(self) -> Counts {
        Counts {
            seats: self.seats,
            sessions: self.sessions,
            accounts_locked: self.accounts_locked,
            local_seats: self.local_seats,
            local_accounts_locked: self.local_accounts_locked,
            locks: self.locks,
            tracked_windows: self.tracked_windows,
        }
    }
}

/// Whether a function's answer asks for `WAIT` (its `wait` flag); an answer that cannot be read
/// asks for it, so that nothing that changed goes unacknowledged.
pub(crate) fn wants_wait(reply: &str) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default)]
        wait: bool,
    }
    serde_json::from_str::<Flag>(reply).map_or(true, |f| f.wait)
}

/// `restore_locks`' answer: locks written back, refused (ended, or older than an unlock), and
/// kept (Redis's own was newer or longer).
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub written: u64,
    pub refused: u64,
    pub kept: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjson_empty_arrays_and_locks_read_back() {
        let u: WireUnlocked = parse("x", r#"{"lifted":{},"cleared":0}"#).unwrap();
        assert!(u.decode().lifted.is_empty());
        let l: WireLockState = parse(
            "x",
            r#"{"lock":{"key":"ann\u0000192.0.2.1","since":1767225600000,"until":1767229200000,"failures":5,"admin":false,"akind":"local","epoch":3}}"#,
        )
        .unwrap();
        let l = l.decode().unwrap();
        assert_eq!(l.key.ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(l.until, Timestamp::from_millis(1_767_229_200_000));
        assert_eq!(l.account_kind, AccountKind::Local);
        assert!(parse::<WireCounts>("counts", "{}").is_err());
        assert!(wants_wait(r#"{"outcome":"admitted","wait":true}"#));
        assert!(!wants_wait(r#"{"outcome":"full"}"#));
        assert!(wants_wait("not json"));
    }

    /// A time past the year 9999 (which no gateway writes now, and RFC 3339 cannot print) reads
    /// back as it is and prints without a panic; past 9.0e15 it is refused.
    #[test]
    fn times_past_the_year_9999_read_and_print() {
        let lock = |until: &str| {
            format!(
                r#"{{"lock":{{"key":"ann","since":1767225600000,"until":{until},"failures":5,"admin":false,"akind":"directory","epoch":3}}}}"#
            )
        };
        let l: WireLockState = parse("x", &lock("8.9e15")).unwrap();
        let l = l.decode().unwrap();
        assert_eq!(l.until, Timestamp::from_millis(8_900_000_000_000_000));
        assert_eq!(l.until.rfc3339(), "9999-12-31T23:59:59.999Z");
        assert!(parse::<WireLockState>("x", &lock("9.1e15")).is_err());
    }
}
