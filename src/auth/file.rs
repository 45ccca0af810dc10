//! The `file` backend: local accounts with argon2id hashes, for external collaborators' accounts,
//! the demo and test setups.
//!
//! The users file is TOML, one table per account, hashes made by `faspex-gate hash-password`:
//!
//! ```toml
//! [users.ann]
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! helpdesk = true   # optional: ann may use the helpdesk console (`[helpdesk]`)
//! ```
//!
//! It is parsed and checked ([`parse_users`]) when the app is built or reloaded
//! ([`crate::app::Loaded`]), so a bad entry stops the gateway at start with exit 2, naming
//! `auth.file.path`, and a reload refuses it. Hashing is deliberately slow (about 20 ms and 19 MiB each), so it
//! runs on the blocking pool behind a semaphore of `auth.max_concurrent_hashes`: a flood queues
//! instead of taking every core and all memory. An unknown account is verified against a dummy
//! hash with the same parameters, so its answer and its cost are those of a wrong password.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::directory::{Directory, DirectoryError, Verdict};

/// The parsed users file: account → PHC hash string, and the accounts marked `helpdesk = true`
/// (the helpdesk console's members with this backend). `Debug` shows only the count.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Users(
    pub Arc<BTreeMap<String, String>>,
    pub Arc<std::collections::BTreeSet<String>>,
);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Users({} accounts)", self.0.len())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsersFile {
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    hash: String,
    #[serde(default)]
    helpdesk: bool,
}

/// Parse a users file. `normal` gives the form a login name takes after normalisation; every
/// account must be written that way, or it could never log in. Errors say which entry is wrong
/// and why, never echoing a hash.
pub fn parse_users(text: &str, normal: impl Fn(&str) -> Option<String>) -> Result<Users, String> {
    let raw: RawUsersFile = toml::from_str(text).map_err(|e| {
        format!(
            "not a valid users file: {}; expected [users.NAME] tables with hash = \"$argon2id$...\"",
            e.message()
        )
    })?;
    let mut users = BTreeMap::new();
    let mut helpdesk = std::collections::BTreeSet::new();
    for (name, user) in raw.users {
        match normal(&name) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(format!(
                    "users.{name}: logins arrive as \"{n}\" after normalisation; name the table \
                     [users.\"{n}\"]"
                ))
            }
            None => return Err(format!("users.{name}: not a valid account name")),
        }
        check_hash(&user.hash).map_err(|why| format!("users.{name}.hash: {why}"))?;
        if user.helpdesk {
            helpdesk.insert(name.clone());
        }
        users.insert(name, user.hash);
    }
    Ok(Users(Arc::new(users), Arc::new(helpdesk)))
}

fn check_hash(hash: &str) -> Result<(), String> {
    const HOW: &str = "make one with `faspex-gate hash-password`";
    let parsed =
        PasswordHash::new(hash).map_err(|e| format!("not a PHC hash string ({e}); {HOW}"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the algorithm is {}, only argon2id is accepted; {HOW}",
            parsed.algorithm
        ));
    }
    argon2::Params::try_from(&parsed)
        .map_err(|e| format!("unusable argon2 parameters ({e}); {HOW}"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(format!("the salt or the hash is missing; {HOW}"));
    }
    Ok(())
}

/// See the module documentation.
pub struct FileDirectory {
    users: Users,
    /// Verified when the account is unknown: the parameters most of the users' hashes have.
    dummy: String,
    hashes: Arc<Semaphore>,
    checks: AtomicU64,
    dummy_checks: AtomicU64,
    /// Hashes running on the blocking pool now, and the most ever at once.
    running: Arc<(AtomicUsize, AtomicUsize)>,
}

impl FileDirectory {
    pub fn new(users: Users, max_concurrent_hashes: usize) -> anyhow::Result<Self> {
        // The dummy costs what a real entry costs: the parameters most hashes have (a file made
        // by `hash-password` has one set), or the defaults that command uses.
        let mut seen: Vec<(argon2::Params, usize)> = Vec::new();
        for p in users
            .0
            .values()
            .filter_map(|h| PasswordHash::new(h).ok())
            .filter_map(|h| argon2::Params::try_from(&h).ok())
        {
            match seen.iter_mut().find(|(q, _)| *q == p) {
                Some((_, n)) => *n += 1,
                None => seen.push((p, 1)),
            }
        }
        if seen.len() > 1 {
            tracing::warn!(
                target: "faspex_gate::auth",
                parameter_sets = seen.len(),
                "the users file mixes argon2 parameters: an unknown user's check costs what the \
                 most common set costs, so the others can be told apart by timing; re-make their \
                 hashes with `faspex-gate hash-password`"
            );
        }
        let params = seen
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(p, _)| p)
            .unwrap_or_default();
        let dummy_password = crate::util::random_bytes(24)?;
        let salt = crate::util::random_bytes(16)?;
        let salt = argon2::password_hash::SaltString::encode_b64(&salt)
            .map_err(|e| anyhow::anyhow!("cannot encode a salt: {e}"))?;
        let dummy = phc(params, &dummy_password, &salt)?;
        Ok(Self {
            users,
            dummy,
            hashes: Arc::new(Semaphore::new(max_concurrent_hashes.max(1))),
            checks: AtomicU64::new(0),
            dummy_checks: AtomicU64::new(0),
            running: Arc::default(),
        })
    }

    /// Hash comparisons run so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Of those, comparisons against the dummy hash (unknown accounts).
    pub fn dummy_checks(&self) -> u64 {
        self.dummy_checks.load(Ordering::Relaxed)
    }

    /// The most hashes that ever ran at once.
    pub fn most_at_once(&self) -> usize {
        self.running.1.load(Ordering::SeqCst)
    }
}

/// An argon2id PHC string for `password` with `params` and `salt`.
fn phc(
    params: argon2::Params,
    password: &[u8],
    salt: &argon2::password_hash::SaltString,
) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password, salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot make the dummy hash: {e}"))
}

#[async_trait]
impl Directory for FileDirectory {
    async fn verify(&self, account: &str, password: &str) -> Result<Verdict, DirectoryError> {
        if password.is_empty() {
            return Ok(Verdict::Rejected);
        }
        let (hash, known) = match self.users.0.get(account) {
            Some(h) => (h.clone(), true),
            None => (self.dummy.clone(), false),
        };
        // The permit travels with the hash onto the blocking pool: a caller that stops waiting
        // does not stop argon2, so the permit must not be released before argon2 is done.
        let permit = self
            .hashes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DirectoryError("the users file backend is shutting down".into()))?;
        self.checks.fetch_add(1, Ordering::Relaxed);
        if !known {
            self.dummy_checks.fetch_add(1, Ordering::Relaxed);
        }
        let password = password.to_owned();
        let running = self.running.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = running.0.fetch_add(1, Ordering::SeqCst) + 1;
            running.1.fetch_max(now, Ordering::SeqCst);
            let matched = PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false);
            running.0.fetch_sub(1, Ordering::SeqCst);
            matched
        })
        .await
        .map_err(|e| DirectoryError(format!("a hash check failed to run: {e}")))?;
        Ok(if matched && known {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        })
    }

    /// The users file's `helpdesk = true` flag on `account` (`group` is only a label here).
    async fn member_of(
        &self,
        _name: &str,
        account: &str,
        _group: &str,
    ) -> Result<bool, DirectoryError> {
        Ok(self.users.1.contains(account))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(pairs: &[(&str, &str)]) -> Users {
        let text: String = pairs
            .iter()
            .map(|(u, p)| {
                format!(
                    "[users.\"{u}\"]\nhash = \"{}\"\n",
                    crate::auth::password::hash(p).unwrap()
                )
            })
            .collect();
        parse_users(&text, |n| Some(n.to_lowercase())).unwrap()
    }

    #[tokio::test]
    async fn right_wrong_unknown_and_empty() {
        let d = FileDirectory::new(users(&[("ann", "s3cret")]), 2).unwrap();
        assert_eq!(d.verify("ann", "s3cret").await.unwrap(), Verdict::Accepted);
        assert_eq!(d.verify("ann", "S3cret").await.unwrap(), Verdict::Rejected);
        assert_eq!(d.checks(), 2);
        assert_eq!(d.dummy_checks(), 0);
        // An unknown account does the same work, against the dummy hash, and gets the same answer.
        assert_eq!(d.verify("zed", "s3cret").await.unwrap(), Verdict::Rejected);
        assert_eq!((d.checks(), d.dummy_checks()), (3, 1));
        // An empty password is refused without hashing.
        assert_eq!(d.verify("ann", "").await.unwrap(), Verdict::Rejected);
        assert_eq!(d.checks(), 3, "an empty password hashes nothing");
    }

    #[tokio::test]
    async fn users_file_names_are_prepared_as_logins_are() {
        use crate::account::normalize;
        let cheap = argon2::Params::new(1024, 1, 1, None).unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = phc(cheap, b"pw", &salt).unwrap();
        let text = |name: &str| format!("[users.\"{name}\"]\nhash = \"{hash}\"\n");
        let normal = |n: &str| normalize(n, &[]).ok();
        // A table named other than logins arrive is refused, naming the prepared form.
        let e = parse_users(&text("Ann  Lee"), normal).unwrap_err();
        assert!(e.contains("[users.\"ann lee\"]"), "{e}");
        let e = parse_users(&text("an\u{AD}n"), normal).unwrap_err();
        assert!(e.contains("not a valid account name"), "{e}");
        // Written prepared, it is found by every spelling the engine prepares to it.
        let d = FileDirectory::new(parse_users(&text("ann lee"), normal).unwrap(), 1).unwrap();
        for login in ["ann lee", "ANN  LEE", "Ann\u{3000}Lee", " ａｎｎ lee "] {
            let account = normalize(login, &[]).unwrap();
            assert_eq!(
                d.verify(&account, "pw").await.unwrap(),
                Verdict::Accepted,
                "{login:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_dummy_uses_the_users_parameters() {
        let cheap = argon2::Params::new(1024, 1, 1, None).unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = phc(cheap, b"pw", &salt).unwrap();
        let users = parse_users(&format!("[users.ann]\nhash = \"{hash}\"\n"), |n| {
            Some(n.to_owned())
        })
        .unwrap();
        let d = FileDirectory::new(users, 1).unwrap();
        assert!(d.dummy.contains("m=1024,t=1,p=1"), "{}", d.dummy);
        // With mixed parameters, the most common set.
        let other = phc(argon2::Params::new(2048, 1, 1, None).unwrap(), b"pw", &salt).unwrap();
        let text = format!(
            "[users.a]\nhash = \"{other}\"\n[users.b]\nhash = \"{hash}\"\n[users.c]\nhash = \"{hash}\"\n"
        );
        let mixed =
            FileDirectory::new(parse_users(&text, |n| Some(n.to_owned())).unwrap(), 1).unwrap();
        assert!(mixed.dummy.contains("m=1024,t=1,p=1"), "{}", mixed.dummy);
        assert_eq!(d.verify("ann", "pw").await.unwrap(), Verdict::Accepted);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_never_exceeds_the_semaphore_even_when_callers_give_up() {
        let d = Arc::new(FileDirectory::new(users(&[("ann", "pw")]), 1).unwrap());
        // Callers that stop waiting mid-hash (as the engine's timeout would make them) ...
        for i in 0..4 {
            let d = d.clone();
            let give_up = tokio::time::timeout(std::time::Duration::from_millis(1), async move {
                d.verify("ann", &format!("gave-up{i}")).await
            });
            assert!(give_up.await.is_err(), "caller {i} gave up");
        }
        // ... and a crowd that waits.
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let d = d.clone();
                tokio::spawn(async move { d.verify("ann", &format!("guess{i}")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Verdict::Rejected);
        }
        assert_eq!(d.most_at_once(), 1, "argon2 never ran twice at once");
        assert!(d.checks() >= 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_permits_let_two_hashes_run_together() {
        let d = Arc::new(FileDirectory::new(users(&[("ann", "pw")]), 2).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let d = d.clone();
                tokio::spawn(async move { d.verify("ann", &format!("guess{i}")).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(d.most_at_once(), 2);
    }

    #[test]
    fn bad_users_files_are_refused_naming_the_entry() {
        let id = |n: &str| Some(n.to_lowercase());
        let good = crate::auth::password::hash("pw").unwrap();
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let argon2i = {
            use argon2::password_hash::PasswordHasher;
            let params = argon2::Params::new(1024, 1, 1, None).unwrap();
            argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string()
        };
        let cases = [
            (
                "[users.ann]\nhash = \"plain\"\n".to_owned(),
                "users.ann.hash: not a PHC",
            ),
            (
                format!("[users.ann]\nhash = \"{argon2i}\"\n"),
                "only argon2id",
            ),
            (
                format!("[users.Ann]\nhash = \"{good}\"\n"),
                "users.Ann: logins arrive as \"ann\"",
            ),
            (
                format!("[users.ann]\nhash = \"{good}\"\nrole = \"x\"\n"),
                "unknown field",
            ),
            ("users = 3".to_owned(), "not a valid users file"),
        ];
        for (text, want) in cases {
            let err = parse_users(&text, id).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(
                !err.contains(&good) && !err.contains(&argon2i),
                "never echo a hash: {err}"
            );
        }
        assert_eq!(parse_users("", id).unwrap().0.len(), 0);
    }

    #[test]
    fn debug_shows_no_hashes() {
        let u = users(&[("ann", "pw")]);
        assert_eq!(format!("{u:?}"), "Users(1 accounts)");
    }
}
