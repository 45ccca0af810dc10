//! The raw configuration layer: serde structs that mirror the TOML file key for key, with the
//! defaults of the interface contract (its `## Configuration`).
//!
//! Every value is kept in the form a person writes it (durations, addresses and enums are
//! strings); `validate.rs` turns this layer into the typed [`Config`](super::Config). Unknown keys
//! are rejected (`deny_unknown_fields`), and scalar types are deserialized strictly (see
//! [`strict`]): the `config` crate would otherwise round `2.5` to `3` or read `"yes"` as `1`.

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawConfig {
    pub server: RawServer,
    pub tls: RawTls,
    pub upstream: RawUpstream,
    pub admin: RawAdmin,
    pub policy: RawPolicy,
    pub session: RawSession,
    pub auth: RawAuth,
    pub faspex: RawFaspex,
    pub pages: RawPages,
    pub audit: RawAudit,
    pub store: RawStore,
    pub log: RawLog,
    pub helpdesk: RawHelpdesk,
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawServer {
    #[serde(deserialize_with = "strict::string")]
    pub listen: String,
    #[serde(deserialize_with = "strict::string")]
    pub http_listen: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub trusted_proxies: Vec<String>,
    #[serde(deserialize_with = "strict::string")]
    pub tls_handshake_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub header_read_timeout: String,
    #[serde(deserialize_with = "strict::uint")]
    pub max_header_bytes: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub max_connections: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub max_connections_per_ip: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub ipv6_prefix_len: u64,
    #[serde(deserialize_with = "strict::string")]
    pub hsts: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub strip_response_headers: Vec<String>,
    #[serde(deserialize_with = "strict::uint")]
    pub workers: u64,
    #[serde(deserialize_with = "strict::string")]
    pub shutdown_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub body_idle_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            http_listen: String::new(),
            trusted_proxies: Vec::new(),
            tls_handshake_timeout: "10s".into(),
            header_read_timeout: "30s".into(),
            max_header_bytes: 65536,
            max_connections: 10000,
            max_connections_per_ip: 512,
            ipv6_prefix_len: 64,
            hsts: "max-age=31536000".into(),
            strip_response_headers: vec![
                "Server".into(),
                "X-Powered-By".into(),
                "X-IBM-Aspera".into(),
            ],
            workers: 0,
            shutdown_timeout: "30s".into(),
            body_idle_timeout: "5m".into(),
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawTls {
    #[serde(deserialize_with = "strict::string")]
    pub cert_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub key_file: String,
}

/// `[upstream]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawUpstream {
    #[serde(deserialize_with = "strict::string")]
    pub url: String,
    #[serde(deserialize_with = "strict::string")]
    pub ca_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub connect_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub response_timeout: String,
    #[serde(deserialize_with = "strict::boolean")]
    pub preserve_host: bool,
    #[serde(deserialize_with = "strict::uint")]
    pub max_connections: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: String::new(),
            ca_file: String::new(),
            connect_timeout: "5s".into(),
            response_timeout: "120s".into(),
            preserve_host: true,
            max_connections: 512,
        }
    }
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawAdmin {
    #[serde(deserialize_with = "strict::string")]
    pub listen: String,
    #[serde(deserialize_with = "strict::string")]
    pub token_file: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9180".into(),
            token_file: String::new(),
        }
    }
}

/// `[policy]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawPolicy {
    #[serde(deserialize_with = "strict::uint")]
    pub max_sessions: u64,
    #[serde(deserialize_with = "strict::string")]
    pub one_client_per_account: String,
    #[serde(deserialize_with = "strict::string")]
    pub idle_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub api_idle_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub absolute_timeout: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub activity_exempt_paths: Vec<String>,
    #[serde(deserialize_with = "strict::uint")]
    pub lockout_threshold: u64,
    #[serde(deserialize_with = "strict::string")]
    pub lockout_window: String,
    #[serde(deserialize_with = "strict::string")]
    pub lockout_duration: String,
    #[serde(deserialize_with = "strict::string")]
    pub lockout_key: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub username_domains: Vec<String>,
    #[serde(deserialize_with = "strict::uint")]
    pub login_attempts_per_ip_per_minute: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub public_requests_per_ip_per_minute: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub public_inflight_per_ip: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub max_tracked_usernames: u64,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            max_sessions: 10,
            one_client_per_account: "reject".into(),
            idle_timeout: "1h".into(),
            api_idle_timeout: "1h".into(),
            absolute_timeout: "12h".into(),
            activity_exempt_paths: Vec::new(),
            lockout_threshold: 5,
            lockout_window: "1m".into(),
            lockout_duration: "1h".into(),
            lockout_key: "account".into(),
            username_domains: Vec::new(),
            login_attempts_per_ip_per_minute: 30,
            public_requests_per_ip_per_minute: 600,
            public_inflight_per_ip: 32,
            max_tracked_usernames: 100_000,
        }
    }
}

/// `[session]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawSession {
    #[serde(deserialize_with = "strict::string")]
    pub cookie_name: String,
    #[serde(deserialize_with = "strict::string")]
    pub secret_file: String,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            cookie_name: "__Host-faspex-gate".into(),
            secret_file: String::new(),
        }
    }
}

/// `[auth]`, with its `[auth.ldap]` and `[auth.file]` tables.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawAuth {
    #[serde(deserialize_with = "strict::string")]
    pub backend: String,
    #[serde(deserialize_with = "strict::string")]
    pub cache_ttl: String,
    #[serde(deserialize_with = "strict::uint")]
    pub max_checks_per_second: u64,
    #[serde(deserialize_with = "strict::uint")]
    pub max_concurrent_hashes: u64,
    #[serde(deserialize_with = "strict::string")]
    pub local_accounts: String,
    pub ldap: RawLdap,
    pub file: RawFileAuth,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            backend: "ldap".into(),
            cache_ttl: "5m".into(),
            max_checks_per_second: 50,
            max_concurrent_hashes: 2,
            local_accounts: "none".into(),
            ldap: RawLdap::default(),
            file: RawFileAuth::default(),
        }
    }
}

/// `[auth.ldap]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawLdap {
    #[serde(deserialize_with = "strict::string_list")]
    pub urls: Vec<String>,
    #[serde(deserialize_with = "strict::boolean")]
    pub starttls: bool,
    #[serde(deserialize_with = "strict::string")]
    pub ca_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub user_dn_template: String,
    #[serde(deserialize_with = "strict::string")]
    pub bind_dn: String,
    #[serde(deserialize_with = "strict::string")]
    pub bind_password_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub base_dn: String,
    #[serde(deserialize_with = "strict::string")]
    pub user_filter: String,
    #[serde(deserialize_with = "strict::string")]
    pub require_group: String,
    #[serde(deserialize_with = "strict::boolean")]
    pub nested_groups: bool,
    #[serde(deserialize_with = "strict::uint")]
    pub pool_size: u64,
    #[serde(deserialize_with = "strict::string")]
    pub timeout: String,
}

impl Default for RawLdap {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            starttls: false,
            ca_file: String::new(),
            user_dn_template: String::new(),
            bind_dn: String::new(),
            bind_password_file: String::new(),
            base_dn: String::new(),
            user_filter: "(sAMAccountName={username})".into(),
            require_group: String::new(),
            nested_groups: false,
            pool_size: 8,
            timeout: "5s".into(),
        }
    }
}

/// `[auth.file]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawFileAuth {
    #[serde(deserialize_with = "strict::string")]
    pub path: String,
}

/// `[faspex]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawFaspex {
    #[serde(deserialize_with = "strict::string")]
    pub login_path: String,
    #[serde(deserialize_with = "strict::string")]
    pub username_field: String,
    #[serde(deserialize_with = "strict::string")]
    pub password_field: String,
    #[serde(deserialize_with = "strict::string")]
    pub logout_path: String,
    #[serde(deserialize_with = "strict::string")]
    pub session_cookie: String,
    #[serde(deserialize_with = "strict::string")]
    pub token_path: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub public_paths: Vec<String>,
    #[serde(deserialize_with = "strict::string_list")]
    pub deny: Vec<String>,
    #[serde(deserialize_with = "strict::string")]
    pub max_inspected_body: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub password_forms: Vec<String>,
    #[serde(deserialize_with = "strict::string_list")]
    pub forward_cookies: Vec<String>,
}

impl Default for RawFaspex {
    fn default() -> Self {
        Self {
            login_path: "/aspera/faspex/login".into(),
            username_field: "user[name]".into(),
            password_field: "user[password]".into(),
            logout_path: "/aspera/faspex/logout".into(),
            session_cookie: "_faspex_session".into(),
            token_path: "/aspera/faspex/auth/oauth2/token".into(),
            public_paths: [
                "/aspera/faspex/external_deliveries/",
                "/aspera/faspex/external/",
                "/aspera/http-gwy/",
                "/aspera/faspex/javascripts/",
                "/aspera/faspex/stylesheets/",
                "/aspera/faspex/images/",
            ]
            .map(String::from)
            .to_vec(),
            deny: vec!["* /aspera/faspex/package_relay/".into()],
            max_inspected_body: "1MiB".into(),
            password_forms: vec![
                "POST /aspera/faspex/admin/users".into(),
                "PUT /aspera/faspex/account/password".into(),
            ],
            forward_cookies: Vec::new(),
        }
    }
}

/// `[pages]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawPages {
    #[serde(deserialize_with = "strict::string")]
    pub helpdesk: String,
    #[serde(deserialize_with = "strict::string")]
    pub timezone: String,
}

impl Default for RawPages {
    fn default() -> Self {
        Self {
            helpdesk: "your IT helpdesk".into(),
            timezone: String::new(),
        }
    }
}

/// `[audit]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawAudit {
    #[serde(deserialize_with = "strict::string")]
    pub path: String,
    #[serde(deserialize_with = "strict::string")]
    pub gateway: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            path: "-".into(),
            gateway: String::new(),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawLog {
    #[serde(deserialize_with = "strict::string")]
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}

/// `[helpdesk]`: the helpdesk console.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawHelpdesk {
    #[serde(deserialize_with = "strict::string")]
    pub listen: String,
    #[serde(deserialize_with = "strict::string")]
    pub group: String,
    #[serde(deserialize_with = "strict::string_list")]
    pub allowed_networks: Vec<String>,
}

/// `[store]`, with its `[store.redis]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawStore {
    #[serde(deserialize_with = "strict::string")]
    pub kind: String,
    #[serde(deserialize_with = "strict::string")]
    pub path: String,
    pub redis: RawRedis,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: "embedded".into(),
            path: "/var/lib/faspex-gate".into(),
            redis: RawRedis::default(),
        }
    }
}

/// `[store.redis]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of keys")]
pub(crate) struct RawRedis {
    #[serde(deserialize_with = "strict::string_list")]
    pub urls: Vec<String>,
    #[serde(deserialize_with = "strict::string_list")]
    pub sentinels: Vec<String>,
    #[serde(deserialize_with = "strict::string")]
    pub master_name: String,
    #[serde(deserialize_with = "strict::string")]
    pub username: String,
    #[serde(deserialize_with = "strict::string")]
    pub password_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub ca_file: String,
    #[serde(deserialize_with = "strict::string")]
    pub key_prefix: String,
    #[serde(deserialize_with = "strict::uint")]
    pub wait_replicas: u64,
    #[serde(deserialize_with = "strict::string")]
    pub wait_timeout: String,
    #[serde(deserialize_with = "strict::string")]
    pub session_cache: String,
    #[serde(deserialize_with = "strict::string")]
    pub outage_grace: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            sentinels: Vec::new(),
            master_name: String::new(),
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            key_prefix: "faspex-gate".into(),
            wait_replicas: 0,
            wait_timeout: "100ms".into(),
            session_cache: "1s".into(),
            outage_grace: "30s".into(),
        }
    }
}

/// Strict scalar deserializers for `#[serde(deserialize_with = ...)]`.
///
/// Values from the TOML file arrive typed; values from the environment arrive as strings, so a
/// number or a boolean is also accepted as the exact string form (`"10"`, `"true"`). Anything else
/// is a type error: no rounding, no `"yes"` for `true`, no number where a string belongs.
pub(crate) mod strict {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
    use serde::Deserialize;

    /// A string, and only a string.
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        // `deserialize_any`, not `deserialize_string`: the `config` crate would turn a number
        // into its string form for the latter.
        d.deserialize_any(StringVisitor)
    }

    /// A list of strings. (A single string is not silently taken as a one-element list.)
    pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(ListVisitor)
    }

    /// `true` or `false` (the environment's `"true"`/`"false"` in any case included).
    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        d.deserialize_any(BoolVisitor)
    }

    /// A whole number ≥ 0 (or its decimal string form, from the environment).
    pub fn uint<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        d.deserialize_any(UintVisitor(PhantomData))
    }

    struct StringVisitor;

    impl Visitor<'_> for StringVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string (put the value in double quotes)")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
    }

    /// One element of a string list.
    struct Element(String);

    impl<'de> Deserialize<'de> for Element {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            string(d).map(Element)
        }
    }

    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(r#"a list of strings, e.g. ["a", "b"]"#)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(Element(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }

    struct BoolVisitor;

    impl Visitor<'_> for BoolVisitor {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            if v.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if v.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                Err(E::invalid_value(Unexpected::Str(v), &self))
            }
        }
    }

    struct UintVisitor<T>(PhantomData<T>);

    impl<T: TryFrom<u64>> Visitor<'_> for UintVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number (0 or more)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &"a smaller number"))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            let digits = v.trim();
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = digits.parse::<u64>() {
                    return self.visit_u64(n);
                }
            }
            Err(E::invalid_value(Unexpected::Str(v), &self))
        }
    }
}
