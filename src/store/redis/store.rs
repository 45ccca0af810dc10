//! [`RedisStore`]: the [`PolicyStore`] whose state lives in Redis, shared by every gateway of a
//! site. Each trait method is one call of a function in the library [`policy.lua`](./policy.lua)
//! (loaded at connect), so each decision is one atomic step on the master; this file only packs
//! the arguments, unpacks the answer, and waits for replicas where the contract says so.
//!
//! - Everything is written through; nothing is written behind, so [`PolicyStore::flush`] has
//!   nothing to do.
//! - Retrying a call is safe: a check's ticket id is its attempt id (finishing it twice answers
//!   the same, one failure counted), an admission is keyed by its session key.
//! - After an admission, a lock, an unlock or a kick (the function's answer says so with its
//!   `wait` flag), with `wait_replicas` set, the store sends `WAIT`. Short of replicas, an admission is undone and answered
//!   [`AdmitOutcome::Unsaved`] (the engine answers 503); a lock, unlock or kick stays in force,
//!   and the shortfall is counted ([`RedisStore::wait_shortfalls`]) and told to the hook set with
//!   [`RedisStore::on_wait_shortfall`] (for `store_errors_total{op="wait"}`).
//! - Any failure is a [`StoreError`]: there is no in-memory fallback.
//! - The locks and unlocks it answers with are remembered (`super::memory`) until they end, and
//!   written back by the connection after a failover or a Redis that came back empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::cache::{Answer, Forgot, Landed, Lookup, QueuedEnd, QueuedTouch, SessionCache};
use super::conn::{Conn, RedisOptions, CALL_BUDGET};
use super::wire::{
    self, Decision, WireAdmit, WireCounts, WireEnd, WireFound, WireLockState, WireLocks,
    WireOneSession, WireSessions, WireStart, WireState, WireSwept, WireUnlocked,
};
use crate::clock::Timestamp;
use crate::config::OneClient;
use crate::store::{
    AccountKind, Admission, Admit, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart,
    AttemptTicket, ClientId, Counts, EndReason, Lock, LockKey, LockoutRules, PolicyStore,
    SeatRules, Session, SessionKey, SessionState, StoreError, Swept, Timeouts, Unlocked,
    MAX_BEARER_TOKENS,
};

/// Told the operation (`"admit"`, `"lock"`, `"unlock"`, `"kick"`) whose `WAIT` fell short.
pub type WaitHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// How long a finished check's answer is kept for a retry, at least.
const DONE_TTL: Duration = Duration::from_secs(600);

/// Told the operation (a function's name, or `"wait"`) whose call failed.
pub type ErrorHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The Redis store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    conn: Conn,
    /// Set once the server was checked, the library loaded and the secret's fingerprint
    /// compared ([`RedisStore::ready`]).
    ready: tokio::sync::OnceCell<()>,
    /// The session secret's fingerprint, when this store checks it.
    secret: Option<String>,
    cache: SessionCache,
    /// Held by the sweeper, the store monitor or an admission while it sends the queued touches
    /// ([`RedisStore::send_queued_touches`]).
    replaying: tokio::sync::Mutex<()>,
    /// Sessions Redis ended, past their deadline, on a touch the outage replay sent: no request
    /// is there to report them, so the next sweep does, as it reports its own.
    replay_ended: Mutex<Vec<(Session, EndReason)>>,
    hook: Mutex<Option<WaitHook>>,
    errors: Mutex<Option<ErrorHook>>,
    shortfalls: AtomicU64,
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

fn timeouts(t: &Timeouts) -> [String; 3] {
    [
        ms(t.idle),
        ms(t.api_idle),
        t.absolute.map_or("0".into(), ms),
    ]
}

/// The library function that answers `lookup`.
fn lookup_function(lookup: &Lookup) -> &'static str {
    match lookup {
        Lookup::Key(_) => "session",
        Lookup::Client(..) => "client_session",
        Lookup::Bearer(_) => "bearer_session",
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.into()
}

fn bytes(args: &[String]) -> Vec<&[u8]> {
    args.iter().map(|a| a.as_bytes()).collect()
}

impl RedisStore {
    /// The store for `opts`, with no session view and no secret check; nothing is sent until
    /// the first call (or [`RedisStore::ready`]).
    pub fn new(opts: RedisOptions) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Conn::new(opts)?,
            ready: tokio::sync::OnceCell::new(),
            secret: None,
            cache: SessionCache::new(Duration::ZERO, Duration::ZERO),
            replaying: tokio::sync::Mutex::new(()),
            replay_ended: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
            errors: Mutex::new(None),
            shortfalls: AtomicU64::new(0),
        })
    }

    /// Keep a view of sessions at most `fresh` old, and serve sessions confirmed within `grace`
    /// while Redis cannot be reached (`store.redis.session_cache`, `outage_grace`; see
    /// [`super::cache`]).
    pub fn with_session_view(mut self, fresh: Duration, grace: Duration) -> Self {
        self.cache = SessionCache::new(fresh, grace);
        self
    }

    /// Check, when first ready and at every [`RedisStore::check`], that the other gateways sign
    /// cookies with the same `secret`.
    pub fn with_secret(mut self, secret: &[u8]) -> Self {
        self.secret = Some(fingerprint(secret));
        self
    }

    /// Connect to the master, check it (Redis 7.0 or later, the ACL user's rights) and load the
    /// library. An error naming a key ([`StoreError::Setting`]) is a configuration error.
    pub async fn connect(opts: RedisOptions) -> Result<Self, StoreError> {
        let store = Self::new(opts)?;
        store.ready().await?;
        Ok(store)
    }

    /// Check the server, load the library, compare the secret's fingerprint and call one
    /// function (proving the user may run the library on the prefix's keys); once. Every call
    /// does this first, so a gateway started while Redis was away gets ready when it answers.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                self.conn.prepare().await?;
                self.compare_secret().await?;
                self.conn
                    .fcall("probe", &["probe"], None, &[], false)
                    .await
                    .map(drop)
            })
            .await
            .map(drop)
    }

    /// Whether the store answers now: ready, the secret's fingerprint still the same (it is
    /// written again if Redis lost it), one write; then what an outage queued is sent. For the
    /// store monitor (`faspex_gate_store_up`).
    pub async fn check(&self, now: Timestamp) -> Result<(), StoreError> {
        self.ready().await?;
        self.compare_secret().await?;
        self.probe().await?;
        self.replay(now).await;
        Ok(())
    }

    /// Send the ends and touches answered from the session view during an outage, at `now`. An
    /// end sent twice ends the session once; a touch only moves its last activity forward.
    async fn replay(&self, now: Timestamp) {
        if !self.cache.has_queued() {
            return;
        }
        // One at a time, each taken out of its queue only once Redis has it, so that what a
        // replay cut short (the store monitor bounds a check's time) had not sent stays queued;
        // sending one twice does no harm (an end ends once, a touch only moves activity forward).
        // A failure goes to the back of its queue and ends that queue's part of this replay (the
        // touches are sent even if an end failed: they do not depend on it).
        self.send_queued_ends().await;
        self.send_queued_touches(now).await;
    }

    /// Send the touches queued during an outage: the sweeper, the store monitor and admissions
    /// one at a time. Before anything that judges deadlines by the activity Redis holds (this
    /// gateway's sweep, an admission, the store monitor's check): judged first, a session in use
    /// through an outage longer than its idle timeout would end (another gateway may still judge
    /// it first: see docs/ha.md). A lookup sends its own session's touch itself
    /// ([`RedisStore::viewed`]).
    async fn send_queued_touches(&self, now: Timestamp) {
        if !self.cache.has_queued_touches() {
            return;
        }
        let _one = self.replaying.lock().await;
        while let Some(touch) = self.cache.first_touch() {
            if self.send_touch(touch, now).await.is_err() {
                return;
            }
        }
    }

    /// Send one queued touch, at the activity's times, not `now`'s: an outage adds nothing to a
    /// session's idle time. A session Redis then ends is reported by the next sweep; a touch that
    /// fails goes to the back of the queue.
    async fn send_touch(&self, touch: QueuedTouch, now: Timestamp) -> Result<(), StoreError> {
        let since = self.cache.generation();
        let lookup = touch.lookup;
        match self
            .ask_redis(&lookup, now, &touch.times, touch.timeouts)
            .await
        {
            Ok(state) => {
                if let SessionState::Ended(s, why) = &state {
                    self.replay_ended
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((s.clone(), *why));
                }
                self.cache.sent_touch(&lookup, touch.n);
                // (as a lookup without activity: what Redis got is the activity's times, not
                // `now`, so the view has carried nothing since them)
                self.cache.learn(lookup, now, false, &state, since);
                Ok(())
            }
            Err(e) => {
                self.cache.touch_to_back(&lookup);
                Err(e)
            }
        }
    }

    /// Send the ends queued during an outage, oldest first, until one fails (it goes to the
    /// back of the queue). The ends go to Redis alone: an end that failed is not "answered" from
    /// the view again, which would take it out of the queue unsent.
    async fn send_queued_ends(&self) {
        while let Some(q) = self.cache.first_queued() {
            if self.send_end(&q).await.is_err() {
                self.cache.end_to_back(&q.key);
                return;
            }
        }
    }

    /// Send one end queued during an outage, with its reason, to Redis alone; out of the queue
    /// once Redis has it. The session is forgotten here however this ends.
    async fn send_end(&self, q: &QueuedEnd) -> Result<(), StoreError> {
        let _forget = self.cache.forget_on_drop(Forgot::Session(q.key.clone()));
        self.end_in_redis(&q.key, q.reason).await?;
        self.cache.sent_queued(&q.key);
        Ok(())
    }

    /// End session `key` in Redis, and nowhere else: an error if Redis does not answer. The
    /// caller forgets it in the view (a [`ForgetOnDrop`](super::cache::ForgetOnDrop) guard).
    async fn end_in_redis(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        // (Its callers forget the session here through a guard of their own, held across what
        // they do after: one here, dropped first, would forget the view's entry before
        // `end_in_outage` could read it.)
        let (reply, _) = self
            .waited(
                "kick",
                "end_session",
                &[&format!("s:{}", key.0)],
                None,
                &[key.0.to_string(), reason.as_str().into()],
            )
            .await?;
        wire::parse::<WireOneSession>("a session end", &reply)?.decode()
    }

    /// A plain command (the logouts' stream, [`super::outbox`]), after [`RedisStore::ready`].
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: &str,
    ) -> Result<T, StoreError> {
        self.conn.command(cmd, what).await
    }

    /// Be told of every failed call, by operation (`store_errors_total{op}`).
    pub fn on_error(&self, hook: ErrorHook) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn failed(&self, op: &'static str, e: &StoreError) {
        if matches!(e, StoreError::Remote { .. } | StoreError::Setting { .. }) {
            let hook = self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(op);
            }
        }
    }

    async fn compare_secret(&self) -> Result<(), StoreError> {
        match &self.secret {
            Some(fp) => self.check_fingerprint(fp).await,
            None => Ok(()),
        }
    }

    /// Where it is, for the log: the master's URL (without credentials) or its sentinels, and
    /// the key prefix.
    pub fn describe(&self) -> String {
        let o = self.conn.opts();
        format!("{} prefix {}", o.describe(), o.key_prefix)
    }

    /// The options it was made with.
    pub fn options(&self) -> &RedisOptions {
        self.conn.opts()
    }

    /// Be told of every `WAIT` that fell short.
    pub fn on_wait_shortfall(&self, hook: WaitHook) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// How many `WAIT`s fell short so far.
    pub fn wait_shortfalls(&self) -> u64 {
        self.shortfalls.load(Ordering::Relaxed)
    }

    fn shortfall(&self, op: &'static str, e: &StoreError) {
        self.shortfalls.fetch_add(1, Ordering::Relaxed);
        tracing::error!(op, error = %e, "the replicas did not acknowledge in time");
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(op);
        }
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(errors) = errors {
            errors("wait");
        }
    }

    /// Store the session secret's fingerprint under the prefix, or compare it with the one there:
    /// every gateway of a site must sign cookies with the same secret. The fingerprint is SHA-256
    /// over a label and the secret, never the secret. A mismatch is
    /// [`StoreError::Setting`] naming `session.secret_file`.
    pub async fn check_secret_fingerprint(&self, secret: &[u8]) -> Result<(), StoreError> {
        self.check_fingerprint(&fingerprint(secret)).await
    }

    async fn check_fingerprint(&self, fp: &str) -> Result<(), StoreError> {
        let key = format!("{}secret", self.conn.opts().root());
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(fp).arg("NX").arg("GET");
        let old: Option<String> = self
            .conn
            .command(&cmd, "checking the session secret's fingerprint")
            .await?;
        match old {
            None => Ok(()),
            Some(o) if o == fp => Ok(()),
            Some(_) => Err(StoreError::Setting {
                key: "session.secret_file",
                reason: format!(
                    "is not the secret the other gateways on this Redis sign cookies with (its \
                     fingerprint under {key} differs); every gateway of a site needs the same \
                     session.secret_file"
                ),
            }),
        }
    }

    async fn call(
        &self,
        name: &'static str,
        keys: &[&str],
        now: Option<Timestamp>,
        args: &[String],
    ) -> Result<String, StoreError> {
        self.fcall(name, keys, now, args, false).await
    }

    async fn read(
        &self,
        name: &'static str,
        keys: &[&str],
        now: Option<Timestamp>,
        args: &[String],
    ) -> Result<String, StoreError> {
        self.fcall(name, keys, now, args, true).await
    }

    async fn fcall(
        &self,
        name: &'static str,
        keys: &[&str],
        now: Option<Timestamp>,
        args: &[String],
        read_only: bool,
    ) -> Result<String, StoreError> {
        let r = match self.ready().await {
            Ok(()) => {
                self.conn
                    .fcall(name, keys, now, &bytes(args), read_only)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            self.failed(name, e);
        }
        r
    }

    /// A call followed by `WAIT` when its answer's `wait` flag says it changed something that
    /// must reach the replicas; a shortfall is counted under `op` and returned.
    async fn waited(
        &self,
        op: &'static str,
        name: &'static str,
        keys: &[&str],
        now: Option<Timestamp>,
        args: &[String],
    ) -> Result<(String, Option<StoreError>), StoreError> {
        let r = match self.ready().await {
            Ok(()) => self.conn.fcall_waited(name, keys, now, &bytes(args)).await,
            Err(e) => Err(e),
        };
        let (reply, waited) = r.inspect_err(|e| self.failed(name, e))?;
        let short = match waited {
            Some(Err(e)) => {
                self.shortfall(op, &e);
                Some(e)
            }
            _ => None,
        };
        Ok((reply, short))
    }
}

/// The lookups, straight from Redis, and the session view in front of them.
impl RedisStore {
    /// Answer `lookup` from the view when it is fresh; otherwise (or to refresh a busy session's
    /// view ahead of time) ask Redis and learn the answer, or, when Redis cannot be reached,
    /// answer a session still within `session_cache` (a refresh) or `outage_grace`. A lookup
    /// that another request is already asking Redis for waits for that answer instead (once).
    async fn viewed(
        &self,
        lookup: Lookup,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        let mut answer = match self.cache.get(&lookup, now, activity, &t) {
            Answer::Fresh(s) => return Ok(SessionState::Live(s)),
            other => other,
        };
        // (a session ended here in an outage, its end not yet in Redis: see the answers' mapping
        // below for the lookups that name it otherwise)
        if self.cache.ended_here(&lookup) {
            return Ok(SessionState::Unknown);
        }
        let began = std::time::Instant::now();
        // What is left of the time a client may wait on the store, after a wait for another's
        // round trip.
        let mut budget = None;
        if let Answer::Wait(landing) = answer {
            // (the flight's own call is bounded; this bounds the wait however it ends)
            let landed = tokio::time::timeout(CALL_BUDGET, landing.landed())
                .await
                .unwrap_or(Landed::Pending);
            // (the view is judged at the time the wait ended, as a failed lookup's grace is;
            // Redis and the view's entries keep the lookup's own time)
            let late = now + began.elapsed();
            if let Landed::Unreachable(e) = landed {
                // As if this lookup had failed itself, without a second wait for Redis.
                return match self.cache.in_grace(&lookup, late, activity, &t) {
                    Some(s) => Ok(SessionState::Live(s)),
                    None => Err(e),
                };
            }
            answer = self.cache.get_again(&lookup, late, activity, &t);
            budget = Some(CALL_BUDGET.saturating_sub(began.elapsed()));
        }
        // (`refreshing`, dropped unsettled if this request is, or fails otherwise than by Redis
        // being out of reach, lets the next request refresh)
        let (since, mut flight, refreshing) = match answer {
            Answer::Fresh(s) => return Ok(SessionState::Live(s)),
            Answer::Refresh(since, flight, refreshing) => (since, flight, Some(refreshing)),
            Answer::Ask(since, flight) => (since, flight, None),
            // (`get_again` never says to wait)
            Answer::Wait(_) => (self.cache.generation(), None, None),
        };
        let refresh = refreshing.is_some();
        // Activity queued for this session in an outage goes to Redis first: judged without
        // it, a session in use through the outage could end. With a lookup by key, in the same
        // call; with one by client or bearer token, by the key of the session the view had for
        // it, ahead of the lookup (the token may have moved to another session since).
        // (That one counts against the lookup's budget: no client waits more than
        // CALL_BUDGET on the store, however many calls its lookup makes.)
        let mut queued = self.cache.queued_touch(&lookup);
        if let Some(other) = queued.take_if(|q| q.lookup != lookup) {
            let left = CALL_BUDGET.saturating_sub(began.elapsed());
            let _ = tokio::time::timeout(left, self.send_touch(other, now)).await;
            budget = Some(CALL_BUDGET.saturating_sub(began.elapsed()));
        }
        let mut touched = queued.as_ref().map_or_else(Vec::new, |q| q.times.clone());
        if activity {
            touched.push(now);
        }
        let touched = &touched[..];
        let answered = match budget {
            None => self.ask_redis(&lookup, now, touched, t).await,
            Some(left) => {
                let asked = self.ask_redis(&lookup, now, touched, t);
                match tokio::time::timeout(left, asked).await {
                    Ok(answered) => answered,
                    Err(_) => {
                        // What ran out is this caller's budget, most of it spent waiting for
                        // another's round trip, not Redis's: the callers waiting for this one
                        // are not told Redis is out of reach (they would answer from the view
                        // within `outage_grace`); they ask for themselves.
                        drop(flight.take());
                        let e = StoreError::Remote {
                            reason: format!("no answer within {CALL_BUDGET:?}"),
                        };
                        // (a failed call to the client all the same: `store_errors_total`)
                        self.failed(lookup_function(&lookup), &e);
                        Err(e)
                    }
                }
            }
        };
        // A session ended here during an outage is gone, whatever Redis says before the replay
        // sends it its end: unknown, as after any logout (its end was reported then, and is not
        // reported again if Redis has meanwhile ended it otherwise).
        let answered = answered.map(|state| match state {
            SessionState::Live(s) | SessionState::Ended(s, _) if self.cache.end_queued(&s.key) => {
                SessionState::Unknown
            }
            state => state,
        });
        match answered {
            Ok(state) => {
                if let Some(q) = queued {
                    self.cache.sent_touch(&lookup, q.n);
                }
                self.cache.learn(lookup, now, activity, &state, since);
                if let Some(refreshing) = refreshing {
                    refreshing.done();
                }
                if let Some(flight) = flight {
                    flight.land(Landed::Answered);
                }
                Ok(state)
            }
            Err(e @ StoreError::Remote { .. }) => {
                if let Some(refreshing) = refreshing {
                    refreshing.done();
                }
                if let Some(flight) = flight {
                    flight.land(Landed::Unreachable(e.clone()));
                }
                // A refresh that failed is answered from the view if it is still within
                // `session_cache` now, after the wait, and was not forgotten meanwhile, as the
                // requests answered from it meanwhile were (the call counted the failure).
                // (So is the grace: it is the time now, not when the lookup began, that counts.)
                let late = now + began.elapsed();
                let fresh = refresh
                    .then(|| self.cache.still_fresh(&lookup, since, late, activity, &t))
                    .flatten();
                match fresh.or_else(|| self.cache.in_grace(&lookup, late, activity, &t)) {
                    Some(s) => Ok(SessionState::Live(s)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Redis's answer for `lookup` at `now`, straight from Redis (one call of `session`,
    /// `client_session` or `bearer_session`), with the session's activity at the times in
    /// `activity`, oldest first (`now`, or earlier for a touch queued in an outage), if any.
    async fn ask_redis(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: &[Timestamp],
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        let [idle, api_idle, abs] = timeouts(&t);
        let name = lookup_function(lookup);
        let (key, mut args): (String, Vec<String>) = match lookup {
            Lookup::Key(k) => (format!("s:{k}"), vec![k.to_string()]),
            Lookup::Client(a, c) => (format!("a:{a}"), vec![a.clone(), c.to_string()]),
            Lookup::Bearer(b) => (format!("b:{b}"), vec![b.to_string()]),
        };
        // (`policy.lua`'s `activity_at`: "0" none, "1" now, "-<ms>,-<ms>…" that long before now)
        let activity = match activity {
            [] => "0".into(),
            [at] if *at >= now => "1".into(),
            times => times
                .iter()
                .map(|at| format!("-{}", now.since(*at).as_millis()))
                .collect::<Vec<_>>()
                .join(","),
        };
        args.extend([activity, idle, api_idle, abs]);
        let reply = self.call(name, &[&key], Some(now), &args).await?;
        wire::parse::<WireState>("a session lookup", &reply)?.decode()
    }
}

impl RedisStore {
    /// Remember locks Redis answered with, to write them back after a failover or a Redis that
    /// came back empty (see [`super::memory`]).
    fn remember(&self, locks: Vec<wire::SeenLock>, now: Timestamp) {
        self.conn.memory().saw_locks(locks, now.as_millis());
    }

    /// How many locks and unlocks this gateway remembers.
    pub fn remembered(&self) -> (usize, usize) {
        self.conn.memory().len()
    }

    /// What writing back remembered locks has done so far: locks written, refused (ended, or
    /// older than an unlock) and kept (Redis's own was newer).
    pub fn written_back(&self) -> wire::Restored {
        self.conn.written_back()
    }
}

/// The session secret's fingerprint: hex SHA-256 of a label and the secret.
pub fn fingerprint(secret: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"faspex-gate session secret fingerprint v1\0");
    ctx.update(secret);
    crate::util::hex(ctx.finish().as_ref())
}

fn account_kind(k: AccountKind) -> String {
    k.as_str().into()
}

#[async_trait]
impl PolicyStore for RedisStore {
    async fn admit(&self, a: Admission, rules: SeatRules) -> Result<Admit, StoreError> {
        let [idle, api_idle, abs] = timeouts(&rules.timeouts);
        let rule = match rules.one_client {
            OneClient::Reject => "reject",
            OneClient::Replace => "replace",
        };
        // The account's ends made here in an outage go to Redis first, with their reasons: a
        // renewal (the same account and client) removes the session it renews as no end at
        // all, so the Faspex logout a queued replace or expiry owes would be lost. If the end of
        // a session on this client cannot be sent, nor can the login be admitted (503); one on
        // another client stays queued for the replay (a replace ends it with a reason of its
        // own, a refusal leaves it).
        for q in self.cache.queued_for(&a.account) {
            match self.send_end(&q).await {
                Err(e) if q.client == a.client => return Err(e),
                _ => {}
            }
        }
        // (and the touches: the admission ends the account's sessions past their deadline, and
        // when the seats are full, every account's)
        self.send_queued_touches(a.now).await;
        let key = a.key.0.to_string();
        // A replace ends the account's other session: forgotten however this call ends.
        let _forget = self
            .cache
            .forget_on_drop(Forgot::Account(a.account.as_str().into()));
        let args = [
            key.clone(),
            a.account,
            account_kind(a.account_kind),
            a.client.0.to_string(),
            a.kind.as_str().into(),
            a.ip.to_string(),
            a.agent,
            flag(a.takeover),
            rules.max_sessions.to_string(),
            rule.into(),
            idle,
            api_idle,
            abs,
        ];
        let (reply, short) = self
            .waited("admit", "admit", &[&format!("s:{key}")], Some(a.now), &args)
            .await?;
        let (outcome, mut ended) = wire::parse::<WireAdmit>("an admission", &reply)?.decode()?;
        // Sessions past their deadline may have ended too (the view refuses them meanwhile).
        for (s, _) in &ended {
            self.cache.forget_session(&s.key);
        }
        // (not those ended here in an outage: reported then)
        ended.retain(|(s, _)| !self.cache.ended_again(&s.key));
        let outcome = match outcome {
            Decision::Admitted {
                session,
                renewed_from,
                replaces,
            } => match short {
                Some(error) => {
                    // Not on enough replicas: a failover could lose it, so nobody is admitted
                    // (the account's view is forgotten as this call ends, this session's too).
                    self.call("end_session", &[&format!("s:{key}")], None, &[key])
                        .await?;
                    AdmitOutcome::Unsaved { error }
                }
                None => AdmitOutcome::Admitted {
                    session,
                    renewed_from,
                    replaces,
                },
            },
            Decision::LicenseFull { soonest_end } => AdmitOutcome::LicenseFull { soonest_end },
            Decision::OtherClient { active } => AdmitOutcome::OtherClient { active },
        };
        Ok(Admit { outcome, ended })
    }

    async fn session(
        &self,
        key: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.viewed(Lookup::key(key), now, activity, t).await
    }

    async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.viewed(Lookup::client(account, client), now, activity, t)
            .await
    }

    async fn bearer_session(
        &self,
        bearer: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        self.viewed(Lookup::bearer(bearer), now, activity, t).await
    }

    async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError> {
        let _forget = self.cache.forget_on_drop(Forgot::Session(key.clone()));
        let args = [
            key.0.to_string(),
            flag(cookie.is_some()),
            cookie.unwrap_or_default(),
        ];
        let reply = self
            .call(
                "set_upstream_cookie",
                &[&format!("s:{}", key.0)],
                None,
                &args,
            )
            .await?;
        Ok(wire::parse::<WireFound>("a cookie", &reply)?.found)
    }

    async fn add_bearer(&self, key: &SessionKey, bearer: SessionKey) -> Result<bool, StoreError> {
        // The token moves here from any session that held it (the newest holder wins).
        let _forget = self.cache.forget_on_drop(Forgot::Session(key.clone()));
        let _moved = self.cache.forget_on_drop(Forgot::Bearer(bearer.clone()));
        let args = [
            key.0.to_string(),
            bearer.0.to_string(),
            MAX_BEARER_TOKENS.to_string(),
        ];
        let reply = self
            .call(
                "add_bearer",
                &[&format!("s:{}", key.0), &format!("b:{}", bearer.0)],
                None,
                &args,
            )
            .await?;
        Ok(wire::parse::<WireFound>("a bearer token", &reply)?.found)
    }

    async fn end_session(
        &self,
        key: &SessionKey,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        // Forgotten only once `end_in_outage` below has read the view's entry.
        let _forget = self.cache.forget_on_drop(Forgot::Session(key.clone()));
        if let Some(queued) = self.cache.queued_reason(key) {
            // Ended here in an outage, and reported then: its end goes to Redis now, with the
            // reason it was made for, and is not reported again.
            self.end_in_redis(key, queued).await?;
            self.cache.sent_queued(key);
            return Ok(None);
        }
        match self.end_in_redis(key, reason).await {
            // A logout during an outage, of a session this gateway still serves: it ends here
            // now (Faspex is logged out once), and in Redis when it answers again.
            Err(e @ StoreError::Remote { .. }) => match self.cache.end_in_outage(key, reason) {
                Some(s) => Ok(Some(s)),
                None => Err(e),
            },
            r => r,
        }
    }

    async fn end_account(
        &self,
        account: &str,
        _reason: EndReason,
    ) -> Result<Vec<Session>, StoreError> {
        // Forgotten however this ends: answered, failed, or dropped after Redis ran it.
        let _forget = self.cache.forget_on_drop(Forgot::Account(account.into()));
        let (reply, _) = self
            .waited(
                "kick",
                "end_account",
                &[&format!("a:{account}")],
                None,
                &[account.to_owned()],
            )
            .await?;
        let mut ended = wire::parse::<WireSessions>("a kick", &reply)?.decode()?;
        // (not those ended here in an outage: reported then)
        ended.retain(|s| !self.cache.ended_again(&s.key));
        Ok(ended)
    }

    async fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        let reply = self.read("sessions", &["sessions"], None, &[]).await?;
        let mut sessions = wire::parse::<WireSessions>("the sessions", &reply)?.decode()?;
        // (not those ended here in an outage whose end Redis does not have yet)
        sessions.retain(|s| !self.cache.end_queued(&s.key));
        Ok(sessions)
    }

    async fn sweep(
        &self,
        now: Timestamp,
        t: Timeouts,
        window: Duration,
    ) -> Result<Swept, StoreError> {
        self.send_queued_touches(now).await;
        let [idle, api_idle, abs] = timeouts(&t);
        let args = [idle, api_idle, abs, ms(window)];
        let reply = self
            .call("sweep", &["sessions", "locks", "windows"], Some(now), &args)
            .await?;
        let swept = wire::parse::<WireSwept>("a sweep", &reply)?;
        self.conn.memory().forget(&swept.lifted());
        let mut swept = swept.decode()?;
        // (and those a replayed touch ended)
        swept
            .ended
            .append(&mut self.replay_ended.lock().unwrap_or_else(|e| e.into_inner()));
        for (s, _) in &swept.ended {
            self.cache.forget_session(&s.key);
        }
        // (not those ended here in an outage: reported then)
        swept.ended.retain(|(s, _)| !self.cache.ended_again(&s.key));
        Ok(swept)
    }

    async fn begin_attempt(
        &self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptStart, StoreError> {
        let lk = key.encode();
        let args = [
            lk.clone(),
            rules.threshold.to_string(),
            ms(rules.window),
            ms(rules.duration),
            rules.max_tracked.to_string(),
            ms(rules.ticket_ttl),
        ];
        let (reply, _) = self
            .waited(
                "lock",
                "begin_attempt",
                &[
                    &format!("l:{lk}"),
                    &format!("wf:{lk}"),
                    &format!("ws:{lk}"),
                    &format!("wt:{lk}"),
                ],
                Some(now),
                &args,
            )
            .await?;
        let start = wire::parse::<WireStart>("a check's start", &reply)?;
        self.remember(start.seen(), now);
        start.decode(key)
    }

    async fn finish_attempt(
        &self,
        ticket: AttemptTicket,
        result: AttemptResult,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptEnd, StoreError> {
        let lk = ticket.key.encode();
        let result = match result {
            AttemptResult::Accepted => "accepted",
            AttemptResult::Rejected => "rejected",
            AttemptResult::Aborted => "aborted",
        };
        let args = [
            lk.clone(),
            ticket.id.to_string(),
            account_kind(ticket.account_kind),
            result.into(),
            rules.threshold.to_string(),
            ms(rules.window),
            ms(rules.duration),
            rules.max_tracked.to_string(),
            ms(DONE_TTL.max(rules.ticket_ttl)),
            ticket.source.map(|ip| ip.to_string()).unwrap_or_default(),
        ];
        let (reply, _) = self
            .waited(
                "lock",
                "finish_attempt",
                &[
                    &format!("l:{lk}"),
                    &format!("wf:{lk}"),
                    &format!("ws:{lk}"),
                    &format!("wt:{lk}"),
                ],
                Some(now),
                &args,
            )
            .await?;
        let end = wire::parse::<WireEnd>("a check's end", &reply)?;
        self.remember(end.seen(), now);
        end.decode()
    }

    async fn lock_state(&self, key: &LockKey, now: Timestamp) -> Result<Option<Lock>, StoreError> {
        let lk = key.encode();
        let reply = self
            .read(
                "lock_state",
                &[&format!("l:{lk}"), &format!("l:{}", key.account)],
                Some(now),
                std::slice::from_ref(&lk),
            )
            .await?;
        let state = wire::parse::<WireLockState>("a lock", &reply)?;
        self.conn
            .memory()
            .saw_tombstone(&key.account, state.unlocked());
        self.remember(state.seen(), now);
        Ok(state.decode())
    }

    async fn lock_account(
        &self,
        account: &str,
        kind: AccountKind,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Lock, StoreError> {
        // The length, not the end: with time from Redis, the lock runs from Redis's now.
        let args = [account.to_owned(), account_kind(kind), ms(until.since(now))];
        self.cache.forget_account(account);
        let (reply, _) = self
            .waited(
                "lock",
                "lock_account",
                &[&format!("l:{account}")],
                Some(now),
                &args,
            )
            .await?;
        let state = wire::parse::<WireLockState>("a lock", &reply)?;
        self.remember(state.seen(), now);
        state.decode().ok_or_else(|| StoreError::Remote {
            reason: "answered a lock without the lock".into(),
        })
    }

    async fn unlock_account(&self, account: &str) -> Result<Unlocked, StoreError> {
        let (reply, _) = self
            .waited(
                "unlock",
                "unlock_account",
                &[&format!("la:{account}"), &format!("wa:{account}")],
                None,
                &[account.to_owned()],
            )
            .await?;
        let unlocked = wire::parse::<WireUnlocked>("an unlock", &reply)?;
        self.conn.memory().saw_unlock(unlocked.seen(account));
        Ok(unlocked.decode())
    }

    async fn lockouts(&self, now: Timestamp) -> Result<Vec<Lock>, StoreError> {
        let reply = self.read("lockouts", &["locks"], Some(now), &[]).await?;
        let locks = wire::parse::<WireLocks>("the locks", &reply)?;
        self.remember(locks.seen(), now);
        Ok(locks.decode())
    }

    async fn counts(&self, now: Timestamp) -> Result<Counts, StoreError> {
        let reply = self
            .read(
                "counts",
                &["seats", "sessions", "locks", "windows"],
                Some(now),
                &[],
            )
            .await?;
        Ok(wire::parse::<WireCounts>("the gauges", &reply)?.decode())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Everything is written through.
        Ok(())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.call("probe", &["probe"], None, &[]).await.map(drop)
    }
}

/// What copying one record of an embedded store in did (`faspex-gate migrate-store`,
/// [`RedisStore::import_session`] and [`RedisStore::import_lock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Copied in.
    Copied,
    /// A lock here that ended sooner now runs as long as the copied one.
    Extended,
    /// Already here (copied before, or a lock here lasts as long or longer): left as it is.
    Present,
    /// Not copied, for this reason.
    Skipped(Skip),
}

/// Why a record was not copied in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Past its deadline (a session) or its end (a lock).
    Expired,
    /// Copied before and ended (a session) or lifted (a lock) here since: it stays so.
    EndedSince,
    /// The account holds a seat here on another client (one client per account).
    OtherClient,
    /// Every licence seat here is taken (`policy.max_sessions`).
    LicenseFull,
}

#[derive(serde::Deserialize)]
struct WireImported {
    result: String,
}

impl WireImported {
    fn decode(self) -> Result<Imported, StoreError> {
        Ok(match self.result.as_str() {
            "copied" => Imported::Copied,
            "extended" => Imported::Extended,
            "present" => Imported::Present,
            "expired" => Imported::Skipped(Skip::Expired),
            "ended" | "lifted" => Imported::Skipped(Skip::EndedSince),
            "other_client" => Imported::Skipped(Skip::OtherClient),
            "full" => Imported::Skipped(Skip::LicenseFull),
            other => {
                return Err(StoreError::Remote {
                    reason: format!(
                        "answered a copy with {other:?}, which this build does not know"
                    ),
                })
            }
        })
    }
}

/// Moving an embedded store in: one record a call, each one atomic step of `policy.lua`
/// (`import_session`, `import_lock`), safe to repeat.
impl RedisStore {
    /// Copy one session in, with its Faspex cookie and bearer tokens, at most once: one already
    /// here is left as it is, and one past its deadline under `rules.timeouts`, one whose
    /// account holds a seat here on another client, or one over `rules.max_sessions` seats is
    /// skipped. A session copied before and ended here since is not brought back.
    pub async fn import_session(
        &self,
        s: &Session,
        rules: SeatRules,
        now: Timestamp,
    ) -> Result<Imported, StoreError> {
        let [idle, api_idle, abs] = timeouts(&rules.timeouts);
        let bearer: Vec<&str> = s.bearer.iter().map(|b| &*b.0).collect();
        let args = [
            s.key.0.to_string(),
            s.account.to_string(),
            account_kind(s.account_kind),
            s.client.0.to_string(),
            s.kind.as_str().into(),
            s.ip.to_string(),
            s.agent.to_string(),
            s.started.as_millis().to_string(),
            s.last_activity.as_millis().to_string(),
            flag(s.upstream_cookie.is_some()),
            s.upstream_cookie.as_deref().unwrap_or_default().to_owned(),
            bearer.join(","),
            rules.max_sessions.to_string(),
            idle,
            api_idle,
            abs,
        ];
        let reply = self
            .call(
                "import_session",
                &[&format!("s:{}", s.key.0), &format!("a:{}", s.account)],
                Some(now),
                &args,
            )
            .await?;
        wire::parse::<WireImported>("a copied session", &reply)?.decode()
    }

    /// Copy one lock in, merged by the lockout rule: the longer lock stands, a lock here is
    /// never shortened, and a lock copied before and lifted here since stays lifted.
    pub async fn import_lock(&self, l: &Lock, now: Timestamp) -> Result<Imported, StoreError> {
        let lk = l.key.encode();
        let args = [
            lk.clone(),
            l.since.as_millis().to_string(),
            l.until.as_millis().to_string(),
            l.failures.to_string(),
            flag(l.by_admin),
            account_kind(l.account_kind),
        ];
        let reply = self
            .call("import_lock", &[&format!("l:{lk}")], Some(now), &args)
            .await?;
        wire::parse::<WireImported>("a copied lock", &reply)?.decode()
    }
}
