//! Credentials: the [`Directory`] seam where one credential check happens, and its backends.
//!
//! - `directory.rs`: the seam itself and the answers a directory gives;
//! - `ldap.rs`: LDAP / Active Directory (direct bind or search-then-bind, group restriction,
//!   failover, pools, TLS);
//! - `file.rs`: a users file of argon2id hashes, behind a hashing semaphore;
//! - `cache.rs`: the verification cache for HTTP Basic callers (keyed digests, never passwords);
//! - `password.rs`: making argon2id hashes (`faspex-gate hash-password`).
//! - `testing.rs`: [`testing::TestDirectory`], the in-memory directory of the tests and benches
//!   (test builds only: `cfg(test)` or the `test-support` feature).
//!
//! The policy engine decides *whether* a check may run (throttle, lockout, the global
//! `max_checks_per_second` ceiling) and what its answer means; a backend only answers.

pub mod cache;
mod directory;
pub mod file;
pub mod ldap;
pub mod local;
pub mod password;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::sync::Arc;

use crate::config::{AuthBackend, AuthConfig, LocalAccounts};

pub use directory::{Directory, DirectoryError, Lookup, Verdict};

/// The backend `auth.backend` names, with the accounts outside it that `auth.local_accounts`
/// adds. `faspex` checks Faspex's own accounts' passwords (for HTTP Basic callers; a login form
/// is checked by Faspex's answer to it); it is used only with `local_accounts = "faspex"`.
/// `users` is the users file, read when the app was built ([`crate::app::Loaded`]).
pub fn build(
    cfg: &AuthConfig,
    users: &file::Users,
    faspex: Option<Arc<dyn Directory>>,
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<Arc<dyn Directory>> {
    let file = || file::FileDirectory::new(users.clone(), cfg.max_concurrent_hashes);
    let base: Arc<dyn Directory> = match cfg.backend {
        AuthBackend::Ldap => Arc::new(ldap::LdapDirectory::new(&cfg.ldap, clock)?),
        AuthBackend::File => Arc::new(file()?),
    };
    let local = match cfg.local_accounts {
        LocalAccounts::None => return Ok(base),
        LocalAccounts::File => local::Local::File(Arc::new(file()?)),
        LocalAccounts::Faspex => local::Local::Faspex(faspex.ok_or_else(|| {
            anyhow::anyhow!("auth.local_accounts = \"faspex\" needs the Faspex upstream")
        })?),
    };
    let known = match cfg.backend {
        AuthBackend::File => Some(users.clone()),
        AuthBackend::Ldap => None,
    };
    Ok(Arc::new(local::WithLocal::new(base, known, local)))
}
