//! Session lookups on every request (by cookie token, by Basic client, by bearer token), each
//! checking the session's deadline ([`super::timeouts`]) and counting activity; ending sessions;
//! and the sweeper, which ends sessions and lifts locks within [`SWEEP_EVERY`] of their deadline
//! with no traffic at all, so seats and gauges are always right.

use tokio_util::task::AbortOnDropHandle;

use super::engine::{Policy, SWEEP_EVERY};
use super::events::PolicyEvent;
use super::types::SessionGone;
use crate::store::{
    ClientId, EndReason, Session, SessionKey, SessionState, SessionToken, StoreError, Swept,
};

impl Policy {
    fn state(&self, state: SessionState) -> Result<Session, SessionGone> {
        match state {
            SessionState::Live(s) => Ok(s),
            SessionState::Ended(s, why) => {
                self.emit(PolicyEvent::SessionEnded(&s, why));
                Err(SessionGone::Expired(why))
            }
            SessionState::Unknown => Err(SessionGone::Unknown),
        }
    }

    /// The live session behind `token`, for a request to `path` (which counts as activity unless
    /// it is under `activity_exempt_paths`). A session past its deadline ends here.
    pub async fn session(
        &self,
        token: &SessionToken,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        self.session_by_key(&token.key(), path).await
    }

    /// [`Policy::session`] by the token's key, for a caller that has it at hand already.
    pub async fn session_by_key(
        &self,
        key: &SessionKey,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        let t = Self::timeouts(&self.cfg());
        let state = self
            .inner
            .store
            .session(key, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// The live session of `account` on `client` (an HTTP Basic caller's), as [`Policy::session`].
    pub async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        self.client_session_with(account, client, activity).await
    }

    /// The live session of `account` on `client`, without counting this as activity (for a
    /// Basic caller whose credentials are still to be confirmed).
    pub async fn client_session_peek(
        &self,
        account: &str,
        client: &ClientId,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        self.client_session_with(account, client, false).await
    }

    async fn client_session_with(
        &self,
        account: &str,
        client: &ClientId,
        activity: bool,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let t = Self::timeouts(&self.cfg());
        let state = self
            .inner
            .store
            .client_session(account, client, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// The live session a bearer token was issued to, for a request to `path`, as
    /// [`Policy::session`]. Only the token's hash is ever stored.
    pub async fn bearer_session(
        &self,
        bearer: &str,
        path: &str,
    ) -> Result<Result<Session, SessionGone>, StoreError> {
        let activity = self.counts_as_activity(path);
        let t = Self::timeouts(&self.cfg());
        let key = SessionToken::from_client(bearer).key();
        let state = self
            .inner
            .store
            .bearer_session(&key, self.now(), activity, t)
            .await?;
        Ok(self.state(state))
    }

    /// Tie a bearer token Faspex issued to the session that asked for it. False when that
    /// session has ended meanwhile.
    pub async fn add_bearer(&self, key: &SessionKey, bearer: &str) -> Result<bool, StoreError> {
        let bearer = SessionToken::from_client(bearer).key();
        self.inner.store.add_bearer(key, bearer).await
    }

    /// Keep Faspex's session cookie with the session, to log Faspex out when it ends.
    pub async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError> {
        self.inner.store.set_upstream_cookie(key, cookie).await
    }

    /// End a session: the user logged out (`Logout`), or Faspex refused the login after admission
    /// (`Rollback`). Its seat is free when this returns.
    pub async fn end(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        let s = self.inner.store.end_session(key, reason).await?;
        if let Some(s) = &s {
            self.emit(PolicyEvent::SessionEnded(s, reason));
        }
        Ok(s)
    }

    /// End expired sessions, lift expired locks and drop empty failure windows, now.
    pub async fn sweep(&self) -> Result<Swept, StoreError> {
        let cfg = self.cfg();
        let swept = self
            .inner
            .store
            .sweep(self.now(), Self::timeouts(&cfg), cfg.lockout_window)
            .await?;
        self.emit_ended(&swept.ended);
        for l in &swept.lifted {
            self.emit(PolicyEvent::LockExpired(l));
        }
        Ok(swept)
    }

    /// Sweep every [`SWEEP_EVERY`] until the task is dropped or aborted. Each sweep runs as a
    /// task of its own, so that one that panicked (a defect, in the sweep or in what observes
    /// it) costs that sweep, never the expiry of every session and lock after it; a sweep in
    /// flight is aborted with the sweeper, as it was when it ran in the sweeper's own task (at
    /// shutdown it must not run on past the store's close).
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let policy = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let sweeping = policy.clone();
                let sweep =
                    AbortOnDropHandle::new(tokio::spawn(async move { sweeping.sweep().await }));
                match sweep.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
                    Err(e) => {
                        tracing::error!(error = %e, "a sweep panicked; the next runs as usual")
                    }
                }
                n += 1;
                if n.is_multiple_of(240) {
                    policy.inner.throttle.load().forget_idle();
                    policy.inner.cache.sweep(policy.now());
                }
            }
        })
    }

    /// Write everything written behind (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.store.flush().await
    }

    /// Prove the store can be written now (`/readyz`).
    pub async fn probe_store(&self) -> Result<(), StoreError> {
        self.inner.store.probe().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use tokio_util::task::AbortOnDropHandle;

    /// A sweep in flight ends with the sweeper: aborting the sweeper drops the guard, which
    /// aborts the sweep's task (a bare `JoinHandle` would leave it running).
    #[tokio::test]
    async fn a_sweep_in_flight_is_aborted_with_the_sweeper() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sweeper = tokio::spawn(async move {
            let sweep = AbortOnDropHandle::new(tokio::spawn(async move {
                let _held = tx;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }));
            let _ = sweep.await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sweeper.abort();
        let ended = tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("the sweep ran on after the sweeper was aborted");
        assert!(ended.is_err(), "the sweep's task was dropped, not finished");
    }
}
