//! A credential check's place under the lockout: reserve one before the check
//! ([`Policy::reserve`], waiting while the checks in flight could reach the threshold), report
//! how it went after ([`Policy::finish`]), and give it back if the check is abandoned
//! ([`TicketGuard`]). The rule that decides is [`super::lockout`]; the store applies it.

use std::time::Duration;

use super::engine::{spawn_detached, Policy};
use super::types::Check;
use crate::store::{AttemptEnd, AttemptResult, AttemptStart, AttemptTicket, LockKey, StoreError};

/// How long a login waits behind checks in flight for the same account before giving up (they
/// all end within [`super::CHECK_TIMEOUT`]).
const BUSY_WAIT_LIMIT: Duration = Duration::from_secs(65);

impl Policy {
    /// Record a credential check's result (or its abandonment) and wake the logins waiting
    /// behind it.
    pub(super) async fn finish(
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
    pub(super) async fn reserve(&self, key: &LockKey) -> Result<AttemptTicket, Check> {
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
}

/// Releases a credential check's reservation if the check never reports (it was cancelled).
pub(super) struct TicketGuard {
    pub(super) policy: Policy,
    pub(super) ticket: Option<AttemptTicket>,
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
