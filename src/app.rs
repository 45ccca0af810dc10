//! Wiring: build the gateway from a validated configuration and serve it until a signal says stop.

use crate::config::Config;
use crate::proxy::Gateway;
use crate::server::{signal_control, Server};

/// Serve with `cfg` until SIGTERM/SIGINT; SIGHUP reloads the certificate.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let control = signal_control()?;
    let gateway = Gateway::new(&cfg)?;
    let server = Server::bind(&cfg, gateway).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        upstream = %cfg.upstream.url,
        "faspex-gate started"
    );
    server.run(control).await
}
