//! TLS material and the client side, shared by every module that speaks TLS: reading PEM
//! certificate chains, private keys and CA files, pairing a chain with its key, and the rustls
//! client configuration (the system's roots plus an optional CA file) that the directory
//! (LDAPS/StartTLS, [`crate::auth::ldap`]) and the upstream (HTTPS to Faspex,
//! [`crate::proxy::upstream`]) use.
//!
//! It sits at the bottom: it knows files and rustls, not the configuration. The listener's side,
//! the certificate a reload swaps and the server configuration with its ALPN, is the server's
//! (`server::tls`). Errors name the file and say what is wrong with it; the caller adds the
//! configuration key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::crypto::CryptoProvider;
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

/// `chain` (read from `cert_file` by [`load_certs`]) with the private key in `key_file`,
/// checked to belong together: what a TLS server presents.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<CertifiedKey> {
    let key = load_key(key_file)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("{}: unsupported private key: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        anyhow!(
            "{} and {} do not belong together: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(ck)
}

/// The trust anchors in a PEM file of CA certificates; each one must be usable as an anchor.
pub fn ca_roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    add_ca_file(&mut roots, path)?;
    Ok(roots)
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> anyhow::Result<()> {
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            anyhow!(
                "{}: certificate #{} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(())
}

/// A client configuration (for the upstream and the directory) that trusts the system's roots
/// plus the PEM certificates in `ca_file`, and verifies the server's certificate and name
/// against them. There is no switch to turn verification off.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate must not stop the gateway; it just is not trusted.
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca_file {
        add_ca_file(&mut roots, ca)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_loads_and_a_stranger_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path(), &["localhost"]).unwrap();
        let pair = |c: &Path, k: &Path| certified_key(load_certs(c)?, c, k);
        pair(&cert, &key).unwrap();
        assert_eq!(ca_roots(&cert).unwrap().len(), 1);
        client_config(Some(&cert)).unwrap();

        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let (_, other_key) = write_self_signed(&other, &["localhost"]).unwrap();
        let e = format!("{:#}", pair(&cert, &other_key).unwrap_err());
        assert!(e.contains("do not belong together"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let e = format!("{:#}", ca_roots(&junk).unwrap_err());
        assert!(e.contains("junk.pem"), "{e}");
        let e = format!("{:#}", ca_roots(&key).unwrap_err());
        assert!(e.contains("contains no PEM certificate"), "{e}");
        let e = format!("{:#}", pair(&cert, &cert).unwrap_err());
        assert!(e.contains("no usable PEM private key"), "{e}");
    }
}
