//! The default store: [`Tables`] in memory, persisted to `state.redb` in `store.path`.
//!
//! One writer thread owns the redb file. Every change marks its key dirty; the writer commits the
//! current value of every dirty key in one transaction (group commit). A write-through call
//! (session creation and end, a lockout, an unlock, an admin lock) asks the writer for a commit
//! and waits for it; write-behind changes (failure windows, last activity) ride along, or are
//! committed on the writer's own tick, at most [`WRITE_BEHIND`] late. Because the writer always
//! commits current values, the order in which callers ask cannot put stale state on disk.
//!
//! The file carries a schema version. A file that is corrupt, unreadable, locked by another
//! process or from a newer schema is refused with a message naming it: the gateway must not start
//! having forgotten every lock.
//!
//! It also says how its account names are spelt ([`ACCOUNT_KEYS_VERSION`], a schema step of its
//! own so that an older build can still read the file): a file from a build that keyed accounts
//! by names as typed (`ann  lee`, `ann lee` apart) is re-keyed at open to prepared names
//! ([`crate::account::rekey_stored`], [`super::tables::rekey`]), in the same transaction
//! that proves the file writable. Merged accounts keep their longest lock and all their failures;
//! sessions keep working under the one account.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;

use super::tables::{decode_lock_key, Dirty, Records, Tables};
use super::{
    AccountKind, Admission, Admit, AdmitOutcome, AttemptEnd, AttemptResult, AttemptStart,
    AttemptTicket, ClientId, Counts, EndReason, Lock, LockKey, LockoutRules, PolicyStore,
    SeatRules, Session, SessionKey, SessionState, StoreError, Swept, Timeouts, Unlocked,
    SCHEMA_VERSION, WRITE_BEHIND,
};
use crate::clock::Timestamp;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
const WINDOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("failure_windows");

/// The meta key saying how account names are spelt in the records: absent or 1, as builds
/// before names were prepared as LDAP prepares them keyed them; 2, prepared.
const ACCOUNT_KEYS: &str = "account_keys";

/// The spelling of account names this build writes and understands.
pub const ACCOUNT_KEYS_VERSION: u64 = 2;

/// redb's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The file name inside `store.path`.
pub const FILE_NAME: &str = "state.redb";

enum Request {
    /// Commit everything dirty, then answer.
    Commit(oneshot::Sender<Result<(), String>>),
    /// Commit everything dirty, answer, and stop.
    Stop(oneshot::Sender<Result<(), String>>),
    /// Commit everything dirty, and write a timestamp even when nothing is: proof that the
    /// file can be written (for `/readyz`).
    Probe(oneshot::Sender<Result<(), String>>),
}

/// The embedded, durable store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    tables: Arc<Mutex<Tables>>,
    file: PathBuf,
    requests: mpsc::Sender<Request>,
}

impl EmbeddedStore {
    /// Open (or create) the store in directory `dir`, load it, and start its writer.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let file = dir.join(FILE_NAME);
        let fail = |reason: String| StoreError::Open {
            file: file.clone(),
            reason,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(format!("cannot be created: its folder: {e}")))?;
        } else if !dir.is_dir() {
            return Err(fail("cannot be created: store.path is not a folder".into()));
        } else if let Ok(meta) = std::fs::metadata(dir) {
            // The file holds Faspex session cookies: say so if others can look into the folder.
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    folder = %dir.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the state store's folder is open to group or others; 0700 is recommended"
                );
            }
        }
        // redb caches up to 1 GiB by default; the state is read once at start and then only
        // written, so a small cache is plenty.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(|e| fail(describe_open_error(e)))?;
        if let Ok(meta) = std::fs::metadata(&file) {
            let mut p = meta.permissions();
            if p.mode() & 0o077 != 0 {
                p.set_mode(0o600);
                let _ = std::fs::set_permissions(&file, p);
            }
        }
        let tables = load(&db).map_err(fail)?;
        let tables = Arc::new(Mutex::new(tables));
        let (requests, rx) = mpsc::channel();
        let writer_tables = Arc::clone(&tables);
        let writer_file = file.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(db, writer_tables, rx, writer_file))
            .map_err(|e| fail(format!("cannot start its writer: {e}")))?;
        Ok(Self {
            tables,
            file,
            requests,
        })
    }

    /// The store's file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-made change: every step builds its
        // result before it mutates. Carry on with the data.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until everything changed so far is on disk.
    async fn commit(&self) -> Result<(), StoreError> {
        self.ask(Request::Commit).await
    }

    /// Send the writer a request and wait for its answer.
    async fn ask(
        &self,
        request: fn(oneshot::Sender<Result<(), String>>) -> Request,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(request(tx))
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Write {
                file: self.file.clone(),
                reason,
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Commit, and when that fails, keep going on what memory holds (the writer retries): for
    /// changes where refusing would be worse than a late write, such as a lockout.
    /// A session lookup that ended an expired session writes the end through.
    async fn settled(&self, state: SessionState) -> SessionState {
        if matches!(state, SessionState::Ended(..)) {
            self.commit_or_log("a session end").await;
        }
        state
    }

    async fn commit_or_log(&self, what: &str) {
        if let Err(e) = self.commit().await {
            tracing::error!(error = %e, "{what} is in force but not yet saved; retrying");
        }
    }

    /// Write to the file now, even with nothing to save: `Ok` proves the store is writable.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.ask(Request::Probe).await
    }

    /// Stop the writer after a last commit.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Stop(tx)).is_err() {
            return Ok(());
        }
        match rx.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Write {
                file: self.file.clone(),
                reason,
            }),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The writer commits what is dirty when the channel closes.
        let (tx, _rx) = oneshot::channel();
        let _ = self.requests.send(Request::Stop(tx));
    }
}

fn describe_open_error(e: redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "is in use by another process (is another faspex-gate running on it?)".into()
        }
        redb::DatabaseError::UpgradeRequired(v) => {
            format!("is in a redb file format ({v}) this build cannot read")
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(m)) => {
            format!("is corrupt ({m}); move it aside only if losing every session and lockout is acceptable")
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) => {
            format!("cannot be opened for writing: {e}")
        }
        other => format!("cannot be opened: {other}"),
    }
}

/// Check the schema and read every record.
fn load(db: &Database) -> Result<Tables, String> {
    let txn = db
        .begin_write()
        .map_err(|e| format!("cannot be written: {e}"))?;
    let (sessions, locks, windows) = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| format!("is unreadable: {e}"))?;
        let version = meta
            .get("schema_version")
            .map_err(|e| format!("is unreadable: {e}"))?
            .map(|v| v.value());
        let sessions_t = txn
            .open_table(SESSIONS)
            .map_err(|e| format!("is unreadable: {e}"))?;
        let locks_t = txn
            .open_table(LOCKS)
            .map_err(|e| format!("is unreadable: {e}"))?;
        let windows_t = txn
            .open_table(WINDOWS)
            .map_err(|e| format!("is unreadable: {e}"))?;
        let keys = meta
            .get(ACCOUNT_KEYS)
            .map_err(|e| format!("is unreadable: {e}"))?
            .map(|v| v.value());
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(format!(
                    "was written by a newer faspex-gate (schema {v}; this build understands up to {SCHEMA_VERSION}); upgrade faspex-gate, do not delete the file"
                ))
            }
            Some(_) => {}
            None => {
                let empty = sessions_t.is_empty().unwrap_or(false)
                    && locks_t.is_empty().unwrap_or(false)
                    && windows_t.is_empty().unwrap_or(false);
                if !empty {
                    return Err("is corrupt: it holds records but no schema version".into());
                }
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(|e| format!("cannot be written: {e}"))?;
            }
        }
        if let Some(k) = keys.filter(|&k| k > ACCOUNT_KEYS_VERSION) {
            return Err(format!(
                "was written by a newer faspex-gate (account keys {k}; this build understands up to {ACCOUNT_KEYS_VERSION}); upgrade faspex-gate, do not delete the file"
            ));
        }
        let sessions: Vec<Session> = read_all(&sessions_t, "session")?;
        let locks: Vec<Lock> = read_all(&locks_t, "lock")?;
        let mut windows = Vec::new();
        for entry in windows_t
            .iter()
            .map_err(|e| format!("is unreadable: {e}"))?
        {
            let (k, v) = entry.map_err(|e| format!("is unreadable: {e}"))?;
            let failures: Vec<Timestamp> = serde_json::from_slice(v.value())
                .map_err(|e| format!("is corrupt: failure window {:?}: {e}", k.value()))?;
            windows.push((decode_lock_key(k.value()), failures));
        }
        let records = (sessions, locks, windows);
        if keys == Some(ACCOUNT_KEYS_VERSION) {
            records
        } else {
            let records = rekey_records(records, sessions_t, locks_t, windows_t)?;
            meta.insert(ACCOUNT_KEYS, ACCOUNT_KEYS_VERSION)
                .map_err(|e| format!("cannot be written: {e}"))?;
            records
        }
    };
    // Committing here proves the file is writable before the gateway takes its first request.
    txn.commit()
        .map_err(|e| format!("cannot be written: {e}"))?;
    Ok(Tables::load(sessions, locks, windows))
}

/// The schema step to [`ACCOUNT_KEYS_VERSION`]: every record re-keyed by its prepared account
/// name, merged where two become one, and written back in the caller's transaction.
fn rekey_records(
    records: Records,
    mut sessions_t: redb::Table<&str, &[u8]>,
    mut locks_t: redb::Table<&str, &[u8]>,
    mut windows_t: redb::Table<&str, &[u8]>,
) -> Result<Records, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot be written: {e}");
    let before = (records.1.len(), records.2.len());
    let old_sessions: Vec<String> = records.0.iter().map(|s| s.account.to_string()).collect();
    let old_keys: Vec<String> = records
        .1
        .iter()
        .map(|l| l.key.encode())
        .chain(records.2.iter().map(|(k, _)| k.encode()))
        .collect();
    let (sessions, locks, windows) = super::tables::rekey(records, crate::account::rekey_stored);
    let mut moved = 0;
    for (s, old) in sessions.iter().zip(&old_sessions) {
        if *s.account != **old {
            moved += 1;
            let bytes = serde_json::to_vec(s).map_err(|e| fail(&e))?;
            sessions_t
                .insert(&*s.key.0, bytes.as_slice())
                .map_err(|e| fail(&e))?;
        }
    }
    for k in &old_keys {
        locks_t.remove(k.as_str()).map_err(|e| fail(&e))?;
        windows_t.remove(k.as_str()).map_err(|e| fail(&e))?;
    }
    for l in &locks {
        let bytes = serde_json::to_vec(l).map_err(|e| fail(&e))?;
        locks_t
            .insert(l.key.encode().as_str(), bytes.as_slice())
            .map_err(|e| fail(&e))?;
    }
    for (k, f) in &windows {
        let bytes = serde_json::to_vec(f).map_err(|e| fail(&e))?;
        windows_t
            .insert(k.encode().as_str(), bytes.as_slice())
            .map_err(|e| fail(&e))?;
    }
    if moved > 0 || before != (locks.len(), windows.len()) {
        tracing::info!(
            sessions_moved = moved,
            locks = locks.len(),
            merged_locks = before.0 - locks.len(),
            failure_windows = windows.len(),
            merged_windows = before.1 - windows.len(),
            "the state store's account names are now prepared as LDAP prepares them"
        );
    }
    Ok((sessions, locks, windows))
}

fn read_all<T: serde::de::DeserializeOwned>(
    table: &redb::Table<&str, &[u8]>,
    what: &str,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| format!("is unreadable: {e}"))? {
        let (k, v) = entry.map_err(|e| format!("is unreadable: {e}"))?;
        out.push(
            serde_json::from_slice(v.value())
                .map_err(|e| format!("is corrupt: {what} {:?}: {e}", k.value()))?,
        );
    }
    Ok(out)
}

/// Write the time into the meta table, durably: the probe of [`Request::Probe`].
fn write_probe(db: &Database) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|e| fail(&e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| fail(&e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        meta.insert("last_probe", now).map_err(|e| fail(&e))?;
    }
    txn.commit().map_err(|e| fail(&e))
}

/// Commit `d` in one durable transaction.
fn write(db: &Database, d: &Dirty) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|e| fail(&e))?;
    {
        let mut sessions = txn.open_table(SESSIONS).map_err(|e| fail(&e))?;
        for (k, v) in &d.sessions {
            match v {
                Some(s) => {
                    let bytes = serde_json::to_vec(s).map_err(|e| fail(&e))?;
                    sessions
                        .insert(&*k.0, bytes.as_slice())
                        .map_err(|e| fail(&e))?;
                }
                None => {
                    sessions.remove(&*k.0).map_err(|e| fail(&e))?;
                }
            }
        }
        let mut locks = txn.open_table(LOCKS).map_err(|e| fail(&e))?;
        for (k, v) in &d.locks {
            match v {
                Some(l) => {
                    let bytes = serde_json::to_vec(l).map_err(|e| fail(&e))?;
                    locks
                        .insert(k.as_str(), bytes.as_slice())
                        .map_err(|e| fail(&e))?;
                }
                None => {
                    locks.remove(k.as_str()).map_err(|e| fail(&e))?;
                }
            }
        }
        let mut windows = txn.open_table(WINDOWS).map_err(|e| fail(&e))?;
        for (k, v) in &d.windows {
            match v {
                Some(f) => {
                    let bytes = serde_json::to_vec(f).map_err(|e| fail(&e))?;
                    windows
                        .insert(k.as_str(), bytes.as_slice())
                        .map_err(|e| fail(&e))?;
                }
                None => {
                    windows.remove(k.as_str()).map_err(|e| fail(&e))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| fail(&e))
}

/// The writer thread: commit on request, and on its own tick for write-behind state.
fn writer(db: Database, tables: Arc<Mutex<Tables>>, rx: mpsc::Receiver<Request>, file: PathBuf) {
    let mut waiting = Vec::new();
    let mut probes = Vec::new();
    let mut stop = false;
    loop {
        let mut take = |r: Request| match r {
            Request::Commit(ack) => waiting.push(ack),
            Request::Stop(ack) => {
                waiting.push(ack);
                stop = true;
            }
            Request::Probe(ack) => probes.push(ack),
        };
        let disconnected = match rx.recv_timeout(WRITE_BEHIND) {
            Ok(r) => {
                take(r);
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        // Everyone who asked before this point changed memory before asking: one commit of the
        // current state covers them all.
        while let Ok(r) = rx.try_recv() {
            take(r);
        }
        stop |= disconnected;
        let dirty = tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_dirty();
        let result = if dirty.is_empty() {
            Ok(())
        } else {
            write(&db, &dirty)
        };
        if let Err(reason) = &result {
            tracing::error!(file = %file.display(), %reason, "the state store could not be written");
            tables
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .redirty(&dirty);
            if !stop {
                // Don't spin on a full disk.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // A probe is answered by a real write: this commit's, or one of its own when there was
        // nothing to save. Only probes hear how a probe write went.
        if !probes.is_empty() {
            let probed = if !dirty.is_empty() {
                result.clone()
            } else {
                write_probe(&db)
            };
            for ack in probes.drain(..) {
                let _ = ack.send(probed.clone());
            }
        }
        if stop {
            // Release the file (and its lock) before anyone hears the store is closed.
            drop(db);
            for ack in waiting.drain(..) {
                let _ = ack.send(result.clone());
            }
            return;
        }
        for ack in waiting.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

#[async_trait]
impl PolicyStore for EmbeddedStore {
    async fn admit(&self, a: Admission, rules: SeatRules) -> Result<Admit, StoreError> {
        let admit = self.tables().admit(a, rules);
        let changed =
            !admit.ended.is_empty() || matches!(admit.outcome, AdmitOutcome::Admitted { .. });
        if changed {
            if let Err(error) = self.commit().await {
                // Fail closed: a session that might not survive a restart is not handed out.
                if let AdmitOutcome::Admitted { session, .. } = &admit.outcome {
                    self.tables().end_session(&session.key);
                    return Ok(Admit {
                        outcome: AdmitOutcome::Unsaved { error },
                        ended: admit.ended,
                    });
                }
            }
        }
        Ok(admit)
    }

    async fn session(
        &self,
        key: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        let state = self.tables().session(key, now, activity, &t);
        Ok(self.settled(state).await)
    }

    async fn client_session(
        &self,
        account: &str,
        client: &ClientId,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        let state = self
            .tables()
            .client_session(account, client, now, activity, &t);
        Ok(self.settled(state).await)
    }

    async fn set_upstream_cookie(
        &self,
        key: &SessionKey,
        cookie: Option<String>,
    ) -> Result<bool, StoreError> {
        let found = self.tables().set_upstream_cookie(key, cookie);
        if found {
            self.commit().await?;
        }
        Ok(found)
    }

    async fn add_bearer(&self, key: &SessionKey, bearer: SessionKey) -> Result<bool, StoreError> {
        let found = self.tables().add_bearer(key, bearer);
        if found {
            self.commit().await?;
        }
        Ok(found)
    }

    async fn bearer_session(
        &self,
        bearer: &SessionKey,
        now: Timestamp,
        activity: bool,
        t: Timeouts,
    ) -> Result<SessionState, StoreError> {
        let state = self.tables().bearer_session(bearer, now, activity, &t);
        Ok(self.settled(state).await)
    }

    async fn end_session(
        &self,
        key: &SessionKey,
        _reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        let s = self.tables().end_session(key);
        if s.is_some() {
            self.commit_or_log("a session end").await;
        }
        Ok(s)
    }

    async fn end_account(
        &self,
        account: &str,
        _reason: EndReason,
    ) -> Result<Vec<Session>, StoreError> {
        let v = self.tables().end_account(account);
        if !v.is_empty() {
            // An administrator's kick: ended in memory either way, but say if it is not saved.
            self.commit().await?;
        }
        Ok(v)
    }

    async fn sessions(&self) -> Result<Vec<Session>, StoreError> {
        Ok(self.tables().sessions())
    }

    async fn sweep(
        &self,
        now: Timestamp,
        t: Timeouts,
        window: Duration,
    ) -> Result<Swept, StoreError> {
        let swept = self.tables().sweep(now, t, window);
        if !swept.ended.is_empty() || !swept.lifted.is_empty() {
            self.commit_or_log("a session end or lock expiry").await;
        }
        Ok(swept)
    }

    async fn begin_attempt(
        &self,
        key: &LockKey,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptStart, StoreError> {
        let (start, locked) = self.tables().begin_attempt_locking(key, now, rules);
        if locked {
            self.commit_or_log("a lockout").await;
        }
        Ok(start)
    }

    async fn finish_attempt(
        &self,
        ticket: AttemptTicket,
        result: AttemptResult,
        now: Timestamp,
        rules: LockoutRules,
    ) -> Result<AttemptEnd, StoreError> {
        let end = self.tables().finish_attempt(ticket, result, now, rules);
        if matches!(end, AttemptEnd::Locked(_)) {
            // In force in memory already; the writer keeps retrying until it is on disk.
            self.commit_or_log("a lockout").await;
        }
        Ok(end)
    }

    async fn lock_state(&self, key: &LockKey, now: Timestamp) -> Result<Option<Lock>, StoreError> {
        Ok(self.tables().lock_in_force(key, now))
    }

    async fn lock_account(
        &self,
        account: &str,
        kind: AccountKind,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Lock, StoreError> {
        // In force at once; an error says it is not yet saved (the writer keeps retrying).
        let lock = self.tables().lock_account(account, kind, now, until);
        self.commit().await?;
        Ok(lock)
    }

    async fn unlock_account(&self, account: &str) -> Result<Unlocked, StoreError> {
        let u = self.tables().unlock_account(account);
        self.commit().await?;
        Ok(u)
    }

    async fn lockouts(&self, now: Timestamp) -> Result<Vec<Lock>, StoreError> {
        Ok(self.tables().lockouts(now))
    }

    async fn counts(&self, now: Timestamp) -> Result<Counts, StoreError> {
        Ok(self.tables().counts(now))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.commit().await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        EmbeddedStore::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::conformance::lockout;
    use crate::store::{ClientKind, SessionState};

    const HOUR: Duration = Duration::from_secs(3600);

    /// A store file as a build before account keys were prepared wrote it: schema 1, no
    /// `account_keys`.
    fn write_v1(
        dir: &Path,
        sessions: &[Session],
        locks: &[Lock],
        windows: &[(LockKey, Vec<Timestamp>)],
    ) {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", 1).unwrap();
            let mut t = txn.open_table(SESSIONS).unwrap();
            for s in sessions {
                t.insert(&*s.key.0, serde_json::to_vec(s).unwrap().as_slice())
                    .unwrap();
            }
            let mut t = txn.open_table(LOCKS).unwrap();
            for l in locks {
                t.insert(
                    l.key.encode().as_str(),
                    serde_json::to_vec(l).unwrap().as_slice(),
                )
                .unwrap();
            }
            let mut t = txn.open_table(WINDOWS).unwrap();
            for (k, f) in windows {
                t.insert(
                    k.encode().as_str(),
                    serde_json::to_vec(f).unwrap().as_slice(),
                )
                .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn session(key: &str, account: &str, client: &str, at: Timestamp) -> Session {
        Session {
            key: SessionKey(key.into()),
            account: account.into(),
            client: ClientId(client.into()),
            kind: ClientKind::Browser,
            ip: "192.0.2.1".parse().unwrap(),
            agent: "test".into(),
            started: at,
            last_activity: at,
            upstream_cookie: Some("faspex=1".into()),
            bearer: vec![SessionKey(format!("bearer-{key}").into())],
            account_kind: AccountKind::Directory,
        }
    }

    /// A session as the builds before `ec8367d` wrote it, every string a `String`: today's
    /// `Session` (its strings `Arc<str>`) reads that JSON, and writes it back byte for byte.
    #[test]
    fn a_session_written_with_owned_strings_reads_and_writes_the_same() {
        #[derive(serde::Serialize)]
        struct Earlier {
            key: String,
            account: String,
            client: String,
            kind: ClientKind,
            ip: IpAddr,
            agent: String,
            started: Timestamp,
            last_activity: Timestamp,
            upstream_cookie: Option<String>,
            bearer: Vec<String>,
            account_kind: AccountKind,
        }
        let at = Timestamp::from_millis(1_796_000_000_000);
        let earlier = Earlier {
            key: "k1".to_owned(),
            account: "ann".to_owned(),
            client: "web:1".to_owned(),
            kind: ClientKind::Browser,
            ip: "192.0.2.1".parse().unwrap(),
            agent: "test".to_owned(),
            started: at,
            last_activity: at,
            upstream_cookie: Some("faspex=1".to_owned()),
            bearer: vec!["bearer-k1".to_owned()],
            account_kind: AccountKind::Directory,
        };
        let written = serde_json::to_vec(&earlier).unwrap();
        let read: Session = serde_json::from_slice(&written).unwrap();
        assert_eq!(read, session("k1", "ann", "web:1", at));
        assert_eq!(serde_json::to_vec(&read).unwrap(), written);
    }

    fn lock(
        account: &str,
        ip: Option<IpAddr>,
        since: Timestamp,
        until: Timestamp,
        failures: u32,
        by_admin: bool,
    ) -> Lock {
        Lock {
            key: LockKey {
                account: account.into(),
                ip,
            },
            since,
            until,
            failures,
            by_admin,
            account_kind: AccountKind::Directory,
            sources: Vec::new(),
        }
    }

    /// A lock written before locks kept their failures' source addresses still reads.
    #[test]
    fn a_lock_without_sources_reads() {
        let old = r#"{"key":{"account":"ann"},"since":1000,"until":2000,"failures":5,"by_admin":false,"account_kind":"local"}"#;
        let l: Lock = serde_json::from_str(old).unwrap();
        assert_eq!(
            l,
            Lock {
                account_kind: AccountKind::Local,
                ..lock(
                    "ann",
                    None,
                    Timestamp::from_millis(1000),
                    Timestamp::from_millis(2000),
                    5,
                    false
                )
            }
        );
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            idle: HOUR,
            api_idle: HOUR,
            absolute: None,
        }
    }

    fn account_keys(dir: &Path) -> Option<u64> {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(ACCOUNT_KEYS).unwrap().map(|v| v.value())
    }

    #[tokio::test]
    async fn names_stored_as_typed_are_rekeyed_at_open_and_no_lock_is_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = ManualClock::at_2026().now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let at = |s: u64| t0 + Duration::from_secs(s);
        write_v1(
            tmp.path(),
            &[
                session("s1", "ann  lee", "browser-1", t0),
                session("s2", "ann lee", "browser-2", t0),
                session("s3", "bob", "browser-3", t0),
                session("s4", "stra\u{DF}e", "browser-4", t0),
            ],
            &[
                // Failures locked one spelling for ten minutes, an administrator another for an
                // hour: the hour stays, with the failures' count.
                lock("ann  lee", None, t0, at(600), 5, false),
                lock("ann   lee", None, t0, t0 + HOUR, 0, true),
                lock("ann  lee", Some(ip), t0, at(300), 5, false),
                lock("ann lee", Some(ip), t0, at(120), 5, false),
                // A name this build refuses keeps its old key, and its lock.
                lock("stra\u{DF}e", None, t0, t0 + HOUR, 5, false),
            ],
            &[
                (LockKey::account("carl  jr"), vec![at(1), at(2), at(3)]),
                (LockKey::account("carl jr"), vec![at(4), at(5)]),
                (LockKey::account("dee"), vec![at(6)]),
            ],
        );
        let now = at(30);
        for round in 0..2 {
            let store = EmbeddedStore::open(tmp.path()).unwrap();
            let locks = store.lockouts(now).await.unwrap();
            let wide = locks
                .iter()
                .find(|l| l.key == LockKey::account("ann lee"))
                .unwrap_or_else(|| panic!("round {round}: {locks:?}"));
            assert_eq!(
                (wide.until, wide.by_admin, wide.failures),
                (t0 + HOUR, true, 5)
            );
            let from_ip = locks
                .iter()
                .find(|l| l.key.account == "ann lee" && l.key.ip == Some(ip))
                .unwrap();
            assert_eq!(from_ip.until, at(300), "the longer of the two");
            assert!(locks
                .iter()
                .any(|l| l.key == LockKey::account("stra\u{DF}e")));
            assert_eq!(locks.len(), 3 + round, "{locks:?}");
            // Both sessions are ann lee's now, and each still works, bearer token and all.
            for (key, client) in [("s1", "browser-1"), ("s2", "browser-2")] {
                let state = store
                    .client_session("ann lee", &ClientId(client.into()), now, false, timeouts())
                    .await
                    .unwrap();
                assert!(
                    matches!(state, SessionState::Live(ref s) if &*s.key.0 == key),
                    "{state:?}"
                );
                let by_bearer = store
                    .bearer_session(
                        &SessionKey(format!("bearer-{key}").into()),
                        now,
                        false,
                        timeouts(),
                    )
                    .await
                    .unwrap();
                assert!(matches!(by_bearer, SessionState::Live(_)));
            }
            let counts = store.counts(now).await.unwrap();
            assert_eq!(
                (counts.seats, counts.sessions),
                (3, 4),
                "ann lee holds one seat"
            );
            if round == 0 {
                // The joined window holds five failures in the minute: the next attempt locks.
                match store
                    .begin_attempt(&LockKey::account("carl jr"), now, lockout())
                    .await
                    .unwrap()
                {
                    AttemptStart::Locked(l) => {
                        assert_eq!((l.since, l.until, l.failures), (at(5), at(5) + HOUR, 5))
                    }
                    other => panic!("{other:?}"),
                }
                assert!(matches!(
                    store
                        .begin_attempt(&LockKey::account("dee"), now, lockout())
                        .await
                        .unwrap(),
                    AttemptStart::Proceed(_)
                ));
            } else {
                // The lock the joined window made was written through.
                assert!(locks.iter().any(|l| l.key == LockKey::account("carl jr")));
            }
            store.close().await.unwrap();
            drop(store);
            assert_eq!(account_keys(tmp.path()), Some(ACCOUNT_KEYS_VERSION));
        }
    }

    #[test]
    fn a_store_with_newer_account_keys_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("schema_version", SCHEMA_VERSION).unwrap();
                meta.insert(ACCOUNT_KEYS, 9).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = EmbeddedStore::open(tmp.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("newer faspex-gate (account keys 9"), "{err}");
    }

    #[tokio::test]
    async fn a_new_store_says_its_names_are_prepared() {
        let tmp = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(tmp.path()).unwrap();
        store.close().await.unwrap();
        drop(store);
        assert_eq!(account_keys(tmp.path()), Some(ACCOUNT_KEYS_VERSION));
    }
}

/// The store conformance suite, on the embedded store in a temporary folder.
#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::EmbeddedStore;
    use crate::store::conformance::Backend;
    use crate::store::PolicyStore;

    /// A temporary folder, and the store open on it.
    struct Embedded {
        dir: tempfile::TempDir,
        open: Option<Arc<EmbeddedStore>>,
    }

    impl Embedded {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                open: None,
            }
        }
    }

    #[async_trait]
    impl Backend for Embedded {
        async fn open(&mut self) -> Arc<dyn PolicyStore> {
            if let Some(old) = self.open.take() {
                old.close().await.unwrap();
            }
            let store = Arc::new(EmbeddedStore::open(self.dir.path()).unwrap());
            self.open = Some(Arc::clone(&store));
            store
        }

        fn durable(&self) -> bool {
            true
        }
    }

    crate::store_conformance!(Embedded::new());
}
