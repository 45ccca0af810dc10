//! [`LockMemory`]: the locks and unlocks this gateway has seen, kept until they end, so that it
//! can write them back (`restore_locks` in `policy.lua`) after a failover or a Redis that came
//! back empty. A lock is then lost only if Redis and every gateway lose it together. An unlock is
//! remembered as its tombstone (the account's epoch at the unlock): written back first, it lifts
//! older locks another gateway wrote back, and no lock older than it is written back after it.
//!
//! A restart of Redis breaks the gateway's connection, so the write-back follows; an operator's
//! `FLUSHALL` on a live connection is not noticed.
//!
//! Nothing here decides anything: the memory is only ever written to Redis, through the function
//! that compares epochs, never read in place of Redis (there is no in-memory fallback).

use std::collections::HashMap;
use std::sync::Mutex;

use super::wire::{SeenLock, SeenUnlock};

/// Past this many entries, ended ones are dropped at every insert.
const PRUNE_AT: usize = 1024;

/// The account of an encoded lock key (`account` or `account\0address`).
fn account_of(key: &str) -> &str {
    key.split('\0').next().unwrap_or(key)
}

#[derive(Default)]
struct Inner {
    locks: HashMap<String, SeenLock>,
    unlocks: HashMap<String, SeenUnlock>,
}

impl Inner {
    fn prune(&mut self, now: u64) {
        self.locks.retain(|_, l| l.until > now);
        self.unlocks.retain(|_, u| u.until > now);
    }

    /// Forget the account's locks no newer than `epoch`.
    fn lift(&mut self, account: &str, epoch: u64) {
        self.locks
            .retain(|k, l| account_of(k) != account || l.epoch > epoch);
    }
}

/// The locks and unlocks seen, until they end (times in the store's clock, milliseconds).
#[derive(Default)]
pub(crate) struct LockMemory {
    inner: Mutex<Inner>,
}

impl LockMemory {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember locks Redis answered with (the newest of each key), unless ended at `now` or
    /// older than an unlock remembered.
    pub(crate) fn saw_locks(&self, locks: Vec<SeenLock>, now: u64) {
        if locks.is_empty() {
            return;
        }
        let mut m = self.inner();
        if m.locks.len() + m.unlocks.len() > PRUNE_AT {
            m.prune(now);
        }
        for l in locks {
            if l.until <= now
                || m.unlocks
                    .get(account_of(&l.key))
                    .is_some_and(|u| u.epoch >= l.epoch)
            {
                continue;
            }
            match m.locks.get(&l.key) {
                Some(had) if had.epoch >= l.epoch => {}
                _ => {
                    m.locks.insert(l.key.clone(), l);
                }
            }
        }
    }

    /// Remember an unlock made here: its account's older locks are forgotten, its tombstone kept.
    pub(crate) fn saw_unlock(&self, u: SeenUnlock) {
        let mut m = self.inner();
        m.lift(&u.account, u.epoch);
        match m.unlocks.get(&u.account) {
            Some(had) if had.epoch >= u.epoch => {}
            _ => {
                m.unlocks.insert(u.account.clone(), u);
            }
        }
    }

    /// Redis says the account's last unlock had `epoch`: forget its older locks.
    pub(crate) fn saw_tombstone(&self, account: &str, epoch: u64) {
        if epoch > 0 {
            self.inner().lift(account, epoch);
        }
    }

    /// Locks that ended (a sweep lifted them): forget them unless a newer one was seen since.
    pub(crate) fn forget(&self, locks: &[SeenLock]) {
        let mut m = self.inner();
        for l in locks {
            if m.locks.get(&l.key).is_some_and(|had| had.epoch <= l.epoch) {
                m.locks.remove(&l.key);
            }
        }
    }

    /// What to write back at `now`, as `restore_locks` takes it; `None` when nothing is
    /// remembered.
    pub(crate) fn payload(&self, now: u64) -> Option<String> {
        let mut m = self.inner();
        m.prune(now);
        if m.locks.is_empty() && m.unlocks.is_empty() {
            return None;
        }
        let unlocks: Vec<serde_json::Value> = m
            .unlocks
            .values()
            .map(|u| {
                serde_json::json!({
                    "account": u.account,
                    "epoch": u.epoch,
                    "keep": u.until.saturating_sub(now),
                })
            })
            .collect();
        let locks: Vec<&SeenLock> = m.locks.values().collect();
        // cjson reads an empty array as an empty object, which ipairs walks as empty.
        serde_json::to_string(&serde_json::json!({ "locks": locks, "unlocks": unlocks })).ok()
    }

    /// How many locks and unlocks it holds.
    pub(crate) fn len(&self) -> (usize, usize) {
        let m = self.inner();
        (m.locks.len(), m.unlocks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(key: &str, epoch: u64, until: u64) -> SeenLock {
        SeenLock {
            key: key.into(),
            since: 0,
            until,
            failures: 5,
            admin: false,
            akind: "directory".into(),
            epoch,
        }
    }

    #[test]
    fn an_unlock_forgets_older_locks_and_outranks_them_later() {
        let m = LockMemory::default();
        m.saw_locks(
            vec![
                lock("ann", 5, 100),
                lock("ann\u{0}192.0.2.1", 6, 100),
                lock("bob", 7, 100),
            ],
            10,
        );
        assert_eq!(m.len(), (3, 0));
        m.saw_unlock(SeenUnlock {
            account: "ann".into(),
            epoch: 8,
            until: 1000,
        });
        assert_eq!(m.len(), (1, 1));
        // A late answer carrying the old lock does not bring it back; a newer lock does.
        m.saw_locks(vec![lock("ann", 5, 100)], 10);
        assert_eq!(m.len(), (1, 1));
        m.saw_locks(vec![lock("ann", 9, 100)], 10);
        assert_eq!(m.len(), (2, 1));
        // Ended locks are neither taken nor written back.
        m.saw_locks(vec![lock("cat", 10, 50)], 60);
        let p: serde_json::Value = serde_json::from_str(&m.payload(60).unwrap()).unwrap();
        assert_eq!(p["locks"].as_array().unwrap().len(), 2);
        assert_eq!(p["unlocks"][0]["keep"], 940);
        m.saw_tombstone("bob", 7);
        m.forget(&[lock("ann", 9, 100)]);
        assert_eq!(m.len(), (0, 1));
        assert!(m.payload(2000).is_none());
    }
}
