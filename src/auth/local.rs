//! Accounts outside the directory (`auth.local_accounts`): external collaborators whose
//! accounts the helpdesk made in Faspex (or in the users file), not in the directory.
//!
//! [`WithLocal`] puts a second check beside the directory, for names the directory does not
//! know, and for nothing else: the engine first asks the directory which entry a name belongs
//! to ([`Directory::lookup`], a search as the service account), and only a clear "no entry"
//! ([`Lookup::NoEntry`]) goes to the local check. A name the directory knows, even one it
//! cannot place ([`Lookup::Ambiguous`]), is the directory's: its wrong password is never tried
//! anywhere else. A directory that cannot answer is an error for everyone, never a
//! fall-through.
//!
//! With `auth.backend = "file"` the users file plays the directory: the names it holds are its
//! ([`Lookup::Known`]), the others local.

use std::sync::Arc;

use async_trait::async_trait;

use super::directory::{Directory, DirectoryError, Lookup, Verdict};
use super::file::Users;

/// Who checks a name the directory does not know.
pub enum Local {
    /// The users file.
    File(Arc<dyn Directory>),
    /// Faspex, asked with the caller's credentials (see [`crate::proxy::faspex_check`]).
    Faspex(Arc<dyn Directory>),
}

/// The directory, and the check for the names it does not know.
pub struct WithLocal {
    base: Arc<dyn Directory>,
    /// When the users file is the directory: the names it holds.
    known: Option<Users>,
    local: Local,
}

impl WithLocal {
    pub fn new(base: Arc<dyn Directory>, known: Option<Users>, local: Local) -> Self {
        WithLocal { base, known, local }
    }

    fn local(&self) -> &Arc<dyn Directory> {
        match &self.local {
            Local::File(d) | Local::Faspex(d) => d,
        }
    }
}

#[async_trait]
impl Directory for WithLocal {
    /// A name checked without a lookup first (an administrator's, a test's): the directory's.
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError> {
        self.base.verify(account, password).await
    }

    /// Always: whether the directory knows a name decides who checks it.
    fn looks_up(&self) -> bool {
        true
    }

    async fn lookup(&self, name: &str) -> Result<Lookup, DirectoryError> {
        match &self.known {
            Some(users) => Ok(match crate::account::prepare(name) {
                Ok(prepared) if users.0.contains_key(&prepared) => Lookup::Known,
                _ => Lookup::NoEntry,
            }),
            None => self.base.lookup(name).await,
        }
    }

    async fn verify_login(
        &self,
        name: &str,
        account: &str,
        found: &Lookup,
        password: &str,
    ) -> Result<Verdict, DirectoryError> {
        match (found, &self.local) {
            // The users file keys its accounts by the prepared name, which `account` is.
            (Lookup::NoEntry, Local::File(file)) => file.verify(account, password).await,
            // Faspex is given the name as typed, as the caller's own request gives it.
            (Lookup::NoEntry, Local::Faspex(faspex)) => faspex.verify(name, password).await,
            // (the users file as the directory: `Known` is its own; `account` is prepared)
            (_, _) if self.known.is_some() => self.base.verify(account, password).await,
            _ => self.base.verify_login(name, account, found, password).await,
        }
    }

    /// The directory's answer: an account outside it is in none of its groups. With the users
    /// file as the directory, only a name it holds is asked about: a local account whose key
    /// folds to a member's (Faspex's `hélen` counts as `helen`) is not that member.
    async fn member_of(
        &self,
        name: &str,
        account: &str,
        group: &str,
    ) -> Result<bool, DirectoryError> {
        if let Some(users) = &self.known {
            return Ok(match crate::account::prepare(name) {
                Ok(prepared) => {
                    prepared == account
                        && users.0.contains_key(&prepared)
                        && users.1.contains(&prepared)
                }
                Err(_) => false,
            });
        }
        self.base.member_of(name, account, group).await
    }

    async fn probe(&self) -> Result<(), DirectoryError> {
        self.base.probe().await?;
        // (Faspex's readiness is the upstream's, probed on its own)
        match &self.local {
            Local::File(_) => self.local().probe().await,
            Local::Faspex(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Answers every check "accepted": only which names reach it matters here.
    struct Yes;

    #[async_trait]
    impl Directory for Yes {
        async fn verify(&self, _: &str, _: &str) -> Result<Verdict, DirectoryError> {
            Ok(Verdict::Accepted)
        }
    }

    #[tokio::test]
    async fn a_local_account_folding_to_a_members_key_is_not_that_member() {
        let users = Users(
            Arc::new(BTreeMap::from([
                ("helen".to_owned(), "hash".to_owned()),
                ("hal".to_owned(), "hash".to_owned()),
            ])),
            Arc::new(BTreeSet::from(["helen".to_owned()])),
        );
        let d = WithLocal::new(Arc::new(Yes), Some(users), Local::Faspex(Arc::new(Yes)));
        // helen herself, however typed: a member.
        assert!(d.member_of("helen", "helen", "helpdesk").await.unwrap());
        assert!(d.member_of("HELEN", "helen", "helpdesk").await.unwrap());
        // Faspex's own `hélen` counts as `helen` (its folded key), but is no users-file entry.
        assert_eq!(d.lookup("hélen").await.unwrap(), Lookup::NoEntry);
        assert!(!d.member_of("hélen", "helen", "helpdesk").await.unwrap());
        // An entry without the flag, a name no one has, a name that cannot be an account.
        assert!(!d.member_of("hal", "hal", "helpdesk").await.unwrap());
        assert!(!d.member_of("zed", "zed", "helpdesk").await.unwrap());
        assert!(!d.member_of("a\u{7}b", "helen", "helpdesk").await.unwrap());
    }
}
