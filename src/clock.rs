//! Time, injected: the [`Clock`] every decision that depends on time takes `now` from (the
//! policies, the session cookie's `iat`/`exp`, LDAP down-marking, the audit log's stamps), the
//! wall clock that production uses, and a [`ManualClock`] that tests move an hour forward in a
//! microsecond. [`TimeSource`] says which one a gateway runs on: a build with the
//! `test-support` feature can start the whole gateway on a manual clock
//! (`faspex-gate run --manual-clock`, moved with `POST /admin/clock`), so that integration
//! tests see idle and lockout expiry without sleeping; a release build cannot.
//!
//! Policy state outlives the process (a lockout must hold across a restart), so time is wall time:
//! a [`Timestamp`] is milliseconds since the Unix epoch, the unit the store persists.

use std::fmt;
use std::ops::Add;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp(0);

    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// As a [`SystemTime`], for formatting.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z).
    pub const LAST_PRINTABLE: Timestamp = Timestamp(253_402_300_799_999);

    /// RFC 3339 in UTC, to the millisecond. A time past the year 9999, which RFC 3339 cannot
    /// write (and which no configuration reaches: durations are at most 100 years), is written
    /// as the last one it can, rather than fail: an audit line or a log line never panics.
    pub fn rfc3339(self) -> String {
        let t = self.min(Self::LAST_PRINTABLE);
        humantime::format_rfc3339_millis(t.to_system_time()).to_string()
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturating: a timestamp never wraps.
    fn add(self, d: Duration) -> Timestamp {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A source of `now`. Cheap to call; shared as `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The host's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        // (as `as_millis`, saturating, without its 128-bit arithmetic)
        Timestamp(
            since
                .as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(since.subsec_millis())),
        )
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicU64::new(start.0)))
    }

    /// A clock standing at a fixed, realistic date (2026-01-01T00:00:00Z).
    pub fn at_2026() -> Self {
        Self::new(Timestamp(1_767_225_600_000))
    }

    /// Move forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Stand at `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The clock a whole gateway runs on.
#[derive(Clone, Debug, Default)]
pub enum TimeSource {
    /// The host's wall clock: production.
    #[default]
    Wall,
    /// A manual clock, started at the wall's time, that only the admin API's `POST /admin/clock`
    /// moves. Tests only: it exists in builds with the `test-support` feature.
    #[cfg(feature = "test-support")]
    Manual(ManualClock),
}

impl TimeSource {
    /// A manual clock standing at the wall's time now.
    #[cfg(feature = "test-support")]
    pub fn manual() -> Self {
        TimeSource::Manual(ManualClock::new(SystemClock.now()))
    }

    /// The clock to hand to every part that decides by time (one for the whole gateway).
    pub fn clock(&self) -> Arc<dyn Clock> {
        match self {
            TimeSource::Wall => Arc::new(SystemClock),
            #[cfg(feature = "test-support")]
            TimeSource::Manual(c) => Arc::new(c.clone()),
        }
    }

    /// Whether time is moved by hand (tests): then a shared store takes its time from this clock
    /// too, not from its server, so that tests move time for every decision.
    pub fn is_manual(&self) -> bool {
        !matches!(self, TimeSource::Wall)
    }

    /// The manual clock, when the gateway runs on one.
    #[cfg(feature = "test-support")]
    pub fn manual_clock(&self) -> Option<&ManualClock> {
        match self {
            TimeSource::Wall => None,
            TimeSource::Manual(c) => Some(c),
        }
    }
}

/// Our clock as governor's, so that rate limits follow injected time too.
#[derive(Clone)]
pub struct GovernorClock(pub Arc<dyn Clock>);

impl governor::clock::Clock for GovernorClock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        Duration::from_millis(self.0.now().as_millis()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formatting never panics: past the year 9999 (where humantime fails) the last printable
    /// millisecond is written.
    #[test]
    fn times_past_the_year_9999_print_as_its_last_millisecond() {
        assert_eq!(
            Timestamp::LAST_PRINTABLE.rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        for t in [
            Timestamp::from_millis(253_402_300_800_000),
            Timestamp::from_millis(9_000_000_000_000_000),
            Timestamp::from_millis(u64::MAX),
        ] {
            assert_eq!(t.rfc3339(), "9999-12-31T23:59:59.999Z");
            assert_eq!(t.to_string(), "9999-12-31T23:59:59.999Z");
        }
        assert_eq!(
            Timestamp::from_millis(1_767_225_600_000).rfc3339(),
            "2026-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_2026();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(3600));
        assert_eq!(c.now().since(t0), Duration::from_secs(3600));
        assert_eq!(t0.since(c.now()), Duration::ZERO, "since saturates");
        assert_eq!(t0.rfc3339(), "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn adding_saturates() {
        assert_eq!(
            Timestamp::from_millis(u64::MAX - 1) + Duration::from_secs(1),
            Timestamp::from_millis(u64::MAX)
        );
    }
}
