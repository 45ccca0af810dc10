//! The engine's handle, [`Policy`]: what it holds (the store, the clock, the settings, the
//! throttles, the verification cache, the observer), how it takes new settings, and the small
//! helpers every step shares. The steps themselves are in their own files: a login
//! (`login.rs`, `resolve.rs`, `pending.rs`), sessions (`sessions.rs`), administration
//! (`admin.rs`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::events::{Observer, PolicyEvent};
use super::lockout;
use super::singleflight::SingleFlight;
use super::throttle::Throttle;
use super::types::{Check, CheckRules};
use crate::account::{self, normalize, InvalidUsername};
use crate::auth::cache::VerificationCache;
use crate::clock::{Clock, Timestamp};
use crate::config::{LocalAccounts, PolicyConfig};
use crate::store::{EndReason, LockKey, LockoutRules, PolicyStore, Session, Timeouts};

/// How often the sweeper runs: sessions end, and locks lift, at most this long after their
/// deadline even when no request comes.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The longest one credential check may take; past it, the directory counts as unavailable (the
/// backends have their own, shorter timeouts: this is the engine's safety net).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a credential check holds its lockout reservation before it is presumed dead: well
/// past [`CHECK_TIMEOUT`], so a live check never loses its place.
const TICKET_TTL: Duration = Duration::from_secs(180);

/// The engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Policy {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn PolicyStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) cfg: ArcSwap<PolicyConfig>,
    pub(super) throttle: ArcSwap<Throttle>,
    pub(super) flights: SingleFlight<Check>,
    /// Per-process key for single-flight keys: a password is never held, even hashed plainly.
    pub(super) flight_key: ring::hmac::Key,
    /// Woken whenever a credential check finishes, for logins waiting behind one.
    pub(super) attempt_finished: Notify,
    pub(super) checks: ArcSwap<CheckRules>,
    pub(super) cache: VerificationCache,
    /// Which account names were found to be lately ([`crate::auth::Directory::lookup`]).
    pub(super) names: super::names::Names,
    pub(super) observer: Arc<dyn Observer>,
}

impl Policy {
    pub fn new(
        cfg: PolicyConfig,
        checks: CheckRules,
        store: Arc<dyn PolicyStore>,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let throttle = Throttle::new(&cfg, checks.max_checks_per_second, Arc::clone(&clock));
        let rng = ring::rand::SystemRandom::new();
        let flight_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"unavailable"));
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                cfg: ArcSwap::from_pointee(cfg),
                throttle: ArcSwap::from_pointee(throttle),
                flights: SingleFlight::default(),
                flight_key,
                attempt_finished: Notify::new(),
                checks: ArcSwap::from_pointee(checks),
                cache: VerificationCache::default(),
                names: super::names::Names::default(),
                observer,
            }),
        }
    }

    /// Take new settings. Live sessions are kept whatever the new numbers; a lower cap only stops
    /// admissions until the count is below it. Changed rates start with fresh budgets.
    ///
    /// A changed `cache_ttl` empties the verification cache, so no entry outlives the new TTL.
    pub fn reload(&self, cfg: PolicyConfig, checks: CheckRules) {
        let old = self.inner.cfg.load();
        let old_checks = **self.inner.checks.load();
        if old.login_attempts_per_ip_per_minute != cfg.login_attempts_per_ip_per_minute
            || old.public_requests_per_ip_per_minute != cfg.public_requests_per_ip_per_minute
            || old_checks.max_checks_per_second != checks.max_checks_per_second
        {
            self.inner.throttle.store(Arc::new(Throttle::new(
                &cfg,
                checks.max_checks_per_second,
                Arc::clone(&self.inner.clock),
            )));
        }
        if old_checks.cache_ttl != checks.cache_ttl {
            self.inner.cache.clear();
        }
        // The directory, its filter or the domains may have changed: names are looked up again.
        self.inner.names.clear();
        self.inner.checks.store(Arc::new(checks));
        self.inner.cfg.store(Arc::new(cfg));
    }

    /// The verification cache (for the admin view and tests).
    pub fn cache(&self) -> &VerificationCache {
        &self.inner.cache
    }

    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The clock the engine decides by, for the other parts whose decisions depend on time.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.inner.clock)
    }

    pub(super) fn cfg(&self) -> arc_swap::Guard<Arc<PolicyConfig>> {
        self.inner.cfg.load()
    }

    pub(super) fn timeouts(cfg: &PolicyConfig) -> Timeouts {
        Timeouts {
            idle: cfg.idle_timeout,
            api_idle: cfg.api_idle_timeout,
            absolute: cfg.absolute_timeout,
        }
    }

    pub(super) fn lockout_rules(cfg: &PolicyConfig) -> LockoutRules {
        LockoutRules {
            threshold: cfg.lockout_threshold,
            window: cfg.lockout_window,
            duration: cfg.lockout_duration,
            max_tracked: cfg.max_tracked_usernames,
            ticket_ttl: TICKET_TTL,
        }
    }

    pub(super) fn emit(&self, e: PolicyEvent<'_>) {
        self.inner.observer.event(&e);
    }

    pub(super) fn emit_ended(&self, ended: &[(Session, EndReason)]) {
        for (s, why) in ended {
            self.emit(PolicyEvent::SessionEnded(s, *why));
        }
    }

    /// The account name `username` counts as: the entry's account when the directory said so
    /// lately (a login with this spelling within `auth.cache_ttl`), else the prepared name.
    pub fn account(&self, username: &str) -> Result<String, InvalidUsername> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(username, &cfg.username_domains)?;
        Ok(self
            .inner
            .names
            .account(name, self.now())
            .unwrap_or(prepared))
    }

    /// Every account `username` may be stored under: [`Policy::account`], and the prepared name
    /// when that differs (a lock taken before the entry was known by this spelling).
    pub(super) fn accounts(&self, username: &str) -> Result<Vec<String>, InvalidUsername> {
        let prepared = normalize(username, &self.cfg().username_domains)?;
        let mut all = vec![self.account(username)?, prepared.clone()];
        // (a Faspex account counts under the name as Faspex matches it)
        if self.inner.checks.load().local == LocalAccounts::Faspex {
            all.push(account::faspex_key(&prepared));
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|a| seen.insert(a.clone()));
        Ok(all)
    }

    /// The key failures of `account` from `ip` count under.
    pub fn lock_key(&self, account: &str, ip: IpAddr) -> LockKey {
        lockout::key(self.cfg().lockout_key, account, ip)
    }

    /// Whether a request to `path` counts as activity on its session.
    pub fn counts_as_activity(&self, path: &str) -> bool {
        !self
            .cfg()
            .activity_exempt_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    /// One request to a public path from `ip`: within `public_requests_per_ip_per_minute`?
    pub fn throttle_public(&self, ip: IpAddr) -> Result<(), Duration> {
        self.inner.throttle.load().public(ip)
    }
}

/// Finish clean-up from a `Drop`, on the runtime if there is one (there always is while serving).
pub(super) fn spawn_detached(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}
