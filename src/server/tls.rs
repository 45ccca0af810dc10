//! The HTTPS listener's TLS: a certificate resolver that can be swapped on SIGHUP without
//! touching live connections, and the rustls server configuration (TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`). Reading the certificate and key is [`crate::tls`]'s, done when the app is
//! built or reloaded.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate the HTTPS listener presents. Reloading swaps it atomically: handshakes already
/// under way and live connections keep what they had.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// Serve `key` (from [`crate::tls::certified_key`]).
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serve `key` to every new handshake from now on.
    pub fn install(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration of the HTTPS listener.
pub fn server_config(certs: Arc<CertStore>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
