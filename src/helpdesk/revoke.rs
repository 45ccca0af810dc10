//! Ending a helpdesk person's console sessions when an administrator kicks or locks their
//! account, by any path (the admin API, `faspex-gate admin`, the console itself): a
//! [`crate::policy::Observer`] of the engine's `Kicked` and `AdminLocked` events, on this
//! gateway. Other gateways' consoles find the lock at their next re-check (every
//! `auth.cache_ttl`); a kick there leaves no trace to find, so it reaches only this gateway's.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::policy::{Observer, PolicyEvent};

use super::sessions::{ConsoleSession, Sessions};

/// The console sessions of this gateway, ended by a kick or an administrator's lock.
pub struct Revoker {
    pub(super) sessions: Arc<Sessions>,
    audit: Arc<AuditLog>,
}

impl Revoker {
    /// The sessions the console will keep, and the audit log their ends are written to.
    pub fn new(audit: Arc<AuditLog>) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Revoker {
            sessions: Arc::new(Sessions::new()?),
            audit,
        }))
    }

    fn end(&self, account: &str, reason: &'static str) {
        for s in self.sessions.end_account(account) {
            audit_signout(&self.audit, &s, reason, None);
            tracing::warn!(account = %s.account, reason, "helpdesk console: session ended");
        }
    }
}

impl Observer for Revoker {
    fn event(&self, e: &PolicyEvent<'_>) {
        match e {
            PolicyEvent::Kicked { accounts } => {
                for a in accounts.iter() {
                    self.end(a, "kicked");
                }
            }
            // (an administrator's lock is account-wide)
            PolicyEvent::AdminLocked(l) => self.end(&l.key.account, "locked"),
            _ => {}
        }
    }
}

/// Write a `helpdesk_signout` record for `s`.
pub(super) fn audit_signout(
    audit: &AuditLog,
    s: &ConsoleSession,
    reason: &'static str,
    peer: Option<std::net::SocketAddr>,
) {
    let mut rec = audit.record("helpdesk_signout");
    rec.user = Some(&s.account);
    rec.reason = Some(reason);
    rec.started = Some(s.since.rfc3339());
    rec.source = peer;
    audit.write(&rec);
}
