//! Credentials: the [`Directory`] seam where one credential check happens, and password hashes
//! for the `file` backend. (LDAP, the file backend and the verification cache plug in here.)

pub mod password;

use async_trait::async_trait;

/// A directory's answer to "is this the password of this account?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Wrong password, unknown user, disabled or expired account: one answer for all of them.
    Rejected,
}

/// The directory could not answer. Never counted against the account.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the directory is unavailable: {0}")]
pub struct DirectoryError(pub String);

/// One credential check: a bind against LDAP, or a hash comparison for the file backend.
///
/// `account` is already normalised and `password` is never empty (the policy engine answers an
/// empty password itself, without asking).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError>;
}
