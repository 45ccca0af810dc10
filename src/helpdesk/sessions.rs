//! The console's own sessions, in this gateway's memory: who signed in, their CSRF token, when
//! they were last seen (the 15-minute idle timeout) and when their group membership was last
//! confirmed; and the sign-in form's token, bound to a pre-session cookie. At most
//! [`MAX_PER_ACCOUNT`] sessions per account (a new sign-in ends the oldest), and
//! [`Sessions::end_account`] for an administrator's kick or lock of the person.
//!
//! A session is named by a random 256-bit token in the `__Host-faspex-gate-helpdesk` cookie and
//! kept under its SHA-256 digest, so the map never holds a usable cookie. The sign-in form's
//! token is an HMAC of the pre-session cookie (`__Host-faspex-gate-helpdesk-signin`) under a
//! per-process key: nothing is kept for a visitor who has not signed in. Every time comes from
//! the injected clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::clock::Timestamp;

/// A console session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The most console sessions one gateway keeps at once; a sign-in past it is refused (503).
pub const MAX_SESSIONS: usize = 256;

/// The most console sessions one account holds; a sign-in past it ends that account's oldest.
pub const MAX_PER_ACCOUNT: usize = 4;

/// What [`Sessions::create`] made.
#[derive(Debug)]
pub struct Created {
    /// The new session's cookie value.
    pub cookie: String,
    /// The account's oldest session, ended to keep it within [`MAX_PER_ACCOUNT`].
    pub ended: Option<ConsoleSession>,
}

/// One signed-in helpdesk person.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    /// As typed at sign-in, a listed domain removed: what the directory is asked about.
    pub name: String,
    /// The account the name counts as: the `actor` of every audit record.
    pub account: String,
    /// The token every POST of this session must carry.
    pub csrf: String,
    pub since: Timestamp,
    pub last_seen: Timestamp,
    /// When membership of `helpdesk.group` was last confirmed.
    pub checked_at: Timestamp,
    /// What the last action came to, shown once on the next page (POST/redirect/GET).
    pub notice: Option<Notice>,
}

/// The answer to an action, shown on the page that follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Whether it did something (a no-op or a refusal is not).
    pub done: bool,
    pub text: String,
}

/// What a request's cookie finds.
#[derive(Debug)]
pub enum Found {
    /// A live session, now marked seen.
    Live(ConsoleSession),
    /// A session that passed its idle timeout; it is gone now.
    Idle(ConsoleSession),
    /// No session.
    None,
}

/// The console sessions of this gateway.
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], ConsoleSession>>,
    /// Signs the sign-in form's token.
    key: ring::hmac::Key,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new random token: 32 bytes, base64url without padding (a cookie value and a form field).
pub fn random_token() -> anyhow::Result<String> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::util::random_bytes(32)?))
}

impl Sessions {
    pub fn new() -> anyhow::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| anyhow::anyhow!("cannot make the helpdesk console's key"))?;
        Ok(Sessions {
            map: Mutex::new(HashMap::new()),
            key,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], ConsoleSession>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sign-in form's token for the pre-session cookie `pre`.
    pub fn signin_token(&self, pre: &str) -> String {
        let tag = ring::hmac::sign(&self.key, pre.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is the sign-in token of `pre` (compared in constant time).
    pub fn signin_token_ok(&self, pre: &str, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        ring::hmac::verify(&self.key, pre.as_bytes(), &tag).is_ok()
    }

    /// Start a session for `name` (`account`) at `now`. `None` when [`MAX_SESSIONS`] live
    /// sessions are held already; an account at [`MAX_PER_ACCOUNT`] loses its oldest.
    pub fn create(
        &self,
        name: &str,
        account: &str,
        now: Timestamp,
    ) -> anyhow::Result<Option<Created>> {
        let token = random_token()?;
        let csrf = random_token()?;
        let mut map = self.map();
        map.retain(|_, s| !idle(s, now));
        let mine: Vec<([u8; 32], Timestamp)> = map
            .iter()
            .filter(|(_, s)| s.account == account)
            .map(|(k, s)| (*k, s.since))
            .collect();
        let oldest = (mine.len() >= MAX_PER_ACCOUNT)
            .then(|| mine.iter().min_by_key(|(_, since)| *since).map(|(k, _)| *k))
            .flatten();
        if oldest.is_none() && map.len() >= MAX_SESSIONS {
            return Ok(None);
        }
        let ended = oldest.and_then(|k| map.remove(&k));
        map.insert(
            digest(&token),
            ConsoleSession {
                name: name.to_owned(),
                account: account.to_owned(),
                csrf,
                since: now,
                last_seen: now,
                checked_at: now,
                notice: None,
            },
        );
        Ok(Some(Created {
            cookie: token,
            ended,
        }))
    }

    /// End every session of `account` (an administrator kicked or locked it): the ended ones.
    pub fn end_account(&self, account: &str) -> Vec<ConsoleSession> {
        let mut map = self.map();
        let keys: Vec<[u8; 32]> = map
            .iter()
            .filter(|(_, s)| s.account == account)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| map.remove(k)).collect()
    }

    /// The session `cookie` names at `now`, marked seen; one past its idle timeout is removed.
    pub fn find(&self, cookie: &str, now: Timestamp) -> Found {
        let key = digest(cookie);
        let mut map = self.map();
        match map.get_mut(&key) {
            None => Found::None,
            Some(s) if idle(s, now) => match map.remove(&key) {
                Some(s) => Found::Idle(s),
                None => Found::None,
            },
            Some(s) => {
                s.last_seen = now;
                Found::Live(s.clone())
            }
        }
    }

    /// End the session `cookie` names.
    pub fn remove(&self, cookie: &str) -> Option<ConsoleSession> {
        self.map().remove(&digest(cookie))
    }

    /// Membership of the session `cookie` names was confirmed at `now`.
    pub fn confirmed(&self, cookie: &str, now: Timestamp) {
        if let Some(s) = self.map().get_mut(&digest(cookie)) {
            s.checked_at = now;
        }
    }

    /// Show `notice` on the session's next page.
    pub fn set_notice(&self, cookie: &str, notice: Notice) {
        if let Some(s) = self.map().get_mut(&digest(cookie)) {
            s.notice = Some(notice);
        }
    }

    /// The notice to show now, once.
    pub fn take_notice(&self, cookie: &str) -> Option<Notice> {
        self.map()
            .get_mut(&digest(cookie))
            .and_then(|s| s.notice.take())
    }

    /// Live sessions at `now` (the sweep of idle ones is lazy).
    #[cfg(test)]
    pub fn live(&self, now: Timestamp) -> usize {
        self.map().values().filter(|s| !idle(s, now)).count()
    }
}

fn idle(s: &ConsoleSession, now: Timestamp) -> bool {
    now.since(s.last_seen) >= IDLE_TIMEOUT
}

/// Whether `given` is the session's CSRF token, compared in constant time (as digests, so not
/// even the length shows).
pub fn csrf_ok(s: &ConsoleSession, given: &str) -> bool {
    bool::from(digest(given).ct_eq(&digest(&s.csrf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_while_used_and_ends_after_15_idle_minutes() {
        let s = Sessions::new().unwrap();
        let t0 = Timestamp::from_millis(1_795_000_000_000);
        let cookie = s.create("ann", "ann", t0).unwrap().unwrap().cookie;
        assert!(matches!(s.find("nope", t0), Found::None));
        let t1 = t0 + Duration::from_secs(14 * 60);
        assert!(matches!(s.find(&cookie, t1), Found::Live(_)));
        // Seen at t1: alive until t1 + 15 min.
        let t2 = t1 + Duration::from_secs(14 * 60);
        let Found::Live(live) = s.find(&cookie, t2) else {
            panic!("not live");
        };
        assert!(csrf_ok(&live, &live.csrf.clone()));
        assert!(!csrf_ok(&live, "forged"));
        assert!(!csrf_ok(&live, ""));
        let t3 = t2 + IDLE_TIMEOUT;
        assert!(matches!(s.find(&cookie, t3), Found::Idle(_)));
        assert!(matches!(s.find(&cookie, t3), Found::None));
    }

    #[test]
    fn the_signin_token_is_bound_to_its_cookie() {
        let s = Sessions::new().unwrap();
        let t = s.signin_token("pre-a");
        assert!(s.signin_token_ok("pre-a", &t));
        assert!(!s.signin_token_ok("pre-b", &t));
        assert!(!s.signin_token_ok("pre-a", ""));
        assert!(!s.signin_token_ok("pre-a", "%%%"));
        let other = Sessions::new().unwrap();
        assert!(!other.signin_token_ok("pre-a", &t), "another process's key");
    }

    #[test]
    fn sessions_are_capped_and_notices_shown_once() {
        let s = Sessions::new().unwrap();
        let t = Timestamp::from_millis(1_795_000_000_000);
        let first = s.create("a", "a", t).unwrap().unwrap().cookie;
        for i in 1..MAX_SESSIONS {
            let name = format!("u{i}");
            assert!(s.create(&name, &name, t).unwrap().is_some());
        }
        assert!(s.create("late", "late", t).unwrap().is_none());
        assert_eq!(s.live(t), MAX_SESSIONS);
        // Idle ones make room.
        let later = t + IDLE_TIMEOUT;
        assert!(s.create("late", "late", later).unwrap().is_some());
        assert!(s.remove(&first).is_none(), "swept when idle");
        assert_eq!(s.live(later), 1);
        let fresh = Sessions::new().unwrap();
        let c = fresh.create("b", "b", later).unwrap().unwrap().cookie;
        fresh.set_notice(
            &c,
            Notice {
                done: true,
                text: "ok".into(),
            },
        );
        assert_eq!(fresh.take_notice(&c).map(|n| n.text), Some("ok".into()));
        assert_eq!(fresh.take_notice(&c), None);
    }

    #[test]
    fn an_account_holds_at_most_four_sessions_the_oldest_ends_and_a_kick_ends_all() {
        let s = Sessions::new().unwrap();
        let t = Timestamp::from_millis(1_795_000_000_000);
        let mut cookies = Vec::new();
        for i in 0..MAX_PER_ACCOUNT as u64 {
            let c = s
                .create("helen", "helen", t + Duration::from_secs(i))
                .unwrap()
                .unwrap();
            assert!(c.ended.is_none());
            cookies.push(c.cookie);
        }
        let other = s.create("hal", "hal", t).unwrap().unwrap().cookie;
        let later = t + Duration::from_secs(60);
        let fifth = s.create("helen", "helen", later).unwrap().unwrap();
        let ended = fifth.ended.expect("the oldest ended");
        assert_eq!(ended.since, t);
        assert!(matches!(s.find(&cookies[0], later), Found::None));
        for c in &cookies[1..] {
            assert!(matches!(s.find(c, later), Found::Live(_)));
        }
        assert_eq!(s.live(later), MAX_PER_ACCOUNT + 1);
        // A kick or lock of helen ends all of hers, and nobody else's.
        assert_eq!(s.end_account("helen").len(), MAX_PER_ACCOUNT);
        assert!(matches!(s.find(&fifth.cookie, later), Found::None));
        assert!(matches!(s.find(&other, later), Found::Live(_)));
        assert!(s.end_account("nobody").is_empty());
    }
}
