//! The HTTP/1 header-read timeout, without a timer per request.
//!
//! hyper arms its timer each time it starts reading a request's head and
//! drops it once the head is parsed. With a tokio timer, every request on
//! a keep-alive connection pays for a boxed `Sleep`, an insertion into
//! tokio's timer wheel and a removal from it, each under the wheel's lock,
//! which all the runtime's threads share.
//!
//! Here, hyper gets a [`HeadTimer`] for each connection. The sleep it makes
//! only writes its deadline into the connection's [`HeadDeadline`] when
//! hyper first waits on it (one relaxed store), and clears it when dropped.
//! [`serve`](crate::serve) sweeps its connections every quarter of the
//! timeout. A connection whose deadline has passed is marked as timed out
//! and its task is woken; hyper then finds its sleep expired and closes the
//! connection. A client that has not sent its whole head is cut off between
//! `T` and `T + T/4` after hyper began to wait for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// No deadline armed.
const IDLE: u64 = 0;
/// The armed deadline passed, and the sweep said so.
const FIRED: u64 = u64::MAX;

/// Where the deadlines count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` in nanoseconds since [`epoch`], kept clear of `IDLE` and `FIRED`.
fn stamp(t: Instant) -> u64 {
    let ns = t.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX).clamp(1, FIRED - 1)
}

/// One connection's header-read deadline: idle, armed with a time, or
/// fired.
#[derive(Debug, Default)]
pub(crate) struct HeadDeadline(AtomicU64);

impl HeadDeadline {
    /// Sweep: marks an armed deadline that has passed by `now` as fired.
    /// True if it did; the caller then wakes the connection's task. A
    /// deadline armed again meanwhile (a new head) is left alone.
    pub(crate) fn fire_if_passed(&self, now: Instant) -> bool {
        let armed = self.0.load(Relaxed);
        armed != IDLE
            && armed != FIRED
            && stamp(now) >= armed
            && self
                .0
                .compare_exchange(armed, FIRED, Relaxed, Relaxed)
                .is_ok()
    }
}

/// How often [`serve`](crate::serve) sweeps for passed deadlines: a
/// quarter of the timeout, and not more often than every millisecond.
pub(crate) fn sweep_period(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(1))
}

/// hyper's HTTP/1 timer for one connection. hyper's HTTP/1 connections
/// use their timer for the header-read timeout only.
#[derive(Debug, Clone)]
pub(crate) struct HeadTimer(pub(crate) Arc<HeadDeadline>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // A deadline too far to represent never comes.
        let deadline = Instant::now()
            .checked_add(duration)
            .unwrap_or_else(|| epoch() + Duration::from_nanos(FIRED - 1));
        self.sleep_until(deadline)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            head: self.0.clone(),
            deadline: stamp(deadline),
            armed: false,
        })
    }
}

/// The sleep of one head. It is woken through the connection's own waker
/// (see `serve`'s `Control`), which the connection registers on every poll.
struct HeadSleep {
    head: Arc<HeadDeadline>,
    deadline: u64,
    armed: bool,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            self.armed = true;
            self.head.0.store(self.deadline, Relaxed);
            return Poll::Pending;
        }
        if self.head.0.load(Relaxed) == FIRED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        // A connection has one head sleep at a time: hyper drops the last
        // one before it arms the next.
        if self.armed {
            self.head.0.store(IDLE, Relaxed);
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    fn poll(s: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        s.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_sleep_fires_only_after_its_deadline_passed_and_the_sweep_saw_it() {
        let head = Arc::new(HeadDeadline::default());
        let timer = HeadTimer(head.clone());
        let start = Instant::now();
        let mut s = timer.sleep_until(start + Duration::from_millis(100));
        // Not armed until hyper waits on it: the sweep ignores it.
        assert!(!head.fire_if_passed(start + Duration::from_secs(1)));
        assert_eq!(poll(&mut s), Poll::Pending);
        assert!(!head.fire_if_passed(start + Duration::from_millis(99)));
        assert_eq!(poll(&mut s), Poll::Pending);
        assert!(head.fire_if_passed(start + Duration::from_millis(100)));
        assert_eq!(poll(&mut s), Poll::Ready(()));
        // Fired once.
        assert!(!head.fire_if_passed(start + Duration::from_secs(1)));
    }

    #[test]
    fn a_dropped_sleep_leaves_nothing_to_fire_and_the_next_one_starts_afresh() {
        let head = Arc::new(HeadDeadline::default());
        let timer = HeadTimer(head.clone());
        let start = Instant::now();
        let mut first = timer.sleep_until(start + Duration::from_millis(10));
        assert_eq!(poll(&mut first), Poll::Pending);
        drop(first);
        assert!(!head.fire_if_passed(start + Duration::from_secs(1)));
        let mut next = timer.sleep_until(start + Duration::from_secs(2));
        assert_eq!(poll(&mut next), Poll::Pending);
        assert!(!head.fire_if_passed(start + Duration::from_secs(1)));
        assert_eq!(poll(&mut next), Poll::Pending);
        assert!(head.fire_if_passed(start + Duration::from_secs(2)));
        assert_eq!(poll(&mut next), Poll::Ready(()));
    }

    #[test]
    fn a_sweep_that_read_an_old_deadline_does_not_fire_the_new_one() {
        let head = Arc::new(HeadDeadline::default());
        let timer = HeadTimer(head.clone());
        let start = Instant::now();
        let mut old = timer.sleep_until(start + Duration::from_millis(10));
        assert_eq!(poll(&mut old), Poll::Pending);
        let seen = head.0.load(Relaxed);
        drop(old);
        let mut new = timer.sleep_until(start + Duration::from_secs(60));
        assert_eq!(poll(&mut new), Poll::Pending);
        // The sweep's compare-exchange on the deadline it read fails.
        assert!(
            head.0
                .compare_exchange(seen, FIRED, Relaxed, Relaxed)
                .is_err()
        );
        assert_eq!(poll(&mut new), Poll::Pending);
    }

    #[test]
    fn a_duration_too_long_to_represent_never_fires() {
        let head = Arc::new(HeadDeadline::default());
        let mut s = HeadTimer(head.clone()).sleep(Duration::MAX);
        assert_eq!(poll(&mut s), Poll::Pending);
        assert!(!head.fire_if_passed(Instant::now() + Duration::from_secs(3600 * 24 * 365)));
    }

    #[test]
    fn the_sweep_runs_four_times_a_timeout_and_at_most_every_millisecond() {
        assert_eq!(
            sweep_period(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(sweep_period(Duration::ZERO), Duration::from_millis(1));
    }
}
