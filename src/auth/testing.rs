//! A directory for tests and benches, written once: [`TestDirectory`], a table of passwords (or a
//! rule, for benches that make users up by the thousand) that counts every check it runs and can
//! be made slow or unreachable. Only in test builds (`cfg(test)`, or the `test-support` feature
//! that the package's own tests and benches turn on); a release build does not have it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::directory::{Directory, DirectoryError, Verdict};

/// The accounts every table starts with, each with the password `pw-<name>`.
pub const TEST_ACCOUNTS: [&str; 4] = ["ann", "bob", "cat", "dan"];

/// Passwords by account; counts every check it runs. Built by [`TestDirectory::with_users`] (a
/// table), [`TestDirectory::with_accounts`] (a table of exactly these) or
/// [`TestDirectory::any_account`] (a rule).
#[derive(Debug, Default)]
pub struct TestDirectory {
    /// Account -> password.
    users: Mutex<HashMap<String, String>>,
    /// Accept every account whose password is `pw-<account>`, without the table.
    any_account: bool,
    /// How many checks ran (counted before the delay and the outage).
    checks: AtomicUsize,
    /// While set, every check fails as an unreachable directory does.
    down: AtomicBool,
    /// How long each check takes, in nanoseconds (0: at once). Atomic rather than locked, so that
    /// a bench's workers do not queue on it.
    delay_nanos: AtomicU64,
}

impl TestDirectory {
    /// `ann`, `bob`, `cat`, `dan` and `user0` … `user{n-1}`, each with the password `pw-<name>`.
    pub fn with_users(n: usize) -> Arc<Self> {
        let names = TEST_ACCOUNTS
            .iter()
            .map(|name| (*name).to_owned())
            .chain((0..n).map(|i| format!("user{i}")));
        Arc::new(Self::table(names))
    }

    /// Exactly `names`, each with the password `pw-<name>`.
    pub fn with_accounts(names: &[&str]) -> Arc<Self> {
        Arc::new(Self::table(names.iter().map(|name| (*name).to_owned())))
    }

    /// Every account, with the password `pw-<account>`: no table, so a bench can make up a
    /// fresh user for every request.
    pub fn any_account() -> Arc<Self> {
        Arc::new(Self {
            any_account: true,
            ..Self::default()
        })
    }

    fn table(names: impl Iterator<Item = String>) -> Self {
        let users = names
            .map(|name| {
                let password = format!("pw-{name}");
                (name, password)
            })
            .collect();
        Self {
            users: Mutex::new(users),
            ..Self::default()
        }
    }

    /// Add `account` (or change its password).
    pub fn add_user(&self, account: &str, password: &str) {
        self.table_lock()
            .insert(account.to_owned(), password.to_owned());
    }

    /// How many checks have run.
    pub fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    /// Make the directory unreachable (`true`) or reachable again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Make every check take `delay` (zero: answer at once).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    fn table_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn accepts(&self, account: &str, password: &str) -> bool {
        if self.any_account {
            return password.strip_prefix("pw-") == Some(account);
        }
        self.table_lock().get(account).map(String::as_str) == Some(password)
    }
}

#[async_trait]
impl Directory for TestDirectory {
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_nanos.load(Ordering::SeqCst);
        if delay != 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(DirectoryError("connection refused".into()));
        }
        Ok(if self.accepts(account, password) {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_table_a_rule_and_an_outage() {
        let table = TestDirectory::with_users(2);
        assert_eq!(
            table.verify("user1", "pw-user1").await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            table.verify("eve", "pw-eve").await.unwrap(),
            Verdict::Rejected
        );
        table.add_user("eve", "pw-eve");
        assert_eq!(
            table.verify("eve", "pw-eve").await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(table.checks(), 3);
        table.set_down(true);
        assert!(table.verify("ann", "pw-ann").await.is_err());

        let rule = TestDirectory::any_account();
        assert_eq!(
            rule.verify("other7", "pw-other7").await.unwrap(),
            Verdict::Accepted
        );
        assert_eq!(
            rule.verify("other7", "pw-other8").await.unwrap(),
            Verdict::Rejected
        );
    }
}
