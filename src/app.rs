//! Wiring: open the policy state, build the gateway from a validated configuration and serve it
//! until a signal says stop.

use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::policy::{CheckRules, LogObserver, Policy};
use crate::proxy::Gateway;
use crate::server::{signal_control, Server};
use crate::store::embedded::EmbeddedStore;

/// The policy engine over its store, with its sweeper running.
pub struct PolicyState {
    pub policy: Policy,
    store: Arc<EmbeddedStore>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl PolicyState {
    /// Open `store.path` (refusing a corrupt, unwritable, locked or newer-schema file, by name),
    /// end what expired while the gateway was down, and start the sweeper.
    pub async fn open(cfg: &Config) -> anyhow::Result<Self> {
        let store = Arc::new(EmbeddedStore::open(&cfg.store.path)?);
        let policy = Policy::new(
            cfg.policy.clone(),
            CheckRules::from(&cfg.auth),
            store.clone(),
            Arc::new(SystemClock),
            Arc::new(LogObserver),
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

/// Serve with `cfg` until SIGTERM/SIGINT; SIGHUP reloads the certificate.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let control = signal_control()?;
    let state = PolicyState::open(&cfg).await?;
    let gateway = Gateway::new(&cfg)?;
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
