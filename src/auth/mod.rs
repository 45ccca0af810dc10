//! Credentials: the [`Directory`] seam where one credential check happens, and its backends.
//!
//! - `ldap.rs`: LDAP / Active Directory (direct bind or search-then-bind, group restriction,
//!   failover, pools, TLS);
//! - `file.rs`: a users file of argon2id hashes, behind a hashing semaphore;
//! - `cache.rs`: the verification cache for HTTP Basic callers (keyed digests, never passwords);
//! - `password.rs`: making argon2id hashes (`faspex-gate hash-password`).
//!
//! The policy engine decides *whether* a check may run (throttle, lockout, the global
//! `max_checks_per_second` ceiling) and what its answer means; a backend only answers.

pub mod cache;
pub mod file;
pub mod ldap;
pub mod password;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{AuthBackend, AuthConfig};

/// A directory's answer to "is this the password of this account?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Wrong password, unknown user, disabled or expired account, not in the required group: one
    /// answer for all of them.
    Rejected,
}

/// The directory could not answer. Never counted against the account.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the directory is unavailable: {0}")]
pub struct DirectoryError(pub String);

/// One credential check: a bind against LDAP, or a hash comparison for the file backend.
///
/// `account` is already normalised. Backends refuse an empty `password` themselves, without
/// asking anyone (the engine never sends one either).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError>;

    /// Whether the directory answers now (`/readyz`), without checking anyone's password. A
    /// backend with nothing remote to ask (the users file, loaded at start) is always ready.
    async fn probe(&self) -> Result<(), DirectoryError> {
        Ok(())
    }
}

/// The backend `auth.backend` names.
pub fn build(cfg: &AuthConfig) -> anyhow::Result<Arc<dyn Directory>> {
    Ok(match cfg.backend {
        AuthBackend::Ldap => Arc::new(ldap::LdapDirectory::new(&cfg.ldap)?),
        AuthBackend::File => Arc::new(file::FileDirectory::new(
            cfg.file.users.clone(),
            cfg.max_concurrent_hashes,
        )?),
    })
}
