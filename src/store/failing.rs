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

    // What a refused write makes of the store below's answer.

    /// An admission: one that admitted is undone and answered [`AdmitOutcome::Unsaved`].
    async fn admission(&self, admit: Admit) -> Result<Admit, StoreError> {
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

    /// A write that always writes: the write error.
    async fn written<T: Send>(&self, v: T) -> Result<T, StoreError> {
        self.saved(v)
    }

    /// A write to a session, which writes only when the session was found.
    async fn written_if_found(&self, found: bool) -> Result<bool, StoreError> {
        if found {
            self.saved(found)
        } else {
            Ok(found)
        }
    }

    /// Sessions ended now, which writes only when there were any.
    async fn written_if_any(&self, ended: Vec<Session>) -> Result<Vec<Session>, StoreError> {
        if ended.is_empty() {
            Ok(ended)
        } else {
            self.saved(ended)
        }
    }
}

/// The [`PolicyStore`] impl, by what each step does while writes are refused: under `pass`, the
/// store below's answer as it is; under `then`, the store below's answer as the named method of
/// [`FailingStore`] makes it; under `first`, the write error before the store below is asked.
macro_rules! failing_store {
    (
        pass { $($pass:ident($($parg:ident: $pty:ty),*) -> $pout:ty;)* }
        then { $($then:ident: $step:ident($($targ:ident: $tty:ty),*) -> $tout:ty;)* }
        first { $($first:ident() -> $fout:ty;)* }
    ) => {
        #[async_trait]
        impl PolicyStore for FailingStore {
            $(
                async fn $pass(&self, $($parg: $pty),*) -> Result<$pout, StoreError> {
                    self.inner.$pass($($parg),*).await
                }
            )*
            $(
                async fn $step(&self, $($targ: $tty),*) -> Result<$tout, StoreError> {
                    let answer = self.inner.$step($($targ),*).await?;
                    self.$then(answer).await
                }
            )*
            $(
                async fn $first(&self) -> Result<$fout, StoreError> {
                    self.saved(())?;
                    self.inner.$first().await
                }
            )*
        }
    };
}

failing_store! {
    pass {
        session(key: &SessionKey, now: Timestamp, activity: bool, t: Timeouts) -> SessionState;
        client_session(
            account: &str, client: &ClientId, now: Timestamp, activity: bool, t: Timeouts
        ) -> SessionState;
        bearer_session(
            bearer: &SessionKey, now: Timestamp, activity: bool, t: Timeouts
        ) -> SessionState;
        end_session(key: &SessionKey, reason: EndReason) -> Option<Session>;
        sessions() -> Vec<Session>;
        sweep(now: Timestamp, t: Timeouts, window: Duration) -> Swept;
        begin_attempt(key: &LockKey, now: Timestamp, rules: LockoutRules) -> AttemptStart;
        finish_attempt(
            ticket: AttemptTicket, result: AttemptResult, now: Timestamp, rules: LockoutRules
        ) -> AttemptEnd;
        lock_state(key: &LockKey, now: Timestamp) -> Option<Lock>;
        lockouts(now: Timestamp) -> Vec<Lock>;
        counts(now: Timestamp) -> Counts;
    }
    then {
        admission: admit(a: Admission, rules: SeatRules) -> Admit;
        written_if_found: set_upstream_cookie(key: &SessionKey, cookie: Option<String>) -> bool;
        written_if_found: add_bearer(key: &SessionKey, bearer: SessionKey) -> bool;
        written_if_any: end_account(account: &str, reason: EndReason) -> Vec<Session>;
        written: lock_account(
            account: &str, kind: AccountKind, now: Timestamp, until: Timestamp
        ) -> Lock;
        written: unlock_account(account: &str) -> Unlocked;
    }
    first {
        flush() -> ();
        probe() -> ();
    }
}
