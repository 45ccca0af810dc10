//! What the engine tells its observers ([`PolicyEvent`]), and the default observer that turns
//! each event into a structured log line. Metrics (`crate::metrics`) and the audit log
//! (`crate::audit`) are observers too, added beside it by the app.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::types::LoginResult;
use crate::store::{AccountKind, ClientKind, EndReason, Lock, Session};

/// What the engine tells its observers.
#[derive(Debug)]
pub enum PolicyEvent<'a> {
    /// A login finished (one per [`Policy::login`](super::Policy::login) call).
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
    /// ([`Policy::recheck`](super::Policy::recheck); cache hits report nothing).
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
    /// An administrator kicked an account (every key it may be stored under), whether or not
    /// it had a session: the helpdesk console ends that person's console sessions too.
    Kicked {
        accounts: &'a [String],
    },
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
            PolicyEvent::Kicked { accounts } => tracing::info!(
                target: "faspex_gate::policy",
                account = accounts.first().map_or("", String::as_str),
                "account kicked by an administrator"
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
