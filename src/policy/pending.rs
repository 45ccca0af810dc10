//! [`PendingLogin`]: an admitted login that waits for Faspex's word. The login pipeline
//! (`login.rs`) makes one; the handler forwards the login to Faspex and then confirms, rejects or
//! refuses it.

use std::net::IpAddr;

use super::attempts::TicketGuard;
use super::engine::{spawn_detached, Policy};
use super::events::PolicyEvent;
use super::types::{Admitted, Check, LoginRefused, LoginResult};
use crate::store::{AttemptEnd, AttemptResult, ClientKind, EndReason, StoreError};

/// An admitted login that waits for Faspex's word. The session holds its seat meanwhile.
/// Dropped without a decision (the client went away before Faspex answered), it is rolled back
/// and reported as refused upstream. `Debug` leaves the password out.
pub struct PendingLogin {
    pub(super) policy: Policy,
    pub(super) admitted: Admitted,
    /// Confirmed or refused: nothing left for `Drop` to do.
    pub(super) decided: bool,
    pub(super) account: String,
    /// Kept to fill the verification cache once Faspex confirms a Basic caller's login.
    pub(super) password: String,
    pub(super) ip: IpAddr,
    pub(super) kind: ClientKind,
    pub(super) epoch: u64,
    /// For a login Faspex itself checks: its place under the lockout, to report the verdict on.
    pub(super) verdict: Option<TicketGuard>,
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
    /// Tell the observers how the login ended.
    fn report(&self, result: LoginResult) {
        self.policy.emit(PolicyEvent::Login {
            account: Some(&self.account),
            account_kind: Some(self.admitted.session.account_kind),
            ip: self.ip,
            kind: self.kind,
            result,
        });
    }

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
        self.report(LoginResult::Success);
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
                    Check::Locked(lock).refusal(self.policy.now())
                }
                Ok(AttemptEnd::AlreadyLocked(lock)) => {
                    Check::Locked(lock).refusal(self.policy.now())
                }
                Ok(_) => LoginRefused::BadCredentials,
                Err(e) => LoginRefused::Store(e),
            },
            None => LoginRefused::BadCredentials,
        };
        self.report(refused.result());
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
        self.report(LoginResult::UpstreamRefused);
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
        self.report(LoginResult::UpstreamRefused);
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
