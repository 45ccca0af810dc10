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
//!   it ([`SessionCache::still_fresh`]), and its activity is queued as an outage's is; otherwise
//!   as any lookup Redis did not answer. A refresh whose request is dropped, or fails otherwise,
//!   leaves the next request to refresh ([`Refreshing`]). A view older than `session_cache` is
//!   never served.
//! - One round trip at a time per lookup ([`Flight`]): the requests that find the view stale (or
//!   empty) while another request of the same lookup is on its way to Redis wait for that one
//!   ([`Answer::Wait`]) instead of asking Redis too, so a page's burst after a quiet second
//!   costs one round trip, not one per request, when Redis answers within `session_cache`.
//!   A waiter is then answered from the view as that answer left it, by the same rules as any
//!   other lookup (an answer not kept, such as one from before a forget here, a session Redis
//!   no longer has, or one already stale because Redis took `session_cache` or more to answer,
//!   leaves it to ask Redis itself, with what is left of the 5 s a client may wait on the
//!   store); when Redis could not be reached, as a lookup that failed
//!   ([`SessionCache::in_grace`]), without a second wait; and when the request it waited on was
//!   dropped, it asks.
//! - A view Redis answered before this gateway ended, replaced or changed one of its sessions is
//!   not kept: every forget is numbered and remembered (the last [`FORGETS_KEPT`]), and a live
//!   answer is kept only when no forget since its lookup began names its session, its account or
//!   one of its bearer tokens. So a kick here takes effect at once even against a lookup in
//!   flight. The writes that end, replace or change sessions forget through [`ForgetOnDrop`], so
//!   even one whose future is dropped after Redis ran it (or that failed) forgets. The sessions
//!   an admission or the sweep end because their deadline passed are forgotten once the answer
//!   names them; until then the view refuses them anyway, as it checks every deadline.
//! - Touches (activity) are coalesced: a request answered from here does not write its
//!   activity while a lookup with activity went to Redis less than `session_cache` before it
//!   (this gateway's time; such a lookup's answer, or one begun after, carries it). Otherwise
//!   the request carries its own ([`Answer::Refresh`], one round trip), even though the view is
//!   fresh: lookups without activity (an exempt path's polls, which may keep the view fresh, or
//!   the lookup a page's requests waited for) carry none, and their answers do not wipe the
//!   activity seen here. A session's last activity in Redis therefore lags the truth by less
//!   than `session_cache`, and it ends at most that much early.
//! - When Redis fails, a session this gateway confirmed less than `outage_grace` ago, and whose
//!   deadline (as [`crate::policy::timeouts`] computes it) has not passed, keeps working. A logout
//!   or kick of such a session is answered from here (Faspex is logged out once) and queued; it is
//!   replayed when Redis answers again (an admission sends its account's queued ends first).
//!   Ending a session twice ends it once, so a replay has no second effect. A touch queued here
//!   is sent with the times of its activity that chain it ([`QueuedTouch`]), which Redis counts
//!   only forward and only while the session was live then. Nothing is ever admitted, counted
//!   or unlocked from here.
//!
//! Time is the caller's `now` (the engine's clock), so tests move it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::policy::timeouts;
use crate::store::{ClientId, EndReason, Session, SessionKey, SessionState, StoreError, Timeouts};

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
    /// from here meanwhile. Cleared by the answer (a new entry), or by its [`Refreshing`] guard
    /// when the request was dropped or failed otherwise than by Redis being out of reach; a
    /// refresh Redis could not answer leaves it set until the entry goes stale, so that an outage
    /// is not asked about by every request.
    refreshing: bool,
    /// The refresh on its way carries activity.
    refreshing_activity: bool,
    /// When (this gateway's time) the last lookup with activity whose answer this view holds
    /// began: Redis's activity is at least that. `None` when no such lookup is known here.
    carried: Option<Timestamp>,
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

/// The entries, how many forgets there have been, and the latest of them; and the lookups on
/// their way to Redis (each with its flight's number), for the callers that come meanwhile.
#[derive(Default)]
struct View {
    entries: HashMap<Lookup, Entry>,
    generation: u64,
    forgets: std::collections::VecDeque<(u64, Forgot)>,
    flights: HashMap<Lookup, (u64, watch::Receiver<Landed>)>,
    flights_begun: u64,
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
pub(crate) enum Answer<'a> {
    /// Live, confirmed recently enough: no round trip.
    Fresh(Session),
    /// Live and still fresh, but past half of `session_cache` (or with activity Redis may not
    /// hold): this caller alone asks Redis again (when Redis cannot answer, see
    /// [`SessionCache::still_fresh`]).
    Refresh(Generation, Option<Flight<'a>>, Refreshing<'a>),
    /// Ask Redis; with a [`Flight`] when the callers that come meanwhile wait for this one.
    Ask(Generation, Option<Flight<'a>>),
    /// Another caller is asking Redis for this lookup: wait for it ([`Landing::landed`]), then
    /// look again ([`SessionCache::get_again`]).
    Wait(Landing),
}

/// Held by a refresh's caller: dropped before [`Refreshing::done`] (its request dropped, or
/// failed otherwise than by Redis being out of reach), it clears the entry's refresh, so that
/// the next request (with its activity) refreshes instead.
pub(crate) struct Refreshing<'a> {
    cache: &'a SessionCache,
    lookup: Lookup,
    confirmed: Timestamp,
}

impl Refreshing<'_> {
    /// Answered, or Redis out of reach: the refresh stays as the answer (or staleness) leaves it.
    pub(crate) fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        let mut view = self.cache.view();
        if let Some(e) = view.entries.get_mut(&self.lookup) {
            if e.confirmed == self.confirmed {
                e.refreshing = false;
                e.refreshing_activity = false;
            }
        }
    }
}

/// How a [`Flight`] ended, as its waiters see it.
#[derive(Clone, Debug)]
pub(crate) enum Landed {
    /// Not yet, or never: the request was dropped (or failed otherwise than by Redis being out
    /// of reach). Its waiters ask for themselves.
    Pending,
    /// Redis answered, and the view learned what it could of the answer.
    Answered,
    /// Redis could not be reached.
    Unreachable(StoreError),
}

/// A caller's round trip to Redis for one lookup, which the callers that find the view stale
/// meanwhile wait for instead of asking too. It leaves the view when it lands or is dropped.
pub(crate) struct Flight<'a> {
    cache: &'a SessionCache,
    lookup: Lookup,
    number: u64,
    landing: watch::Sender<Landed>,
}

impl Flight<'_> {
    /// Tell the waiters how it ended ([`Landed::Answered`] once the answer was learned).
    pub(crate) fn land(self, how: Landed) {
        self.leave();
        self.landing.send_replace(how);
    }

    fn leave(&self) {
        let mut view = self.cache.view();
        if view
            .flights
            .get(&self.lookup)
            .is_some_and(|(n, _)| *n == self.number)
        {
            view.flights.remove(&self.lookup);
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // (after `land`, a second look that finds nothing; dropped unlanded, its waiters see
        // `Pending` once the sender is gone)
        self.leave();
    }
}

/// A waiter's end of another caller's [`Flight`].
pub(crate) struct Landing(watch::Receiver<Landed>);

impl Landing {
    /// How the flight ended: when it lands, or [`Landed::Pending`] when it was dropped.
    pub(crate) async fn landed(mut self) -> Landed {
        // (an error only means the sender is gone: landed or dropped, its last value says which)
        let _ = self.0.changed().await;
        let landed = self.0.borrow().clone();
        landed
    }
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

/// An end answered from the view during an outage, to be sent when Redis is back.
#[derive(Clone, Debug)]
pub(crate) struct QueuedEnd {
    pub(crate) key: SessionKey,
    pub(crate) reason: EndReason,
    /// The session's account and client: an admission of that account sends it first.
    pub(crate) account: Arc<str>,
    pub(crate) client: ClientId,
}

/// The activity answered from the view during an outage for one session (whichever way it was
/// looked up), to be written when Redis is back.
#[derive(Clone, Debug)]
pub(crate) struct QueuedTouch {
    /// The session, by its key.
    pub(crate) lookup: Lookup,
    pub(crate) timeouts: Timeouts,
    /// The session's idle timeout (its kind's).
    limit: Duration,
    /// Its number: a touch of the same session queued while this one was sent renumbers it, and
    /// keeps it queued.
    pub(crate) n: u64,
    /// The times of the activity it carries, oldest first: Redis counts them at these times,
    /// not the replay's, each only if the session was still live then. Only as many are kept as
    /// show the session live all along: from each kept time to the next one is less than the
    /// idle timeout, and a time is dropped when the ones on either side of it are less than the
    /// idle timeout apart ([`Self::add`]).
    pub(crate) times: Vec<Timestamp>,
}

/// The most activity times one queued touch keeps (an outage of more than 500 idle timeouts;
/// `outage_grace` is at most an hour); past it, the latest replaces the last.
const MAX_TOUCH_TIMES: usize = 1024;

impl QueuedTouch {
    /// Add activity at `at`. A time that the ones around it make redundant goes: with activity
    /// at a, b and c, each less than the idle timeout after the one before, b is dropped if c is
    /// less than the idle timeout after a, since a to c then shows the session live as well.
    fn add(&mut self, at: Timestamp) {
        let limit = self.limit;
        let n = self.times.len();
        match self.times.last() {
            Some(last) if at <= *last => {}
            _ if n >= 2 && at.since(self.times[n - 2]) < limit => self.times[n - 1] = at,
            _ if n >= MAX_TOUCH_TIMES => self.times[n - 1] = at,
            _ => self.times.push(at),
        }
    }
}

/// The view. See the module documentation.
pub(crate) struct SessionCache {
    fresh: Duration,
    grace: Duration,
    view: Mutex<View>,
    /// Ends answered from here during an outage, with their reasons, to be sent when Redis is
    /// back.
    queued_ends: Mutex<Vec<QueuedEnd>>,
    /// Lookups whose activity was answered from here during an outage, to be written when Redis
    /// is back.
    queued_touches: Mutex<Vec<QueuedTouch>>,
    /// Bumped by every touch queued, so that a replay removes only the touch it sent.
    touches_queued: std::sync::atomic::AtomicU64,
}

impl SessionCache {
    pub(crate) fn new(fresh: Duration, grace: Duration) -> Self {
        Self {
            fresh,
            grace,
            view: Mutex::new(View::default()),
            queued_ends: Mutex::new(Vec::new()),
            queued_touches: Mutex::new(Vec::new()),
            touches_queued: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session under `lookup` at `now`, when Redis confirmed it less than `session_cache` ago
    /// and its deadline is still ahead: [`Answer::Fresh`], or [`Answer::Refresh`] to the first
    /// caller past half of `session_cache` and to a caller whose activity Redis may not hold
    /// (see the module documentation). With `activity`, its last activity here becomes `now`.
    /// Otherwise [`Answer::Wait`] when another caller is asking Redis for `lookup`, or
    /// [`Answer::Ask`].
    pub(crate) fn get(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Answer<'_> {
        self.answer(lookup, now, activity, t, true)
    }

    /// [`SessionCache::get`] for a caller that has waited once already: never [`Answer::Wait`]
    /// (one wait at most, so that a caller never waits out two round trips).
    pub(crate) fn get_again(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Answer<'_> {
        self.answer(lookup, now, activity, t, false)
    }

    fn answer(
        &self,
        lookup: &Lookup,
        now: Timestamp,
        activity: bool,
        t: &Timeouts,
        may_wait: bool,
    ) -> Answer<'_> {
        let mut guard = self.view();
        let view = &mut *guard;
        let generation = Generation(view.generation);
        if self.fresh.is_zero() {
            // (no view: every lookup sees Redis's own answer, none another's)
            return Answer::Ask(generation, None);
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
                // Activity Redis may not hold within `session_cache` (no lookup with activity
                // began that recently, and none is on its way): this request carries it.
                let uncarried = activity
                    && !(e.refreshing && e.refreshing_activity)
                    && e.carried.is_none_or(|c| now.since(c) >= self.fresh);
                if uncarried || (!e.refreshing && now.since(e.confirmed) >= self.fresh / 2) {
                    e.refreshing = true;
                    e.refreshing_activity |= activity;
                    let refreshing = Refreshing {
                        cache: self,
                        lookup: lookup.clone(),
                        confirmed: e.confirmed,
                    };
                    return Answer::Refresh(generation, self.take_off(view, lookup), refreshing);
                }
                Answer::Fresh(e.session.clone())
            }
            _ => match view.flights.get(lookup) {
                Some((_, landing)) if may_wait => Answer::Wait(Landing(landing.clone())),
                _ => Answer::Ask(generation, self.take_off(view, lookup)),
            },
        }
    }

    /// A flight for `lookup`, unless one is on its way already.
    fn take_off(&self, view: &mut View, lookup: &Lookup) -> Option<Flight<'_>> {
        if view.flights.contains_key(lookup) {
            return None;
        }
        view.flights_begun += 1;
        let number = view.flights_begun;
        let (landing, waiting) = watch::channel(Landed::Pending);
        view.flights.insert(lookup.clone(), (number, waiting));
        Some(Flight {
            cache: self,
            lookup: lookup.clone(),
            number,
            landing,
        })
    }

    /// Where lookups stand now (for a lookup that does not go through [`SessionCache::get`]).
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.view().generation)
    }

    /// Take Redis's answer for `lookup` to a lookup that began at `now` (where lookups stood:
    /// `since`), with or without `activity`. A live session is kept only when nothing forgotten
    /// here since names it (Redis may have answered before this gateway ended or changed it).
    pub(crate) fn learn(
        &self,
        lookup: Lookup,
        now: Timestamp,
        activity: bool,
        state: &SessionState,
        since: Generation,
    ) {
        let mut view = self.view();
        if let SessionState::Live(s) = state {
            if view.forgotten_since(since, s) || self.end_queued(&s.key) {
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
                // Activity seen here that this answer does not hold (Redis answered without
                // activity, or its lookup began before it) stays here.
                let mut session = s.clone();
                let mut carried = None;
                if let Some(old) = entries.get(&lookup).filter(|old| old.session.key == s.key) {
                    if old.session.last_activity > session.last_activity {
                        session.last_activity = old.session.last_activity;
                    }
                    carried = old.carried;
                }
                if activity {
                    carried = carried.max(Some(now));
                }
                entries.insert(
                    lookup,
                    Entry {
                        session,
                        confirmed: now,
                        refreshing: false,
                        refreshing_activity: false,
                        carried,
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
    /// With `activity`, its touch is queued for Redis (under the view's lock, so that an end
    /// answered here meanwhile, which drops the session's touches, cannot come between).
    pub(crate) fn still_fresh(
        &self,
        lookup: &Lookup,
        since: Generation,
        at: Timestamp,
        activity: bool,
        t: &Timeouts,
    ) -> Option<Session> {
        let view = self.view();
        let e = view.entries.get(lookup)?;
        let fresh = at >= e.confirmed
            && at.since(e.confirmed) < self.fresh
            && timeouts::expired(&e.session, at, t).is_none()
            && !view.forgotten_since(since, &e.session);
        if fresh && activity {
            // (its activity, which the view may not have carried, is sent with the rest)
            self.queue_touch(&e.session, *t, at);
        }
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
            self.queue_touch(&e.session, *t, now);
        }
        Some(e.session.clone())
    }

    /// Queue a touch of session `s`, active at `at`, for when Redis answers again
    /// ([`SessionCache::first_touch`]). Touches are queued by the session's key, however it was
    /// looked up, so that its activity is sent together, and to the session that had it.
    pub(crate) fn queue_touch(&self, s: &Session, t: Timeouts, at: Timestamp) {
        let lookup = Lookup::key(&s.key);
        let n = self
            .touches_queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut touched = self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match touched.iter_mut().find(|q| q.lookup == lookup) {
            // (a later touch of one queued: the one queued is sent later than it, which covers it,
            // unless it is being sent now; then this one stays)
            Some(queued) => {
                queued.n = n;
                queued.add(at);
            }
            None => touched.push(QueuedTouch {
                lookup,
                timeouts: t,
                limit: timeouts::idle_limit(s.kind, &t),
                n,
                times: vec![at],
            }),
        }
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

    /// The cached session `key`, for an end (`reason`) answered during an outage: it is
    /// forgotten here, its queued touch is dropped (a session ended here has no activity to
    /// send), and its end is queued.
    pub(crate) fn end_in_outage(&self, key: &SessionKey, reason: EndReason) -> Option<Session> {
        let mut view = self.view();
        let s = view
            .entries
            .values()
            .find(|e| &e.session.key == key)
            .map(|e| e.session.clone())?;
        let touched = Lookup::key(key);
        // (the view's lock, then the touches' and the ends', as `in_grace` and `learn` take them)
        self.queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|q| q.lookup != touched);
        view.forget(Forgot::Session(key.clone()));
        // (queued before the view's lock is let go: a lookup that began after the forget must
        // find the end queued when it learns)
        self.queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(QueuedEnd {
                key: key.clone(),
                reason,
                account: Arc::clone(&s.account),
                client: s.client.clone(),
            });
        drop(view);
        Some(s)
    }

    /// Whether session `key` was ended here during an outage and Redis does not have its end
    /// yet: it is not live here again, whatever Redis answers meanwhile. (Locks the queue of
    /// ends; the view's lock may be held, never the other way round.)
    pub(crate) fn end_queued(&self, key: &SessionKey) -> bool {
        self.queued_reason(key).is_some()
    }

    /// Whether `lookup` is by the key of a session whose end is queued ([`Self::end_queued`]):
    /// it is answered unknown without asking Redis, which would touch the session, or end it a
    /// second time if it is past its deadline.
    pub(crate) fn ended_here(&self, lookup: &Lookup) -> bool {
        matches!(lookup, Lookup::Key(k) if self.end_queued(&SessionKey(Arc::clone(k))))
    }

    /// The oldest end queued during an outage (taken out by [`SessionCache::sent_queued`]).
    pub(crate) fn first_queued(&self) -> Option<QueuedEnd> {
        let ends = self.queued_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.first().cloned()
    }

    /// The ends queued for `account`'s sessions.
    pub(crate) fn queued_for(&self, account: &str) -> Vec<QueuedEnd> {
        let ends = self.queued_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.iter()
            .filter(|q| &*q.account == account)
            .cloned()
            .collect()
    }

    /// Whether `key`'s end is queued here, taking it out if so: Redis has ended the session
    /// otherwise (a sweep, an admission, a kick) before the replay, and this gateway reported
    /// the end when it was made, so the caller leaves it out of what it reports.
    pub(crate) fn ended_again(&self, key: &SessionKey) -> bool {
        let mut ends = self.queued_ends.lock().unwrap_or_else(|e| e.into_inner());
        let queued = ends.iter().any(|q| q.key == *key);
        ends.retain(|q| q.key != *key);
        queued
    }

    /// The reason of `key`'s end, if it is queued.
    pub(crate) fn queued_reason(&self, key: &SessionKey) -> Option<EndReason> {
        self.queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|q| q.key == *key)
            .map(|q| q.reason)
    }

    /// Redis has the end of `key`: out of the queue.
    pub(crate) fn sent_queued(&self, key: &SessionKey) {
        let mut ends = self.queued_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.retain(|q| q.key != *key);
    }

    /// The oldest touch queued (taken out by [`SessionCache::sent_touch`]).
    pub(crate) fn first_touch(&self) -> Option<QueuedTouch> {
        let touches = self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        touches.first().cloned()
    }

    /// Redis has the touch of `lookup` numbered `n`: out of the queue, unless the lookup was
    /// touched again since (then it stays, to be sent again).
    pub(crate) fn sent_touch(&self, lookup: &Lookup, n: u64) {
        let mut touches = self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        touches.retain(|q| q.lookup != *lookup || q.n != n);
    }

    /// The end of `key` failed: it goes to the back of the queue, so that one end that keeps
    /// failing does not hold up the others (and the touches behind them).
    pub(crate) fn end_to_back(&self, key: &SessionKey) {
        let mut ends = self.queued_ends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = ends.iter().position(|q| q.key == *key) {
            let k = ends.remove(i);
            ends.push(k);
        }
    }

    /// The touch of `lookup` failed: to the back of the queue.
    pub(crate) fn touch_to_back(&self, lookup: &Lookup) {
        let mut touches = self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(i) = touches.iter().position(|q| q.lookup == *lookup) {
            let item = touches.remove(i);
            touches.push(item);
        }
    }

    /// Whether any touch waits to be sent.
    pub(crate) fn has_queued_touches(&self) -> bool {
        !self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The touch queued for `lookup`'s session, if one is: by the lookup's key, or by the key
    /// of the session the view holds for a lookup by client or bearer token (touches are queued
    /// by key).
    pub(crate) fn queued_touch(&self, lookup: &Lookup) -> Option<QueuedTouch> {
        if !self.has_queued_touches() {
            return None;
        }
        let key = match lookup {
            Lookup::Key(_) => lookup.clone(),
            _ => Lookup::key(&self.view().entries.get(lookup)?.session.key),
        };
        let touches = self
            .queued_touches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        touches.iter().find(|q| q.lookup == key).cloned()
    }

    /// Whether any end waits to be sent.
    pub(crate) fn has_queued_ends(&self) -> bool {
        !self
            .queued_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Whether any end or touch waits to be sent.
    pub(crate) fn has_queued(&self) -> bool {
        self.has_queued_ends() || self.has_queued_touches()
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

    /// A queued touch keeps the activity times that show the session live all along, and no
    /// more: a time goes when the ones on either side are less than the idle timeout apart.
    #[test]
    fn a_queued_touch_keeps_the_times_that_chain_its_activity() {
        let mut q = QueuedTouch {
            lookup: Lookup::Key("k".into()),
            timeouts: T,
            limit: HOUR,
            n: 0,
            times: vec![t0()],
        };
        let at = |m: u64| t0() + Duration::from_secs(m * 60);
        // (the idle timeout is an hour)
        for m in [10, 20, 50, 59, 70, 70, 65, 125] {
            q.add(at(m));
        }
        // 0–59 < 1 h dropped 10, 20 and 50; 0–70 is not < 1 h so 59 stays; 59–125 is not
        // either, so 70 stays; 70 and 65 are no later than 70.
        assert_eq!(q.times, [t0(), at(59), at(70), at(125)]);
        for m in 131..1300 {
            q.add(at(m * 61));
        }
        assert_eq!(q.times.len(), MAX_TOUCH_TIMES, "bounded");
        assert_eq!(q.times.last(), Some(&at(1299 * 61)), "the latest kept");
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

    /// What `get` says, as a letter: F(resh), R(efresh), A(sk) or W(ait).
    fn says(c: &SessionCache, l: &Lookup, now: Timestamp) -> char {
        match c.get(l, now, true, &T) {
            Answer::Fresh(_) => 'F',
            Answer::Refresh(_, _, refreshing) => {
                // (its request on its way)
                refreshing.done();
                'R'
            }
            Answer::Ask(..) => 'A',
            Answer::Wait(_) => 'W',
        }
    }

    fn live(c: &SessionCache, l: &Lookup, now: Timestamp) {
        let since = c.generation();
        let s = session("k1", "ann", t0());
        c.learn(l.clone(), now, true, &SessionState::Live(s), since);
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
        let Answer::Refresh(since, _, _refreshing) = c.get(&l, t0() + ms(700), true, &T) else {
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
            .still_fresh(&l, since, t0() + ms(999), false, &T)
            .map(|s| s.last_activity);
        assert_eq!(held, Some(t0() + ms(700)));
        assert!(c
            .still_fresh(&l, since, t0() + ms(1000), false, &T)
            .is_none());
        // Not once the session was forgotten here meanwhile (its entry is gone), nor when
        // another entry of it was learned after such a forget.
        c.forget_account("ann");
        live(&c, &l, t0() + ms(10));
        assert!(c
            .still_fresh(&l, since, t0() + ms(900), false, &T)
            .is_none());
        assert!(c
            .still_fresh(&l, c.generation(), t0() + ms(900), false, &T)
            .is_some());
        // A session past its deadline is never answered from the view, refresh or not.
        let short = Timeouts { idle: ms(600), ..T };
        let c = SessionCache::new(SEC, 300 * SEC);
        live(&c, &l, t0());
        assert!(matches!(
            c.get(&l, t0() + ms(700), false, &short),
            Answer::Ask(..)
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
                c.end_in_outage(&SessionKey("k1".into()), EndReason::Logout);
            },
            |c| drop(c.forget_on_drop(Forgot::Account("ann".into()))),
            |c| drop(c.forget_on_drop(Forgot::Session(SessionKey("k1".into())))),
        ] {
            // A lookup begins (Redis still says live), the session is kicked here, then Redis's
            // answer arrives: it must not put the session back.
            let Answer::Ask(since, _) = c.get(&l, t0(), true, &T) else {
                panic!("nothing in the view yet");
            };
            live(&c, &l, t0());
            forget(&c);
            c.learn(l.clone(), t0(), true, &SessionState::Live(s.clone()), since);
            assert_eq!(says(&c, &l, t0() + ms(1)), 'A', "the answer was not kept");
            // A lookup that began after the forget is kept (once Redis has a queued end).
            c.sent_queued(&SessionKey("k1".into()));
            live(&c, &l, t0());
            assert_eq!(says(&c, &l, t0() + ms(1)), 'F');
            c.forget_account("ann");
        }
        // Forgets of other sessions and accounts leave the answer alone, as long as every
        // forget since the lookup began is remembered.
        let Answer::Ask(since, _) = c.get(&l, t0(), true, &T) else {
            panic!("nothing in the view yet");
        };
        c.forget_session(&SessionKey("another".into()));
        c.forget_account("bob");
        c.learn(l.clone(), t0(), true, &SessionState::Live(s.clone()), since);
        assert_eq!(says(&c, &l, t0() + ms(1)), 'F', "kept");
        c.forget_account("ann");
        let Answer::Ask(since, _) = c.get(&l, t0(), true, &T) else {
            panic!("forgotten");
        };
        for i in 0..FORGETS_KEPT {
            c.forget_account(&format!("user{i}"));
        }
        c.learn(l.clone(), t0(), true, &SessionState::Live(s.clone()), since);
        assert_eq!(
            says(&c, &l, t0() + ms(1)),
            'F',
            "the last {FORGETS_KEPT} are known"
        );
        c.forget_account("ann");
        let Answer::Ask(since, _) = c.get(&l, t0(), true, &T) else {
            panic!("forgotten");
        };
        for i in 0..=FORGETS_KEPT {
            c.forget_account(&format!("user{i}"));
        }
        c.learn(l.clone(), t0(), true, &SessionState::Live(s), since);
        assert_eq!(
            says(&c, &l, t0() + ms(1)),
            'A',
            "one forget too many to know: not kept"
        );
    }

    /// A session logged out here during an outage is not live here again, however Redis answers
    /// a lookup that began after the logout, until Redis has its end; its end stays queued
    /// until then, once, with its reason, and a failed send puts it at the back. The touches
    /// queued for it go.
    #[test]
    fn a_logout_in_an_outage_holds_until_redis_has_its_end() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let (l, k1, k2) = (
            Lookup::Key("k1".into()),
            SessionKey("k1".into()),
            SessionKey("k2".into()),
        );
        live(&c, &l, t0());
        // Its activity answered from the view in the outage, then its end: the touch goes.
        assert!(c.in_grace(&l, t0() + ms(1), true, &T).is_some());
        assert!(c.first_touch().is_some());
        assert!(c.end_in_outage(&k1, EndReason::Logout).is_some());
        assert!(
            c.first_touch().is_none(),
            "no activity sent for a session ended here"
        );
        assert!(
            c.end_in_outage(&k1, EndReason::Logout).is_none(),
            "gone from the view"
        );
        assert!(c.in_grace(&l, t0() + ms(1), true, &T).is_none());
        for at in [1, 2_000, 10_000] {
            live(&c, &l, t0() + ms(at));
            assert_eq!(says(&c, &l, t0() + ms(at)), 'A', "not live here again");
            assert!(c.end_queued(&k1));
        }
        // Another session's end queued behind it; the first fails and goes to the back.
        let l2 = Lookup::Key("k2".into());
        c.learn(
            l2.clone(),
            t0(),
            true,
            &SessionState::Live(session("k2", "bob", t0())),
            c.generation(),
        );
        assert!(c.end_in_outage(&k2, EndReason::Replaced).is_some());
        let first = || c.first_queued().map(|q| (q.key, q.reason));
        assert_eq!(first(), Some((k1.clone(), EndReason::Logout)));
        c.end_to_back(&k1);
        assert_eq!(
            first(),
            Some((k2.clone(), EndReason::Replaced)),
            "with its own reason"
        );
        let bob = c.queued_for("bob");
        assert_eq!(bob.len(), 1);
        assert_eq!((&*bob[0].account, &bob[0].key), ("bob", &k2), "and account");
        c.sent_queued(&k2);
        assert_eq!(first(), Some((k1.clone(), EndReason::Logout)));
        c.sent_queued(&k1);
        assert_eq!(first(), None);
        assert!(!c.end_queued(&k1));
        live(&c, &l, t0() + ms(20_000));
        assert_eq!(
            says(&c, &l, t0() + ms(20_000)),
            'F',
            "kept once Redis has it"
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
                c.learn(
                    l.clone(),
                    t0(),
                    true,
                    &SessionState::Live(holder.clone()),
                    before,
                );
                assert_eq!(says(&c, l, t0() + ms(1)), 'F');
                drop(c.forget_on_drop(what.clone()));
                assert_eq!(says(&c, l, t0() + ms(1)), 'A', "{what:?} forgets {l:?}");
                // An answer from before the forget (the token's old holder) is not kept.
                c.learn(
                    l.clone(),
                    t0(),
                    true,
                    &SessionState::Live(holder.clone()),
                    before,
                );
                assert_eq!(says(&c, l, t0() + ms(1)), 'A', "{what:?} keeps {l:?} out");
            }
        }
        // A token's move leaves a session that never held it alone.
        let other = session("k2", "bob", t0());
        let l = Lookup::key(&other.key);
        let before = c.generation();
        drop(c.forget_on_drop(Forgot::Bearer(token)));
        c.learn(l.clone(), t0(), true, &SessionState::Live(other), before);
        assert_eq!(says(&c, &l, t0() + ms(1)), 'F');
    }

    /// While one caller asks Redis for a lookup the view cannot answer, the next ones wait for
    /// it, once, and are then answered from the view as the answer left it; a refresh is such a
    /// flight too. A flight dropped unlanded sends its waiters to ask for themselves.
    #[tokio::test]
    async fn callers_that_find_the_view_stale_wait_for_the_one_asking() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let l = Lookup::Key("k1".into());
        let wait = |at: Timestamp| match c.get(&l, at, true, &T) {
            Answer::Wait(w) => w,
            _ => panic!("a flight is on its way: wait for it"),
        };
        let Answer::Ask(since, Some(flight)) = c.get(&l, t0(), true, &T) else {
            panic!("nothing in the view: the first caller asks");
        };
        let waiters = [wait(t0()), wait(t0() + ms(1))];
        assert!(
            matches!(c.get_again(&l, t0(), true, &T), Answer::Ask(_, None)),
            "one wait at most, and no second flight"
        );
        assert!(
            matches!(
                c.get(&Lookup::Key("k2".into()), t0(), true, &T),
                Answer::Ask(_, Some(_))
            ),
            "another lookup does not wait for this one"
        );
        c.learn(
            l.clone(),
            t0(),
            true,
            &SessionState::Live(session("k1", "ann", t0())),
            since,
        );
        flight.land(Landed::Answered);
        for w in waiters {
            assert!(matches!(w.landed().await, Landed::Answered));
        }
        assert_eq!(says(&c, &l, t0() + ms(1)), 'F', "answered from the view");

        // Stale again. Dropped without landing (its request was dropped): its waiter asks.
        let Answer::Ask(_, Some(flight)) = c.get(&l, t0() + ms(1500), true, &T) else {
            panic!("stale: ask");
        };
        let w = wait(t0() + ms(1500));
        drop(flight);
        assert!(matches!(w.landed().await, Landed::Pending));
        assert!(
            matches!(
                c.get_again(&l, t0() + ms(1500), true, &T),
                Answer::Ask(_, Some(_))
            ),
            "the dropped flight left nothing behind"
        );
        // Redis out of reach: so its waiters hear.
        let Answer::Ask(_, Some(flight)) = c.get(&l, t0() + ms(1500), true, &T) else {
            panic!("stale: ask");
        };
        let w = wait(t0() + ms(1500));
        flight.land(Landed::Unreachable(StoreError::Remote {
            reason: "refused".into(),
        }));
        assert!(matches!(
            w.landed().await,
            Landed::Unreachable(StoreError::Remote { .. })
        ));

        // A refresh: the callers beside it are answered from the view while it is fresh, and
        // wait for the refresh once it is stale.
        live(&c, &l, t0() + ms(2000));
        let Answer::Refresh(_, Some(flight), _refreshing) = c.get(&l, t0() + ms(2600), true, &T)
        else {
            panic!("past half: refresh");
        };
        assert_eq!(says(&c, &l, t0() + ms(2999)), 'F');
        assert_eq!(says(&c, &l, t0() + ms(3000)), 'W');
        drop(flight);
        assert_eq!(says(&c, &l, t0() + ms(3000)), 'A');
    }

    /// Activity no lookup with activity has carried within `session_cache` is carried by the
    /// request that brings it (a refresh: one round trip), however fresh polls keep the view; a
    /// poll's answer does not wipe the activity seen here.
    #[test]
    fn activity_redis_may_not_hold_is_carried_by_its_own_request() {
        let c = SessionCache::new(SEC, 300 * SEC);
        let l = Lookup::Key("k1".into());
        // Redis answers without activity (an exempt path's poll): its activity stays at t0.
        let polled = |at: Timestamp| {
            let since = c.generation();
            let s = SessionState::Live(session("k1", "ann", t0()));
            c.learn(l.clone(), at, false, &s, since);
        };
        let with_activity = |at: Timestamp| {
            let since = c.generation();
            let mut s = session("k1", "ann", t0());
            s.last_activity = at;
            c.learn(l.clone(), at, true, &SessionState::Live(s), since);
        };
        // Within `session_cache` of a lookup with activity the view answers (that lag is the
        // bound), polls or none.
        with_activity(t0());
        assert_eq!(says(&c, &l, t0() + ms(300)), 'F');
        polled(t0() + ms(900));
        assert_eq!(says(&c, &l, t0() + ms(999)), 'F');
        assert_eq!(says(&c, &l, t0() + ms(1000)), 'R', "carried by itself");
        assert_eq!(says(&c, &l, t0() + ms(1001)), 'F', "one is on its way");
        // A poll's answer (begun before that refresh) keeps the activity seen here.
        polled(t0() + ms(1100));
        match c.get(&l, t0() + ms(1150), false, &T) {
            Answer::Fresh(s) => assert_eq!(s.last_activity, t0() + ms(1001)),
            _ => panic!("fresh"),
        }
        // The refresh's answer carries it.
        with_activity(t0() + ms(1000));
        assert_eq!(says(&c, &l, t0() + ms(1300)), 'F');
        // A poll past half takes the refresh; activity beside it still carries its own, once.
        polled(t0() + ms(3000));
        let poll = c.get(&l, t0() + ms(3500), false, &T);
        assert!(matches!(poll, Answer::Refresh(..)));
        assert_eq!(says(&c, &l, t0() + ms(3600)), 'R');
        assert_eq!(says(&c, &l, t0() + ms(3700)), 'F');
        drop(poll);
        // A refresh with activity whose request is dropped: the next request carries its own.
        polled(t0() + ms(5000));
        let dropped = c.get(&l, t0() + ms(5100), true, &T);
        assert!(matches!(dropped, Answer::Refresh(..)));
        assert_eq!(says(&c, &l, t0() + ms(5200)), 'F', "one is on its way");
        drop(dropped);
        assert_eq!(says(&c, &l, t0() + ms(5300)), 'R', "the next carries it");
    }

    #[test]
    fn with_no_session_cache_every_lookup_asks() {
        let c = SessionCache::new(Duration::ZERO, 300 * SEC);
        let l = Lookup::Key("k1".into());
        live(&c, &l, t0());
        assert_eq!(says(&c, &l, t0()), 'A');
        assert_eq!(says(&c, &l, t0() + ms(1)), 'A');
        // Nor does any wait for another's answer: each sees Redis's own.
        let first = c.get(&l, t0(), true, &T);
        assert!(matches!(first, Answer::Ask(_, None)));
        assert!(matches!(c.get(&l, t0(), true, &T), Answer::Ask(_, None)));
    }
}
