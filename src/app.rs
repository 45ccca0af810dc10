//! Wiring: read the files the configuration names ([`Loaded`]), open the policy state, build the
//! gateway from a validated configuration, serve it and its admin listener until a signal says
//! stop, and apply a new configuration on SIGHUP.
//!
//! **Reload.** SIGHUP reads the configuration file again. A file that fails validation, a users
//! file, certificate, CA file or audit path that cannot be read changes nothing (the same checks
//! as at start): the running configuration stays, and the log says why. Otherwise the keys that
//! can change under live sessions take effect at once (the others, [`RestartOnly`], keep their
//! running values, each named in the log): `[policy]`, `[auth]` (the directory or users file is
//! opened anew and the verification cache emptied), `[faspex]`, `[pages]`,
//! `server.trusted_proxies`, `tls` (the certificate, read again even when its paths did not
//! change), `audit.path` (the file is reopened, for logrotate), the admin token and
//! `helpdesk.allowed_networks`. Sessions and lockouts are untouched (console sessions too).
//!
//! [`RestartOnly`]: crate::config::RestartOnly

mod load;

pub use load::Loaded;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::admin::{AdminApi, AdminServer};
use crate::audit::AuditLog;
use crate::auth::file::Users;
use crate::auth::Directory;
use crate::clock::{Clock, TimeSource};
use crate::config::{AuthBackend, Config, Reload, StoreKind};
use crate::helpdesk::{Console, HelpdeskServer, Revoker};
use crate::metrics::Metrics;
use crate::policy::{CheckRules, LogObserver, Observer, Observers, Policy};
use crate::proxy::context::Context;
use crate::proxy::ends::SessionEnds;
use crate::proxy::upstream::Upstream;
use crate::proxy::Gateway;

use crate::server::{signal_control, CertStore, Control, Server};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::{RedisOptions, RedisStore, Time};
use crate::store::{PolicyStore, StoreError};

/// The policy engine over its store, with its sweeper and store monitor running, and the
/// credential backend.
pub struct PolicyState {
    pub policy: Policy,
    /// `auth.backend`: where credential checks go.
    pub directory: Arc<dyn Directory>,
    /// Fed by the engine's events; served on the admin listener's `GET /metrics`.
    pub metrics: Arc<Metrics>,
    store: Store,
    /// The sweeper, the store monitor and, on Redis, the owed logouts' sender.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `store.kind`: the state store the engine runs on.
#[derive(Clone)]
enum Store {
    Embedded(Arc<EmbeddedStore>),
    Redis(Arc<RedisStore>),
}

/// How often the store monitor checks the store (`faspex_gate_store_up` follows within 5 s).
const STORE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a gateway waits for Redis at start before serving without it (public paths work,
/// `/readyz` says the store is not ready).
const REDIS_AT_START: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Open `store.kind`'s store. The embedded one refuses a corrupt, unwritable, locked or
    /// newer-schema file, by name. The Redis one is checked if it answers within
    /// [`REDIS_AT_START`]: a setting it refuses (its version, the ACL user, the password, the
    /// session secret's fingerprint) is a configuration error naming the key; one that cannot be
    /// reached is not (the gateway starts, not ready).
    async fn open(cfg: &Config, metrics: &Arc<Metrics>, time: Time) -> anyhow::Result<Self> {
        match cfg.store.kind {
            StoreKind::Embedded => Ok(Store::Embedded(Arc::new(EmbeddedStore::open(
                &cfg.store.path,
            )?))),
            StoreKind::Redis => {
                let r = &cfg.store.redis;
                let mut opts = RedisOptions::from_config(r).map_err(|e| setting(cfg, e))?;
                opts.time = time;
                let store = RedisStore::new(opts)
                    .map_err(|e| setting(cfg, e))?
                    .with_session_view(r.session_cache, r.outage_grace)
                    .with_secret(cfg.session.secret.expose());
                let m = Arc::clone(metrics);
                store.on_error(Arc::new(move |op| m.store_error(op)));
                match tokio::time::timeout(REDIS_AT_START, store.ready()).await {
                    Ok(Ok(())) => metrics.store_up(true),
                    Ok(Err(e @ StoreError::Setting { .. })) => return Err(setting(cfg, e).into()),
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "the Redis store cannot be reached; serving public paths only, and \
                         /readyz says the store is not ready, until it answers"
                    ),
                    Err(_) => tracing::error!(
                        "the Redis store did not answer within {REDIS_AT_START:?}; serving public \
                         paths only, and /readyz says the store is not ready, until it answers"
                    ),
                }
                Ok(Store::Redis(Arc::new(store)))
            }
        }
    }

    fn shared(&self) -> Arc<dyn PolicyStore> {
        match self {
            Store::Embedded(s) => Arc::clone(s) as Arc<dyn PolicyStore>,
            Store::Redis(s) => Arc::clone(s) as Arc<dyn PolicyStore>,
        }
    }

    /// Whether the store answers now (a write; for Redis also the secret's fingerprint, and the
    /// replay of what an outage queued).
    async fn check(&self, now: crate::clock::Timestamp) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.probe().await,
            Store::Redis(s) => s.check(now).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Store::Embedded(s) => format!("embedded {}", s.file().display()),
            Store::Redis(s) => format!("redis {}", s.describe()),
        }
    }

    async fn close(&self) {
        if let Store::Embedded(s) = self {
            if let Err(e) = s.close().await {
                tracing::error!(error = %e, "the state store could not be saved at shutdown");
            }
        }
    }
}

/// A store's refusal of a setting, as the configuration error naming its key.
fn setting(cfg: &Config, e: StoreError) -> crate::config::ConfigError {
    match e {
        StoreError::Setting { key, reason } => cfg.error(key, reason),
        other => cfg.error("store.redis", other.to_string()),
    }
}

/// Check the store every [`STORE_CHECK_EVERY`] (each check bounded by it too), keep
/// `faspex_gate_store_up` on it, and log each change.
fn spawn_store_monitor(
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let describe = store.describe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORE_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up: Option<bool> = None;
        loop {
            tick.tick().await;
            let r = match tokio::time::timeout(STORE_CHECK_EVERY, store.check(clock.now())).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Remote {
                    reason: format!("no answer within {STORE_CHECK_EVERY:?}"),
                }),
            };
            let up = r.is_ok();
            metrics.store_up(up);
            if was_up != Some(up) {
                match r {
                    Ok(()) => tracing::info!(store = %describe, "the state store answers"),
                    Err(e) => {
                        tracing::error!(store = %describe, error = %e, "the state store does not answer")
                    }
                }
            }
            was_up = Some(up);
        }
    })
}

impl PolicyState {
    /// Open the store (see [`Store::open`]), end what expired while the gateway was down, and
    /// start the sweeper and the store monitor. `observers` hear the engine's events besides the
    /// log and the metrics.
    /// `faspex` checks Faspex's own accounts (`auth.local_accounts = "faspex"`); `users` is the
    /// users file, read. `clock` is the one every decision that depends on time reads; `redis_time`
    /// says whether Redis's functions take their time from Redis (production) or from it (a
    /// manual clock's tests).
    pub async fn open(
        cfg: &Config,
        users: &Users,
        metrics: Arc<Metrics>,
        observers: Vec<Arc<dyn Observer>>,
        faspex: Option<Arc<dyn Directory>>,
        clock: Arc<dyn Clock>,
        redis_time: Time,
    ) -> anyhow::Result<Self> {
        let directory = crate::auth::build(&cfg.auth, users, faspex, Arc::clone(&clock))
            .context("cannot set up auth.backend")?;
        log_backend(cfg, users);
        let store = Store::open(cfg, &metrics, redis_time).await?;
        let policy = Policy::new(
            cfg.policy.clone(),
            CheckRules::from(&cfg.auth),
            store.shared(),
            Arc::clone(&clock),
            Arc::new(Observers(
                [
                    vec![Arc::new(LogObserver) as Arc<dyn Observer>, metrics.clone()],
                    observers,
                ]
                .concat(),
            )),
        );
        match (&store, policy.sweep().await) {
            (_, Ok(_)) => {}
            (Store::Embedded(_), Err(e)) => {
                return Err(anyhow::Error::new(e).context("cannot sweep the state store"))
            }
            // (the sweeper tries again; nothing is decided from local state meanwhile)
            (Store::Redis(_), Err(e)) => tracing::warn!(error = %e, "first sweep failed"),
        }
        match policy.status().await {
            Ok(status) => tracing::info!(
                store = %store.describe(),
                sessions = status.sessions,
                seats_limit = status.seats_limit,
                accounts_locked = status.accounts_locked,
                "state store opened"
            ),
            Err(e) => match store {
                Store::Embedded(_) => return Err(e.into()),
                Store::Redis(_) => {
                    tracing::warn!(store = %store.describe(), error = %e, "state store not ready")
                }
            },
        }
        let sweeper = policy.spawn_sweeper();
        let monitor = spawn_store_monitor(store.clone(), clock, Arc::clone(&metrics));
        Ok(Self {
            policy,
            directory,
            metrics,
            store,
            tasks: vec![sweeper, monitor],
        })
    }

    /// Stop the sweeper and the monitor, and write everything written behind.
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.store.close().await;
    }
}

fn log_backend(cfg: &Config, users: &Users) {
    let a = &cfg.auth;
    if a.backend == AuthBackend::Ldap && !a.ldap.starttls {
        for u in a.ldap.urls.iter().filter(|u| u.scheme() == "ldap") {
            // (ldap: is not a "special" URL scheme, so an IPv4 address arrives as a domain)
            let loopback = match u.host() {
                Some(url::Host::Domain(d)) => {
                    d == "localhost"
                        || d.parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                tracing::warn!(
                    server = %u,
                    "auth.ldap: ldap:// without starttls sends passwords in clear text; use \
                     ldaps:// or starttls = true"
                );
            }
        }
    }
    match a.backend {
        AuthBackend::Ldap => tracing::info!(
            servers = %a.ldap.urls.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(" "),
            mode = if a.ldap.bind_dn.is_some() { "search then bind" } else { "direct bind" },
            starttls = a.ldap.starttls,
            require_group = a.ldap.require_group.as_deref().unwrap_or("(none)"),
            nested_groups = a.ldap.nested_groups,
            max_checks_per_second = a.max_checks_per_second,
            "credential checks: LDAP"
        ),
        AuthBackend::File => tracing::info!(
            accounts = users.0.len(),
            max_concurrent_hashes = a.max_concurrent_hashes,
            max_checks_per_second = a.max_checks_per_second,
            "credential checks: users file"
        ),
    }
}

/// Everything `run` and `demo` serve: the engine over its store, the gateway handler over the
/// engine, the audit log and the metrics. When the gateway ends a session, Faspex's is logged out
/// too.
pub struct App {
    pub state: PolicyState,
    /// How a reload reads the configuration file: with the process environment's overrides
    /// for `run`, with none for the demo (as each did at start).
    loader: Loader,
    pub gateway: Gateway,
    pub audit: Arc<AuditLog>,
    /// `faspex.logout_path`, as the Faspex-logout worker reads it.
    logout_path: Arc<ArcSwap<String>>,
    /// Faspex as the checker of its own accounts, for a reload that turns them on.
    faspex_check: Arc<dyn Directory>,
    /// The HTTPS listener's certificate, which a reload swaps (`None` when the listener is off).
    pub certs: Option<Arc<CertStore>>,
    /// The helpdesk console, when `helpdesk.listen` and `helpdesk.group` are set.
    pub helpdesk: Option<Console>,
    /// The clock the app runs on (a manual one is moved through the admin API).
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    time: TimeSource,
}

/// Reads a configuration file (for a reload).
pub type Loader =
    Arc<dyn Fn(&std::path::Path) -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Build the [`App`] for `cfg`; a reload will read the file with [`Config::load`]. Errors are
/// start-up errors; one in a file the configuration names (the users file, a certificate) is the
/// [`ConfigError`](crate::config::ConfigError) that [`Loaded::load`] gives, naming its key.
pub async fn build(cfg: &Config) -> anyhow::Result<App> {
    build_with(
        cfg,
        Arc::new(|p: &std::path::Path| Config::load(p)),
        TimeSource::Wall,
    )
    .await
}

/// Build the [`App`] for `cfg`, reloading with `loader`, on the clock `time` gives.
pub async fn build_with(cfg: &Config, loader: Loader, time: TimeSource) -> anyhow::Result<App> {
    let loaded = Loaded::load(cfg)?;
    let clock = time.clock();
    let audit = Arc::new(AuditLog::open(&cfg.audit, Arc::clone(&clock))?);
    let metrics = Arc::new(Metrics::new().context("cannot register the metrics")?);
    let upstream = Upstream::new(&cfg.upstream, &cfg.server)?;
    let logout_path = Arc::new(ArcSwap::from_pointee(cfg.faspex.logout_path.clone()));
    let (ends, shared_ends) = SessionEnds::start(
        upstream.clone(),
        Arc::clone(&logout_path),
        Arc::clone(&metrics),
        cfg.store.kind == StoreKind::Redis,
    );
    let faspex_check: Arc<dyn Directory> = Arc::new(crate::proxy::faspex_check::FaspexCheck::new(
        upstream.clone(),
        cfg.upstream.response_timeout,
    ));
    // (the console's sessions hear the engine's kicks and administrators' locks)
    let revoker = match cfg.helpdesk.on() {
        Some(_) => Some(Revoker::new(Arc::clone(&audit))?),
        None => None,
    };
    let mut observers = vec![ends, Arc::clone(&audit) as Arc<dyn Observer>];
    if let Some(r) = &revoker {
        observers.push(Arc::clone(r) as Arc<dyn Observer>);
    }
    let mut state = PolicyState::open(
        cfg,
        &loaded.users,
        Arc::clone(&metrics),
        observers,
        Some(Arc::clone(&faspex_check)),
        clock,
        if time.is_manual() {
            Time::Given
        } else {
            Time::Server
        },
    )
    .await?;
    if let Store::Redis(r) = &state.store {
        let consumer = format!("{}-{}", cfg.audit.gateway, std::process::id());
        state.tasks.push(crate::proxy::ends::send_owed_logouts(
            Arc::clone(r),
            consumer,
            upstream.clone(),
            Arc::clone(&logout_path),
            Arc::clone(&metrics),
        ));
    }
    let gateway = Gateway::new(Context::new(
        cfg,
        state.policy.clone(),
        Arc::clone(&state.directory),
        upstream,
        shared_ends,
        metrics,
    ));
    let helpdesk = match &revoker {
        Some(revoker) => Some(Console::new(
            cfg,
            state.policy.clone(),
            gateway.clone(),
            Arc::clone(&audit),
            Arc::clone(&state.metrics),
            revoker,
        )),
        None => {
            if cfg.helpdesk.listen.is_some() != cfg.helpdesk.group.is_some() {
                tracing::warn!(
                    "the helpdesk console is off: it needs both helpdesk.listen and \
                     helpdesk.group, and only one is set"
                );
            }
            None
        }
    };
    Ok(App {
        helpdesk,
        state,
        loader,
        gateway,
        audit,
        logout_path,
        faspex_check,
        certs: loaded.cert.map(CertStore::new),
        time,
    })
}

impl App {
    /// The admin API over this app, with `cfg`'s token (`None` when the listener is off).
    pub fn admin_api(&self, cfg: &Config) -> Option<AdminApi> {
        let token = cfg.admin.token.as_ref()?;
        let api = AdminApi::new(
            self.state.policy.clone(),
            self.gateway.clone(),
            Arc::clone(&self.state.metrics),
            Arc::clone(&self.audit),
            token,
        );
        #[cfg(feature = "test-support")]
        let api = match self.time.manual_clock() {
            Some(c) => api.with_manual_clock(c.clone()),
            None => api,
        };
        Some(api)
    }

    /// Read `running.file` again and apply what can change safely (see the module
    /// documentation). Returns the configuration now in force: the new one with the
    /// restart-only keys at their running values, or `running` itself when the new file is
    /// refused.
    ///
    /// The audit log is reopened in every case, so that a logrotate's SIGHUP is never lost to
    /// a configuration file that someone is half-way through editing.
    pub fn reload(&self, running: &Config, admin: Option<&AdminApi>) -> Config {
        match self.try_reload(running, admin) {
            Some(c) => c,
            None => {
                if let Err(e) = self.audit.reopen(&running.audit) {
                    tracing::error!(error = %format!("{e:#}"), "the audit log could not be reopened; still writing to the old file");
                }
                running.clone()
            }
        }
    }

    fn try_reload(&self, running: &Config, admin: Option<&AdminApi>) -> Option<Config> {
        let new = match (self.loader)(&running.file) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the new configuration is not valid; the running one stays");
                return None;
            }
        };
        // Everything that can fail first; nothing changes until all of it has worked. The files
        // are read as a start would read them, the certificate if the running HTTPS listener
        // will serve it.
        let loaded = match Loaded::load_for(&new, self.certs.is_some()) {
            Ok(l) => l,
            Err(e) if e.key.starts_with("tls.") => {
                tracing::error!(error = %e, "reload refused: the certificate cannot be loaded; the running configuration stays");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the new configuration is not valid; the running one stays");
                return None;
            }
        };
        let directory = match crate::auth::build(
            &new.auth,
            &loaded.users,
            Some(Arc::clone(&self.faspex_check)),
            self.state.policy.clock(),
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload refused: auth cannot be set up; the running configuration stays");
                return None;
            }
        };
        let audit_changed = new.audit.sink != running.audit.sink;
        if let Err(e) = self.audit.reopen(&new.audit) {
            tracing::error!(error = %format!("{e:#}"), "reload refused: the audit log cannot be opened; the running configuration stays");
            return None;
        }

        let Reload {
            effective,
            needs_restart,
        } = Reload::new(running, new);
        for key in needs_restart {
            tracing::warn!(
                key,
                "reload: this key changed but needs a restart; the running value stays"
            );
        }
        self.state
            .policy
            .reload(effective.policy.clone(), CheckRules::from(&effective.auth));
        self.logout_path
            .store(Arc::new(effective.faspex.logout_path.clone()));
        self.gateway.reload(&effective, directory);
        if let Some(console) = &self.helpdesk {
            console.reload(&effective);
        }
        // A password changed or an account removed in the users file or directory must not live
        // on in the verification cache: empty it now the new backend is in place, and once more
        // when every check that began on the old backend has surely ended (one that started
        // just before the swap could otherwise cache what the old backend said).
        let policy = self.state.policy.clone();
        policy.cache().clear();
        let settle = old_checks_settle(running);
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            policy.cache().clear();
        });
        if let (Some(certs), Some(key)) = (&self.certs, loaded.cert) {
            certs.install(key);
            tracing::info!("certificate reloaded");
        }
        if let (Some(admin), Some(token)) = (admin, &effective.admin.token) {
            admin.set_token(token);
        }
        log_backend(&effective, &loaded.users);
        tracing::info!(
            max_sessions = effective.policy.max_sessions,
            audit_reopened = true,
            audit_path_changed = audit_changed,
            "configuration reloaded; sessions and lockouts kept"
        );
        Some(effective)
    }
}

/// The longest a credential check begun under `cfg` can take: its directory steps (search, bind,
/// group), each bounded by `auth.ldap.timeout`, with room to spare; the users file's hashes are
/// far quicker.
fn old_checks_settle(cfg: &Config) -> std::time::Duration {
    let step = 2 * cfg.auth.ldap.timeout + std::time::Duration::from_secs(1);
    (3 * step + std::time::Duration::from_secs(5)).max(std::time::Duration::from_secs(30))
}

/// Where a started gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The helpdesk console's listener, when on.
    pub helpdesk: Option<SocketAddr>,
}

/// Serve with `cfg` on the clock `time` gives until SIGTERM/SIGINT; SIGHUP reloads the
/// configuration.
pub async fn serve(cfg: Config, time: TimeSource) -> anyhow::Result<()> {
    let control = signal_control()?;
    serve_on(
        cfg,
        time,
        Arc::new(|p: &std::path::Path| Config::load(p)),
        control,
        |_| {},
    )
    .await
}

/// Serve with `cfg` until `control` says shut down, reloading with `loader`; `ready` hears where
/// it listens once bound.
pub async fn serve_with(
    cfg: Config,
    loader: Loader,
    control: tokio::sync::mpsc::Receiver<Control>,
    ready: impl FnOnce(Listening),
) -> anyhow::Result<()> {
    serve_on(cfg, TimeSource::Wall, loader, control, ready).await
}

/// [`serve_with`] on the clock `time` gives.
pub async fn serve_on(
    cfg: Config,
    time: TimeSource,
    loader: Loader,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    ready: impl FnOnce(Listening),
) -> anyhow::Result<()> {
    let app = build_with(&cfg, loader, time).await?;
    let server = Server::bind(&cfg, app.gateway.clone(), app.certs.clone()).await?;
    let api = app.admin_api(&cfg);
    let admin = match (cfg.admin.listen, &api) {
        (Some(addr), Some(api)) => Some(AdminServer::bind(addr, api.clone()).await?),
        _ => None,
    };
    let helpdesk = match (cfg.helpdesk.on(), &app.helpdesk, &app.certs) {
        (Some((addr, _)), Some(console), Some(certs)) => {
            Some(HelpdeskServer::bind(&cfg, addr, Arc::clone(certs), console.clone()).await?)
        }
        _ => None,
    };
    ready(Listening {
        https: server.https_addr(),
        admin: admin.as_ref().and_then(AdminServer::local_addr),
        helpdesk: helpdesk.as_ref().and_then(HelpdeskServer::local_addr),
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        upstream = %cfg.upstream.url,
        "faspex-gate started"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin_task = admin.map(|a| tokio::spawn(a.run(stopped.clone())));
    let helpdesk_task = helpdesk.map(|h| tokio::spawn(h.run(stopped.clone())));
    let server_task = tokio::spawn(server.run(stopped));

    let mut running = cfg;
    while let Some(cmd) = control.recv().await {
        match cmd {
            Control::Reload => {
                tracing::info!(file = %running.file.display(), "SIGHUP: reloading the configuration");
                running = app.reload(&running, api.as_ref());
            }
            Control::Shutdown => break,
        }
    }
    let _ = stop.send(true);
    let result = match server_task.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the server task failed: {e}")),
    };
    for t in [admin_task, helpdesk_task].into_iter().flatten() {
        let _ = t.await;
    }
    app.state.close().await;
    result
}
