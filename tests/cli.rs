//! The command line as an operator meets it: `check-config` and `run` with good and bad
//! configurations (exit 2 naming the key), and `hash-password`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::util::*;

fn check_config(files: &TestFiles, cfg: &ConfigBuilder, env: &[(&str, &str)]) -> Output {
    let path = files.path("faspex-gate.toml");
    cfg.write(&path);
    let mut cmd = Command::new(bin());
    cmd.args(["check-config", "--config"]).arg(&path);
    cmd.env_remove("FASPEX_GATE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A named change to a working configuration, and the key its error must name.
type Case = (
    &'static str,
    Box<dyn Fn(&mut ConfigBuilder, &TestFiles)>,
    &'static str,
);

/// Each bad configuration exits 2 with a message naming the file and the key.
#[test]
fn each_configuration_error_exits_2_naming_the_key() {
    let cases: Vec<Case> = vec![
        (
            "unknown key",
            Box::new(|c, _| {
                c.set("server", "bogus", "1");
            }),
            "server.bogus",
        ),
        (
            "unknown section",
            Box::new(|c, _| {
                c.set("nonsense", "x", "1");
            }),
            "nonsense",
        ),
        (
            "bad duration",
            Box::new(|c, _| {
                c.set("policy", "idle_timeout", "\"soon\"");
            }),
            "policy.idle_timeout",
        ),
        (
            "zero duration",
            Box::new(|c, _| {
                c.set("server", "header_read_timeout", "\"0s\"");
            }),
            "server.header_read_timeout",
        ),
        (
            "wrong type",
            Box::new(|c, _| {
                c.set("policy", "max_sessions", "\"ten\"");
            }),
            "policy.max_sessions",
        ),
        (
            "zero seats",
            Box::new(|c, _| {
                c.set("policy", "max_sessions", "0");
            }),
            "policy.max_sessions",
        ),
        (
            "bad address",
            Box::new(|c, _| {
                c.set("server", "listen", "\"localhost:eighty\"");
            }),
            "server.listen",
        ),
        (
            "bad cidr",
            Box::new(|c, _| {
                c.set("server", "trusted_proxies", "[\"10.0.0.0/33\"]");
            }),
            "server.trusted_proxies",
        ),
        (
            "bad upstream scheme",
            Box::new(|c, _| {
                c.set("upstream", "url", "\"ftp://faspex\"");
            }),
            "upstream.url",
        ),
        (
            "no upstream",
            Box::new(|c, _| {
                c.unset("upstream", "url");
            }),
            "upstream.url",
        ),
        (
            "missing cert",
            Box::new(|c, _| {
                c.set("tls", "cert_file", "\"/nonexistent/cert.pem\"");
            }),
            "tls.cert_file",
        ),
        (
            "bad enum",
            Box::new(|c, _| {
                c.set("policy", "one_client_per_account", "\"maybe\"");
            }),
            "policy.one_client_per_account",
        ),
        (
            "bad deny rule",
            Box::new(|c, _| {
                c.set("faspex", "deny", "[\"package_relay\"]");
            }),
            "faspex.deny",
        ),
        (
            "no secret",
            Box::new(|c, _| {
                c.unset("session", "secret_file");
            }),
            "session.secret_file",
        ),
        (
            "short secret",
            Box::new(|c, f| {
                write_private(&f.path("short"), b"too short");
                c.set(
                    "session",
                    "secret_file",
                    &format!("{:?}", f.path("short").display().to_string()),
                );
            }),
            "session.secret_file",
        ),
        (
            "world-readable secret",
            Box::new(|c, f| {
                use std::os::unix::fs::PermissionsExt;
                let p = f.path("open-secret");
                std::fs::write(&p, b"0123456789abcdef0123456789abcdef-open").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
                c.set(
                    "session",
                    "secret_file",
                    &format!("{:?}", p.display().to_string()),
                );
            }),
            "session.secret_file",
        ),
        (
            "admin on without token",
            Box::new(|c, _| {
                c.set("admin", "listen", "\"127.0.0.1:9180\"");
            }),
            "admin.token_file",
        ),
        (
            "ldap without urls",
            Box::new(|c, _| {
                c.set("auth", "backend", "\"ldap\"");
            }),
            "auth.ldap.urls",
        ),
        (
            "no listener",
            Box::new(|c, _| {
                c.set("server", "listen", "\"\"");
            }),
            "server.listen",
        ),
        (
            "a bad hash in the users file",
            Box::new(|_, f| {
                std::fs::write(f.path("users.toml"), "[users.ann]\nhash = \"plain\"\n").unwrap();
            }),
            "auth.file.path",
        ),
        (
            "a users-file name that logins can never match",
            Box::new(|_, f| {
                let hash = faspex_gate::auth::password::hash("pw").unwrap();
                std::fs::write(
                    f.path("users.toml"),
                    format!("[users.Ann]\nhash = \"{hash}\"\n"),
                )
                .unwrap();
            }),
            "users.Ann",
        ),
        (
            "an LDAP backend without servers",
            Box::new(|c, _| {
                c.set("auth", "backend", "\"ldap\"");
                c.set("auth.ldap", "user_dn_template", "\"uid={username},dc=x\"");
            }),
            "auth.ldap.urls",
        ),
        (
            "an LDAP CA file that holds no certificate",
            Box::new(|c, f| {
                c.set("auth", "backend", "\"ldap\"");
                c.set("auth.ldap", "urls", "[\"ldaps://127.0.0.1:1\"]");
                c.set("auth.ldap", "user_dn_template", "\"uid={username},dc=x\"");
                c.set(
                    "auth.ldap",
                    "ca_file",
                    &format!("{:?}", f.path("users.toml").display().to_string()),
                );
            }),
            "auth.ldap.ca_file",
        ),
        (
            "two Redis masters",
            Box::new(|c, _| {
                c.set("store", "kind", "\"redis\"");
                c.set(
                    "store.redis",
                    "urls",
                    "[\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"]",
                );
            }),
            "store.redis",
        ),
        (
            "a Redis URL of another scheme",
            Box::new(|c, _| {
                c.set("store", "kind", "\"redis\"");
                c.set("store.redis", "urls", "[\"http://127.0.0.1:1\"]");
            }),
            "store.redis.urls[0]",
        ),
        (
            "a Redis password file that does not exist",
            Box::new(|c, f| {
                c.set("store", "kind", "\"redis\"");
                c.set("store.redis", "urls", "[\"redis://127.0.0.1:1\"]");
                c.set(
                    "store.redis",
                    "password_file",
                    &format!("{:?}", f.path("redis.password").display().to_string()),
                );
            }),
            "store.redis.password_file",
        ),
    ];
    for (name, tweak, key) in cases {
        let files = TestFiles::new();
        let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
        tweak(&mut cfg, &files);
        let out = check_config(&files, &cfg, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(key),
            "{name}: the message does not name {key}: {err}"
        );
        assert!(
            err.contains("faspex-gate.toml"),
            "{name}: the message does not name the file: {err}"
        );
    }
}

#[test]
fn environment_overrides_are_applied_and_named_when_wrong() {
    let files = TestFiles::new();
    let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    let out = check_config(
        &files,
        &cfg,
        &[("FASPEX_GATE__POLICY__IDLE_TIMEOUT", "whenever")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("policy.idle_timeout") && err.contains("FASPEX_GATE__POLICY__IDLE_TIMEOUT"),
        "{err}"
    );

    let out = check_config(
        &files,
        &cfg,
        &[
            ("FASPEX_GATE__POLICY__IDLE_TIMEOUT", "2s"),
            (
                "FASPEX_GATE__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8,192.0.2.1",
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("2s"), "{printed}");
    assert!(
        printed.contains("10.0.0.0/8") && printed.contains("192.0.2.1"),
        "{printed}"
    );
}

#[test]
fn a_good_configuration_prints_without_secrets() {
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    cfg.set("admin", "listen", "\"127.0.0.1:9180\"");
    cfg.set(
        "admin",
        "token_file",
        &format!("{:?}", files.path("admin-token").display().to_string()),
    );
    let out = check_config(&files, &cfg, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("max_sessions"), "{printed}");
    assert!(
        !printed.contains("test-secret"),
        "the session secret was printed"
    );
    assert!(
        !printed.contains("test-admin-token"),
        "the admin token was printed"
    );
}

#[test]
fn a_missing_file_exits_2_naming_it() {
    let out = Command::new(bin())
        .args(["check-config", "--config", "/nonexistent/faspex-gate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/faspex-gate.toml"));
}

#[test]
fn run_refuses_a_bad_configuration_with_exit_2() {
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    cfg.set("server", "max_connections", "-1");
    let out = run_to_exit(&files, &cfg);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("server.max_connections"),
        "{}",
        stderr(&out)
    );
}

/// The users file and the certificate are read when the app is built: a bad one stops `run`
/// with exit 2 naming its key, as `check-config` does.
#[test]
fn run_refuses_a_bad_users_file_or_certificate_with_exit_2() {
    type Spoil = fn(&TestFiles);
    let cases: [(&str, Spoil); 2] = [
        ("auth.file.path", |f| {
            std::fs::write(f.path("users.toml"), "[users.ann]\nhash = \"plain\"\n").unwrap();
        }),
        ("tls.cert_file", |f| {
            std::fs::write(&f.cert, "not a certificate").unwrap();
        }),
    ];
    for (key, spoil) in cases {
        let files = TestFiles::new();
        let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
        spoil(&files);
        for out in [run_to_exit(&files, &cfg), check_config(&files, &cfg, &[])] {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{key}: {err}");
            assert!(
                err.contains(key) && err.contains("faspex-gate.toml"),
                "{err}"
            );
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(bin()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hash_password_prints_an_argon2id_hash() {
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.trim().starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("s3cret"));
}

/// `check-config` checks a Redis store's settings without contacting Redis (`run` on a Redis
/// that is down: `ha::a_gateway_started_without_redis_serves_public_paths_and_gets_ready`).
#[test]
fn check_config_never_contacts_redis() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let files = TestFiles::new();
    let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    cfg.set("store", "kind", "\"redis\"");
    cfg.set(
        "store.redis",
        "urls",
        &format!("[\"redis://127.0.0.1:{port}\"]"),
    );
    let out = check_config(&files, &cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "check-config connected to Redis"
    );
}
