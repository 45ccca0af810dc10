//! Wiring: open the policy state, build the gateway from a validated configuration and serve it
//! until a signal says stop.

use std::sync::Arc;

use anyhow::Context as _;

use crate::auth::Directory;
use crate::clock::SystemClock;
use crate::config::{AuthBackend, Config};
use crate::metrics::Metrics;
use crate::policy::{CheckRules, LogObserver, Observer, Observers, Policy};
use crate::proxy::ends::SessionEnds;
use crate::proxy::forward::Upstream;
use crate::proxy::Gateway;
use crate::server::{signal_control, Server};
use crate::store::embedded::EmbeddedStore;

/// The policy engine over its store, with its sweeper running, and the credential backend.
pub struct PolicyState {
    pub policy: Policy,
    /// `auth.backend`: where credential checks go.
    pub directory: Arc<dyn Directory>,
    /// Fed by the engine's events (served by the admin listener with the operations work).
    pub metrics: Arc<Metrics>,
    store: Arc<EmbeddedStore>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl PolicyState {
    /// Open `store.path` (refusing a corrupt, unwritable, locked or newer-schema file, by name),
    /// end what expired while the gateway was down, and start the sweeper. `observers` hear the
    /// engine's events besides the log and the metrics.
    pub async fn open(cfg: &Config, observers: Vec<Arc<dyn Observer>>) -> anyhow::Result<Self> {
        let directory = crate::auth::build(&cfg.auth).context("cannot set up auth.backend")?;
        log_backend(cfg);
        let store = Arc::new(EmbeddedStore::open(&cfg.store.path)?);
        let metrics = Arc::new(Metrics::new().context("cannot register the metrics")?);
        let policy = Policy::new(
            cfg.policy.clone(),
            CheckRules::from(&cfg.auth),
            store.clone(),
            Arc::new(SystemClock),
            Arc::new(Observers(
                [
                    vec![Arc::new(LogObserver) as Arc<dyn Observer>, metrics.clone()],
                    observers,
                ]
                .concat(),
            )),
        );
        policy
            .sweep()
            .await
            .context("cannot sweep the state store")?;
        let status = policy.status().await?;
        tracing::info!(
            file = %store.file().display(),
            sessions = status.sessions,
            seats_limit = status.seats_limit,
            accounts_locked = status.accounts_locked,
            "state store opened"
        );
        let sweeper = policy.spawn_sweeper();
        Ok(Self {
            policy,
            directory,
            metrics,
            store,
            sweeper,
        })
    }

    /// Stop the sweeper and write everything written behind.
    pub async fn close(self) {
        self.sweeper.abort();
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "the state store could not be saved at shutdown");
        }
    }
}

fn log_backend(cfg: &Config) {
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
            accounts = a.file.users.0.len(),
            max_concurrent_hashes = a.max_concurrent_hashes,
            max_checks_per_second = a.max_checks_per_second,
            "credential checks: users file"
        ),
    }
}

/// The engine over its store, and the gateway handler over the engine: everything `run` and
/// `demo` serve. When the gateway ends a session, Faspex's is logged out too.
pub async fn build(cfg: &Config) -> anyhow::Result<(PolicyState, Gateway)> {
    let upstream = Upstream::new(&cfg.upstream, cfg.server.body_idle_timeout)?;
    let (ends, memo, logouts) =
        SessionEnds::start(upstream.clone(), cfg.faspex.logout_path.clone());
    let state = PolicyState::open(cfg, vec![ends]).await?;
    let gateway = Gateway::new(
        cfg,
        state.policy.clone(),
        Arc::clone(&state.directory),
        upstream,
        memo,
        logouts,
    )?;
    Ok((state, gateway))
}

/// Serve with `cfg` until SIGTERM/SIGINT; SIGHUP reloads the certificate.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let control = signal_control()?;
    let (state, gateway) = build(&cfg).await?;
    let server = Server::bind(&cfg, gateway).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        upstream = %cfg.upstream.url,
        "faspex-gate started"
    );
    let result = server.run(control).await;
    state.close().await;
    result
}
