//! The HTTP/1 header-read timeout, timed by `serve` itself.
//!
//! hyper can time heads with a [`Timer`](hyper::rt::Timer), but then every
//! request on a keep-alive connection pays for it: when a response is done,
//! hyper goes round its dispatch loop once more to start the next head's
//! timer at once, reads the socket again (to find nothing), asks the timer
//! for the time and boxes a sleep. Under `valgrind --tool=callgrind` that is
//! about 1,000 instructions a request, 7% of a hello-world request's
//! (`benches/RESULTS.md`).
//!
//! So hyper gets no timer for HTTP/1, and `serve` times heads itself, with
//! no clock read and no allocation per request:
//!
//! * a connection's [`HeadDeadline`] is armed when one of its polls ends
//!   with the HTTP/1 connection idle: no request in flight and no response
//!   body being written. hyper is then waiting for the next head; the
//!   deadline holds the number of sweeps (below) done so far;
//! * a head that completes (hyper calls the service) disarms it;
//! * `serve` sweeps its connections every [`sweep_period`] (a quarter of the
//!   timeout), counting the sweeps. A deadline armed after sweep `a` fires
//!   at sweep `a + 1 + m`, where `m` periods cover the timeout: the
//!   connection is marked and its task woken, and the task closes it.
//!
//! The sweeps run on an interval that delays rather than bursts after a
//! stall, so `m` sweeps never come sooner than `m` periods: a client that
//! has not sent its whole head is cut off between `T` and `T + T/4` after
//! the connection went idle, as with hyper's timer. The first head of a
//! connection is timed separately (`serve_connection`), because until then
//! the protocol is not known.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// No deadline armed.
const IDLE: u64 = 0;
/// The armed deadline passed, and the sweep said so.
const FIRED: u64 = u64::MAX;

/// One connection's header-read deadline: idle, armed (with the sweep
/// count at arming, plus one), or fired. Only the connection's own task
/// arms and disarms it; the sweep only moves an armed deadline to fired,
/// with a compare-exchange, so a deadline disarmed or re-armed meanwhile is
/// left alone.
#[derive(Debug, Default)]
pub(crate) struct HeadDeadline(AtomicU64);

impl HeadDeadline {
    /// The connection went idle after `sweeps` sweeps: starts the clock on
    /// the next head, unless it is running (or has run out) already.
    #[inline]
    pub(crate) fn arm(&self, sweeps: u64) {
        if self.0.load(Relaxed) == IDLE {
            self.0
                .store(sweeps.saturating_add(1).min(FIRED - 1), Relaxed);
        }
    }

    /// A head arrived whole: nothing to time until the connection is idle
    /// again. Also clears a deadline that fired just as the head came in.
    #[inline]
    pub(crate) fn disarm(&self) {
        if self.0.load(Relaxed) != IDLE {
            self.0.store(IDLE, Relaxed);
        }
    }

    /// Whether the sweep found the deadline passed.
    #[inline]
    pub(crate) fn fired(&self) -> bool {
        self.0.load(Relaxed) == FIRED
    }

    /// Sweep number `sweep`: marks a deadline armed at least `periods`
    /// sweeps before this one as fired. True if it did; the caller then
    /// wakes the connection's task.
    pub(crate) fn fire_if_due(&self, sweep: u64, periods: u64) -> bool {
        let armed = self.0.load(Relaxed);
        armed != IDLE
            && armed != FIRED
            && sweep >= armed.saturating_add(periods)
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

/// How many sweep periods cover `timeout` (at least one).
pub(crate) fn periods(timeout: Duration) -> u64 {
    let p = sweep_period(timeout).as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(p))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs sweeps `from..=to` over `head`; the first one that fires.
    fn sweep(head: &HeadDeadline, from: u64, to: u64, periods: u64) -> Option<u64> {
        (from..=to).find(|&s| head.fire_if_due(s, periods))
    }

    #[test]
    fn a_deadline_fires_only_after_the_periods_that_cover_the_timeout() {
        let head = HeadDeadline::default();
        // Idle after 7 sweeps; the timeout is 4 periods.
        head.arm(7);
        assert!(!head.fired());
        // Sweep 8 is the first after arming: less than one period may have
        // passed by then, so it takes four more.
        assert_eq!(sweep(&head, 8, 20, 4), Some(12));
        assert!(head.fired());
        // Fired once.
        assert_eq!(sweep(&head, 12, 20, 4), None);
    }

    #[test]
    fn an_unarmed_deadline_never_fires() {
        let head = HeadDeadline::default();
        assert_eq!(sweep(&head, 0, 1000, 4), None);
        assert!(!head.fired());
    }

    #[test]
    fn a_head_that_arrives_disarms_and_the_next_idle_starts_afresh() {
        let head = HeadDeadline::default();
        head.arm(0);
        assert_eq!(sweep(&head, 1, 4, 4), None);
        head.disarm();
        assert_eq!(sweep(&head, 5, 100, 4), None);
        // Idle again after sweep 100: the clock starts there.
        head.arm(100);
        assert_eq!(sweep(&head, 101, 200, 4), Some(105));
    }

    #[test]
    fn arming_again_while_armed_keeps_the_first_start() {
        // hyper waits for the rest of a trickled head over several polls,
        // each of which ends idle: the clock runs from the first.
        let head = HeadDeadline::default();
        head.arm(3);
        head.arm(9);
        assert_eq!(sweep(&head, 4, 20, 4), Some(8));
    }

    #[test]
    fn a_sweep_that_read_an_old_arming_does_not_fire_the_new_one() {
        let head = HeadDeadline::default();
        head.arm(0);
        let seen = head.0.load(Relaxed);
        head.disarm();
        head.arm(50);
        // The sweep's compare-exchange on the value it read fails.
        assert!(
            head.0
                .compare_exchange(seen, FIRED, Relaxed, Relaxed)
                .is_err()
        );
        assert!(!head.fired());
    }

    #[test]
    fn a_head_completing_as_the_deadline_fires_clears_it() {
        let head = HeadDeadline::default();
        head.arm(0);
        assert!(head.fire_if_due(10, 4));
        head.disarm();
        assert!(!head.fired());
    }

    #[test]
    fn the_sweep_runs_four_times_a_timeout_and_at_most_every_millisecond() {
        assert_eq!(
            sweep_period(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(sweep_period(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(periods(Duration::from_secs(10)), 4);
        assert_eq!(periods(Duration::from_millis(400)), 4);
        assert_eq!(periods(Duration::from_millis(2)), 2);
        assert_eq!(periods(Duration::from_micros(2500)), 3);
        assert_eq!(periods(Duration::ZERO), 1);
    }
}
