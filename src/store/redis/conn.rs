//! The Redis store's connection to its master: how to reach it ([`RedisOptions`], from
//! `[store.redis]`), the checks at connect (Redis 7.0 or later, the function library loaded, the
//! ACL user's rights), and one call of a library function ([`Conn::fcall`]) with its failure
//! rules.
//!
//! - One multiplexed connection carries every call; a call that fails on I/O, a time-out,
//!   `READONLY` or a dropped connection forgets it, and the next call connects again. Where that
//!   connection goes is [`Conn::connect`]'s one "find the master" step: today the one URL, later
//!   Sentinel.
//! - Nothing is sent twice behind the caller's back. The redis crate does not re-send a command
//!   after a reconnect, and no retry layer is added. The one exception is a function the server
//!   does not know (`FUNCTION FLUSH`, a failover to a server without the library): the library is
//!   loaded again and the call made once more, which is safe because the call never ran.
//! - `BUSY`, `READONLY`, `NOREPLICAS`, a time-out and every other error are a [`StoreError`]:
//!   the caller fails closed. There is no in-memory fallback.
//! - Calls that must reach replicas (`WAIT`) run on a connection of their own, since `WAIT`
//!   blocks the connection it is sent on.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use crate::config::{RedisConfig, Secret};
use crate::store::StoreError;

/// The library's source, loaded with `FUNCTION LOAD REPLACE` at connect.
pub const LIBRARY: &str = include_str!("policy.lua");
/// The library's name: its version, so that gateways of two versions can run side by side.
pub const LIBRARY_NAME: &str = "faspex_gate_v1";

/// The oldest Redis that has functions.
const MIN_VERSION: (u32, u32) = (7, 0);
/// Connecting, and any one answer, take at most this (plus `wait_timeout` for `WAIT`): no client
/// waits more than 5 s on the store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the functions take their time from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    /// Redis's `TIME`: the `now` a caller passes is ignored, so gateways with skewed clocks agree.
    /// Production.
    Server,
    /// The `now` the caller passes (tests).
    Given,
    /// Redis's `TIME` plus an offset that makes it the caller's `now`, the offset tied to the
    /// second of `TIME` it was computed from (the function refuses a call whose second has
    /// passed, and the store asks again). For running the conformance suite, whose checks move
    /// time by hours, with time from Redis: it proves the functions read `TIME` and use it, not
    /// that they cope with a real clock's jitter. Test builds only.
    #[cfg(any(test, feature = "test-support"))]
    ServerShifted,
}

/// How to reach the Redis store and what to ask of it: `[store.redis]`, with the password read.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub url: url::Url,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    pub time: Time,
}

impl RedisOptions {
    /// The options for a validated `[store.redis]`, with time from Redis.
    pub fn from_config(c: &RedisConfig) -> Result<Self, StoreError> {
        let url = c.urls.first().cloned().ok_or_else(|| StoreError::Setting {
            key: "store.redis.sentinels",
            reason: "Sentinel is not supported by this build yet; give one master in urls".into(),
        })?;
        Ok(Self {
            url,
            username: c.username.clone(),
            password: c.password.clone(),
            ca_file: c.ca_file.clone(),
            key_prefix: c.key_prefix.clone(),
            wait_replicas: c.wait_replicas,
            wait_timeout: c.wait_timeout,
            time: Time::Server,
        })
    }

    /// Options for a Redis at `url` with defaults (tests).
    pub fn new(url: url::Url, key_prefix: &str, time: Time) -> Self {
        Self {
            url,
            username: None,
            password: None,
            ca_file: None,
            key_prefix: key_prefix.to_owned(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            time,
        }
    }

    /// The root every key starts with: the prefix in a hash tag, and `:`.
    pub fn root(&self) -> String {
        format!("{{{}}}:", self.key_prefix)
    }
}

/// `redis_version` from `INFO server`, as (major, minor, patch).
pub fn parse_version(info: &str) -> Option<(u32, u32, u32)> {
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether a server of `version` has what the store needs, or why not.
pub fn check_version(version: Option<(u32, u32, u32)>, url: &str) -> Result<(), StoreError> {
    match version {
        Some((major, minor, _)) if (major, minor) >= MIN_VERSION => Ok(()),
        Some((major, minor, patch)) => Err(StoreError::Setting {
            key: "store.redis.urls",
            reason: format!(
                "{url} runs Redis {major}.{minor}.{patch}; faspex-gate needs Redis 7.0 or later \
                 (functions)"
            ),
        }),
        None => Err(StoreError::Setting {
            key: "store.redis.urls",
            reason: format!("{url} does not say its Redis version (INFO server)"),
        }),
    }
}

/// Whether an error means the connection is gone or unusable (forget it, connect again later).
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.code() == Some("READONLY")
        || e.code() == Some("LOADING")
        || e.code() == Some("MASTERDOWN")
}

/// Whether an error says the function is not there (the library is gone).
fn missing_function(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT") || e.to_string().contains("Function not found")
}

fn no_permission(e: &RedisError) -> bool {
    e.code() == Some("NOPERM") || e.to_string().contains("NOPERM")
}

/// A Redis error as a store error, in words that name no secret.
pub(crate) fn failed(what: &str, e: &RedisError) -> StoreError {
    let reason = match e.code() {
        Some("READONLY") => {
            format!("{what}: the server is a read-only replica now (READONLY); nothing was changed")
        }
        Some("BUSY") => format!("{what}: Redis is busy running a script (BUSY)"),
        Some("NOREPLICAS") => format!("{what}: not enough replicas (NOREPLICAS)"),
        _ if e.is_timeout() => format!("{what}: Redis did not answer in time"),
        _ if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() => {
            format!("{what}: Redis cannot be reached ({e})")
        }
        _ => format!("{what}: {e}"),
    };
    StoreError::Remote { reason }
}

/// The connection to the master, made when first needed and again after it broke.
pub(crate) struct Conn {
    opts: RedisOptions,
    client: Client,
    config: AsyncConnectionConfig,
    shared: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Connections of their own for calls followed by `WAIT`.
    waiters: Mutex<Vec<MultiplexedConnection>>,
}

/// The library function `name`, as registered.
fn function(name: &str) -> String {
    format!("{LIBRARY_NAME}_{name}")
}

impl Conn {
    /// Set up the client (nothing is sent yet).
    pub(crate) fn new(opts: RedisOptions) -> Result<Self, StoreError> {
        let client = client(&opts)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + opts.wait_timeout));
        Ok(Self {
            opts,
            client,
            config,
            shared: tokio::sync::Mutex::new(None),
            waiters: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn opts(&self) -> &RedisOptions {
        &self.opts
    }

    /// Find the master and open a connection to it, checked: the one place where Sentinel's
    /// "ask the sentinels, then ROLE" will go.
    async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let url = crate::config::redact_url(&self.opts.url);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| match e.kind() {
                redis::ErrorKind::AuthenticationFailed => StoreError::Setting {
                    key: "store.redis.password_file",
                    reason: format!(
                        "Redis at {url} refused the user and password (store.redis.username, \
                         store.redis.password_file)"
                    ),
                },
                _ if no_permission(&e) => StoreError::Setting {
                    key: "store.redis.username",
                    reason: format!("Redis at {url} refused the ACL user: {e}"),
                },
                _ => failed(&format!("connecting to {url}"), &e),
            })?;
        Ok(conn)
    }

    /// The shared connection, connecting when there is none.
    async fn shared(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.shared.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.connect().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_shared(&self) {
        *self.shared.lock().await = None;
    }

    /// Check the server (its version, the user's rights) and load the library.
    pub(crate) async fn prepare(&self) -> Result<(), StoreError> {
        let mut c = self.shared().await?;
        let url = crate::config::redact_url(&self.opts.url);
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .map_err(|e| {
                if no_permission(&e) {
                    StoreError::Setting {
                        key: "store.redis.username",
                        reason: format!("the ACL user may not run INFO on {url}: {e}"),
                    }
                } else {
                    failed(&format!("asking {url} its version"), &e)
                }
            })?;
        check_version(parse_version(&info), &url)?;
        self.load_library(&mut c).await?;
        Ok(())
    }

    async fn load_library(&self, c: &mut MultiplexedConnection) -> Result<(), StoreError> {
        let r: Result<String, RedisError> = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(LIBRARY)
            .query_async(c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if no_permission(&e) => Err(StoreError::Setting {
                key: "store.redis.username",
                reason: format!(
                    "the ACL user may not load the gateway's functions (FUNCTION LOAD); grant it \
                     +function|load +fcall +fcall_ro and the keys ~{{{}}}:*: {e}",
                    self.opts.key_prefix
                ),
            }),
            Err(e) => Err(failed("loading the gateway's functions", &e)),
        }
    }

    /// The clock argument for a call at the caller's `now`.
    async fn clock(
        &self,
        c: &mut MultiplexedConnection,
        now: Option<crate::clock::Timestamp>,
    ) -> Result<String, StoreError> {
        match self.opts.time {
            Time::Server => Ok("s".into()),
            Time::Given => Ok(format!("g:{}", now.map_or(0, |t| t.as_millis()))),
            #[cfg(any(test, feature = "test-support"))]
            Time::ServerShifted => {
                let Some(now) = now else {
                    return Ok("s".into());
                };
                let (sec, _): (i64, i64) = redis::cmd("TIME")
                    .query_async(c)
                    .await
                    .map_err(|e| failed("reading TIME", &e))?;
                let offset = now.as_millis() as i64 - sec * 1000;
                Ok(format!("t:{offset}:{sec}"))
            }
        }
    }

    /// Call library function `name` with the root and `keys` as KEYS, and the clock and `args`
    /// as ARGV; `read_only` ones with `FCALL_RO`. Returns the JSON it answered.
    pub(crate) async fn fcall(
        &self,
        name: &str,
        keys: &[&str],
        now: Option<crate::clock::Timestamp>,
        args: &[&[u8]],
        read_only: bool,
    ) -> Result<String, StoreError> {
        let mut c = self.shared().await?;
        let r = self
            .fcall_on(&mut c, name, keys, now, args, read_only)
            .await;
        if let Err((e, broken)) = &r {
            if *broken {
                self.forget_shared().await;
            }
            return Err(e.clone());
        }
        r.map_err(|(e, _)| e)
    }

    /// Call `name` on a connection of its own, then, when the answer `needs_wait` says so,
    /// `WAIT` for `wait_replicas` on it. Returns the answer and, when it waited, whether the
    /// replicas acknowledged in time.
    pub(crate) async fn fcall_waited(
        &self,
        name: &str,
        keys: &[&str],
        now: Option<crate::clock::Timestamp>,
        args: &[&[u8]],
        needs_wait: impl Fn(&str) -> bool,
    ) -> Result<(String, Option<Result<(), StoreError>>), StoreError> {
        if self.opts.wait_replicas == 0 {
            return self
                .fcall(name, keys, now, args, false)
                .await
                .map(|r| (r, None));
        }
        let pooled = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let reply = self
            .fcall_on(&mut c, name, keys, now, args, false)
            .await
            .map_err(|(e, _)| e)?;
        let waited = if needs_wait(&reply) {
            let r: Result<i64, RedisError> = redis::cmd("WAIT")
                .arg(self.opts.wait_replicas)
                .arg(self.opts.wait_timeout.as_millis() as u64)
                .query_async(&mut c)
                .await;
            Some(match r {
                Ok(n) if n >= i64::from(self.opts.wait_replicas) => Ok(()),
                Ok(n) => Err(StoreError::Remote {
                    reason: format!(
                        "{n} of the {} replicas store.redis.wait_replicas asks for acknowledged \
                         within {:?}",
                        self.opts.wait_replicas, self.opts.wait_timeout
                    ),
                }),
                Err(e) => Err(failed("waiting for the replicas (WAIT)", &e)),
            })
        } else {
            None
        };
        if !matches!(&waited, Some(Err(StoreError::Remote { reason })) if reason.contains("cannot be reached"))
        {
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
        Ok((reply, waited))
    }

    /// One call on `c`; on a missing function, load the library and call once more. The error
    /// says whether the connection is broken.
    async fn fcall_on(
        &self,
        c: &mut MultiplexedConnection,
        name: &str,
        keys: &[&str],
        now: Option<crate::clock::Timestamp>,
        args: &[&[u8]],
        read_only: bool,
    ) -> Result<String, (StoreError, bool)> {
        let root = self.opts.root();
        let mut reloaded = false;
        let mut moved = 0;
        loop {
            let clock = self.clock(c, now).await.map_err(|e| (e, true))?;
            let mut cmd = redis::cmd(if read_only { "FCALL_RO" } else { "FCALL" });
            cmd.arg(function(name)).arg(1 + keys.len()).arg(&root);
            for k in keys {
                cmd.arg(format!("{root}{k}"));
            }
            cmd.arg(clock);
            for a in args {
                cmd.arg(*a);
            }
            match cmd.query_async::<String>(c).await {
                Ok(reply) => return Ok(reply),
                Err(e) if missing_function(&e) && !reloaded => {
                    // The call never ran: loading the library and asking again sends nothing twice.
                    tracing::warn!(
                        function = name,
                        "the gateway's Redis functions were missing; loading them again"
                    );
                    reloaded = true;
                    self.load_library(c).await.map_err(|e| (e, false))?;
                }
                Err(e) if e.code() == Some("CLOCKMOVED") && moved < 5 => moved += 1,
                Err(e) if no_permission(&e) => {
                    return Err((
                        StoreError::Setting {
                            key: "store.redis.username",
                            reason: format!(
                                "the ACL user may not call the gateway's functions: {e}"
                            ),
                        },
                        false,
                    ))
                }
                Err(e) => {
                    let broken = breaks_connection(&e);
                    return Err((failed(name, &e), broken));
                }
            }
        }
    }

    /// A plain command on the shared connection.
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: &str,
    ) -> Result<T, StoreError> {
        let mut c = self.shared().await?;
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if breaks_connection(&e) {
                    self.forget_shared().await;
                }
                Err(failed(what, &e))
            }
        }
    }
}

/// The redis client for `opts`: the URL, the ACL user and password, and for `rediss://` the
/// system's trust anchors plus `ca_file`.
fn client(opts: &RedisOptions) -> Result<Client, StoreError> {
    let bad_url = |e: RedisError| StoreError::Setting {
        key: "store.redis.urls",
        reason: format!("cannot be used: {e}"),
    };
    let info = opts.url.as_str().into_connection_info().map_err(bad_url)?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(user) = &opts.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(pw) = &opts.password {
        let pw = std::str::from_utf8(pw.expose()).map_err(|_| StoreError::Setting {
            key: "store.redis.password_file",
            reason: "the password is not UTF-8 text".into(),
        })?;
        redis_settings = redis_settings.set_password(pw);
    }
    let info = info.set_redis_settings(redis_settings);
    if opts.url.scheme() == "rediss" {
        if let Some(ca) = &opts.ca_file {
            let root_cert = trust_anchors(ca)?;
            return Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| StoreError::Setting {
                key: "store.redis.ca_file",
                reason: format!("cannot be used: {e}"),
            });
        }
    }
    Client::open(info).map_err(bad_url)
}

/// The system's trust anchors and `ca_file`'s, as one PEM (the redis crate takes one bundle in
/// place of the system's, so the system's are added to it: `ca_file` is an extra anchor).
fn trust_anchors(ca_file: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    use base64::Engine as _;
    let mut pem = std::fs::read(ca_file).map_err(|e| StoreError::Setting {
        key: "store.redis.ca_file",
        reason: format!("cannot read {}: {e}", ca_file.display()),
    })?;
    pem.push(b'\n');
    for cert in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_older_than_7_is_refused_naming_the_url_key() {
        let info = "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n";
        assert_eq!(parse_version(info), Some((6, 2, 14)));
        let err = check_version(parse_version(info), "redis://r:6379").unwrap_err();
        assert!(matches!(
            err,
            StoreError::Setting {
                key: "store.redis.urls",
                ..
            }
        ));
        assert!(err.to_string().contains("Redis 6.2.14"), "{err}");
        assert!(err.to_string().contains("7.0 or later"), "{err}");
        for ok in [
            "redis_version:7.0.15",
            "redis_version:7.2.4\r\n",
            "redis_version:8.0",
        ] {
            assert!(check_version(parse_version(ok), "x").is_ok(), "{ok}");
        }
        assert!(check_version(parse_version("# Server\r\n"), "x").is_err());
        assert!(check_version(parse_version("redis_version:x.y"), "x").is_err());
    }

    #[test]
    fn the_library_names_its_version_and_every_function() {
        assert!(LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        for f in [
            "admit",
            "session",
            "client_session",
            "bearer_session",
            "set_upstream_cookie",
            "add_bearer",
            "end_session",
            "end_account",
            "sessions",
            "sweep",
            "begin_attempt",
            "finish_attempt",
            "lock_state",
            "lock_account",
            "unlock_account",
            "lockouts",
            "counts",
            "probe",
        ] {
            assert!(LIBRARY.contains(&format!("register('{f}', {f}")), "{f}");
        }
    }
}
