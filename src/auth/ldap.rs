//! The `ldap` backend: credential checks against LDAP or Active Directory with ldap3.
//!
//! **Two ways to find the account.**
//! - *Direct bind*: bind as `user_dn_template` with `{username}` escaped as an RFC 4514 DN value.
//! - *Search, then bind*: a service account (`bind_dn`) searches `base_dn` with `user_filter`, the
//!   name escaped as an RFC 4515 filter value, for exactly one entry, then binds as that entry.
//!   No entry (or more than one) runs a *dummy bind* to a DN that cannot exist, so an unknown
//!   user costs the directory, and the caller, what a wrong password costs.
//!
//! **Names.** The name goes to the directory as typed (less a listed domain), escaped, so that
//! the directory does its own matching (RFC 4518 for OpenLDAP, its own for Active Directory).
//! With a service account the engine asks first which entry a name belongs to
//! ([`Directory::lookup`]: the same search, also reading the entry's value of the attribute
//! `user_filter` compares names with, [`naming_attribute`]) and counts failures, locks and seats
//! by that entry; the check then binds the entry found, with no second search.
//!
//! **Group restriction.** With `require_group`, a successful bind also needs membership:
//! a base search on the group for `(|(member=DN)(uniqueMember=DN))`, or with `nested_groups`
//! a base search on the user for Active Directory's `LDAP_MATCHING_RULE_IN_CHAIN`
//! (`(memberOf:1.2.840.113556.1.4.1941:=GROUP)`). In direct-bind mode the user runs that
//! search itself, on the connection it just bound; with a service account, the service account does.
//! A non-member is refused exactly like a wrong password.
//!
//! **Answers.** Bind result 0 accepts. `invalidCredentials` (49), and the other answers that mean
//! "not this account" (no such object, invalid DN syntax, inappropriate authentication,
//! insufficient access, unwilling to perform), reject: a disabled, expired or AD-locked account is
//! a plain wrong password to the caller. Active Directory's `data 52e`-style subcodes are logged
//! with their meaning and never shown. `busy`, `unavailable`, transport errors and silence past
//! `timeout` mean the server is not answering: the next URL is tried, and the failed one is
//! skipped for [`DOWN_FOR`]. If no server answers, the check fails with [`DirectoryError`], which
//! the engine counts against no one (503). Down-marking reads the gateway's injected [`Clock`],
//! as every decision that depends on time does.
//!
//! **Connections.** Two pools of `pool_size` reusable connections each: one bound as the service
//! account for searches, one for user binds (a bind resets a connection's identity, so they are
//! never mixed). Connections are made on demand to the first server not marked down. A pooled
//! connection that fails (or, after [`MAYBE_DROPPED_AFTER`] idle, times out) is replaced once
//! without blaming the server; idle ones older than [`IDLE_MAX`] are closed when the pool is next
//! used. Each step of a check tries each server at most once. Connect, StartTLS, the TLS
//! handshake and every operation have `timeout`. ldaps:// and StartTLS verify the server against
//! the system roots plus `ca_file`.
//!
//! **Equal work.** Every path of a check sends the same operations: with a service account,
//! search, bind (a DN that cannot exist for an unknown user), then with `require_group` the
//! membership search, whatever the bind said (about the service account's own entry for an
//! unknown user, which costs about what a user's does). With direct bind and `require_group`, a failed bind still sends the membership
//! search, but anonymously, which Active Directory refuses at once while a member's is evaluated:
//! a small timing difference remains there. Use a service account where that matters.
//!
//! An empty password is refused before anything is sent: an empty simple bind is an
//! unauthenticated bind, which many servers answer "success".

#[cfg(any(test, feature = "test-support"))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::directory::{Directory, DirectoryError, Lookup, Verdict};
use crate::clock::{Clock, Timestamp};
use crate::config::{LdapConfig, Secret};

/// How long a server that failed is skipped before it is tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// An idle pooled connection older than this is closed rather than reused (Active Directory
/// drops idle connections after 15 minutes by default; this stays well inside that).
pub const IDLE_MAX: Duration = Duration::from_secs(120);

/// A pooled connection idle at least this long that then times out may have been dropped
/// silently by a firewall: it gets one retry on a new connection before its server is blamed.
/// (One used more recently that times out means the server stopped answering.)
const MAYBE_DROPPED_AFTER: Duration = Duration::from_secs(30);
/// The setting that names the group a login needs, for errors about it.
const REQUIRE_GROUP: &str = "auth.ldap.require_group";

/// Active Directory's bind subcodes (the `data NNN` in the diagnostic text of result 49).
pub fn ad_subcode_meaning(code: &str) -> &'static str {
    match code {
        "525" => "user not found",
        "52e" => "invalid credentials",
        "530" => "not permitted to log on at this time",
        "531" => "not permitted to log on at this workstation",
        "532" => "password expired",
        "533" => "account disabled",
        "568" => "too many security IDs",
        "701" => "account expired",
        "773" => "password must be reset",
        "775" => "account locked out",
        _ => "unknown subcode",
    }
}

/// The subcode in an Active Directory diagnostic such as
/// `80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563`.
pub fn ad_subcode(text: &str) -> Option<&str> {
    let at = text.find("data ")? + "data ".len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The DN a direct bind uses: `{username}` escaped as an RFC 4514 attribute value.
pub fn user_dn(template: &str, account: &str) -> String {
    template.replace("{username}", &ldap3::dn_escape(account))
}

/// The search filter for an account: `{username}` escaped as an RFC 4515 assertion value.
pub fn user_filter(template: &str, account: &str) -> String {
    template.replace("{username}", &ldap3::ldap_escape(account))
}

/// The attribute `user_filter` compares the whole name with: the first `(ATTR={username})` in
/// it (`uid` in `(&(objectClass=person)(|(uid={username})(cn={username})))`). `None` when the
/// name is only part of a value, or only in an extensible or ordering match.
pub fn naming_attribute(filter: &str) -> Option<String> {
    const NAME: &str = "{username}";
    let mut rest = filter;
    while let Some(at) = rest.find(NAME) {
        let (before, after) = (&rest[..at], &rest[at + NAME.len()..]);
        if after.starts_with(')') {
            let attr = before
                .rfind('(')
                .and_then(|open| before[open + 1..].strip_suffix('='));
            if let Some(attr) = attr {
                let plain = attr
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !attr.is_empty() && plain {
                    return Some(attr.to_owned());
                }
            }
        }
        rest = after;
    }
    None
}

/// The attribute type and value of a DN's first attribute value assertion, the value unescaped
/// (RFC 4514): `("uid", "ann lee")` for `uid=ann\20lee,ou=people,…`. `None` for a hex-encoded
/// value or one that is not UTF-8.
pub fn first_rdn(dn: &str) -> Option<(String, String)> {
    let (attr, rest) = dn.split_once('=')?;
    let b = rest.as_bytes();
    if b.first() == Some(&b'#') {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b',' | b'+' | b';' => break,
            b'\\' => match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    let hex = [h, l];
                    let byte = std::str::from_utf8(&hex)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())?;
                    out.push(byte);
                    i += 3;
                }
                (Some(&e), _) => {
                    out.push(e);
                    i += 2;
                }
                (None, _) => break,
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some((attr.trim().to_owned(), String::from_utf8(out).ok()?))
}

/// An entry's own name among its values of `attr`: the one its RDN gives, else the one that
/// prepares least (so the same whatever name found the entry), else the least.
fn entry_name(
    dn: &str,
    attr: &str,
    attrs: &std::collections::HashMap<String, Vec<String>>,
) -> Option<String> {
    use crate::account::prepare;
    let values = attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(attr))
        .map(|(_, v)| v)?;
    if let Some((a, v)) = first_rdn(dn) {
        if a.eq_ignore_ascii_case(attr) {
            if let Ok(rdn) = prepare(&v) {
                if let Some(same) = values.iter().find(|x| prepare(x).is_ok_and(|x| x == rdn)) {
                    return Some(same.clone());
                }
            }
        }
    }
    values
        .iter()
        .filter_map(|v| prepare(v).ok().map(|p| (p, v)))
        .min()
        .map(|(_, v)| v.clone())
        .or_else(|| values.iter().min().cloned())
}

/// One membership question: a base-scope search of `base` that returns an entry when the user is
/// a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupQuery {
    pub base: String,
    pub filter: String,
}

/// The membership search for `user_dn` in `group_dn`.
pub fn group_query(group_dn: &str, nested: bool, user_dn: &str) -> GroupQuery {
    if nested {
        GroupQuery {
            base: user_dn.to_owned(),
            filter: format!(
                "(memberOf:1.2.840.113556.1.4.1941:={})",
                ldap3::ldap_escape(group_dn)
            ),
        }
    } else {
        let dn = ldap3::ldap_escape(user_dn);
        GroupQuery {
            base: group_dn.to_owned(),
            filter: format!("(|(member={dn})(uniqueMember={dn}))"),
        }
    }
}

enum Mode {
    Direct {
        template: String,
    },
    Search {
        bind_dn: String,
        password: Secret,
        base_dn: String,
        filter: String,
        /// The attribute `filter` compares names with ([`naming_attribute`]).
        naming: Option<String>,
        /// Bound when the account is not found: in `base_dn`, named so it cannot exist.
        dummy_dn: String,
    },
}

struct Group {
    dn: String,
    nested: bool,
}

struct Server {
    url: String,
    /// Skipped (tried only after the others) until then, by the injected clock.
    down_until: Mutex<Option<Timestamp>>,
}

/// Why a step did not give an answer.
enum StepError {
    /// The connection failed (reset, closed, TLS): try the next server.
    Transport(String),
    /// The server answered that it cannot serve (busy, unavailable, an unexpected result):
    /// try the next server. It answered, so the connection was not the problem.
    Refused(String),
    /// The server did not answer within `timeout`: try the next one.
    Silent,
    /// The server answered, and another server would answer the same (a configuration problem).
    Fatal(String),
}

fn transport(e: ldap3::LdapError) -> StepError {
    match e {
        ldap3::LdapError::Timeout { .. } => StepError::Silent,
        // Made here, not by the server: every server would get the same.
        ldap3::LdapError::FilterParsing => {
            StepError::Fatal("auth.ldap.user_filter does not make a valid LDAP filter".into())
        }
        e => StepError::Transport(e.to_string()),
    }
}

/// A step's answer, and whether its connection may go back to the pool.
struct Done<T> {
    value: T,
    keep: bool,
}

impl<T> Done<T> {
    fn keep(value: T) -> Self {
        Self { value, keep: true }
    }
}

struct Idle {
    ldap: Ldap,
    server: usize,
    since: Instant,
}

struct Pool {
    name: &'static str,
    /// Service-account connections are bound as `bind_dn` when made.
    service: bool,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
    size: usize,
}

struct Conn {
    ldap: Ldap,
    server: usize,
    /// `Some(how long it had been idle)` for a pooled connection, `None` for a new one.
    idle_for: Option<Duration>,
}

/// Connections opened, binds and searches sent, for tests ([`LdapDirectory::stats`]). Only test
/// builds count (`cfg(test)` or the `test-support` feature); elsewhere this is empty and each
/// count compiles to nothing.
#[derive(Default)]
struct Stats {
    #[cfg(any(test, feature = "test-support"))]
    connects: AtomicU64,
    #[cfg(any(test, feature = "test-support"))]
    binds: AtomicU64,
    #[cfg(any(test, feature = "test-support"))]
    searches: AtomicU64,
}

impl Stats {
    /// A connection was opened.
    fn connected(&self) {
        #[cfg(any(test, feature = "test-support"))]
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// A bind was sent.
    fn bound(&self) {
        #[cfg(any(test, feature = "test-support"))]
        self.binds.fetch_add(1, Ordering::Relaxed);
    }

    /// A search was sent.
    fn searched(&self) {
        #[cfg(any(test, feature = "test-support"))]
        self.searches.fetch_add(1, Ordering::Relaxed);
    }
}

/// See the module documentation.
pub struct LdapDirectory {
    servers: Vec<Server>,
    settings: LdapConnSettings,
    timeout: Duration,
    mode: Mode,
    group: Option<Group>,
    /// `auth.ldap.nested_groups`, for the helpdesk console's group too.
    nested_groups: bool,
    service_pool: Pool,
    bind_pool: Pool,
    stats: Stats,
    /// The `now` that down-marking reads.
    clock: Arc<dyn Clock>,
}

impl LdapDirectory {
    /// Build from the validated configuration. Nothing is contacted yet: a directory that is
    /// down at start makes checks fail (503), not the gateway.
    pub fn new(cfg: &LdapConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        if cfg.urls.is_empty() {
            anyhow::bail!("auth.ldap.urls: no directory server is configured");
        }
        let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(cfg.timeout)
            .set_starttls(cfg.starttls)
            .set_config(Arc::new(tls));
        let mode = match (&cfg.bind_dn, &cfg.base_dn, &cfg.bind_password) {
            (Some(bind_dn), Some(base_dn), Some(password)) => {
                let tag: String = crate::util::random_bytes(8)?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Mode::Search {
                    bind_dn: bind_dn.clone(),
                    password: password.clone(),
                    base_dn: base_dn.clone(),
                    filter: cfg.user_filter.clone(),
                    naming: naming_attribute(&cfg.user_filter),
                    dummy_dn: format!("cn=faspex-gate-no-such-user-{tag},{base_dn}"),
                }
            }
            _ => Mode::Direct {
                template: cfg.user_dn_template.clone().ok_or_else(|| {
                    anyhow::anyhow!("auth.ldap: set user_dn_template, or bind_dn with base_dn")
                })?,
            },
        };
        let pool = |name, service| Pool {
            name,
            service,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(cfg.pool_size.max(1)),
            size: cfg.pool_size.max(1),
        };
        Ok(Self {
            servers: cfg
                .urls
                .iter()
                .map(|u| Server {
                    url: u.as_str().trim_end_matches('/').to_owned(),
                    down_until: Mutex::new(None),
                })
                .collect(),
            settings,
            timeout: cfg.timeout,
            mode,
            group: cfg.require_group.as_ref().map(|dn| Group {
                dn: dn.clone(),
                nested: cfg.nested_groups,
            }),
            nested_groups: cfg.nested_groups,
            service_pool: pool("service", true),
            bind_pool: pool("bind", false),
            stats: Stats::default(),
            clock,
        })
    }

    /// Connections opened, binds and searches sent, since start. Test builds only.
    #[cfg(any(test, feature = "test-support"))]
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.stats.connects.load(Ordering::Relaxed),
            self.stats.binds.load(Ordering::Relaxed),
            self.stats.searches.load(Ordering::Relaxed),
        )
    }

    // ----- servers and connections -----

    fn mark_down(&self, i: usize, why: &str) {
        let s = &self.servers[i];
        *lock(&s.down_until) = Some(self.clock.now() + DOWN_FOR);
        tracing::warn!(
            target: "faspex_gate::auth",
            server = %s.url,
            error = why,
            skip_for_s = DOWN_FOR.as_secs(),
            "directory server not answering; using the next one"
        );
    }

    /// Servers in the order to try, leaving out those this check already tried: those not
    /// marked down, in configured order, then the others, the one that failed longest ago first
    /// (something may have come back).
    fn order(&self, tried: &[usize]) -> Vec<usize> {
        let now = self.clock.now();
        let untried = (0..self.servers.len()).filter(|i| !tried.contains(i));
        let mut up = Vec::new();
        let mut down = Vec::new();
        for i in untried {
            match *lock(&self.servers[i].down_until) {
                Some(until) if until > now => down.push((until, i)),
                _ => up.push(i),
            }
        }
        down.sort();
        up.into_iter()
            .chain(down.into_iter().map(|(_, i)| i))
            .collect()
    }

    async fn connect_to(&self, i: usize, service: bool) -> Result<Ldap, StepError> {
        self.stats.connected();
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(self.settings.clone(), &self.servers[i].url)
                .await
                .map_err(transport)?;
        tokio::spawn(async move {
            let _ = conn.drive().await;
        });
        if service {
            if let Mode::Search {
                bind_dn, password, ..
            } = &self.mode
            {
                let password = std::str::from_utf8(password.expose()).map_err(|_| {
                    StepError::Fatal("auth.ldap.bind_password_file is not UTF-8".into())
                })?;
                self.stats.bound();
                let r = ldap
                    .with_timeout(self.timeout)
                    .simple_bind(bind_dn, password)
                    .await
                    .map_err(transport)?;
                match r.rc {
                    0 => {}
                    51 | 52 => return Err(StepError::Refused(rc_text(r.rc, &r.text))),
                    _ => {
                        return Err(StepError::Fatal(format!(
                            "the service account bind_dn was refused ({}); check auth.ldap.bind_dn \
                             and bind_password_file",
                            rc_text(r.rc, &r.text)
                        )))
                    }
                }
            }
        }
        Ok(ldap)
    }

    /// A connection from `pool` (whose permit the caller holds): an idle one to the first server
    /// of [`LdapDirectory::order`], or a new one. Servers that fail to connect are marked down
    /// and added to `tried`.
    async fn get(
        &self,
        pool: &Pool,
        fresh_only: bool,
        tried: &mut Vec<usize>,
    ) -> Result<Conn, DirectoryError> {
        let order = self.order(tried);
        let Some(&preferred) = order.first() else {
            return Err(DirectoryError("no directory server answered".into()));
        };
        {
            let now = Instant::now();
            let mut idle = lock(&pool.idle);
            // Close what sat unused too long, or belongs to a server we are moving away from.
            idle.retain(|c| c.server == preferred && now.duration_since(c.since) < IDLE_MAX);
            if !fresh_only {
                if let Some(c) = idle.pop() {
                    return Ok(Conn {
                        ldap: c.ldap,
                        server: c.server,
                        idle_for: Some(now.duration_since(c.since)),
                    });
                }
            }
        }
        let mut last = String::new();
        for i in order {
            match self.connect_to(i, pool.service).await {
                Ok(ldap) => {
                    return Ok(Conn {
                        ldap,
                        server: i,
                        idle_for: None,
                    })
                }
                Err(StepError::Fatal(e)) => return Err(DirectoryError(e)),
                Err(StepError::Transport(e) | StepError::Refused(e)) => {
                    self.mark_down(i, &e);
                    tried.push(i);
                    last = format!("{}: {e}", self.servers[i].url);
                }
                Err(StepError::Silent) => {
                    let e = format!("no answer within {:?}", self.timeout);
                    self.mark_down(i, &e);
                    tried.push(i);
                    last = format!("{}: {e}", self.servers[i].url);
                }
            }
        }
        Err(DirectoryError(format!(
            "no directory server answered (last: {last})"
        )))
    }

    fn put(&self, pool: &Pool, conn: Conn) {
        let mut idle = lock(&pool.idle);
        if idle.len() < pool.size {
            idle.push(Idle {
                ldap: conn.ldap,
                server: conn.server,
                since: Instant::now(),
            });
        }
    }

    /// Run `step` on a connection from `pool`, failing over to the next server when one does
    /// not answer. Each server is tried at most once per call (a pooled connection the server
    /// may have closed while idle gets one retry on a new connection first). The pool permit is
    /// held throughout.
    async fn run<'a, T>(
        &'a self,
        pool: &'a Pool,
        step: impl Fn(Ldap) -> BoxFuture<'a, Result<Done<T>, StepError>> + Send + Sync + 'a,
    ) -> Result<T, DirectoryError> {
        let _permit = tokio::time::timeout(self.timeout, pool.permits.acquire())
            .await
            .map_err(|_| {
                DirectoryError(format!(
                    "all {} {} connections stayed busy for {:?}",
                    pool.size, pool.name, self.timeout
                ))
            })?
            .map_err(|_| DirectoryError("the directory client is closed".into()))?;
        let mut tried: Vec<usize> = Vec::new();
        let mut stale_retried = false;
        let mut fresh_only = false;
        loop {
            let conn = self.get(pool, fresh_only, &mut tried).await?;
            // Every operation has its own `timeout`; this is the net over a whole step (at most
            // two operations), with room for the operations' own timeouts to fire first.
            let net = 2 * self.timeout + Duration::from_secs(1);
            let outcome = tokio::time::timeout(net, step(conn.ldap.clone()))
                .await
                .unwrap_or(Err(StepError::Silent));
            // (what failed, and whether a connection closed while idle could explain it)
            let (e, dropped_while_idle) = match outcome {
                Ok(done) => {
                    *lock(&self.servers[conn.server].down_until) = None;
                    if done.keep {
                        self.put(pool, conn);
                    }
                    return Ok(done.value);
                }
                Err(StepError::Fatal(e)) => {
                    self.put(pool, conn);
                    return Err(DirectoryError(e));
                }
                Err(StepError::Silent) => (
                    format!("no answer within {:?}", self.timeout),
                    conn.idle_for
                        .is_some_and(|idle| idle >= MAYBE_DROPPED_AFTER),
                ),
                Err(StepError::Transport(e)) => (e, conn.idle_for.is_some()),
                Err(StepError::Refused(e)) => (e, false),
            };
            let server = conn.server;
            // Dropping it closes it: after a failure its state is unknown.
            let maybe_dropped = dropped_while_idle;
            drop(conn);
            if maybe_dropped && !stale_retried {
                // An idle connection the server or a firewall closed: retry once on a new one
                // to the same server before blaming it.
                stale_retried = true;
                fresh_only = true;
                lock(&pool.idle).retain(|c| c.server != server);
                continue;
            }
            self.mark_down(server, &e);
            tried.push(server);
            if tried.len() >= self.servers.len() {
                return Err(DirectoryError(format!(
                    "no directory server answered (last: {}: {e})",
                    self.servers[server].url
                )));
            }
            fresh_only = true;
        }
    }

    // ----- the steps of a check -----

    /// Search for the entry `name` belongs to as the service account, reading its own name
    /// ([`naming_attribute`]): [`Lookup::NoEntry`] when there is not exactly one.
    async fn find(&self, name: &str) -> Result<Lookup, DirectoryError> {
        let Mode::Search {
            base_dn,
            filter,
            naming,
            ..
        } = &self.mode
        else {
            return Ok(Lookup::Unsupported);
        };
        let filter = user_filter(filter, name);
        let attrs = vec![naming.clone().unwrap_or_else(|| "1.1".to_owned())];
        let found = self
            .run(&self.service_pool, |mut ldap| {
                let filter = filter.clone();
                let attrs = attrs.clone();
                Box::pin(async move {
                    self.stats.searched();
                    ldap.with_search_options(SearchOptions::new().sizelimit(2))
                        .with_timeout(self.timeout);
                    let (entries, done) =
                        bounded_search(&mut ldap, base_dn, Scope::Subtree, &filter, attrs, 2)
                            .await?;
                    search_outcome(done.rc, &done.text, "auth.ldap.base_dn")?;
                    Ok(Done::keep(
                        entries
                            .into_iter()
                            .map(SearchEntry::construct)
                            .collect::<Vec<_>>(),
                    ))
                })
            })
            .await?;
        let n = found.len();
        match found.into_iter().next() {
            Some(e) if n == 1 => {
                let own = naming
                    .as_deref()
                    .and_then(|a| entry_name(&e.dn, a, &e.attrs));
                Ok(Lookup::Entry {
                    dn: e.dn,
                    name: own,
                })
            }
            None => Ok(Lookup::NoEntry),
            Some(_) => {
                tracing::warn!(
                    target: "faspex_gate::auth",
                    account = name,
                    entries = n,
                    "auth.ldap.user_filter matches more than one entry for this account; refused"
                );
                Ok(Lookup::Ambiguous)
            }
        }
    }

    /// Bind as `dn`; when `group` is given, also ask it on the same connection, as that user.
    async fn bind(
        &self,
        dn: &str,
        password: &str,
        account: &str,
        group: Option<&GroupQuery>,
    ) -> Result<Verdict, DirectoryError> {
        self.run(&self.bind_pool, |mut ldap| {
            Box::pin(async move {
                self.stats.bound();
                let r = ldap
                    .with_timeout(self.timeout)
                    .simple_bind(dn, password)
                    .await
                    .map_err(transport)?;
                match (bind_outcome(r.rc, &r.text, account)?, group) {
                    (Verdict::Accepted, Some(q)) => self
                        .member(&mut ldap, q, REQUIRE_GROUP)
                        .await
                        .map(Done::keep),
                    (Verdict::Rejected, Some(q)) => {
                        // Ask anyway (now anonymously), answer ignored, so that a wrong password
                        // costs about what a non-member's right one does. The bind answered, so
                        // the verdict stands even if this fails; a connection that then failed
                        // (stopped answering, broke, or sent more than the search allows and
                        // was cut off mid-answer) is not pooled again.
                        let keep = matches!(
                            self.member(&mut ldap, q, REQUIRE_GROUP).await,
                            Ok(_) | Err(StepError::Fatal(_))
                        );
                        Ok(Done {
                            value: Verdict::Rejected,
                            keep,
                        })
                    }
                    (v, None) => Ok(Done::keep(v)),
                }
            })
        })
        .await
    }

    /// Is the entry in `q`'s group? `key` is the setting that named the group, for errors.
    async fn member(
        &self,
        ldap: &mut Ldap,
        q: &GroupQuery,
        key: &'static str,
    ) -> Result<Verdict, StepError> {
        self.stats.searched();
        ldap.with_timeout(self.timeout);
        let (hits, done) =
            bounded_search(ldap, &q.base, Scope::Base, &q.filter, vec!["1.1"], 1).await?;
        search_outcome(done.rc, &done.text, key)?;
        Ok(if !hits.is_empty() {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }
}

/// The most other messages (referrals, that is search result references, and intermediate
/// responses) one search may bring. Active Directory sends a continuation reference for each
/// partition or child domain in scope: a few, or a few dozen in a large forest.
const MOST_OTHER_MESSAGES: usize = 1000;

/// A search (the handle's options and timeout as set) read as a stream: its entries (not its
/// referrals or intermediate responses) and its result. It can only rightly bring `most`
/// entries (the size limit asked for, or the one entry of a base search), and at most
/// [`MOST_OTHER_MESSAGES`] other messages. A directory that sends more breaks the protocol
/// (RFC 4511 binds a server to the size limit): it is read no further, and the step fails as
/// the server's refusal (its connection is closed, the server marked down and the next one
/// tried; a check that no server answers is a directory failure, counted against no one).
/// Without this, a directory that kept sending was read into memory for the step's whole
/// timeout.
async fn bounded_search<'a, S, A>(
    ldap: &mut Ldap,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: A,
    most: usize,
) -> Result<(Vec<ldap3::ResultEntry>, ldap3::LdapResult), StepError>
where
    S: AsRef<str> + Send + Sync + 'a,
    A: AsRef<[S]> + Send + Sync + 'a,
{
    let mut stream = ldap
        .streaming_search(base, scope, filter, attrs)
        .await
        .map_err(transport)?;
    let mut entries = Vec::new();
    let mut others = 0usize;
    while let Some(e) = stream.next().await.map_err(transport)? {
        if e.is_ref() || e.is_intermediate() {
            others += 1;
            if others > MOST_OTHER_MESSAGES {
                return Err(StepError::Refused(format!(
                    "the directory sent more than {MOST_OTHER_MESSAGES} referrals or \
                     intermediate responses for one search"
                )));
            }
            continue;
        }
        if entries.len() == most {
            return Err(StepError::Refused(format!(
                "the directory sent more entries than the {most} the search allows (its size \
                 limit)"
            )));
        }
        entries.push(e);
    }
    let done = stream.finish().await;
    Ok((entries, done))
}

/// What a bind's result code means for the check.
fn bind_outcome(rc: u32, text: &str, account: &str) -> Result<Verdict, StepError> {
    match rc {
        0 => Ok(Verdict::Accepted),
        49 => {
            match ad_subcode(text) {
                Some(code) => tracing::info!(
                    target: "faspex_gate::auth",
                    account,
                    ad_subcode = code,
                    meaning = ad_subcode_meaning(code),
                    "directory refused the bind"
                ),
                None => tracing::debug!(
                    target: "faspex_gate::auth",
                    account,
                    "directory refused the bind: invalid credentials"
                ),
            }
            Ok(Verdict::Rejected)
        }
        // No such object, invalid DN syntax, inappropriate authentication, insufficient access,
        // unwilling to perform (disabled accounts, password policy): "not this account".
        32 | 34 | 48 | 50 | 53 => {
            tracing::info!(
                target: "faspex_gate::auth",
                account,
                result = %rc_text(rc, text),
                "directory refused the bind"
            );
            Ok(Verdict::Rejected)
        }
        _ => Err(StepError::Refused(rc_text(rc, text))),
    }
}

/// What a search's result code means: 0, and size limit exceeded (we ask for at most 2), are
/// answers; busy and unavailable are the server's problem; anything else is the configuration's.
fn search_outcome(rc: u32, text: &str, key: &str) -> Result<(), StepError> {
    match rc {
        0 | 4 => Ok(()),
        51 | 52 | 80 => Err(StepError::Refused(rc_text(rc, text))),
        32 => Err(StepError::Fatal(format!(
            "{key} names an entry that does not exist ({})",
            rc_text(rc, text)
        ))),
        _ => Err(StepError::Fatal(format!(
            "the directory refused the search under {key} ({})",
            rc_text(rc, text)
        ))),
    }
}

fn rc_text(rc: u32, text: &str) -> String {
    let name = match rc {
        4 => "sizeLimitExceeded",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        _ => "result",
    };
    if text.is_empty() {
        format!("{name} ({rc})")
    } else {
        format!("{name} ({rc}): {text}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LdapDirectory {
    /// One check of `name` (as the directory is given it), with what [`LdapDirectory::find`]
    /// said when there is a service account. Every path does the same operations: [search,
    /// before], bind, [membership search]. An unknown user binds a DN that cannot exist; a
    /// failed bind still asks the membership question.
    async fn verify_found(
        &self,
        name: &str,
        found: &Lookup,
        password: &str,
    ) -> Result<Verdict, DirectoryError> {
        let account = name;
        let (dn, known) = match (&self.mode, found) {
            (Mode::Direct { template }, _) => (user_dn(template, name), true),
            (Mode::Search { .. }, Lookup::Entry { dn, .. }) => (dn.clone(), true),
            (Mode::Search { dummy_dn, .. }, _) => (dummy_dn.clone(), false),
        };
        // For an unknown user, ask about an entry that exists (the service account), so that a
        // nested-group walk costs the directory what a real user's does.
        let asked_about = match (&self.mode, known) {
            (Mode::Search { bind_dn, .. }, false) => bind_dn.as_str(),
            _ => dn.as_str(),
        };
        let q = self
            .group
            .as_ref()
            .map(|g| group_query(&g.dn, g.nested, asked_about));
        let verdict = match (&self.mode, &q) {
            (Mode::Direct { .. }, q) => self.bind(&dn, password, account, q.as_ref()).await?,
            (Mode::Search { .. }, None) => self.bind(&dn, password, account, None).await?,
            (Mode::Search { .. }, Some(q)) => {
                let bound = self.bind(&dn, password, account, None).await?;
                let member = self
                    .run(&self.service_pool, |mut ldap| {
                        let q = q.clone();
                        Box::pin(async move {
                            self.member(&mut ldap, &q, REQUIRE_GROUP)
                                .await
                                .map(Done::keep)
                        })
                    })
                    .await;
                match bound {
                    Verdict::Accepted => member?,
                    // (asked only so that this path costs the same; the answer is not used)
                    Verdict::Rejected => Verdict::Rejected,
                }
            }
        };
        if !known {
            return Ok(Verdict::Rejected);
        }
        if verdict == Verdict::Rejected && q.is_some() {
            tracing::debug!(
                target: "faspex_gate::auth",
                account,
                "refused: wrong password, or not in auth.ldap.require_group"
            );
        }
        Ok(verdict)
    }
}

#[async_trait]
impl Directory for LdapDirectory {
    /// `account` goes to the directory as it is (direct bind, or the search).
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError> {
        // An empty simple bind is an unauthenticated bind: never send one.
        if password.is_empty() {
            return Ok(Verdict::Rejected);
        }
        let found = self.find(account).await?;
        self.verify_found(account, &found, password).await
    }

    fn looks_up(&self) -> bool {
        matches!(self.mode, Mode::Search { .. })
    }

    /// With a service account: find `name`'s entry, then ask the membership question as
    /// `auth.ldap.require_group` is asked (`nested_groups` included), as the service account.
    /// No entry (or more than one) is no member. Without a service account there is no one to
    /// ask as (configuration refuses the console then).
    async fn member_of(
        &self,
        name: &str,
        _account: &str,
        group: &str,
    ) -> Result<bool, DirectoryError> {
        if !matches!(self.mode, Mode::Search { .. }) {
            return Err(DirectoryError(
                "group membership needs the service account (auth.ldap.bind_dn)".into(),
            ));
        }
        let Lookup::Entry { dn, .. } = self.find(name).await? else {
            return Ok(false);
        };
        let q = group_query(group, self.nested_groups, &dn);
        let verdict = self
            .run(&self.service_pool, |mut ldap| {
                let q = q.clone();
                Box::pin(async move {
                    self.member(&mut ldap, &q, "helpdesk.group")
                        .await
                        .map(Done::keep)
                })
            })
            .await?;
        Ok(verdict == Verdict::Accepted)
    }

    async fn lookup(&self, name: &str) -> Result<Lookup, DirectoryError> {
        self.find(name).await
    }

    /// `name` goes to the directory as typed; with a service account, the entry `found` is bound
    /// (searched for now if it was not looked up).
    async fn verify_login(
        &self,
        name: &str,
        _account: &str,
        found: &Lookup,
        password: &str,
    ) -> Result<Verdict, DirectoryError> {
        if password.is_empty() {
            return Ok(Verdict::Rejected);
        }
        match (&self.mode, found) {
            (Mode::Search { .. }, Lookup::Unsupported) => {
                let found = self.find(name).await?;
                self.verify_found(name, &found, password).await
            }
            _ => self.verify_found(name, found, password).await,
        }
    }

    /// Read the root DSE (a base search of `""` asking for no attributes) on a pooled
    /// connection, failing over like a check does: with a service account, as that account,
    /// which also proves its password still works. Any answer but busy or unavailable means the
    /// server is there.
    async fn probe(&self) -> Result<(), DirectoryError> {
        let pool = match self.mode {
            Mode::Search { .. } => &self.service_pool,
            Mode::Direct { .. } => &self.bind_pool,
        };
        self.run(pool, |mut ldap| {
            Box::pin(async move {
                ldap.with_timeout(self.timeout);
                let (_, done) = bounded_search(
                    &mut ldap,
                    "",
                    Scope::Base,
                    "(objectClass=*)",
                    vec!["1.1"],
                    1,
                )
                .await?;
                match done.rc {
                    // busy, unavailable
                    51 | 52 => Err(StepError::Refused(rc_text(done.rc, &done.text))),
                    _ => Ok(Done::keep(())),
                }
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_marked_down_is_tried_last_until_the_clock_passes_down_for() {
        let clock = crate::clock::ManualClock::at_2026();
        let cfg = LdapConfig {
            urls: vec![
                "ldap://a.invalid".parse().unwrap(),
                "ldap://b.invalid".parse().unwrap(),
            ],
            starttls: false,
            ca_file: None,
            user_dn_template: Some("uid={username},dc=example".into()),
            bind_dn: None,
            bind_password_file: None,
            bind_password: None,
            base_dn: None,
            user_filter: "(uid={username})".into(),
            require_group: None,
            nested_groups: false,
            pool_size: 1,
            timeout: Duration::from_secs(1),
        };
        let d = LdapDirectory::new(&cfg, Arc::new(clock.clone())).unwrap();
        assert_eq!(d.order(&[]), [0, 1]);
        d.mark_down(0, "test");
        assert_eq!(d.order(&[]), [1, 0]);
        assert_eq!(d.order(&[1]), [0], "a down server is still tried last");
        clock.advance(DOWN_FOR - Duration::from_millis(1));
        assert_eq!(d.order(&[]), [1, 0]);
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            d.order(&[]),
            [0, 1],
            "back in order once DOWN_FOR has passed"
        );
    }

    #[test]
    fn hostile_names_are_escaped_in_dns_and_filters() {
        let t = "uid={username},ou=people,dc=example,dc=org";
        assert_eq!(
            user_dn(t, ",cn=admin"),
            "uid=\\2ccn\\3dadmin,ou=people,dc=example,dc=org"
        );
        assert_eq!(
            user_dn(t, "a+b\\c"),
            "uid=a\\2bb\\5cc,ou=people,dc=example,dc=org"
        );
        assert_eq!(
            user_dn(t, " #lead"),
            "uid=\\20#lead,ou=people,dc=example,dc=org"
        );
        assert_eq!(
            user_dn(t, "{username}"),
            "uid={username},ou=people,dc=example,dc=org"
        );
        let f = "(&(objectClass=person)(uid={username}))";
        assert_eq!(user_filter(f, "*"), "(&(objectClass=person)(uid=\\2a))");
        assert_eq!(
            user_filter(f, "*)(uid=*"),
            "(&(objectClass=person)(uid=\\2a\\29\\28uid=\\2a))"
        );
        assert_eq!(
            user_filter(f, "admin)(|(uid=*"),
            "(&(objectClass=person)(uid=admin\\29\\28|\\28uid=\\2a))"
        );
        assert_eq!(user_filter(f, "\\"), "(&(objectClass=person)(uid=\\5c))");
        assert_eq!(
            user_filter(f, "a\0b"),
            "(&(objectClass=person)(uid=a\\00b))"
        );
        // Each escaped filter parses as one equality match, never a wider one.
        for name in ["*", "*)(uid=*", "admin)(|(uid=*", "\\", ",cn=admin"] {
            assert!(ldap3::parse_filter(user_filter(f, name)).is_ok(), "{name}");
        }
    }

    #[test]
    fn the_naming_attribute_is_the_one_compared_with_the_whole_name() {
        for (filter, want) in [
            (
                "(&(objectClass=person)(|(uid={username})(cn={username})))",
                Some("uid"),
            ),
            ("(sAMAccountName={username})", Some("sAMAccountName")),
            (
                "(&(objectCategory=person)(sAMAccountName={username}))",
                Some("sAMAccountName"),
            ),
            ("(mail={username}@example.org)", None),
            ("(|(mail={username}@x)(uid={username}))", Some("uid")),
            ("(cn:dn:={username})", None),
            ("(uid~={username})", None),
            ("(objectClass=person)", None),
        ] {
            assert_eq!(naming_attribute(filter).as_deref(), want, "{filter}");
        }
    }

    #[test]
    fn an_entry_is_named_by_its_rdn_or_its_least_value() {
        assert_eq!(
            first_rdn("uid=ann\\20lee\\2c jr,ou=people,dc=x"),
            Some(("uid".into(), "ann lee, jr".into()))
        );
        assert_eq!(
            first_rdn("CN=Ren\\C3\\A9+uid=r,dc=x"),
            Some(("CN".into(), "René".into()))
        );
        assert_eq!(first_rdn("uid=#04024869,dc=x"), None);
        assert_eq!(first_rdn("no equals sign"), None);
        assert_eq!(first_rdn("uid=a\\"), Some(("uid".into(), "a".into())));
        let attrs = |v: &[&str]| {
            std::collections::HashMap::from([(
                "UID".to_owned(),
                v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )])
        };
        let dn = "uid=Ann Lee,ou=people,dc=x";
        assert_eq!(
            entry_name(dn, "uid", &attrs(&["alee", "ann lee"])).as_deref(),
            Some("ann lee"),
            "the RDN's value, as the entry holds it"
        );
        assert_eq!(
            entry_name("cn=Ann,dc=x", "uid", &attrs(&["zed", "Alee"])).as_deref(),
            Some("Alee"),
            "the least prepared value"
        );
        assert_eq!(entry_name(dn, "mail", &attrs(&["x"])), None);
    }

    #[test]
    fn the_nested_group_filter_is_pinned() {
        let q = group_query(
            "CN=Faspex Users,OU=Groups,DC=example,DC=org",
            true,
            "CN=Ann Smith,OU=Staff,DC=example,DC=org",
        );
        assert_eq!(q.base, "CN=Ann Smith,OU=Staff,DC=example,DC=org");
        assert_eq!(
            q.filter,
            "(memberOf:1.2.840.113556.1.4.1941:=CN=Faspex Users,OU=Groups,DC=example,DC=org)"
        );
        assert!(ldap3::parse_filter(&q.filter).is_ok());
        let q = group_query("cn=g,dc=x", false, "uid=a(1)*,dc=x");
        assert_eq!(q.base, "cn=g,dc=x");
        assert_eq!(
            q.filter,
            "(|(member=uid=a\\281\\29\\2a,dc=x)(uniqueMember=uid=a\\281\\29\\2a,dc=x))"
        );
    }

    #[test]
    fn active_directory_subcodes_are_read_and_named() {
        let t = "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563";
        assert_eq!(ad_subcode(t), Some("52e"));
        for (code, meaning) in [
            ("525", "user not found"),
            ("52e", "invalid credentials"),
            ("530", "not permitted to log on at this time"),
            ("531", "not permitted to log on at this workstation"),
            ("532", "password expired"),
            ("533", "account disabled"),
            ("701", "account expired"),
            ("773", "password must be reset"),
            ("775", "account locked out"),
        ] {
            let text = format!("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {code}, v4563");
            assert_eq!(ad_subcode(&text), Some(code));
            assert_eq!(ad_subcode_meaning(code), meaning);
            // Every one of them is a plain wrong password to the caller.
            assert!(matches!(
                bind_outcome(49, &text, "ann"),
                Ok(Verdict::Rejected)
            ));
        }
        assert_eq!(ad_subcode("invalid credentials"), None);
        assert_eq!(ad_subcode("data , v1"), None);
    }

    #[test]
    fn result_codes_split_into_accept_reject_and_try_elsewhere() {
        assert!(matches!(bind_outcome(0, "", "a"), Ok(Verdict::Accepted)));
        for rc in [32, 34, 48, 49, 50, 53] {
            assert!(
                matches!(bind_outcome(rc, "", "a"), Ok(Verdict::Rejected)),
                "{rc}"
            );
        }
        for rc in [51, 52, 80, 1] {
            assert!(
                matches!(bind_outcome(rc, "", "a"), Err(StepError::Refused(_))),
                "{rc}"
            );
        }
        assert!(search_outcome(4, "", "k").is_ok());
        assert!(
            matches!(search_outcome(32, "", "k"), Err(StepError::Fatal(m)) if m.contains("k names"))
        );
        assert!(matches!(
            search_outcome(52, "", "k"),
            Err(StepError::Refused(_))
        ));
    }
}
