//! Operations, against the real binary: `/metrics` during the policy scenarios (checked value by
//! value and by `promtool check metrics`), the deployment kit's rules, tests and dashboard
//! against a real scrape, the `faspex-gate admin` CLI and the admin API's answers to bad
//! requests, the audit log, `/readyz` with slapd and Faspex stopped and started, and SIGHUP
//! reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use faspex_emulator::{Emulator, EmulatorConfig, LoginFailureStyle};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::flows::{eventually, users, Site};
use crate::slapd::{self, Slapd};
use crate::util::*;

const TOKEN: &str = "test-admin-token-0123456789";
const ME: &str = "/aspera/faspex/me";

/// The repository's root (deploy/ lives there).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A program the tests need, from PATH or /usr/sbin; missing = failure, never a skip.
fn program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!("{name} is required by this test (.ci/test installs it)");
}

/// Plain-HTTP request to the admin listener.
pub async fn admin_req(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn scrape(gw: &GatewayProcess) -> String {
    let (st, h, body) = admin_req("GET", &format!("{}/metrics", gw.admin_url()), &[], "").await;
    assert_eq!(st, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    body
}

/// The value of one series (`name{labels}` exactly as exposed), or a panic naming it.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {series} in the scrape:\n{text}"))
}

fn logins(text: &str, result: &str) -> f64 {
    value(
        text,
        &format!("faspex_gate_logins_total{{result=\"{result}\"}}"),
    )
}

fn ended(text: &str, reason: &str) -> f64 {
    value(
        text,
        &format!("faspex_gate_sessions_ended_total{{reason=\"{reason}\"}}"),
    )
}

fn requests(text: &str, route: &str, code: &str) -> f64 {
    value(
        text,
        &format!("faspex_gate_requests_total{{code=\"{code}\",route=\"{route}\"}}"),
    )
}

/// Wait until a scrape satisfies `ok` (the sweeper runs every 250 ms), then return it.
async fn scrape_until(gw: &GatewayProcess, what: &str, ok: impl Fn(&str) -> bool) -> String {
    for _ in 0..200 {
        let t = scrape(gw).await;
        if ok(&t) {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the metrics never showed {what}:\n{}", scrape(gw).await);
}

/// Run `faspex-gate admin ARGS` against `gw` with the test token; (exit code, stdout, stderr).
fn cli(gw: &GatewayProcess, args: &[&str]) -> (i32, String, String) {
    cli_with(
        &[
            "--url",
            &gw.admin_url(),
            "--token-file",
            &gw.files.path("admin-token").display().to_string(),
        ],
        args,
    )
}

fn cli_with(pre: &[&str], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("admin")
        .args(pre)
        .args(args)
        .env("SUDO_USER", "helpdesk-hal")
        .env_remove("FASPEX_GATE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every audit record written so far (the file is written line by line, whole).
fn audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn audit_events<'a>(
    records: &'a [serde_json::Value],
    event: &str,
    user: &str,
) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["event"] == event && r["user"] == user)
        .collect()
}

/// A site with the admin listener on an ephemeral port and the audit log in a file.
pub async fn ops_site(n: usize, tweak: impl FnOnce(&mut ConfigBuilder)) -> (Site, PathBuf) {
    ops_site_with(n, &[], tweak).await
}

/// [`ops_site`] with more arguments to `faspex-gate run` (`--manual-clock`: the admin token is
/// the one [`Site::advance_clock`] sends).
pub async fn ops_site_with(
    n: usize,
    args: &[&str],
    tweak: impl FnOnce(&mut ConfigBuilder),
) -> (Site, PathBuf) {
    let mut audit_path = PathBuf::new();
    let s = Site::start_with(users(n), LoginFailureStyle::Rerender, args, |c| {
        c.set("admin", "listen", "\"127.0.0.1:0\"");
        c.set(
            "admin",
            "token_file",
            &format!("{:?}", c_path(c, "admin-token").display().to_string()),
        );
        audit_path = c_path(c, "audit.log");
        c.set(
            "audit",
            "path",
            &format!("{:?}", audit_path.display().to_string()),
        );
        tweak(c);
    })
    .await;
    (s, audit_path)
}

/// A file next to the session secret the builder already points at.
pub fn c_path(c: &ConfigBuilder, name: &str) -> PathBuf {
    let toml = c.toml();
    let secret = toml
        .lines()
        .find_map(|l| l.strip_prefix("secret_file = "))
        .expect("the builder sets session.secret_file");
    let secret: String = serde_json::from_str(secret).unwrap();
    Path::new(&secret).with_file_name(name)
}

const CONTRACT_METRICS: [&str; 11] = [
    "faspex_gate_sessions_active",
    "faspex_gate_sessions_limit",
    "faspex_gate_accounts_locked",
    "faspex_gate_logins_total",
    "faspex_gate_lockouts_total",
    "faspex_gate_sessions_ended_total",
    "faspex_gate_requests_total",
    "faspex_gate_request_duration_seconds",
    "faspex_gate_upstream_errors_total",
    "faspex_gate_directory_duration_seconds",
    "faspex_gate_build_info",
];

/// Seats, logins, lockouts, kicks, unlocks, idle ends, requests and upstream errors, read off
/// `/metrics` after each step, value by value; the gauges go back to zero.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_every_policy_exactly() {
    let (mut s, _audit) = ops_site_with(5, &["--manual-clock"], |c| {
        c.set("policy", "max_sessions", "3");
        c.set("upstream", "connect_timeout", "\"1s\"");
    })
    .await;
    let t = scrape(&s.gw).await;
    for name in CONTRACT_METRICS {
        assert!(t.contains(&format!("# HELP {name} ")), "{name} has help");
        assert!(t.contains(&format!("# TYPE {name} ")), "{name} has a type");
    }
    assert_eq!(value(&t, "faspex_gate_sessions_active"), 0.0);
    assert_eq!(value(&t, "faspex_gate_sessions_limit"), 3.0);
    assert_eq!(value(&t, "faspex_gate_accounts_locked"), 0.0);
    assert_eq!(
        value(
            &t,
            &format!(
                "faspex_gate_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(logins(&t, "success"), 0.0);
    assert_eq!(requests(&t, "denied", "4xx"), 0.0);

    // Three seats: two browsers and one Basic caller.
    let c0 = s.browser_login("user0", "pass0").await;
    s.browser_login("user1", "pass1").await;
    let (st, _, _) = s.basic("GET", ME, "user2", "pass2", &[], "").await;
    assert_eq!(st, StatusCode::OK);
    let t = scrape(&s.gw).await;
    assert_eq!(value(&t, "faspex_gate_sessions_active"), 3.0);
    assert_eq!(logins(&t, "success"), 3.0);
    // The fourth account finds the licence full.
    let (st, _, _) = s.basic("GET", ME, "user3", "pass3", &[], "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let t = scrape(&s.gw).await;
    assert_eq!(logins(&t, "license_full"), 1.0);
    assert_eq!(value(&t, "faspex_gate_sessions_active"), 3.0);

    // Five wrong passwords lock user4: four bad credentials, then the attempt that locks.
    for _ in 0..5 {
        s.basic("GET", ME, "user4", "wrong", &[], "").await;
    }
    let t = scrape(&s.gw).await;
    assert_eq!(logins(&t, "bad_credentials"), 4.0);
    assert_eq!(logins(&t, "locked"), 1.0);
    assert_eq!(value(&t, "faspex_gate_lockouts_total"), 1.0);
    assert_eq!(value(&t, "faspex_gate_accounts_locked"), 1.0);
    // A hostile name is escaped and checked like any other; one with a control character is
    // invalid. Neither is ever a label.
    s.basic("GET", ME, "*)(uid=*", "x", &[], "").await;
    s.basic("GET", ME, "bad\u{7}name", "x", &[], "").await;
    let t = scrape(&s.gw).await;
    assert_eq!(logins(&t, "bad_credentials"), 5.0);
    assert_eq!(logins(&t, "invalid"), 1.0);

    // A denied path and a gateway page are counted under their routes.
    let (st, _, _) = s
        .get_plain("/aspera/faspex/package_relay/relay_package", &[])
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    s.get_plain("/_faspex-gate/expired", &[("accept", "text/html")])
        .await;
    let t = scrape(&s.gw).await;
    assert_eq!(requests(&t, "denied", "4xx"), 1.0);
    assert_eq!(requests(&t, "gateway", "2xx"), 1.0);
    assert_eq!(requests(&t, "login", "3xx"), 2.0, "the two form logins");
    assert!(
        value(
            &t,
            "faspex_gate_request_duration_seconds_count{route=\"protected\"}"
        ) >= 8.0
    );

    // The helpdesk: unlock user4 and kick user0; the gauges follow at once.
    let (code, _, err) = cli(&s.gw, &["unlock", "user4"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&s.gw, &["kick", "user0"]);
    assert_eq!(code, 0, "{err}");
    let t = scrape(&s.gw).await;
    assert_eq!(value(&t, "faspex_gate_accounts_locked"), 0.0);
    assert_eq!(value(&t, "faspex_gate_sessions_active"), 2.0);
    assert_eq!(ended(&t, "admin"), 1.0);
    // user0's browser is out.
    let (st, _, _) = s.browse(ME, &c0).await;
    assert_eq!(st, StatusCode::FOUND);

    // Idle: an hour without activity (on the gateway's manual clock) and the sweeper ends the
    // rest, and the gauge reaches zero. (the gauge is read from the store at the scrape, the
    // counter follows the sweeper's events: wait for both)
    s.advance_clock(Duration::from_secs(3600 + 1)).await;
    let t = scrape_until(&s.gw, "every seat free after the idle timeout", |t| {
        value(t, "faspex_gate_sessions_active") == 0.0 && ended(t, "idle") >= 2.0
    })
    .await;
    assert_eq!(ended(&t, "idle"), 2.0);
    assert_eq!(ended(&t, "logout"), 0.0);

    // Faspex down: a request finds no upstream.
    let (stop, _) = tokio::sync::oneshot::channel();
    drop(std::mem::replace(&mut s._emu_stop, stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _, _) = s.get_plain("/aspera/faspex/login", &[]).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    let t = scrape(&s.gw).await;
    assert_eq!(
        value(&t, "faspex_gate_upstream_errors_total{kind=\"connect\"}"),
        1.0
    );
    assert_eq!(requests(&t, "public", "5xx"), 1.0);

    assert!(
        !t.contains("user0") && !t.contains("user4") && !t.contains("uid="),
        "never a username in a label"
    );
    assert!(!t.contains("/aspera"), "never a path in a label");

    // promtool's linter accepts the real scrape.
    let mut child = Command::new(program("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric named in the alert rules, their tests' inputs and the Grafana dashboard exists
/// in a real scrape (Prometheus's own `up` aside).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_rules_name_only_metrics_the_gateway_exports() {
    let (s, _) = ops_site(1, |_| {}).await;
    // One of each histogram observation, so that every _bucket/_sum/_count line is there.
    s.basic("GET", ME, "user0", "pass0", &[], "").await;
    let t = scrape(&s.gw).await;
    let exported: BTreeSet<&str> = t
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let name = regex_lite_names;
    let mut checked = 0;
    for file in [
        "deploy/prometheus/faspex-gate.rules.yml",
        "deploy/grafana/faspex-gate.json",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let names = name(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        for n in names {
            assert!(
                exported.contains(n.as_str()),
                "{file} uses {n}, which the gateway does not export"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10);
    // The dashboard shows what the issue asks for.
    let dash = std::fs::read_to_string(repo().join("deploy/grafana/faspex-gate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let exprs = dash.to_string();
    for needed in [
        "faspex_gate_sessions_active",
        "faspex_gate_sessions_limit",
        "faspex_gate_logins_total",
        "faspex_gate_lockouts_total",
        "faspex_gate_accounts_locked",
        "faspex_gate_requests_total",
        "faspex_gate_request_duration_seconds_bucket",
        "faspex_gate_upstream_errors_total",
    ] {
        assert!(exprs.contains(needed), "the dashboard shows {needed}");
    }
}

/// `faspex_gate_…` names in a text (the metric names a rule or panel uses).
fn regex_lite_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("faspex_gate_") {
        let start = i + pos;
        let preceded_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if preceded_ok {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// `promtool check rules`, `promtool test rules` (a unit test per alert) and `promtool check
/// config` on the deployment kit.
#[test]
fn promtool_checks_the_rules_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let promtool = program("promtool");
    for args in [
        vec!["check", "rules", "faspex-gate.rules.yml"],
        vec!["test", "rules", "faspex-gate.rules.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert in the rules has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(dir.join("faspex-gate.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("faspex-gate.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "no unit test for {a}"
        );
    }
}

/// The systemd unit passes `systemd-analyze verify` (with the binary's path swapped for one
/// that exists here, and its manual page not looked for), and carries the hardening the
/// deployment relies on.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/faspex-gate.service")).unwrap();
    for needed in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=faspex-gate",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=faspex-gate",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let copy: String = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=/usr/bin/faspex-gate ") {
                "ExecStart=/bin/true".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("faspex-gate.service");
    std::fs::write(&path, copy).unwrap();
    // (--man=no: `Documentation=man:faspex-gate(1)` names the page the package installs, which
    // deploy/debian/check.sh verifies against the installed package; it is not installed here)
    let out = Command::new(program("systemd-analyze"))
        .arg("verify")
        .arg("--man=no")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The helpdesk's command against a running gateway: lockouts and unlock (then the login works
/// at once), kick frees a seat, lock holds against the right password, `--json` parses, unknown
/// users are no-ops, a wrong token exits 1, a gateway that is down exits 3, and the audit log
/// has a line for each action with who asked and from where.
#[tokio::test(flavor = "multi_thread")]
async fn the_helpdesk_cli_unlocks_kicks_and_locks() {
    let (s, audit_path) = ops_site(4, |c| {
        c.set("policy", "max_sessions", "2");
    })
    .await;

    // user3 locks itself out.
    for _ in 0..5 {
        s.basic("GET", ME, "user3", "wrong", &[], "").await;
    }
    let (st, h, _) = s.basic("GET", ME, "user3", "pass3", &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(h.contains_key(header::RETRY_AFTER));
    let (code, out, err) = cli(&s.gw, &["lockouts"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("user3") && out.contains("failed logins"),
        "{out}"
    );
    let (code, out, _) = cli(&s.gw, &["--json", "lockouts"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lockouts"][0]["user"], "user3");
    assert_eq!(v["lockouts"][0]["failures"], 5);
    assert_eq!(v["lockouts"][0]["by_admin"], false);

    // Unlock: says it was locked, and the right password works at once.
    let (code, out, err) = cli(&s.gw, &["unlock", "user3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("was locked") && out.contains("can log in now"),
        "{out}"
    );
    let (st, _, _) = s.basic("GET", ME, "user3", "pass3", &[], "").await;
    assert_eq!(st, StatusCode::OK, "unlocked: logs in at once");
    // Unlocking again, or an unknown user, is a clear no-op.
    let (code, out, _) = cli(&s.gw, &["unlock", "nobody"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("nobody was not locked; nothing to do"),
        "{out}"
    );

    // Kick frees a seat: two seats taken (user3, user0), user1 is refused, kick, user1 is in.
    let (st, _, _) = s.basic("GET", ME, "user0", "pass0", &[], "").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let (code, out, _) = cli(&s.gw, &["--json", "status"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["seats_used"].as_u64(), v["seats_limit"].as_u64()),
        (Some(2), Some(2))
    );
    let (code, out, _) = cli(&s.gw, &["sessions"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("user0") && out.contains("basic") && out.contains("curl/8.5.0"),
        "{out}"
    );
    let (code, out, _) = cli(&s.gw, &["kick", "user0"]);
    assert_eq!(code, 0);
    assert!(out.contains("user0: 1 session ended"), "{out}");
    let (st, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(st, StatusCode::OK, "the kicked seat is free");
    let (code, out, _) = cli(&s.gw, &["kick", "nobody"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("nobody had no live session; nothing to do"),
        "{out}"
    );

    // Lock holds, even against the right password; the live session goes on until kicked.
    let (code, out, err) = cli(&s.gw, &["lock", "user1", "--for", "10m"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("user1 is locked until"), "{out}");
    let (code, out, _) = cli(&s.gw, &["kick", "user1"]);
    assert_eq!(code, 0, "{out}");
    let (st, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the lock holds");
    let (_, out, _) = cli(&s.gw, &["--json", "lockouts"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["lockouts"][0]["user"], "user1");
    assert_eq!(v["lockouts"][0]["by_admin"], true);
    // Usage errors exit 2 before anything is sent; a hostile name is refused by the gateway.
    let (code, _, err) = cli(&s.gw, &["lock", "user2", "--for", "soon"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&s.gw, &["lock", "user2", "--for", "0s"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&s.gw, &["unlock", "bad\u{7}name"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("400") && err.contains("control character"),
        "{err}"
    );
    let (code, out, _) = cli(&s.gw, &["unlock", "*)(uid=*"]);
    assert_eq!(code, 0, "a hostile but valid name is just not locked");
    assert!(out.contains("*)(uid=* was not locked"), "{out}");

    // A wrong token exits 1 and says so; the refusal is audited.
    let bad = s.gw.files.path("bad-token");
    write_private(&bad, b"not-the-admin-token-at-all");
    let (code, _, err) = cli_with(
        &[
            "--url",
            &s.gw.admin_url(),
            "--token-file",
            &bad.display().to_string(),
        ],
        &["status"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("refused the admin token"), "{err}");
    // A gateway that is not there exits 3.
    let (code, _, err) = cli_with(
        &[
            "--url",
            &format!("http://127.0.0.1:{}", slapd::free_port()),
            "--token-file",
            &s.gw.files.path("admin-token").display().to_string(),
        ],
        &["status"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    // The audit log: who did what, from where.
    let log = audit(&audit_path);
    for r in &log {
        assert!(r["ts"].as_str().unwrap().ends_with('Z'), "{r}");
        let line = r.to_string();
        // (no password, token or cookie: "wrong" was a password, "pass…" the right ones)
        assert!(
            !line.contains("pass") && !line.contains("\"wrong\"") && !line.contains(TOKEN),
            "{line}"
        );
    }
    let unlock = audit_events(&log, "unlock", "user3");
    assert_eq!(unlock.len(), 1, "{log:?}");
    assert_eq!(unlock[0]["actor"], "helpdesk-hal");
    assert_eq!(unlock[0]["was_locked"], true);
    assert!(unlock[0]["source"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(audit_events(&log, "lockout", "user3").len(), 1);
    assert_eq!(audit_events(&log, "lockout", "user3")[0]["failures"], 5);
    let bad_logins = audit_events(&log, "login", "user3")
        .iter()
        .filter(|r| r["result"] == "bad_credentials")
        .count();
    assert_eq!(bad_logins, 4);
    let kick = audit_events(&log, "kick", "user0");
    assert_eq!((kick.len(), kick[0]["sessions"].as_u64()), (1, Some(1)));
    assert_eq!(kick[0]["actor"], "helpdesk-hal");
    let end = audit_events(&log, "session_end", "user0");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["reason"], "admin");
    assert_eq!(end[0]["kind"], "basic");
    let lock = audit_events(&log, "admin_lock", "user1");
    assert_eq!(lock.len(), 1);
    assert_eq!(lock[0]["actor"], "helpdesk-hal");
    let refused: Vec<_> = log
        .iter()
        .filter(|r| r["event"] == "admin_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "wrong_token");
    assert_eq!(refused[0]["path"], "/admin/v1/status");
    assert_eq!(
        log.iter()
            .filter(|r| r["event"] == "login" && r["result"] == "success")
            .count(),
        3,
        "user3, user0, user1"
    );
}

/// The admin API answers bad requests with the right status and a reason, and its
/// unauthenticated endpoints stay read-only.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_bad_requests_clearly() {
    let (s, audit_path) = ops_site(1, |_| {}).await;
    let base = s.gw.admin_url();
    let auth = ("authorization", "Bearer test-admin-token-0123456789");
    let api = |p: &str| format!("{base}/admin/v1/{p}");

    let (st, _, body) = admin_req("GET", &format!("{base}/healthz"), &[], "").await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ok\n"));
    let (st, _, _) = admin_req("POST", &format!("{base}/metrics"), &[], "").await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    let (st, h, body) = admin_req("GET", &api("status"), &[], "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(h[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let (st, _, _) = admin_req(
        "GET",
        &api("status"),
        &[("authorization", "Bearer test-admin-token-012345678")],
        "",
    )
    .await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a prefix of the token is wrong"
    );
    let (st, _, _) = admin_req(
        "GET",
        &api("status"),
        &[("authorization", "Basic dGVzdDp0ZXN0")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let big = "x".repeat(10_000);
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        ("GET", api("nothing"), "", StatusCode::NOT_FOUND, "no such"),
        (
            "POST",
            api("status"),
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "GET",
        ),
        (
            "PUT",
            api("lockouts/ann"),
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE, POST",
        ),
        (
            "POST",
            api("lockouts/ann"),
            "{",
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "POST",
            api("lockouts/ann"),
            "{\"for\":\"soon\"}",
            StatusCode::BAD_REQUEST,
            "for:",
        ),
        (
            "POST",
            api("lockouts/ann"),
            "{\"for\":\"0s\"}",
            StatusCode::BAD_REQUEST,
            "for:",
        ),
        (
            "POST",
            api("lockouts/ann"),
            "{\"until\":\"1h\"}",
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            api("lockouts/ann"),
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger",
        ),
        (
            "DELETE",
            api("lockouts/"),
            "",
            StatusCode::BAD_REQUEST,
            "missing",
        ),
        (
            "DELETE",
            api("lockouts/a/b"),
            "",
            StatusCode::BAD_REQUEST,
            "'/'",
        ),
        (
            "DELETE",
            api("sessions/%FF"),
            "",
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            "DELETE",
            api("sessions/ann%07"),
            "",
            StatusCode::BAD_REQUEST,
            "control character",
        ),
    ];
    for (method, url, body, want, reason) in &cases {
        let (st, h, got) = admin_req(method, url, &[auth], body).await;
        assert_eq!(st, *want, "{method} {url}: {got}");
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(reason), "{method} {url}: {e}");
        if st == StatusCode::METHOD_NOT_ALLOWED {
            assert!(h.contains_key(header::ALLOW));
        }
    }
    let (st, _, got) = admin_req(
        "GET",
        &api("status"),
        &[auth, ("x-admin-actor", "two words")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{got}");
    // Without the token, a bad actor header is still just a 401 (and audited).
    let (st, _, _) = admin_req("GET", &api("status"), &[("x-admin-actor", "two words")], "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A lock with no body takes policy.lockout_duration; an empty JSON object too.
    let (st, _, got) = admin_req("POST", &api("lockouts/user0"), &[auth], "").await;
    assert_eq!(st, StatusCode::OK, "{got}");
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["user"], "user0");
    assert_eq!(v["by_admin"], true);
    let (st, _, _) = admin_req("POST", &api("lockouts/user0"), &[auth], "{}").await;
    assert_eq!(st, StatusCode::OK);

    let refused = audit(&audit_path)
        .into_iter()
        .filter(|r| r["event"] == "admin_refused")
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert_eq!(refused[3]["actor"], "(invalid)");

    // A flood of bad tokens is answered, but audited at most 10 a second; the next record says
    // how many were left out.
    for _ in 0..40 {
        let (st, _, _) =
            admin_req("GET", &api("status"), &[("authorization", "Bearer x")], "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    admin_req("GET", &api("status"), &[("authorization", "Bearer x")], "").await;
    let refused: Vec<_> = audit(&audit_path)
        .into_iter()
        .filter(|r| r["event"] == "admin_refused")
        .collect();
    assert!(refused.len() < 4 + 41, "{}", refused.len());
    let recorded = refused.len() - 4;
    let suppressed: u64 = refused
        .iter()
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    assert_eq!(
        recorded as u64 + suppressed,
        41,
        "every refusal is recorded or counted"
    );
    assert_eq!(refused[0]["reason"], "missing_token");
    assert_eq!(refused[1]["reason"], "wrong_token");
    assert_eq!(refused[0]["actor"], "-");
}

/// A token file that is missing, empty or readable by others stops the start, naming the key.
#[test]
fn a_bad_admin_token_file_stops_the_start() {
    for (what, setup) in [
        ("missing", None),
        ("empty", Some((&b""[..], 0o600))),
        (
            "group-readable",
            Some((&b"long-enough-admin-token"[..], 0o640)),
        ),
        (
            "world-readable",
            Some((&b"long-enough-admin-token"[..], 0o604)),
        ),
    ] {
        let files = TestFiles::new();
        let path = files.path("the-token");
        if let Some((bytes, mode)) = setup {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
        cfg.set("admin", "listen", "\"127.0.0.1:0\"");
        cfg.set(
            "admin",
            "token_file",
            &format!("{:?}", path.display().to_string()),
        );
        let out = run_to_exit(&files, &cfg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("admin.token_file"), "{what}: {err}");
    }
}

/// `/readyz` turns 503 naming the directory when slapd stops and the upstream when Faspex
/// stops, and 200 again when each is back.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_directory_and_faspex() {
    let mut ldap = Slapd::start();
    let emu = Emulator::new(EmulatorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(emu.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, &format!("http://{emu_addr}"));
    cfg.set("admin", "listen", "\"127.0.0.1:0\"");
    cfg.set(
        "admin",
        "token_file",
        &format!("{:?}", files.path("admin-token").display().to_string()),
    );
    cfg.set("auth", "backend", "\"ldap\"");
    cfg.set("auth.ldap", "urls", &format!("[{:?}]", ldap.url()));
    cfg.set("auth.ldap", "timeout", "\"2s\"");
    cfg.set(
        "auth.ldap",
        "user_dn_template",
        &format!("{:?}", slapd::DIRECT_TEMPLATE),
    );
    cfg.set("upstream", "connect_timeout", "\"1s\"");
    let gw = GatewayProcess::start(files, &cfg);
    let readyz = format!("{}/readyz", gw.admin_url());
    let ready = |want: StatusCode, names: &'static [&'static str]| {
        let readyz = readyz.clone();
        async move {
            let mut last = String::new();
            for _ in 0..100 {
                let (st, _, body) = admin_req("GET", &readyz, &[], "").await;
                if st == want && names.iter().all(|n| body.contains(n)) {
                    return body;
                }
                last = format!("{st}: {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("/readyz never became {want} naming {names:?}; last: {last}");
        }
    };
    assert_eq!(ready(StatusCode::OK, &["ready"]).await, "ready\n");

    ldap.kill();
    let body = ready(StatusCode::SERVICE_UNAVAILABLE, &["directory: not ready"]).await;
    assert!(
        !body.contains("upstream") && !body.contains("store"),
        "{body}"
    );
    ldap.run();
    ready(StatusCode::OK, &["ready"]).await;

    drop(stop);
    let _ = task.await;
    let body = ready(StatusCode::SERVICE_UNAVAILABLE, &["upstream: not ready"]).await;
    assert!(!body.contains("directory"), "{body}");
    let listener = tokio::net::TcpListener::bind(emu_addr).await.unwrap();
    let (_stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(emu.serve(listener, async move {
        let _ = stopped2.await;
    }));
    ready(StatusCode::OK, &["ready"]).await;
    // The health check does not care.
    let (st, _, _) = admin_req("GET", &format!("{}/healthz", gw.admin_url()), &[], "").await;
    assert_eq!(st, StatusCode::OK);
}

/// SIGHUP: new policy numbers, deny list, pages, users, certificate and admin token take effect
/// without dropping a session; a restart-only key is named and kept; an invalid file is refused
/// with a reason and the running configuration stays; the audit log follows logrotate.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_what_is_safe_and_keeps_sessions() {
    let (s, audit_path) = ops_site(3, |c| {
        c.set("policy", "max_sessions", "1");
    })
    .await;
    let config = s.gw.files.path("faspex-gate.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let cookie = s.browser_login("user0", "pass0").await;
    let (st, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "one seat");

    // New numbers, a new deny rule, a new helpdesk line, a new user, a new token, a new
    // certificate, a moved audit log, and a restart-only change.
    assert!(
        !original.contains("[faspex]"),
        "the site sets no [faspex] yet"
    );
    let edited = original
        .replace("max_sessions = 1", "max_sessions = 3")
        .replace("ext. 4357", "ext. 9999");
    let edited = merge_key(&edited, "upstream", "response_timeout = \"77s\"");
    let edited = format!(
        "{edited}\n[faspex]\ndeny = [\"* /aspera/faspex/package_relay/\", \"GET /aspera/faspex/admin/\"]\n"
    );
    // user2 leaves: its entry goes from the users file.
    let users_file = std::fs::read_to_string(s.gw.files.path("users.toml")).unwrap();
    let start = users_file.find("[users.user2]").unwrap();
    let end = start + users_file[start..].find("\"\n").unwrap() + 2;
    let without = format!("{}{}", &users_file[..start], &users_file[end..]);
    assert!(!without.contains("user2") && without.contains("user1"));
    std::fs::write(s.gw.files.path("users.toml"), without).unwrap();
    write_private(&s.gw.files.path("admin-token"), b"the-rotated-admin-token");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&s.gw.files.cert, ck.cert.pem()).unwrap();
    write_private(&s.gw.files.key, ck.key_pair.serialize_pem().as_bytes());
    std::fs::rename(&audit_path, audit_path.with_extension("log.1")).unwrap();
    std::fs::write(&config, &edited).unwrap();
    s.gw.signal("HUP");
    assert!(
        s.gw.wait_log("configuration reloaded", Duration::from_secs(10)),
        "{}",
        s.gw.logs()
    );
    let logs = s.gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("needs a restart") && l.contains("upstream.response_timeout")),
        "{logs}"
    );

    // The browser's session lives on; the new cap admits two more.
    let (st, _, _) = s.browse(ME, &cookie).await;
    assert_eq!(st, StatusCode::OK, "the session survived the reload");
    let (st, _, _) = s.basic("GET", ME, "user1", "pass1", &[], "").await;
    assert_eq!(st, StatusCode::OK, "max_sessions is 3 now");
    let (st, _, _) = s.basic("GET", ME, "user2", "pass2", &[], "").await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "user2 is gone from the users file"
    );
    let (st, _, _) = s.browse("/aspera/faspex/admin/", &cookie).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "the new deny rule");
    let t = scrape(&s.gw).await;
    assert_eq!(value(&t, "faspex_gate_sessions_limit"), 3.0);
    // The new token, and only it.
    let (st, _, _) = admin_req(
        "GET",
        &format!("{}/admin/v1/status", s.gw.admin_url()),
        &[("authorization", "Bearer the-rotated-admin-token")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = admin_req(
        "GET",
        &format!("{}/admin/v1/status", s.gw.admin_url()),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // The new certificate on a new connection.
    let fresh = https_client(&ck.cert.pem(), false);
    let (st, _, _) = get(&fresh, &s.url("/aspera/faspex/login")).await;
    assert_eq!(st, StatusCode::OK, "the new certificate is served");
    // The audit log was reopened at its path.
    let reopened = eventually(Duration::from_secs(5), || {
        audit(&audit_path)
            .iter()
            .any(|r| r["event"] == "login" && r["user"] == "user2")
    })
    .await;
    assert!(reopened, "new records go to the new file");
    // The pages say the new helpdesk line (a locked account's page shows it).
    let (st, _, _) = admin_req(
        "POST",
        &format!("{}/admin/v1/lockouts/user0", s.gw.admin_url()),
        &[("authorization", "Bearer the-rotated-admin-token")],
        "",
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, page) = s.form_login("user0", "pass0", None, &[]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&page).contains("ext. 9999"));

    // An invalid file is refused, with the key named, and nothing changes.
    let broken = edited.replace("max_sessions = 3", "max_sessions = -1");
    std::fs::write(&config, broken).unwrap();
    // (logrotate moved the audit log just before: it is reopened even though the file is refused)
    std::fs::rename(&audit_path, audit_path.with_extension("log.2")).unwrap();
    s.gw.signal("HUP");
    assert!(
        s.gw.wait_log("reload refused", Duration::from_secs(10)),
        "{}",
        s.gw.logs()
    );
    assert!(
        s.gw.logs()
            .lines()
            .any(|l| l.contains("reload refused") && l.contains("policy.max_sessions")),
        "{}",
        s.gw.logs()
    );
    let t = scrape(&s.gw).await;
    assert_eq!(
        value(&t, "faspex_gate_sessions_limit"),
        3.0,
        "the running value stays"
    );
    let (st, _, _) = s.browse(ME, &cookie).await;
    assert_eq!(st, StatusCode::OK, "and the session too");
    assert!(s.gw.child_alive());
    let (st, _, _) = s.basic("GET", ME, "user2", "pass2", &[], "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let reopened = eventually(Duration::from_secs(5), || {
        audit(&audit_path)
            .iter()
            .any(|r| r["event"] == "login" && r["result"] == "bad_credentials")
    })
    .await;
    assert!(reopened, "a refused reload still reopens the audit log");
}

/// Add `line` to `[section]` of a TOML text (the builder writes each section once).
fn merge_key(text: &str, section: &str, line: &str) -> String {
    let head = format!("[{section}]\n");
    assert!(text.contains(&head), "no [{section}] in\n{text}");
    text.replacen(&head, &format!("{head}{line}\n"), 1)
}
