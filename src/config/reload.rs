//! What a reload may change, said once. [`RestartOnly`] is the value of every key that needs a
//! restart, gathered from a validated [`Config`]: the listeners and everything read when they are
//! bound or a connection is set up (`[server]` but `trusted_proxies`), the upstream and its
//! connection pool (`[upstream]`), the admin listener's address, the session cookie and the key
//! that signs it (`[session]`), the state store (`[store]`, `[store.redis]` included), and the
//! helpdesk console's listener and group (`helpdesk.listen`, `helpdesk.group`;
//! `helpdesk.allowed_networks` is reloadable). Every other key is reloadable.
//!
//! A reload ([`Reload::new`]) takes the new file's configuration, names each restart-only key
//! whose value changed, and puts the running values back, so that the configuration in force is
//! always one the running listeners, pool, cookies and store were built from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::model::{Config, StoreKind};
use super::secret::Secret;

/// One line per restart-only value: a field of [`RestartOnly`], its type, and where it is in
/// [`Config`], whose dotted path is the key's name unless `as` gives another. A key may take two
/// lines (`session.secret_file`: the path and the secret read from it); it is named once.
macro_rules! restart_only {
    (@key [$key:literal] $($path:ident).+) => { $key };
    (@key [] $first:ident $(. $rest:ident)*) => {
        concat!(stringify!($first) $(, ".", stringify!($rest))*)
    };
    ($( $field:ident: $ty:ty = $($path:ident).+ $(as $key:literal)?; )*) => {
        /// The restart-only keys' values in one configuration (see the module documentation).
        #[derive(Clone, Debug, PartialEq)]
        pub struct RestartOnly {
            $( $field: $ty, )*
        }

        impl RestartOnly {
            /// The restart-only part of `cfg`.
            pub fn of(cfg: &Config) -> Self {
                RestartOnly {
                    $( $field: cfg.$($path).+.clone(), )*
                }
            }

            /// The keys whose value differs in `new`, each once, in the order of the list.
            pub fn changes(&self, new: &RestartOnly) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(
                    let key = restart_only!(@key [$($key)?] $($path).+);
                    if self.$field != new.$field && !keys.contains(&key) {
                        keys.push(key);
                    }
                )*
                keys
            }

            /// Set these values in `cfg`.
            fn restore(self, cfg: &mut Config) {
                $( cfg.$($path).+ = self.$field; )*
            }
        }
    };
}

restart_only! {
    listen: Option<SocketAddr> = server.listen;
    http_listen: Option<SocketAddr> = server.http_listen;
    tls_handshake_timeout: Duration = server.tls_handshake_timeout;
    header_read_timeout: Duration = server.header_read_timeout;
    max_header_bytes: usize = server.max_header_bytes;
    max_connections: usize = server.max_connections;
    max_connections_per_ip: usize = server.max_connections_per_ip;
    ipv6_prefix_len: u8 = server.ipv6_prefix_len;
    hsts: Option<http::HeaderValue> = server.hsts;
    strip_response_headers: Vec<http::HeaderName> = server.strip_response_headers;
    workers: usize = server.workers;
    shutdown_timeout: Duration = server.shutdown_timeout;
    body_idle_timeout: Duration = server.body_idle_timeout;
    upstream_url: url::Url = upstream.url;
    upstream_ca_file: Option<PathBuf> = upstream.ca_file;
    connect_timeout: Duration = upstream.connect_timeout;
    response_timeout: Duration = upstream.response_timeout;
    preserve_host: bool = upstream.preserve_host;
    upstream_max_connections: usize = upstream.max_connections;
    admin_listen: Option<SocketAddr> = admin.listen;
    cookie_name: String = session.cookie_name;
    secret_file: PathBuf = session.secret_file;
    secret: Secret = session.secret as "session.secret_file";
    store_kind: StoreKind = store.kind;
    store_path: PathBuf = store.path;
    redis_urls: Vec<url::Url> = store.redis.urls;
    redis_sentinels: Vec<String> = store.redis.sentinels;
    redis_master_name: Option<String> = store.redis.master_name;
    redis_username: Option<String> = store.redis.username;
    redis_password_file: Option<PathBuf> = store.redis.password_file;
    redis_password: Option<Secret> = store.redis.password as "store.redis.password_file";
    redis_ca_file: Option<PathBuf> = store.redis.ca_file;
    redis_key_prefix: String = store.redis.key_prefix;
    redis_wait_replicas: u32 = store.redis.wait_replicas;
    redis_wait_timeout: Duration = store.redis.wait_timeout;
    redis_session_cache: Duration = store.redis.session_cache;
    redis_outage_grace: Duration = store.redis.outage_grace;
    log_format: super::model::LogFormat = log.format;
    helpdesk_listen: Option<SocketAddr> = helpdesk.listen;
    helpdesk_group: Option<String> = helpdesk.group;
}

/// A new configuration as a reload applies it.
#[derive(Debug)]
pub struct Reload {
    /// The configuration in force from now on: the new file's reloadable keys, the running
    /// restart-only ones.
    pub effective: Config,
    /// The restart-only keys that the file changed and that keep their running values.
    pub needs_restart: Vec<&'static str>,
}

impl Reload {
    /// Apply `new` (a configuration just read and validated) over `running`.
    pub fn new(running: &Config, new: Config) -> Reload {
        let kept = RestartOnly::of(running);
        let needs_restart = kept.changes(&RestartOnly::of(&new));
        let mut effective = new;
        kept.restore(&mut effective);
        if effective.admin.token.is_none() {
            // The file turned the admin listener off (so no token was read), but the listener
            // stays on until a restart: it keeps its token rather than run without one.
            effective.admin.token = running.admin.token.clone();
            effective.admin.token_file = running.admin.token_file.clone();
        }
        Reload {
            effective,
            needs_restart,
        }
    }
}
