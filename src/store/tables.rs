//! The policy state as plain in-memory tables, and every atomic step over them.
//!
//! [`Tables`] has no I/O and no clock: each step takes `now` and the rules, runs to completion
//! under its owner's lock, and marks what it changed as dirty for the persister to pick up.
//!
//! The tables decide nothing themselves: each step reads the state it needs and asks the rule,
//! one file per policy ([`crate::policy::seats`], [`crate::policy::one_client`],
//! [`crate::policy::timeouts`], [`crate::policy::lockout`]), then writes what the rule said:
//! which sessions end and when, whether a seat is free (after ending the expired ones), when a
//! session begins, when a check's reservation dies, how many failures a window keeps, which
//! windows make room, and which of two merged locks is kept. What is left here is bookkeeping:
//! indexes, dirty marks, and the order of the writes.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::policy::lockout::{self, BeforeCheck};
use crate::policy::one_client::{self, Clients};
use crate::policy::seats::{self, Seat};
use crate::policy::timeouts;

use super::{
    AccountKind, Admission, Admit, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart,
    AttemptTicket, ClientId, Counts, EndReason, Lock, LockKey, LockoutRules, SeatRules, Session,
    SessionKey, SessionState, Swept, Timeouts, Unlocked,
};

/// How often a sweep scans the failure windows to drop the ones that slid empty.
const WINDOW_SCAN_EVERY: Duration = Duration::from_secs(5);

/// The failures counted under one [`LockKey`], and the checks running for it.
#[derive(Debug, Default)]
struct Window {
    /// Failure times inside the sliding window, oldest first; at most `threshold` of them.
    failures: VecDeque<Timestamp>,
    /// Checks in flight: ticket id and when the reservation is presumed dead.
    in_flight: Vec<(u64, Timestamp)>,
    /// Where the latest failures came from, newest first, at most
    /// [`lockout::MAX_SOURCES`]; empty whenever `failures` is. Kept in memory only: a restart
    /// forgets them (a lock keeps its own).
    sources: Vec<IpAddr>,
}

impl Window {
    /// Forget failures that have slid out of the window and reservations that have expired.
    fn prune(&mut self, now: Timestamp, window: Duration) {
        while let Some(&t) = self.failures.front() {
            if !lockout::counts_at(t, now, window) {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        if self.failures.is_empty() {
            self.sources = Vec::new();
        }
        self.in_flight
            .retain(|&(_, expires)| lockout::ticket_live(expires, now));
        if self.in_flight.is_empty() {
            // Most windows never have a check in flight again: give the buffer back.
            self.in_flight = Vec::new();
        }
    }

    /// Forget every failure (a lock or an unlock cleared the window), and where they came from.
    fn clear_failures(&mut self) {
        self.failures.clear();
        self.sources = Vec::new();
    }

    fn is_empty(&self) -> bool {
        self.failures.is_empty() && self.in_flight.is_empty()
    }

    fn last_failure(&self) -> Timestamp {
        self.failures.back().copied().unwrap_or(Timestamp::ZERO)
    }
}

/// Changes not yet persisted: for each key, the current value (or `None`: deleted).
#[derive(Debug, Default)]
pub struct Dirty {
    pub sessions: Vec<(SessionKey, Option<Session>)>,
    pub locks: Vec<(String, Option<Lock>)>,
    pub windows: Vec<(String, Option<Vec<Timestamp>>)>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.locks.is_empty() && self.windows.is_empty()
    }
}

/// Maps keyed by session keys hash with foldhash, seeded per process: a key is the digest of a
/// token the gateway made, so no client can choose colliding keys, and SipHash over a 64-byte
/// key was two per cent of a small request. Maps keyed by user names keep std's SipHash.
type ByKey<V> = HashMap<SessionKey, V, foldhash::fast::RandomState>;

/// Everything, in memory.
#[derive(Debug, Default)]
pub struct Tables {
    sessions: ByKey<Session>,
    /// Account → its sessions' keys. An entry exists only while the account has a session, so
    /// `by_account.len()` is the number of seats in use.
    by_account: HashMap<String, Vec<SessionKey>>,
    /// Bearer token key → the session it was issued to.
    by_bearer: ByKey<SessionKey>,
    windows: HashMap<LockKey, Window>,
    locks: HashMap<LockKey, Lock>,
    next_ticket: u64,
    /// When the sweep next scans every failure window (a scan of up to `max_tracked_usernames`
    /// entries is not worth doing four times a second).
    next_window_scan: Timestamp,
    dirty_sessions: HashSet<SessionKey, foldhash::fast::RandomState>,
    dirty_locks: HashSet<LockKey>,
    dirty_windows: HashSet<LockKey>,
}

impl Tables {
    /// Tables holding what a store file held.
    pub fn load(
        sessions: Vec<Session>,
        locks: Vec<Lock>,
        windows: Vec<(LockKey, Vec<Timestamp>)>,
    ) -> Self {
        let mut t = Tables::default();
        for s in sessions {
            t.insert_session(s);
        }
        t.dirty_sessions.clear();
        for l in locks {
            t.locks.insert(l.key.clone(), l);
        }
        for (k, mut f) in windows {
            f.sort();
            t.windows.insert(
                k,
                Window {
                    failures: f.into(),
                    in_flight: Vec::new(),
                    sources: Vec::new(),
                },
            );
        }
        t
    }

    // ----- sessions -----

    fn insert_session(&mut self, s: Session) {
        self.by_account
            .entry(s.account.to_string())
            .or_default()
            .push(s.key.clone());
        for b in &s.bearer {
            self.by_bearer.insert(b.clone(), s.key.clone());
        }
        self.dirty_sessions.insert(s.key.clone());
        self.sessions.insert(s.key.clone(), s);
    }

    fn remove_session(&mut self, key: &SessionKey) -> Option<Session> {
        let s = self.sessions.remove(key)?;
        for b in &s.bearer {
            self.by_bearer.remove(b);
        }
        if let Some(keys) = self.by_account.get_mut(&*s.account) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_account.remove(&*s.account);
            }
        }
        self.dirty_sessions.insert(key.clone());
        Some(s)
    }

    /// End `account`'s sessions that are past their deadline.
    fn expire_account(
        &mut self,
        account: &str,
        now: Timestamp,
        t: &Timeouts,
        ended: &mut Vec<(Session, EndReason)>,
    ) {
        let keys = self.by_account.get(account).cloned().unwrap_or_default();
        for k in keys {
            if let Some(why) = self
                .sessions
                .get(&k)
                .and_then(|s| timeouts::expired(s, now, t))
            {
                if let Some(s) = self.remove_session(&k) {
                    ended.push((s, why));
                }
            }
        }
    }

    fn expire_all(&mut self, now: Timestamp, t: &Timeouts) -> Vec<(Session, EndReason)> {
        let due: Vec<(SessionKey, EndReason)> = self
            .sessions
            .values()
            .filter_map(|s| timeouts::expired(s, now, t).map(|why| (s.key.clone(), why)))
            .collect();
        due.into_iter()
            .filter_map(|(k, why)| self.remove_session(&k).map(|s| (s, why)))
            .collect()
    }

    /// Admission, in one step. Returns the decision and every session it ended on the way.
    pub fn admit(&mut self, a: Admission, rules: SeatRules) -> Admit {
        let now = a.now;
        let t = rules.timeouts;
        let mut ended = Vec::new();
        self.expire_account(&a.account, now, &t, &mut ended);

        let keys = self.by_account.get(&a.account).cloned().unwrap_or_default();
        let live = keys.iter().filter_map(|k| self.sessions.get(k));
        let (same, others) = match one_client::decide(live, &a.client, rules.one_client, a.takeover)
        {
            Clients::OtherClient { active } => {
                let active = self.sessions[&active].clone();
                return Admit {
                    outcome: AdmitOutcome::OtherClient { active },
                    ended,
                };
            }
            Clients::Admit { renews, replaces } => (renews, replaces),
        };

        let holds_seat = self.by_account.contains_key(&a.account);
        let in_use = self.by_account.len();
        let seat = seats::decide_after_ending(holds_seat, in_use, rules.max_sessions, || {
            ended.extend(self.expire_all(now, &t));
            self.by_account.len()
        });
        if seat == Seat::Full {
            let soonest_end = seats::soonest_end(self.sessions.values(), &t);
            return Admit {
                outcome: AdmitOutcome::LicenseFull { soonest_end },
                ended,
            };
        }

        // Other clients' sessions are not ended here: the new login may still be refused by
        // Faspex. The engine ends them once it is confirmed (`replaces`).
        let mut renewed_from = None;
        for k in same {
            self.remove_session(&k);
            renewed_from = Some(k);
        }
        let (started, last_activity) = timeouts::begins(now);
        let session = Session {
            key: a.key,
            account: a.account.into(),
            client: a.client,
            kind: a.kind,
            ip: a.ip,
            agent: a.agent.into(),
            started,
            last_activity,
            upstream_cookie: None,
            bearer: Vec::new(),
            account_kind: a.account_kind,
        };
        self.insert_session(session.clone());
        Admit {
            outcome: AdmitOutcome::Admitted {
                session,
                renewed_from,
                replaces: others,
            },
            ended,
        }
    }

    pub fn session(
        &mut self,
        key: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> SessionState {
        let Some(s) = self.sessions.get_mut(key) else {
            return SessionState::Unknown;
        };
        if let Some(why) = timeouts::expired(s, now, t) {
            return match self.remove_session(key) {
                Some(s) => SessionState::Ended(s, why),
                None => SessionState::Unknown,
            };
        }
        if activity && timeouts::touches(s, now) {
            s.last_activity = now;
            // A busy session is dirty already until the next flush: no key to copy.
            if !self.dirty_sessions.contains(key) {
                self.dirty_sessions.insert(key.clone());
            }
        }
        SessionState::Live(s.clone())
    }

    pub fn client_session(
        &mut self,
        account: &str,
        client: &ClientId,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> SessionState {
        let key = self.by_account.get(account).and_then(|keys| {
            keys.iter()
                .find(|k| self.sessions.get(*k).is_some_and(|s| &s.client == client))
                .cloned()
        });
        match key {
            Some(k) => self.session(&k, now, activity, t),
            None => SessionState::Unknown,
        }
    }

    pub fn set_upstream_cookie(&mut self, key: &SessionKey, cookie: Option<String>) -> bool {
        match self.sessions.get_mut(key) {
            Some(s) => {
                s.upstream_cookie = cookie.map(Into::into);
                self.dirty_sessions.insert(key.clone());
                true
            }
            None => false,
        }
    }

    pub fn add_bearer(&mut self, key: &SessionKey, bearer: SessionKey) -> bool {
        if !self.sessions.contains_key(key) {
            return false;
        }
        // A token is issued once; should it come back tied to another session, the newer tie wins.
        if let Some(owner) = self.by_bearer.get(&bearer).filter(|o| *o != key).cloned() {
            if let Some(o) = self.sessions.get_mut(&owner) {
                o.bearer.retain(|b| *b != bearer);
                self.dirty_sessions.insert(owner);
            }
        }
        let Some(s) = self.sessions.get_mut(key) else {
            return false;
        };
        s.bearer.retain(|b| *b != bearer);
        s.bearer.push(bearer.clone());
        let excess = s.bearer.len().saturating_sub(super::MAX_BEARER_TOKENS);
        let forgotten: Vec<SessionKey> = s.bearer.drain(..excess).collect();
        for f in forgotten {
            self.by_bearer.remove(&f);
        }
        self.by_bearer.insert(bearer, key.clone());
        self.dirty_sessions.insert(key.clone());
        true
    }

    pub fn bearer_session(
        &mut self,
        bearer: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> SessionState {
        match self.by_bearer.get(bearer).cloned() {
            Some(k) => self.session(&k, now, activity, t),
            None => SessionState::Unknown,
        }
    }

    pub fn end_session(&mut self, key: &SessionKey) -> Option<Session> {
        self.remove_session(key)
    }

    pub fn end_account(&mut self, account: &str) -> Vec<Session> {
        let keys = self.by_account.get(account).cloned().unwrap_or_default();
        keys.iter().filter_map(|k| self.remove_session(k)).collect()
    }

    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.values().cloned().collect()
    }

    // ----- failures and locks -----

    /// The lock in force on `key`: its own, or the account-wide one, whichever lasts longer.
    pub fn lock_in_force(&self, key: &LockKey, now: Timestamp) -> Option<Lock> {
        let wide = match key.ip {
            Some(_) => self.locks.get(&LockKey::account(key.account.clone())),
            None => None,
        };
        lockout::in_force(self.locks.get(key), wide, now)
    }

    /// Keep the number of windows under the bound before adding one, as the lockout's rule
    /// says which go ([`lockout::must_make_room`], [`lockout::evictable`],
    /// [`lockout::eviction_cutoff`]): windows that slid empty first, then the oldest evictable
    /// ones. Locks are a separate table, never evicted.
    fn make_room(&mut self, now: Timestamp, rules: &LockoutRules) {
        if !lockout::must_make_room(self.windows.len(), rules) {
            return;
        }
        let mut gone = Vec::new();
        for (k, w) in self.windows.iter_mut() {
            w.prune(now, rules.window);
            if w.is_empty() {
                gone.push(k.clone());
            }
        }
        for k in gone {
            self.windows.remove(&k);
            self.dirty_windows.insert(k);
        }
        if !lockout::must_make_room(self.windows.len(), rules) {
            return;
        }
        // The cut-off comes from the timestamps alone; only the evicted keys are cloned.
        let mut times: Vec<Timestamp> = self
            .windows
            .values()
            .filter(|w| lockout::evictable(w.in_flight.len()))
            .map(Window::last_failure)
            .collect();
        let Some((cutoff, n)) = lockout::eviction_cutoff(&mut times, self.windows.len(), rules)
        else {
            return;
        };
        drop(times);
        let mut left = n;
        let dirty = &mut self.dirty_windows;
        self.windows.retain(|k, w| {
            let evict =
                left > 0 && lockout::evictable(w.in_flight.len()) && w.last_failure() <= cutoff;
            if evict {
                left -= 1;
                dirty.insert(k.clone());
            }
            !evict
        });
    }

    pub fn begin_attempt(
        &mut self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> AttemptStart {
        self.begin_attempt_locking(key, now, rules).0
    }

    /// [`Tables::begin_attempt`], and whether it placed a lock (to be written through).
    pub fn begin_attempt_locking(
        &mut self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> (AttemptStart, bool) {
        if let Some(lock) = self.lock_in_force(key, now) {
            return (AttemptStart::Locked(lock), false);
        }
        if !self.windows.contains_key(key) {
            self.make_room(now, &rules);
        }
        let w = self.windows.entry(key.clone()).or_default();
        let before = w.failures.len();
        w.prune(now, rules.window);
        if w.failures.len() != before {
            self.dirty_windows.insert(key.clone());
        }
        let failures = w.failures.make_contiguous();
        match lockout::before_check(key, failures, w.in_flight.len(), now, &rules) {
            BeforeCheck::Proceed => {}
            BeforeCheck::Busy => return (AttemptStart::Busy, false),
            decision => {
                let sources = std::mem::take(&mut w.sources);
                w.clear_failures();
                self.dirty_windows.insert(key.clone());
                self.drop_if_empty(key);
                if let BeforeCheck::Lock(mut lock) = decision {
                    lock.sources = sources;
                    self.locks.insert(key.clone(), lock.clone());
                    self.dirty_locks.insert(key.clone());
                    return (AttemptStart::Locked(lock), true);
                }
                return self.begin_attempt_locking(key, now, rules);
            }
        }
        self.next_ticket += 1;
        let id = self.next_ticket;
        w.in_flight.push((id, lockout::ticket_expires(now, &rules)));
        (
            AttemptStart::Proceed(AttemptTicket {
                key: key.clone(),
                id,
                account_kind: AccountKind::default(),
                source: None,
            }),
            false,
        )
    }

    pub fn finish_attempt(
        &mut self,
        ticket: AttemptTicket,
        result: AttemptResult,
        now: Timestamp,
        rules: LockoutRules,
    ) -> AttemptEnd {
        let key = ticket.key;
        let ticket_kind = ticket.account_kind;
        if let Some(w) = self.windows.get_mut(&key) {
            w.in_flight.retain(|&(id, _)| id != ticket.id);
            if w.in_flight.is_empty() {
                w.in_flight = Vec::new();
            }
        }
        // An administrator locked the account while the check ran: that lock is the answer.
        if let Some(lock) = self.lock_in_force(&key, now) {
            self.drop_if_empty(&key);
            return AttemptEnd::AlreadyLocked(lock);
        }
        let end = if !lockout::counts_failure(result) {
            AttemptEnd::Done
        } else {
            if !self.windows.contains_key(&key) {
                // Its window went (an unlock, or it was evicted) while the check ran: count the
                // failure in a new one.
                self.make_room(now, &rules);
            }
            let w = self.windows.entry(key.clone()).or_default();
            w.prune(now, rules.window);
            w.failures.push_back(now);
            if let Some(ip) = ticket.source {
                lockout::remember_source(&mut w.sources, ip);
            }
            let kept = lockout::failures_kept(&rules);
            while w.failures.len() > kept {
                w.failures.pop_front();
            }
            let failures = w.failures.len() as u32;
            self.dirty_windows.insert(key.clone());
            match lockout::after_failure(&key, failures, now, &rules, ticket_kind) {
                Some(mut lock) => {
                    lock.sources = std::mem::take(&mut w.sources);
                    w.clear_failures();
                    self.locks.insert(key.clone(), lock.clone());
                    self.dirty_locks.insert(key.clone());
                    AttemptEnd::Locked(lock)
                }
                None => AttemptEnd::Counted { failures },
            }
        };
        self.drop_if_empty(&key);
        end
    }

    fn drop_if_empty(&mut self, key: &LockKey) {
        if self.windows.get(key).is_some_and(Window::is_empty) {
            self.windows.remove(key);
            self.dirty_windows.insert(key.clone());
        }
    }

    pub fn lock_account(
        &mut self,
        account: &str,
        kind: AccountKind,
        now: Timestamp,
        until: Timestamp,
    ) -> Lock {
        let key = LockKey::account(account);
        let failures = self
            .windows
            .get(&key)
            .map_or(0, |w| w.failures.len() as u32);
        let lock = lockout::admin_lock(account, kind, failures, self.locks.get(&key), now, until);
        self.locks.insert(key.clone(), lock.clone());
        self.dirty_locks.insert(key);
        lock
    }

    pub fn unlock_account(&mut self, account: &str) -> Unlocked {
        let lock_keys: Vec<LockKey> = self
            .locks
            .keys()
            .filter(|k| k.account == account)
            .cloned()
            .collect();
        let mut lifted = self.remove_locks(lock_keys);
        let window_keys: Vec<LockKey> = self
            .windows
            .keys()
            .filter(|k| k.account == account)
            .cloned()
            .collect();
        let mut windows_cleared = 0;
        for k in window_keys {
            if let Some(w) = self.windows.get_mut(&k) {
                if !w.failures.is_empty() {
                    windows_cleared += 1;
                }
                // Keep reservations so their tickets still find the window.
                w.clear_failures();
                if w.is_empty() {
                    self.windows.remove(&k);
                }
            }
            self.dirty_windows.insert(k);
        }
        lifted.sort_by(|a, b| a.key.cmp(&b.key));
        Unlocked {
            lifted,
            windows_cleared,
        }
    }

    fn remove_locks(&mut self, keys: Vec<LockKey>) -> Vec<Lock> {
        let mut removed = Vec::new();
        for k in keys {
            if let Some(l) = self.locks.remove(&k) {
                removed.push(l);
            }
            self.dirty_locks.insert(k);
        }
        removed
    }

    pub fn lockouts(&self, now: Timestamp) -> Vec<Lock> {
        let mut v: Vec<Lock> = self
            .locks
            .values()
            .filter(|l| lockout::holds(l, now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    pub fn sweep(&mut self, now: Timestamp, t: Timeouts, window: Duration) -> Swept {
        let ended = self.expire_all(now, &t);
        let lifted_keys: Vec<LockKey> = self
            .locks
            .values()
            .filter(|l| !lockout::holds(l, now))
            .map(|l| l.key.clone())
            .collect();
        let lifted = self.remove_locks(lifted_keys);
        let mut dropped = Vec::new();
        if now < self.next_window_scan {
            return Swept {
                ended,
                lifted,
                windows_dropped: 0,
            };
        }
        self.next_window_scan = now + WINDOW_SCAN_EVERY;
        for (k, w) in self.windows.iter_mut() {
            let before = w.failures.len();
            w.prune(now, window);
            if w.is_empty() {
                dropped.push(k.clone());
            } else if w.failures.len() != before {
                self.dirty_windows.insert(k.clone());
            }
        }
        for k in &dropped {
            self.windows.remove(k);
            self.dirty_windows.insert(k.clone());
        }
        Swept {
            ended,
            lifted,
            windows_dropped: dropped.len(),
        }
    }

    pub fn counts(&self, now: Timestamp) -> Counts {
        let locked: HashSet<&str> = self
            .locks
            .values()
            .filter(|l| lockout::holds(l, now))
            .map(|l| l.key.account.as_str())
            .collect();
        let local_locked: HashSet<&str> = self
            .locks
            .values()
            .filter(|l| lockout::holds(l, now) && l.account_kind == AccountKind::Local)
            .map(|l| l.key.account.as_str())
            .collect();
        let local_seats = self
            .by_account
            .values()
            .filter(|keys| {
                keys.first()
                    .and_then(|k| self.sessions.get(k))
                    .is_some_and(|s| s.account_kind == AccountKind::Local)
            })
            .count();
        Counts {
            seats: self.by_account.len(),
            sessions: self.sessions.len(),
            accounts_locked: locked.len(),
            local_seats,
            local_accounts_locked: local_locked.len(),
            locks: self
                .locks
                .values()
                .filter(|l| lockout::holds(l, now))
                .count(),
            tracked_windows: self.windows.len(),
        }
    }

    // ----- persistence -----

    /// Take what changed since the last call, as current values.
    pub fn take_dirty(&mut self) -> Dirty {
        let sessions = self
            .dirty_sessions
            .drain()
            .map(|k| {
                let v = self.sessions.get(&k).cloned();
                (k, v)
            })
            .collect();
        let locks = self
            .dirty_locks
            .drain()
            .map(|k| (k.encode(), self.locks.get(&k).cloned()))
            .collect();
        let windows = self
            .dirty_windows
            .drain()
            .map(|k| {
                let v = self
                    .windows
                    .get(&k)
                    .filter(|w| !w.failures.is_empty())
                    .map(|w| w.failures.iter().copied().collect());
                (k.encode(), v)
            })
            .collect();
        Dirty {
            sessions,
            locks,
            windows,
        }
    }

    /// A write failed: mark what it carried dirty again, so the next write retries it.
    pub fn redirty(&mut self, d: &Dirty) {
        for (k, _) in &d.sessions {
            self.dirty_sessions.insert(k.clone());
        }
        for (k, _) in &d.locks {
            self.dirty_locks.insert(decode_lock_key(k));
        }
        for (k, _) in &d.windows {
            self.dirty_windows.insert(decode_lock_key(k));
        }
    }
}

/// Records as a store keeps them: sessions, locks, failure windows.
pub type Records = (Vec<Session>, Vec<Lock>, Vec<(LockKey, Vec<Timestamp>)>);

/// Records whose account names are re-keyed with `rekey` (the store's schema step from names as
/// typed to prepared names). Where two accounts become one, no lock is lost ([`lockout::merge`]
/// keeps one); failure windows are joined (a window that then holds the threshold locks at the next
/// attempt, see [`Tables::begin_attempt`]); sessions keep their keys and tokens, now under the
/// one account.
pub fn rekey(records: Records, rekey: impl Fn(&str) -> String) -> Records {
    let (sessions, locks, windows) = records;
    let sessions = sessions
        .into_iter()
        .map(|mut s| {
            s.account = rekey(&s.account).into();
            s
        })
        .collect();
    let mut merged: BTreeMap<LockKey, Lock> = BTreeMap::new();
    for mut l in locks {
        l.key.account = rekey(&l.key.account);
        match merged.remove(&l.key) {
            None => {
                merged.insert(l.key.clone(), l);
            }
            Some(other) => {
                let kept = lockout::merge(l, other);
                merged.insert(kept.key.clone(), kept);
            }
        }
    }
    let mut joined: BTreeMap<LockKey, Vec<Timestamp>> = BTreeMap::new();
    for (mut k, f) in windows {
        k.account = rekey(&k.account);
        joined.entry(k).or_default().extend(f);
    }
    let windows = joined
        .into_iter()
        .map(|(k, mut f)| {
            f.sort();
            (k, f)
        })
        .collect();
    (sessions, merged.into_values().collect(), windows)
}

/// The inverse of [`LockKey::encode`].
pub fn decode_lock_key(s: &str) -> LockKey {
    match s.split_once('\u{0}') {
        Some((account, ip)) => LockKey {
            account: account.to_owned(),
            ip: ip.parse().ok(),
        },
        None => LockKey::account(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the embedded store's writer does when a commit fails: the changes go back to dirty,
    /// and the next commit carries their current values.
    #[test]
    fn a_failed_write_is_carried_by_the_next() {
        let mut t = Tables::default();
        let now = Timestamp::from_millis(1_000_000);
        let hour = Duration::from_secs(3600);
        let lock = t.lock_account("ann", AccountKind::Directory, now, now + hour);
        let failed = t.take_dirty();
        assert_eq!(failed.locks.len(), 1);
        assert!(t.take_dirty().is_empty());
        t.redirty(&failed);
        let later = t.lock_account("ann", AccountKind::Directory, now, now + 2 * hour);
        assert_ne!(later, lock);
        let retried = t.take_dirty();
        assert_eq!(retried.locks, vec![(lock.key.encode(), Some(later))]);
    }
}
