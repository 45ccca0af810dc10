//! TLS for the HTTPS listener: loading the PEM chain and key, a certificate resolver that can be
//! swapped on SIGHUP without touching live connections, and the rustls server configuration
//! (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider used on both sides of the gateway.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order. An empty file is an error.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read certificates", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a valid PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{}: contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{}: no usable PEM private key", path.display()))
}

/// A client configuration (for the upstream and the directory) that trusts the system's roots
/// plus the PEM certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate must not stop the gateway; it just is not trusted.
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca_file {
        for cert in load_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| anyhow!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn load_certified_key(cert_file: &Path, key_file: &Path) -> anyhow::Result<CertifiedKey> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("{}: unsupported private key: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        anyhow!(
            "{} and {} do not belong together: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(ck)
}

/// The certificate the HTTPS listener presents. Reloading swaps it atomically: handshakes already
/// under way and live connections keep what they had.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<Self>> {
        let ck = load_certified_key(cert_file, key_file)?;
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(ck),
        }))
    }

    /// Read a certificate and key, maybe from new paths, without installing them yet: a reload
    /// checks everything before it changes anything.
    pub fn prepare(cert_file: &Path, key_file: &Path) -> anyhow::Result<PreparedCert> {
        Ok(PreparedCert {
            key: load_certified_key(cert_file, key_file)?,
        })
    }

    /// Serve `p` to every new handshake from now on.
    pub fn install(&self, p: PreparedCert) {
        self.current.store(Arc::new(p.key));
    }
}

/// A certificate read and checked by [`CertStore::prepare`].
pub struct PreparedCert {
    key: CertifiedKey,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration of the HTTPS listener.
pub fn server_config(certs: Arc<CertStore>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A self-signed certificate for `names`, written as PEM files into `dir` (the demo, the tests).
pub fn write_self_signed(dir: &Path, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem())?;
    crate::util::write_private(&key_file, certified.key_pair.serialize_pem().as_bytes())?;
    Ok((cert_file, key_file))
}
