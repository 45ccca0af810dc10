//! [`Config::redacted`]: the effective configuration written back as TOML, in the file's own
//! form (so it can be read back), without secrets.
//!
//! Secret files appear by path only, never by content; a password in a URL's userinfo (which
//! validation already refuses) would appear as `redacted`.

use std::path::Path;
use std::time::Duration;

use super::model::{AuditSink, AuthBackend, Config, LockoutKey, LogFormat, OneClient, StoreKind};
use super::raw::{
    RawAdmin, RawAudit, RawAuth, RawConfig, RawFaspex, RawFileAuth, RawHelpdesk, RawLdap, RawLog,
    RawPages, RawPolicy, RawRedis, RawServer, RawSession, RawStore, RawTls, RawUpstream,
};

impl Config {
    /// The effective configuration as TOML, for `check-config`. Secret files are shown by path
    /// only, and a password in a URL is replaced by `redacted`.
    pub fn redacted(&self) -> String {
        render(self)
    }
}

/// The TOML text for [`Config::redacted`].
pub(crate) fn render(config: &Config) -> String {
    let raw = to_raw(config);
    let mut out = format!(
        "# faspex-gate: effective configuration from {}\n\
         # (file and environment merged; secrets are shown by file only)\n\n",
        config.file.display()
    );
    match toml::to_string(&raw) {
        Ok(body) => out.push_str(&body),
        // Every field is a string, number, boolean or list of strings, which TOML can always
        // hold; say so rather than print nothing if that ever changes.
        Err(e) => out.push_str(&format!("# cannot render the configuration: {e}\n")),
    }
    out
}

/// The validated configuration back in the raw layer's form.
pub(crate) fn to_raw(c: &Config) -> RawConfig {
    RawConfig {
        server: RawServer {
            listen: addr(c.server.listen),
            http_listen: addr(c.server.http_listen),
            trusted_proxies: c
                .server
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect(),
            tls_handshake_timeout: duration(c.server.tls_handshake_timeout),
            header_read_timeout: duration(c.server.header_read_timeout),
            max_header_bytes: c.server.max_header_bytes as u64,
            max_connections: c.server.max_connections as u64,
            max_connections_per_ip: c.server.max_connections_per_ip as u64,
            ipv6_prefix_len: c.server.ipv6_prefix_len.into(),
            hsts: c
                .server
                .hsts
                .as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
            strip_response_headers: c
                .server
                .strip_response_headers
                .iter()
                .map(ToString::to_string)
                .collect(),
            workers: c.server.workers as u64,
            shutdown_timeout: duration(c.server.shutdown_timeout),
            body_idle_timeout: duration(c.server.body_idle_timeout),
        },
        tls: RawTls {
            cert_file: opt_path(c.tls.cert_file.as_deref()),
            key_file: opt_path(c.tls.key_file.as_deref()),
        },
        upstream: RawUpstream {
            url: url(&c.upstream.url),
            ca_file: opt_path(c.upstream.ca_file.as_deref()),
            connect_timeout: duration(c.upstream.connect_timeout),
            response_timeout: duration(c.upstream.response_timeout),
            preserve_host: c.upstream.preserve_host,
            max_connections: c.upstream.max_connections as u64,
        },
        admin: RawAdmin {
            listen: addr(c.admin.listen),
            token_file: opt_path(c.admin.token_file.as_deref()),
        },
        policy: RawPolicy {
            max_sessions: c.policy.max_sessions.into(),
            one_client_per_account: match c.policy.one_client_per_account {
                OneClient::Reject => "reject",
                OneClient::Replace => "replace",
            }
            .into(),
            idle_timeout: duration(c.policy.idle_timeout),
            api_idle_timeout: duration(c.policy.api_idle_timeout),
            absolute_timeout: duration(c.policy.absolute_timeout.unwrap_or(Duration::ZERO)),
            activity_exempt_paths: c.policy.activity_exempt_paths.clone(),
            lockout_threshold: c.policy.lockout_threshold.into(),
            lockout_window: duration(c.policy.lockout_window),
            lockout_duration: duration(c.policy.lockout_duration),
            lockout_key: match c.policy.lockout_key {
                LockoutKey::Account => "account",
                LockoutKey::AccountIp => "account+ip",
            }
            .into(),
            username_domains: c.policy.username_domains.clone(),
            login_attempts_per_ip_per_minute: c.policy.login_attempts_per_ip_per_minute.into(),
            public_requests_per_ip_per_minute: c.policy.public_requests_per_ip_per_minute.into(),
            public_inflight_per_ip: c.policy.public_inflight_per_ip.into(),
            max_tracked_usernames: c.policy.max_tracked_usernames as u64,
        },
        session: RawSession {
            cookie_name: c.session.cookie_name.clone(),
            secret_file: path(&c.session.secret_file),
        },
        auth: RawAuth {
            backend: match c.auth.backend {
                AuthBackend::Ldap => "ldap",
                AuthBackend::File => "file",
            }
            .into(),
            cache_ttl: duration(c.auth.cache_ttl),
            max_checks_per_second: c.auth.max_checks_per_second.into(),
            max_concurrent_hashes: c.auth.max_concurrent_hashes as u64,
            local_accounts: c.auth.local_accounts.as_str().into(),
            ldap: RawLdap {
                urls: c.auth.ldap.urls.iter().map(url).collect(),
                starttls: c.auth.ldap.starttls,
                ca_file: opt_path(c.auth.ldap.ca_file.as_deref()),
                user_dn_template: c.auth.ldap.user_dn_template.clone().unwrap_or_default(),
                bind_dn: c.auth.ldap.bind_dn.clone().unwrap_or_default(),
                bind_password_file: opt_path(c.auth.ldap.bind_password_file.as_deref()),
                base_dn: c.auth.ldap.base_dn.clone().unwrap_or_default(),
                user_filter: c.auth.ldap.user_filter.clone(),
                require_group: c.auth.ldap.require_group.clone().unwrap_or_default(),
                nested_groups: c.auth.ldap.nested_groups,
                pool_size: c.auth.ldap.pool_size as u64,
                timeout: duration(c.auth.ldap.timeout),
            },
            file: RawFileAuth {
                path: opt_path(c.auth.file.path.as_deref()),
            },
        },
        faspex: RawFaspex {
            login_path: c.faspex.login_path.clone(),
            username_field: c.faspex.username_field.clone(),
            password_field: c.faspex.password_field.clone(),
            logout_path: c.faspex.logout_path.clone(),
            session_cookie: c.faspex.session_cookie.clone(),
            token_path: c.faspex.token_path.clone(),
            public_paths: c.faspex.public_paths.clone(),
            deny: c
                .faspex
                .deny
                .iter()
                .map(|rule| match &rule.method {
                    Some(method) => format!("{method} {}", rule.prefix),
                    None => format!("* {}", rule.prefix),
                })
                .collect(),
            max_inspected_body: c.faspex.max_inspected_body.to_string(),
            password_forms: c
                .faspex
                .password_forms
                .iter()
                .map(|f| format!("{} {}", f.method, f.path))
                .collect(),
            forward_cookies: c.faspex.forward_cookies.clone(),
        },
        pages: RawPages {
            helpdesk: c.pages.helpdesk.clone(),
            timezone: c.pages.timezone.clone().unwrap_or_default(),
        },
        audit: RawAudit {
            path: match &c.audit.sink {
                AuditSink::Stderr => "-".into(),
                AuditSink::File(p) => path(p),
            },
            gateway: c.audit.gateway.clone(),
        },
        store: RawStore {
            kind: match c.store.kind {
                StoreKind::Embedded => "embedded",
                StoreKind::Redis => "redis",
            }
            .into(),
            path: path(&c.store.path),
            redis: RawRedis {
                urls: c.store.redis.urls.iter().map(url).collect(),
                sentinels: c.store.redis.sentinels.clone(),
                master_name: c.store.redis.master_name.clone().unwrap_or_default(),
                username: c.store.redis.username.clone().unwrap_or_default(),
                password_file: opt_path(c.store.redis.password_file.as_deref()),
                ca_file: opt_path(c.store.redis.ca_file.as_deref()),
                key_prefix: c.store.redis.key_prefix.clone(),
                wait_replicas: u64::from(c.store.redis.wait_replicas),
                wait_timeout: duration(c.store.redis.wait_timeout),
                session_cache: duration(c.store.redis.session_cache),
                outage_grace: duration(c.store.redis.outage_grace),
            },
        },
        log: RawLog {
            format: match c.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        },
        helpdesk: RawHelpdesk {
            listen: addr(c.helpdesk.listen),
            group: c.helpdesk.group.clone().unwrap_or_default(),
            allowed_networks: c
                .helpdesk
                .allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
    }
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn addr(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn opt_path(p: Option<&Path>) -> String {
    p.map(path).unwrap_or_default()
}

/// A URL with any password in its userinfo replaced by `redacted`.
pub(crate) fn url(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        // Fails only for URLs that cannot have a password, which then have none to hide.
        let _ = u.set_password(Some("redacted"));
    }
    u.to_string()
}
