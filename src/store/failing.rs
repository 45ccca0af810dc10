//! [`FailingStore`]: a [`PolicyStore`] over another whose writes fail when told, as a full or
//! failing disk would, for testing the fail-closed paths. Test builds only.
//!
//! While writes are refused, every step still runs on the store below, so its state moves on as a
//! backend's memory would; what changes is what each step says, following the trait's failure
//! contract:
//!
//! - an admission that would need saving is undone and answered [`AdmitOutcome::Unsaved`]: nobody
//!   is admitted;
//! - a lockout is in force at once and answered as usual (refusing would be worse than a late
//!   write), as are lookups, session ends and sweeps;
//! - an administrator's lock, unlock or kick, a Faspex cookie or a bearer token is in force but
//!   answered [`StoreError::Write`];
//! - [`PolicyStore::flush`] and [`PolicyStore::probe`] fail.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AccountKind, Admission, Admit, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart,
    AttemptTicket, ClientId, Counts, EndReason, Lock, LockKey, LockoutRules, PolicyStore,
    SeatRules, Session, SessionKey, SessionState, StoreError, Swept, Timeouts, Unlocked,
};
use crate::clock::Timestamp;

/// What a refused write says: the words of a full disk.
pub const REFUSAL: &str = "No space left on device (simulated)";

/// A store whose writes fail while [`FailingStore::refuse_writes`] is on.
pub struct FailingStore {
    inner: Arc<dyn PolicyStore>,
    refusing: AtomicBool,
}

impl FailingStore {
    /// `inner`, with writes going through until told otherwise.
    pub fn new(inner: Arc<dyn PolicyStore>) -> Self {
        Self {
            inner,
            refusing: AtomicBool::new(false),
        }
    }

    /// Make every write fail (on), or succeed again (off).
    pub fn refuse_writes(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    fn refusing(&self) -> bool {
        self.refusing.load(Ordering::SeqCst)
    }

    fn error() -> StoreError {
        StoreError::Write {
            file: PathBuf::from("(failing store)"),
            reason: REFUSAL.to_owned(),
        }
    }

    /// `Ok(v)`, or the write error while writes are refused.
    fn saved<T>(&self, v: T) -> Result<T, StoreError> {
        if self.refusing() {
            Err(Self::error())
        } else {
            Ok(v)
        }
    }
}

#[async_trait]
impl PolicyStore for FailingStore {
    async fn admit(&self, a: Admission, rules: SeatRules) -> Result<Admit, StoreError> {
        let admit = self.inner.admit(a, rules).await?;
        match admit.outcome {
            AdmitOutcome::Admitted { session, .. } if self.refusing() => {
                // Fail closed: a session that might not survive a restart is not handed out.
                self.inner
                    .end_session(&session.key, EndReason::Rollback)
                    .await?;
                Ok(Admit {
                    outcome: AdmitOutcome::Unsaved {
                        error: Self::error(),
                    },
                    ended: admit.ended,
                })
            }
            _ => Ok(admit),
        }
    }

    async fn session(
        &self,
        key: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.inner.session(key, now, activity, t).await
    }

    async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.inner
            .client_session(account, client, now, activity, t)
            .await
    }

    async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError> {
        let found = self.inner.set_upstream_cookie(key, cookie).await?;
        if found {
            self.saved(found)
        } else {
            Ok(found)
        }
    }

    async fn add_bearer(&self, key: &SessionKey, bearer: SessionKey) -> Result<bool, StoreError> {
        let found = self.inner.add_bearer(key, bearer).await?;
        if found {
            self.saved(found)
        } else {
            Ok(found)
        }
    }

    async fn bearer_session(
        &self,
        bearer: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.inner.bearer_session(bearer, now, activity, t).await
    }

    async fn end_session(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        self.inner.end_session(key, reason).await
    }

    async fn end_account(
        &self,
        account: &str,
        reason: EndReason,
    ) -> Result<Vec<Session>, StoreError> {
        let ended = self.inner.end_account(account, reason).await?;
        if ended.is_empty() {
            Ok(ended)
        } else {
            self.saved(ended)
        }
    }

    async fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        self.inner.sessions().await
    }

    async fn sweep(
        &self,
        now: Timestamp,
        t: Timeouts,
        window: Duration,
    ) -> Result<Swept, StoreError> {
        self.inner.sweep(now, t, window).await
    }

    async fn begin_attempt(
        &self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptStart, StoreError> {
        self.inner.begin_attempt(key, now, rules).await
    }

    async fn finish_attempt(
        &self,
        ticket: AttemptTicket,
        result: AttemptResult,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptEnd, StoreError> {
        self.inner.finish_attempt(ticket, result, now, rules).await
    }

    async fn lock_state(&self, key: &LockKey, now: Timestamp) -> Result<Option<Lock>, StoreError> {
        self.inner.lock_state(key, now).await
    }

    async fn lock_account(
        &self,
        account: &str,
        kind: AccountKind,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Lock, StoreError> {
        let lock = self.inner.lock_account(account, kind, now, until).await?;
        self.saved(lock)
    }

    async fn unlock_account(&self, account: &str) -> Result<Unlocked, StoreError> {
        let u = self.inner.unlock_account(account).await?;
        self.saved(u)
    }

    async fn lockouts(&self, now: Timestamp) -> Result<Vec<Lock>, StoreError> {
        self.inner.lockouts(now).await
    }

    async fn counts(&self, now: Timestamp) -> Result<Counts, StoreError> {
        self.inner.counts(now).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.saved(())?;
        self.inner.flush().await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.saved(())?;
        self.inner.probe().await
    }
}
