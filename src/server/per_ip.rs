//! The per-address connection limit (`server.max_connections_per_ip`): which "address" a TCP
//! peer counts as, how many client connections each address has open, and the guard whose drop
//! gives a connection's place back.
//!
//! An address is an IPv4 address (an IPv4-mapped IPv6 peer, `::ffff:a.b.c.d`, as a dual-stack
//! listener reports IPv4 clients, counts as that IPv4 address) or an IPv6 prefix of
//! `server.ipv6_prefix_len` bits: one host, or one site's /64, can mint as many IPv6 addresses
//! as it likes, so counting each would limit nothing. Peers in `server.trusted_proxies` are
//! exempt: a balancer carries many users' connections from one address.
//!
//! The table holds one entry per address that has a connection open, removed when its count
//! returns to zero, so it never holds more entries than there are open connections (at most
//! `server.max_connections`).

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

pub use crate::conn::address_key;

/// Open client connections per address, against `server.max_connections_per_ip`.
pub struct PerIpLimit {
    limit: usize,
    ipv6_prefix_len: u8,
    trusted: Vec<ipnet::IpNet>,
    open: DashMap<IpAddr, usize>,
}

/// The outcome of [`PerIpLimit::admit`].
pub enum Admission {
    /// Counted; the guard gives the place back when dropped.
    Counted(PerIpGuard),
    /// A trusted proxy: not counted.
    Exempt,
    /// The address already has `max_connections_per_ip` open: close this one.
    Refused,
}

impl PerIpLimit {
    pub fn new(limit: usize, ipv6_prefix_len: u8, trusted: Vec<ipnet::IpNet>) -> Arc<PerIpLimit> {
        Arc::new(PerIpLimit {
            // The config refuses 0; a 0 here would refuse everyone, so treat it as 1.
            limit: limit.max(1),
            ipv6_prefix_len,
            trusted,
            open: DashMap::new(),
        })
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        // A dual-stack listener reports an IPv4 proxy as `::ffff:a.b.c.d`, while the operator
        // lists it as `a.b.c.d`: match either spelling.
        let canonical = peer.to_canonical();
        self.trusted
            .iter()
            .any(|net| net.contains(&peer) || net.contains(&canonical))
    }

    /// Count a new connection from `peer`, unless it is exempt or its address is full.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        if self.is_trusted(peer) {
            return Admission::Exempt;
        }
        let key = address_key(peer, self.ipv6_prefix_len);
        match self.open.entry(key) {
            Entry::Occupied(mut e) => {
                if *e.get() >= self.limit {
                    return Admission::Refused;
                }
                *e.get_mut() += 1;
            }
            Entry::Vacant(e) => {
                e.insert(1);
            }
        }
        Admission::Counted(PerIpGuard {
            limit: self.clone(),
            key,
        })
    }

    /// Connections counted for `peer`'s address now (for tests and diagnostics).
    pub fn open_for(&self, peer: IpAddr) -> usize {
        let key = address_key(peer, self.ipv6_prefix_len);
        self.open.get(&key).map(|n| *n).unwrap_or(0)
    }

    /// How many addresses have a connection open.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }

    fn release(&self, key: IpAddr) {
        if let Entry::Occupied(mut e) = self.open.entry(key) {
            let left = e.get().saturating_sub(1);
            if left == 0 {
                // Dropped at zero so that the table only ever holds addresses with a
                // connection open.
                e.remove();
            } else {
                *e.get_mut() = left;
            }
        }
    }
}

/// One connection's place under its address's limit, given back on drop.
pub struct PerIpGuard {
    limit: Arc<PerIpLimit>,
    key: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        self.limit.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_in_one_prefix_share_a_key() {
        let a = address_key(ip("2001:db8:1:2::1"), 64);
        let b = address_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64);
        let other = address_key(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a, ip("2001:db8:1:2::"));
        // A /48 folds the two /64s together.
        assert_eq!(
            address_key(ip("2001:db8:1:2::1"), 48),
            address_key(ip("2001:db8:1:3::1"), 48)
        );
    }

    #[test]
    fn prefix_128_is_the_exact_address_and_1_is_half_the_space() {
        assert_eq!(address_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_ne!(
            address_key(ip("2001:db8::1"), 128),
            address_key(ip("2001:db8::2"), 128)
        );
        assert_eq!(address_key(ip("7fff::1"), 1), ip("::"));
        assert_eq!(address_key(ip("ffff::1"), 1), ip("8000::"));
        // Out-of-range lengths are clamped, not a panic.
        assert_eq!(address_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(address_key(ip("2001:db8::1"), 200), ip("2001:db8::1"));
    }

    #[test]
    fn ipv4_mapped_counts_as_ipv4_and_ipv4_is_exact() {
        assert_eq!(address_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(address_key(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_ne!(
            address_key(ip("192.0.2.7"), 1),
            address_key(ip("192.0.2.8"), 1)
        );
    }

    #[test]
    fn the_limit_refuses_past_it_and_frees_on_drop() {
        let limit = PerIpLimit::new(2, 64, Vec::new());
        let a = ip("192.0.2.1");
        let g1 = limit.admit(a);
        let g2 = limit.admit(ip("::ffff:192.0.2.1"));
        assert!(matches!(g1, Admission::Counted(_)));
        assert!(matches!(g2, Admission::Counted(_)));
        assert!(matches!(limit.admit(a), Admission::Refused));
        // Another address is unaffected.
        let other = limit.admit(ip("192.0.2.2"));
        assert!(matches!(other, Admission::Counted(_)));
        assert_eq!(limit.open_for(a), 2);
        drop(g1);
        assert_eq!(limit.open_for(a), 1);
        let g3 = limit.admit(a);
        assert!(matches!(g3, Admission::Counted(_)));
        drop((g2, g3, other));
        // Entries go at zero: nothing is kept for addresses with no connection.
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn ipv6_hosts_in_one_prefix_share_the_limit() {
        let limit = PerIpLimit::new(1, 64, Vec::new());
        let _g = limit.admit(ip("2001:db8::1"));
        assert!(matches!(limit.admit(ip("2001:db8::2")), Admission::Refused));
        assert!(matches!(
            limit.admit(ip("2001:db8:0:1::1")),
            Admission::Counted(_)
        ));
    }

    #[test]
    fn trusted_proxies_are_exempt_in_either_spelling() {
        let limit = PerIpLimit::new(1, 64, vec!["10.0.0.0/8".parse().unwrap()]);
        for _ in 0..10 {
            assert!(matches!(limit.admit(ip("10.1.2.3")), Admission::Exempt));
            assert!(matches!(
                limit.admit(ip("::ffff:10.1.2.3")),
                Admission::Exempt
            ));
        }
        assert_eq!(limit.addresses(), 0);
    }
}
