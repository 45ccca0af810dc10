//! Unit tests of the configuration module: defaults, every validation rule, the environment
//! layer, error messages, redaction, and the example file's completeness.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use tempfile::TempDir;
use toml::Value;

use super::env::EnvLayer;
use super::raw::RawConfig;
use super::validate::Ctx;
use super::*;

const EXAMPLE: &str = include_str!("../../config/faspex-gate.example.toml");

/// A temporary directory with valid secret, TLS and users files.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        f.secret("session.key", format!("{key}\n").as_bytes());
        f.secret("admin.token", b"0123456789abcdefXYZ\n");
        f.secret("bind.password", b"s3cret password\n");
        f.file("cert.pem", b"-----BEGIN CERTIFICATE-----\n");
        f.file("key.pem", b"-----BEGIN PRIVATE KEY-----\n");
        // (read by the app, not here: any contents will do)
        f.file(
            "users.toml",
            b"[users.ann]\nhash = \"$argon2id$v=19$...\"\n",
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example.org".into()]).unwrap();
        f.file("ca.pem", ca.cert.pem().as_bytes());
        f.file("not-a-cert.pem", b"-----BEGIN CERTIFICATE-----\n");
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> Value {
        Value::String(self.path(name).to_string_lossy().into_owned())
    }

    /// Write a file with mode 0644.
    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// Write a file with mode 0600.
    fn secret(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.file(name, contents);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The smallest valid configuration: TLS, upstream, admin token, session secret, LDAP with
    /// direct bind.
    fn base(&self) -> toml::Table {
        let mut t = toml::Table::new();
        set(&mut t, "tls.cert_file", self.p("cert.pem"));
        set(&mut t, "tls.key_file", self.p("key.pem"));
        set(&mut t, "upstream.url", s("https://faspex.example.org"));
        set(&mut t, "admin.token_file", self.p("admin.token"));
        set(&mut t, "session.secret_file", self.p("session.key"));
        set(&mut t, "auth.ldap.urls", list(&["ldaps://dc1.example.org"]));
        set(
            &mut t,
            "auth.ldap.user_dn_template",
            s("uid={username},ou=people,dc=example,dc=org"),
        );
        t
    }

    /// Write `text` as the configuration file and load it with `env`.
    fn load_text(&self, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let path = self.path("faspex-gate.toml");
        fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(&path, &env)
    }

    /// Load the base configuration with `edits` applied (`Value` = set, `None` = remove).
    fn load_edited(
        &self,
        edits: &[(&str, Option<Value>)],
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut t = self.base();
        for (key, value) in edits {
            match value {
                Some(v) => set(&mut t, key, v.clone()),
                None => remove(&mut t, key),
            }
        }
        self.load_text(&toml::to_string(&t).unwrap(), env)
    }

    fn load(&self, edits: &[(&str, Value)]) -> Result<Config, ConfigError> {
        let edits: Vec<_> = edits.iter().map(|(k, v)| (*k, Some(v.clone()))).collect();
        self.load_edited(&edits, &[])
    }

    fn load_env(&self, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        self.load_edited(&[], env)
    }

    /// Expect `edits` to fail on `key` with a reason containing `needle`.
    #[track_caller]
    fn fails(&self, edits: &[(&str, Value)], key: &str, needle: &str) -> ConfigError {
        match self.load(edits) {
            Ok(_) => panic!("expected an error for {key}, got a valid configuration"),
            Err(e) => {
                check_err(&e, key, needle);
                e
            }
        }
    }
}

#[track_caller]
fn check_err(e: &ConfigError, key: &str, needle: &str) {
    assert_eq!(e.key, key, "wrong key in: {e}");
    assert!(
        e.reason.contains(needle),
        "reason {:?} does not contain {needle:?}",
        e.reason
    );
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn i(v: i64) -> Value {
    Value::Integer(v)
}

fn list(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|x| s(x)).collect())
}

/// Set a dotted key in a TOML table, creating tables on the way.
fn set(t: &mut toml::Table, key: &str, value: Value) {
    let (head, last) = match key.rsplit_once('.') {
        Some((head, last)) => (Some(head), last),
        None => (None, key),
    };
    let mut table = t;
    for part in head.into_iter().flat_map(|h| h.split('.')) {
        table = table
            .entry(part)
            .or_insert_with(|| Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    table.insert(last.into(), value);
}

fn remove(t: &mut toml::Table, key: &str) {
    let (head, last) = key.rsplit_once('.').unwrap();
    let mut table = t;
    for part in head.split('.') {
        table = table.get_mut(part).unwrap().as_table_mut().unwrap();
    }
    table.remove(last);
}

// ---------------------------------------------------------------- loading and defaults

#[test]
fn base_config_gets_the_contract_defaults() {
    let f = Fixture::new();
    let c = f.load(&[]).unwrap();
    assert_eq!(c.file, f.path("faspex-gate.toml"));

    assert_eq!(c.server.listen, Some("0.0.0.0:8443".parse().unwrap()));
    assert_eq!(c.server.http_listen, None);
    assert!(c.server.trusted_proxies.is_empty());
    assert_eq!(c.server.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_header_bytes, 65536);
    assert_eq!(c.server.max_connections, 10000);
    assert_eq!(c.server.max_connections_per_ip, 512);
    assert_eq!(c.server.ipv6_prefix_len, 64);
    assert_eq!(c.server.hsts.as_ref().unwrap(), "max-age=31536000");
    assert_eq!(
        c.server.strip_response_headers,
        ["server", "x-powered-by", "x-ibm-aspera"]
    );
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(c.server.body_idle_timeout, Duration::from_secs(300));

    assert_eq!(c.tls.cert_file, Some(f.path("cert.pem")));
    assert_eq!(c.tls.key_file, Some(f.path("key.pem")));

    assert_eq!(c.upstream.url.as_str(), "https://faspex.example.org/");
    assert_eq!(c.upstream.ca_file, None);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.response_timeout, Duration::from_secs(120));
    assert!(c.upstream.preserve_host);
    assert_eq!(c.upstream.max_connections, 512);

    assert_eq!(c.admin.listen, Some("127.0.0.1:9180".parse().unwrap()));
    assert_eq!(c.admin.token_file, Some(f.path("admin.token")));
    assert_eq!(
        c.admin.token.as_ref().unwrap().expose(),
        b"0123456789abcdefXYZ"
    );

    let p = &c.policy;
    assert_eq!(p.max_sessions, 10);
    assert_eq!(p.one_client_per_account, OneClient::Reject);
    assert_eq!(p.idle_timeout, Duration::from_secs(3600));
    assert_eq!(p.api_idle_timeout, Duration::from_secs(3600));
    assert_eq!(p.absolute_timeout, Some(Duration::from_secs(12 * 3600)));
    assert!(p.activity_exempt_paths.is_empty());
    assert_eq!(p.lockout_threshold, 5);
    assert_eq!(p.lockout_window, Duration::from_secs(60));
    assert_eq!(p.lockout_duration, Duration::from_secs(3600));
    assert_eq!(p.lockout_key, LockoutKey::Account);
    assert!(p.username_domains.is_empty());
    assert_eq!(p.login_attempts_per_ip_per_minute, 30);
    assert_eq!(p.public_requests_per_ip_per_minute, 600);
    assert_eq!(p.public_inflight_per_ip, 32);
    assert_eq!(p.max_tracked_usernames, 100_000);

    assert_eq!(c.session.cookie_name, "__Host-faspex-gate");
    assert_eq!(c.session.secret_file, f.path("session.key"));
    assert_eq!(c.session.secret.expose(), &[7u8; 32]);

    let a = &c.auth;
    assert_eq!(a.backend, AuthBackend::Ldap);
    assert_eq!(a.cache_ttl, Duration::from_secs(300));
    assert_eq!(a.max_checks_per_second, 50);
    assert_eq!(a.max_concurrent_hashes, 2);
    let l = &a.ldap;
    assert_eq!(l.urls.len(), 1);
    assert_eq!(l.urls[0].as_str(), "ldaps://dc1.example.org");
    assert!(!l.starttls);
    assert_eq!(l.ca_file, None);
    assert_eq!(
        l.user_dn_template.as_deref(),
        Some("uid={username},ou=people,dc=example,dc=org")
    );
    assert_eq!(l.bind_dn, None);
    assert_eq!(l.bind_password_file, None);
    assert!(l.bind_password.is_none());
    assert_eq!(l.base_dn, None);
    assert_eq!(l.user_filter, "(sAMAccountName={username})");
    assert_eq!(l.require_group, None);
    assert!(!l.nested_groups);
    assert_eq!(l.pool_size, 8);
    assert_eq!(l.timeout, Duration::from_secs(5));
    assert_eq!(a.file.path, None);

    let fx = &c.faspex;
    assert_eq!(fx.login_path, "/aspera/faspex/login");
    assert_eq!(fx.username_field, "user[name]");
    assert_eq!(fx.password_field, "user[password]");
    assert_eq!(fx.logout_path, "/aspera/faspex/logout");
    assert_eq!(
        fx.public_paths,
        [
            "/aspera/faspex/external_deliveries/",
            "/aspera/faspex/external/",
            "/aspera/http-gwy/",
            "/aspera/faspex/javascripts/",
            "/aspera/faspex/stylesheets/",
            "/aspera/faspex/images/",
        ]
    );
    assert_eq!(
        fx.deny,
        [DenyRule {
            method: None,
            prefix: "/aspera/faspex/package_relay/".into()
        }]
    );

    assert_eq!(c.pages.helpdesk, "your IT helpdesk");
    assert_eq!(c.pages.timezone, None);
    assert_eq!(c.audit.sink, AuditSink::Stderr);
    assert_eq!(c.store.kind, StoreKind::Embedded);
    assert_eq!(c.store.path, PathBuf::from("/var/lib/faspex-gate"));
}

#[test]
fn missing_file_is_an_error_naming_the_file() {
    let missing = Path::new("/nonexistent/faspex-gate.toml");
    let e = Config::load_with_env(missing, &[]).unwrap_err();
    assert_eq!(e.file, missing);
    assert_eq!(e.key, "");
    assert!(e.reason.contains("does not exist"), "{e}");
    assert!(
        e.to_string().starts_with("/nonexistent/faspex-gate.toml: "),
        "{e}"
    );
}

#[test]
fn a_directory_as_the_file_is_an_error() {
    let f = Fixture::new();
    let e = Config::load_with_env(f.dir.path(), &[]).unwrap_err();
    assert_eq!(e.key, "");
    assert!(
        e.reason.contains("cannot read the configuration file"),
        "{e}"
    );
}

#[test]
fn toml_syntax_error_names_the_file() {
    let f = Fixture::new();
    let e = f.load_text("[server\nlisten = ", &[]).unwrap_err();
    assert_eq!(e.key, "");
    assert_eq!(e.file, f.path("faspex-gate.toml"));
    assert!(e.reason.contains("cannot read the configuration"), "{e}");
}

#[test]
fn process_environment_load_works() {
    let f = Fixture::new();
    let path = f.path("faspex-gate.toml");
    fs::write(&path, toml::to_string(&f.base()).unwrap()).unwrap();
    // The test process has no FASPEX_GATE__ variables of its own.
    let c = Config::load(&path).unwrap();
    assert_eq!(c.policy.max_sessions, 10);
}

#[test]
fn default_path_is_the_contract_path_or_the_variable() {
    let expected = match std::env::var_os(CONFIG_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from("/etc/faspex-gate/faspex-gate.toml"),
    };
    assert_eq!(default_path(), expected);
}

// ---------------------------------------------------------------- error messages

#[test]
fn error_display_with_and_without_key() {
    let e = ConfigError {
        file: "/etc/faspex-gate/faspex-gate.toml".into(),
        key: "policy.max_sessions".into(),
        reason: "0 is too small".into(),
    };
    assert_eq!(
        e.to_string(),
        "/etc/faspex-gate/faspex-gate.toml: key `policy.max_sessions`: 0 is too small"
    );
    let e = ConfigError {
        file: "/x.toml".into(),
        key: String::new(),
        reason: "gone".into(),
    };
    assert_eq!(e.to_string(), "/x.toml: gone");
}

#[test]
fn unknown_keys_name_the_dotted_key() {
    let f = Fixture::new();
    let e = f.fails(
        &[("server.bogus", i(1))],
        "server.bogus",
        "unknown field `bogus`",
    );
    assert!(e.to_string().contains("key `server.bogus`"), "{e}");
    f.fails(
        &[("auth.ldap.bogus", s("x"))],
        "auth.ldap.bogus",
        "unknown field",
    );
    f.fails(&[("bogus", i(1))], "bogus", "unknown field");
    f.fails(&[("bogus.listen", s("x"))], "bogus", "unknown field");
}

#[test]
fn type_errors_name_the_key() {
    let f = Fixture::new();
    f.fails(
        &[("policy.max_sessions", s("ten"))],
        "policy.max_sessions",
        "whole number",
    );
    // No rounding, no negative numbers, no "yes" for true, no number for a string.
    f.fails(
        &[("policy.max_sessions", Value::Float(2.5))],
        "policy.max_sessions",
        "2.5",
    );
    f.fails(
        &[("policy.max_sessions", i(-1))],
        "policy.max_sessions",
        "-1",
    );
    f.fails(
        &[("upstream.preserve_host", s("yes"))],
        "upstream.preserve_host",
        "true or false",
    );
    f.fails(&[("pages.helpdesk", i(4357))], "pages.helpdesk", "a string");
    f.fails(
        &[("faspex.public_paths", s("/x/"))],
        "faspex.public_paths",
        "a list",
    );
    f.fails(&[("server", i(1))], "server", "invalid type");
}

#[test]
fn pages_timezone_and_faspex_form_keys_are_checked() {
    let f = Fixture::new();
    f.fails(
        &[("pages.timezone", s("Mars/Olympus_Mons"))],
        "pages.timezone",
        "not a time zone",
    );
    let c = f.load(&[("pages.timezone", s("Europe/Berlin"))]).unwrap();
    assert_eq!(c.pages.tz.iana_name(), Some("Europe/Berlin"));
    f.fails(
        &[("faspex.username_field", s(" "))],
        "faspex.username_field",
        "field",
    );
    f.fails(
        &[("faspex.password_field", s("user[name]"))],
        "faspex.password_field",
        "must differ",
    );
    f.fails(
        &[("faspex.session_cookie", s("a b"))],
        "faspex.session_cookie",
        "not a cookie name",
    );
    f.fails(
        &[("faspex.token_path", s("oauth"))],
        "faspex.token_path",
        "",
    );
    let c = f.load(&[]).unwrap();
    assert_eq!(c.faspex.session_cookie, "_faspex_session");
    assert_eq!(c.faspex.token_path, "/aspera/faspex/auth/oauth2/token");
}

#[test]
fn list_element_type_error_names_the_index() {
    let f = Fixture::new();
    let v = Value::Array(vec![s("/a/"), i(3)]);
    f.fails(
        &[("faspex.public_paths", v)],
        "faspex.public_paths[1]",
        "a string",
    );
}

#[test]
fn bad_duration_names_its_key() {
    let f = Fixture::new();
    let e = f.fails(
        &[("policy.idle_timeout", s("soon"))],
        "policy.idle_timeout",
        "not a duration",
    );
    assert!(
        e.reason.contains("\"30s\""),
        "the reason shows the format: {e}"
    );
    f.fails(
        &[("server.tls_handshake_timeout", s("10"))],
        "server.tls_handshake_timeout",
        "duration",
    );
    f.fails(
        &[("auth.ldap.timeout", i(5))],
        "auth.ldap.timeout",
        "a string",
    );
}

#[test]
fn durations_parse_with_units_and_must_be_positive() {
    let f = Fixture::new();
    let c = f
        .load(&[
            ("policy.idle_timeout", s("500ms")),
            ("policy.lockout_window", s("1h 30m")),
        ])
        .unwrap();
    assert_eq!(c.policy.idle_timeout, Duration::from_millis(500));
    assert_eq!(c.policy.lockout_window, Duration::from_secs(5400));
    for key in [
        "server.tls_handshake_timeout",
        "server.header_read_timeout",
        "server.shutdown_timeout",
        "server.body_idle_timeout",
        "upstream.connect_timeout",
        "upstream.response_timeout",
        "policy.idle_timeout",
        "policy.api_idle_timeout",
        "policy.lockout_window",
        "policy.lockout_duration",
        "auth.cache_ttl",
        "auth.ldap.timeout",
    ] {
        f.fails(&[(key, s("0s"))], key, "longer than zero");
    }
}

/// No key takes a duration of centuries: past `Instant`'s range one would overflow where it is
/// added to now, and a lock past the year 9999 could not be written in the audit log.
#[test]
fn durations_are_at_most_100_years() {
    let f = Fixture::new();
    let c = f.load(&[("policy.lockout_duration", s("100y"))]).unwrap();
    assert_eq!(
        c.policy.lockout_duration,
        Duration::from_secs(3_155_760_000)
    );
    for key in [
        "policy.lockout_duration",
        "policy.absolute_timeout",
        "server.body_idle_timeout",
        "upstream.response_timeout",
        "store.redis.outage_grace",
    ] {
        for value in ["100y 1s", "8000y"] {
            f.fails(&[(key, s(value))], key, "at most 100 years");
        }
    }
}

#[test]
fn absolute_timeout_zero_means_never() {
    let f = Fixture::new();
    let c = f.load(&[("policy.absolute_timeout", s("0s"))]).unwrap();
    assert_eq!(c.policy.absolute_timeout, None);
    let c = f.load(&[("policy.absolute_timeout", s("8h"))]).unwrap();
    assert_eq!(
        c.policy.absolute_timeout,
        Some(Duration::from_secs(8 * 3600))
    );
    f.fails(
        &[("policy.absolute_timeout", s("never"))],
        "policy.absolute_timeout",
        "duration",
    );
}

// ---------------------------------------------------------------- environment

#[test]
fn env_overrides_scalars() {
    let f = Fixture::new();
    let c = f
        .load_env(&[
            ("FASPEX_GATE__POLICY__IDLE_TIMEOUT", "2s"),
            ("FASPEX_GATE__POLICY__MAX_SESSIONS", "3"),
            ("FASPEX_GATE__UPSTREAM__PRESERVE_HOST", "false"),
            ("FASPEX_GATE__SERVER__HTTP_LISTEN", "127.0.0.1:8080"),
            ("FASPEX_GATE__POLICY__LOCKOUT_KEY", "account+ip"),
        ])
        .unwrap();
    assert_eq!(c.policy.idle_timeout, Duration::from_secs(2));
    assert_eq!(c.policy.max_sessions, 3);
    assert!(!c.upstream.preserve_host);
    assert_eq!(
        c.server.http_listen,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(c.policy.lockout_key, LockoutKey::AccountIp);
}

#[test]
fn env_overrides_the_file() {
    let f = Fixture::new();
    let c = f
        .load_edited(
            &[("policy.max_sessions", Some(i(20)))],
            &[("FASPEX_GATE__POLICY__MAX_SESSIONS", "4")],
        )
        .unwrap();
    assert_eq!(c.policy.max_sessions, 4);
}

#[test]
fn env_names_are_case_insensitive() {
    let f = Fixture::new();
    let c = f
        .load_env(&[("faspex_gate__policy__max_sessions", "7")])
        .unwrap();
    assert_eq!(c.policy.max_sessions, 7);
}

#[test]
fn env_comma_lists_and_nested_keys() {
    let f = Fixture::new();
    let c = f
        .load_env(&[
            (
                "FASPEX_GATE__AUTH__LDAP__URLS",
                "ldap://a.example.org,ldap://b.example.org",
            ),
            (
                "FASPEX_GATE__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8, 192.0.2.10",
            ),
            ("FASPEX_GATE__POLICY__USERNAME_DOMAINS", "HUTCH,fhcrc.org"),
            ("FASPEX_GATE__POLICY__ACTIVITY_EXEMPT_PATHS", "/status/"),
            ("FASPEX_GATE__FASPEX__DENY", "* /a/,POST /b/"),
            ("FASPEX_GATE__FASPEX__PUBLIC_PATHS", "/p/,/q/"),
        ])
        .unwrap();
    let urls: Vec<&str> = c.auth.ldap.urls.iter().map(|u| u.as_str()).collect();
    assert_eq!(urls, ["ldap://a.example.org", "ldap://b.example.org"]);
    let proxies: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.10/32"]);
    assert_eq!(c.policy.username_domains, ["HUTCH", "fhcrc.org"]);
    assert_eq!(c.policy.activity_exempt_paths, ["/status/"]);
    assert_eq!(
        c.faspex.deny,
        [
            DenyRule {
                method: None,
                prefix: "/a/".into()
            },
            DenyRule {
                method: Some(http::Method::POST),
                prefix: "/b/".into()
            },
        ]
    );
    assert_eq!(c.faspex.public_paths, ["/p/", "/q/"]);
}

/// Every key that is a list in the file takes a comma-separated list in the environment, read
/// from the file's schema: a hand-kept list of them had left out four, which then refused any
/// value from the environment (`FASPEX_GATE__HELPDESK__ALLOWED_NETWORKS=10.0.0.0/8` stopped the
/// start with exit 2), against the contract's "list keys accept comma-separated values".
#[test]
fn every_list_key_takes_a_comma_list_from_the_environment() {
    let mut keys = super::env::list_keys();
    keys.sort();
    assert_eq!(
        keys,
        [
            "auth.ldap.urls",
            "faspex.deny",
            "faspex.forward_cookies",
            "faspex.password_forms",
            "faspex.public_paths",
            "helpdesk.allowed_networks",
            "policy.activity_exempt_paths",
            "policy.username_domains",
            "server.strip_response_headers",
            "server.trusted_proxies",
            "store.redis.sentinels",
            "store.redis.urls",
        ]
    );

    let f = Fixture::new();
    let c = f
        .load_env(&[
            ("FASPEX_GATE__HELPDESK__ALLOWED_NETWORKS", "10.0.0.0/8"),
            (
                "FASPEX_GATE__SERVER__STRIP_RESPONSE_HEADERS",
                "Server, X-Powered-By",
            ),
            (
                "FASPEX_GATE__FASPEX__PASSWORD_FORMS",
                "POST /aspera/faspex/admin/users,PUT /aspera/faspex/account/password",
            ),
            ("FASPEX_GATE__FASPEX__FORWARD_COOKIES", "lang,theme"),
        ])
        .unwrap();
    let networks: Vec<String> = c
        .helpdesk
        .allowed_networks
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(networks, ["10.0.0.0/8"]);
    assert_eq!(c.server.strip_response_headers, ["server", "x-powered-by"]);
    let forms: Vec<(String, String)> = c
        .faspex
        .password_forms
        .iter()
        .map(|r| (r.method.to_string(), r.path.clone()))
        .collect();
    assert_eq!(
        forms,
        [
            ("POST".into(), "/aspera/faspex/admin/users".into()),
            ("PUT".into(), "/aspera/faspex/account/password".into()),
        ]
    );
    assert_eq!(c.faspex.forward_cookies, ["lang", "theme"]);

    let c = f
        .load_env(&[
            (
                "FASPEX_GATE__HELPDESK__ALLOWED_NETWORKS",
                "10.0.0.0/8, 192.0.2.0/24",
            ),
            ("FASPEX_GATE__FASPEX__FORWARD_COOKIES", ""),
        ])
        .unwrap();
    assert_eq!(c.helpdesk.allowed_networks.len(), 2);
    assert!(c.faspex.forward_cookies.is_empty());
}

#[test]
fn env_empty_list_is_an_empty_list() {
    let f = Fixture::new();
    let c = f
        .load_env(&[
            ("FASPEX_GATE__FASPEX__PUBLIC_PATHS", ""),
            ("FASPEX_GATE__FASPEX__DENY", ""),
            ("FASPEX_GATE__AUTH__BACKEND", "file"),
            (
                "FASPEX_GATE__AUTH__FILE__PATH",
                f.path("users.toml").to_str().unwrap(),
            ),
            ("FASPEX_GATE__AUTH__LDAP__URLS", ""),
        ])
        .unwrap();
    assert!(c.faspex.public_paths.is_empty());
    assert!(c.faspex.deny.is_empty());
    assert!(c.auth.ldap.urls.is_empty());
}

#[test]
fn env_numeric_looking_values_stay_strings() {
    let f = Fixture::new();
    let c = f
        .load_env(&[
            ("FASPEX_GATE__PAGES__HELPDESK", "4357"),
            ("FASPEX_GATE__SESSION__COOKIE_NAME", "007"),
            ("FASPEX_GATE__POLICY__USERNAME_DOMAINS", "1234"),
            ("FASPEX_GATE__AUTH__LDAP__REQUIRE_GROUP", "true"),
        ])
        .unwrap();
    assert_eq!(c.pages.helpdesk, "4357");
    assert_eq!(c.session.cookie_name, "007");
    assert_eq!(c.policy.username_domains, ["1234"]);
    assert_eq!(c.auth.ldap.require_group.as_deref(), Some("true"));
}

#[test]
fn env_errors_name_the_variable() {
    let f = Fixture::new();
    let e = f
        .load_env(&[("FASPEX_GATE__POLICY__IDLE_TIMEOUT", "soon")])
        .unwrap_err();
    check_err(
        &e,
        "policy.idle_timeout",
        "set by FASPEX_GATE__POLICY__IDLE_TIMEOUT",
    );

    let e = f
        .load_env(&[("FASPEX_GATE__POLICY__MAX_SESSIONS", "ten")])
        .unwrap_err();
    check_err(
        &e,
        "policy.max_sessions",
        "set by FASPEX_GATE__POLICY__MAX_SESSIONS",
    );

    let e = f
        .load_env(&[("FASPEX_GATE__SERVER__BOGUS", "1")])
        .unwrap_err();
    check_err(&e, "server.bogus", "unknown field");
    assert!(
        e.reason.contains("set by FASPEX_GATE__SERVER__BOGUS"),
        "{e}"
    );

    let e = f
        .load_env(&[("FASPEX_GATE__FASPEX__DENY", "* /a/,get /b/")])
        .unwrap_err();
    check_err(&e, "faspex.deny[1]", "set by FASPEX_GATE__FASPEX__DENY");

    let e = f
        .load_env(&[("FASPEX_GATE__FASPEX__PUBLIC_PATHS", "/a/,")])
        .unwrap_err();
    check_err(
        &e,
        "faspex.public_paths[1]",
        "set by FASPEX_GATE__FASPEX__PUBLIC_PATHS",
    );

    // A value from the file is not blamed on the environment.
    let e = f.fails(
        &[("policy.idle_timeout", s("soon"))],
        "policy.idle_timeout",
        "duration",
    );
    assert!(!e.reason.contains("set by"), "{e}");
}

#[test]
fn env_without_the_double_underscore_prefix_is_ignored() {
    let f = Fixture::new();
    let c = f
        .load_env(&[
            ("FASPEX_GATE_CONFIG", "/somewhere/else.toml"),
            ("FASPEX_GATEWAY__POLICY__MAX_SESSIONS", "1"),
            ("PATH", "/usr/bin"),
            ("POLICY__MAX_SESSIONS", "2"),
        ])
        .unwrap();
    assert_eq!(c.policy.max_sessions, 10);
}

#[test]
fn env_same_key_twice_is_an_error() {
    let f = Fixture::new();
    let e = f
        .load_env(&[
            ("FASPEX_GATE__POLICY__MAX_SESSIONS", "1"),
            ("faspex_gate__policy__max_sessions", "2"),
        ])
        .unwrap_err();
    check_err(&e, "policy.max_sessions", "set by both");
}

#[test]
fn env_layer_source_of() {
    let env = EnvLayer::new(&[
        ("FASPEX_GATE__FASPEX__DENY".into(), "x".into()),
        ("FASPEX_GATE__AUTH__LDAP__URLS".into(), "y".into()),
    ])
    .unwrap();
    assert_eq!(
        env.source_of("faspex.deny[3]"),
        Some("FASPEX_GATE__FASPEX__DENY")
    );
    assert_eq!(
        env.source_of("auth.ldap.urls"),
        Some("FASPEX_GATE__AUTH__LDAP__URLS")
    );
    assert_eq!(
        env.source_of("auth.ldap"),
        Some("FASPEX_GATE__AUTH__LDAP__URLS")
    );
    assert_eq!(env.source_of("auth.ldap.url"), None);
    assert_eq!(env.source_of("faspex.denyx"), None);
    assert_eq!(env.source_of(""), None);
}

#[test]
fn env_setting_below_a_scalar_is_a_type_error() {
    let f = Fixture::new();
    let e = f
        .load_env(&[("FASPEX_GATE__AUTH__LDAP__URLS__X", "1")])
        .unwrap_err();
    check_err(
        &e,
        "auth.ldap.urls",
        "set by FASPEX_GATE__AUTH__LDAP__URLS__X",
    );
}

#[test]
fn env_names_without_a_key_are_errors() {
    let f = Fixture::new();
    let e = f.load_env(&[("FASPEX_GATE__", "1")]).unwrap_err();
    check_err(&e, "", "FASPEX_GATE__ does not name a key");
    let e = f
        .load_env(&[("FASPEX_GATE__SERVER____LISTEN", "1")])
        .unwrap_err();
    check_err(
        &e,
        "server..listen",
        "FASPEX_GATE__SERVER____LISTEN does not name a key",
    );
}

// ---------------------------------------------------------------- [server], [tls]

#[test]
fn listeners_empty_means_off_but_one_must_be_on() {
    let f = Fixture::new();
    let e = f.fails(&[("server.listen", s(""))], "server.listen", "both off");
    assert!(e.reason.contains("http_listen"), "{e}");

    // Plain HTTP only: the TLS files are not needed.
    let c = f
        .load_edited(
            &[
                ("server.listen", Some(s(""))),
                ("server.http_listen", Some(s("[::1]:8080"))),
                ("tls.cert_file", None),
                ("tls.key_file", None),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(c.server.listen, None);
    assert_eq!(c.server.http_listen, Some("[::1]:8080".parse().unwrap()));
    assert_eq!(c.tls.cert_file, None);
}

#[test]
fn listen_addresses_must_be_socket_addresses() {
    let f = Fixture::new();
    f.fails(
        &[("server.listen", s("localhost:8443"))],
        "server.listen",
        "IP address and port",
    );
    f.fails(
        &[("server.listen", s("0.0.0.0"))],
        "server.listen",
        "IP address and port",
    );
    f.fails(
        &[("server.http_listen", s(":80"))],
        "server.http_listen",
        "IP address and port",
    );
    f.fails(
        &[("admin.listen", s("9180"))],
        "admin.listen",
        "IP address and port",
    );
}

#[test]
fn listeners_must_not_share_a_port() {
    let f = Fixture::new();
    f.fails(
        &[("server.http_listen", s("127.0.0.1:8443"))],
        "server.http_listen",
        "same port",
    );
    f.fails(
        &[("admin.listen", s("0.0.0.0:8443"))],
        "admin.listen",
        "same port",
    );
    // Port 0 ("any free port") never clashes; different addresses on a port are fine.
    f.load(&[
        ("server.listen", s("127.0.0.1:0")),
        ("server.http_listen", s("127.0.0.1:0")),
        ("admin.listen", s("127.0.0.1:0")),
    ])
    .unwrap();
    f.load(&[
        ("server.listen", s("127.0.0.1:8443")),
        ("admin.listen", s("127.0.0.2:8443")),
    ])
    .unwrap();
}

#[test]
fn tls_files_are_required_and_must_exist_when_https_is_on() {
    let f = Fixture::new();
    f.fails(
        &[("tls.cert_file", s(""))],
        "tls.cert_file",
        "required while server.listen is on",
    );
    f.fails(&[("tls.key_file", s(""))], "tls.key_file", "required");
    f.fails(
        &[("tls.cert_file", f.p("nope.pem"))],
        "tls.cert_file",
        "does not exist",
    );
    f.fails(
        &[(
            "tls.key_file",
            Value::String(f.dir.path().to_string_lossy().into()),
        )],
        "tls.key_file",
        "not a regular file",
    );
}

#[test]
fn trusted_proxies_accept_cidrs_and_bare_addresses() {
    let f = Fixture::new();
    let c = f
        .load(&[(
            "server.trusted_proxies",
            list(&["10.1.2.3/8", "192.0.2.10", "2001:db8::/32", "::1"]),
        )])
        .unwrap();
    let got: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        got,
        ["10.0.0.0/8", "192.0.2.10/32", "2001:db8::/32", "::1/128"]
    );
    f.fails(
        &[(
            "server.trusted_proxies",
            list(&["10.0.0.0/8", "lb.example.org"]),
        )],
        "server.trusted_proxies[1]",
        "not a CIDR",
    );
    f.fails(
        &[("server.trusted_proxies", list(&["10.0.0.0/33"]))],
        "server.trusted_proxies[0]",
        "CIDR",
    );
}

#[test]
fn header_bytes_and_connections_bounds() {
    let f = Fixture::new();
    f.fails(
        &[("server.max_header_bytes", i(1023))],
        "server.max_header_bytes",
        "at least 1024",
    );
    f.fails(
        &[("server.max_header_bytes", i(1_048_577))],
        "server.max_header_bytes",
        "at most 1048576",
    );
    assert_eq!(
        f.load(&[("server.max_header_bytes", i(1024))])
            .unwrap()
            .server
            .max_header_bytes,
        1024
    );
    assert_eq!(
        f.load(&[("server.max_header_bytes", i(1_048_576))])
            .unwrap()
            .server
            .max_header_bytes,
        1_048_576
    );
    f.fails(
        &[("server.max_connections", i(0))],
        "server.max_connections",
        "at least 1",
    );
    assert_eq!(
        f.load(&[("server.max_connections", i(1))])
            .unwrap()
            .server
            .max_connections,
        1
    );
    for (key, value, reason) in [
        ("server.max_connections_per_ip", i(0), "at least 1"),
        ("server.ipv6_prefix_len", i(0), "at least 1"),
        ("server.ipv6_prefix_len", i(129), "at most 128"),
        ("upstream.max_connections", i(0), "at least 1"),
        ("policy.public_inflight_per_ip", i(0), "at least 1"),
        ("server.hsts", s("includeSubDomains"), "max-age=SECONDS"),
        ("server.hsts", s("max-age=soon"), "max-age=SECONDS"),
        ("server.hsts", s("max-age=1\n"), "max-age=SECONDS"),
    ] {
        f.fails(&[(key, value)], key, reason);
    }
    f.fails(
        &[(
            "server.strip_response_headers",
            list(&["Server", "Set-Cookie"]),
        )],
        "server.strip_response_headers[1]",
        "cannot be stripped",
    );
    f.fails(
        &[("server.strip_response_headers", list(&["X Bad"]))],
        "server.strip_response_headers[0]",
        "not a header name",
    );
    let c = f
        .load(&[
            ("server.hsts", s("")),
            ("server.strip_response_headers", list(&[])),
            ("server.ipv6_prefix_len", i(48)),
        ])
        .unwrap();
    assert_eq!(c.server.hsts, None, "\"\" turns HSTS off");
    assert!(c.server.strip_response_headers.is_empty());
    assert_eq!(c.server.ipv6_prefix_len, 48);
    assert_eq!(
        f.load(&[(
            "server.hsts",
            s("max-age=63072000; includeSubDomains; preload")
        )])
        .unwrap()
        .server
        .hsts
        .unwrap(),
        "max-age=63072000; includeSubDomains; preload"
    );
    assert_eq!(f.load(&[]).unwrap().server.workers, 0, "one per core");
    assert_eq!(
        f.load(&[("server.workers", i(2))]).unwrap().server.workers,
        2
    );
    f.fails(
        &[("server.workers", i(1025))],
        "server.workers",
        "at most 1024",
    );
}

// ---------------------------------------------------------------- [upstream]

#[test]
fn upstream_url_rules() {
    let f = Fixture::new();
    const K: &str = "upstream.url";
    f.fails(&[(K, s(""))], K, "required");
    f.fails(&[(K, s("faspex.example.org"))], K, "not a valid URL");
    f.fails(&[(K, s("ftp://faspex.example.org"))], K, "http or https");
    f.fails(&[(K, s("https://faspex.example.org/?a=b"))], K, "query");
    f.fails(&[(K, s("https://faspex.example.org/#top"))], K, "fragment");
    let e = f.fails(
        &[(K, s("https://ann:hunter2@faspex.example.org"))],
        K,
        "user name or password",
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    f.fails(
        &[(K, s("https://faspex.example.org/aspera/faspex"))],
        K,
        "must not have a path",
    );

    let c = f.load(&[(K, s("http://10.0.0.5:8080/"))]).unwrap();
    assert_eq!(c.upstream.url.as_str(), "http://10.0.0.5:8080/");
    assert_eq!(c.upstream.url.port(), Some(8080));
}

/// Certificates and the users file are only checked to exist here; the app parses them when it
/// is built (`app::Loaded`, whose tests check what a bad one says).
#[test]
fn files_are_checked_to_exist_not_parsed() {
    let f = Fixture::new();
    f.file("bad-users.toml", b"[users.ann]\nhash = \"plaintext\"\n");
    let c = f
        .load(&[
            ("upstream.ca_file", f.p("not-a-cert.pem")),
            ("auth.ldap.ca_file", f.p("users.toml")),
            ("auth.local_accounts", s("none")),
            ("auth.file.path", f.p("bad-users.toml")),
        ])
        .unwrap();
    assert_eq!(c.upstream.ca_file, Some(f.path("not-a-cert.pem")));
    assert_eq!(c.tls.cert_file, Some(f.path("cert.pem")));
    let c = f
        .load(&[
            ("auth.backend", s("file")),
            ("auth.file.path", f.p("bad-users.toml")),
        ])
        .unwrap();
    assert_eq!(c.auth.file.path, Some(f.path("bad-users.toml")));
    // An error found when they are read names the key as validation would.
    let e = f
        .load_env(&[(
            "FASPEX_GATE__UPSTREAM__CA_FILE",
            &f.path("ca.pem").display().to_string(),
        )])
        .unwrap()
        .error("upstream.ca_file", "not a certificate");
    check_err(
        &e,
        "upstream.ca_file",
        "not a certificate (set by FASPEX_GATE__UPSTREAM__CA_FILE)",
    );
    assert!(
        e.to_string()
            .contains("faspex-gate.toml: key `upstream.ca_file`"),
        "{e}"
    );
}

#[test]
fn upstream_ca_file_must_exist() {
    let f = Fixture::new();
    f.fails(
        &[("upstream.ca_file", f.p("missing.pem"))],
        "upstream.ca_file",
        "does not exist",
    );
    let c = f.load(&[("upstream.ca_file", f.p("ca.pem"))]).unwrap();
    assert_eq!(c.upstream.ca_file, Some(f.path("ca.pem")));
}

// ---------------------------------------------------------------- secrets

#[test]
fn secret_files_must_exist() {
    let f = Fixture::new();
    f.fails(
        &[("session.secret_file", s(""))],
        "session.secret_file",
        "required",
    );
    f.fails(
        &[("session.secret_file", f.p("nope"))],
        "session.secret_file",
        "does not exist",
    );
    f.fails(
        &[("admin.token_file", f.p("nope"))],
        "admin.token_file",
        "does not exist",
    );
    f.fails(
        &[(
            "session.secret_file",
            Value::String(f.dir.path().to_string_lossy().into()),
        )],
        "session.secret_file",
        "not a regular file",
    );
}

#[test]
fn secret_files_must_not_be_group_or_world_accessible() {
    let f = Fixture::new();
    for (mode, shown) in [
        (0o644, "0644"),
        (0o640, "0640"),
        (0o604, "0604"),
        (0o610, "0610"),
    ] {
        let path = f.secret("loose.key", &[b'k'; 40]);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let e = f.fails(
            &[("session.secret_file", f.p("loose.key"))],
            "session.secret_file",
            shown,
        );
        assert!(e.reason.contains("chmod 600"), "{e}");
    }
    // 0400 is fine.
    let path = f.secret("tight.key", &[b'k'; 40]);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    f.load(&[("session.secret_file", f.p("tight.key"))])
        .unwrap();

    fs::set_permissions(f.path("admin.token"), fs::Permissions::from_mode(0o644)).unwrap();
    f.fails(&[], "admin.token_file", "chmod 600");
}

#[test]
fn secret_files_must_not_be_empty() {
    let f = Fixture::new();
    f.secret("empty", b"");
    f.secret("blank", b" \n\t\n");
    f.fails(
        &[("session.secret_file", f.p("empty"))],
        "session.secret_file",
        "empty",
    );
    f.fails(
        &[("admin.token_file", f.p("blank"))],
        "admin.token_file",
        "empty",
    );
}

#[test]
fn session_secret_length_raw_or_base64() {
    let f = Fixture::new();
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![9u8; n]);

    // Raw: 31 bytes is too short, 32 is enough (whitespace trimmed first).
    f.secret("raw31", format!("{}\n", "r".repeat(31)).as_bytes());
    f.fails(
        &[("session.secret_file", f.p("raw31"))],
        "session.secret_file",
        "at least 32 bytes",
    );
    f.secret("raw32", format!("  {}\n", "r".repeat(32)).as_bytes());
    let c = f.load(&[("session.secret_file", f.p("raw32"))]).unwrap();
    assert_eq!(c.session.secret.expose(), "r".repeat(32).as_bytes());

    // Binary raw bytes.
    let binary: Vec<u8> = (100u8..140).collect();
    f.secret("binary", &binary);
    let c = f.load(&[("session.secret_file", f.p("binary"))]).unwrap();
    assert_eq!(c.session.secret.expose(), &binary[..]);

    // Base64 of 16 bytes is 24 characters: too short either way.
    f.secret("b64-16", b64(16).as_bytes());
    f.fails(
        &[("session.secret_file", f.p("b64-16"))],
        "session.secret_file",
        "too short",
    );

    // Base64 of 32 bytes decodes; wrapped base64 of 48 bytes too.
    f.secret("b64-32", format!("{}\n", b64(32)).as_bytes());
    let c = f.load(&[("session.secret_file", f.p("b64-32"))]).unwrap();
    assert_eq!(c.session.secret.expose(), &[9u8; 32]);
    let long = b64(48);
    f.secret(
        "b64-48",
        format!("{}\n{}\n", &long[..40], &long[40..]).as_bytes(),
    );
    let c = f.load(&[("session.secret_file", f.p("b64-48"))]).unwrap();
    assert_eq!(c.session.secret.expose(), &[9u8; 48]);
}

#[test]
fn admin_token_rules() {
    let f = Fixture::new();
    f.secret("short", b"0123456789abcde\n");
    f.fails(
        &[("admin.token_file", f.p("short"))],
        "admin.token_file",
        "at least 16 characters",
    );
    f.secret("spaced", b"0123456789 abcdefgh\n");
    f.fails(
        &[("admin.token_file", f.p("spaced"))],
        "admin.token_file",
        "printable ASCII",
    );
    f.secret("ok16", b"0123456789abcdef");
    let c = f.load(&[("admin.token_file", f.p("ok16"))]).unwrap();
    assert_eq!(c.admin.token.unwrap().expose(), b"0123456789abcdef");

    f.fails(
        &[("admin.token_file", s(""))],
        "admin.token_file",
        "required while admin.listen is on",
    );

    // Admin listener off: no token needed, and none loaded.
    let c = f
        .load(&[("admin.listen", s("")), ("admin.token_file", s(""))])
        .unwrap();
    assert_eq!(c.admin.listen, None);
    assert!(c.admin.token.is_none());
}

#[test]
fn secrets_never_show_in_debug() {
    let f = Fixture::new();
    let c = f.load(&[]).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("0123456789abcdefXYZ"), "admin token leaked");
    assert!(debug.contains("<redacted>"));
    assert_eq!(
        format!("{:?}", Secret::new(b"hunter2".to_vec())),
        "<redacted>"
    );
}

// ---------------------------------------------------------------- [policy]

#[test]
fn policy_counts_must_be_at_least_one() {
    let f = Fixture::new();
    for key in [
        "policy.max_sessions",
        "policy.lockout_threshold",
        "policy.login_attempts_per_ip_per_minute",
        "policy.public_requests_per_ip_per_minute",
        "policy.max_tracked_usernames",
        "auth.max_checks_per_second",
        "auth.max_concurrent_hashes",
        "auth.ldap.pool_size",
    ] {
        f.fails(&[(key, i(0))], key, "at least 1");
    }
    f.fails(
        &[("policy.max_sessions", i(1 << 33))],
        "policy.max_sessions",
        "too large",
    );
    let c = f.load(&[("policy.max_sessions", i(1))]).unwrap();
    assert_eq!(c.policy.max_sessions, 1);
}

#[test]
fn policy_enums_are_exact() {
    let f = Fixture::new();
    let c = f
        .load(&[
            ("policy.one_client_per_account", s("replace")),
            ("policy.lockout_key", s("account+ip")),
        ])
        .unwrap();
    assert_eq!(c.policy.one_client_per_account, OneClient::Replace);
    assert_eq!(c.policy.lockout_key, LockoutKey::AccountIp);
    f.fails(
        &[("policy.one_client_per_account", s("Reject"))],
        "policy.one_client_per_account",
        r#""reject" or "replace""#,
    );
    f.fails(
        &[("policy.lockout_key", s("ip"))],
        "policy.lockout_key",
        r#""account" or "account+ip""#,
    );
    f.fails(
        &[("policy.lockout_key", s("account_ip"))],
        "policy.lockout_key",
        "account+ip",
    );
}

#[test]
fn policy_paths_and_domains() {
    let f = Fixture::new();
    let c = f
        .load(&[
            (
                "policy.activity_exempt_paths",
                list(&["/aspera/faspex/status"]),
            ),
            ("policy.username_domains", list(&["HUTCH", "fhcrc.org"])),
        ])
        .unwrap();
    assert_eq!(c.policy.activity_exempt_paths, ["/aspera/faspex/status"]);
    assert_eq!(c.policy.username_domains, ["HUTCH", "fhcrc.org"]);
    f.fails(
        &[("policy.activity_exempt_paths", list(&["/ok", "status"]))],
        "policy.activity_exempt_paths[1]",
        "starting with \"/\"",
    );
    f.fails(
        &[("policy.username_domains", list(&[""]))],
        "policy.username_domains[0]",
        "empty",
    );
    f.fails(
        &[("policy.username_domains", list(&["HUTCH\\"]))],
        "policy.username_domains[0]",
        "domain alone",
    );
}

// ---------------------------------------------------------------- [session]

#[test]
fn cookie_name_must_be_a_token() {
    let f = Fixture::new();
    for good in ["__Host-faspex-gate", "__Secure-gate", "gate_session", "a"] {
        let c = f.load(&[("session.cookie_name", s(good))]).unwrap();
        assert_eq!(c.session.cookie_name, good);
    }
    for bad in [
        "",
        "faspex gate",
        "a;b",
        "a=b",
        "caf\u{e9}",
        "x\ty",
        "(x)",
        "a,b",
        "a/b",
    ] {
        f.fails(
            &[("session.cookie_name", s(bad))],
            "session.cookie_name",
            "not a valid cookie name",
        );
    }
}

// ---------------------------------------------------------------- [auth]

#[test]
fn auth_backend_must_be_known() {
    let f = Fixture::new();
    f.fails(
        &[("auth.backend", s("saml"))],
        "auth.backend",
        r#""ldap" or "file""#,
    );
    f.fails(
        &[("auth.backend", s("LDAP"))],
        "auth.backend",
        "unknown backend",
    );
}

#[test]
fn ldap_urls_rules() {
    let f = Fixture::new();
    const K: &str = "auth.ldap.urls";
    f.fails(&[(K, list(&[]))], K, "at least one directory server");
    f.fails(
        &[(K, list(&["ldaps://dc1.example.org", "http://dc2"]))],
        "auth.ldap.urls[1]",
        "ldap or ldaps",
    );
    f.fails(
        &[(K, list(&["dc1.example.org"]))],
        "auth.ldap.urls[0]",
        "not a valid URL",
    );
    f.fails(&[(K, list(&["ldap://"]))], "auth.ldap.urls[0]", "no host");
    f.fails(
        &[(K, list(&["ldap://cn=x:pw@dc1"]))],
        "auth.ldap.urls[0]",
        "user name or password",
    );
    f.fails(
        &[(K, list(&["ldap://dc1/dc=example,dc=org"]))],
        "auth.ldap.urls[0]",
        "server only",
    );
    let c = f
        .load(&[(
            K,
            list(&["ldap://dc1.example.org:389", "ldaps://dc2.example.org"]),
        )])
        .unwrap();
    assert_eq!(c.auth.ldap.urls[0].port(), Some(389));
    assert_eq!(c.auth.ldap.urls[1].scheme(), "ldaps");
}

#[test]
fn ldap_starttls_conflicts_with_ldaps() {
    let f = Fixture::new();
    f.fails(
        &[("auth.ldap.starttls", Value::Boolean(true))],
        "auth.ldap.starttls",
        "ldaps://",
    );
    let c = f
        .load(&[
            ("auth.ldap.starttls", Value::Boolean(true)),
            ("auth.ldap.urls", list(&["ldap://dc1.example.org"])),
        ])
        .unwrap();
    assert!(c.auth.ldap.starttls);
}

#[test]
fn ldap_direct_bind_template_needs_username() {
    let f = Fixture::new();
    f.fails(
        &[("auth.ldap.user_dn_template", s("uid=ann,dc=example,dc=org"))],
        "auth.ldap.user_dn_template",
        "{username}",
    );
}

#[test]
fn ldap_needs_a_bind_mode() {
    let f = Fixture::new();
    f.fails(
        &[("auth.ldap.user_dn_template", s(""))],
        "auth.ldap.user_dn_template",
        "bind_dn, bind_password_file and base_dn",
    );
}

#[test]
fn local_accounts_need_a_directory_that_can_say_it_does_not_know_a_name() {
    let f = Fixture::new();
    const K: &str = "auth.local_accounts";
    assert_eq!(
        f.load(&[]).unwrap().auth.local_accounts,
        LocalAccounts::None
    );
    // The fixture's directory binds directly: an unknown name and a wrong password look alike.
    for v in ["file", "faspex"] {
        f.fails(&[(K, s(v))], K, "search-then-bind");
    }
    f.fails(&[(K, s("both"))], K, "unknown value");
    let search = vec![
        ("auth.ldap.user_dn_template", s("")),
        ("auth.ldap.bind_dn", s("CN=svc,DC=example,DC=org")),
        ("auth.ldap.bind_password_file", f.p("bind.password")),
        ("auth.ldap.base_dn", s("DC=example,DC=org")),
    ];
    let with = |v: &str| {
        let mut e = search.clone();
        e.push((K, s(v)));
        e
    };
    let c = f.load(&with("faspex")).unwrap();
    assert_eq!(c.auth.local_accounts, LocalAccounts::Faspex);
    assert!(c.redacted().contains("local_accounts = \"faspex\""));
    // "file" needs the users file.
    f.fails(
        &with("file"),
        "auth.file.path",
        "auth.local_accounts = \"file\"",
    );
    // With the users file as the directory, only Faspex's accounts can be beside it.
    let file_backend = [
        ("auth.backend", s("file")),
        ("auth.file.path", f.p("users.toml")),
    ];
    let mut e = file_backend.to_vec();
    e.push((K, s("faspex")));
    assert_eq!(
        f.load(&e).unwrap().auth.local_accounts,
        LocalAccounts::Faspex
    );
    let mut e = file_backend.to_vec();
    e.push((K, s("file")));
    f.fails(&e, K, "users file already");
}

#[test]
fn ldap_search_then_bind() {
    let f = Fixture::new();
    let search = |missing: &str| -> Vec<(&'static str, Value)> {
        let mut v = vec![
            ("auth.ldap.user_dn_template", s("")),
            ("auth.ldap.bind_dn", s("CN=svc,DC=example,DC=org")),
            ("auth.ldap.bind_password_file", f.p("bind.password")),
            ("auth.ldap.base_dn", s("DC=example,DC=org")),
        ];
        v.retain(|(k, _)| *k != missing);
        v
    };
    let c = f.load(&search("")).unwrap();
    let l = &c.auth.ldap;
    assert_eq!(l.bind_dn.as_deref(), Some("CN=svc,DC=example,DC=org"));
    assert_eq!(l.base_dn.as_deref(), Some("DC=example,DC=org"));
    assert_eq!(
        l.bind_password.as_ref().unwrap().expose(),
        b"s3cret password"
    );
    assert_eq!(l.user_dn_template, None);

    for key in [
        "auth.ldap.bind_dn",
        "auth.ldap.bind_password_file",
        "auth.ldap.base_dn",
    ] {
        f.fails(&search(key), key, "search-then-bind needs");
    }
    let mut edits = search("");
    edits.push(("auth.ldap.user_filter", s("(uid=ann)")));
    f.fails(&edits, "auth.ldap.user_filter", "{username}");

    let mut edits = search("");
    edits.push(("auth.ldap.bind_password_file", f.p("missing")));
    f.fails(&edits, "auth.ldap.bind_password_file", "does not exist");

    let mut edits = search("");
    edits.push(("auth.ldap.user_filter", s("(uid={username}")));
    f.fails(&edits, "auth.ldap.user_filter", "not a valid LDAP filter");

    let mut edits = search("");
    edits.push((
        "auth.ldap.user_dn_template",
        s("uid={username},dc=example,dc=org"),
    ));
    f.fails(&edits, "auth.ldap.user_dn_template", "not both");

    fs::set_permissions(f.path("bind.password"), fs::Permissions::from_mode(0o664)).unwrap();
    f.fails(&search(""), "auth.ldap.bind_password_file", "0664");
}

#[test]
fn ldap_tls_needs_host_names_and_timeouts_are_bounded() {
    let f = Fixture::new();
    f.fails(
        &[("auth.ldap.urls", list(&["ldaps://[2001:db8::5]"]))],
        "auth.ldap.urls[0]",
        "host name",
    );
    f.fails(
        &[
            ("auth.ldap.urls", list(&["ldap://[2001:db8::5]"])),
            ("auth.ldap.starttls", Value::Boolean(true)),
        ],
        "auth.ldap.urls[0]",
        "host name",
    );
    // Without TLS an IPv6 address is fine (if unwise), whatever the other URLs are.
    assert!(f
        .load(&[(
            "auth.ldap.urls",
            list(&["ldap://[2001:db8::5]", "ldaps://dc2.example.org"])
        )])
        .is_ok());
    f.fails(
        &[("auth.ldap.timeout", s("16s"))],
        "auth.ldap.timeout",
        "at most 15s",
    );
    assert!(f.load(&[("auth.ldap.timeout", s("15s"))]).is_ok());
}

#[test]
fn ldap_ca_file_group_and_options() {
    let f = Fixture::new();
    f.fails(
        &[("auth.ldap.ca_file", f.p("missing.pem"))],
        "auth.ldap.ca_file",
        "does not exist",
    );
    let c = f
        .load(&[
            ("auth.ldap.ca_file", f.p("ca.pem")),
            (
                "auth.ldap.require_group",
                s("CN=Faspex,OU=Groups,DC=example,DC=org"),
            ),
            ("auth.ldap.nested_groups", Value::Boolean(true)),
            ("auth.ldap.pool_size", i(2)),
            ("auth.ldap.timeout", s("3s")),
        ])
        .unwrap();
    let l = &c.auth.ldap;
    assert_eq!(l.ca_file, Some(f.path("ca.pem")));
    assert_eq!(
        l.require_group.as_deref(),
        Some("CN=Faspex,OU=Groups,DC=example,DC=org")
    );
    assert!(l.nested_groups);
    assert_eq!(l.pool_size, 2);
    assert_eq!(l.timeout, Duration::from_secs(3));
}

#[test]
fn file_backend_rules() {
    let f = Fixture::new();
    f.fails(&[("auth.backend", s("file"))], "auth.file.path", "required");
    f.fails(
        &[
            ("auth.backend", s("file")),
            ("auth.file.path", f.p("missing.toml")),
        ],
        "auth.file.path",
        "does not exist",
    );
    // The LDAP section need not be complete when it is not in use.
    let c = f
        .load_edited(
            &[
                ("auth.backend", Some(s("file"))),
                ("auth.file.path", Some(f.p("users.toml"))),
                ("auth.ldap.urls", None),
                ("auth.ldap.user_dn_template", None),
                ("auth.ldap.bind_password_file", Some(f.p("missing"))),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(c.auth.backend, AuthBackend::File);
    assert_eq!(c.auth.file.path, Some(f.path("users.toml")));
    assert!(c.auth.ldap.bind_password.is_none());
    // (a bad entry in the users file: `app::Loaded`'s tests)
}

// ---------------------------------------------------------------- [faspex]

#[test]
fn faspex_paths_start_with_slash() {
    let f = Fixture::new();
    f.fails(
        &[("faspex.login_path", s("aspera/faspex/login"))],
        "faspex.login_path",
        "starting with \"/\"",
    );
    f.fails(
        &[("faspex.logout_path", s(""))],
        "faspex.logout_path",
        "starting with \"/\"",
    );
    f.fails(
        &[("faspex.public_paths", list(&["/a/", "b/"]))],
        "faspex.public_paths[1]",
        "\"/\"",
    );
    f.fails(
        &[("faspex.public_paths", list(&["/a b/"]))],
        "faspex.public_paths[0]",
        "space",
    );
    f.fails(
        &[("faspex.username_field", s(""))],
        "faspex.username_field",
        "must not be empty",
    );
    f.fails(
        &[("faspex.password_field", s(""))],
        "faspex.password_field",
        "must not be empty",
    );
}

#[test]
fn faspex_deny_rules() {
    let f = Fixture::new();
    let c = f
        .load(&[(
            "faspex.deny",
            list(&["* /a/", "GET /b/", "  DELETE   /c/  ", "PROPFIND /d/"]),
        )])
        .unwrap();
    let rules: Vec<(Option<&str>, &str)> = c
        .faspex
        .deny
        .iter()
        .map(|r| (r.method.as_ref().map(|m| m.as_str()), r.prefix.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            (None, "/a/"),
            (Some("GET"), "/b/"),
            (Some("DELETE"), "/c/"),
            (Some("PROPFIND"), "/d/")
        ]
    );
    const K: &str = "faspex.deny";
    f.fails(&[(K, list(&["get /a/"]))], "faspex.deny[0]", "upper-case");
    f.fails(
        &[(K, list(&["* /a/", "/b/"]))],
        "faspex.deny[1]",
        "METHOD PATH-PREFIX",
    );
    f.fails(
        &[(K, list(&["GET /a/ extra"]))],
        "faspex.deny[0]",
        "METHOD PATH-PREFIX",
    );
    f.fails(
        &[(K, list(&["POST b/"]))],
        "faspex.deny[0]",
        "starting with \"/\"",
    );
    f.fails(&[(K, list(&["G@T /a/"]))], "faspex.deny[0]", "HTTP method");
    f.fails(&[(K, list(&[""]))], "faspex.deny[0]", "METHOD PATH-PREFIX");
    f.fails(
        &[(K, list(&["* /aspera/faspex/package%5Frelay/"]))],
        "faspex.deny[0]",
        "decoded",
    );
    f.fails(&[(K, list(&["* /a;x/"]))], "faspex.deny[0]", "decoded");
}

// ---------------------------------------------------------------- [pages], [audit], [store]

#[test]
fn pages_timezone_and_helpdesk() {
    let f = Fixture::new();
    let c = f
        .load(&[
            ("pages.timezone", s("America/Los_Angeles")),
            ("pages.helpdesk", s("helpdesk@example.org, ext. 4357")),
        ])
        .unwrap();
    assert_eq!(c.pages.timezone.as_deref(), Some("America/Los_Angeles"));
    assert_eq!(c.pages.helpdesk, "helpdesk@example.org, ext. 4357");
    f.fails(
        &[("pages.helpdesk", s(" "))],
        "pages.helpdesk",
        "must not be empty",
    );
}

#[test]
fn audit_path_rules() {
    let f = Fixture::new();
    let log = f.path("audit.jsonl");
    let c = f
        .load(&[("audit.path", Value::String(log.to_string_lossy().into()))])
        .unwrap();
    assert_eq!(c.audit.sink, AuditSink::File(log));
    f.fails(
        &[("audit.path", f.p("no-such-dir/audit.jsonl"))],
        "audit.path",
        "does not exist",
    );
    f.fails(&[("audit.path", s(""))], "audit.path", r#""-""#);
    f.fails(
        &[(
            "audit.path",
            Value::String(f.dir.path().to_string_lossy().into()),
        )],
        "audit.path",
        "is a directory",
    );
}

#[test]
fn store_rules() {
    let f = Fixture::new();
    f.fails(
        &[("store.kind", s("sqlite"))],
        "store.kind",
        r#"use "embedded" or "redis""#,
    );
    f.fails(&[("store.path", s(""))], "store.path", "must not be empty");
    let c = f.load(&[("store.path", f.p("store"))]).unwrap();
    assert_eq!(c.store.path, f.path("store"));
}

#[test]
fn redis_store_rules() {
    let f = Fixture::new();
    fn redis<'a>(edits: &[(&'a str, Value)]) -> Vec<(&'a str, Value)> {
        let mut all = vec![("store.kind", s("redis"))];
        all.extend(edits.iter().cloned());
        all
    }
    let url = ("store.redis.urls", list(&["redis://127.0.0.1:6379"]));
    // The defaults, and a Redis store with one master.
    let c = f.load(&[]).unwrap();
    assert_eq!(c.store.redis.key_prefix, "faspex-gate");
    assert_eq!(
        (
            c.store.redis.wait_replicas,
            c.store.redis.wait_timeout,
            c.store.redis.session_cache,
            c.store.redis.outage_grace
        ),
        (
            0,
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(30)
        )
    );
    let c = f.load(&redis(std::slice::from_ref(&url))).unwrap();
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.redis.urls[0].port(), Some(6379));
    f.fails(&redis(&[]), "store.redis", "needs urls");
    // One master; urls or sentinels.
    f.fails(
        &redis(&[(
            "store.redis.urls",
            list(&["redis://a:6379", "redis://b:6379"]),
        )]),
        "store.redis",
        "one master, not 2",
    );
    f.fails(
        &redis(&[
            url.clone(),
            ("store.redis.sentinels", list(&["s1:26379"])),
            ("store.redis.master_name", s("m")),
        ]),
        "store.redis",
        "not both",
    );
    for (bad, needle) in [
        ("http://a:6379", "redis or rediss"),
        ("a:6379", "redis or rediss"),
        ("redis://", "no host"),
        ("redis://:pw@a:6379", "password_file"),
        ("redis://user@a:6379", "password_file"),
        ("redis://a:6379/x", "database number"),
        ("redis://a:6379/?x=1", "database number"),
    ] {
        f.fails(
            &redis(&[("store.redis.urls", list(&[bad]))]),
            "store.redis.urls[0]",
            needle,
        );
    }
    let c = f
        .load(&redis(&[(
            "store.redis.urls",
            list(&["rediss://r.example.org/2"]),
        )]))
        .unwrap();
    assert_eq!(c.store.redis.urls[0].scheme(), "rediss");
    // Sentinels are host:port, with a master name.
    let c = f
        .load(&redis(&[
            (
                "store.redis.sentinels",
                list(&[
                    "s1.example.org:26379",
                    "[2001:db8::1]:26379",
                    "192.0.2.1:26379",
                ]),
            ),
            ("store.redis.master_name", s("faspex")),
        ]))
        .unwrap();
    assert_eq!(c.store.redis.sentinels.len(), 3);
    assert_eq!(c.store.redis.master_name.as_deref(), Some("faspex"));
    for bad in ["s1", "s1:0", "s1:x", ":26379", "s 1:26379", "[::1:26379"] {
        f.fails(
            &redis(&[
                ("store.redis.sentinels", list(&["s0:26379", bad])),
                ("store.redis.master_name", s("m")),
            ]),
            "store.redis.sentinels[1]",
            "host:port",
        );
    }
    f.fails(
        &redis(&[("store.redis.sentinels", list(&["s1:26379"]))]),
        "store.redis.master_name",
        "must name the master",
    );
    f.fails(
        &redis(&[url.clone(), ("store.redis.master_name", s("m"))]),
        "store.redis.master_name",
        "only with sentinels",
    );
    // Sentinels over TLS: every entry rediss://host:port, with or without a ca_file.
    let c = f
        .load(&redis(&[
            (
                "store.redis.sentinels",
                list(&[
                    "rediss://s1.example.org:26379",
                    "rediss://[2001:db8::1]:26379",
                ]),
            ),
            ("store.redis.master_name", s("faspex")),
        ]))
        .unwrap();
    assert!(c.store.redis.sentinel_tls());
    assert_eq!(
        c.store.redis.sentinel_addrs(),
        ["s1.example.org:26379", "[2001:db8::1]:26379"]
    );
    let c = f
        .load(&redis(&[
            ("store.redis.sentinels", list(&["rediss://s1:26379"])),
            ("store.redis.master_name", s("m")),
            ("store.redis.ca_file", f.p("ca.pem")),
        ]))
        .unwrap();
    assert_eq!(c.store.redis.ca_file, Some(f.path("ca.pem")));
    assert_eq!(c.store.redis.sentinels, ["rediss://s1:26379"]);
    let plain = f
        .load(&redis(&[
            ("store.redis.sentinels", list(&["s1:26379"])),
            ("store.redis.master_name", s("m")),
        ]))
        .unwrap();
    assert!(!plain.store.redis.sentinel_tls());
    // One scheme for all; no other scheme; the address checked as for host:port.
    f.fails(
        &redis(&[
            (
                "store.redis.sentinels",
                list(&["rediss://s1:26379", "s2:26379"]),
            ),
            ("store.redis.master_name", s("m")),
        ]),
        "store.redis.sentinels",
        "mixes rediss:// (TLS) and plain",
    );
    for bad in [
        "redis://s1:26379",
        "sentinel://s1:26379",
        "rediss://rediss://s1:26379",
    ] {
        f.fails(
            &redis(&[
                ("store.redis.sentinels", list(&[bad])),
                ("store.redis.master_name", s("m")),
            ]),
            "store.redis.sentinels[0]",
            "rediss://host:port",
        );
    }
    for bad in [
        "rediss://s1",
        "rediss://s1:0",
        "rediss://:26379",
        "rediss://s1:26379/",
    ] {
        f.fails(
            &redis(&[
                ("store.redis.sentinels", list(&[bad])),
                ("store.redis.master_name", s("m")),
            ]),
            "store.redis.sentinels[0]",
            "host:port",
        );
    }
    // ca_file is a trust anchor for TLS: next to plain sentinels check-config refuses it, as run
    // does; a missing one is named.
    f.fails(
        &redis(&[
            ("store.redis.sentinels", list(&["s1:26379"])),
            ("store.redis.master_name", s("m")),
            ("store.redis.ca_file", f.p("ca.pem")),
        ]),
        "store.redis.ca_file",
        "write them rediss://host:port",
    );
    f.fails(
        &redis(&[
            ("store.redis.sentinels", list(&["rediss://s1:26379"])),
            ("store.redis.master_name", s("m")),
            ("store.redis.ca_file", f.p("missing-ca.pem")),
        ]),
        "store.redis.ca_file",
        "does not exist",
    );
    // The prefix, the user, and the bounds.
    for (bad, needle) in [
        ("", "must not be empty"),
        ("a b", "spaces"),
        ("a{b}", "without { or }"),
    ] {
        f.fails(
            &redis(&[url.clone(), ("store.redis.key_prefix", s(bad))]),
            "store.redis.key_prefix",
            needle,
        );
    }
    f.fails(
        &redis(&[url.clone(), ("store.redis.username", s("gate keeper"))]),
        "store.redis.username",
        "spaces",
    );
    f.fails(
        &redis(&[url.clone(), ("store.redis.wait_replicas", i(17))]),
        "store.redis.wait_replicas",
        "at most 16",
    );
    for (key, bad, needle) in [
        ("store.redis.wait_timeout", "0s", "longer than zero"),
        ("store.redis.wait_timeout", "3s", "at most 2s"),
        ("store.redis.wait_timeout", "soon", "not a duration"),
        ("store.redis.session_cache", "0s", "longer than zero"),
        ("store.redis.session_cache", "11s", "at most 10s"),
        ("store.redis.outage_grace", "2h", "at most 1h"),
    ] {
        f.fails(&redis(&[url.clone(), (key, s(bad))]), key, needle);
    }
    let c = f
        .load(&redis(&[
            url.clone(),
            ("store.redis.outage_grace", s("0s")),
        ]))
        .unwrap();
    assert_eq!(c.store.redis.outage_grace, Duration::ZERO);
    // The password file follows the secret files' rules, and is read only for a Redis store.
    f.fails(
        &redis(&[url.clone(), ("store.redis.password_file", f.p("missing"))]),
        "store.redis.password_file",
        "does not exist",
    );
    let open = f.file("redis.open", b"pw\n");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    f.fails(
        &redis(&[
            url.clone(),
            ("store.redis.password_file", f.p("redis.open")),
        ]),
        "store.redis.password_file",
        "",
    );
    f.secret("redis.password", b"redis pw\n");
    let c = f
        .load(&redis(&[
            url.clone(),
            ("store.redis.password_file", f.p("redis.password")),
            ("store.redis.username", s("gate")),
        ]))
        .unwrap();
    assert_eq!(
        c.store.redis.password.as_ref().map(|p| p.expose().to_vec()),
        Some(b"redis pw".to_vec())
    );
    let shown = c.redacted();
    assert!(shown.contains("redis.password"), "{shown}");
    assert!(!shown.contains("redis pw"), "{shown}");
    assert!(!format!("{c:?}").contains("redis pw"));
    let c = f
        .load(&[("store.redis.password_file", f.p("missing"))])
        .unwrap();
    assert!(
        c.store.redis.password.is_none(),
        "an embedded store reads no Redis file"
    );
    f.fails(
        &redis(&[url.clone(), ("store.redis.ca_file", f.p("missing.pem"))]),
        "store.redis.ca_file",
        "does not exist",
    );
    // From the environment too, naming the variable.
    let c = f
        .load_env(&[
            ("FASPEX_GATE__STORE__KIND", "redis"),
            ("FASPEX_GATE__STORE__REDIS__URLS", "redis://127.0.0.1:6380"),
            ("FASPEX_GATE__STORE__REDIS__WAIT_REPLICAS", "1"),
        ])
        .unwrap();
    assert_eq!(c.store.redis.urls[0].port(), Some(6380));
    assert_eq!(c.store.redis.wait_replicas, 1);
}

// ---------------------------------------------------------------- redaction

#[test]
fn redacted_shows_no_secret_and_reads_back() {
    let f = Fixture::new();
    let c = f
        .load(&[
            ("server.trusted_proxies", list(&["10.0.0.0/8", "192.0.2.1"])),
            ("policy.absolute_timeout", s("0s")),
            ("policy.lockout_key", s("account+ip")),
            ("faspex.deny", list(&["* /a/", "POST /b/"])),
            ("pages.timezone", s("Europe/Paris")),
            ("upstream.response_timeout", s("90s")),
        ])
        .unwrap();
    let text = c.redacted();
    for secret in [
        "0123456789abcdefXYZ",
        "s3cret",
        &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    ] {
        assert!(!text.contains(secret), "secret in:\n{text}");
    }
    assert!(text.contains(&f.path("session.key").to_string_lossy().into_owned()));
    assert!(text.contains("absolute_timeout = \"0s\""), "{text}");
    assert!(text.contains("\"POST /b/\""), "{text}");
    assert!(text.contains("[auth.ldap]"), "{text}");

    // Reading the output back gives the same configuration.
    let again = f.load_text(&text, &[]).unwrap();
    assert_eq!(again.redacted(), text);
    assert_eq!(again.policy.absolute_timeout, None);
    assert_eq!(again.upstream.response_timeout, Duration::from_secs(90));
}

#[test]
fn redacted_url_hides_passwords() {
    let u = url::Url::parse("ldap://cn=admin:hunter2@dc1.example.org/").unwrap();
    let shown = super::redact::url(&u);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    let u = url::Url::parse("https://faspex.example.org/").unwrap();
    assert_eq!(super::redact::url(&u), "https://faspex.example.org/");
}

// ---------------------------------------------------------------- the example file

/// Every dotted key of a TOML table (tables themselves excluded).
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => leaf_keys(t, &key, out),
            _ => out.push(key),
        }
    }
}

/// Every key of the raw layer, with its default as TOML text.
fn raw_keys_and_defaults() -> Vec<(String, Value)> {
    let defaults = Value::try_from(RawConfig::default()).unwrap();
    let mut keys = Vec::new();
    leaf_keys(defaults.as_table().unwrap(), "", &mut keys);
    keys.into_iter()
        .map(|key| {
            let mut v = &defaults;
            for part in key.split('.') {
                v = &v.as_table().unwrap()[part];
            }
            (key.clone(), v.clone())
        })
        .collect()
}

/// The example's `key = ...` lines, by dotted key, each with the `# Default: ...` comment line
/// that precedes it (if any) since the previous key.
fn example_keys() -> std::collections::HashMap<String, Option<String>> {
    let mut out = std::collections::HashMap::new();
    let mut section = String::new();
    let mut default = None;
    for line in EXAMPLE.lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_owned();
            default = None;
        } else if let Some(d) = line.strip_prefix("# Default: ") {
            default = Some(d.to_owned());
        } else if let Some((name, _)) = line.split_once(" = ") {
            if !line.starts_with(['#', ' ']) {
                out.insert(format!("{section}.{name}"), default.take());
            }
        }
    }
    out
}

#[test]
fn example_documents_every_key() {
    // The raw layer rejects unknown keys, so the example holds no key that does not exist.
    let _: RawConfig = toml::from_str(EXAMPLE).unwrap();

    // Each key is explicitly present in the example's TOML.
    let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let mut present = Vec::new();
    leaf_keys(&example, "", &mut present);
    let keys = raw_keys_and_defaults();
    assert!(keys.len() > 60, "too few keys found: {keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !present.contains(k))
        .collect();
    assert!(missing.is_empty(), "the example lacks {missing:?}");
}

#[test]
fn example_comments_state_the_defaults() {
    let lines = example_keys();
    let mut wrong = Vec::new();
    for (key, default) in raw_keys_and_defaults() {
        let shown = match &default {
            // A long list is shown over several lines.
            Value::Array(a) if a.len() > 1 => "[".to_owned(),
            other => other.to_string(),
        };
        match lines.get(&key) {
            Some(Some(documented)) if documented.starts_with(&shown) => {}
            Some(Some(documented)) => {
                wrong.push(format!("{key}: documented {documented}, is {shown}"))
            }
            Some(None) => wrong.push(format!("{key}: no `# Default:` line")),
            None => wrong.push(format!("{key}: no `{key} = ` line in its section")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn example_is_valid_once_its_files_exist() {
    let f = Fixture::new();
    let mut raw: RawConfig = toml::from_str(EXAMPLE).unwrap();
    let p = |name: &str| f.path(name).to_string_lossy().into_owned();
    raw.tls.cert_file = p("cert.pem");
    raw.tls.key_file = p("key.pem");
    raw.admin.token_file = p("admin.token");
    raw.session.secret_file = p("session.key");
    raw.auth.ldap.bind_password_file = p("bind.password");
    let env = EnvLayer::default();
    let ctx = Ctx {
        file: Path::new("faspex-gate.example.toml"),
        env: &env,
    };
    let c = ctx.config(raw).unwrap();
    assert_eq!(c.auth.ldap.urls.len(), 2);
    assert!(c.auth.ldap.bind_password.is_some());
}

// ---------------------------------------------------------------- reload

#[test]
fn a_reload_keeps_the_restart_only_keys_and_names_each_once() {
    let f = Fixture::new();
    let running = f.load(&[]).unwrap();
    assert_eq!(RestartOnly::of(&running), RestartOnly::of(&running.clone()));
    let new = f
        .load(&[
            ("upstream.response_timeout", s("99s")),
            ("session.cookie_name", s("other")),
            ("server.trusted_proxies", list(&["10.0.0.0/8"])),
            ("policy.max_sessions", i(7)),
        ])
        .unwrap();
    let Reload {
        effective,
        needs_restart,
    } = Reload::new(&running, new);
    assert_eq!(
        needs_restart,
        ["upstream.response_timeout", "session.cookie_name"]
    );
    assert_eq!(RestartOnly::of(&effective), RestartOnly::of(&running));
    assert_eq!(
        effective.upstream.response_timeout,
        running.upstream.response_timeout
    );
    assert_eq!(effective.session.cookie_name, running.session.cookie_name);
    // The reloadable keys are the new file's.
    assert_eq!(effective.server.trusted_proxies.len(), 1);
    assert_eq!(effective.policy.max_sessions, 7);

    // A new session key at the same path is a change of `session.secret_file`, named once.
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    f.secret("session.key", key.as_bytes());
    let rotated = Reload::new(&running, f.load(&[]).unwrap());
    assert_eq!(rotated.needs_restart, ["session.secret_file"]);
    assert_eq!(rotated.effective.session.secret, running.session.secret);
    f.secret("other.key", key.as_bytes());
    let moved = Reload::new(
        &running,
        f.load(&[("session.secret_file", f.p("other.key"))])
            .unwrap(),
    );
    assert_eq!(moved.needs_restart, ["session.secret_file"]);
    assert_eq!(moved.effective.session.secret_file, f.path("session.key"));
}

#[test]
fn a_reload_that_turns_the_admin_listener_off_keeps_it_and_its_token() {
    let f = Fixture::new();
    let running = f.load(&[]).unwrap();
    assert!(running.admin.token.is_some());
    let r = Reload::new(&running, f.load(&[("admin.listen", s(""))]).unwrap());
    assert_eq!(r.needs_restart, ["admin.listen"]);
    assert_eq!(r.effective.admin.listen, running.admin.listen);
    assert_eq!(r.effective.admin.token, running.admin.token);
    assert_eq!(r.effective.admin.token_file, running.admin.token_file);
    // A new token with the listener on is taken.
    f.secret("admin.token", b"a-brand-new-admin-token\n");
    let r = Reload::new(&running, f.load(&[]).unwrap());
    assert!(r.needs_restart.is_empty());
    assert_eq!(
        r.effective.admin.token.unwrap().expose(),
        b"a-brand-new-admin-token"
    );
}

/// Every key of the sections that hold restart-only keys, named here without `..`: a new field
/// does not compile until it is put on one side (in `reload.rs`'s list, or here as reloadable).
#[test]
fn every_key_of_the_restart_only_sections_is_classified() {
    let f = Fixture::new();
    let c = f.load(&[]).unwrap();
    let ServerConfig {
        listen: _,
        http_listen: _,
        tls_handshake_timeout: _,
        header_read_timeout: _,
        max_header_bytes: _,
        max_connections: _,
        max_connections_per_ip: _,
        ipv6_prefix_len: _,
        hsts: _,
        strip_response_headers: _,
        workers: _,
        shutdown_timeout: _,
        body_idle_timeout: _,
        trusted_proxies: _, // reloadable
    } = c.server;
    let UpstreamConfig {
        url: _,
        ca_file: _,
        connect_timeout: _,
        response_timeout: _,
        preserve_host: _,
        max_connections: _,
    } = c.upstream;
    let AdminConfig {
        listen: _,
        token_file: _, // reloadable
        token: _,      // reloadable
    } = c.admin;
    let SessionConfig {
        cookie_name: _,
        secret_file: _,
        secret: _,
    } = c.session;
    let StoreConfig {
        kind: _,
        path: _,
        redis,
    } = c.store;
    let RedisConfig {
        urls: _,
        sentinels: _,
        master_name: _,
        username: _,
        password_file: _,
        password: _,
        ca_file: _,
        key_prefix: _,
        wait_replicas: _,
        wait_timeout: _,
        session_cache: _,
        outage_grace: _,
    } = redis;
    let LogConfig { format: _ } = c.log;
}

#[test]
fn log_format_is_text_or_json() {
    let f = Fixture::new();
    assert_eq!(f.load(&[]).unwrap().log.format, LogFormat::Text);
    let c = f.load(&[("log.format", s("json"))]).unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.redacted().contains("format = \"json\""));
    for bad in ["JSON", "", "logfmt"] {
        f.fails(
            &[("log.format", s(bad))],
            "log.format",
            "\"text\" or \"json\"",
        );
    }
    f.fails(&[("log.format", i(1))], "log.format", "");
}
