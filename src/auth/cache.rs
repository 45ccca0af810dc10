//! The verification cache: recent successful credential checks, so that an HTTP Basic API caller,
//! who sends the password with every request, does not cost a bind per request.
//!
//! An entry is keyed by HMAC-SHA-256, under a key made fresh for each process, of the normalised
//! account and the password. Neither is stored: a memory dump yields keyed digests that cannot be
//! tested offline without the process key. A wrong password has another digest, so it never rides
//! on an entry. Entries live `auth.cache_ttl` from the check that made them (a hit does not
//! extend them), and [`VerificationCache::forget`] drops an account's entries when an
//! administrator kicks or locks it.
//!
//! A check that was already running when the administrator acted must not put its success back
//! afterwards: callers take the [`VerificationCache::epoch`] before the check and pass it to
//! [`VerificationCache::insert`], which keeps nothing if a forget or clear happened since.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::clock::Timestamp;

/// The most entries kept. Past it, expired entries are swept; if it is still full, a new success
/// is simply not cached (the next request checks again). One entry is about 100 bytes.
pub const MAX_ENTRIES: usize = 100_000;

type Digest = [u8; 32];

struct Entry {
    account: Box<str>,
    expires: Timestamp,
}

/// See the module documentation. Cheap to share behind an `Arc`; every method takes `now`.
pub struct VerificationCache {
    key: ring::hmac::Key,
    entries: DashMap<Digest, Entry>,
    max_entries: usize,
    /// Inserts since the last sweep, so that sweeps are amortised.
    inserts: AtomicUsize,
    /// Bumped by every forget and clear.
    epoch: AtomicU64,
}

impl Default for VerificationCache {
    fn default() -> Self {
        Self::new(MAX_ENTRIES)
    }
}

impl VerificationCache {
    pub fn new(max_entries: usize) -> Self {
        let rng = ring::rand::SystemRandom::new();
        // Without randomness the process could not run TLS either; a fixed fallback key would
        // still never hold a password, only weaker digests.
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"no randomness"));
        Self {
            key,
            entries: DashMap::new(),
            max_entries,
            inserts: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    fn digest(&self, account: &str, password: &str) -> Digest {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        // Length-prefix the account so that ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(account.len() as u64).to_be_bytes());
        ctx.update(account.as_bytes());
        ctx.update(password.as_bytes());
        let mut d = [0u8; 32];
        d.copy_from_slice(ctx.sign().as_ref());
        d
    }

    /// Whether `password` was verified for `account` within the TTL.
    pub fn hit(&self, account: &str, password: &str, now: Timestamp) -> bool {
        if password.is_empty() {
            return false;
        }
        let d = self.digest(account, password);
        let live = match self.entries.get(&d) {
            Some(e) => e.expires > now && &*e.account == account,
            None => return false,
        };
        if !live {
            self.entries.remove_if(&d, |_, e| e.expires <= now);
        }
        live
    }

    /// Take before a credential check whose success may be inserted.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Remember that `password` is `account`'s, until `now + ttl`, unless the cache was forgotten
    /// or cleared since `epoch` (taken before the check). A zero TTL caches nothing.
    pub fn insert(&self, account: &str, password: &str, now: Timestamp, ttl: Duration, epoch: u64) {
        if ttl.is_zero() || password.is_empty() || self.epoch() != epoch {
            return;
        }
        if self.entries.len() >= self.max_entries
            || self.inserts.fetch_add(1, Ordering::Relaxed) >= self.max_entries / 4
        {
            self.sweep(now);
        }
        if self.entries.len() >= self.max_entries {
            return;
        }
        let d = self.digest(account, password);
        self.entries.insert(
            d,
            Entry {
                account: account.into(),
                expires: now + ttl,
            },
        );
        // A forget that began after the check above may have swept before this insert: it
        // bumped the epoch first, so look again.
        if self.epoch() != epoch {
            self.entries.remove(&d);
        }
    }

    /// Drop every entry of `account`: it was kicked or locked by an administrator, so its next
    /// request must pass a fresh credential check (which a lock refuses). Returns how many.
    pub fn forget(&self, account: &str) -> usize {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let before = self.entries.len();
        self.entries.retain(|_, e| &*e.account != account);
        before.saturating_sub(self.entries.len())
    }

    /// Drop everything (the TTL changed, or the users file was replaced).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// Drop expired entries.
    pub fn sweep(&self, now: Timestamp) {
        self.inserts.store(0, Ordering::Relaxed);
        self.entries.retain(|_, e| e.expires > now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn only_the_verified_password_hits_and_only_within_the_ttl() {
        let clock = ManualClock::at_2026();
        let c = VerificationCache::default();
        c.insert("ann", "right", clock.now(), TTL, c.epoch());
        assert!(c.hit("ann", "right", clock.now()));
        assert!(
            !c.hit("ann", "wrong", clock.now()),
            "a wrong password never rides"
        );
        assert!(!c.hit("ann", "", clock.now()));
        assert!(
            !c.hit("bob", "right", clock.now()),
            "another account never rides"
        );
        assert!(
            !c.hit("an", "nright", clock.now()),
            "the account is length-prefixed"
        );
        clock.advance(TTL - Duration::from_millis(1));
        assert!(
            c.hit("ann", "right", clock.now()),
            "hits do not need to refresh"
        );
        clock.advance(Duration::from_millis(1));
        assert!(
            !c.hit("ann", "right", clock.now()),
            "gone exactly at the TTL"
        );
        assert!(c.is_empty(), "an expired entry is dropped when found");
    }

    #[test]
    fn a_check_that_began_before_a_forget_caches_nothing() {
        let now = ManualClock::at_2026().now();
        let c = VerificationCache::default();
        let before = c.epoch();
        c.forget("ann"); // an administrator locked ann while her check ran
        c.insert("ann", "pw", now, TTL, before);
        assert!(!c.hit("ann", "pw", now));
        c.insert("ann", "pw", now, TTL, c.epoch());
        assert!(
            c.hit("ann", "pw", now),
            "a check begun after the lock may cache"
        );
        let before = c.epoch();
        c.clear();
        c.insert("bob", "pw", now, TTL, before);
        assert!(c.is_empty());
    }

    #[test]
    fn forget_drops_every_entry_of_the_account_only() {
        let now = ManualClock::at_2026().now();
        let c = VerificationCache::default();
        c.insert("ann", "one", now, TTL, c.epoch());
        c.insert("ann", "two", now, TTL, c.epoch());
        c.insert("bob", "one", now, TTL, c.epoch());
        assert_eq!(c.forget("ann"), 2);
        assert!(!c.hit("ann", "one", now) && !c.hit("ann", "two", now));
        assert!(c.hit("bob", "one", now));
        assert_eq!(c.forget("nobody"), 0);
    }

    #[test]
    fn nothing_cached_with_a_zero_ttl_or_an_empty_password() {
        let now = ManualClock::at_2026().now();
        let c = VerificationCache::default();
        c.insert("ann", "pw", now, Duration::ZERO, c.epoch());
        c.insert("ann", "", now, TTL, c.epoch());
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_expired_entries_make_room_and_a_full_cache_just_stops_caching() {
        let clock = ManualClock::at_2026();
        let c = VerificationCache::new(100);
        for i in 0..150 {
            c.insert(&format!("u{i}"), "pw", clock.now(), TTL, c.epoch());
        }
        assert_eq!(c.len(), 100, "never past the bound");
        assert!(
            !c.hit("u120", "pw", clock.now()),
            "the overflow was not cached"
        );
        clock.advance(TTL);
        c.insert("late", "pw", clock.now(), TTL, c.epoch());
        assert_eq!(c.len(), 1, "expired entries were swept to make room");
        assert!(c.hit("late", "pw", clock.now()));
    }

    #[test]
    fn the_password_is_not_in_memory_in_any_plain_form() {
        let now = ManualClock::at_2026().now();
        let c = VerificationCache::default();
        c.insert("ann", "hunter2-secret", now, TTL, c.epoch());
        let plain = ring::digest::digest(&ring::digest::SHA256, b"hunter2-secret");
        for e in c.entries.iter() {
            assert_ne!(
                e.key().as_slice(),
                plain.as_ref(),
                "a keyed digest, not a bare hash"
            );
        }
        // Two processes (two caches) digest the same pair differently.
        let other = VerificationCache::default();
        assert_ne!(c.digest("ann", "x"), other.digest("ann", "x"));
    }
}
