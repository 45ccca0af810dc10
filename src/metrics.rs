//! Prometheus metrics: one registry per gateway, an [`Observer`] that turns the policy engine's
//! events into the contract's counters and histograms, the request and upstream-error counters the
//! proxy feeds, and the gauges (seats, the limit, locked accounts) read from the store at scrape.
//!
//! Names, types and labels are the contract's (`interface.md`, "Metrics"); no label ever holds a
//! username or a raw path. Every label value the contract lists starts at zero, so dashboards and
//! alerts see a series before its first event. The admin listener's `GET /metrics` serves
//! [`Metrics::render`] after [`Metrics::set_state`]: the gauges are the store's counts at the
//! moment of the scrape, so they go back to zero after a sweep, a kick or an unlock without any
//! bookkeeping that could drift.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::policy::{DirectoryResult, LoginResult, Observer, PolicyEvent, Status};
use crate::store::redis::conn::FUNCTIONS;
use crate::store::EndReason;

/// `faspex_gate_requests_total{route}` and `faspex_gate_request_duration_seconds{route}` values.
/// A request whose path cannot be classified (a malformed path, refused with 400) counts as
/// `protected`: it was not let through as anything more open.
pub const ROUTES: [&str; 6] = [
    "public",
    "login",
    "logout",
    "protected",
    "denied",
    "gateway",
];

/// `faspex_gate_requests_total{code}` values.
pub const CODES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// `faspex_gate_upstream_errors_total{kind}` values.
pub const UPSTREAM_ERRORS: [&str; 3] = ["connect", "timeout", "protocol"];

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

/// The `reason` label of `faspex_gate_requests_refused_total`.
pub const REFUSAL_REASONS: [&str; 6] = [
    "credential_field",
    "path",
    "body",
    "header",
    "upgrade",
    "public_inflight",
];

/// `faspex_gate_helpdesk_signins_total{result}` values: the helpdesk console's sign-ins, kept
/// out of `faspex_gate_logins_total`, whose labels the contract fixes.
pub const HELPDESK_SIGNIN_RESULTS: [&str; 9] = [
    "success",
    "bad_credentials",
    "locked",
    "throttled",
    "invalid",
    "directory_error",
    "store_error",
    "not_member",
    "full",
];

/// The `reason` label of `faspex_gate_connections_refused_total`.
pub const CONNECTION_REFUSALS: [&str; 2] = ["per_ip", "total"];

const DIRECTORY_RESULTS: [DirectoryResult; 3] = [
    DirectoryResult::Ok,
    DirectoryResult::Rejected,
    DirectoryResult::Error,
];

/// The registry and the metrics fed by policy events.
/// `faspex_gate_store_errors_total`'s `op` values besides the store's functions
/// ([`crate::store::redis::conn::FUNCTIONS`]): `wait` (replicas short of
/// `store.redis.wait_replicas`) and `other`.
const STORE_OPS_ALSO: [&str; 2] = ["wait", "other"];

pub struct Metrics {
    registry: Registry,
    logins: IntCounterVec,
    lockouts: IntCounter,
    sessions_ended: IntCounterVec,
    directory: HistogramVec,
    /// `requests_total` by [`ROUTES`] then [`CODES`] index: resolved once, so that a request
    /// costs two atomic adds and no label lookup.
    requests: Vec<[IntCounter; 4]>,
    request_duration: Vec<Histogram>,
    upstream_errors: IntCounterVec,
    requests_refused: IntCounterVec,
    headers_dropped: IntCounter,
    connections_refused: IntCounterVec,
    upstream_busy: IntCounter,
    logins_by_kind: IntCounterVec,
    by_kind: IntGaugeVec,
    sessions_active: IntGauge,
    sessions_limit: IntGauge,
    accounts_locked: IntGauge,
    store_up: IntGauge,
    store_errors: IntCounterVec,
    logout_duplicates: IntCounter,
    helpdesk_signins: IntCounterVec,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "faspex_gate_requests_total",
                "Requests answered, by route class and status class.",
            ),
            &["route", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "faspex_gate_request_duration_seconds",
                "Time from a request's arrival to its response headers, by route class.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 120.0,
            ]),
            &["route"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "faspex_gate_upstream_errors_total",
                "Requests to Faspex that failed: no connection, no answer in time, or a broken \
                 answer.",
            ),
            &["kind"],
        )?;
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "faspex_gate_requests_refused_total",
                "Requests refused before anything reached Faspex, by reason: credential_field (a \
                 credential the gateway does not check there), path (a path it does not classify), \
                 body (a body it does not inspect), header (headers it does not forward as read), \
                 upgrade, public_inflight.",
            ),
            &["reason"],
        )?;
        let headers_dropped = IntCounter::new(
            "faspex_gate_request_headers_dropped_total",
            "Request headers dropped before forwarding: names with '_' (which Rack folds into \
             '-'), X-Post-Data-Format, and the URL-override headers (X-Original-URL and the like).",
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "faspex_gate_connections_refused_total",
                "Client connections the gateway would not serve at once, by reason: per_ip (closed: \
                 server.max_connections_per_ip from that address were open), total (left waiting \
                 in the listen backlog: server.max_connections were open).",
            ),
            &["reason"],
        )?;
        let helpdesk_signins = IntCounterVec::new(
            Opts::new(
                "faspex_gate_helpdesk_signins_total",
                "Sign-ins to the helpdesk console, by result (not counted in \
                 faspex_gate_logins_total).",
            ),
            &["result"],
        )?;
        let upstream_busy = IntCounter::new(
            "faspex_gate_upstream_busy_total",
            "Requests answered 503 because every connection to Faspex they could use \
             (upstream.max_connections, three quarters of it for public requests) stayed taken \
             for upstream.connect_timeout.",
        )?;
        let logins_by_kind = IntCounterVec::new(
            Opts::new(
                "faspex_gate_logins_by_account_kind_total",
                "Logins by whose account it was (directory, or local: auth.local_accounts) and \
                 result, for the logins where the name was resolved; logins_total has them all.",
            ),
            &["kind", "result"],
        )?;
        let by_kind = IntGaugeVec::new(
            Opts::new(
                "faspex_gate_accounts_by_kind",
                "Accounts holding a seat (state=\"seated\") and accounts locked \
                 (state=\"locked\") now, by whose account they are: directory or local.",
            ),
            &["state", "kind"],
        )?;
        let sessions_active = IntGauge::new(
            "faspex_gate_sessions_active",
            "Accounts logged in now, each holding one licence seat.",
        )?;
        let sessions_limit = IntGauge::new(
            "faspex_gate_sessions_limit",
            "Licence seats (policy.max_sessions).",
        )?;
        let accounts_locked = IntGauge::new(
            "faspex_gate_accounts_locked",
            "Distinct accounts locked now, by failed logins or by an administrator.",
        )?;
        let store_up = IntGauge::new(
            "faspex_gate_store_up",
            "1 when the state store answers (checked every 2 s), 0 when it does not.",
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "faspex_gate_store_errors_total",
                "Failed calls to the state store, by operation; op=\"wait\" counts replicas \
                 that did not acknowledge within store.redis.wait_timeout.",
            ),
            &["op"],
        )?;
        let logout_duplicates = IntCounter::new(
            "faspex_gate_logout_duplicates_total",
            "Faspex logouts owed for an ended session that were sent a second time (Redis store: \
             a gateway sent one, then stopped before recording it, and another sent it again).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "faspex_gate_build_info",
                "Always 1; the version label says which faspex-gate is running.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(logins.clone()))?;
        registry.register(Box::new(lockouts.clone()))?;
        registry.register(Box::new(sessions_ended.clone()))?;
        registry.register(Box::new(directory.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(requests_refused.clone()))?;
        registry.register(Box::new(headers_dropped.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(upstream_busy.clone()))?;
        registry.register(Box::new(logins_by_kind.clone()))?;
        registry.register(Box::new(by_kind.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(sessions_limit.clone()))?;
        registry.register(Box::new(accounts_locked.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(logout_duplicates.clone()))?;
        registry.register(Box::new(helpdesk_signins.clone()))?;
        for r in HELPDESK_SIGNIN_RESULTS {
            helpdesk_signins.with_label_values(&[r]);
        }
        registry.register(Box::new(build_info))?;
        let requests: Vec<[IntCounter; 4]> = ROUTES
            .iter()
            .map(|route| CODES.map(|code| requests.with_label_values(&[route, code])))
            .collect();
        let request_duration: Vec<Histogram> = ROUTES
            .iter()
            .map(|route| request_duration.with_label_values(&[route]))
            .collect();
        for kind in UPSTREAM_ERRORS {
            upstream_errors.with_label_values(&[kind]);
        }
        for r in REFUSAL_REASONS {
            requests_refused.with_label_values(&[r]);
        }
        for state in ["seated", "locked"] {
            for kind in ["directory", "local"] {
                by_kind.with_label_values(&[state, kind]);
            }
        }
        for r in CONNECTION_REFUSALS {
            connections_refused.with_label_values(&[r]);
        }
        for r in LOGIN_RESULTS {
            logins.with_label_values(&[r.as_str()]);
        }
        for r in END_REASONS {
            sessions_ended.with_label_values(&[r.as_str()]);
        }
        for op in FUNCTIONS.iter().chain(&STORE_OPS_ALSO) {
            store_errors.with_label_values(&[op]);
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
            requests,
            request_duration,
            upstream_errors,
            requests_refused,
            headers_dropped,
            connections_refused,
            upstream_busy,
            logins_by_kind,
            by_kind,
            sessions_active,
            sessions_limit,
            accounts_locked,
            store_up,
            store_errors,
            logout_duplicates,
            helpdesk_signins,
        })
    }

    /// A Faspex logout sent a second time.
    pub fn logout_duplicate(&self) {
        self.logout_duplicates.inc();
    }

    /// Whether the state store answered its last check.
    pub fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// One failed call to the state store; `op` is a store function's name or `wait` (anything
    /// else counts as `other`).
    pub fn store_error(&self, op: &str) {
        let op = if FUNCTIONS.contains(&op) || op == "wait" {
            op
        } else {
            "other"
        };
        self.store_errors.with_label_values(&[op]).inc();
    }

    /// One answered request: `route` is a [`ROUTES`] value (anything else counts as
    /// `protected`), `status` the response's, `elapsed` the time to its headers.
    pub fn request(&self, route: &str, status: http::StatusCode, elapsed: Duration) {
        // (anything else counts as "protected", index 3)
        let r = ROUTES.iter().position(|x| *x == route).unwrap_or(3);
        let c = match status.as_u16() {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            // (1xx never reaches here as a final answer; count it with the failures)
            _ => 3,
        };
        if let (Some(counters), Some(h)) = (self.requests.get(r), self.request_duration.get(r)) {
            counters[c].inc();
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// One request refused before it reached Faspex; `reason` is a [`REFUSAL_REASONS`] value.
    pub fn refused(&self, reason: &str) {
        if REFUSAL_REASONS.contains(&reason) {
            self.requests_refused.with_label_values(&[reason]).inc();
        }
    }

    /// `n` request headers dropped before forwarding.
    pub fn headers_dropped(&self, n: usize) {
        self.headers_dropped.inc_by(n as u64);
    }

    /// One client connection not served at once; `reason` is a [`CONNECTION_REFUSALS`] value.
    pub fn connection_refused(&self, reason: &str) {
        if CONNECTION_REFUSALS.contains(&reason) {
            self.connections_refused.with_label_values(&[reason]).inc();
        }
    }

    /// One helpdesk console sign-in; `result` is a [`HELPDESK_SIGNIN_RESULTS`] value.
    pub fn helpdesk_signin(&self, result: &str) {
        if HELPDESK_SIGNIN_RESULTS.contains(&result) {
            self.helpdesk_signins.with_label_values(&[result]).inc();
        }
    }

    /// One request that found no connection to Faspex free in time.
    pub fn upstream_busy(&self) {
        self.upstream_busy.inc();
    }

    /// One failed request to Faspex; `kind` is an [`UPSTREAM_ERRORS`] value.
    pub fn upstream_error(&self, kind: &str) {
        if UPSTREAM_ERRORS.contains(&kind) {
            self.upstream_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Set the gauges from the engine's counts (just before a scrape).
    pub fn set_state(&self, s: &Status) {
        self.sessions_active
            .set(i64::try_from(s.seats_used).unwrap_or(i64::MAX));
        self.sessions_limit.set(i64::from(s.seats_limit));
        self.accounts_locked
            .set(i64::try_from(s.accounts_locked).unwrap_or(i64::MAX));
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let g = &self.by_kind;
        g.with_label_values(&["seated", "local"])
            .set(n(s.local_seats));
        g.with_label_values(&["seated", "directory"])
            .set(n(s.seats_used.saturating_sub(s.local_seats)));
        g.with_label_values(&["locked", "local"])
            .set(n(s.local_accounts_locked));
        g.with_label_values(&["locked", "directory"])
            .set(n(s.accounts_locked.saturating_sub(s.local_accounts_locked)));
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
            PolicyEvent::Login {
                result,
                account_kind,
                ..
            } if LOGIN_RESULTS.contains(result) => {
                self.logins.with_label_values(&[result.as_str()]).inc();
                if let Some(kind) = account_kind {
                    self.logins_by_kind
                        .with_label_values(&[kind.as_str(), result.as_str()])
                        .inc();
                }
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
    fn requests_count_by_route_class_and_status_class() {
        let m = Metrics::new().unwrap();
        let ms = Duration::from_millis(3);
        m.request("public", http::StatusCode::OK, ms);
        m.request("public", http::StatusCode::NOT_MODIFIED, ms);
        m.request("denied", http::StatusCode::FORBIDDEN, ms);
        m.request("login", http::StatusCode::BAD_GATEWAY, ms);
        m.request("/aspera/odd", http::StatusCode::BAD_REQUEST, ms);
        m.upstream_error("timeout");
        m.upstream_error("not-a-kind");
        let t = m.render();
        let req = |route: &str, code: &str| {
            value(
                &t,
                &format!("faspex_gate_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
            )
        };
        assert_eq!(req("public", "2xx"), 1.0);
        assert_eq!(req("public", "3xx"), 1.0);
        assert_eq!(req("denied", "4xx"), 1.0);
        assert_eq!(req("login", "5xx"), 1.0);
        assert_eq!(req("protected", "4xx"), 1.0, "an unclassified path");
        assert_eq!(req("gateway", "2xx"), 0.0);
        assert_eq!(
            value(
                &t,
                "faspex_gate_request_duration_seconds_count{route=\"public\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                "faspex_gate_request_duration_seconds_bucket{route=\"public\",le=\"0.005\"}"
            ),
            2.0
        );
        assert_eq!(
            value(&t, "faspex_gate_upstream_errors_total{kind=\"timeout\"}"),
            1.0
        );
        assert!(!t.contains("/aspera") && !t.contains("not-a-kind"));
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
                account_kind: None,
                ip,
                kind: crate::store::ClientKind::Browser,
                result: LoginResult::DirectoryError,
            });
        }
        m.event(&PolicyEvent::Login {
            account: Some("ann"),
            account_kind: None,
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
        assert!(
            !text.contains("faspex_gate_logins_total{result=\"store_error\"}"),
            "only the contract's labels"
        );
        // The helpdesk console's sign-ins have their own counter, every result at zero.
        for r in HELPDESK_SIGNIN_RESULTS {
            let series = format!("faspex_gate_helpdesk_signins_total{{result=\"{r}\"}}");
            assert_eq!(value(&text, &series), 0.0, "{series}");
        }
        assert!(!text.contains("ann"), "never a username");
    }
}
