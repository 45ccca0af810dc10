//! The header-read timeout of an HTTP/1.1 connection (`server.header_read_timeout`): a client
//! has that long to send a request's whole head, counted from the end of the TLS handshake (the
//! connection's start, over plain HTTP) or from the end of the last response. It also bounds an idle keep-alive connection, and cuts off a client
//! that trickles its head a byte at a time (slowloris).
//!
//! hyper's own `header_read_timeout` does the same with a timer made, registered and cancelled
//! for every request: about 1,400 instructions of a small GET (`benches/instructions.sh`,
//! 57,645 with it against 56,205 without). Here each connection keeps one timer for its whole
//! life. A request's arrival and its response's end only write the connection's [`HeadClock`]
//! (its response body, a [`Clocked`], writes the end when hyper drops it), and the timer, when it
//! fires, reads the clock: past the limit since the wait began it ends the connection, and
//! otherwise it sets itself for the wait's own deadline (or, while a request is being served, for
//! a whole limit later). So the timer fires at most about twice per limit, however many requests
//! the connection carries, and never later than the deadline.
//!
//! The wait begins when hyper is done with the response's body: its last bytes may still be on
//! their way to the client (as with hyper's timer), and a request body still arriving after its
//! answer ended (Faspex refused an upload early) counts as waiting, which hyper's timer, started
//! only once the request body was read, did not: such a connection is cut a limit after the
//! answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// When one HTTP/1.1 connection began waiting for a request's head, or that it is serving one.
#[derive(Debug)]
pub(super) struct HeadClock {
    base: Instant,
    /// [`SERVING`], or the milliseconds after `base` at which the wait began.
    state: AtomicU64,
}

/// The connection is serving a request: its head is in, its response not yet over.
const SERVING: u64 = u64::MAX;

impl HeadClock {
    /// A connection that starts waiting for its first request's head now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(HeadClock {
            base: Instant::now(),
            state: AtomicU64::new(0),
        })
    }

    /// A request's head is in: the connection waits for none until its response is over. Hand
    /// the response's body the [`HeadWait`] this gives.
    pub(super) fn serving(self: &Arc<Self>) -> HeadWait {
        self.state.store(SERVING, Ordering::Relaxed);
        HeadWait(Arc::clone(self))
    }

    /// Since when the connection has waited for a head; `None` while it serves a request.
    fn waiting_since(&self) -> Option<Instant> {
        match self.state.load(Ordering::Relaxed) {
            SERVING => None,
            ms => Some(self.base + Duration::from_millis(ms)),
        }
    }

    /// The wait's deadline, or while a request is served, a whole `limit` from now: the earliest
    /// the connection could have to be cut.
    fn deadline(&self, limit: Duration) -> Instant {
        match self.waiting_since() {
            None => Instant::now() + limit,
            Some(since) => since + limit,
        }
    }

    /// Ends once the connection has waited `limit` for a head; never while it serves a request.
    pub(super) fn expired(&self, limit: Duration) -> Expiry<'_> {
        let limit = limit.min(crate::util::TIMER_CAP);
        Expiry {
            clock: self,
            limit,
            timer: Box::pin(tokio::time::sleep_until(self.deadline(limit))),
            registered: None,
        }
    }
}

/// [`HeadClock::expired`]'s future. The connection's task polls it at each of its wake-ups
/// (several per request): it polls its timer only when the timer has fired, or has not yet
/// taken the task's waker since it was last set (a poll of a set timer costs about a hundred
/// instructions, a look at whether it fired two). The timer is polled outside tokio's per-task
/// budget, which could otherwise turn the poll away before it reaches the timer and leaves it
/// the waker (as `tokio::time::timeout` does for its own timer, and for the same reason: a
/// connection that spent its budget must still see its deadline).
pub(super) struct Expiry<'a> {
    clock: &'a HeadClock,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, since it was last set.
    registered: Option<Waker>,
}

impl Future for Expiry<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let told = this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if told && !this.timer.is_elapsed() {
                return Poll::Pending;
            }
            let timer = std::pin::pin!(tokio::task::coop::unconstrained(this.timer.as_mut()));
            if timer.poll(cx).is_pending() {
                this.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let deadline = this.clock.deadline(this.limit);
            if deadline <= Instant::now() {
                return Poll::Ready(());
            }
            this.timer.as_mut().reset(deadline);
            this.registered = None;
        }
    }
}

/// Held by a response's body: when hyper drops it (the response is over, or the connection
/// went), the connection waits for the next request's head from then.
#[derive(Debug)]
pub(super) struct HeadWait(Arc<HeadClock>);

impl Drop for HeadWait {
    fn drop(&mut self) {
        let clock = &self.0;
        // (`as_millis` fits in 64 bits for 584 million years; never `SERVING`)
        let ms = (clock.base.elapsed().as_millis() as u64).min(SERVING - 1);
        clock.state.store(ms, Ordering::Relaxed);
    }
}

/// A response body that holds its connection's [`HeadWait`] until hyper is done with it, and is
/// otherwise its inner body.
pub(super) struct Clocked<B> {
    pub(super) inner: B,
    pub(super) _wait: HeadWait,
}

impl<B> Body for Clocked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A future's output, or `None` if `clock` ran out first (the connection waited `limit` for a
/// request's head).
pub(super) async fn within<F: Future>(
    clock: &HeadClock,
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = fut => Some(out),
        () = clock.expired(limit) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock's deadline on a paused tokio clock: it ends a connection that waited the limit,
    /// from its start or from its last response's end, and never one that serves a request.
    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_only_while_the_connection_waits_for_a_head() {
        let limit = Duration::from_secs(10);
        let clock = HeadClock::new();
        let t0 = Instant::now();
        let watch = tokio::spawn({
            let clock = clock.clone();
            async move {
                clock.expired(limit).await;
                Instant::now()
            }
        });

        // A request 4 s in, served for 30 s (three limits), then the response ends.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let wait = clock.serving();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watch.is_finished(), "cut while serving a request");
        drop(wait);
        let ended = Instant::now();

        // 9.9 s later it still waits; at 10 s from the response's end it is cut.
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(!watch.is_finished(), "cut before the limit");
        let cut = tokio::time::timeout(Duration::from_secs(3600), watch)
            .await
            .expect("never cut")
            .unwrap();
        assert_eq!(
            cut - ended,
            limit,
            "cut at the limit after the response ended"
        );
        assert_eq!(cut - t0, Duration::from_secs(44));
    }

    /// The task that polls the clock wakes for other reasons too (every 250 ms here): those
    /// polls only look whether the timer fired, and it still ends the wait at the deadline.
    #[tokio::test(start_paused = true)]
    async fn other_wake_ups_neither_hasten_nor_hide_the_deadline() {
        let limit = Duration::from_secs(3);
        let clock = HeadClock::new();
        let t0 = Instant::now();
        // (in a task of its own, as a connection is: a task's waker is the same at each poll)
        let (ended, wakes) = tokio::spawn(async move {
            let mut expiry = std::pin::pin!(clock.expired(limit));
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut wakes = 0;
            loop {
                tokio::select! {
                    biased;
                    () = &mut expiry => break (true, wakes),
                    _ = tick.tick() => wakes += 1,
                }
                if wakes > 100 {
                    break (false, wakes);
                }
            }
        })
        .await
        .unwrap();
        assert!(ended, "the deadline was missed");
        assert_eq!(Instant::now() - t0, limit);
        assert!(wakes >= 12, "{wakes} other wake-ups");
    }

    /// A task that has spent its budget (all of it, in the very poll that first polls the clock)
    /// still arms the timer: the deadline ends the wait.
    #[tokio::test(start_paused = true)]
    async fn a_task_that_spent_its_budget_still_arms_the_timer() {
        let limit = Duration::from_secs(3);
        let clock = HeadClock::new();
        let t0 = Instant::now();
        let cut = tokio::spawn(async move {
            let mut expiry = Box::pin(clock.expired(limit));
            let mut first = true;
            std::future::poll_fn(|cx| {
                if std::mem::take(&mut first) {
                    while std::pin::pin!(tokio::task::coop::consume_budget())
                        .poll(cx)
                        .is_ready()
                    {}
                    assert!(!tokio::task::coop::has_budget_remaining());
                }
                expiry.as_mut().poll(cx)
            })
            .await;
            Instant::now()
        });
        let cut = tokio::time::timeout(Duration::from_secs(3600), cut)
            .await
            .expect("never cut")
            .unwrap();
        assert_eq!(cut - t0, limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_head_is_cut_at_the_limit() {
        let limit = Duration::from_secs(3);
        let clock = HeadClock::new();
        let t0 = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(3600),
            within(&clock, limit, std::future::pending::<()>()),
        )
        .await
        .expect("never cut");
        assert_eq!(out, None);
        assert_eq!(Instant::now() - t0, limit);

        // and a future that ends first gives its output
        let clock = HeadClock::new();
        let out = within(&clock, limit, async { 7 }).await;
        assert_eq!(out, Some(7));
    }
}
