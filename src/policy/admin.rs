//! Administration: gauges, the list of live sessions, kicking an account's sessions, locking and
//! unlocking accounts (`faspex-gate admin`, the admin API).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::engine::{Policy, CHECK_TIMEOUT};
use super::events::PolicyEvent;
use super::timeouts;
use super::types::{Diagnosis, Status};
use crate::account::{self, InvalidUsername};
use crate::auth::{Directory, Lookup};
use crate::config::{LocalAccounts, OneClient};
use crate::store::{AccountKind, Counts, EndReason, Lock, Session, StoreError, Unlocked};

impl Policy {
    /// Gauges and the limit.
    pub async fn status(&self) -> Result<Status, StoreError> {
        let Counts {
            seats,
            sessions,
            accounts_locked,
            local_seats,
            local_accounts_locked,
            tracked_windows,
            ..
        } = self.inner.store.counts(self.now()).await?;
        Ok(Status {
            seats_used: seats,
            seats_limit: self.cfg().max_sessions,
            sessions,
            accounts_locked,
            local_seats,
            local_accounts_locked,
            tracked_windows,
        })
    }

    /// Live sessions, oldest first.
    pub async fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        let now = self.now();
        let t = Self::timeouts(&self.cfg());
        let mut v: Vec<Session> = self
            .inner
            .store
            .sessions()
            .await?
            .into_iter()
            .filter(|s| timeouts::expired(s, now, &t).is_none())
            .collect();
        v.sort_by(|a, b| (a.started, &a.account).cmp(&(b.started, &b.account)));
        Ok(v)
    }

    /// End every session of `user` now, freeing its seat. An unknown user is a no-op.
    pub async fn kick(&self, user: &str) -> Result<Vec<Session>, AdminError> {
        let mut ended = Vec::new();
        let accounts = self.accounts(user)?;
        for account in &accounts {
            // Its Basic callers' cached passwords go too: their next request is checked afresh.
            self.inner.cache.forget(account);
            ended.extend(
                self.inner
                    .store
                    .end_account(account, EndReason::Admin)
                    .await?,
            );
        }
        for s in &ended {
            self.emit(PolicyEvent::SessionEnded(s, EndReason::Admin));
        }
        self.emit(PolicyEvent::Kicked {
            accounts: &accounts,
        });
        Ok(ended)
    }

    /// Locks in force.
    pub async fn lockouts(&self) -> Result<Vec<Lock>, StoreError> {
        self.inner.store.lockouts(self.now()).await
    }

    /// Lift `user`'s locks (every address under `account+ip`) and clear its failure windows.
    pub async fn unlock(&self, user: &str) -> Result<Unlocked, AdminError> {
        let accounts = self.accounts(user)?;
        let now = self.now();
        let mut u = Unlocked::default();
        for account in &accounts {
            let one = self.inner.store.unlock_account(account).await?;
            u.lifted.extend(one.lifted);
            u.windows_cleared += one.windows_cleared;
        }
        u.lifted.retain(|l| l.until > now);
        let account = accounts.first().cloned().unwrap_or_default();
        self.emit(PolicyEvent::Unlocked {
            account: &account,
            lifted: &u.lifted,
        });
        Ok(u)
    }

    /// Lock `user` now, for `duration` (default `policy.lockout_duration`). Live sessions are
    /// not ended: kick them as well to end access now.
    pub async fn lock(&self, user: &str, duration: Option<Duration>) -> Result<Lock, AdminError> {
        self.lock_with(user, duration, None).await
    }

    /// [`Policy::lock`], asking `directory` (when given, and it looks names up) whose account
    /// `user` is: an entry's, or, for a name it does not know, a local account's under the key
    /// its logins count under (Faspex's accounts' folded name). Without an answer, the names
    /// resolved lately decide, as for [`Policy::lock`].
    pub async fn lock_with(
        &self,
        user: &str,
        duration: Option<Duration>,
        directory: Option<&Arc<dyn Directory>>,
    ) -> Result<Lock, AdminError> {
        let (account, kind) = match directory {
            Some(d) if d.looks_up() => self.admin_account(user, d).await?,
            _ => {
                let account = self.account(user)?;
                let kind = self.kind_of(&account).await;
                (account, kind)
            }
        };
        let now = self.now();
        let d = duration.unwrap_or(self.cfg().lockout_duration);
        let lock = self
            .inner
            .store
            .lock_account(&account, kind, now, now + d)
            .await?;
        // No cached password may carry a Basic caller past the lock.
        self.inner.cache.forget(&account);
        self.emit(PolicyEvent::AdminLocked(&lock));
        Ok(lock)
    }

    /// Why `user` may not get in now, as far as the engine knows: the locks in force on it, its
    /// live sessions, and whether the seats are all taken (the helpdesk's "why can't ann log
    /// in?"). Every account `user` may be stored under is looked at.
    pub async fn diagnose(&self, user: &str) -> Result<Diagnosis, AdminError> {
        let accounts = self.accounts(user)?;
        let now = self.now();
        let locks = self
            .inner
            .store
            .lockouts(now)
            .await?
            .into_iter()
            .filter(|l| accounts.contains(&l.key.account))
            .collect();
        let sessions = self
            .sessions()
            .await?
            .into_iter()
            .filter(|s| accounts.iter().any(|a| **a == *s.account))
            .collect();
        let status = self.status().await?;
        Ok(Diagnosis {
            account: accounts.first().cloned().unwrap_or_default(),
            locks,
            sessions,
            seats_used: status.seats_used,
            seats_limit: status.seats_limit,
            one_client_rejects: self.cfg().one_client_per_account == OneClient::Reject,
        })
    }

    /// The lock in force on the account key `account` as stored (not a name to prepare), from
    /// `ip` under `account+ip`: the helpdesk console's re-check of a signed-in person.
    pub async fn account_lock(
        &self,
        account: &str,
        ip: IpAddr,
    ) -> Result<Option<Lock>, StoreError> {
        self.inner
            .store
            .lock_state(&self.lock_key(account, ip), self.now())
            .await
    }

    /// The lock in force on `user` (from `ip`, under `account+ip`), if any.
    pub async fn lock_state(&self, user: &str, ip: IpAddr) -> Result<Option<Lock>, AdminError> {
        let account = self.account(user)?;
        Ok(self
            .inner
            .store
            .lock_state(&self.lock_key(&account, ip), self.now())
            .await?)
    }
}

impl Policy {
    /// The account `user` is, and whose, as the directory says now (for an administrator's lock).
    async fn admin_account(
        &self,
        user: &str,
        directory: &Arc<dyn Directory>,
    ) -> Result<(String, AccountKind), InvalidUsername> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(user, &cfg.username_domains)?;
        let local = self.inner.checks.load().local;
        let found = tokio::time::timeout(CHECK_TIMEOUT, directory.lookup(name)).await;
        Ok(match found {
            Ok(Ok(Lookup::Entry { dn, name: own })) => (
                account::entry_key(&dn, own.as_deref(), &cfg.username_domains),
                AccountKind::Directory,
            ),
            Ok(Ok(Lookup::NoEntry)) if local == LocalAccounts::Faspex => {
                (account::faspex_key(&prepared), AccountKind::Local)
            }
            Ok(Ok(Lookup::NoEntry)) if local == LocalAccounts::File => {
                (prepared, AccountKind::Local)
            }
            Ok(Ok(_)) => (prepared, AccountKind::Directory),
            // (the directory cannot say now: what the engine saw lately decides)
            _ => {
                let account = self.account(user)?;
                let kind = self.kind_of(&account).await;
                (account, kind)
            }
        })
    }

    /// Whose account `account` is, as far as the engine can tell without asking the directory:
    /// its live sessions', or a lock's, or the names it resolved lately; else the directory's.
    async fn kind_of(&self, account: &str) -> AccountKind {
        if let Ok(sessions) = self.inner.store.sessions().await {
            if let Some(s) = sessions.iter().find(|s| *s.account == *account) {
                return s.account_kind;
            }
        }
        if let Ok(locks) = self.inner.store.lockouts(self.now()).await {
            if let Some(l) = locks.iter().find(|l| l.key.account == account) {
                return l.account_kind;
            }
        }
        if self.inner.checks.load().local != LocalAccounts::None
            && self.inner.names.is_local(account, self.now())
        {
            return AccountKind::Local;
        }
        AccountKind::Directory
    }
}

/// An administrative call's failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    InvalidUsername(#[from] InvalidUsername),
    #[error(transparent)]
    Store(#[from] StoreError),
}
