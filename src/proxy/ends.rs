//! What the gateway does when a session ends without the person logging out through it (idle,
//! absolute timeout, an admin kick, replacement by another client): it logs the Faspex session
//! out with the Faspex cookie kept at login, so that Faspex's own licence count stays in step;
//! and it remembers, for a while, why the session ended, so that the browser that comes back is
//! told ("signed out after inactivity") instead of being sent to the login page without a word.
//!
//! Both hang off the engine as an [`Observer`], which must not block: logouts go through a
//! bounded queue to one worker task. On the Redis store the logouts owed are not this gateway's
//! to send: the store records them in the step that ends the session, and every gateway sends
//! them from there ([`send_owed_logouts`]; [`crate::store::redis::outbox`]), so that one survives
//! the gateway that ended the session dying.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use arc_swap::ArcSwap;

use std::time::Duration;

use super::streams::SessionStreams;
use super::upstream::Upstream;
use crate::metrics::Metrics;
use crate::policy::{Observer, PolicyEvent};
use crate::store::redis::outbox::{Delivered, CLAIM_AFTER};
use crate::store::redis::RedisStore;
use crate::store::{EndReason, SessionKey};

/// How many ended sessions are remembered for the "why" pages.
const MEMO_ENTRIES: usize = 100_000;

/// How many Faspex logouts may wait; beyond it, one is dropped with a warning (Faspex ends the
/// session itself on its own timeout).
const LOGOUT_QUEUE: usize = 4096;

/// Why recent sessions ended, newest kept, at most [`MEMO_ENTRIES`].
#[derive(Default)]
pub struct EndedMemo {
    inner: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    why: HashMap<SessionKey, EndReason>,
    order: VecDeque<SessionKey>,
}

impl EndedMemo {
    pub fn remember(&self, key: &SessionKey, why: EndReason) {
        let mut m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if m.why.insert(key.clone(), why).is_none() {
            m.order.push_back(key.clone());
        }
        while m.order.len() > MEMO_ENTRIES {
            if let Some(old) = m.order.pop_front() {
                m.why.remove(&old);
            }
        }
    }

    /// Why the session under `key` ended, when it ended lately.
    pub fn why(&self, key: &SessionKey) -> Option<EndReason> {
        let m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        m.why.get(key).copied()
    }
}

/// The queue of Faspex logouts, worked by one task. Cheap to clone.
#[derive(Clone)]
pub struct FaspexLogouts(mpsc::Sender<String>);

impl FaspexLogouts {
    /// Queue a logout of the Faspex session behind `cookie` (a `Cookie` header value). Never
    /// blocks: when the queue is full, the logout is dropped with a warning.
    pub fn queue(&self, cookie: String) {
        if self.0.try_send(cookie).is_err() {
            tracing::warn!(
                "too many Faspex logouts waiting; one is dropped (Faspex will time it out)"
            );
        }
    }
}

/// The observer: remembers every end, ends the session's open streams, and queues a Faspex
/// logout for the ends the person did not ask for.
pub struct SessionEnds {
    memo: Arc<EndedMemo>,
    logouts: FaspexLogouts,
    streams: Arc<SessionStreams>,
    /// The store records the logouts owed (Redis): this observer does not send them.
    owed_in_store: bool,
}

/// What the request handler shares with the observer.
#[derive(Clone)]
pub struct Ends {
    /// Why sessions ended lately, for the page a returning browser sees.
    pub memo: Arc<EndedMemo>,
    /// Faspex logouts, for a login Faspex accepted that the gateway could not keep.
    pub logouts: FaspexLogouts,
    /// The sessions' open tunnels and long responses.
    pub streams: Arc<SessionStreams>,
}

impl SessionEnds {
    /// Start the logout worker on the current runtime. It runs until the observer and every
    /// [`FaspexLogouts`] handle are dropped.
    /// `logout_path` is `faspex.logout_path`, swapped on a reload; failures count in
    /// `metrics`. With `owed_in_store`, the logouts owed for the ends the gateway made are sent
    /// by [`send_owed_logouts`], not by this observer.
    pub fn start(
        upstream: Upstream,
        logout_path: Arc<ArcSwap<String>>,
        metrics: Arc<Metrics>,
        owed_in_store: bool,
    ) -> (Arc<Self>, Ends) {
        let memo = Arc::new(EndedMemo::default());
        let streams = Arc::new(SessionStreams::default());
        let (tx, mut rx) = mpsc::channel::<String>(LOGOUT_QUEUE);
        tokio::spawn(async move {
            while let Some(cookie) = rx.recv().await {
                let path = logout_path.load_full();
                match upstream.logout(&path, &cookie).await {
                    Ok(status) => tracing::debug!(
                        status = status.as_u16(),
                        "logged the Faspex session of an ended session out"
                    ),
                    Err(e) => {
                        metrics.upstream_error(e.kind());
                        tracing::warn!(
                            error = %e,
                            "could not log a Faspex session out after the gateway ended it"
                        )
                    }
                }
            }
        });
        let logouts = FaspexLogouts(tx);
        (
            Arc::new(Self {
                memo: Arc::clone(&memo),
                logouts: logouts.clone(),
                streams: Arc::clone(&streams),
                owed_in_store,
            }),
            Ends {
                memo,
                logouts,
                streams,
            },
        )
    }
}

impl Observer for SessionEnds {
    fn event(&self, e: &PolicyEvent<'_>) {
        let PolicyEvent::SessionEnded(s, why) = e else {
            return;
        };
        self.memo.remember(&s.key, *why);
        self.streams.end(&s.key);
        let gateway_ended = matches!(
            why,
            EndReason::Idle | EndReason::Absolute | EndReason::Admin | EndReason::Replaced
        );
        if let (true, false, Some(cookie)) = (gateway_ended, self.owed_in_store, &s.upstream_cookie)
        {
            self.logouts.queue(cookie.to_string());
        }
    }
}

/// How often the owed logouts are read when there were none.
const OWED_EVERY: Duration = Duration::from_secs(1);

/// Send the Faspex logouts the Redis store records as owed (see
/// [`crate::store::redis::outbox`]), as `consumer`, until aborted: each is sent, then marked
/// sent; a second sending is counted in `faspex_gate_logout_duplicates_total`.
pub fn send_owed_logouts(
    store: Arc<RedisStore>,
    consumer: String,
    upstream: Upstream,
    logout_path: Arc<ArcSwap<String>>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let owed = match store.owed_logouts(&consumer, CLAIM_AFTER).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "owed Faspex logouts cannot be read now");
                    Vec::new()
                }
            };
            if owed.is_empty() {
                tokio::time::sleep(OWED_EVERY).await;
                continue;
            }
            for o in owed {
                if !o.cookie.is_empty() {
                    let path = logout_path.load_full();
                    if let Err(e) = upstream.logout(&path, &o.cookie).await {
                        metrics.upstream_error(e.kind());
                        tracing::warn!(error = %e, "could not log a Faspex session out after the gateway ended it");
                    }
                }
                match store.logout_sent(&o.id).await {
                    Ok(Delivered::First) => {}
                    Ok(Delivered::Again) => {
                        metrics.logout_duplicate();
                        tracing::info!("a Faspex logout was sent a second time (another gateway had sent it, then stopped before recording it)");
                    }
                    // Not recorded: another gateway sends it again after CLAIM_AFTER.
                    Err(e) => {
                        tracing::warn!(error = %e, "a sent Faspex logout could not be recorded")
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_forgets_the_oldest() {
        let m = EndedMemo::default();
        for i in 0..(MEMO_ENTRIES + 5) {
            m.remember(&SessionKey(i.to_string().into()), EndReason::Idle);
        }
        assert_eq!(m.why(&SessionKey("0".into())), None);
        assert_eq!(m.why(&SessionKey("5".into())), Some(EndReason::Idle));
        assert_eq!(
            m.why(&SessionKey((MEMO_ENTRIES + 4).to_string().into())),
            Some(EndReason::Idle)
        );
    }
}
