//! The Redis store's connection to its master: how to reach it ([`RedisOptions`], from
//! `[store.redis]`: one URL, or Sentinel), how the master is found and checked, and one call of a
//! library function ([`Inner::fcall`]) with its failure rules.
//!
//! - **Finding the master.** With `urls`, the one URL. With `sentinels` and `master_name`, each
//!   sentinel in turn is asked `SENTINEL get-master-addr-by-name` (short time-outs), the answer is
//!   connected to, and `ROLE` must say `master`; otherwise the next sentinel, and rounds again
//!   until [`FIND_BUDGET`] is spent (no client waits more than 5 s on the store). Sentinels that
//!   all answer that they know no such master are a configuration error naming
//!   `store.redis.master_name`; sentinels that cannot be reached are [`StoreError::Remote`].
//!   Sentinels are spoken to without a password (`password_file` is for Redis itself).
//! - **TLS.** A `rediss://` master in `urls`, and sentinels written `rediss://host:port`, are
//!   spoken to over TLS; with TLS sentinels the master they name is too (the usual deployment,
//!   `tls-replication yes`). Every TLS connection is verified, by the name or address in its URL
//!   or the one the sentinel gave, against the system's trust anchors plus `ca_file`: one client
//!   builder ([`client`]) for all of them. A certificate that is not trusted is a
//!   [`StoreError::Remote`] that says so and names `store.redis.ca_file`.
//! - **Checking a new master.** Every connection to a master, the first and each one after, is
//!   checked before any call uses it: Redis 7.0 or later, the library loaded (`FUNCTION LOAD
//!   REPLACE`; it replicates, but a replica promoted before it arrived, or a Redis that came back
//!   empty, has none), and the locks and unlocks this gateway remembers written back
//!   ([`LockMemory`], `restore_locks`), so that a lock lost in a failover or an empty restart
//!   comes back before any check could miss it.
//! - **Forgetting it.** One multiplexed connection carries every call. A call that fails on I/O,
//!   a time-out, `READONLY`, `NOREPLICAS`, `LOADING`, `MASTERDOWN` or a dropped connection forgets
//!   it, and the next call finds the master again (asking the sentinels, checking `ROLE`). With
//!   Sentinel a watcher also asks a sentinel every [`WATCH_EVERY`] which master it names, and
//!   forgets a connection to any other: a master that was stopped (`SIGSTOP`) and replaced is
//!   not written to when it wakes, before Sentinel turns it into a replica. Sentinel's
//!   `+switch-master` event is not relied on (redis-rs ignores it; the watcher polls instead).
//!   A call already sent to a master that then stopped may still run there when it wakes; its
//!   caller had an error (a 503), and the demoted master's resync from the new one drops it.
//! - **Nothing is sent twice behind the caller's back.** The redis crate does not re-send a
//!   command after a reconnect, and no retry layer is added: the failed call is the caller's
//!   [`StoreError::Remote`] (a 503), so a failure is never counted twice. The one exception is a
//!   function the server does not know (`FUNCTION FLUSH`, a master without the library): the
//!   library is loaded again, the remembered locks written back, and the call made once more,
//!   which is safe because the call never ran.
//! - `BUSY`, a `WAIT` short of replicas and every other error are a [`StoreError`]: the caller
//!   fails closed. There is no in-memory fallback.
//! - Calls that must reach replicas (`WAIT`) run on connections of their own to the same master,
//!   since `WAIT` blocks the connection it is sent on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use super::memory::LockMemory;
use super::wire::{self, Restored};
use crate::config::{RedisConfig, Secret};
use crate::store::StoreError;

/// The library's source, loaded with `FUNCTION LOAD REPLACE` on every new master connection.
pub const LIBRARY: &str = include_str!("policy.lua");
/// The library's name: its version, so that gateways of two versions can run side by side.
pub const LIBRARY_NAME: &str = "faspex_gate_v2";

/// The oldest Redis that has functions.
const MIN_VERSION: (u32, u32) = (7, 0);
/// Finding and checking a master takes at most this, waiting for another caller's search
/// included; any one answer then at most [`RESPONSE_TIMEOUT`] (plus `wait_timeout` for `WAIT`):
/// no client waits more than 5 s on the store.
pub const FIND_BUDGET: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most one call waits: finding the master, then its answer. No client waits on the store
/// longer (a session lookup that first waited for another's round trip has what is left).
pub(crate) const CALL_BUDGET: Duration = FIND_BUDGET.saturating_add(RESPONSE_TIMEOUT);
/// Connecting to a sentinel, and its answer, take at most this.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// Between two rounds over the sentinels.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// After a search for the master failed, calls within this get its error at once instead of
/// queueing for a search each.
const FAILED_FOR: Duration = Duration::from_millis(250);
/// How often the watcher asks a sentinel which master it names.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Where the functions take their time from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    /// Redis's `TIME`: the `now` a caller passes is ignored, so gateways with skewed clocks agree.
    /// Production.
    Server,
    /// The `now` the caller passes (tests); a call without one takes the latest given.
    Given,
    /// Redis's `TIME` plus an offset that makes it the caller's `now`, the offset tied to the
    /// second of `TIME` it was computed from (the function refuses a call whose second has
    /// passed, and the store asks again). For running the conformance suite, whose checks move
    /// time by hours, with time from Redis: it proves the functions read `TIME` and use it, not
    /// that they cope with a real clock's jitter. Test builds only.
    #[cfg(any(test, feature = "test-support"))]
    ServerShifted,
}

/// Where the master is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One master (`urls`).
    Url(url::Url),
    /// The master the sentinels (`host:port`) name `master_name`; with `tls`, the sentinels and
    /// that master over TLS.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        tls: bool,
    },
}

/// How to reach the Redis store and what to ask of it: `[store.redis]`, with the password read.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub target: Target,
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
        let target = if c.sentinels.is_empty() {
            Target::Url(c.urls.first().cloned().ok_or_else(|| {
                StoreError::Setting {
                    key: "store.redis.urls",
                    reason: "needs one master, e.g. [\"redis://redis.example.org:6379\"], or \
                         sentinels and master_name"
                        .into(),
                }
            })?)
        } else {
            let master_name = c.master_name.clone().ok_or_else(|| StoreError::Setting {
                key: "store.redis.master_name",
                reason: "must name the master the sentinels watch".into(),
            })?;
            let tls = c.sentinel_tls();
            if c.ca_file.is_some() && !tls {
                return Err(StoreError::Setting {
                    key: "store.redis.ca_file",
                    reason: "is a trust anchor for TLS, but the sentinels are plain host:port; \
                             write them rediss://host:port for TLS"
                        .into(),
                });
            }
            Target::Sentinel {
                sentinels: c.sentinel_addrs(),
                master_name,
                tls,
            }
        };
        Ok(Self {
            target,
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
            target: Target::Url(url),
            username: None,
            password: None,
            ca_file: None,
            key_prefix: key_prefix.to_owned(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            time,
        }
    }

    /// Options for the master `master_name` behind `sentinels` (`host:port`, plain TCP) with
    /// defaults (tests).
    pub fn sentinel(
        sentinels: Vec<String>,
        master_name: &str,
        key_prefix: &str,
        time: Time,
    ) -> Self {
        Self {
            target: Target::Sentinel {
                sentinels,
                master_name: master_name.to_owned(),
                tls: false,
            },
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

    /// Where the master is, in words for logs and errors (no secret).
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Url(u) => crate::config::redact_url(u).to_string(),
            Target::Sentinel {
                sentinels,
                master_name,
                tls,
            } => format!(
                "master {master_name} of sentinels {}{}",
                sentinels.join(", "),
                if *tls { " (TLS)" } else { "" }
            ),
        }
    }

    /// The key naming where the master is.
    fn server_key(&self) -> &'static str {
        match self.target {
            Target::Url(_) => "store.redis.urls",
            Target::Sentinel { .. } => "store.redis.master_name",
        }
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
pub fn check_version(
    version: Option<(u32, u32, u32)>,
    url: &str,
    key: &'static str,
) -> Result<(), StoreError> {
    match version {
        Some((major, minor, _)) if (major, minor) >= MIN_VERSION => Ok(()),
        Some((major, minor, patch)) => Err(StoreError::Setting {
            key,
            reason: format!(
                "{url} runs Redis {major}.{minor}.{patch}; faspex-gate needs Redis 7.0 or later \
                 (functions)"
            ),
        }),
        None => Err(StoreError::Setting {
            key,
            reason: format!("{url} does not say its Redis version (INFO server)"),
        }),
    }
}

/// Whether an error means the connection is gone or unusable (forget it, find the master again).
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("READONLY" | "LOADING" | "MASTERDOWN" | "NOREPLICAS")
        )
}

/// Whether an error says the function is not there (the library is gone).
fn missing_function(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT") || e.to_string().contains("Function not found")
}

/// Whether a connection failed because the server's certificate was refused (rustls's
/// "invalid peer certificate": an unknown CA, another name, expired).
fn untrusted_certificate(e: &RedisError) -> bool {
    e.to_string().contains("invalid peer certificate")
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
        _ if untrusted_certificate(e) => format!(
            "{what}: the server's TLS certificate is not trusted ({e}); store.redis.ca_file \
             names the CA that signs the Redis and Sentinel certificates, next to the system's"
        ),
        _ if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() => {
            format!("{what}: Redis cannot be reached ({e})")
        }
        _ => format!("{what}: {e}"),
    };
    StoreError::Remote { reason }
}

fn remote(reason: String) -> StoreError {
    StoreError::Remote { reason }
}

/// Every function of the library (without its `faspex_gate_v2_` prefix): the steps, and the
/// `op` values of `faspex_gate_store_errors_total`.
pub const FUNCTIONS: [&str; 21] = [
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
    "restore_locks",
    "import_session",
    "import_lock",
];

/// The library function `name`, as registered.
fn function(name: &str) -> String {
    format!("{LIBRARY_NAME}_{name}")
}

/// `host:port`, the host in brackets when it is an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A checked connection to the master, and how to open more to it.
#[derive(Clone)]
struct Master {
    conn: MultiplexedConnection,
    client: Client,
    /// `host:port` (or the redacted URL): compared with what the sentinels name.
    addr: String,
    /// Which connection this is: a failed call forgets only its own.
    generation: u64,
}

/// One sentinel, and a connection to it kept between questions.
struct Sentinel {
    addr: String,
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
}

/// The connection to the master, found when first needed and again after it broke. Dropping it
/// stops its watcher.
pub(crate) struct Conn {
    inner: Arc<Inner>,
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
}

impl std::ops::Deref for Conn {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(h) = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

/// What [`Conn`] holds (shared with its watcher).
pub(crate) struct Inner {
    opts: RedisOptions,
    config: AsyncConnectionConfig,
    /// The client for `urls`' one master.
    url_client: Option<Client>,
    /// `ca_file`'s trust anchors and the system's, read once, when a connection is TLS.
    anchors: Option<Vec<u8>>,
    sentinels: Vec<Sentinel>,
    current: tokio::sync::Mutex<Option<Master>>,
    /// The last failed search for the master, and when.
    failed: Mutex<Option<(Instant, StoreError)>>,
    /// Connections of their own for calls followed by `WAIT`, with the master's generation.
    waiters: Mutex<Vec<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
    memory: LockMemory,
    /// The latest `now` a caller gave (milliseconds): the time of calls without one, when time
    /// is given, and the memory's clock.
    last_now: AtomicU64,
    written_back: Mutex<Restored>,
}

impl Conn {
    /// Set up the clients (nothing is sent yet).
    pub(crate) fn new(opts: RedisOptions) -> Result<Self, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT + opts.wait_timeout));
        let tls = match &opts.target {
            Target::Url(url) => url.scheme() == "rediss",
            Target::Sentinel { tls, .. } => *tls,
        };
        let anchors = match &opts.ca_file {
            Some(ca) if tls => Some(trust_anchors(ca)?),
            _ => None,
        };
        let (url_client, sentinels) = match &opts.target {
            Target::Url(url) => (
                Some(client(
                    url.as_str(),
                    &opts,
                    anchors.as_deref(),
                    "store.redis.urls",
                    true,
                )?),
                vec![],
            ),
            Target::Sentinel { sentinels, tls, .. } => {
                let s = sentinels
                    .iter()
                    .map(|addr| {
                        let client = client(
                            &format!("{}://{addr}", scheme(*tls)),
                            &opts,
                            anchors.as_deref(),
                            "store.redis.sentinels",
                            false,
                        )?;
                        Ok(Sentinel {
                            addr: addr.clone(),
                            client,
                            conn: Mutex::new(None),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                (None, s)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                config,
                url_client,
                anchors,
                sentinels,
                current: tokio::sync::Mutex::new(None),
                failed: Mutex::new(None),
                waiters: Mutex::new(Vec::new()),
                generations: AtomicU64::new(0),
                memory: LockMemory::default(),
                last_now: AtomicU64::new(0),
                written_back: Mutex::new(Restored::default()),
            }),
            watcher: Mutex::new(None),
        })
    }

    /// Find the master and check it (its version, the user's rights, the library); with
    /// Sentinel, start the watcher.
    pub(crate) async fn prepare(&self) -> Result<(), StoreError> {
        self.inner.current().await?;
        if matches!(self.inner.opts.target, Target::Sentinel { .. }) {
            let weak = Arc::downgrade(&self.inner);
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_EVERY).await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.check_master().await;
                }
            });
            let old = self
                .watcher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(task.abort_handle());
            if let Some(old) = old {
                old.abort();
            }
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn opts(&self) -> &RedisOptions {
        &self.opts
    }

    /// The locks and unlocks this gateway remembers.
    pub(crate) fn memory(&self) -> &LockMemory {
        &self.memory
    }

    /// The latest `now` a caller gave, in milliseconds.
    pub(crate) fn last_now(&self) -> u64 {
        self.last_now.load(Ordering::Relaxed)
    }

    fn note(&self, now: Option<crate::clock::Timestamp>) {
        if let Some(now) = now {
            self.last_now.fetch_max(now.as_millis(), Ordering::Relaxed);
        }
    }

    /// What the write-backs so far wrote, refused and kept.
    pub(crate) fn written_back(&self) -> Restored {
        *self.written_back.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The checked connection to the master, finding one when there is none.
    async fn current(&self) -> Result<Master, StoreError> {
        let find = async {
            let mut slot = self.current.lock().await;
            if let Some(m) = slot.as_ref() {
                return Ok(m.clone());
            }
            let recent = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some((at, e)) = recent {
                if at.elapsed() < FAILED_FOR {
                    return Err(e);
                }
            }
            let r = self.open_master().await;
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(m) => {
                    *failed = None;
                    *slot = Some(m.clone());
                    Ok(m)
                }
                Err(e) => {
                    *failed = Some((Instant::now(), e.clone()));
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(FIND_BUDGET, find).await {
            Ok(r) => r,
            Err(_) => Err(remote(format!(
                "no master of {} answered within {FIND_BUDGET:?}",
                self.opts.describe()
            ))),
        }
    }

    /// Forget the connection of `generation` (not a newer one), and its `WAIT` connections.
    async fn forget(&self, generation: u64) {
        let mut slot = self.current.lock().await;
        if slot.as_ref().is_some_and(|m| m.generation == generation) {
            *slot = None;
        }
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(g, _)| *g != generation);
    }

    /// Find the master, connect, check it and write back what this gateway remembers.
    async fn open_master(&self) -> Result<Master, StoreError> {
        let (client, mut conn, addr) = match (&self.opts.target, &self.url_client) {
            (Target::Sentinel { master_name, .. }, _) => self.discover(master_name).await?,
            (Target::Url(url), Some(client)) => {
                let addr = crate::config::redact_url(url).to_string();
                let conn = self.open(client, &addr, CONNECT_TIMEOUT).await?;
                (client.clone(), conn, addr)
            }
            (Target::Url(_), None) => return Err(remote("no client for the master".into())),
        };
        self.check_server(&mut conn, &addr).await?;
        self.restore(&mut conn, &addr).await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            tracing::warn!(master = %addr, "connected to the Redis master again");
        } else {
            tracing::info!(master = %addr, "connected to the Redis master");
        }
        Ok(Master {
            conn,
            client,
            addr,
            generation,
        })
    }

    /// Open a connection with `client` to `addr` within `timeout`.
    async fn open(
        &self,
        client: &Client,
        addr: &str,
        timeout: Duration,
    ) -> Result<MultiplexedConnection, StoreError> {
        let config = self
            .config
            .clone()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(1))));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| match e.kind() {
                redis::ErrorKind::AuthenticationFailed => StoreError::Setting {
                    key: "store.redis.password_file",
                    reason: format!(
                        "Redis at {addr} refused the user and password (store.redis.username, \
                         store.redis.password_file)"
                    ),
                },
                _ if no_permission(&e) => StoreError::Setting {
                    key: "store.redis.username",
                    reason: format!("Redis at {addr} refused the ACL user: {e}"),
                },
                _ => failed(&format!("connecting to {addr}"), &e),
            })
    }

    /// Ask the sentinels in turn for the master, connect to the answer and check with `ROLE`
    /// that it is one; rounds again until most of [`FIND_BUDGET`] is spent.
    async fn discover(
        &self,
        master_name: &str,
    ) -> Result<(Client, MultiplexedConnection, String), StoreError> {
        let tls = matches!(self.opts.target, Target::Sentinel { tls: true, .. });
        let deadline = Instant::now() + FIND_BUDGET * 4 / 5;
        loop {
            let (mut answered, mut unknown) = (0, 0);
            let mut last = None;
            for s in &self.sentinels {
                let (host, port) = match self.ask(s, master_name).await {
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                    Ok(None) => {
                        answered += 1;
                        unknown += 1;
                        continue;
                    }
                    Ok(Some(a)) => {
                        answered += 1;
                        a
                    }
                };
                let addr = host_port(&host, port);
                // A host this sentinel names that makes no URL (e.g. `0.0.0.0`) is this
                // sentinel's bad answer: ask the next one rather than end the search.
                let client = match client(
                    &format!("{}://{addr}", scheme(tls)),
                    &self.opts,
                    self.anchors.as_deref(),
                    "store.redis.sentinels",
                    true,
                ) {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(StoreError::Remote {
                            reason: format!(
                                "sentinel {} named master {addr}, which cannot be connected \
                                 to: {e}",
                                s.addr
                            ),
                        });
                        continue;
                    }
                };
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(CONNECT_TIMEOUT);
                let mut c = match self.open(&client, &addr, left).await {
                    Ok(c) => c,
                    Err(e @ StoreError::Setting { .. }) => return Err(e),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                match role(&mut c).await {
                    Ok(r) if r == "master" => return Ok((client, c, addr)),
                    Ok(r) => {
                        last = Some(remote(format!(
                            "sentinel {} names {addr} as master {master_name}, but it is a {r} \
                             (ROLE)",
                            s.addr
                        )))
                    }
                    Err(e) => last = Some(failed(&format!("asking {addr} its role"), &e)),
                }
            }
            if answered > 0 && unknown == answered {
                return Err(StoreError::Setting {
                    key: "store.redis.master_name",
                    reason: format!(
                        "the sentinels ({}) know no master named {master_name}",
                        self.sentinels
                            .iter()
                            .map(|s| s.addr.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(last.unwrap_or_else(|| {
                    remote(format!("no master of {} was found", self.opts.describe()))
                }));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Sentinel `s`'s answer for the master's address; `None` when it knows no such master.
    async fn ask(
        &self,
        s: &Sentinel,
        master_name: &str,
    ) -> Result<Option<(String, u16)>, StoreError> {
        let cached = s.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut c = match cached {
            Some(c) => c,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                    .set_response_timeout(Some(SENTINEL_TIMEOUT));
                let c = s
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| failed(&format!("connecting to sentinel {}", s.addr), &e))?;
                *s.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                c
            }
        };
        let r: Result<Option<(String, u16)>, RedisError> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master_name)
            .query_async(&mut c)
            .await;
        r.map_err(|e| {
            *s.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
            failed(&format!("asking sentinel {} for the master", s.addr), &e)
        })
    }

    /// The watcher's step: forget the connection when the sentinels name another master.
    async fn check_master(&self) {
        let Target::Sentinel { master_name, .. } = &self.opts.target else {
            return;
        };
        let Some(held) = self.current.try_lock().ok().and_then(|m| m.clone()) else {
            return;
        };
        for s in &self.sentinels {
            match self.ask(s, master_name).await {
                Ok(Some((host, port))) => {
                    let named = host_port(&host, port);
                    if named != held.addr {
                        tracing::warn!(
                            old = %held.addr,
                            new = %named,
                            sentinel = %s.addr,
                            "Sentinel names a new Redis master; leaving the old one"
                        );
                        self.forget(held.generation).await;
                    }
                    return;
                }
                Ok(None) | Err(_) => continue,
            }
        }
    }

    /// Check a new master: its version, the user's rights, the library loaded.
    async fn check_server(
        &self,
        c: &mut MultiplexedConnection,
        addr: &str,
    ) -> Result<(), StoreError> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(c)
            .await
            .map_err(|e| {
                if no_permission(&e) {
                    StoreError::Setting {
                        key: "store.redis.username",
                        reason: format!("the ACL user may not run INFO on {addr}: {e}"),
                    }
                } else {
                    failed(&format!("asking {addr} its version"), &e)
                }
            })?;
        check_version(parse_version(&info), addr, self.opts.server_key())?;
        self.load_library(c).await
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

    /// Write back the locks and unlocks this gateway remembers (`restore_locks`), and `WAIT`
    /// for the replicas when it wrote any.
    async fn restore(&self, c: &mut MultiplexedConnection, addr: &str) -> Result<(), StoreError> {
        let now = self.last_now();
        let Some(payload) = self.memory.payload(now) else {
            return Ok(());
        };
        let clock = match self.opts.time {
            Time::Server => "s".to_owned(),
            _ => format!("g:{now}"),
        };
        let root = self.opts.root();
        let reply: String = redis::cmd("FCALL")
            .arg(function("restore_locks"))
            .arg(2)
            .arg(&root)
            .arg(format!("{root}locks"))
            .arg(clock)
            .arg(payload)
            .query_async(c)
            .await
            .map_err(|e| failed("writing back the locks this gateway remembers", &e))?;
        let r: Restored = wire::parse("a write-back of locks", &reply)?;
        {
            let mut total = self.written_back.lock().unwrap_or_else(|e| e.into_inner());
            total.written += r.written;
            total.refused += r.refused;
            total.kept += r.kept;
        }
        if r.written > 0 {
            tracing::warn!(
                master = %addr,
                written = r.written,
                refused = r.refused,
                "wrote back locks this Redis had lost"
            );
            if self.opts.wait_replicas > 0 {
                if let Err((e, _)) = self.wait_on(c).await {
                    tracing::error!(error = %e, "the replicas did not acknowledge the locks written back");
                }
            }
        }
        Ok(())
    }

    /// The clock argument for a call at the caller's `now` (`c` reads `TIME` in test builds).
    #[cfg_attr(not(any(test, feature = "test-support")), allow(unused_variables))]
    async fn clock(
        &self,
        c: &mut MultiplexedConnection,
        now: Option<crate::clock::Timestamp>,
    ) -> Result<String, StoreError> {
        match self.opts.time {
            Time::Server => Ok("s".into()),
            Time::Given => Ok(format!(
                "g:{}",
                now.map_or_else(|| self.last_now(), |t| t.as_millis())
            )),
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
        self.note(now);
        let m = self.current().await?;
        let mut c = m.conn.clone();
        match self
            .fcall_on(&mut c, &m.addr, name, keys, now, args, read_only)
            .await
        {
            Ok(r) => Ok(r),
            Err((e, broken)) => {
                if broken {
                    self.forget(m.generation).await;
                }
                Err(e)
            }
        }
    }

    /// Call `name` on a connection of its own, then, when the answer asks for it (its `wait`
    /// flag), `WAIT` for `wait_replicas` on it. Returns the answer and, when it waited, whether
    /// the replicas acknowledged in time.
    pub(crate) async fn fcall_waited(
        &self,
        name: &str,
        keys: &[&str],
        now: Option<crate::clock::Timestamp>,
        args: &[&[u8]],
    ) -> Result<(String, Option<Result<(), StoreError>>), StoreError> {
        if self.opts.wait_replicas == 0 {
            return self
                .fcall(name, keys, now, args, false)
                .await
                .map(|r| (r, None));
        }
        self.note(now);
        let m = self.current().await?;
        let pooled = {
            let mut pool = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            pool.retain(|(g, _)| *g == m.generation);
            pool.pop().map(|(_, c)| c)
        };
        let mut c = match pooled {
            Some(c) => c,
            None => self.open(&m.client, &m.addr, CONNECT_TIMEOUT).await?,
        };
        let reply = match self
            .fcall_on(&mut c, &m.addr, name, keys, now, args, false)
            .await
        {
            Ok(r) => r,
            Err((e, broken)) => {
                if broken {
                    self.forget(m.generation).await;
                }
                return Err(e);
            }
        };
        let mut broken = false;
        let waited = if wire::wants_wait(&reply) {
            Some(self.wait_on(&mut c).await.map_err(|(e, b)| {
                broken = b;
                e
            }))
        } else {
            None
        };
        if broken {
            self.forget(m.generation).await;
        } else {
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((m.generation, c));
        }
        Ok((reply, waited))
    }

    /// `WAIT` for `wait_replicas` within `wait_timeout` on `c`; the error says whether the
    /// connection is broken.
    async fn wait_on(&self, c: &mut MultiplexedConnection) -> Result<(), (StoreError, bool)> {
        let r: Result<i64, RedisError> = redis::cmd("WAIT")
            .arg(self.opts.wait_replicas)
            .arg(self.opts.wait_timeout.as_millis() as u64)
            .query_async(c)
            .await;
        match r {
            Ok(n) if n >= i64::from(self.opts.wait_replicas) => Ok(()),
            Ok(n) => Err((
                remote(format!(
                    "{n} of the {} replicas store.redis.wait_replicas asks for acknowledged \
                     within {:?}",
                    self.opts.wait_replicas, self.opts.wait_timeout
                )),
                false,
            )),
            Err(e) => Err((
                failed("waiting for the replicas (WAIT)", &e),
                breaks_connection(&e),
            )),
        }
    }

    /// One call on `c`; on a missing function, load the library, write back the remembered
    /// locks, and call once more. The error says whether the connection is broken.
    #[allow(clippy::too_many_arguments)]
    async fn fcall_on(
        &self,
        c: &mut MultiplexedConnection,
        addr: &str,
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
                    self.restore(c, addr).await.map_err(|e| (e, true))?;
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

    /// A plain command on the master's connection.
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        what: &str,
    ) -> Result<T, StoreError> {
        let m = self.current().await?;
        let mut c = m.conn.clone();
        match cmd.query_async::<T>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if breaks_connection(&e) {
                    self.forget(m.generation).await;
                }
                Err(failed(what, &e))
            }
        }
    }
}

/// What `ROLE` says the server is: `master`, `slave` or `sentinel`.
async fn role(c: &mut MultiplexedConnection) -> Result<String, RedisError> {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query_async(c).await?;
    Ok(reply
        .first()
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .unwrap_or_default())
}

/// `rediss` (TLS) or `redis`.
fn scheme(tls: bool) -> &'static str {
    if tls {
        "rediss"
    } else {
        "redis"
    }
}

/// The redis client for `url`, the one builder of every connection (the master, in `urls` or
/// named by a sentinel, and the sentinels): `as_user` (Redis itself, not a sentinel) with the
/// ACL user and password; for `rediss://`, verified by the URL's host against the system's trust
/// anchors plus `anchors` (`ca_file`'s, [`trust_anchors`]) when given, else the system's alone.
/// A URL that cannot be used names `key`.
fn client(
    url: &str,
    opts: &RedisOptions,
    anchors: Option<&[u8]>,
    key: &'static str,
    as_user: bool,
) -> Result<Client, StoreError> {
    let bad_url = |e: RedisError| StoreError::Setting {
        key,
        reason: format!("{url} cannot be used: {e}"),
    };
    let info = url.into_connection_info().map_err(bad_url)?;
    let mut redis_settings = info.redis_settings().clone();
    if let (true, Some(user)) = (as_user, &opts.username) {
        redis_settings = redis_settings.set_username(user);
    }
    if let (true, Some(pw)) = (as_user, &opts.password) {
        let pw = std::str::from_utf8(pw.expose()).map_err(|_| StoreError::Setting {
            key: "store.redis.password_file",
            reason: "the password is not UTF-8 text".into(),
        })?;
        redis_settings = redis_settings.set_password(pw);
    }
    let info = info.set_redis_settings(redis_settings);
    if url.starts_with("rediss://") {
        if let Some(root_cert) = anchors {
            let root_cert = root_cert.to_vec();
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
        let err =
            check_version(parse_version(info), "redis://r:6379", "store.redis.urls").unwrap_err();
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
            assert!(check_version(parse_version(ok), "x", "k").is_ok(), "{ok}");
        }
        assert!(check_version(parse_version("# Server\r\n"), "x", "k").is_err());
        assert!(check_version(parse_version("redis_version:x.y"), "x", "k").is_err());
    }

    #[test]
    fn the_library_names_its_version_and_every_function() {
        assert!(LIBRARY.starts_with(&format!("#!lua name={LIBRARY_NAME}\n")));
        for f in FUNCTIONS {
            assert!(LIBRARY.contains(&format!("register('{f}', {f}")), "{f}");
        }
        assert_eq!(
            LIBRARY.matches("\nregister('").count(),
            FUNCTIONS.len(),
            "FUNCTIONS lists every function the library registers"
        );
    }
}
