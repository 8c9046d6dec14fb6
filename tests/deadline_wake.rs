//! The watchdog answers an overrun when it is due, not at its next regular
//! tick: once it has seen a poll (or job) running, it sleeps no longer than
//! until that poll's budget runs out.
//!
//! The tests use the longest watchdog interval (100 ms) and a budget of
//! 120 ms. A watchdog that only kept its regular ticks would answer at the
//! second tick after it first saw the overrunning work, about 80 ms past
//! the budget. Answered on time, the overrun is late by the watchdog's
//! wake-up alone; the bound leaves 50 ms for a loaded machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(100);
const BUDGET: Duration = Duration::from_millis(120);
const SLACK: Duration = Duration::from_millis(50);
/// How long the overrunning work goes on unless released: a bound on each
/// trial, far past the budget.
const RUN_AT_MOST: Duration = Duration::from_secs(2);
const TRIALS: usize = 3;

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .watchdog_interval(INTERVAL)
        .build()
        .unwrap()
}

/// Waits until `release` is set, at most `RUN_AT_MOST`, never yielding.
fn spin_until(release: &AtomicBool) {
    let t = Instant::now();
    while !release.load(Ordering::Relaxed) && t.elapsed() < RUN_AT_MOST {
        std::hint::spin_loop();
    }
}

#[test]
fn a_spinning_poll_is_answered_when_its_budget_runs_out() {
    for trial in 0..TRIALS {
        let rt = runtime();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let handle = curfew::task::Builder::new()
            .poll_budget(BUDGET)
            .spawn_on(&rt.handle(), async move { spin_until(&r) });
        let err = rt.block_on(handle).expect_err("the spinner cannot finish");
        release.store(true, Ordering::Relaxed);
        // The elapsed time the watchdog reports counts from its first
        // sighting of the poll (or from the poll's own start stamp): that
        // sighting may lag the poll by up to an interval when the thread
        // was not parked before it, but from there on the overrun is due
        // at exactly the budget. Kept to regular ticks, it would report
        // about 200 ms: the second tick after the sighting.
        let t = err.timeout().expect("a timeout");
        assert!(t.elapsed() >= BUDGET, "trial {trial}: early: {t}");
        assert!(
            t.elapsed() < BUDGET + SLACK,
            "trial {trial}: answered {:?} after the budget ran out (watchdog interval {INTERVAL:?})",
            t.elapsed() - BUDGET
        );
    }
}

#[test]
fn a_blocking_job_is_answered_when_its_budget_runs_out() {
    for trial in 0..TRIALS {
        let rt = runtime();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let spawned = Instant::now();
        let handle = curfew::task::Builder::new()
            .job_budget(BUDGET)
            .spawn_blocking_on(&rt.handle(), move || spin_until(&r));
        let err = rt.block_on(handle).expect_err("the job cannot finish");
        let took = spawned.elapsed();
        release.store(true, Ordering::Relaxed);
        let t = err.timeout().expect("a timeout");
        assert!(t.elapsed() >= BUDGET, "trial {trial}: early: {t}");
        assert!(took >= BUDGET, "trial {trial}: answered after {took:?}");
        assert!(
            took < BUDGET + SLACK,
            "trial {trial}: answered {:?} after the budget ran out (watchdog interval {INTERVAL:?})",
            took - BUDGET
        );
    }
}
