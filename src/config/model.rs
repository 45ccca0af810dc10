//! The validated configuration's types: [`Config`] and its sections, the errors that name a key
//! ([`ConfigError`]), and where the configuration file is. They hold values only: loading and
//! validation are `validate.rs`'s, [`Config::redacted`] is `redact.rs`'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env;
use super::secret::Secret;

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "FASPEX_GATE_CONFIG";
/// The configuration file when [`CONFIG_ENV`] is not set.
pub const DEFAULT_PATH: &str = "/etc/faspex-gate/faspex-gate.toml";

/// The configuration file to use: `$FASPEX_GATE_CONFIG`, else
/// `/etc/faspex-gate/faspex-gate.toml`.
pub fn default_path() -> PathBuf {
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// A configuration error: the file, the dotted key (empty when the error is about the whole
/// file), and a reason a person can act on. When an environment variable set the key, the reason
/// says so.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.file, .key, .reason))]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    /// An error about `key` of `file`, saying which environment variable set the key, if one did.
    pub(super) fn new(
        file: &Path,
        env: &env::EnvLayer,
        key: &str,
        reason: impl Into<String>,
    ) -> Self {
        let mut reason = reason.into();
        if let Some(var) = env.source_of(key) {
            reason.push_str(&format!(" (set by {var})"));
        }
        ConfigError {
            file: file.to_path_buf(),
            key: key.to_owned(),
            reason,
        }
    }
}

fn render(file: &Path, key: &str, reason: &str) -> String {
    if key.is_empty() {
        format!("{}: {reason}", file.display())
    } else {
        format!("{}: key `{key}`: {reason}", file.display())
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was loaded from.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub policy: PolicyConfig,
    pub session: SessionConfig,
    pub auth: AuthConfig,
    pub faspex: FaspexConfig,
    pub pages: PagesConfig,
    pub audit: AuditConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub helpdesk: HelpdeskConfig,
    /// Which keys the environment set (names only, no values), for [`Config::error`].
    pub(super) env: env::EnvLayer,
}

impl Config {
    /// An error about `key` found after validation, when what the key names is read (the users
    /// file, a certificate): worded as validation's, with the file, the key, and the
    /// environment variable that set the key, if one did.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, &self.env, key, reason)
    }
}

/// `[server]`: the client-facing listeners.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The HTTPS listener; `None` when off.
    pub listen: Option<SocketAddr>,
    /// The plain-HTTP listener (behind a TLS-terminating balancer); `None` when off.
    pub http_listen: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls_handshake_timeout: Duration,
    /// Also bounds an idle keep-alive connection.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Client connections open at once from one address (trusted proxies exempt).
    pub max_connections_per_ip: usize,
    /// The prefix length under which IPv6 addresses count as one address.
    pub ipv6_prefix_len: u8,
    /// `Strict-Transport-Security` on every HTTPS answer; `None` = none.
    pub hsts: Option<http::HeaderValue>,
    /// Response headers never passed from Faspex to clients.
    pub strip_response_headers: Vec<http::HeaderName>,
    /// Request-handling threads; 0 = one per CPU core.
    pub workers: usize,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// How long a request or response body, or an upgraded tunnel, may move no bytes before the
    /// transfer is aborted (a stalled client or upstream must not hold a slot forever).
    pub body_idle_timeout: Duration,
}

/// `[tls]`: the certificate of the HTTPS listener. Checked only when `server.listen` is on.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `[upstream]`: the Faspex server.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Scheme and authority only (`http` or `https`, a host, no path beyond `/`).
    pub url: url::Url,
    /// An extra trust anchor for an `https` upstream.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Time to the upstream's response headers.
    pub response_timeout: Duration,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// Connections to Faspex at once.
    pub max_connections: usize,
}

/// `[admin]`: the admin listener and its bearer token.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// `None` when off.
    pub listen: Option<SocketAddr>,
    pub token_file: Option<PathBuf>,
    /// The token, loaded when the listener is on.
    pub token: Option<Secret>,
}

/// `policy.one_client_per_account`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneClient {
    /// `"reject"`: refuse a second client.
    Reject,
    /// `"replace"`: end the older session.
    Replace,
}

/// `policy.lockout_key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockoutKey {
    /// `"account"`
    Account,
    /// `"account+ip"`
    AccountIp,
}

/// `[policy]`: seats, timeouts, lockouts and rates.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub max_sessions: u32,
    pub one_client_per_account: OneClient,
    pub idle_timeout: Duration,
    pub api_idle_timeout: Duration,
    /// `None` (`"0s"` in the file) = never.
    pub absolute_timeout: Option<Duration>,
    pub activity_exempt_paths: Vec<String>,
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
    pub lockout_key: LockoutKey,
    pub username_domains: Vec<String>,
    pub login_attempts_per_ip_per_minute: u32,
    pub public_requests_per_ip_per_minute: u32,
    /// Public-path requests from one address whose request is still arriving.
    pub public_inflight_per_ip: u32,
    pub max_tracked_usernames: usize,
}

/// `[session]`: the gateway's session cookie.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub cookie_name: String,
    pub secret_file: PathBuf,
    /// At least 32 bytes (base64 in the file is decoded).
    pub secret: Secret,
}

/// `auth.backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthBackend {
    Ldap,
    File,
}

/// `auth.local_accounts`: who checks a name the directory does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalAccounts {
    /// `"none"`: nobody; it is refused as a wrong password.
    None,
    /// `"file"`: the users file (`auth.file.path`), beside the directory.
    File,
    /// `"faspex"`: Faspex itself, inside the gateway's pipeline and policies.
    Faspex,
}

impl LocalAccounts {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalAccounts::None => "none",
            LocalAccounts::File => "file",
            LocalAccounts::Faspex => "faspex",
        }
    }
}

/// `[auth]`: credential checks.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub backend: AuthBackend,
    pub cache_ttl: Duration,
    pub max_checks_per_second: u32,
    pub max_concurrent_hashes: usize,
    /// Who checks names the directory does not know.
    pub local_accounts: LocalAccounts,
    /// Fully checked only when `backend` is [`AuthBackend::Ldap`].
    pub ldap: LdapConfig,
    /// Fully checked only when `backend` is [`AuthBackend::File`].
    pub file: FileAuthConfig,
}

/// `[auth.ldap]`. Empty strings in the file are `None` here.
#[derive(Clone, Debug)]
pub struct LdapConfig {
    pub urls: Vec<url::Url>,
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    /// Direct bind: contains `{username}`.
    pub user_dn_template: Option<String>,
    /// Search-then-bind: the service account.
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// Loaded when the backend is LDAP and `bind_password_file` is set.
    pub bind_password: Option<Secret>,
    pub base_dn: Option<String>,
    pub user_filter: String,
    pub require_group: Option<String>,
    pub nested_groups: bool,
    pub pool_size: usize,
    pub timeout: Duration,
}

/// `[auth.file]`
#[derive(Clone, Debug)]
pub struct FileAuthConfig {
    /// The users file; it exists and is readable when `backend` is [`AuthBackend::File`] or
    /// `local_accounts` is [`LocalAccounts::File`]. It is parsed when the app is built.
    pub path: Option<PathBuf>,
}

/// One `faspex.deny` entry: `"METHOD PATH-PREFIX"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyRule {
    /// `None` = `"*"`, every method.
    pub method: Option<http::Method>,
    pub prefix: String,
}

/// `[faspex]`: how Faspex's pages and paths look.
#[derive(Clone, Debug)]
pub struct FaspexConfig {
    pub login_path: String,
    pub username_field: String,
    pub password_field: String,
    pub logout_path: String,
    /// The name of Faspex's own session cookie, kept with the gateway session to log Faspex out.
    pub session_cookie: String,
    /// Where Faspex hands out OAuth2 access tokens (watched to tie them to the session).
    pub token_path: String,
    pub public_paths: Vec<String>,
    pub deny: Vec<DenyRule>,
    /// Form-type bodies are inspected for credentials up to this many bytes (413 beyond).
    pub max_inspected_body: usize,
    /// Faspex's own forms that carry a password for another purpose.
    pub password_forms: Vec<PasswordFormRule>,
    /// Client cookies passed to Faspex besides the session's own Faspex cookie.
    pub forward_cookies: Vec<String>,
}

/// One `faspex.password_forms` entry: `"METHOD PATH"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordFormRule {
    pub method: http::Method,
    pub path: String,
}

/// `[pages]`: the gateway's own pages.
#[derive(Clone, Debug)]
pub struct PagesConfig {
    pub helpdesk: String,
    /// `None` = the host's local time.
    pub timezone: Option<String>,
    /// `timezone`, resolved (the host's own when empty), for "locked until HH:MM".
    pub tz: jiff::tz::TimeZone,
}

/// `audit.path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    /// `"-"`
    Stderr,
    File(PathBuf),
}

/// `[audit]`
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// `audit.gateway`: the name every record carries in its `gateway` field, so that several
    /// gateways' records can be told apart; the host name when the key is empty.
    pub gateway: String,
}

/// `log.format`: how the service log on stderr is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `"text"`: tracing's human-readable lines, `key=value` fields.
    #[default]
    Text,
    /// `"json"`: one JSON object per line, with stable field names (docs/operations.md, "Logs").
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `[helpdesk]`: the helpdesk console, on its own HTTPS listener. On only when both `listen`
/// and `group` are set ([`HelpdeskConfig::on`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HelpdeskConfig {
    /// `None` when `helpdesk.listen = ""`.
    pub listen: Option<SocketAddr>,
    /// The directory group DN whose members may use the console; with `auth.backend = "file"`,
    /// any non-empty label (members are the users with `helpdesk = true`). `None` when empty.
    pub group: Option<String>,
    /// Who may reach the listener; empty = any address.
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl HelpdeskConfig {
    /// The console's address and group, when both are set (the console is on).
    pub fn on(&self) -> Option<(SocketAddr, &str)> {
        match (self.listen, self.group.as_deref()) {
            (Some(addr), Some(group)) => Some((addr, group)),
            _ => None,
        }
    }
}

/// `store.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `"embedded"`: durable, on this host.
    Embedded,
    /// `"redis"`: shared by several gateways, in Redis 7.0 or later (`[store.redis]`).
    Redis,
}

/// `[store]`: where sessions and lockouts are kept.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub redis: RedisConfig,
}

/// `[store.redis]`: the shared store. Checked whatever `store.kind` says; its files are read only
/// when `store.kind = "redis"`. Nothing here contacts Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    /// One master (`redis://` or `rediss://`), or none with `sentinels`.
    pub urls: Vec<url::Url>,
    /// Sentinels as written: all `host:port` (plain TCP) or all `rediss://host:port` (TLS, to
    /// them and to the master they name), with `master_name`.
    pub sentinels: Vec<String>,
    pub master_name: Option<String>,
    /// The ACL user; `None` = the default user.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Read from `password_file` when the store is Redis.
    pub password: Option<Secret>,
    /// An extra trust anchor for `rediss://` (and TLS to sentinels).
    pub ca_file: Option<PathBuf>,
    /// Every key starts with it (inside a `{...}` hash tag) and `:`.
    pub key_prefix: String,
    /// Replicas that must acknowledge a lock, an unlock, a kick or an admission (`WAIT`).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    pub session_cache: Duration,
    pub outage_grace: Duration,
}

impl RedisConfig {
    /// Whether the sentinels, and the master they name, are spoken to over TLS (`rediss://`).
    pub fn sentinel_tls(&self) -> bool {
        self.sentinels.iter().any(|s| split_sentinel(s).0)
    }

    /// The sentinels' `host:port`, without a scheme.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| split_sentinel(s).1.to_owned())
            .collect()
    }
}

/// A sentinel entry as (TLS, `host:port`): `rediss://host:port` is TLS, `host:port` plain TCP.
pub fn split_sentinel(entry: &str) -> (bool, &str) {
    match entry.strip_prefix("rediss://") {
        Some(addr) => (true, addr),
        None => (false, entry),
    }
}
