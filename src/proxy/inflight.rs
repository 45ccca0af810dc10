//! `policy.public_inflight_per_ip`: how many public-path requests from one address are still
//! arriving. A request counts from the moment its headers are read until its body has been
//! received in full (or it is refused or abandoned); a download or an open WebSocket after
//! that does not count. Beyond the limit a request gets 429: a slow or stalled upload must not
//! tie up the gateway, nor (see the read-ahead in [`super`]) a connection to Faspex.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

/// The count per client address. Entries go when their count returns to zero.
pub struct PublicInflight {
    counts: DashMap<IpAddr, u32>,
}

/// One request's place in its address's count.
pub struct InflightGuard {
    table: Arc<PublicInflight>,
    ip: IpAddr,
}

impl PublicInflight {
    pub fn new() -> Arc<Self> {
        Arc::new(PublicInflight {
            counts: DashMap::new(),
        })
    }

    /// Count one more request from `ip`, unless `limit` are already arriving from it.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<InflightGuard> {
        let mut n = self.counts.entry(ip).or_insert(0);
        if *n >= limit {
            let zero = *n == 0;
            drop(n);
            if zero {
                self.counts.remove_if(&ip, |_, n| *n == 0);
            }
            return None;
        }
        *n += 1;
        drop(n);
        Some(InflightGuard {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Requests from `ip` still arriving.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.counts.get(&ip).map_or(0, |n| *n)
    }

    /// Addresses with a request arriving.
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.table.counts.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_limit_and_no_more_and_others_are_apart() {
        let t = PublicInflight::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| t.enter(a, 3).unwrap()).collect();
        assert!(t.enter(a, 3).is_none());
        let other = t.enter(b, 3).expect("another address has its own count");
        assert_eq!(t.count(a), 3);
        drop(held);
        assert_eq!(t.count(a), 0);
        assert!(
            t.enter(a, 3).is_some(),
            "a slot is back once a request has arrived"
        );
        drop(other);
        assert_eq!(t.addresses(), 0, "no entry outlives its requests");
    }

    #[test]
    fn concurrent_entries_never_pass_the_limit() {
        let t = PublicInflight::new();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let all_tried = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let mut held = Vec::new();
                    for _ in 0..100 {
                        if let Some(g) = t.enter(ip, 32) {
                            held.push(g);
                        }
                    }
                    admitted.fetch_add(held.len(), std::sync::atomic::Ordering::SeqCst);
                    // (held until every thread has tried: the count is at its peak)
                    all_tried.wait();
                });
            }
        });
        assert_eq!(admitted.into_inner(), 32);
        assert_eq!(t.addresses(), 0);
    }
}
