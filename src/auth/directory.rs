//! The [`Directory`] seam: one credential check, and the answers a directory gives
//! ([`Verdict`], [`Lookup`], [`DirectoryError`]). Every backend implements it; the policy engine
//! is its one caller.

use async_trait::async_trait;

/// A directory's answer to "is this the password of this account?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Wrong password, unknown user, disabled or expired account, not in the required group: one
    /// answer for all of them.
    Rejected,
}

/// Which directory entry a name belongs to, as [`Directory::lookup`] answers before any password
/// is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This backend does not look names up first (LDAP direct bind, the users file): the
    /// prepared name is the account, and the check finds the entry itself.
    Unsupported,
    /// No entry answers to the name: the directory does not know it. The check is the one an
    /// unknown user gets (a bind to a DN that cannot exist), or, with `auth.local_accounts`,
    /// the local one; the account is the prepared name.
    NoEntry,
    /// More than one entry answers to the name: the directory knows it and cannot say which,
    /// so it is refused as an unknown user is (and never goes to a local check).
    Ambiguous,
    /// The backend knows the name and keys it by its prepared form (the users file, when it is
    /// the directory and `auth.local_accounts = "faspex"` asks which names it has).
    Known,
    /// The one entry that answers to the name.
    Entry {
        dn: String,
        /// Its own value of the attribute `user_filter` compares names with (the one in its RDN
        /// when that is the attribute, else the least), when it has one: the account's name.
        name: Option<String>,
    },
}

/// The directory could not answer. Never counted against the account.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the directory is unavailable: {0}")]
pub struct DirectoryError(pub String);

/// One credential check: a bind against LDAP, or a hash comparison for the file backend.
///
/// Backends refuse an empty `password` themselves, without asking anyone (the engine never sends
/// one either).
///
/// The engine first asks [`Directory::lookup`] which entry a name belongs to, when the backend
/// [`Directory::looks_up`] (LDAP with a service account), so that failures, locks, seats and
/// sessions are counted by entry whatever the spelling; then [`Directory::verify_login`] with
/// that answer. Backends that cannot say key accounts by the prepared name
/// ([`crate::account`]) and only implement [`Directory::verify`].
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Check `password` for `account`, a prepared account name (or, called directly, any name
    /// the directory is to match itself).
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError>;

    /// Whether names are looked up before a check ([`Directory::lookup`]).
    fn looks_up(&self) -> bool {
        false
    }

    /// Which entry `name` (as typed, a listed domain removed) belongs to, asking the directory
    /// (one search as the service account). An outage is an error, never [`Lookup::NoEntry`].
    async fn lookup(&self, name: &str) -> Result<Lookup, DirectoryError> {
        let _ = name;
        Ok(Lookup::Unsupported)
    }

    /// One credential check of a login: `name` as typed (a listed domain removed), which the
    /// directory matches itself; `account` the account it counts as; `found` what
    /// [`Directory::lookup`] said ([`Lookup::Unsupported`] when it was not asked). By default,
    /// [`Directory::verify`] of `account`.
    async fn verify_login(
        &self,
        name: &str,
        account: &str,
        found: &Lookup,
        password: &str,
    ) -> Result<Verdict, DirectoryError> {
        let _ = (name, found);
        self.verify(account, password).await
    }

    /// Whether the person `name` (as typed, a listed domain removed; `account` the account it
    /// counts as) is a member of `group`: the helpdesk console's `helpdesk.group`, asked the way
    /// `auth.ldap.require_group` is (nested groups as `auth.ldap.nested_groups` says), as the
    /// service account, with no password. The users file answers from its `helpdesk = true`
    /// flags (`group` is then only a label). A backend that cannot say answers an error, which
    /// admits no one.
    async fn member_of(
        &self,
        name: &str,
        account: &str,
        group: &str,
    ) -> Result<bool, DirectoryError> {
        let _ = (name, account, group);
        Err(DirectoryError(
            "this credential backend cannot check group membership".into(),
        ))
    }

    /// Whether the directory answers now (`/readyz`), without checking anyone's password. A
    /// backend with nothing remote to ask (the users file, loaded at start) is always ready.
    async fn probe(&self) -> Result<(), DirectoryError> {
        Ok(())
    }
}
