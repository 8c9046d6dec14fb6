//! The protocol between a monitored thread and the watchdog.
//!
//! Every event thread and every pool thread owns one [`Slot`]. The thread
//! publishes what it is running in the slot; the watchdog samples all slots
//! and acts on a poll that has run past its budget. This file is the only
//! place where the two sides meet, and it is small on purpose so that it can
//! be model-checked with loom (`RUSTFLAGS="--cfg curfew_loom"`, see the tests at
//! the bottom).
//!
//! # The state word
//!
//! One `AtomicU64` holds `tag | seq | budget`:
//!
//! ```text
//!  63            32 31            3 2   0
//! +----------------+---------------+-----+
//! |  poll sequence | budget        | tag |
//! +----------------+---------------+-----+
//! ```
//!
//! The budget field is a small float: two bits of unit (µs, ms, s) and 27
//! bits of count, rounded up, so budgets from 1 µs to about four years are
//! timed, never early and late by under 1 µs or 1/130,000 of themselves
//! (see [`budget_code`]). Only the watchdog decodes it; the owner stores
//! the code as it is.
//!
//! The owner thread moves `IDLE -> RUNNING` with a plain store at the start of
//! every poll and `RUNNING -> IDLE` with one compare-exchange at the end. Those
//! two atomic operations are the whole per-poll cost of the watchdog; there is
//! no clock read, syscall or lock on the hot path.
//!
//! The watchdog moves a poll it finds over budget through
//! `RUNNING -> CLAIMED -> EXPIRED -> HIJACKED`:
//!
//! * `CLAIMED`: the watchdog is resolving the task's handle. While a slot is
//!   claimed the owner cannot leave its poll, so the task header the slot
//!   points to stays alive. This is what makes it sound for the watchdog to
//!   touch the header of a task it does not own. The watchdog also holds a
//!   poll that is still within its budget `CLAIMED` for a moment
//!   ([`SlotState::hold`]), to mark its thread handed off, and then puts
//!   back the same `RUNNING` word: the owner, which cannot return from the
//!   poll meanwhile, is then sure to see the mark when it does.
//! * `EXPIRED`: the handle has been answered with a timeout. If the poll
//!   returns now (for example because it reached a `checkpoint()`), the owner
//!   moves the slot back to `IDLE` and keeps serving: nothing is abandoned.
//! * `HIJACKED`: the grace period ran out while the poll was still running.
//!   The watchdog has started a replacement thread; when the poll finally
//!   returns, the owner drops the task and exits.
//!
//! The owner's end-of-poll compare-exchange and the watchdog's transitions are
//! the only read-modify-write operations on the word, so the race between "the
//! poll finished" and "the watchdog fired" always has exactly one winner.

#[cfg(curfew_loom)]
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(curfew_loom))]
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, fence};

/// Between polls; the thread is looking for work.
pub(crate) const IDLE: u64 = 0;
/// A poll is running.
pub(crate) const RUNNING: u64 = 1;
/// The watchdog is resolving the running task's handle.
pub(crate) const CLAIMED: u64 = 2;
/// The task timed out; the poll is still running, within the grace period.
pub(crate) const EXPIRED: u64 = 3;
/// The thread has been written off and replaced.
pub(crate) const HIJACKED: u64 = 4;
/// The thread is parked, waiting for work.
pub(crate) const SLEEPING: u64 = 5;

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const BUDGET_BITS: u32 = 29;
const BUDGET_MASK: u64 = (1 << BUDGET_BITS) - 1;

/// The budget code that means "never time this poll out".
pub(crate) const UNLIMITED: u32 = BUDGET_MASK as u32;

/// Bits of count in a budget code; the two bits above them are the unit.
const COUNT_BITS: u32 = BUDGET_BITS - 2;
const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;
/// The units of a budget code, in nanoseconds: µs, ms, s.
const UNIT_NS: [u128; 3] = [1_000, 1_000_000, 1_000_000_000];

/// The longest budget the state word holds: 2^27 − 1 seconds, about four
/// years and three months.
pub(crate) const MAX_BUDGET: std::time::Duration =
    std::time::Duration::from_secs(COUNT_MASK as u64);

/// Encodes a budget for the state word: in the finest unit (µs, ms or s)
/// whose 27-bit count holds it, rounded up, so that the watchdog never fires
/// early and is late by less than one unit: under 1 µs up to 134 s, under
/// 1 ms up to 37 hours, under 1 s up to [`MAX_BUDGET`], which longer budgets
/// are capped at (the builders reject them or document the cap).
pub(crate) fn budget_code(budget: Option<std::time::Duration>) -> u32 {
    let Some(d) = budget else {
        return UNLIMITED;
    };
    let ns = d.min(MAX_BUDGET).as_nanos();
    for (unit, unit_ns) in UNIT_NS.iter().enumerate() {
        let count = ns.div_ceil(*unit_ns);
        if count <= u128::from(COUNT_MASK) {
            // A zero budget is rejected by the builders; keep at least one unit.
            return ((unit as u32) << COUNT_BITS) | (count as u32).max(1);
        }
    }
    // MAX_BUDGET is COUNT_MASK seconds, which the last unit holds.
    unreachable!("a budget capped at MAX_BUDGET fits in seconds")
}

/// The budget a code (other than [`UNLIMITED`]) stands for.
#[inline]
pub(crate) fn budget_duration(code: u32) -> std::time::Duration {
    let count = u64::from(code & COUNT_MASK);
    match code >> COUNT_BITS {
        0 => std::time::Duration::from_micros(count),
        1 => std::time::Duration::from_millis(count),
        _ => std::time::Duration::from_secs(count),
    }
}

#[inline]
pub(crate) const fn pack(tag: u64, seq: u32, budget: u32) -> u64 {
    ((seq as u64) << 32) | (((budget as u64) & BUDGET_MASK) << TAG_BITS) | tag
}

#[inline]
pub(crate) const fn tag(word: u64) -> u64 {
    word & TAG_MASK
}

#[inline]
pub(crate) const fn seq(word: u64) -> u32 {
    (word >> 32) as u32
}

#[inline]
pub(crate) const fn budget(word: u64) -> u32 {
    ((word >> TAG_BITS) & BUDGET_MASK) as u32
}

/// What the owner learns when its poll ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollEnd {
    /// The poll finished within its budget.
    InTime,
    /// The task timed out, but the poll returned within the grace period:
    /// the thread stays healthy.
    TimedOut,
    /// The thread was replaced; it must drop the task and exit.
    Hijacked,
}

/// Whether the watchdog is parked for want of anything to watch (every
/// thread asleep), and the handshake that keeps it from sleeping through a
/// thread's wake-up.
///
/// A thread that makes itself watchable (leaves its park, or queues a task
/// while it sits in the I/O driver) publishes that in its slot, then asks
/// [`must_wake`](Self::must_wake); the watchdog sets the flag, then looks
/// at every slot once more ([`try_park`](Self::try_park)) before it parks.
/// With a fence on each side, either the watchdog sees the thread awake, or
/// the thread sees the flag and unparks it. A watchdog between two ticks
/// is not woken at all: it looks again within an interval.
#[derive(Debug)]
pub(crate) struct WatchdogPark {
    parked: AtomicBool,
}

impl WatchdogPark {
    pub(crate) fn new() -> Self {
        Self {
            parked: AtomicBool::new(false),
        }
    }

    /// Watchdog: whether it may park, asking `anyone_awake` after setting
    /// the flag. If it may not, the flag is cleared again.
    pub(crate) fn try_park(&self, anyone_awake: impl FnOnce() -> bool) -> bool {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if anyone_awake() {
            self.parked.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Watchdog: back from its park.
    pub(crate) fn unparked(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }

    /// A thread that has just published itself watchable: whether it must
    /// unpark the watchdog.
    #[inline]
    pub(crate) fn must_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.parked.load(Ordering::Relaxed)
    }

    /// Whether the watchdog is parked (polls then stamp their own start).
    #[inline]
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

/// One monitored thread's published state. `T` is the task header type.
#[derive(Debug)]
pub(crate) struct SlotState<T> {
    word: AtomicU64,
    /// The header of the task being polled. Meaningful only while the word is
    /// `RUNNING`, and dereferenced by the watchdog only while it holds the
    /// slot `CLAIMED`.
    current: AtomicPtr<T>,
    /// The client index of the task being polled, for CPU-time attribution.
    client: AtomicU32,
}

impl<T> SlotState<T> {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU64::new(pack(IDLE, 0, 0)),
            current: AtomicPtr::new(std::ptr::null_mut()),
            client: AtomicU32::new(0),
        }
    }

    /// Owner: a poll of `task` begins. Three relaxed-or-release stores.
    #[inline]
    pub(crate) fn begin(&self, seq: u32, budget: u32, client: u32, task: *const T) {
        self.current.store(task as *mut T, Ordering::Relaxed);
        self.client.store(client, Ordering::Relaxed);
        // Release: a watchdog that acquires this word sees `current`.
        self.word
            .store(pack(RUNNING, seq, budget), Ordering::Release);
    }

    /// Owner: the poll that began with `seq`/`budget` has returned.
    #[inline]
    pub(crate) fn end(&self, seq: u32, budget: u32) -> PollEnd {
        let running = pack(RUNNING, seq, budget);
        match self.word.compare_exchange(
            running,
            pack(IDLE, seq, 0),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => PollEnd::InTime,
            Err(_) => self.end_slow(seq),
        }
    }

    #[cold]
    fn end_slow(&self, seq: u32) -> PollEnd {
        // Moves the slot from `word` to idle; fails if the watchdog moved
        // it meanwhile.
        let to_idle = |word| {
            self.word
                .compare_exchange(
                    word,
                    pack(IDLE, seq, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        };
        loop {
            let word = self.word.load(Ordering::Acquire);
            match tag(word) {
                // The watchdog is using our task header; it holds the claim for
                // a few instructions, so wait it out.
                CLAIMED => spin_wait(),
                // Held and released again (see `hold`): end as usual.
                RUNNING if to_idle(word) => return PollEnd::InTime,
                EXPIRED if to_idle(word) => return PollEnd::TimedOut,
                RUNNING | EXPIRED => {}
                HIJACKED => return PollEnd::Hijacked,
                other => unreachable!("slot in state {other} at the end of a poll"),
            }
        }
    }

    /// Owner: inside one running poll, moves the slot from the poll
    /// published as `from` (a `RUNNING` word of this thread's) to a new one:
    /// `to_seq`, `to_budget`, `client` and `task`. This is how a watched
    /// scope inside a task's poll ([`Inline`](crate::task::Inline)) begins,
    /// and how it ends, handing the slot back to the enclosing poll.
    ///
    /// The owner holds the word `CLAIMED` while it changes `current` and
    /// `client`, so the watchdog can neither claim the old word and read the
    /// new task, nor the new word and read the old one: a claim and a hold
    /// both compare-exchange from `RUNNING`. The word is then published with
    /// a release store, as in [`begin`](Self::begin).
    ///
    /// Returns how the `from` poll ended. `InTime`: the slot is switched.
    /// `TimedOut`: the watchdog answered it; with `through_expired` the
    /// slot is switched all the same (the scope returned within the grace,
    /// and its thread stays healthy), without it the word is left `EXPIRED`
    /// for the enclosing poll's own end to find. `Hijacked`: the thread was
    /// written off, and the word is left `HIJACKED`.
    pub(crate) fn switch(
        &self,
        from: u64,
        to_seq: u32,
        to_budget: u32,
        client: u32,
        task: *const T,
        through_expired: bool,
    ) -> PollEnd {
        debug_assert_eq!(tag(from), RUNNING);
        let mut expected = from;
        let mut end = PollEnd::InTime;
        loop {
            match self.word.compare_exchange(
                expected,
                (expected & !TAG_MASK) | CLAIMED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(word) => match tag(word) {
                    // The watchdog is resolving the task (it has claimed the
                    // poll) or marking a hand-off (it holds the poll, and
                    // puts back `from`): wait it out.
                    CLAIMED => {
                        spin_wait();
                        expected = from;
                    }
                    RUNNING => {
                        // Only the owner publishes a running word, and a
                        // hold puts back the one it took.
                        debug_assert_eq!(word, from, "a scope switched from a stale word");
                        expected = from;
                    }
                    EXPIRED if through_expired => {
                        expected = word;
                        end = PollEnd::TimedOut;
                    }
                    EXPIRED => return PollEnd::TimedOut,
                    HIJACKED => return PollEnd::Hijacked,
                    other => unreachable!("slot in state {other} inside a poll"),
                },
            }
        }
        // Ours, as `CLAIMED`: the watchdog looks but cannot act.
        self.current.store(task as *mut T, Ordering::Relaxed);
        self.client.store(client, Ordering::Relaxed);
        self.word
            .store(pack(RUNNING, to_seq, to_budget), Ordering::Release);
        end
    }

    /// Owner: about to park.
    pub(crate) fn sleep(&self, seq: u32) {
        self.word.store(pack(SLEEPING, seq, 0), Ordering::SeqCst);
    }

    /// Owner: back from parking.
    pub(crate) fn wake(&self, seq: u32) {
        self.word.store(pack(IDLE, seq, 0), Ordering::SeqCst);
    }

    /// Anyone: the current state word.
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        self.word.load(Ordering::Acquire)
    }

    /// Anyone: the client index of the most recent poll.
    pub(crate) fn client(&self) -> u32 {
        self.client.load(Ordering::Relaxed)
    }

    /// Watchdog: claims the poll observed as `observed` (a `RUNNING` word).
    ///
    /// On success the owner cannot finish that poll until [`Self::expire`] is
    /// called, so the returned header pointer stays valid until then.
    pub(crate) fn claim(&self, observed: u64) -> Option<*const T> {
        debug_assert_eq!(tag(observed), RUNNING);
        let claimed = (observed & !TAG_MASK) | CLAIMED;
        self.word
            .compare_exchange(observed, claimed, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| self.current.load(Ordering::Relaxed) as *const T)
    }

    /// Watchdog: holds the poll observed as `observed` (`RUNNING`) where it
    /// is, without touching its task: until [`release`](Self::release), the
    /// owner cannot finish the poll. Returns false if the poll has returned.
    pub(crate) fn hold(&self, observed: u64) -> bool {
        debug_assert_eq!(tag(observed), RUNNING);
        let held = (observed & !TAG_MASK) | CLAIMED;
        self.word
            .compare_exchange(observed, held, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Watchdog: lets go of a poll taken with [`hold`](Self::hold), putting
    /// back the word it held. Release: what the watchdog wrote while
    /// holding the poll is seen by the owner once its poll ends.
    pub(crate) fn release(&self, observed: u64) {
        debug_assert_eq!(tag(self.word.load(Ordering::Relaxed)), CLAIMED);
        self.word.store(observed, Ordering::Release);
    }

    /// Watchdog: done with the header of the claimed poll; its task has been
    /// answered. Returns the `EXPIRED` word.
    pub(crate) fn expire(&self) -> u64 {
        let word = self.word.load(Ordering::Relaxed);
        debug_assert_eq!(tag(word), CLAIMED);
        let expired = (word & !TAG_MASK) | EXPIRED;
        self.word.store(expired, Ordering::Release);
        expired
    }

    /// Watchdog: writes the thread off if the poll observed as `expired` is
    /// still running. Returns whether the thread is now hijacked.
    pub(crate) fn hijack(&self, expired: u64) -> bool {
        debug_assert_eq!(tag(expired), EXPIRED);
        let hijacked = (expired & !TAG_MASK) | HIJACKED;
        self.word
            .compare_exchange(expired, hijacked, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// A task's outcome: still pending.
pub(crate) const PENDING: u8 = 0;
/// The task produced its output (or panicked).
pub(crate) const DONE: u8 = 1;
/// The watchdog answered with a timeout.
pub(crate) const TIMED_OUT: u8 = 2;
/// The task was aborted (or cancelled by a shutdown).
pub(crate) const ABORTED: u8 = 3;

/// A task's outcome cell, the other place where the watchdog meets the
/// threads: the first of completion, timeout and abort wins, and a timeout
/// carries its numbers.
///
/// One word holds the outcome (the low two bits), whether a timeout came
/// while the task was still queued (bit 2) and the elapsed nanoseconds of a
/// timeout (the rest, 61 bits, 73 years). Every outcome is a
/// compare-exchange from the pending word, which is 0, so the numbers are
/// written in the same step that resolves the task: whoever sees the
/// timeout, however it first noticed (`checkpoint` looks with one relaxed
/// load), reads that timeout's numbers from the word it saw. The loom model
/// `loom_checkpoint_sees_the_numbers` checks this.
///
/// Eight bytes, where three fields took sixteen: it is in every task's
/// header, and a task's size decides how many pages a burst of spawns
/// touches.
#[derive(Debug)]
pub(crate) struct Verdict {
    word: AtomicU64,
}

const OUTCOME_MASK: u64 = 0b11;
const QUEUED_BIT: u64 = 0b100;
const ELAPSED_SHIFT: u32 = 3;

impl Verdict {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU64::new(PENDING as u64),
        }
    }

    /// Moves from pending to `to`. False if something else won.
    fn resolve(&self, to: u64) -> bool {
        // A relaxed look first: the watchdog may time a resolved task's
        // destructor, and a failed compare-exchange would take the line.
        self.word.load(Ordering::Relaxed) == PENDING as u64
            && self
                .word
                .compare_exchange(PENDING as u64, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The task finished. False if a timeout or an abort won.
    pub(crate) fn complete(&self) -> bool {
        self.resolve(DONE as u64)
    }

    /// The task was aborted. False if something else won.
    pub(crate) fn abort(&self) -> bool {
        self.resolve(ABORTED as u64)
    }

    /// Resolves with a timeout of `elapsed_ns` (capped at 2^61 - 1). False
    /// if the task was resolved already; the numbers of an earlier timeout
    /// are then left alone.
    pub(crate) fn resolve_timeout(&self, elapsed_ns: u64, queued: bool) -> bool {
        let elapsed = elapsed_ns.min(u64::MAX >> ELAPSED_SHIFT) << ELAPSED_SHIFT;
        let queued = if queued { QUEUED_BIT } else { 0 };
        self.resolve(elapsed | queued | TIMED_OUT as u64)
    }

    /// The outcome so far (Acquire).
    pub(crate) fn load(&self) -> u8 {
        (self.word.load(Ordering::Acquire) & OUTCOME_MASK) as u8
    }

    /// One relaxed load: the hot path of `checkpoint`.
    #[inline]
    pub(crate) fn is_timed_out_relaxed(&self) -> bool {
        self.word.load(Ordering::Relaxed) & OUTCOME_MASK == TIMED_OUT as u64
    }

    /// Whether a timeout or an abort won.
    pub(crate) fn is_resolved_early(&self) -> bool {
        self.load() >= TIMED_OUT
    }

    /// The elapsed time (ns) and the queue flag of the timeout. Call only
    /// after seeing the outcome timed out.
    pub(crate) fn timeout_numbers(&self) -> (u64, bool) {
        let word = self.word.load(Ordering::Acquire);
        debug_assert_eq!((word & OUTCOME_MASK) as u8, TIMED_OUT);
        (word >> ELAPSED_SHIFT, word & QUEUED_BIT != 0)
    }
}

#[cfg(not(curfew_loom))]
#[inline]
fn spin_wait() {
    std::hint::spin_loop();
}

#[cfg(curfew_loom)]
fn spin_wait() {
    loom::thread::yield_now();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn packing_round_trips() {
        let w = pack(RUNNING, u32::MAX, UNLIMITED);
        assert_eq!(tag(w), RUNNING);
        assert_eq!(seq(w), u32::MAX);
        assert_eq!(budget(w), UNLIMITED);
        let w = pack(SLEEPING, 7, 1234);
        assert_eq!((tag(w), seq(w), budget(w)), (SLEEPING, 7, 1234));
    }

    #[test]
    fn a_verdict_keeps_the_first_outcome_and_its_numbers() {
        let v = Verdict::new();
        assert_eq!(v.load(), PENDING);
        assert!(!v.is_resolved_early());
        assert!(v.resolve_timeout(20_000_123, true));
        assert!(v.is_timed_out_relaxed() && v.is_resolved_early());
        assert_eq!(v.timeout_numbers(), (20_000_123, true));
        // Later outcomes lose, and leave the numbers alone.
        assert!(!v.complete());
        assert!(!v.abort());
        assert!(!v.resolve_timeout(1, false));
        assert_eq!(v.timeout_numbers(), (20_000_123, true));

        let v = Verdict::new();
        assert!(v.resolve_timeout(u64::MAX, false));
        assert_eq!(
            v.timeout_numbers(),
            (u64::MAX >> 3, false),
            "capped, not wrapped"
        );

        let v = Verdict::new();
        assert!(v.complete());
        assert_eq!(v.load(), DONE);
        assert!(!v.is_resolved_early());
        assert!(!v.resolve_timeout(5, false));

        let v = Verdict::new();
        assert!(v.abort());
        assert_eq!(v.load(), ABORTED);
        assert!(v.is_resolved_early() && !v.is_timed_out_relaxed());
    }

    #[test]
    fn budget_codes() {
        assert_eq!(budget_code(None), UNLIMITED);
        assert_eq!(budget_code(Some(Duration::from_millis(5))), 5000);
        assert_eq!(budget_code(Some(Duration::from_nanos(10))), 1);
        let round_trip = |d: Duration| budget_duration(budget_code(Some(d)));
        for d in [
            Duration::from_micros(100),
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(134),
        ] {
            assert_eq!(round_trip(d), d);
        }
        // Sub-microsecond parts round up, never down (no early timeout).
        assert_eq!(
            round_trip(Duration::from_nanos(1_500)),
            Duration::from_micros(2)
        );
    }

    /// Budgets of 2^29 − 1 µs (about 537 s) and longer used to saturate to
    /// UNLIMITED, so `job_budget(600 s)` was never enforced.
    #[test]
    fn long_budgets_are_timed_not_unlimited() {
        for d in [
            Duration::from_micros((1 << 29) - 1),
            Duration::from_secs(600),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
            Duration::from_secs(365 * 86_400),
            MAX_BUDGET,
        ] {
            let code = budget_code(Some(d));
            assert_ne!(code, UNLIMITED, "{d:?}");
            let timed = budget_duration(code);
            assert!(timed >= d, "{d:?} timed as {timed:?}: early");
            assert!(
                timed - d < d / 100_000,
                "{d:?} timed as {timed:?}: too coarse"
            );
            // The code survives packing into the state word.
            assert_eq!(budget(pack(RUNNING, 9, code)), code);
        }
        // Past the longest, capped at it, never unlimited.
        let capped = budget_code(Some(Duration::MAX));
        assert_ne!(capped, UNLIMITED);
        assert_eq!(budget_duration(capped), MAX_BUDGET);
    }

    #[cfg(not(curfew_loom))]
    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Every budget is timed: never early, late by at most 1 µs or a
        /// hundred-thousandth of itself, never UNLIMITED, and the code
        /// survives the state word.
        #[test]
        fn every_budget_is_timed_closely(
            secs in proptest::prop_oneof![
                0u64..=200,
                0u64..=200_000,
                0u64..=MAX_BUDGET.as_secs() + 10,
                proptest::num::u64::ANY,
            ],
            nanos in 0u32..1_000_000_000,
        ) {
            let d = Duration::new(secs, nanos);
            proptest::prop_assume!(!d.is_zero());
            let code = budget_code(Some(d));
            proptest::prop_assert_ne!(code, UNLIMITED);
            proptest::prop_assert_eq!(budget(pack(RUNNING, u32::MAX, code)), code);
            let timed = budget_duration(code);
            let want = d.min(MAX_BUDGET);
            proptest::prop_assert!(timed >= want, "{:?} timed as {:?}", d, timed);
            let slack = (want / 100_000).max(Duration::from_micros(1));
            proptest::prop_assert!(timed - want <= slack, "{:?} timed as {:?}", d, timed);
        }
    }

    #[cfg(not(curfew_loom))]
    #[test]
    fn sequential_protocol() {
        let header = 5u8;
        let s = SlotState::<u8>::new();
        s.begin(1, 10, 0, &header);
        assert_eq!(s.end(1, 10), PollEnd::InTime);
        // A claim on a finished poll fails.
        assert!(s.claim(pack(RUNNING, 1, 10)).is_none());

        s.begin(2, 10, 0, &header);
        let observed = s.load();
        let p = s.claim(observed).expect("claim a running poll");
        assert_eq!(p, &header as *const u8);
        let expired = s.expire();
        assert_eq!(s.end(2, 10), PollEnd::TimedOut);
        assert!(
            !s.hijack(expired),
            "cannot hijack a thread whose poll returned"
        );

        s.begin(3, 10, 0, &header);
        s.claim(s.load()).unwrap();
        let expired = s.expire();
        assert!(s.hijack(expired));
        assert_eq!(s.end(3, 10), PollEnd::Hijacked);
    }

    #[test]
    fn hold_and_release() {
        let s = SlotState::<u8>::new();
        let header = 0u8;
        s.begin(1, 10, 0, &header);
        let word = s.load();
        assert!(s.hold(word));
        assert_eq!(tag(s.load()), CLAIMED);
        // Only the exact poll can be held, and only once.
        assert!(!s.hold(word));
        s.release(word);
        assert_eq!(s.load(), word);
        assert_eq!(s.end(1, 10), PollEnd::InTime);
        // A poll that has ended cannot be held.
        assert!(!s.hold(word));
        // A held poll can still time out afterwards.
        s.begin(2, 10, 0, &header);
        let word = s.load();
        assert!(s.hold(word));
        s.release(word);
        s.claim(word).unwrap();
        s.expire();
        assert_eq!(s.end(2, 10), PollEnd::TimedOut);
    }
}

/// Model checks of the protocol: every interleaving of one poll against the
/// watchdog firing on it. Run with
/// `RUSTFLAGS="--cfg curfew_loom" cargo test -p curfew --lib --release loom`.
#[cfg(all(test, curfew_loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    /// Stands in for a task header: the owner frees it (writes to the cell)
    /// once its poll has ended; the watchdog reads it while it holds a claim.
    /// loom reports any interleaving where the two accesses race.
    struct FakeHeader {
        alive: UnsafeCell<bool>,
        timed_out: AtomicBool,
    }

    impl FakeHeader {
        fn new() -> Arc<Self> {
            Arc::new(FakeHeader {
                alive: UnsafeCell::new(true),
                timed_out: AtomicBool::new(false),
            })
        }
    }

    fn run_model(hijack_too: bool) {
        loom::model(move || {
            let slot = Arc::new(SlotState::<FakeHeader>::new());
            let header = FakeHeader::new();

            let owner = {
                let slot = slot.clone();
                let header = header.clone();
                loom::thread::spawn(move || {
                    slot.begin(1, 100, 0, &*header as *const FakeHeader);
                    let end = slot.end(1, 100);
                    // The task is dropped after the poll, as async-task does
                    // when a future completes.
                    // SAFETY: loom's cell lends the pointer for this write alone,
                    // and loom checks the write against every other access.
                    header.alive.with_mut(|a| unsafe { *a = false });
                    end
                })
            };

            let word = slot.load();
            let mut fired = false;
            let mut hijacked = false;
            if tag(word) == RUNNING {
                if let Some(p) = slot.claim(word) {
                    // SAFETY: in the model, the claim keeps the owner inside
                    // its poll, so the header is alive.
                    let h = unsafe { &*p };
                    h.alive
                        // SAFETY: loom's cell lends the pointer for this read alone,
                        // and loom checks the read against every write.
                        .with(|a| assert!(unsafe { *a }, "header used after free"));
                    h.timed_out.store(true, Ordering::SeqCst);
                    fired = true;
                    let expired = slot.expire();
                    if hijack_too {
                        hijacked = slot.hijack(expired);
                    }
                }
            }

            let end = owner.join().unwrap();
            match end {
                PollEnd::InTime => {
                    assert!(!fired);
                    assert!(!header.timed_out.load(Ordering::SeqCst));
                }
                PollEnd::TimedOut => {
                    assert!(fired && !hijacked);
                    assert!(header.timed_out.load(Ordering::SeqCst));
                }
                PollEnd::Hijacked => {
                    assert!(fired && hijacked);
                }
            }
            // Exactly one side won every race, and the slot ends consistent.
            let last = tag(slot.load());
            if hijacked {
                assert_eq!(last, HIJACKED);
            } else {
                assert_eq!(last, IDLE);
            }
        });
    }

    #[test]
    fn loom_poll_end_races_timeout() {
        run_model(false);
    }

    #[test]
    fn loom_poll_end_races_hijack() {
        run_model(true);
    }

    /// `checkpoint` notices a timeout with one relaxed load, then reads its
    /// numbers: it must never read an elapsed time of 0. The numbers share
    /// the outcome's word, so any load that sees the timeout sees them; this
    /// model keeps that true should the word ever be split again.
    #[test]
    fn loom_checkpoint_sees_the_numbers() {
        loom::model(|| {
            let v = Arc::new(Verdict::new());
            let watchdog = {
                let v = v.clone();
                loom::thread::spawn(move || v.resolve_timeout(5_000_000, true))
            };
            // Let the watchdog run first in some interleavings (loom
            // explores both orders from here).
            loom::thread::yield_now();
            if v.is_timed_out_relaxed() {
                let (ns, queued) = v.timeout_numbers();
                assert_eq!(
                    (ns, queued),
                    (5_000_000, true),
                    "checkpoint read stale numbers"
                );
            }
            assert!(watchdog.join().unwrap());
            assert_eq!(v.timeout_numbers(), (5_000_000, true));
        });
    }

    /// A completion racing a timeout: exactly one wins.
    #[test]
    fn loom_completion_races_timeout() {
        loom::model(|| {
            let v = Arc::new(Verdict::new());
            let watchdog = {
                let v = v.clone();
                loom::thread::spawn(move || v.resolve_timeout(7, false))
            };
            loom::thread::yield_now();
            let completed = v.complete();
            let timed_out = watchdog.join().unwrap();
            assert!(completed != timed_out, "exactly one outcome wins");
            assert_eq!(v.load(), if completed { DONE } else { TIMED_OUT });
        });
    }

    /// The watchdog holds a poll within its budget to mark it (as it does
    /// to hand its thread off), racing the poll's end: either the hold fails,
    /// or the owner ends the poll only after the release and sees the mark.
    #[test]
    fn loom_hold_is_seen_by_the_owner() {
        loom::model(|| {
            let slot = Arc::new(SlotState::<u8>::new());
            let mark = Arc::new(AtomicBool::new(false));
            let task = Arc::new(1u8);
            slot.begin(1, 100, 0, &*task);
            let owner = {
                let (slot, mark) = (slot.clone(), mark.clone());
                loom::thread::spawn(move || {
                    let end = slot.end(1, 100);
                    (end, mark.load(Ordering::Relaxed))
                })
            };
            let word = slot.load();
            let held = tag(word) == RUNNING && slot.hold(word);
            if held {
                mark.store(true, Ordering::Relaxed);
                slot.release(word);
            }
            let (end, seen) = owner.join().unwrap();
            assert_eq!(end, PollEnd::InTime);
            assert_eq!(
                seen, held,
                "the owner missed the mark, or saw one never made"
            );
            assert_eq!(tag(slot.load()), IDLE);
        });
    }

    /// A thread waking from its park while the watchdog decides to park:
    /// the watchdog never sleeps through it. If the watchdog parked without
    /// seeing the thread awake and the thread did not unpark it, loom
    /// reports the watchdog blocked for good.
    #[test]
    fn loom_watchdog_does_not_sleep_through_a_wake() {
        loom::model(|| {
            let park = Arc::new(WatchdogPark::new());
            let slot = Arc::new(SlotState::<u8>::new());
            slot.sleep(1);
            let watchdog = {
                let (park, slot) = (park.clone(), slot.clone());
                loom::thread::spawn(move || {
                    if park.try_park(|| tag(slot.load()) != SLEEPING) {
                        loom::thread::park();
                        park.unparked();
                    }
                    // It looks at the slot again after any park.
                    assert_eq!(tag(slot.load()), IDLE);
                })
            };
            slot.wake(1);
            if park.must_wake() {
                watchdog.thread().unpark();
            }
            watchdog.join().unwrap();
        });
    }

    /// Two consecutive polls: a claim observed on the first poll must never
    /// succeed against the second.
    #[test]
    fn loom_stale_claim_fails() {
        loom::model(|| {
            let slot = Arc::new(SlotState::<u8>::new());
            let a = Arc::new(1u8);
            let b = Arc::new(2u8);
            let owner = {
                let (slot, a, b) = (slot.clone(), a.clone(), b.clone());
                loom::thread::spawn(move || {
                    slot.begin(1, 100, 0, &*a);
                    let first = slot.end(1, 100);
                    slot.begin(2, 100, 0, &*b);
                    (first, slot.end(2, 100))
                })
            };
            let word = slot.load();
            if tag(word) == RUNNING {
                if let Some(p) = slot.claim(word) {
                    let expected: *const u8 = if seq(word) == 1 { &*a } else { &*b };
                    assert_eq!(p, expected, "claim returned another poll's task");
                    slot.expire();
                }
            }
            let (first, second) = owner.join().unwrap();
            assert!(first != PollEnd::Hijacked && second != PollEnd::Hijacked);
        });
    }

    /// What the watchdog does to the one word it looks at in the scope
    /// models.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        Claim,
        ClaimAndHijack,
        Hold,
    }

    /// A watched scope inside a poll (`Inline`): the owner switches the slot
    /// to the scope's header and back while the watchdog acts on whatever
    /// word it saw. A claim always reads the header of the poll whose word
    /// it claimed, never one freed, and each side learns the same outcome.
    fn run_scope_model(act: Act) {
        loom::model(move || {
            let slot = Arc::new(SlotState::<FakeHeader>::new());
            let outer = FakeHeader::new();
            let scope = FakeHeader::new();
            slot.begin(1, 100, 0, &*outer);
            let owner = {
                let (slot, outer, scope) = (slot.clone(), outer.clone(), scope.clone());
                loom::thread::spawn(move || {
                    let from = pack(RUNNING, 1, 100);
                    let entered = slot.switch(from, 2, 50, 7, &*scope, false);
                    if entered != PollEnd::InTime {
                        // The enclosing poll was answered: no scope.
                        return (entered, None, slot.end(1, 100));
                    }
                    let left = slot.switch(pack(RUNNING, 2, 50), 3, 100, 0, &*outer, true);
                    // The scope's header goes with the scope.
                    // SAFETY: loom's cell lends the pointer for this write alone,
                    // and loom checks the write against every other access.
                    scope.alive.with_mut(|a| unsafe { *a = false });
                    if left == PollEnd::Hijacked {
                        return (entered, Some(left), PollEnd::Hijacked);
                    }
                    (entered, Some(left), slot.end(3, 100))
                })
            };

            let word = slot.load();
            let mut acted_on = None;
            let mut hijacked = false;
            if tag(word) == RUNNING {
                match act {
                    Act::Hold => {
                        if slot.hold(word) {
                            slot.release(word);
                        }
                    }
                    Act::Claim | Act::ClaimAndHijack => {
                        if let Some(p) = slot.claim(word) {
                            let expected: *const FakeHeader =
                                if seq(word) == 2 { &*scope } else { &*outer };
                            assert_eq!(p, expected, "claim read another poll's header");
                            assert_eq!(slot.client() == 7, seq(word) == 2);
                            // SAFETY: in the model, the claim keeps the
                            // owner inside the claimed poll.
                            let h = unsafe { &*p };
                            h.alive
                                // SAFETY: loom's cell lends the pointer for this read alone,
                                // and loom checks the read against every write.
                                .with(|a| assert!(unsafe { *a }, "header used after free"));
                            h.timed_out.store(true, Ordering::SeqCst);
                            acted_on = Some(seq(word));
                            let expired = slot.expire();
                            if act == Act::ClaimAndHijack {
                                hijacked = slot.hijack(expired);
                            }
                        }
                    }
                }
            }

            let (entered, left, end) = owner.join().unwrap();
            // How the enclosing poll ends once the watchdog answered it.
            let answered_end = if hijacked {
                PollEnd::Hijacked
            } else {
                PollEnd::TimedOut
            };
            match acted_on {
                None => {
                    assert_eq!(
                        (entered, left, end),
                        (PollEnd::InTime, Some(PollEnd::InTime), PollEnd::InTime)
                    );
                }
                // The enclosing poll, before the scope began: the scope
                // never begins, and the poll's own end sees the timeout.
                Some(1) => {
                    // It may see the timeout before the hijack: the
                    // poll's own end is what counts.
                    assert!(
                        entered == PollEnd::TimedOut || (hijacked && entered == PollEnd::Hijacked)
                    );
                    assert_eq!(left, None);
                    assert_eq!(end, answered_end);
                }
                // The scope: its end sees the timeout, and the enclosing
                // poll goes on in time unless the thread was written off.
                Some(2) => {
                    assert_eq!(entered, PollEnd::InTime);
                    if hijacked {
                        assert_eq!((left, end), (Some(PollEnd::Hijacked), PollEnd::Hijacked));
                    } else {
                        assert_eq!((left, end), (Some(PollEnd::TimedOut), PollEnd::InTime));
                    }
                    assert!(!outer.timed_out.load(Ordering::SeqCst));
                }
                // The enclosing poll again, after the scope.
                Some(_) => {
                    assert_eq!((entered, left), (PollEnd::InTime, Some(PollEnd::InTime)));
                    assert_eq!(end, answered_end);
                    assert!(!scope.timed_out.load(Ordering::SeqCst));
                }
            }
            let last = tag(slot.load());
            assert_eq!(last, if hijacked { HIJACKED } else { IDLE });
        });
    }

    #[test]
    fn loom_scope_races_timeout() {
        run_scope_model(Act::Claim);
    }

    #[test]
    fn loom_scope_races_hijack() {
        run_scope_model(Act::ClaimAndHijack);
    }

    #[test]
    fn loom_scope_waits_out_a_hold() {
        run_scope_model(Act::Hold);
    }
}
