//! Per-address rate limits, with governor on the injected clock: credential checks per source
//! address (`policy.login_attempts_per_ip_per_minute`) and public-path requests per source
//! address (`policy.public_requests_per_ip_per_minute`), and the global ceiling on credential
//! checks from all addresses together (`auth.max_checks_per_second`).
//!
//! An IPv6 client is counted by its /64, since one host commonly holds a whole /64.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::{Clock, GovernorClock};
use crate::config::PolicyConfig;

type Limiter = RateLimiter<
    IpAddr,
    DashMapStateStore<IpAddr>,
    GovernorClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// The address a limit counts: IPv4 as is, IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

type Ceiling = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    GovernorClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// Both per-address limits and the global ceiling.
pub struct Throttle {
    logins: Limiter,
    public: Limiter,
    ceiling: Ceiling,
    clock: GovernorClock,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN))
}

impl Throttle {
    /// The per-address limits from `cfg`; `checks_per_second` for the ceiling (its burst is one
    /// second's worth).
    pub fn new(cfg: &PolicyConfig, checks_per_second: u32, clock: Arc<dyn Clock>) -> Self {
        Self::with_rates(
            cfg.login_attempts_per_ip_per_minute,
            cfg.public_requests_per_ip_per_minute,
            checks_per_second,
            clock,
        )
    }

    pub fn with_rates(
        logins_per_minute: u32,
        public_per_minute: u32,
        checks_per_second: u32,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let clock = GovernorClock(clock);
        let per_second = std::num::NonZeroU32::new(checks_per_second.max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            ceiling: RateLimiter::direct_with_clock(Quota::per_second(per_second), clock.clone()),
            logins: RateLimiter::new(
                per_minute(logins_per_minute),
                DashMapStateStore::default(),
                clock.clone(),
            ),
            public: RateLimiter::new(
                per_minute(public_per_minute),
                DashMapStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    fn check(&self, limiter: &Limiter, ip: IpAddr) -> Result<(), Duration> {
        use governor::clock::Clock as _;
        limiter.check_key(&source_key(ip)).map_err(|not_until| {
            not_until
                .wait_time_from(self.clock.now())
                .max(Duration::from_secs(1))
        })
    }

    /// Take one credential check's token for `ip`, or say how long to wait.
    pub fn login(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.logins, ip)
    }

    /// Take one of the global ceiling's tokens for a credential check, or say how long to wait.
    pub fn ceiling(&self) -> Result<(), Duration> {
        use governor::clock::Clock as _;
        self.ceiling.check().map_err(|not_until| {
            not_until
                .wait_time_from(self.clock.now())
                .max(Duration::from_secs(1))
        })
    }

    /// Take one public request's token for `ip`, or say how long to wait.
    pub fn public(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.public, ip)
    }

    /// Forget addresses whose buckets are full again, so memory follows current traffic.
    pub fn forget_idle(&self) {
        for l in [&self.logins, &self.public] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Addresses tracked (both limits).
    pub fn tracked(&self) -> usize {
        self.logins.len() + self.public.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_minute_of_budget_then_wait_then_more() {
        let clock = ManualClock::at_2026();
        let t = Throttle::with_rates(30, 600, 50, Arc::new(clock.clone()));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..30 {
            assert!(t.login(ip).is_ok(), "attempt {i}");
        }
        let wait = t.login(ip).unwrap_err();
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        // Another address has its own budget; public requests are counted apart.
        assert!(t.login("192.0.2.8".parse().unwrap()).is_ok());
        assert!(t.public(ip).is_ok());
        // One token comes back every 2 s.
        clock.advance(Duration::from_secs(2));
        assert!(t.login(ip).is_ok());
        assert!(t.login(ip).is_err());
        clock.advance(Duration::from_secs(60));
        t.forget_idle();
        assert_eq!(t.tracked(), 1, "only the public bucket is still drawn down");
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let clock = ManualClock::at_2026();
        let t = Throttle::with_rates(2, 2, 50, Arc::new(clock));
        assert!(t.login("2001:db8::1".parse().unwrap()).is_ok());
        assert!(t.login("2001:db8::ffff:2".parse().unwrap()).is_ok());
        assert!(t.login("2001:db8::3".parse().unwrap()).is_err());
        assert!(
            t.login("2001:db8:0:1::3".parse().unwrap()).is_ok(),
            "another /64"
        );
        assert_eq!(
            source_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
