//! Single-flight: parallel callers with the same key share one run of the work.
//!
//! A client that opens 32 connections at once with the same credentials gets one credential check,
//! not 32 (and is not throttled or locked out by its own parallelism). The key is a keyed hash,
//! so no password is ever held here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// The flights in progress.
pub struct SingleFlight<V> {
    flights: Mutex<HashMap<[u8; 32], Arc<OnceCell<V>>>>,
}

impl<V: Clone> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> SingleFlight<V> {
    /// Run `work` unless a flight under `key` is already running; either way, return its value
    /// and whether this caller ran it. If the runner is cancelled, a waiter runs it instead.
    pub async fn run<F, Fut>(&self, key: [u8; 32], work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(key).or_insert_with(|| Arc::new(OnceCell::new())))
        };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        // Later callers must start a fresh flight, not reuse this answer.
        let mut map = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        (value, ran)
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
                sf.run([7; 32], || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    42
                })
                .await
            }));
        }
        let mut ran = 0;
        for t in tasks {
            let (v, r) = t.await.unwrap();
            assert_eq!(v, 42);
            ran += r as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(ran, 1);
        assert_eq!(sf.in_flight(), 0);
        let (v, r) = sf.run([7; 32], || async { 43 }).await;
        assert_eq!((v, r), (43, true), "a finished flight is not reused");
    }
}
