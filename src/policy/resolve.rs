//! Which account a login's name is.
//!
//! A name is prepared as LDAP prepares it (RFC 4518; [`crate::account`]), so that `Ann  Lee` and
//! `ann\u{A0}lee` are `ann lee`. With search-then-bind (`auth.ldap.bind_dn`), the directory itself
//! says which entry a name belongs to ([`Directory::lookup`], remembered for `auth.cache_ttl`),
//! and failures, locks, seats and sessions are keyed by that entry: its own name, prepared
//! ([`account::entry_key`]). A search that reaches the directory for a name not remembered takes
//! the per-address and global tokens the check would have taken; an outage during it is a 503
//! that counts against no one.

use std::net::IpAddr;
use std::sync::Arc;

use super::engine::{Policy, CHECK_TIMEOUT};
use super::events::{DirectoryResult, PolicyEvent};
use super::types::{retry_after, LoginRefused};
use crate::account;
use crate::auth::{Directory, Lookup};
use crate::config::LocalAccounts;
use crate::store::AccountKind;

/// A login's name, and the account it counts as.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    /// As typed, less a listed domain: what the directory is given.
    pub(super) name: String,
    pub(super) account: String,
    /// What the directory said about the name ([`Lookup::Unsupported`] when it was not asked).
    pub(super) found: Lookup,
    /// The lookup reached the directory, and took the per-address and global tokens the check
    /// would otherwise take.
    pub(super) charged: bool,
    /// Whose account the name is.
    pub(super) kind: AccountKind,
    /// Who checks it, when it is a local account.
    pub(super) local: LocalAccounts,
}

impl Resolved {
    /// A name Faspex itself checks (`auth.local_accounts = "faspex"`).
    pub(super) fn faspex_checks(&self) -> bool {
        self.kind == AccountKind::Local && self.local == LocalAccounts::Faspex
    }
}

impl Policy {
    /// The account a login's name counts as. Where the directory can say which entry the name
    /// belongs to, it is asked (unless it was lately), before any lock is looked at: the entry,
    /// not the spelling, is the account. Not for an empty password, which reaches no one.
    ///
    /// A refusal here comes with the account to report it under, when there is one.
    pub(super) async fn resolve(
        &self,
        username: &str,
        password: &str,
        ip: IpAddr,
        directory: &Arc<dyn Directory>,
    ) -> Result<Resolved, (Option<String>, LoginRefused)> {
        let cfg = self.cfg();
        let (name, prepared) = account::split(username, &cfg.username_domains)
            .map_err(|e| (None, LoginRefused::InvalidUsername(e)))?;
        let local = self.inner.checks.load().local;
        // A name the directory does not know is a local account's, when there are any.
        let kind_of = |found: &Lookup| match (found, local) {
            (Lookup::NoEntry, LocalAccounts::File | LocalAccounts::Faspex) => AccountKind::Local,
            _ => AccountKind::Directory,
        };
        let resolved = |found: Lookup, account: String, charged: bool| {
            let kind = kind_of(&found);
            Resolved {
                name: name.to_owned(),
                account,
                found,
                charged,
                kind,
                local,
            }
        };
        if password.is_empty() || !directory.looks_up() {
            return Ok(resolved(Lookup::Unsupported, prepared, false));
        }
        let now = self.now();
        if let Some((found, account)) = self.inner.names.get(name, now) {
            return Ok(resolved(found, account, false));
        }
        // A search reaches the directory: it takes the tokens the check would have taken.
        let throttle = self.inner.throttle.load();
        let charge = throttle.login(ip).and_then(|()| throttle.ceiling());
        if let Err(wait) = charge {
            let refused = LoginRefused::Throttled {
                retry_after: retry_after(wait),
            };
            return Err((Some(prepared), refused));
        }
        let started = std::time::Instant::now();
        let found = match tokio::time::timeout(CHECK_TIMEOUT, directory.lookup(name)).await {
            Ok(Ok(found)) => found,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
                };
                tracing::warn!(
                    target: "faspex_gate::policy",
                    account = %prepared,
                    %error,
                    "the directory could not say which entry a name belongs to (503, not counted)"
                );
                self.emit(PolicyEvent::DirectoryCheck {
                    result: DirectoryResult::Error,
                    elapsed: started.elapsed(),
                });
                return Err((Some(prepared), LoginRefused::DirectoryUnavailable));
            }
        };
        let account = match &found {
            Lookup::Entry { dn, name: own } => {
                account::entry_key(dn, own.as_deref(), &cfg.username_domains)
            }
            // One Faspex checks counts under the name as Faspex matches it.
            Lookup::NoEntry if local == LocalAccounts::Faspex => account::faspex_key(&prepared),
            Lookup::NoEntry | Lookup::Ambiguous | Lookup::Known | Lookup::Unsupported => prepared,
        };
        let ttl = self.inner.checks.load().cache_ttl;
        self.inner
            .names
            .insert(name, found.clone(), account.clone(), now, ttl);
        Ok(resolved(found, account, true))
    }
}
