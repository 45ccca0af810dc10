//! The failover scenario's clients and arithmetic: a steady stream of small GETs on a session
//! cookie and of logins through one gateway, every answer recorded with when it was sent and
//! when it came back; and, from those records, the gap clients saw around one `kill -9` of the
//! Redis master.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::load;

/// No answer within this long counts as a time-out (a non-success), and the connection is
/// dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request: when it was sent, when its answer (or error) came, and what it was.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub sent: Instant,
    pub done: Instant,
    /// The status, or what went wrong (`"timeout"`, `"connect"`, `"io"`).
    pub answer: String,
    pub ok: bool,
}

/// What a client keeps doing: GETs with `cookie`, or logins of `users` in turn.
#[derive(Clone, Debug)]
pub enum Work {
    Get { path: String, cookie: String },
    Login { users: Arc<Vec<(String, String)>> },
}

/// One client: `work` over a keep-alive connection (a new one after any error), a request
/// every `pause` at most, until `stop`; every outcome, in order.
pub async fn client(
    tls: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    work: Work,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut send: Option<load::Sender> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let next = sent + pause;
        if send.is_none() {
            match tokio::time::timeout(REQUEST_TIMEOUT, load::connect(&tls, addr, None)).await {
                Ok(Ok(s)) => send = Some(s),
                _ => {
                    out.push(Outcome {
                        sent,
                        done: Instant::now(),
                        answer: "connect".into(),
                        ok: false,
                    });
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
            }
        }
        let Some(s) = send.as_mut() else { continue };
        let req = match &work {
            Work::Get { path, cookie } => load::get(path, cookie),
            Work::Login { users } => {
                let (u, p) = &users[i % users.len()];
                i += 1;
                load::login_form(u, p)
            }
        };
        // An error or a time-out leaves the connection unusable: the next request opens another.
        let (answer, ok) = match tokio::time::timeout(REQUEST_TIMEOUT, load::call(s, req)).await {
            Ok(Ok((status, headers, _))) => {
                let ok = match &work {
                    Work::Get { .. } => status.is_success(),
                    Work::Login { .. } => {
                        (status == StatusCode::FOUND || status == StatusCode::SEE_OTHER)
                            && load::session_cookie(&headers, crate::COOKIE).is_some()
                    }
                };
                (status.as_u16().to_string(), ok)
            }
            Ok(Err(_)) => {
                send = None;
                ("io".to_owned(), false)
            }
            Err(_) => {
                send = None;
                ("timeout".to_owned(), false)
            }
        };
        out.push(Outcome {
            sent,
            done: Instant::now(),
            answer,
            ok,
        });
        tokio::time::sleep_until(next.into()).await;
    }
    out
}

/// An answer slower than this is a stall clients saw (a small GET or a login takes
/// milliseconds): a request held while the gateway looks for the new master counts like one
/// that failed.
const STALLED: Duration = Duration::from_secs(1);

/// The gap one kind of request saw around a kill at `kill`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Gap {
    /// From the kill to the answer of the first success after the last non-success or stall
    /// (an answer slower than [`STALLED`]) came back: when clients were served again for good.
    /// 0 when nothing failed or stalled.
    pub gap_s: f64,
    /// The longest stretch without any success (between two successes' answers, or from the
    /// kill to the first one).
    pub longest_without_success_s: f64,
    pub requests: usize,
    /// Non-successes by status (or error), after the kill.
    pub failures: BTreeMap<String, u64>,
    /// Successes that took longer than [`STALLED`], and the longest.
    pub stalled: u64,
    pub slowest_s: f64,
}

/// The gap `outcomes` (one kind, any clients, in any order) show around `kill`. `None` when no
/// request succeeded after the last failure or stall.
pub fn gap(outcomes: &[Outcome], kill: Instant) -> Option<Gap> {
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.done >= kill).collect();
    let took = |o: &Outcome| o.done.saturating_duration_since(o.sent);
    let disturbed = |o: &Outcome| !o.ok || took(o) > STALLED;
    let gap_s = match after.iter().filter(|o| disturbed(o)).map(|o| o.done).max() {
        None => 0.0,
        Some(last) => after
            .iter()
            .filter(|o| o.ok && o.done > last)
            .map(|o| o.done)
            .min()?
            .saturating_duration_since(kill)
            .as_secs_f64(),
    };
    let mut successes: Vec<Instant> = after.iter().filter(|o| o.ok).map(|o| o.done).collect();
    successes.sort();
    let mut longest = Duration::ZERO;
    let mut prev = kill;
    for t in successes {
        longest = longest.max(t.saturating_duration_since(prev));
        prev = t;
    }
    let mut failures = BTreeMap::new();
    for o in after.iter().filter(|o| !o.ok) {
        *failures.entry(o.answer.clone()).or_insert(0) += 1;
    }
    let stalled = after.iter().filter(|o| o.ok && took(o) > STALLED).count() as u64;
    Some(Gap {
        gap_s,
        longest_without_success_s: longest.as_secs_f64(),
        requests: after.len(),
        failures,
        stalled,
        slowest_s: after
            .iter()
            .map(|o| took(o))
            .max()
            .unwrap_or_default()
            .as_secs_f64(),
    })
}
