//! Loading and validation: the TOML file and the environment are merged by the `config` crate,
//! deserialized into the raw layer through `serde_path_to_error` (so that a type error or an
//! unknown key names its dotted key), then checked value by value into a [`Config`].
//!
//! Each check fails with a [`ConfigError`] naming the key and what to do about it. Checks that
//! only make sense for a feature in use (the TLS files when `server.listen` is on, the LDAP files
//! when `auth.backend = "ldap"`, …) run only then; syntax is always checked. Files are checked to
//! exist and be readable; only the secret files are read here (the users file and the
//! certificates are parsed when the app is built).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::EnvLayer;
use super::model::{
    split_sentinel, AdminConfig, AuditConfig, AuditSink, AuthBackend, AuthConfig, Config,
    ConfigError, DenyRule, FaspexConfig, FileAuthConfig, HelpdeskConfig, LdapConfig, LocalAccounts,
    LockoutKey, LogConfig, LogFormat, OneClient, PagesConfig, PasswordFormRule, PolicyConfig,
    RedisConfig, ServerConfig, SessionConfig, StoreConfig, StoreKind, TlsConfig, UpstreamConfig,
};
use super::raw::{
    RawAdmin, RawAudit, RawAuth, RawConfig, RawFaspex, RawHelpdesk, RawLdap, RawLog, RawPages,
    RawPolicy, RawRedis, RawServer, RawSession, RawStore, RawTls, RawUpstream,
};
use super::secret::{admin_token, read_secret_file, session_secret, Secret};

/// The smallest and largest `server.max_header_bytes`.
const MAX_HEADER_BYTES: (u64, u64) = (1024, 1024 * 1024);
/// The longest duration any key takes: 100 years of 365.25 days, as humantime counts "100y"
/// ([`Ctx::parse_duration`]).
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);
const DURATION_HINT: &str = r#"write a number with a unit, e.g. "500ms", "30s", "5m", "1h""#;

impl Config {
    /// Load `path` and apply the process environment's `FASPEX_GATE__…` overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = super::env::process_env().map_err(|reason| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason,
        })?;
        Self::load_with_env(path, &env)
    }

    /// Load `path` and apply the overrides of an explicit environment (name, value pairs);
    /// variables without the `FASPEX_GATE__` prefix are ignored.
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        load(path, env)
    }
}

impl Default for PolicyConfig {
    /// The contract's defaults: what an empty `[policy]` section means.
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        default_policy().expect("the built-in [policy] defaults are valid")
    }
}

/// Load `path`, apply `env`, and validate.
pub(crate) fn load(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let whole_file = |reason: String| ConfigError {
        file: path.to_path_buf(),
        key: String::new(),
        reason,
    };
    let env = EnvLayer::new(env).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: e.key,
        reason: e.reason,
    })?;
    let text = read_config_file(path).map_err(whole_file)?;

    let builder = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml));
    let merged = env
        .apply(builder)
        .and_then(|b| b.build())
        .map_err(|e| whole_file(format!("cannot read the configuration: {e}")))?;

    let ctx = Ctx {
        file: path,
        env: &env,
    };
    let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
        let key = match e.path().to_string() {
            root if root == "." => String::new(),
            key => key,
        };
        ctx.err(&key, plain_reason(e.into_inner()))
    })?;
    ctx.config(raw)
}

/// `[policy]` as an empty section means it: the contract's defaults.
pub(crate) fn default_policy() -> Result<PolicyConfig, ConfigError> {
    let env = EnvLayer::default();
    let ctx = Ctx {
        file: Path::new("<built-in defaults>"),
        env: &env,
    };
    ctx.policy(&super::raw::RawPolicy::default())
}

/// A deserialization error without the key and origin that the `config` crate appends (the key
/// is reported separately, in full, and the origin is the file or the variable we name).
fn plain_reason(e: config::ConfigError) -> String {
    match e {
        config::ConfigError::At { error, .. } => plain_reason(*error),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {unexpected}, expected {expected}"),
        other => other.to_string(),
    }
}

fn read_config_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "the configuration file does not exist; give its path with --config or \
             ${}",
            super::model::CONFIG_ENV
        ),
        std::io::ErrorKind::InvalidData => "the configuration file is not UTF-8 text".into(),
        _ => format!("cannot read the configuration file: {e}"),
    })
}

/// What every check needs to build an error: the file, and which keys the environment set.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub env: &'a EnvLayer,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Ctx<'_> {
    /// An error for `key`, saying which environment variable set it, if one did.
    fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, self.env, key, reason)
    }

    /// Turn the raw layer into the validated configuration.
    pub fn config(&self, raw: RawConfig) -> Result<Config> {
        let server = self.server(&raw.server)?;
        // (the helpdesk console serves the gateway's certificate too)
        let console_on = !raw.helpdesk.listen.is_empty() && !raw.helpdesk.group.is_empty();
        let tls = self.tls(&raw.tls, server.listen.is_some(), console_on)?;
        let upstream = self.upstream(&raw.upstream)?;
        let admin = self.admin(&raw.admin, &server)?;
        let policy = self.policy(&raw.policy)?;
        let session = self.session(&raw.session)?;
        let auth = self.auth(&raw.auth)?;
        let faspex = self.faspex(&raw.faspex)?;
        let pages = self.pages(&raw.pages)?;
        let audit = self.audit(&raw.audit)?;
        let store = self.store(&raw.store)?;
        let log = self.log(&raw.log)?;
        let helpdesk = self.helpdesk(&raw.helpdesk, &server, &admin, &auth)?;
        Ok(Config {
            file: self.file.to_path_buf(),
            server,
            tls,
            upstream,
            admin,
            policy,
            session,
            auth,
            faspex,
            pages,
            audit,
            store,
            log,
            helpdesk,
            env: self.env.names_only(),
        })
    }

    fn server(&self, raw: &RawServer) -> Result<ServerConfig> {
        let listen = self.listen_addr("server.listen", &raw.listen)?;
        let http_listen = self.listen_addr("server.http_listen", &raw.http_listen)?;
        if listen.is_none() && http_listen.is_none() {
            return Err(self.err(
                "server.listen",
                "server.listen and server.http_listen are both off (\"\"); turn on at least \
                    one, e.g. listen = \"0.0.0.0:8443\"",
            ));
        }
        if let (Some(a), Some(b)) = (listen, http_listen) {
            if clash(a, b) {
                return Err(self.err(
                    "server.http_listen",
                    format!("{b} is the same port as server.listen ({a}); use another port"),
                ));
            }
        }
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, s)| self.cidr(&format!("server.trusted_proxies[{i}]"), s))
            .collect::<Result<_>>()?;
        Ok(ServerConfig {
            listen,
            http_listen,
            trusted_proxies,
            tls_handshake_timeout: self
                .duration("server.tls_handshake_timeout", &raw.tls_handshake_timeout)?,
            header_read_timeout: self
                .duration("server.header_read_timeout", &raw.header_read_timeout)?,
            max_header_bytes: self.count(
                "server.max_header_bytes",
                raw.max_header_bytes,
                MAX_HEADER_BYTES.0,
                MAX_HEADER_BYTES.1,
            )?,
            max_connections: self.at_least_one("server.max_connections", raw.max_connections)?,
            max_connections_per_ip: self
                .at_least_one("server.max_connections_per_ip", raw.max_connections_per_ip)?,
            ipv6_prefix_len: self.count("server.ipv6_prefix_len", raw.ipv6_prefix_len, 1, 128)?,
            hsts: self.hsts(&raw.hsts)?,
            strip_response_headers: raw
                .strip_response_headers
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    self.strippable_header(&format!("server.strip_response_headers[{i}]"), n)
                })
                .collect::<Result<_>>()?,
            workers: self.count("server.workers", raw.workers, 0, 1024)?,
            shutdown_timeout: self.duration("server.shutdown_timeout", &raw.shutdown_timeout)?,
            body_idle_timeout: self.duration("server.body_idle_timeout", &raw.body_idle_timeout)?,
        })
    }

    fn tls(&self, raw: &RawTls, https_on: bool, console_on: bool) -> Result<TlsConfig> {
        if https_on || console_on {
            for (key, value) in [
                ("tls.cert_file", &raw.cert_file),
                ("tls.key_file", &raw.key_file),
            ] {
                if value.is_empty() && https_on {
                    return Err(self.err(
                        key,
                        "required while server.listen is on: the PEM file of the HTTPS \
                            listener (or set server.listen = \"\" and use http_listen behind a \
                            TLS-terminating balancer)",
                    ));
                }
                if value.is_empty() {
                    return Err(self.err(
                        key,
                        "required while the helpdesk console is on (helpdesk.listen and \
                            helpdesk.group): the PEM file its HTTPS listener serves",
                    ));
                }
                self.readable_file(key, Path::new(value))?;
            }
        }
        Ok(TlsConfig {
            cert_file: optional_path(&raw.cert_file),
            key_file: optional_path(&raw.key_file),
        })
    }

    fn upstream(&self, raw: &RawUpstream) -> Result<UpstreamConfig> {
        let url = self.upstream_url(&raw.url)?;
        let ca_file = optional_path(&raw.ca_file);
        if let Some(ca) = &ca_file {
            self.readable_file("upstream.ca_file", ca)?;
        }
        Ok(UpstreamConfig {
            url,
            ca_file,
            connect_timeout: self.duration("upstream.connect_timeout", &raw.connect_timeout)?,
            response_timeout: self.duration("upstream.response_timeout", &raw.response_timeout)?,
            preserve_host: raw.preserve_host,
            max_connections: self.at_least_one("upstream.max_connections", raw.max_connections)?,
        })
    }

    /// `server.hsts`: `""` (none), or a `Strict-Transport-Security` value with its `max-age`.
    fn hsts(&self, value: &str) -> Result<Option<http::HeaderValue>> {
        const KEY: &str = "server.hsts";
        if value.is_empty() {
            return Ok(None);
        }
        let has_max_age = value.split(';').any(|d| {
            d.trim().split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age")
                    && !v.trim().is_empty()
                    && v.trim().bytes().all(|b| b.is_ascii_digit())
            })
        });
        match http::HeaderValue::from_str(value) {
            Ok(v) if has_max_age => Ok(Some(v)),
            _ => Err(self.err(
                KEY,
                format!(
                    "\"{value}\" is not a Strict-Transport-Security value: write \
                     \"max-age=SECONDS\" (and \"; includeSubDomains\" if every subdomain is \
                     HTTPS), or \"\" for none"
                ),
            )),
        }
    }

    /// A `server.strip_response_headers` entry: a header name the gateway does not itself need
    /// from Faspex's answers.
    fn strippable_header(&self, key: &str, name: &str) -> Result<http::HeaderName> {
        const NEEDED: [&str; 9] = [
            "location",
            "set-cookie",
            "www-authenticate",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "upgrade",
            "retry-after",
        ];
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            return Err(self.err(key, format!("\"{name}\" is not a header name")));
        };
        if NEEDED.contains(&header.as_str()) {
            return Err(self.err(
                key,
                format!(
                    "{name} carries what the gateway or the browser needs from Faspex's \
                     answers; it cannot be stripped"
                ),
            ));
        }
        Ok(header)
    }

    fn upstream_url(&self, value: &str) -> Result<url::Url> {
        const KEY: &str = "upstream.url";
        const EXAMPLE: &str = "e.g. https://faspex.example.org";
        if value.is_empty() {
            return Err(self.err(KEY, format!("required: the Faspex server's URL, {EXAMPLE}")));
        }
        let url = url::Url::parse(value)
            .map_err(|e| self.err(KEY, format!("not a valid URL ({e}); {EXAMPLE}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(
                KEY,
                format!("the scheme must be http or https, not {}", url.scheme()),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                KEY,
                "must not contain a user name or password; the gateway forwards each user's \
                 own credentials",
            ));
        }
        if url.host_str().unwrap_or("").is_empty() {
            return Err(self.err(KEY, format!("has no host; {EXAMPLE}")));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(KEY, format!("must not have a query or fragment; {EXAMPLE}")));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(self.err(
                KEY,
                format!(
                    "must not have a path (found {}): request paths are forwarded \
                     unchanged; {EXAMPLE}",
                    url.path()
                ),
            ));
        }
        Ok(url)
    }

    fn admin(&self, raw: &RawAdmin, server: &ServerConfig) -> Result<AdminConfig> {
        let listen = self.listen_addr("admin.listen", &raw.listen)?;
        let token_file = optional_path(&raw.token_file);
        let mut token = None;
        if let Some(addr) = listen {
            for (name, other) in [
                ("server.listen", server.listen),
                ("server.http_listen", server.http_listen),
            ] {
                if let Some(other) = other.filter(|other| clash(addr, *other)) {
                    return Err(self.err(
                        "admin.listen",
                        format!("{addr} is the same port as {name} ({other}); use another port"),
                    ));
                }
            }
            let Some(path) = &token_file else {
                return Err(self.err(
                    "admin.token_file",
                    "required while admin.listen is on: a file holding the admin API's bearer \
                        token (at least 16 characters, chmod 600); or set admin.listen = \"\" to \
                        turn the admin listener off",
                ));
            };
            let contents = self.secret_file("admin.token_file", path)?;
            token = Some(admin_token(&contents).map_err(|r| self.err("admin.token_file", r))?);
        }
        Ok(AdminConfig {
            listen,
            token_file,
            token,
        })
    }

    fn policy(&self, raw: &RawPolicy) -> Result<PolicyConfig> {
        let one_client_per_account = match raw.one_client_per_account.as_str() {
            "reject" => OneClient::Reject,
            "replace" => OneClient::Replace,
            other => {
                return Err(self.err(
                    "policy.one_client_per_account",
                    format!(r#"unknown value "{other}"; use "reject" or "replace""#),
                ))
            }
        };
        let lockout_key = match raw.lockout_key.as_str() {
            "account" => LockoutKey::Account,
            "account+ip" => LockoutKey::AccountIp,
            other => {
                return Err(self.err(
                    "policy.lockout_key",
                    format!(r#"unknown value "{other}"; use "account" or "account+ip""#),
                ))
            }
        };
        let absolute_timeout =
            self.duration_or_never("policy.absolute_timeout", &raw.absolute_timeout)?;
        let username_domains = raw
            .username_domains
            .iter()
            .enumerate()
            .map(|(i, d)| self.username_domain(&format!("policy.username_domains[{i}]"), d))
            .collect::<Result<_>>()?;
        Ok(PolicyConfig {
            max_sessions: self.at_least_one("policy.max_sessions", raw.max_sessions)?,
            one_client_per_account,
            idle_timeout: self.duration("policy.idle_timeout", &raw.idle_timeout)?,
            api_idle_timeout: self.duration("policy.api_idle_timeout", &raw.api_idle_timeout)?,
            absolute_timeout,
            activity_exempt_paths: self
                .path_prefixes("policy.activity_exempt_paths", &raw.activity_exempt_paths)?,
            lockout_threshold: self
                .at_least_one("policy.lockout_threshold", raw.lockout_threshold)?,
            lockout_window: self.duration("policy.lockout_window", &raw.lockout_window)?,
            lockout_duration: self.duration("policy.lockout_duration", &raw.lockout_duration)?,
            lockout_key,
            username_domains,
            login_attempts_per_ip_per_minute: self.at_least_one(
                "policy.login_attempts_per_ip_per_minute",
                raw.login_attempts_per_ip_per_minute,
            )?,
            public_requests_per_ip_per_minute: self.at_least_one(
                "policy.public_requests_per_ip_per_minute",
                raw.public_requests_per_ip_per_minute,
            )?,
            public_inflight_per_ip: self
                .at_least_one("policy.public_inflight_per_ip", raw.public_inflight_per_ip)?,
            max_tracked_usernames: self
                .at_least_one("policy.max_tracked_usernames", raw.max_tracked_usernames)?,
        })
    }

    fn username_domain(&self, key: &str, domain: &str) -> Result<String> {
        if domain.is_empty() {
            return Err(self.err(
                key,
                r#"empty; write a domain such as "HUTCH" or "fhcrc.org""#,
            ));
        }
        if domain
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\' || c == '@')
        {
            return Err(self.err(
                key,
                format!(
                    "\"{domain}\": write the domain alone, without spaces, \"\\\" or \"@\", e.g. \
                    \"HUTCH\" or \"fhcrc.org\""
                ),
            ));
        }
        Ok(domain.to_owned())
    }

    fn session(&self, raw: &RawSession) -> Result<SessionConfig> {
        let cookie_name = raw.cookie_name.clone();
        if !is_token(&cookie_name) {
            return Err(self.err(
                "session.cookie_name",
                format!(
                    "\"{cookie_name}\" is not a valid cookie name: use letters, digits and - \
                        _ . ! # $ % & ' * + ^ ` | ~ only, e.g. \"__Host-faspex-gate\""
                ),
            ));
        }
        if raw.secret_file.is_empty() {
            return Err(self.err(
                "session.secret_file",
                "required: a file holding at least 32 random bytes (raw or base64) that sign \
                 session cookies; create one with \
                 `head -c 32 /dev/urandom | base64 > /etc/faspex-gate/session.key` and \
                 `chmod 600` it",
            ));
        }
        let secret_file = PathBuf::from(&raw.secret_file);
        let contents = self.secret_file("session.secret_file", &secret_file)?;
        let secret = session_secret(&contents).map_err(|r| self.err("session.secret_file", r))?;
        Ok(SessionConfig {
            cookie_name,
            secret_file,
            secret,
        })
    }

    fn auth(&self, raw: &RawAuth) -> Result<AuthConfig> {
        let backend = match raw.backend.as_str() {
            "ldap" => AuthBackend::Ldap,
            "file" => AuthBackend::File,
            other => {
                return Err(self.err(
                    "auth.backend",
                    format!(r#"unknown backend "{other}"; use "ldap" or "file""#),
                ))
            }
        };
        let ldap = self.ldap(&raw.ldap, backend == AuthBackend::Ldap)?;
        let local_accounts = self.local_accounts(&raw.local_accounts, backend, &ldap)?;
        let path = optional_path(&raw.file.path);
        if backend == AuthBackend::File || local_accounts == LocalAccounts::File {
            let Some(path) = &path else {
                return Err(self.err(
                    "auth.file.path",
                    "required with auth.backend = \"file\" or auth.local_accounts = \"file\": \
                        the users file ([users.NAME] hash = \"...\" entries; make hashes with \
                        `faspex-gate hash-password`)",
                ));
            };
            self.readable_file("auth.file.path", path)?;
        }
        Ok(AuthConfig {
            backend,
            cache_ttl: self.duration("auth.cache_ttl", &raw.cache_ttl)?,
            max_checks_per_second: self
                .at_least_one("auth.max_checks_per_second", raw.max_checks_per_second)?,
            max_concurrent_hashes: self
                .at_least_one("auth.max_concurrent_hashes", raw.max_concurrent_hashes)?,
            local_accounts,
            ldap,
            file: FileAuthConfig { path },
        })
    }

    /// `auth.local_accounts`. Telling a name the directory does not know from a wrong password
    /// needs a search: with direct bind both are one failed bind.
    fn local_accounts(
        &self,
        value: &str,
        backend: AuthBackend,
        ldap: &LdapConfig,
    ) -> Result<LocalAccounts> {
        const KEY: &str = "auth.local_accounts";
        let local = match value {
            "none" => LocalAccounts::None,
            "file" => LocalAccounts::File,
            "faspex" => LocalAccounts::Faspex,
            other => {
                return Err(self.err(
                    KEY,
                    format!(r#"unknown value "{other}"; use "none", "file" or "faspex""#),
                ))
            }
        };
        match (local, backend) {
            (LocalAccounts::None, _) => {}
            (LocalAccounts::File, AuthBackend::File) => {
                return Err(self.err(
                    KEY,
                    "\"file\" puts the users file beside the directory, and auth.backend is the \
                     users file already; use \"none\", or \"faspex\" for Faspex's own accounts",
                ))
            }
            (_, AuthBackend::File) => {}
            (_, AuthBackend::Ldap) => {
                if ldap.bind_dn.is_none() || ldap.user_dn_template.is_some() {
                    return Err(self.err(
                        KEY,
                        format!(
                            "\"{value}\" needs search-then-bind (auth.ldap.bind_dn, \
                             bind_password_file and base_dn, no user_dn_template): with a direct \
                             bind a name the directory does not know and a wrong password look \
                             the same, and a directory user's guesses would reach the other check"
                        ),
                    ));
                }
            }
        }
        Ok(local)
    }

    /// `[auth.ldap]`; `in_use` when `auth.backend = "ldap"`.
    fn ldap(&self, raw: &RawLdap, in_use: bool) -> Result<LdapConfig> {
        let urls: Vec<url::Url> = raw
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| self.ldap_url(&format!("auth.ldap.urls[{i}]"), u))
            .collect::<Result<_>>()?;
        if in_use && urls.is_empty() {
            return Err(self.err(
                "auth.ldap.urls",
                "required with auth.backend = \"ldap\": at least one directory server, e.g. \
                    [\"ldaps://dc1.example.org\", \"ldaps://dc2.example.org\"]",
            ));
        }
        if raw.starttls {
            if let Some(i) = urls.iter().position(|u| u.scheme() == "ldaps") {
                return Err(self.err(
                    "auth.ldap.starttls",
                    format!(
                        "starttls = true cannot be used with the ldaps:// URL auth.ldap.urls[{i}]; \
                         use ldap:// URLs with starttls, or ldaps:// URLs with starttls = false"
                    ),
                ));
            }
        }
        let ca_file = optional_path(&raw.ca_file);
        let user_dn_template = non_empty(&raw.user_dn_template);
        let bind_dn = non_empty(&raw.bind_dn);
        let bind_password_file = optional_path(&raw.bind_password_file);
        let base_dn = non_empty(&raw.base_dn);

        if let Some(template) = &user_dn_template {
            if !template.contains("{username}") {
                return Err(self.err(
                    "auth.ldap.user_dn_template",
                    r#"must contain {username}, e.g. "uid={username},ou=people,dc=example,dc=org""#,
                ));
            }
        }
        let search = [
            ("auth.ldap.bind_dn", bind_dn.is_some()),
            ("auth.ldap.bind_password_file", bind_password_file.is_some()),
            ("auth.ldap.base_dn", base_dn.is_some()),
        ];
        let search_on = search.iter().any(|(_, set)| *set);
        if in_use && search_on && user_dn_template.is_some() {
            return Err(self.err(
                "auth.ldap.user_dn_template",
                "set either user_dn_template (direct bind) or bind_dn, bind_password_file and \
                 base_dn (search with a service account), not both",
            ));
        }
        if in_use {
            let tls = |u: &url::Url| raw.starttls || u.scheme() == "ldaps";
            if let Some(i) = urls
                .iter()
                .position(|u| tls(u) && matches!(u.host(), Some(url::Host::Ipv6(_))))
            {
                return Err(self.err(
                    &format!("auth.ldap.urls[{i}]"),
                    "an IPv6 address cannot be checked against the server's certificate by the \
                     LDAP client; use the server's host name",
                ));
            }
        }
        let mut bind_password = None;
        if in_use {
            if let Some(ca) = &ca_file {
                self.readable_file("auth.ldap.ca_file", ca)?;
            }
            if search_on {
                if let Some((missing, _)) = search.iter().find(|(_, set)| !set) {
                    return Err(self.err(
                        missing,
                        "search-then-bind needs all of bind_dn, bind_password_file and base_dn; \
                         set this one too, or leave all three empty and use user_dn_template",
                    ));
                }
                if !raw.user_filter.contains("{username}") {
                    return Err(self.err(
                        "auth.ldap.user_filter",
                        r#"must contain {username}, e.g. "(sAMAccountName={username})""#,
                    ));
                }
                if ldap3::parse_filter(raw.user_filter.replace("{username}", "x")).is_err() {
                    return Err(self.err(
                        "auth.ldap.user_filter",
                        r#"is not a valid LDAP filter, e.g. "(&(objectClass=user)(sAMAccountName={username}))""#,
                    ));
                }
            } else if user_dn_template.is_none() {
                return Err(self.err(
                    "auth.ldap.user_dn_template",
                    "set user_dn_template (direct bind), or bind_dn, bind_password_file and \
                     base_dn (search with a service account, then bind as the user)",
                ));
            }
            if let Some(path) = &bind_password_file {
                let contents = self.secret_file("auth.ldap.bind_password_file", path)?;
                bind_password = Some(Secret::new(contents));
            }
        }
        Ok(LdapConfig {
            urls,
            starttls: raw.starttls,
            ca_file,
            user_dn_template,
            bind_dn,
            bind_password_file,
            bind_password,
            base_dn,
            user_filter: raw.user_filter.clone(),
            require_group: non_empty(&raw.require_group),
            nested_groups: raw.nested_groups,
            pool_size: self.at_least_one("auth.ldap.pool_size", raw.pool_size)?,
            timeout: self.ldap_timeout(&raw.timeout)?,
        })
    }

    /// `auth.ldap.timeout`: each operation's limit, and what a silent server costs a check before
    /// the next is tried. At most 15 s: the engine gives a whole check 60 s
    /// (`policy::CHECK_TIMEOUT`).
    fn ldap_timeout(&self, value: &str) -> Result<Duration> {
        let d = self.duration("auth.ldap.timeout", value)?;
        if d > Duration::from_secs(15) {
            return Err(self.err(
                "auth.ldap.timeout",
                "must be at most 15s: a silent server costs a login this long before the next \
                 server is tried, and a whole check is given 60 s",
            ));
        }
        Ok(d)
    }

    fn ldap_url(&self, key: &str, value: &str) -> Result<url::Url> {
        const EXAMPLE: &str = "e.g. ldaps://dc1.example.org or ldap://ldap.example.org:389";
        let url = url::Url::parse(value)
            .map_err(|e| self.err(key, format!("not a valid URL ({e}); {EXAMPLE}")))?;
        if !matches!(url.scheme(), "ldap" | "ldaps") {
            return Err(self.err(
                key,
                format!(
                    "the scheme must be ldap or ldaps, not {}; {EXAMPLE}",
                    url.scheme()
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                key,
                "must not contain a user name or password; use auth.ldap.bind_dn and \
                 bind_password_file",
            ));
        }
        if url.host_str().unwrap_or("").is_empty() {
            return Err(self.err(key, format!("has no host; {EXAMPLE}")));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(
                key,
                format!("must be a server only, without a DN, query or fragment; {EXAMPLE}"),
            ));
        }
        Ok(url)
    }

    fn faspex(&self, raw: &RawFaspex) -> Result<FaspexConfig> {
        for (key, value) in [
            ("faspex.username_field", &raw.username_field),
            ("faspex.password_field", &raw.password_field),
        ] {
            if value.is_empty() {
                return Err(self.err(key, "must not be empty: the name of the login form's field"));
            }
        }
        let deny = raw
            .deny
            .iter()
            .enumerate()
            .map(|(i, rule)| self.deny_rule(&format!("faspex.deny[{i}]"), rule))
            .collect::<Result<_>>()?;
        for (key, field) in [
            ("faspex.username_field", &raw.username_field),
            ("faspex.password_field", &raw.password_field),
        ] {
            if field.trim().is_empty() {
                return Err(self.err(key, "must name the login form's field"));
            }
        }
        if raw.username_field == raw.password_field {
            return Err(self.err(
                "faspex.password_field",
                "must differ from faspex.username_field",
            ));
        }
        if !is_token(&raw.session_cookie) {
            return Err(self.err(
                "faspex.session_cookie",
                format!("\"{}\" is not a cookie name", raw.session_cookie),
            ));
        }
        let login_path = self.path_prefix("faspex.login_path", &raw.login_path)?;
        let token_path = self.path_prefix("faspex.token_path", &raw.token_path)?;
        let password_forms = raw
            .password_forms
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                self.password_form(
                    &format!("faspex.password_forms[{i}]"),
                    rule,
                    &[&login_path, &token_path],
                )
            })
            .collect::<Result<_>>()?;
        let max_inspected_body =
            self.byte_size("faspex.max_inspected_body", &raw.max_inspected_body)?;
        if !(1024..=64 * 1024 * 1024).contains(&max_inspected_body) {
            return Err(self.err(
                "faspex.max_inspected_body",
                "must be between 1KiB and 64MiB",
            ));
        }
        for (i, name) in raw.forward_cookies.iter().enumerate() {
            let key = format!("faspex.forward_cookies[{i}]");
            if !is_token(name) {
                return Err(self.err(&key, format!("\"{name}\" is not a cookie name")));
            }
            if *name == raw.session_cookie {
                return Err(self.err(
                    &key,
                    "the Faspex session cookie goes to Faspex only as the session's own; do not \
                     list it here",
                ));
            }
        }
        Ok(FaspexConfig {
            login_path,
            username_field: raw.username_field.clone(),
            password_field: raw.password_field.clone(),
            logout_path: self.path_prefix("faspex.logout_path", &raw.logout_path)?,
            session_cookie: raw.session_cookie.clone(),
            token_path,
            public_paths: self.path_prefixes("faspex.public_paths", &raw.public_paths)?,
            deny,
            max_inspected_body,
            password_forms,
            forward_cookies: raw.forward_cookies.clone(),
        })
    }

    /// A `faspex.password_forms` entry: `"METHOD PATH"`, never the login or token action.
    fn password_form(&self, key: &str, rule: &str, actions: &[&str]) -> Result<PasswordFormRule> {
        const FORM: &str = "write \"METHOD PATH\", e.g. \"POST /aspera/faspex/admin/users\"";
        let parts: Vec<&str> = rule.split_whitespace().collect();
        let [method, path] = parts[..] else {
            return Err(self.err(key, format!(r#""{rule}": {FORM}"#)));
        };
        if !is_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(self.err(
                key,
                format!("method \"{method}\" must be an upper-case HTTP method; {FORM}"),
            ));
        }
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| self.err(key, format!(r#"method "{method}" is not an HTTP method"#)))?;
        let path = self.path_prefix(key, path)?;
        let bare = path.trim_end_matches('/');
        for action in actions {
            let action = action.trim_end_matches('/');
            if bare == action
                || bare.starts_with(&format!("{action}."))
                || action.starts_with(&format!("{bare}/"))
            {
                return Err(self.err(
                    key,
                    format!(
                        "\"{path}\" is the login or token action: its credentials are checked by \
                         the gateway, never passed through"
                    ),
                ));
            }
        }
        Ok(PasswordFormRule { method, path })
    }

    /// A size such as `1MiB`, `512KiB`, `65536` (bytes).
    fn byte_size(&self, key: &str, value: &str) -> Result<usize> {
        let v = value.trim();
        let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        let (num, unit) = v.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            _ => 0,
        };
        num.parse::<u64>()
            .ok()
            .filter(|_| mult > 0)
            .and_then(|n| n.checked_mul(mult))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                self.err(
                    key,
                    format!(r#""{value}" is not a size; write e.g. "1MiB", "512KiB" or "65536""#),
                )
            })
    }

    fn deny_rule(&self, key: &str, rule: &str) -> Result<DenyRule> {
        const FORM: &str =
            "write \"METHOD PATH-PREFIX\", e.g. \"* /aspera/faspex/package_relay/\" or \"POST \
            /aspera/faspex/admin/\"";
        let parts: Vec<&str> = rule.split_whitespace().collect();
        let [method, prefix] = parts[..] else {
            return Err(self.err(key, format!(r#""{rule}": {FORM}"#)));
        };
        let method = if method == "*" {
            None
        } else {
            if !is_token(method) || method.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(self.err(
                    key,
                    format!(
                        "method \"{method}\" must be \"*\" or an upper-case HTTP method such as \
                        GET or POST; {FORM}"
                    ),
                ));
            }
            let parsed = http::Method::from_bytes(method.as_bytes()).map_err(|_| {
                self.err(
                    key,
                    format!(r#"method "{method}" is not an HTTP method; {FORM}"#),
                )
            })?;
            Some(parsed)
        };
        let prefix = self.path_prefix(key, prefix)?;
        // Rules are matched against the decoded path: an encoded rule would never match.
        if prefix.contains(['%', ';']) {
            return Err(self.err(
                key,
                format!(
                    "\"{prefix}\": write the path decoded and without ;parameters (rules match \
                     the decoded path, in any case and with ;parameters removed)"
                ),
            ));
        }
        Ok(DenyRule { method, prefix })
    }

    fn pages(&self, raw: &RawPages) -> Result<PagesConfig> {
        if raw.helpdesk.trim().is_empty() {
            return Err(self.err(
                "pages.helpdesk",
                "must not be empty: the pages tell people to contact it, e.g. \
                    \"helpdesk@example.org, ext. 4357\"",
            ));
        }
        let timezone = non_empty(&raw.timezone);
        let tz = match &timezone {
            None => jiff::tz::TimeZone::system(),
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                self.err(
                    "pages.timezone",
                    format!(
                        "\"{name}\" is not a time zone this host knows; use an IANA name such \
                         as \"America/Los_Angeles\", or leave it empty for the host's own"
                    ),
                )
            })?,
        };
        Ok(PagesConfig {
            helpdesk: raw.helpdesk.clone(),
            timezone,
            tz,
        })
    }

    fn audit(&self, raw: &RawAudit) -> Result<AuditConfig> {
        const KEY: &str = "audit.path";
        let sink = match raw.path.as_str() {
            "-" => AuditSink::Stderr,
            "" => return Err(self.err(KEY, r#"empty; write "-" for stderr, or a file path"#)),
            path => {
                let path = PathBuf::from(path);
                if path.is_dir() {
                    return Err(self.err(
                        KEY,
                        format!("{} is a directory; name a file in it", path.display()),
                    ));
                }
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                if !parent.is_dir() {
                    return Err(self.err(
                        KEY,
                        format!(
                            "the directory {} does not exist; create it first",
                            parent.display()
                        ),
                    ));
                }
                AuditSink::File(path)
            }
        };
        let gateway = match raw.gateway.as_str() {
            "" => host_name(),
            name => {
                self.plain_word("audit.gateway", name)?;
                if name.len() > 64 {
                    return Err(self.err("audit.gateway", "is longer than 64 bytes"));
                }
                name.to_owned()
            }
        };
        Ok(AuditConfig { sink, gateway })
    }

    fn log(&self, raw: &RawLog) -> Result<LogConfig> {
        let format = match raw.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.err(
                    "log.format",
                    format!("{other:?} is not a log format; use \"text\" or \"json\""),
                ))
            }
        };
        Ok(LogConfig { format })
    }

    /// `[helpdesk]`: the console is on when both `listen` and `group` are set. With LDAP it
    /// needs the service account (membership is asked again while a console session lives);
    /// with the users file, `group` is a label and the members are the users marked
    /// `helpdesk = true`.
    fn helpdesk(
        &self,
        raw: &RawHelpdesk,
        server: &ServerConfig,
        admin: &AdminConfig,
        auth: &AuthConfig,
    ) -> Result<HelpdeskConfig> {
        let listen = self.listen_addr("helpdesk.listen", &raw.listen)?;
        let group = non_empty(raw.group.trim());
        let allowed_networks = raw
            .allowed_networks
            .iter()
            .enumerate()
            .map(|(i, s)| self.cidr(&format!("helpdesk.allowed_networks[{i}]"), s))
            .collect::<Result<_>>()?;
        if let (Some(addr), Some(group)) = (listen, &group) {
            for (name, other) in [
                ("server.listen", server.listen),
                ("server.http_listen", server.http_listen),
                ("admin.listen", admin.listen),
            ] {
                if let Some(other) = other.filter(|other| clash(addr, *other)) {
                    return Err(self.err(
                        "helpdesk.listen",
                        format!("{addr} is the same port as {name} ({other}); use another port"),
                    ));
                }
            }
            if auth.backend == AuthBackend::Ldap {
                if auth.ldap.bind_dn.is_none() {
                    return Err(self.err(
                        "auth.ldap.bind_dn",
                        "the helpdesk console needs the directory service account (bind_dn, \
                         bind_password_file and base_dn): it checks membership of \
                         helpdesk.group again, as that account, at least every auth.cache_ttl \
                         while a console session lives; set them, or turn the console off \
                         (helpdesk.listen = \"\")",
                    ));
                }
                if !group.contains('=') {
                    return Err(self.err(
                        "helpdesk.group",
                        format!(
                            "{group:?} is not a group DN; with auth.backend = \"ldap\" write \
                             the group's DN, e.g. \"cn=helpdesk,ou=groups,dc=example,dc=org\""
                        ),
                    ));
                }
            }
        }
        Ok(HelpdeskConfig {
            listen,
            group,
            allowed_networks,
        })
    }

    fn store(&self, raw: &RawStore) -> Result<StoreConfig> {
        let kind = match raw.kind.as_str() {
            "embedded" => StoreKind::Embedded,
            "redis" => StoreKind::Redis,
            other => {
                return Err(self.err(
                    "store.kind",
                    format!(r#"unknown store "{other}"; use "embedded" or "redis""#),
                ))
            }
        };
        if raw.path.is_empty() {
            return Err(self.err(
                "store.path",
                r#"must not be empty: the directory of the store, e.g. "/var/lib/faspex-gate""#,
            ));
        }
        let redis = self.redis(&raw.redis, kind == StoreKind::Redis)?;
        Ok(StoreConfig {
            kind,
            path: PathBuf::from(&raw.path),
            redis,
        })
    }

    /// `[store.redis]`: its form is checked always, its files only when it is `in_use`. Redis is
    /// never contacted here.
    fn redis(&self, raw: &RawRedis, in_use: bool) -> Result<RedisConfig> {
        const TABLE: &str = "store.redis";
        if raw.urls.len() > 1 {
            return Err(self.err(
                TABLE,
                format!(
                    "urls holds one master, not {}; for several Redis servers use sentinels \
                     and master_name",
                    raw.urls.len()
                ),
            ));
        }
        if !raw.urls.is_empty() && !raw.sentinels.is_empty() {
            return Err(self.err(
                TABLE,
                "set either urls (one master) or sentinels and master_name, not both",
            ));
        }
        if in_use && raw.urls.is_empty() && raw.sentinels.is_empty() {
            return Err(self.err(
                TABLE,
                r#"store.kind = "redis" needs urls = ["redis://host:6379"] (one master), or sentinels and master_name"#,
            ));
        }
        let urls = raw
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| self.redis_url(&format!("store.redis.urls[{i}]"), u))
            .collect::<Result<Vec<_>>>()?;
        let sentinels = raw
            .sentinels
            .iter()
            .enumerate()
            .map(|(i, h)| self.sentinel(&format!("store.redis.sentinels[{i}]"), h))
            .collect::<Result<Vec<_>>>()?;
        let sentinel_tls = sentinels.first().is_some_and(|s| split_sentinel(s).0);
        if sentinels
            .iter()
            .any(|s| split_sentinel(s).0 != sentinel_tls)
        {
            return Err(self.err(
                "store.redis.sentinels",
                "mixes rediss:// (TLS) and plain host:port entries; write every sentinel the same \
                 way",
            ));
        }
        let master_name = non_empty(&raw.master_name);
        match (&master_name, sentinels.is_empty()) {
            (None, false) => {
                return Err(self.err(
                    "store.redis.master_name",
                    "must name the master the sentinels watch, e.g. \"faspex-gate\"",
                ))
            }
            (Some(_), true) => {
                return Err(self.err(
                    "store.redis.master_name",
                    "is used only with sentinels; leave it empty with urls",
                ))
            }
            _ => {}
        }
        if let Some(m) = &master_name {
            self.plain_word("store.redis.master_name", m)?;
        }
        let username = non_empty(&raw.username);
        if let Some(u) = &username {
            self.plain_word("store.redis.username", u)?;
        }
        if raw.key_prefix.is_empty() {
            return Err(self.err(
                "store.redis.key_prefix",
                r#"must not be empty, e.g. "faspex-gate""#,
            ));
        }
        self.plain_word("store.redis.key_prefix", &raw.key_prefix)?;
        if raw.key_prefix.contains(['{', '}']) || raw.key_prefix.len() > 64 {
            return Err(self.err(
                "store.redis.key_prefix",
                "must be at most 64 bytes without { or } (the gateway puts it in a {...} hash tag)",
            ));
        }
        let wait_replicas = self.count("store.redis.wait_replicas", raw.wait_replicas, 0, 16)?;
        let wait_timeout = self.duration("store.redis.wait_timeout", &raw.wait_timeout)?;
        if wait_timeout > Duration::from_secs(2) {
            return Err(self.err(
                "store.redis.wait_timeout",
                "must be at most 2s: a login waits for it, and no client waits more than 5s on \
                 the store",
            ));
        }
        let session_cache = self.duration("store.redis.session_cache", &raw.session_cache)?;
        if session_cache > Duration::from_secs(10) {
            return Err(self.err(
                "store.redis.session_cache",
                "must be at most 10s: a kick, lock or logout takes effect on every gateway \
                 within it",
            ));
        }
        let outage_grace = self.parse_duration("store.redis.outage_grace", &raw.outage_grace)?;
        if outage_grace > Duration::from_secs(3600) {
            return Err(self.err(
                "store.redis.outage_grace",
                "must be at most 1h (0s = no grace: protected requests get 503 while Redis is \
                 unreachable)",
            ));
        }
        let password_file = optional_path(&raw.password_file);
        let ca_file = optional_path(&raw.ca_file);
        if ca_file.is_some() && !sentinels.is_empty() && !sentinel_tls {
            return Err(self.err(
                "store.redis.ca_file",
                "is a trust anchor for TLS, but the sentinels are plain host:port (TCP without \
                 TLS, to them and to the master they name); write them rediss://host:port for \
                 TLS, or leave ca_file empty",
            ));
        }
        let mut password = None;
        if in_use {
            if let Some(path) = &password_file {
                let contents = self.secret_file("store.redis.password_file", path)?;
                password = Some(Secret::new(contents));
            }
            if let Some(ca) = &ca_file {
                self.readable_file("store.redis.ca_file", ca)?;
            }
        }
        Ok(RedisConfig {
            urls,
            sentinels,
            master_name,
            username,
            password_file,
            password,
            ca_file,
            key_prefix: raw.key_prefix.clone(),
            wait_replicas,
            wait_timeout,
            session_cache,
            outage_grace,
        })
    }

    /// A Redis master's URL: `redis://` or `rediss://`, a host, no credentials, no path but an
    /// optional database number.
    fn redis_url(&self, key: &str, value: &str) -> Result<url::Url> {
        let url = url::Url::parse(value).map_err(|e| {
            self.err(
                key,
                format!(r#""{value}" is not a valid URL ({e}); write e.g. "redis://redis.example.org:6379""#),
            )
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(self.err(
                key,
                format!(
                    "the scheme must be redis or rediss (TLS), not {}",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().unwrap_or("").is_empty() {
            return Err(self.err(key, "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                key,
                "must not hold a user name or password; use store.redis.username and \
                 store.redis.password_file",
            ));
        }
        let path = url.path().trim_start_matches('/');
        if !path.is_empty() && path.parse::<u16>().is_err()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(self.err(
                key,
                "names the server only (and at most a database number, \"/0\"), no path or query",
            ));
        }
        Ok(url)
    }

    /// A sentinel: `host:port` (plain TCP), or `rediss://host:port` (TLS).
    fn sentinel(&self, key: &str, value: &str) -> Result<String> {
        let (_, addr) = split_sentinel(value);
        if addr.contains("://") {
            return Err(self.err(
                key,
                format!(
                    r#""{value}" is not host:port or rediss://host:port; write e.g. "sentinel1.example.org:26379", or "rediss://sentinel1.example.org:26379" for TLS"#
                ),
            ));
        }
        self.host_port(key, addr)?;
        Ok(value.to_owned())
    }

    /// `host:port`, the host a name or an address (`[v6]:port`), the port 1 to 65535.
    fn host_port(&self, key: &str, value: &str) -> Result<String> {
        let bad = || {
            self.err(
                key,
                format!(r#""{value}" is not host:port; write e.g. "sentinel1.example.org:26379""#),
            )
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if port == 0 || !host_ok {
            return Err(bad());
        }
        Ok(value.to_owned())
    }

    /// A name without spaces or control characters.
    fn plain_word(&self, key: &str, value: &str) -> Result<()> {
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(key, "must not contain spaces or control characters"));
        }
        Ok(())
    }

    // ---- value checks shared by the sections ----

    /// A duration longer than zero.
    fn duration(&self, key: &str, value: &str) -> Result<Duration> {
        let d = self.parse_duration(key, value)?;
        if d.is_zero() {
            return Err(self.err(key, "must be longer than zero"));
        }
        Ok(d)
    }

    /// A duration where zero means never.
    fn duration_or_never(&self, key: &str, value: &str) -> Result<Option<Duration>> {
        let d = self.parse_duration(key, value)?;
        Ok((!d.is_zero()).then_some(d))
    }

    /// Any duration, at most [`MAX_DURATION`]: a limit of centuries is a typo, and one past
    /// `Instant`'s range (or past the year 9999, where times stop being printable) would
    /// overflow wherever it is added to now.
    fn parse_duration(&self, key: &str, value: &str) -> Result<Duration> {
        let d = humantime::parse_duration(value).map_err(|e| {
            self.err(
                key,
                format!(r#""{value}" is not a duration ({e}); {DURATION_HINT}"#),
            )
        })?;
        if d > MAX_DURATION {
            return Err(self.err(key, format!(r#""{value}" is too long: at most 100 years"#)));
        }
        Ok(d)
    }

    /// A listener address; `""` = off.
    fn listen_addr(&self, key: &str, value: &str) -> Result<Option<SocketAddr>> {
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            self.err(
                key,
                format!(
                    "\"{value}\" is not an IP address and port; write e.g. \"0.0.0.0:8443\", \
                        \"[::]:8443\", or \"\" to turn it off"
                ),
            )
        })
    }

    /// A CIDR, or a bare IP address as a /32 or /128.
    fn cidr(&self, key: &str, value: &str) -> Result<ipnet::IpNet> {
        if let Ok(net) = value.parse::<ipnet::IpNet>() {
            return Ok(net.trunc());
        }
        if let Ok(ip) = value.parse::<IpAddr>() {
            return Ok(ipnet::IpNet::from(ip));
        }
        Err(self.err(
            key,
            format!(
                "\"{value}\" is not a CIDR or IP address; write e.g. \"10.0.0.0/8\", \
                \"192.0.2.10\" or \"2001:db8::/32\""
            ),
        ))
    }

    /// A number of at least 1 that fits `T`.
    fn at_least_one<T: TryFrom<u64>>(&self, key: &str, value: u64) -> Result<T> {
        self.count(key, value, 1, u64::MAX)
    }

    /// A number within `min..=max` that fits `T`.
    fn count<T: TryFrom<u64>>(&self, key: &str, value: u64, min: u64, max: u64) -> Result<T> {
        if value < min {
            return Err(self.err(
                key,
                format!("{value} is too small: it must be at least {min}"),
            ));
        }
        if value > max {
            return Err(self.err(
                key,
                format!("{value} is too large: it must be at most {max}"),
            ));
        }
        T::try_from(value).map_err(|_| self.err(key, format!("{value} is too large")))
    }

    /// A URL path prefix: starts with `/`, no whitespace or control characters.
    fn path_prefix(&self, key: &str, value: &str) -> Result<String> {
        if !value.starts_with('/') {
            return Err(self.err(
                key,
                format!(r#""{value}" must be a path starting with "/", e.g. "/aspera/faspex/""#),
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(
                key,
                format!(
                    "\"{value}\" contains a space or control character; percent-encode it as in \
                    the URL"
                ),
            ));
        }
        Ok(value.to_owned())
    }

    fn path_prefixes(&self, key: &str, values: &[String]) -> Result<Vec<String>> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| self.path_prefix(&format!("{key}[{i}]"), v))
            .collect()
    }

    /// A file that exists and can be opened for reading.
    fn readable_file(&self, key: &str, path: &Path) -> Result<()> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            self.err(
                key,
                match e.kind() {
                    std::io::ErrorKind::NotFound => format!("file {shown} does not exist"),
                    _ => format!("cannot access {shown}: {e}"),
                },
            )
        })?;
        if !meta.is_file() {
            return Err(self.err(key, format!("{shown} is not a regular file")));
        }
        std::fs::File::open(path)
            .map(drop)
            .map_err(|e| self.err(key, format!("cannot read {shown}: {e}")))
    }

    /// The trimmed contents of a private, non-empty secret file.
    fn secret_file(&self, key: &str, path: &Path) -> Result<Vec<u8>> {
        read_secret_file(path).map_err(|r| self.err(key, r))
    }
}

/// Whether two listeners would fight over a port (port 0, "any free port", never does).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// An RFC 7230 token (RFC 6265's cookie-name): visible ASCII except separators.
fn is_token(s: &str) -> bool {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={}";
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b))
}

fn optional_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// This host's name (for `audit.gateway` left empty), or `faspex-gate` when it cannot be read.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| {
            !s.is_empty()
                && s.len() <= 64
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        })
        .unwrap_or_else(|| "faspex-gate".into())
}
