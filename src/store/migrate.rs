//! `faspex-gate migrate-store`: moving a site from one gateway on the embedded store to several on
//! one Redis. It copies the embedded store's sessions (with their Faspex cookies and bearer tokens)
//! and the locks in force into the Redis store the configuration names, one record a call, each
//! call one atomic step of the library (`import_session`, `import_lock` in `redis/policy.lua`).
//!
//! - **Safe to run again.** A session already in Redis is left as it is; a lock is merged by the
//!   lockout rule (the longer one stands, one in Redis is never shortened); a record copied before
//!   and since ended or lifted in Redis is not brought back (a marker in Redis remembers each
//!   copy until the record would have ended anyway).
//! - **The licence cap holds.** A session whose account holds no seat in Redis takes one only
//!   while fewer than `policy.max_sessions` are taken; sessions are copied most recently active
//!   first, and the rest are reported as left out. A session whose account is seated in Redis on
//!   another client is left out too (one client per account). Nothing is ended on the way, so no
//!   Faspex logout is owed.
//! - **Not with a gateway running on the file.** The embedded store's file is locked by the
//!   gateway that has it open; opening it then fails, and the move says to stop the gateway first.
//! - Failure windows are not copied: they last `policy.lockout_window` (a minute by default), and
//!   a gateway stopped for the move has let them lapse, or nearly. A lock they made is copied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::embedded::{EmbeddedStore, FILE_NAME};
use super::redis::store::{Imported, Skip};
use super::redis::{RedisOptions, RedisStore};
use super::{Lock, PolicyStore, SeatRules, Session, StoreError, Timeouts};
use crate::clock::Timestamp;
use crate::config::{Config, StoreKind};

/// How long the move waits for Redis to answer at first.
const REDIS_WAIT: Duration = Duration::from_secs(10);

/// What one run copied and left out.
#[derive(Debug, Default)]
pub struct Report {
    /// The embedded store's file.
    pub from: PathBuf,
    /// Where it went: the master's URL (without credentials) and the key prefix.
    pub to: String,
    /// Every session of the file, most recently active first, and what became of it.
    pub sessions: Vec<(Session, Imported)>,
    /// Every lock in force in the file, and what became of it.
    pub locks: Vec<(Lock, Imported)>,
}

impl Report {
    /// Sessions copied in by this run.
    pub fn sessions_copied(&self) -> usize {
        self.sessions
            .iter()
            .filter(|(_, i)| *i == Imported::Copied)
            .count()
    }

    /// Locks copied in (or lengthened) by this run.
    pub fn locks_copied(&self) -> usize {
        self.locks
            .iter()
            .filter(|(_, i)| matches!(i, Imported::Copied | Imported::Extended))
            .count()
    }

    /// What it did, for a person: one line a record, then the totals.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Copying {} into Redis at {}\n",
            self.from.display(),
            self.to
        );
        for (s, i) in &self.sessions {
            let what = match i {
                Imported::Copied => "copied".to_owned(),
                Imported::Extended | Imported::Present => "already in Redis, left as it is".into(),
                Imported::Skipped(why) => format!("skipped: {}", skip_reason(*why, true)),
            };
            out.push_str(&format!(
                "  session {} ({}, {}): {what}\n",
                s.account,
                s.kind.as_str(),
                s.ip
            ));
        }
        for (l, i) in &self.locks {
            let what = match i {
                Imported::Copied => "copied".to_owned(),
                Imported::Extended => "copied (the lock in Redis ended sooner)".into(),
                Imported::Present => "already in Redis, as long or longer: left as it is".into(),
                Imported::Skipped(why) => format!("skipped: {}", skip_reason(*why, false)),
            };
            out.push_str(&format!(
                "  lock {} (until {}): {what}\n",
                l.key,
                l.until.rfc3339()
            ));
        }
        out.push_str(&format!(
            "Copied {} of {} sessions and {} of {} locks; {} sessions and {} locks were already \
             there; skipped {} sessions and {} locks.\n",
            self.sessions_copied(),
            self.sessions.len(),
            self.locks_copied(),
            self.locks.len(),
            count(&self.sessions, is_present),
            count(&self.locks, is_present),
            count(&self.sessions, is_skipped),
            count(&self.locks, is_skipped),
        ));
        out
    }
}

fn count<T>(v: &[(T, Imported)], f: fn(&Imported) -> bool) -> usize {
    v.iter().filter(|(_, i)| f(i)).count()
}

fn is_present(i: &Imported) -> bool {
    *i == Imported::Present
}

fn is_skipped(i: &Imported) -> bool {
    matches!(i, Imported::Skipped(_))
}

fn skip_reason(why: Skip, session: bool) -> &'static str {
    match (why, session) {
        (Skip::Expired, true) => "past its idle or absolute deadline",
        (Skip::Expired, false) => "already over",
        (Skip::EndedSince, true) => "copied before and ended in Redis since",
        (Skip::EndedSince, false) => "copied before and lifted in Redis since (the unlock stands)",
        (Skip::OtherClient, _) => "the account holds a seat in Redis on another client",
        (Skip::LicenseFull, _) => "every licence seat in Redis is taken (policy.max_sessions)",
    }
}

/// Copy every session of `from` (most recently active first) and every lock in force at `now`
/// into `to`, under `rules`.
pub async fn copy(
    from: &EmbeddedStore,
    to: &RedisStore,
    rules: SeatRules,
    now: Timestamp,
) -> Result<Report, StoreError> {
    let mut sessions = from.sessions().await?;
    sessions.sort_by(|a, b| {
        b.last_activity
            .cmp(&a.last_activity)
            .then_with(|| a.key.cmp(&b.key))
    });
    let mut report = Report {
        from: from.file().to_path_buf(),
        to: to.describe(),
        ..Report::default()
    };
    for s in sessions {
        let i = to.import_session(&s, rules, now).await?;
        report.sessions.push((s, i));
    }
    for l in from.lockouts(now).await? {
        let i = to.import_lock(&l, now).await?;
        report.locks.push((l, i));
    }
    Ok(report)
}

/// Open the embedded store in `dir` to copy it: refused when there is none (rather than making
/// an empty one), and, with a hint, when a gateway has it open.
pub fn open_embedded(dir: &Path) -> anyhow::Result<EmbeddedStore> {
    let file = dir.join(FILE_NAME);
    if !file.is_file() {
        anyhow::bail!(
            "there is no embedded store at {} (give its folder with --from, or set store.path)",
            file.display()
        );
    }
    EmbeddedStore::open(dir).map_err(|e| match e {
        StoreError::Open { ref reason, .. } if reason.contains("in use") => anyhow::anyhow!(
            "{e}: stop the gateway first; the store is moved with no gateway running on it"
        ),
        other => other.into(),
    })
}

/// The seat rules of `cfg`'s `[policy]`.
pub fn seat_rules(cfg: &Config) -> SeatRules {
    let p = &cfg.policy;
    SeatRules {
        max_sessions: p.max_sessions,
        one_client: p.one_client_per_account,
        timeouts: Timeouts {
            idle: p.idle_timeout,
            api_idle: p.api_idle_timeout,
            absolute: p.absolute_timeout,
        },
    }
}

/// `faspex-gate migrate-store`: copy the embedded store in `from` (default `store.path`) into
/// the Redis store `cfg` names. A configuration error (not `store.kind = "redis"`, a setting
/// Redis refuses, such as another session secret) is a [`crate::config::ConfigError`]; Redis
/// that cannot be reached, or a store file that cannot be opened, is any other error.
pub async fn run(cfg: &Config, from: Option<&Path>, now: Timestamp) -> anyhow::Result<Report> {
    if cfg.store.kind != StoreKind::Redis {
        return Err(cfg
            .error(
                "store.kind",
                "migrate-store copies into the Redis store the configuration names: set \
                 store.kind = \"redis\" and [store.redis] first",
            )
            .into());
    }
    let setting = |e: StoreError| match e {
        StoreError::Setting { key, reason } => anyhow::Error::new(cfg.error(key, reason)),
        other => anyhow::Error::new(other),
    };
    let opts = RedisOptions::from_config(&cfg.store.redis).map_err(setting)?;
    let to = RedisStore::new(opts)
        .map_err(setting)?
        .with_secret(cfg.session.secret.expose());
    let dir = from.unwrap_or(&cfg.store.path);
    let embedded = open_embedded(dir)?;
    let where_ = to.describe();
    match tokio::time::timeout(REDIS_WAIT, to.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ StoreError::Setting { .. })) => return Err(setting(e)),
        Ok(Err(e)) => anyhow::bail!("cannot reach the Redis store at {where_}: {e}"),
        Err(_) => anyhow::bail!("the Redis store at {where_} did not answer within {REDIS_WAIT:?}"),
    }
    let report = copy(&embedded, &to, seat_rules(cfg), now).await;
    let closed = embedded.close().await;
    let report = report.map_err(|e| anyhow::anyhow!("copying into {where_}: {e}"))?;
    closed?;
    Ok(report)
}
