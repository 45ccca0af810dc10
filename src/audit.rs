//! The audit log: one JSON object per line (`audit.path`, `"-"` = stderr) for each security
//! event, with stable field names, for a security team's SIEM.
//!
//! [`AuditLog`] is an engine [`Observer`]: logins and Basic re-checks with their result,
//! lockouts, locks that ran out, and every session end with its reason. The admin API writes
//! what only it knows: who asked for an unlock, a lock or a kick, from where, and every refused
//! admin call. docs/operations.md ("Audit log") documents every field.
//!
//! A record never holds a password, a cookie, a token or a session key. Lines are written whole
//! with one `write` on a file opened for appending, so they never interleave; a write that fails
//! is reported in the service log and the next record tries again. SIGHUP reopens the file (for
//! logrotate) and takes a new `audit.path`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::Serialize;

use crate::clock::{Clock, Timestamp};
use crate::config::{AuditConfig, AuditSink};
use crate::policy::{Observer, PolicyEvent};
use crate::store::{AccountKind, Lock};

/// One audit record. Fields that do not apply to an event are left out, never `null`.
#[derive(Debug, Default, Serialize)]
pub struct Record<'a> {
    /// When it happened, RFC 3339 in UTC with milliseconds.
    pub ts: String,
    /// What happened: `login`, `recheck`, `lockout`, `lock_expired`, `unlock`, `admin_lock`,
    /// `kick`, `session_end`, `admin_refused`; the helpdesk console's `helpdesk_signin`,
    /// `helpdesk_signout`, `helpdesk_refused` (and its unlocks, locks and kicks, as above, with
    /// `via = "helpdesk"`).
    pub event: &'static str,
    /// The normalised account name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The end client's address (the TCP peer, or `X-Forwarded-For` from a trusted proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// `browser`, `basic` or `bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Whose account: `directory` or `local` (`auth.local_accounts`), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_kind: Option<&'static str>,
    /// A login's result: the `faspex_gate_logins_total` labels, or `store_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    /// Why a session ended, or why an admin call was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// A lock's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A lock's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Failed logins in the window when a lock began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// Lock events of a lock made by failures: where the window's last failures came from,
    /// at most five distinct addresses, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<&'a [IpAddr]>,
    /// When an ended session began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// The operator, from `X-Admin-Actor` (`"-"` when the caller sent none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    /// The admin caller's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SocketAddr>,
    /// An admin call's method and path (a refused call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// Unlock: whether the account was locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub was_locked: Option<bool>,
    /// Kick: how many sessions ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<usize>,
    /// Lock events: `true` when an administrator set the lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_admin: Option<bool>,
    /// `"helpdesk"` on an unlock, lock or kick made from the helpdesk console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// `admin_refused`, `helpdesk_refused`: refused calls left out of the log since the last one recorded (over the
    /// budget of 10 a second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

enum Writer {
    Stderr,
    File(File),
}

/// The audit log. Cheap to share behind an `Arc`.
pub struct AuditLog {
    out: Mutex<(AuditSink, Writer)>,
    /// `audit.gateway`, which every line carries.
    gateway: arc_swap::ArcSwap<String>,
    clock: Arc<dyn Clock>,
}

/// A record as written: its fields, then which gateway wrote it.
#[derive(Serialize)]
struct Line<'a, 'r> {
    #[serde(flatten)]
    rec: &'r Record<'a>,
    gateway: &'r str,
}

impl AuditLog {
    /// Open `audit.path` for appending (created `0600` if missing). An unwritable path is a
    /// start-up error naming it.
    pub fn open(cfg: &AuditConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let writer = open_sink(&cfg.sink)?;
        Ok(Self {
            out: Mutex::new((cfg.sink.clone(), writer)),
            gateway: arc_swap::ArcSwap::from_pointee(cfg.gateway.clone()),
            clock,
        })
    }

    /// Reopen the file (after logrotate moved it), or switch to a new `audit.path`. On failure
    /// the old file is kept and the error returned.
    pub fn reopen(&self, cfg: &AuditConfig) -> anyhow::Result<()> {
        let writer = open_sink(&cfg.sink)?;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        *out = (cfg.sink.clone(), writer);
        self.gateway.store(Arc::new(cfg.gateway.clone()));
        Ok(())
    }

    /// A record of `event` stamped now, to fill in and [`write`](Self::write).
    pub fn record(&self, event: &'static str) -> Record<'static> {
        Record {
            ts: self.clock.now().rfc3339(),
            event,
            ..Record::default()
        }
    }

    /// Write one record as one line.
    pub fn write(&self, rec: &Record<'_>) {
        let gateway = self.gateway.load();
        let mut line = match serde_json::to_vec(&Line {
            rec,
            gateway: gateway.as_str(),
        }) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, event = rec.event, "an audit record could not be encoded");
                return;
            }
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &mut out.1 {
            Writer::Stderr => crate::log::to_stderr(&line),
            Writer::File(f) => f.write_all(&line),
        };
        if let Err(e) = result {
            let path = match &out.0 {
                AuditSink::File(p) => p.display().to_string(),
                AuditSink::Stderr => "-".into(),
            };
            drop(out);
            tracing::error!(error = %e, path = %path, event = rec.event, "could not write the audit log");
        }
    }
}

fn open_sink(sink: &AuditSink) -> anyhow::Result<Writer> {
    Ok(match sink {
        AuditSink::Stderr => Writer::Stderr,
        AuditSink::File(path) => {
            let mut o = OpenOptions::new();
            o.append(true).create(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            Writer::File(
                o.open(path)
                    .with_context(|| format!("audit.path: cannot open {}", path.display()))?,
            )
        }
    })
}

fn time(t: Timestamp) -> String {
    t.rfc3339()
}

fn lock_record<'a>(log: &AuditLog, event: &'static str, l: &'a Lock) -> Record<'a> {
    Record {
        user: Some(&l.key.account),
        account_kind: Some(l.account_kind.as_str()),
        client_ip: l.key.ip,
        since: Some(time(l.since)),
        until: Some(time(l.until)),
        failures: (!l.by_admin).then_some(l.failures),
        sources: (!l.by_admin).then_some(l.sources.as_slice()),
        by_admin: Some(l.by_admin),
        ..log.record(event)
    }
}

impl Observer for AuditLog {
    fn event(&self, e: &PolicyEvent<'_>) {
        match e {
            PolicyEvent::Login {
                account,
                account_kind,
                ip,
                kind,
                result,
            } => self.write(&Record {
                user: *account,
                account_kind: account_kind.map(AccountKind::as_str),
                client_ip: Some(*ip),
                kind: Some(kind.as_str()),
                result: Some(result.as_str()),
                ..self.record("login")
            }),
            PolicyEvent::Recheck {
                account,
                ip,
                result,
            } => self.write(&Record {
                user: *account,
                client_ip: Some(*ip),
                kind: Some("basic"),
                result: Some(result.as_str()),
                ..self.record("recheck")
            }),
            PolicyEvent::LockedOut(l) => self.write(&lock_record(self, "lockout", l)),
            PolicyEvent::LockExpired(l) => self.write(&lock_record(self, "lock_expired", l)),
            PolicyEvent::SessionEnded(s, why) => self.write(&Record {
                user: Some(&s.account),
                account_kind: Some(s.account_kind.as_str()),
                client_ip: Some(s.ip),
                kind: Some(s.kind.as_str()),
                reason: Some(why.as_str()),
                started: Some(time(s.started)),
                ..self.record("session_end")
            }),
            // Unlocks, admin locks and kicks are written by the admin API, which knows who asked.
            PolicyEvent::Unlocked { .. }
            | PolicyEvent::AdminLocked(_)
            | PolicyEvent::Kicked { .. }
            | PolicyEvent::SessionStarted { .. }
            | PolicyEvent::DirectoryCheck { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::policy::LoginResult;
    use crate::store::{ClientKind, LockKey};

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_json_lines_with_stable_fields_and_no_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_795_000_000_123)));
        let log = AuditLog::open(
            &AuditConfig {
                sink: AuditSink::File(path.clone()),
                gateway: "gw-1".into(),
            },
            clock,
        )
        .unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        log.event(&PolicyEvent::Login {
            account: Some("ann"),
            account_kind: Some(AccountKind::Local),
            ip,
            kind: ClientKind::Browser,
            result: LoginResult::BadCredentials,
        });
        log.event(&PolicyEvent::Login {
            account: None,
            account_kind: None,
            ip,
            kind: ClientKind::Basic,
            result: LoginResult::Invalid,
        });
        let lock = Lock {
            key: LockKey::account("ann"),
            since: Timestamp::from_millis(1_795_000_000_123),
            until: Timestamp::from_millis(1_795_003_600_123),
            failures: 5,
            by_admin: false,
            account_kind: AccountKind::Directory,
            sources: vec![ip, "192.0.2.8".parse().unwrap()],
        };
        log.event(&PolicyEvent::LockedOut(&lock));
        let v = lines(&path);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["ts"], "2026-11-18T11:06:40.123Z");
        assert_eq!(v[0]["event"], "login");
        assert_eq!(v[0]["user"], "ann");
        assert_eq!(v[0]["client_ip"], "192.0.2.7");
        assert_eq!(v[0]["kind"], "browser");
        assert_eq!(v[0]["result"], "bad_credentials");
        assert!(v[1].get("user").is_none(), "an invalid name is not echoed");
        assert_eq!(v[1]["result"], "invalid");
        assert_eq!(v[2]["event"], "lockout");
        assert_eq!(v[2]["failures"], 5);
        assert_eq!(
            v[2]["sources"],
            serde_json::json!(["192.0.2.7", "192.0.2.8"])
        );
        assert_eq!(v[2]["until"], "2026-11-18T12:06:40.123Z");
        assert_eq!(v[2]["by_admin"], false);
        for r in &v {
            assert_eq!(
                r["gateway"], "gw-1",
                "every record names the gateway that wrote it"
            );
            for (k, val) in r.as_object().unwrap() {
                assert!(!val.is_null(), "{k} is null in {r}");
            }
        }
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let cfg = AuditConfig {
            sink: AuditSink::File(path.clone()),
            gateway: "gw-1".into(),
        };
        let log = AuditLog::open(&cfg, Arc::new(crate::clock::SystemClock)).unwrap();
        log.write(&log.record("kick"));
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        log.write(&log.record("unlock"));
        log.reopen(&cfg).unwrap();
        log.write(&log.record("admin_lock"));
        assert_eq!(lines(&dir.path().join("audit.log.1")).len(), 2);
        let now = lines(&path);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0]["event"], "admin_lock");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the audit log is private");
        }
    }
}
