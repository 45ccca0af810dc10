//! The per-gateway view of sessions (`store.redis.session_cache`, `store.redis.outage_grace`):
//! what spares a request on a live session a Redis round trip, and what keeps such sessions
//! working for a while when Redis cannot be reached.
//!
//! - A session Redis confirmed live less than `session_cache` ago is answered from here. So a
//!   kick, lock or logout on another gateway takes effect here within `session_cache`, the bound
//!   the contract states; one on this gateway takes effect at once (its entries are dropped).
//! - Touches (activity) are coalesced with the same bound: a request answered from here does not
//!   write its activity; the next lookup that goes to Redis (at most `session_cache` later, on
//!   the session's next request) carries it. A session's last activity in Redis therefore lags
//!   the truth by less than `session_cache`, and it ends at most that much early.
//! - When Redis fails, a session this gateway confirmed less than `outage_grace` ago, and whose
//!   deadline (as [`crate::policy::timeouts`] computes it) has not passed, keeps working. A logout
//!   or kick of such a session is answered from here (Faspex is logged out once) and queued; it is
//!   replayed when Redis answers again. Ending a session twice ends it once, so a replay has no
//!   second effect. Nothing is ever admitted, counted or unlocked from here.
//!
//! Time is the caller's `now` (the engine's clock), so tests move it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::policy::timeouts;
use crate::store::{ClientId, Session, SessionKey, SessionState, Timeouts};

/// The most entries the view keeps; beyond it, lookups simply go to Redis.
const MAX_ENTRIES: usize = 100_000;

/// How a session was looked up: each way is cached on its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    Key(Arc<str>),
    Client(String, Arc<str>),
    Bearer(Arc<str>),
}

impl Lookup {
    pub(crate) fn key(k: &SessionKey) -> Self {
        Lookup::Key(Arc::clone(&k.0))
    }
    pub(crate) fn client(account: &str, c: &ClientId) -> Self {
        Lookup::Client(account.to_owned(), Arc::clone(&c.0))
    }
    pub(crate) fn bearer(b: &SessionKey) -> Self {
        Lookup::Bearer(Arc::clone(&b.0))
    }
}

struct Entry {
    session: Session,
    /// When Redis last said it was live (the engine's clock).
    confirmed: Timestamp,
}

/// What the view says about one lookup.
pub(crate) enum Answer {
    /// Live, confirmed recently enough: no round trip.
    Fresh(Session),
    /// Ask Redis.
    Ask,
}

/// The view. See the module documentation.
pub(crate) struct SessionCache {
    fresh: Duration,
    grace: Duration,
    entries: Mutex<HashMap<Lookup, Entry>>,
    /// Ends answered from here during an outage, to be sent when Redis is back.
    queued_ends: Mutex<Vec<SessionKey>>,
    /// Lookups whose activity was answered from here during an outage, to be written when Redis
    /// is back.
    queued_touches: Mutex<Vec<(Lookup, Timeouts)>>,
}

impl SessionCache {
    pub(crate) fn new(fresh: Duration, grace: Duration) -> Self {
        Self {
            fresh,
            grace,
            entries: Mutex::new(HashMap::new()),
            queued_ends: Mutex::new(Vec::new()),
            queued_touches: Mutex::new(Vec::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Lookup, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session under `lookup` at `now`, when Redis confirmed it less than `session_cache` ago
    /// and its deadline is still ahead. With `activity`, its last activity here becomes `now`.
    pub(crate) fn get(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Answer {
        if self.fresh.is_zero() {
            return Answer::Ask;
        }
        let mut entries = self.entries();
        match entries.get_mut(lookup) {
            Some(e)
                if now >= e.confirmed
                    && now.since(e.confirmed) < self.fresh
                    && timeouts::expired(&e.session, now, t).is_none() =>
            {
                if activity && timeouts::touches(&e.session, now) {
                    e.session.last_activity = now;
                }
                Answer::Fresh(e.session.clone())
            }
            _ => Answer::Ask,
        }
    }

    /// Take Redis's answer for `lookup` at `now`.
    pub(crate) fn learn(&self, lookup: Lookup, now: Timestamp, state: &SessionState) {
        let mut entries = self.entries();
        match state {
            SessionState::Live(s) => {
                if entries.len() >= MAX_ENTRIES && !entries.contains_key(&lookup) {
                    let before = now;
                    let (fresh, grace) = (self.fresh, self.grace);
                    entries.retain(|_, e| {
                        before.since(e.confirmed) < fresh.max(grace) && before >= e.confirmed
                    });
                    if entries.len() >= MAX_ENTRIES {
                        return;
                    }
                }
                entries.insert(
                    lookup,
                    Entry {
                        session: s.clone(),
                        confirmed: now,
                    },
                );
            }
            SessionState::Ended(s, _) => {
                let key = s.key.clone();
                entries.remove(&lookup);
                entries.retain(|_, e| e.session.key != key);
            }
            SessionState::Unknown => {
                entries.remove(&lookup);
            }
        }
    }

    /// Redis failed on `lookup` at `now`: the session, if this gateway confirmed it within
    /// `outage_grace` and its deadline (with the activity seen here) is still ahead. With
    /// `activity`, its last activity here becomes `now`, and the touch is queued for Redis.
    pub(crate) fn in_grace(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Option<Session> {
        let mut entries = self.entries();
        let e = entries.get_mut(lookup)?;
        if now < e.confirmed
            || now.since(e.confirmed) >= self.grace
            || timeouts::expired(&e.session, now, t).is_some()
        {
            return None;
        }
        if activity && timeouts::touches(&e.session, now) {
            e.session.last_activity = now;
            let mut touched = self
                .queued_touches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !touched.iter().any(|(l, _)| l == lookup) {
                touched.push((lookup.clone(), *t));
            }
        }
        Some(e.session.clone())
    }

    /// The touches queued during an outage, taken out.
    pub(crate) fn take_touches(&self) -> Vec<(Lookup, Timeouts)> {
        std::mem::take(
            &mut *self
                .queued_touches
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Forget every entry of session `key` (it ended here).
    pub(crate) fn forget_session(&self, key: &SessionKey) {
        self.entries().retain(|_, e| &e.session.key != key);
    }

    /// Forget every entry of `account`'s sessions (kicked, replaced, locked).
    pub(crate) fn forget_account(&self, account: &str) {
        self.entries().retain(|_, e| *e.session.account != *account);
    }

    /// The cached session `key`, for a logout answered during an outage; it is forgotten here
    /// and its end queued.
    pub(crate) fn end_in_outage(&self, key: &SessionKey) -> Option<Session> {
        let mut entries = self.entries();
        let s = entries
            .values()
            .find(|e| &e.session.key == key)
            .map(|e| e.session.clone())?;
        entries.retain(|_, e| &e.session.key != key);
        drop(entries);
        self.queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.clone());
        Some(s)
    }

    /// The ends queued during an outage, taken out (the caller puts back what fails).
    pub(crate) fn take_queued(&self) -> Vec<SessionKey> {
        std::mem::take(&mut *self.queued_ends.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Put back ends that could not be sent.
    pub(crate) fn requeue(&self, keys: Vec<SessionKey>) {
        self.queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys);
    }

    /// Whether any end or touch waits to be sent.
    pub(crate) fn has_queued(&self) -> bool {
        !self
            .queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || !self
                .queued_touches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }
}
