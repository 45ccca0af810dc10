//! The login pipeline: validate the name → find the account it counts as (`resolve.rs`) →
//! single-flight on (lock key, name, password) → per-address throttle → lockout reservation
//! (`attempts.rs`) → the global `auth.max_checks_per_second` ceiling → credential check → record
//! the result → admission (seats and one client, applied by the store). An HTTP Basic caller's
//! later requests go through [`Policy::recheck`], which the verification cache answers without a
//! check when it can.

use std::net::IpAddr;
use std::sync::Arc;

use super::attempts::TicketGuard;
use super::engine::{spawn_detached, Policy, CHECK_TIMEOUT};
use super::events::{DirectoryResult, PolicyEvent};
use super::pending::PendingLogin;
use super::resolve::Resolved;
use super::seats;
use super::types::{Admitted, Check, LoginRefused, LoginRequest, LoginResult, Rechecked, Verified};
use crate::auth::{Directory, Verdict};
use crate::store::{
    AccountKind, Admission, AdmitOutcome, AttemptEnd, AttemptResult, ClientKind, EndReason,
    LockKey, SeatRules, SessionKey, SessionToken,
};

impl Policy {
    /// A full login: credential check under throttle and lockout, then seat and one-client
    /// admission, taken as final at once. `directory` runs the check.
    pub async fn login(
        &self,
        req: LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<Admitted, LoginRefused> {
        match self.login_pending(req, directory).await {
            Ok(p) => Ok(p.confirm().await),
            Err(e) => Err(e),
        }
    }

    /// A full login whose admission waits for Faspex's word: [`PendingLogin::confirm`] when
    /// Faspex accepts it, [`PendingLogin::refuse`] when Faspex refuses (the seat is given back).
    /// A refusal here is reported at once; a success only when it is confirmed.
    pub async fn login_pending(
        &self,
        req: LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<PendingLogin, LoginRefused> {
        // (before the check: an admin lock or kick during it must keep its success uncached)
        let epoch = self.inner.cache.epoch();
        let resolved = self
            .resolve(req.username, req.password, req.ip, directory)
            .await;
        let account_kind = resolved.as_ref().ok().map(|r| r.kind);
        let (account, result) = match resolved {
            // Faspex's own account, by the login form: Faspex's answer to the login is the check.
            Ok(r) if r.faspex_checks() && req.kind == ClientKind::Browser => {
                let result = self.login_deferred(&r, &req).await;
                (Some(r.account), result)
            }
            Ok(r) => {
                let result = self
                    .login_account(&r, &req, directory, epoch)
                    .await
                    .map(|a| (a, None));
                (Some(r.account), result)
            }
            Err((account, e)) => (account, Err(e)),
        };
        match (account, result) {
            (Some(account), Ok((admitted, verdict))) => Ok(PendingLogin {
                policy: self.clone(),
                admitted,
                decided: false,
                account,
                password: req.password.to_owned(),
                ip: req.ip,
                kind: req.kind,
                epoch,
                verdict,
            }),
            (account, Err(e)) => {
                self.emit(PolicyEvent::Login {
                    account: account.as_deref(),
                    account_kind,
                    ip: req.ip,
                    kind: req.kind,
                    result: e.result(),
                });
                Err(e)
            }
            // (a success always has its account)
            (None, Ok(_)) => Err(LoginRefused::DirectoryUnavailable),
        }
    }

    /// Confirm a Basic caller's credentials on a request to its live session: a hit in the
    /// verification cache needs no check; otherwise a full credential check runs, under the same
    /// throttle, lockout and ceiling as a login, and a success is cached. (Without a live
    /// session, the caller logs in with [`Policy::login`] instead.) Answers the account the
    /// credentials were confirmed for, as the engine resolved the name.
    pub async fn recheck(
        &self,
        req: &LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
    ) -> Result<(String, Rechecked), LoginRefused> {
        let account = match self.account(req.username) {
            Ok(a) => a,
            Err(e) => {
                self.emit(PolicyEvent::Recheck {
                    account: None,
                    ip: req.ip,
                    result: LoginResult::Invalid,
                });
                return Err(LoginRefused::InvalidUsername(e));
            }
        };
        let now = self.now();
        if self.inner.cache.hit(&account, req.password, now) {
            return Ok((account, Rechecked::Cached));
        }
        let epoch = self.inner.cache.epoch();
        let (account, result) = match self
            .resolve(req.username, req.password, req.ip, directory)
            .await
        {
            Ok(r) => match self.check(&r, req.password, req.ip, directory, epoch).await {
                Check::Verified => {
                    let ttl = self.inner.checks.load().cache_ttl;
                    self.inner
                        .cache
                        .insert(&r.account, req.password, self.now(), ttl, epoch);
                    (r.account, Ok(Rechecked::Checked))
                }
                refused => (r.account, Err(refused.refusal(self.now()))),
            },
            Err((resolved, e)) => (resolved.unwrap_or(account), Err(e)),
        };
        self.emit(PolicyEvent::Recheck {
            account: Some(&account),
            ip: req.ip,
            result: match &result {
                Ok(_) => LoginResult::Success,
                Err(e) => e.result(),
            },
        });
        result.map(|r| (account, r))
    }

    /// A credential check and nothing else: the same name resolution, per-address throttle,
    /// lockout (a wrong password counts as a failure, a lock refuses) and global ceiling as a
    /// login, but no seat and no session, and nothing cached (the helpdesk console's sign-in).
    /// Answers the name as the directory is given it and the account it counts as. No login
    /// event is reported: the caller audits its own; a lock this check makes is reported as any.
    pub async fn verify(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
        directory: &Arc<dyn Directory>,
    ) -> Result<Verified, (Option<String>, LoginRefused)> {
        let epoch = self.inner.cache.epoch();
        let r = self.resolve(username, password, ip, directory).await?;
        match self.check(&r, password, ip, directory, epoch).await {
            Check::Verified => Ok(Verified {
                name: r.name,
                account: r.account,
            }),
            refused => Err((Some(r.account), refused.refusal(self.now()))),
        }
    }

    async fn login_account(
        &self,
        r: &Resolved,
        req: &LoginRequest<'_>,
        directory: &Arc<dyn Directory>,
        epoch: u64,
    ) -> Result<Admitted, LoginRefused> {
        match self.check(r, req.password, req.ip, directory, epoch).await {
            Check::Verified => self.admit(&r.account, r.kind, req).await,
            refused => Err(refused.refusal(self.now())),
        }
    }

    /// A login Faspex itself checks (one of its own accounts, by the login form): the pipeline
    /// runs as for anyone (the per-address throttle, a place under the lockout, the global
    /// ceiling, the seat), and the check is Faspex's answer to the login, which the caller
    /// reports with [`PendingLogin::confirm`], [`PendingLogin::reject`] or
    /// [`PendingLogin::refuse`]. The place is held until then, so no more guesses reach Faspex
    /// at once than could reach the threshold.
    async fn login_deferred(
        &self,
        r: &Resolved,
        req: &LoginRequest<'_>,
    ) -> Result<(Admitted, Option<TicketGuard>), LoginRefused> {
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().login(req.ip) {
                return Err(Check::Throttled(wait).refusal(self.now()));
            }
        }
        let key = self.lock_key(&r.account, req.ip);
        let mut ticket = self
            .reserve(&key)
            .await
            .map_err(|c| c.refusal(self.now()))?;
        ticket.account_kind = r.kind;
        ticket.source = Some(req.ip);
        let mut guard = TicketGuard {
            policy: self.clone(),
            ticket: Some(ticket),
        };
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().ceiling() {
                if let Some(ticket) = guard.ticket.take() {
                    self.finish(ticket, AttemptResult::Aborted)
                        .await
                        .map_err(LoginRefused::Store)?;
                }
                return Err(Check::Throttled(wait).refusal(self.now()));
            }
        }
        match self.admit(&r.account, r.kind, req).await {
            Ok(admitted) => Ok((admitted, Some(guard))),
            Err(refused) => {
                // No seat, no check: the place goes back uncounted.
                if let Some(ticket) = guard.ticket.take() {
                    self.finish(ticket, AttemptResult::Aborted)
                        .await
                        .map_err(LoginRefused::Store)?;
                }
                Err(refused)
            }
        }
    }

    /// A credential check, shared by parallel callers with the same lock key, name and password. It
    /// runs on its own task, so a caller that goes away cannot cancel it half-way: a guess that
    /// reached the directory is always counted.
    ///
    /// `epoch` is the verification cache's, taken by the caller before it asked: a caller that
    /// comes after an administrator's kick or lock never joins a check that began before it, so
    /// it cannot cache that check's success past the lock.
    async fn check(
        &self,
        r: &Resolved,
        password: &str,
        ip: IpAddr,
        directory: &Arc<dyn Directory>,
        epoch: u64,
    ) -> Check {
        let key = self.lock_key(&r.account, ip);
        let mut ctx = ring::hmac::Context::with_key(&self.inner.flight_key);
        ctx.update(&epoch.to_be_bytes());
        ctx.update(key.encode().as_bytes());
        ctx.update(&[0]);
        // (the name as typed: two spellings share a lockout budget, never a directory's answer)
        ctx.update(&(r.name.len() as u64).to_be_bytes());
        ctx.update(r.name.as_bytes());
        ctx.update(password.as_bytes());
        let mut flight = [0u8; 32];
        flight.copy_from_slice(ctx.sign().as_ref());
        let work = self.clone().check_alone(
            key,
            r.clone(),
            password.to_owned(),
            ip,
            Arc::clone(directory),
        );
        let (check, _) = self.inner.flights.run(flight, work).await;
        check.unwrap_or(Check::DirectoryUnavailable)
    }

    async fn check_alone(
        self,
        key: LockKey,
        r: Resolved,
        password: String,
        ip: IpAddr,
        directory: Arc<dyn Directory>,
    ) -> Check {
        // (a lookup that reached the directory took this token, and the ceiling's, already)
        if !r.charged {
            if let Err(wait) = self.inner.throttle.load().login(ip) {
                return Check::Throttled(wait);
            }
        }
        let mut ticket = match self.reserve(&key).await {
            Ok(t) => t,
            Err(c) => return c,
        };
        ticket.account_kind = r.kind;
        ticket.source = Some(ip);
        let mut guard = TicketGuard {
            policy: self.clone(),
            ticket: Some(ticket),
        };
        // The global ceiling protects the directory from many addresses at once. It is taken
        // after the lockout reservation, so guesses at a locked account (which never reach the
        // directory) cannot use it up; a refusal here releases the reservation uncounted.
        if !password.is_empty() && !r.charged {
            if let Err(wait) = self.inner.throttle.load().ceiling() {
                if let Some(ticket) = guard.ticket.take() {
                    if let Err(e) = self.finish(ticket, AttemptResult::Aborted).await {
                        return Check::Store(e);
                    }
                }
                return Check::Throttled(wait);
            }
        }
        // An empty simple bind is an unauthenticated bind: never ask; it is a wrong password.
        let verdict = if password.is_empty() {
            Ok(Verdict::Rejected)
        } else {
            let started = std::time::Instant::now();
            let check = directory.verify_login(&r.name, &r.account, &r.found, &password);
            let v = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(v) => v,
                Err(_) => Err(crate::auth::DirectoryError(format!(
                    "no answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                ))),
            };
            self.emit(PolicyEvent::DirectoryCheck {
                result: match &v {
                    Ok(Verdict::Accepted) => DirectoryResult::Ok,
                    Ok(Verdict::Rejected) => DirectoryResult::Rejected,
                    Err(_) => DirectoryResult::Error,
                },
                elapsed: started.elapsed(),
            });
            v
        };
        drop(password);
        let result = match &verdict {
            Ok(Verdict::Accepted) => AttemptResult::Accepted,
            Ok(Verdict::Rejected) => AttemptResult::Rejected,
            Err(e) => {
                tracing::warn!(
                    target: "faspex_gate::policy",
                    account = %r.account,
                    error = %e,
                    "the directory could not answer a credential check (503, not counted)"
                );
                AttemptResult::Aborted
            }
        };
        let Some(ticket) = guard.ticket.take() else {
            return Check::DirectoryUnavailable;
        };
        let end = self.finish(ticket, result).await;
        match (end, verdict) {
            (Err(e), _) => Check::Store(e),
            (Ok(AttemptEnd::Locked(lock)), _) => {
                self.emit(PolicyEvent::LockedOut(&lock));
                Check::Locked(lock)
            }
            (Ok(AttemptEnd::AlreadyLocked(lock)), _) => Check::Locked(lock),
            (Ok(_), Ok(Verdict::Accepted)) => Check::Verified,
            (Ok(_), Ok(Verdict::Rejected)) => Check::BadCredentials,
            (Ok(_), Err(_)) if r.faspex_checks() => Check::FaspexUnavailable,
            (Ok(_), Err(_)) => Check::DirectoryUnavailable,
        }
    }

    async fn admit(
        &self,
        account: &str,
        account_kind: AccountKind,
        req: &LoginRequest<'_>,
    ) -> Result<Admitted, LoginRefused> {
        let cfg = self.cfg();
        let token = SessionToken::generate()?;
        let now = self.now();
        // Should this caller go away before it has the token, the session must not keep a seat.
        let mut rollback = RollbackGuard {
            policy: self.clone(),
            key: Some(token.key()),
        };
        let admit = self
            .inner
            .store
            .admit(
                Admission {
                    key: token.key(),
                    account: account.to_owned(),
                    account_kind,
                    client: req.client.clone(),
                    kind: req.kind,
                    ip: req.ip,
                    agent: truncate(req.agent, 256).to_owned(),
                    takeover: req.takeover,
                    now,
                },
                SeatRules {
                    max_sessions: cfg.max_sessions,
                    one_client: cfg.one_client_per_account,
                    timeouts: Self::timeouts(&cfg),
                },
            )
            .await?;
        self.emit_ended(&admit.ended);
        rollback.key = None;
        match admit.outcome {
            AdmitOutcome::Unsaved { error } => Err(LoginRefused::Store(error)),
            AdmitOutcome::Admitted {
                session,
                renewed_from,
                replaces,
            } => {
                self.emit(PolicyEvent::SessionStarted {
                    session: &session,
                    renewed: renewed_from.is_some(),
                });
                Ok(Admitted {
                    token,
                    session,
                    replaces,
                    renewed: renewed_from.is_some(),
                })
            }
            AdmitOutcome::LicenseFull { soonest_end } => Err(LoginRefused::LicenseFull {
                retry_after: seats::retry_after(soonest_end, now),
            }),
            AdmitOutcome::OtherClient { active } => Err(LoginRefused::OtherClientActive {
                since: active.started,
                ip: active.ip,
                kind: active.kind,
            }),
        }
    }
}

/// Ends a just-admitted session if the login is abandoned before its token is handed over.
struct RollbackGuard {
    policy: Policy,
    key: Option<SessionKey>,
}

impl Drop for RollbackGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let policy = self.policy.clone();
        spawn_detached(async move {
            let _ = policy.end(&key, EndReason::Rollback).await;
        });
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
