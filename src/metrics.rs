//! Prometheus metrics: one registry per gateway, and an [`Observer`] that turns the policy
//! engine's events into the contract's counters and histograms.
//!
//! Names, types and labels are the contract's (`interface.md`, "Metrics"); no label ever holds a
//! username or a raw path. Every label value the contract lists starts at zero, so dashboards and
//! alerts see a series before its first event. The admin listener's `GET /metrics` (the
//! operations work) serves [`Metrics::render`].

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::policy::{DirectoryResult, LoginResult, Observer, PolicyEvent};
use crate::store::EndReason;

/// `faspex_gate_logins_total{result}` values, in the contract's order.
pub const LOGIN_RESULTS: [LoginResult; 9] = [
    LoginResult::Success,
    LoginResult::BadCredentials,
    LoginResult::Locked,
    LoginResult::LicenseFull,
    LoginResult::OtherClient,
    LoginResult::Throttled,
    LoginResult::DirectoryError,
    LoginResult::UpstreamRefused,
    LoginResult::Invalid,
];

/// `faspex_gate_sessions_ended_total{reason}` values.
pub const END_REASONS: [EndReason; 5] = [
    EndReason::Logout,
    EndReason::Idle,
    EndReason::Absolute,
    EndReason::Replaced,
    EndReason::Admin,
];

const DIRECTORY_RESULTS: [DirectoryResult; 3] = [
    DirectoryResult::Ok,
    DirectoryResult::Rejected,
    DirectoryResult::Error,
];

/// The registry and the metrics fed by policy events.
pub struct Metrics {
    registry: Registry,
    logins: IntCounterVec,
    lockouts: IntCounter,
    sessions_ended: IntCounterVec,
    directory: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let logins = IntCounterVec::new(
            Opts::new(
                "faspex_gate_logins_total",
                "Logins (a credential check plus admission), by result.",
            ),
            &["result"],
        )?;
        let lockouts = IntCounter::new(
            "faspex_gate_lockouts_total",
            "Accounts locked after too many failed logins.",
        )?;
        let sessions_ended = IntCounterVec::new(
            Opts::new(
                "faspex_gate_sessions_ended_total",
                "Sessions ended, by reason.",
            ),
            &["reason"],
        )?;
        let directory = HistogramVec::new(
            HistogramOpts::new(
                "faspex_gate_directory_duration_seconds",
                "Time of credential checks against the directory (or users file), by result; \
                 result=\"error\" counts checks the directory could not answer.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )?;
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(lockouts.clone()))?;
        registry.register(Box::new(sessions_ended.clone()))?;
        registry.register(Box::new(directory.clone()))?;
        for r in LOGIN_RESULTS {
            logins.with_label_values(&[r.as_str()]);
        }
        for r in END_REASONS {
            sessions_ended.with_label_values(&[r.as_str()]);
        }
        for r in DIRECTORY_RESULTS {
            directory.with_label_values(&[r.as_str()]);
        }
        Ok(Self {
            registry,
            logins,
            lockouts,
            sessions_ended,
            directory,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail; an error would leave it empty.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Observer for Metrics {
    fn event(&self, e: &PolicyEvent<'_>) {
        match e {
            // (`store_error` is not a contract result: such logins are logged, not labelled.)
            PolicyEvent::Login { result, .. } if LOGIN_RESULTS.contains(result) => {
                self.logins.with_label_values(&[result.as_str()]).inc();
            }
            PolicyEvent::LockedOut(_) => self.lockouts.inc(),
            PolicyEvent::SessionEnded(_, why) if END_REASONS.contains(why) => {
                self.sessions_ended.with_label_values(&[why.as_str()]).inc();
            }
            PolicyEvent::DirectoryCheck { result, elapsed } => {
                self.directory
                    .with_label_values(&[result.as_str()])
                    .observe(elapsed.as_secs_f64());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn every_contract_series_starts_at_zero_with_help() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        for r in LOGIN_RESULTS {
            let s = format!("faspex_gate_logins_total{{result=\"{}\"}}", r.as_str());
            assert_eq!(value(&text, &s), 0.0);
        }
        for r in END_REASONS {
            let s = format!(
                "faspex_gate_sessions_ended_total{{reason=\"{}\"}}",
                r.as_str()
            );
            assert_eq!(value(&text, &s), 0.0);
        }
        assert_eq!(value(&text, "faspex_gate_lockouts_total"), 0.0);
        assert_eq!(
            value(
                &text,
                "faspex_gate_directory_duration_seconds_count{result=\"error\"}"
            ),
            0.0
        );
        for name in [
            "faspex_gate_logins_total",
            "faspex_gate_lockouts_total",
            "faspex_gate_sessions_ended_total",
            "faspex_gate_directory_duration_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn directory_outages_and_logins_are_counted() {
        let m = Metrics::new().unwrap();
        let ip = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            m.event(&PolicyEvent::DirectoryCheck {
                result: DirectoryResult::Error,
                elapsed: Duration::from_millis(20),
            });
            m.event(&PolicyEvent::Login {
                account: Some("ann"),
                ip,
                kind: crate::store::ClientKind::Browser,
                result: LoginResult::DirectoryError,
            });
        }
        m.event(&PolicyEvent::Login {
            account: Some("ann"),
            ip,
            kind: crate::store::ClientKind::Browser,
            result: LoginResult::StoreError,
        });
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "faspex_gate_directory_duration_seconds_count{result=\"error\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                "faspex_gate_directory_duration_seconds_bucket{result=\"error\",le=\"0.025\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                "faspex_gate_logins_total{result=\"directory_error\"}"
            ),
            3.0
        );
        assert!(!text.contains("store_error"), "only the contract's labels");
        assert!(!text.contains("ann"), "never a username");
    }
}
