//! What the directory said lately about which entry a name belongs to ([`Names`]), so that a
//! name's later logins, its Basic caller's requests and administrators' commands find the account
//! without a search. The names themselves are prepared in [`crate::account`].

use std::time::Duration;

use dashmap::DashMap;

use crate::account::MAX_ACCOUNT_BYTES;
use crate::auth::Lookup;
use crate::clock::Timestamp;

/// The most names [`Names`] remembers (each a few hundred bytes).
pub const MAX_NAMES: usize = 10_000;

struct Named {
    found: Lookup,
    account: String,
    expires: Timestamp,
}

/// What the directory said lately about which entry a name belongs to, and the account that
/// makes it: so that a name's later logins, its Basic caller's requests and administrators'
/// commands find the account without a search. Keyed by the name as the directory was given it;
/// at most [`MAX_NAMES`] names, each for `auth.cache_ttl`.
#[derive(Default)]
pub struct Names {
    map: DashMap<String, Named>,
}

impl Names {
    /// The lookup and account remembered for `name`, unless expired.
    pub fn get(&self, name: &str, now: Timestamp) -> Option<(Lookup, String)> {
        self.map
            .get(name)
            .filter(|n| n.expires > now)
            .map(|n| (n.found.clone(), n.account.clone()))
    }

    /// Whether a name the directory lately said it does not know counts as `account`.
    pub fn is_local(&self, account: &str, now: Timestamp) -> bool {
        self.map
            .iter()
            .any(|n| n.expires > now && n.found == Lookup::NoEntry && n.account == account)
    }

    /// The account remembered for `name`, unless expired.
    pub fn account(&self, name: &str, now: Timestamp) -> Option<String> {
        self.map
            .get(name)
            .filter(|n| n.expires > now)
            .map(|n| n.account.clone())
    }

    /// Remember `found` and `account` for `name`, for `ttl`. When full, expired names go; if it
    /// is still full, everything goes (the next logins search again).
    pub fn insert(
        &self,
        name: &str,
        found: Lookup,
        account: String,
        now: Timestamp,
        ttl: Duration,
    ) {
        if ttl.is_zero() || name.len() > 4 * MAX_ACCOUNT_BYTES {
            return;
        }
        let map = &self.map;
        if map.len() >= MAX_NAMES && !map.contains_key(name) {
            map.retain(|_, n| n.expires > now);
            if map.len() >= MAX_NAMES {
                map.clear();
            }
        }
        map.insert(
            name.to_owned(),
            Named {
                found,
                account,
                expires: now + ttl,
            },
        );
    }

    /// Forget everything (a reload may have changed the directory).
    pub fn clear(&self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_remembered_for_a_while_and_bounded() {
        let names = Names::default();
        let t0 = Timestamp::default();
        let ttl = Duration::from_secs(60);
        names.insert("Ann  Lee", Lookup::NoEntry, "ann lee".into(), t0, ttl);
        assert_eq!(names.account("Ann  Lee", t0).as_deref(), Some("ann lee"));
        assert_eq!(names.account("ann lee", t0), None, "keyed as given");
        assert_eq!(names.account("Ann  Lee", t0 + ttl), None, "expired");
        names.insert("zero", Lookup::NoEntry, "zero".into(), t0, Duration::ZERO);
        assert_eq!(names.account("zero", t0), None, "a zero TTL keeps nothing");
        for i in 0..(MAX_NAMES + 10) {
            names.insert(&format!("u{i}"), Lookup::NoEntry, format!("u{i}"), t0, ttl);
            assert!(names.len() <= MAX_NAMES);
        }
        names.clear();
        assert!(names.is_empty());
    }
}
