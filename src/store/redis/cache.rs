//! The per-gateway view of sessions (`store.redis.session_cache`, `store.redis.outage_grace`):
//! what spares a request on a live session a Redis round trip, and what keeps such sessions
//! working for a while when Redis cannot be reached.
//!
//! - A session Redis confirmed live less than `session_cache` ago is answered from here. So a
//!   kick, lock or logout on another gateway takes effect here within `session_cache`, the bound
//!   the contract states; one on this gateway takes effect at once (its entries are dropped).
//! - A busy session is confirmed again before its view goes stale: the first request past half
//!   of `session_cache` asks Redis, while the requests beside it are still answered from here.
//!   One request per busy session waits for Redis, once per half `session_cache` at most,
//!   instead of every request that comes while the view is stale (on a loaded host such a
//!   round trip takes milliseconds, and the burst of requests behind it was most of the
//!   gateway's slowest hundredth on Redis). A view older than `session_cache` is never served.
//! - A view Redis answered before this gateway ended, replaced or changed one of its sessions is
//!   not kept: every forget moves a generation, and an answer is kept only when none happened
//!   since its lookup began. So a kick here takes effect at once even for a lookup in flight.
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
    /// A request was sent to confirm it again ([`Answer::Refresh`]); the others are answered
    /// from here meanwhile. Cleared by the answer (a new entry); a refresh that never answers
    /// (its request was dropped) only means that the entry goes stale as it would have.
    refreshing: bool,
}

/// The entries, and how many forgets there have been.
#[derive(Default)]
struct View {
    entries: HashMap<Lookup, Entry>,
    generation: u64,
}

/// Where a lookup stood when it began: [`SessionCache::learn`] keeps its answer only when no
/// session was forgotten since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation(u64);

/// What the view says about one lookup.
pub(crate) enum Answer {
    /// Live, confirmed recently enough: no round trip.
    Fresh(Session),
    /// Live and still fresh, but past half of `session_cache`: this caller alone asks Redis
    /// again, and falls back on the session given when Redis cannot answer (it is still within
    /// `session_cache`).
    Refresh(Session, Generation),
    /// Ask Redis.
    Ask(Generation),
}

/// The view. See the module documentation.
pub(crate) struct SessionCache {
    fresh: Duration,
    grace: Duration,
    view: Mutex<View>,
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
            view: Mutex::new(View::default()),
            queued_ends: Mutex::new(Vec::new()),
            queued_touches: Mutex::new(Vec::new()),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session under `lookup` at `now`, when Redis confirmed it less than `session_cache` ago
    /// and its deadline is still ahead: [`Answer::Fresh`], or [`Answer::Refresh`] to the first
    /// caller past half of `session_cache`. With `activity`, its last activity here becomes
    /// `now`.
    pub(crate) fn get(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Answer {
        let mut view = self.view();
        let generation = Generation(view.generation);
        if self.fresh.is_zero() {
            return Answer::Ask(generation);
        }
        match view.entries.get_mut(lookup) {
            Some(e)
                if now >= e.confirmed
                    && now.since(e.confirmed) < self.fresh
                    && timeouts::expired(&e.session, now, t).is_none() =>
            {
                if activity && timeouts::touches(&e.session, now) {
                    e.session.last_activity = now;
                }
                if !e.refreshing && now.since(e.confirmed) >= self.fresh / 2 {
                    e.refreshing = true;
                    return Answer::Refresh(e.session.clone(), generation);
                }
                Answer::Fresh(e.session.clone())
            }
            _ => Answer::Ask(generation),
        }
    }

    /// Where lookups stand now (for a lookup that does not go through [`SessionCache::get`]).
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.view().generation)
    }

    /// Take Redis's answer for `lookup` at `now`, to a lookup that began at `since`. A live
    /// session is kept only when no session was forgotten here since.
    pub(crate) fn learn(
        &self,
        lookup: Lookup,
        now: Timestamp,
        state: &SessionState,
        since: Generation,
    ) {
        let mut view = self.view();
        let stale = view.generation != since.0;
        let entries = &mut view.entries;
        match state {
            SessionState::Live(_) if stale => {
                // Redis may have answered before this gateway ended or changed the session.
                entries.remove(&lookup);
            }
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
                        refreshing: false,
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
        let mut view = self.view();
        let e = view.entries.get_mut(lookup)?;
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

    /// Forget every entry of session `key` (it ended or changed here).
    pub(crate) fn forget_session(&self, key: &SessionKey) {
        let mut view = self.view();
        view.generation += 1;
        view.entries.retain(|_, e| &e.session.key != key);
    }

    /// Forget every entry of `account`'s sessions (kicked, replaced, locked).
    pub(crate) fn forget_account(&self, account: &str) {
        let mut view = self.view();
        view.generation += 1;
        view.entries.retain(|_, e| *e.session.account != *account);
    }

    /// The cached session `key`, for a logout answered during an outage; it is forgotten here
    /// and its end queued.
    pub(crate) fn end_in_outage(&self, key: &SessionKey) -> Option<Session> {
        let mut view = self.view();
        let s = view
            .entries
            .values()
            .find(|e| &e.session.key == key)
            .map(|e| e.session.clone())?;
        view.generation += 1;
        view.entries.retain(|_, e| &e.session.key != key);
        drop(view);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountKind, ClientKind};

    const SEC: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);
    const T: Timeouts = Timeouts {
        idle: HOUR,
        api_idle: HOUR,
        absolute: None,
    };

    fn t0() -> Timestamp {
        Timestamp::from_millis(1_000_000)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn session(key: &str, account: &str, at: Timestamp) -> Session {
        Session {
            key: SessionKey(key.into()),
            account: account.into(),
            client: ClientId(format!("client-{key}").into()),
            kind: ClientKind::Browser,
            ip: "192.0.2.1".parse().unwrap(),
            agent: "test".into(),
            started: at,
            last_activity: at,
            upstream_cookie: None,
            bearer: Vec::new(),
            account_kind: AccountKind::Directory,
        }
    }

    /// What `get` says, as a letter: F(resh), R(efresh) or A(sk).
    fn says(c: &SessionCache, l: &Lookup, now: Timestamp) -> char {
        match c.get(l, now, true, &T) {
            Answer::Fresh(_) => 'F',
            Answer::Refresh(..) => 'R',
            Answer::Ask(_) => 'A',
        }
    }

    fn live(c: &SessionCache, l: &Lookup, now: Timestamp) {
        let since = c.generation();
        let s = session("k1", "ann", t0());
        c.learn(l.clone(), now, &SessionState::Live(s), since);
    }

    #[test]
    fn one_caller_refreshes_a_busy_session_past_half_of_session_cache() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let l = Lookup::Key("k1".into());
        assert_eq!(says(&c, &l, t0()), 'A', "nothing learned yet");
        live(&c, &l, t0());
        let seen: String = [0, 1, 499]
            .iter()
            .map(|&m| says(&c, &l, t0() + ms(m)))
            .collect();
        assert_eq!(seen, "FFF", "within the first half, no round trip");
        // Past half: the first caller alone asks; the others are answered from the view, up to
        // `session_cache` and not one millisecond past it.
        let seen: String = [500, 500, 600, 999, 1000, 1001]
            .iter()
            .map(|&m| says(&c, &l, t0() + ms(m)))
            .collect();
        assert_eq!(seen, "RFFFAA");
        // The refresh's answer (its lookup began at 500 ms) starts the view again.
        live(&c, &l, t0() + ms(500));
        let seen: String = [999, 1000, 1499, 1500]
            .iter()
            .map(|&m| says(&c, &l, t0() + ms(m)))
            .collect();
        assert_eq!(seen, "FRFA");
        // A refresh that never answered only lets the view go stale, as it would have.
        live(&c, &l, t0() + ms(2000));
        assert_eq!(says(&c, &l, t0() + ms(2600)), 'R');
        assert_eq!(says(&c, &l, t0() + ms(2999)), 'F');
        assert_eq!(says(&c, &l, t0() + ms(3000)), 'A');
    }

    #[test]
    fn a_refresh_carries_the_session_and_the_activity_seen_here() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let l = Lookup::Key("k1".into());
        live(&c, &l, t0());
        match c.get(&l, t0() + ms(700), true, &T) {
            Answer::Refresh(s, _) => {
                assert_eq!(&*s.key.0, "k1");
                assert_eq!(
                    s.last_activity,
                    t0() + ms(700),
                    "the activity is taken here too"
                );
            }
            _ => panic!("past half, the first caller refreshes"),
        }
        // A session past its deadline is never answered from the view, refresh or not.
        let short = Timeouts { idle: ms(600), ..T };
        let c = SessionCache::new(SEC, 300 * SEC);
        live(&c, &l, t0());
        assert!(matches!(
            c.get(&l, t0() + ms(700), false, &short),
            Answer::Ask(_)
        ));
    }

    #[test]
    fn an_answer_from_before_a_forget_here_is_not_kept() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let l = Lookup::Key("k1".into());
        let s = session("k1", "ann", t0());
        for forget in [
            (|c: &SessionCache| c.forget_account("ann")) as fn(&SessionCache),
            |c| c.forget_session(&SessionKey("k1".into())),
            |c| c.forget_session(&SessionKey("another".into())),
            |c| {
                c.end_in_outage(&SessionKey("k1".into()));
            },
        ] {
            // A lookup begins (Redis still says live), the session is kicked here, then Redis's
            // answer arrives: it must not put the session back.
            let Answer::Ask(since) = c.get(&l, t0(), true, &T) else {
                panic!("nothing in the view yet");
            };
            live(&c, &l, t0());
            forget(&c);
            c.learn(l.clone(), t0(), &SessionState::Live(s.clone()), since);
            assert_eq!(says(&c, &l, t0() + ms(1)), 'A', "the answer was not kept");
            // A lookup that began after the forget is kept.
            live(&c, &l, t0());
            assert_eq!(says(&c, &l, t0() + ms(1)), 'F');
            c.forget_account("ann");
        }
    }

    #[test]
    fn with_no_session_cache_every_lookup_asks() {
        let c = SessionCache::new(Duration::ZERO, 300 * SEC);
        let l = Lookup::Key("k1".into());
        live(&c, &l, t0());
        assert_eq!(says(&c, &l, t0()), 'A');
        assert_eq!(says(&c, &l, t0() + ms(1)), 'A');
    }
}
