//! The per-gateway view of sessions (`store.redis.session_cache`, `store.redis.outage_grace`):
//! what spares a request on a live session a Redis round trip, and what keeps such sessions
//! working for a while when Redis cannot be reached.
//!
//! - A session Redis confirmed live less than `session_cache` ago is answered from here. So a
//!   kick, lock or logout on another gateway takes effect here within `session_cache`, the bound
//!   the contract states; one on this gateway takes effect at once (its entries are dropped).
//! - A busy session is confirmed again before its view goes stale: the first request past half
//!   of `session_cache` asks Redis, while the requests beside it are still answered from here.
//!   One request per busy session (per way of looking it up: key, client, bearer token) waits
//!   for Redis, once per half `session_cache` at most, instead of every request that comes while
//!   the view is stale (on a loaded host such a round trip takes milliseconds, and the burst of
//!   requests behind it made a third to a half of the gateway's slowest hundredth on Redis). If
//!   the refresh cannot reach Redis, its request is answered from the view when the view is
//!   still within `session_cache` at the time it gives up and nothing forgotten meanwhile names
//!   it ([`SessionCache::still_fresh`]); otherwise as any lookup Redis did not answer. A view older
//!   than `session_cache` is never served.
//! - A view Redis answered before this gateway ended, replaced or changed one of its sessions is
//!   not kept: every forget is numbered and remembered (the last [`FORGETS_KEPT`]), and a live
//!   answer is kept only when no forget since its lookup began names its session, its account or
//!   one of its bearer tokens. So a kick here takes effect at once even against a lookup in
//!   flight. The writes that end, replace or change sessions forget through [`ForgetOnDrop`], so
//!   even one whose future is dropped after Redis ran it (or that failed) forgets. The sessions
//!   an admission or the sweep end because their deadline passed are forgotten once the answer
//!   names them; until then the view refuses them anyway, as it checks every deadline.
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

/// How many of the latest forgets are remembered; an answer to a lookup older than all of them
/// is not kept.
const FORGETS_KEPT: usize = 256;

/// What a forget named.
#[derive(Clone, Debug)]
pub(crate) enum Forgot {
    Session(SessionKey),
    Account(Arc<str>),
    /// A bearer token (its key), which may have moved to another session: the session that held
    /// it is forgotten.
    Bearer(SessionKey),
}

impl Forgot {
    fn covers(&self, s: &Session) -> bool {
        match self {
            Forgot::Session(k) => s.key == *k,
            Forgot::Account(a) => s.account == *a,
            Forgot::Bearer(b) => s.bearer.contains(b),
        }
    }
}

/// The entries, how many forgets there have been, and the latest of them.
#[derive(Default)]
struct View {
    entries: HashMap<Lookup, Entry>,
    generation: u64,
    forgets: std::collections::VecDeque<(u64, Forgot)>,
}

impl View {
    /// Forget the entries `what` names, and remember that it was forgotten.
    fn forget(&mut self, what: Forgot) {
        self.entries.retain(|_, e| !what.covers(&e.session));
        self.generation += 1;
        self.forgets.push_back((self.generation, what));
        if self.forgets.len() > FORGETS_KEPT {
            self.forgets.pop_front();
        }
    }

    /// Whether a forget since `since` may cover `s`: one names it, or they are not all known.
    fn forgotten_since(&self, since: Generation, s: &Session) -> bool {
        if self.generation == since.0 {
            return false;
        }
        match self.forgets.front() {
            Some(&(oldest, _)) if oldest <= since.0 + 1 => self
                .forgets
                .iter()
                .any(|(g, what)| *g > since.0 && what.covers(s)),
            _ => true,
        }
    }
}

/// Where a lookup stood when it began: [`SessionCache::learn`] keeps its answer only when
/// nothing forgotten since names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Generation(u64);

/// What the view says about one lookup.
pub(crate) enum Answer {
    /// Live, confirmed recently enough: no round trip.
    Fresh(Session),
    /// Live and still fresh, but past half of `session_cache`: this caller alone asks Redis
    /// again (when Redis cannot answer, see [`SessionCache::still_fresh`]).
    Refresh(Generation),
    /// Ask Redis.
    Ask(Generation),
}

/// Forgets what it names when dropped: made before a write that ends sessions, so that their view
/// is forgotten however the write's future ends (answered, failed, or dropped after Redis ran
/// it).
pub(crate) struct ForgetOnDrop<'a> {
    cache: &'a SessionCache,
    what: Forgot,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.cache.view().forget(self.what.clone());
    }
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
                    return Answer::Refresh(generation);
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
    /// session is kept only when nothing forgotten here since names it (Redis may have answered
    /// before this gateway ended or changed it).
    pub(crate) fn learn(
        &self,
        lookup: Lookup,
        now: Timestamp,
        state: &SessionState,
        since: Generation,
    ) {
        let mut view = self.view();
        if let SessionState::Live(s) = state {
            if view.forgotten_since(since, s) {
                return;
            }
        }
        let entries = &mut view.entries;
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

    /// A refresh of `lookup` (begun at `since`) failed, and it is now `at`: the session, if the
    /// view still holds it, is still within `session_cache` and its deadline, and nothing
    /// forgotten since names it.
    pub(crate) fn still_fresh(
        &self,
        lookup: &Lookup,
        since: Generation,
        at: Timestamp,
        t: &Timeouts,
    ) -> Option<Session> {
        let view = self.view();
        let e = view.entries.get(lookup)?;
        let fresh = at >= e.confirmed
            && at.since(e.confirmed) < self.fresh
            && timeouts::expired(&e.session, at, t).is_none()
            && !view.forgotten_since(since, &e.session);
        fresh.then(|| e.session.clone())
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
        self.view().forget(Forgot::Session(key.clone()));
    }

    /// Forget every entry of `account`'s sessions (kicked, replaced, locked).
    pub(crate) fn forget_account(&self, account: &str) {
        self.view().forget(Forgot::Account(account.into()));
    }

    /// A guard that forgets `what` when dropped (see [`ForgetOnDrop`]).
    pub(crate) fn forget_on_drop(&self, what: Forgot) -> ForgetOnDrop<'_> {
        ForgetOnDrop { cache: self, what }
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
        view.forget(Forgot::Session(key.clone()));
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
        let Answer::Refresh(since) = c.get(&l, t0() + ms(700), true, &T) else {
            panic!("past half, the first caller refreshes");
        };
        match c.get(&l, t0() + ms(800), false, &T) {
            Answer::Fresh(s) => {
                assert_eq!(&*s.key.0, "k1");
                assert_eq!(
                    s.last_activity,
                    t0() + ms(700),
                    "the refresh's activity is kept here"
                );
            }
            _ => panic!("the others are answered from the view"),
        }
        // The refresh failed: its caller is answered from the view while that is still fresh,
        // at the time it gave up.
        let held = c
            .still_fresh(&l, since, t0() + ms(999), &T)
            .map(|s| s.last_activity);
        assert_eq!(held, Some(t0() + ms(700)));
        assert!(c.still_fresh(&l, since, t0() + ms(1000), &T).is_none());
        // Not once the session was forgotten here meanwhile (its entry is gone), nor when
        // another entry of it was learned after such a forget.
        c.forget_account("ann");
        live(&c, &l, t0() + ms(10));
        assert!(c.still_fresh(&l, since, t0() + ms(900), &T).is_none());
        assert!(c
            .still_fresh(&l, c.generation(), t0() + ms(900), &T)
            .is_some());
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
            |c| {
                c.end_in_outage(&SessionKey("k1".into()));
            },
            |c| drop(c.forget_on_drop(Forgot::Account("ann".into()))),
            |c| drop(c.forget_on_drop(Forgot::Session(SessionKey("k1".into())))),
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
        // Forgets of other sessions and accounts leave the answer alone, as long as every
        // forget since the lookup began is remembered.
        let Answer::Ask(since) = c.get(&l, t0(), true, &T) else {
            panic!("nothing in the view yet");
        };
        c.forget_session(&SessionKey("another".into()));
        c.forget_account("bob");
        c.learn(l.clone(), t0(), &SessionState::Live(s.clone()), since);
        assert_eq!(says(&c, &l, t0() + ms(1)), 'F', "kept");
        c.forget_account("ann");
        let Answer::Ask(since) = c.get(&l, t0(), true, &T) else {
            panic!("forgotten");
        };
        for i in 0..FORGETS_KEPT {
            c.forget_account(&format!("user{i}"));
        }
        c.learn(l.clone(), t0(), &SessionState::Live(s.clone()), since);
        assert_eq!(
            says(&c, &l, t0() + ms(1)),
            'F',
            "the last {FORGETS_KEPT} are known"
        );
        c.forget_account("ann");
        let Answer::Ask(since) = c.get(&l, t0(), true, &T) else {
            panic!("forgotten");
        };
        for i in 0..=FORGETS_KEPT {
            c.forget_account(&format!("user{i}"));
        }
        c.learn(l.clone(), t0(), &SessionState::Live(s), since);
        assert_eq!(
            says(&c, &l, t0() + ms(1)),
            'A',
            "one forget too many to know: not kept"
        );
    }

    #[test]
    fn a_moved_bearer_token_and_a_kicked_account_reach_every_kind_of_lookup() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let token = SessionKey("b1".into());
        let mut holder = session("k1", "ann", t0());
        holder.bearer.push(token.clone());
        let lookups = [
            Lookup::bearer(&token),
            Lookup::client("ann", &holder.client),
            Lookup::key(&holder.key),
        ];
        for what in [
            Forgot::Bearer(token.clone()),
            Forgot::Account("ann".into()),
            Forgot::Session(holder.key.clone()),
        ] {
            for l in &lookups {
                let before = c.generation();
                c.learn(l.clone(), t0(), &SessionState::Live(holder.clone()), before);
                assert_eq!(says(&c, l, t0() + ms(1)), 'F');
                drop(c.forget_on_drop(what.clone()));
                assert_eq!(says(&c, l, t0() + ms(1)), 'A', "{what:?} forgets {l:?}");
                // An answer from before the forget (the token's old holder) is not kept.
                c.learn(l.clone(), t0(), &SessionState::Live(holder.clone()), before);
                assert_eq!(says(&c, l, t0() + ms(1)), 'A', "{what:?} keeps {l:?} out");
            }
        }
        // A token's move leaves a session that never held it alone.
        let other = session("k2", "bob", t0());
        let l = Lookup::key(&other.key);
        let before = c.generation();
        drop(c.forget_on_drop(Forgot::Bearer(token)));
        c.learn(l.clone(), t0(), &SessionState::Live(other), before);
        assert_eq!(says(&c, &l, t0() + ms(1)), 'F');
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
