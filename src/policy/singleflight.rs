//! Single-flight: parallel callers with the same key share one run of the work.
//!
//! A client that opens 32 connections at once with the same credentials gets one credential check,
//! not 32 (and is not throttled or locked out by its own parallelism). The key is a keyed hash,
//! so no password is ever held here.
//!
//! The work runs in its own task: a caller that goes away (a closed connection, an HTTP/2 stream
//! reset) cannot cancel a credential check half-way, so its result is always recorded, and the
//! flight's entry is always removed when the work ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Flights<V> = Mutex<HashMap<[u8; 32], watch::Receiver<Option<V>>>>;

/// The flights in progress.
pub struct SingleFlight<V> {
    flights: Arc<Flights<V>>,
}

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Removes a flight's entry when its task ends, however it ends.
struct Landing<V> {
    flights: Arc<Flights<V>>,
    key: [u8; 32],
}

impl<V> Drop for Landing<V> {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// Start `work` on its own task unless a flight under `key` is already running; either way,
    /// wait for its value. Returns the value (`None` if the work panicked) and whether this caller
    /// started it. `work` runs to the end even if every caller goes away.
    pub async fn run<F>(&self, key: [u8; 32], work: F) -> (Option<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, started) = {
            let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key, rx.clone());
                    let landing = Landing {
                        flights: Arc::clone(&self.flights),
                        key,
                    };
                    tokio::spawn(async move {
                        let v = work.await;
                        // Later callers must start a fresh flight, not reuse this answer.
                        drop(landing);
                        let _ = tx.send(Some(v));
                    });
                    (rx, true)
                }
            }
        };
        let value = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        (value, started)
    }

    /// Flights in progress.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn parallel_callers_share_one_run_and_later_ones_run_again() {
        let sf = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (sf, runs) = (sf.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                sf.run([7; 32], async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    42
                })
                .await
            }));
        }
        let mut started = 0;
        for t in tasks {
            let (v, s) = t.await.unwrap();
            assert_eq!(v, Some(42));
            started += s as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(started, 1);
        assert_eq!(sf.in_flight(), 0);
        let (v, s) = sf.run([7; 32], async { 43 }).await;
        assert_eq!((v, s), (Some(43), true), "a finished flight is not reused");
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_cancel_the_work_or_leak_its_entry() {
        let sf = Arc::new(SingleFlight::<u32>::default());
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let caller = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run([1; 32], async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    d.fetch_add(1, Ordering::SeqCst);
                    1
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "the work ran to its end");
        assert_eq!(sf.in_flight(), 0, "and its entry is gone");
    }

    #[tokio::test]
    async fn work_that_panics_answers_none_and_leaves_no_entry() {
        let sf = SingleFlight::<u32>::default();
        let (v, _) = sf.run([2; 32], async { panic!("boom") }).await;
        assert_eq!(v, None);
        assert_eq!(sf.in_flight(), 0);
    }
}
