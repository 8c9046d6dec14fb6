//! More poisoned jobs than pool threads, then many short jobs: the short jobs
//! all complete; abandoned threads are replaced, capped, and exit when their
//! job returns, and their late results are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curfew_suite::{DropCounter, wait_until};

#[test]
fn short_jobs_complete_past_poisoned_ones_and_late_results_are_dropped() {
    let cap = 3;
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .job_budget(Duration::from_millis(30))
        .hijack_grace(Duration::ZERO)
        .max_abandoned_threads(cap)
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let results = DropCounter::new();

    // Five poisoned jobs for two threads, one after the other, so that each
    // gets a thread: each blocks until released, then returns a value that
    // nobody will ever receive. (Queued together, those behind the first two
    // would be answered with queue timeouts without running, since a job's
    // budget counts from its spawn.)
    // On a loaded machine a pool thread may reach a job only after its
    // budget: then it is answered from the queue and never runs. Spawn until
    // five have run.
    let mut started_jobs = 0;
    let mut timeouts = 0;
    while started_jobs < 5 {
        let (release, results) = (release.clone(), results.clone());
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        let h = rt.spawn_blocking(move || {
            s.store(true, Ordering::SeqCst);
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            results.guard()
        });
        assert!(rt.block_on(h).unwrap_err().is_timeout());
        timeouts += 1;
        started_jobs += usize::from(started.load(Ordering::SeqCst));
    }
    // Short jobs with a budget long enough to wait for the release: they
    // wait behind the cap until threads are released, then all complete.
    let short: Vec<_> = (0..200u32)
        .map(|i| {
            curfew::task::Builder::new()
                .job_budget(Duration::from_secs(30))
                .spawn_blocking_on(&rt.handle(), move || i + 1)
        })
        .collect();
    let mut saw_cap = false;
    assert!(wait_until(Duration::from_secs(20), || {
        let m = rt.metrics().blocking;
        assert!(m.hijacked_threads <= cap, "over the cap: {m:?}");
        saw_cap |= m.hijacked_threads == cap;
        saw_cap
    }));
    release.store(true, Ordering::SeqCst);
    for (i, h) in short.into_iter().enumerate() {
        assert_eq!(rt.block_on(h).unwrap(), i as u32 + 1);
    }

    // Every abandoned thread exits once its job returns, and the late
    // results were dropped there, not delivered.
    assert!(wait_until(Duration::from_secs(20), || {
        let m = rt.metrics().blocking;
        m.hijacked_threads == 0 && m.overdue_threads == 0
    }));
    assert!(wait_until(Duration::from_secs(20), || results.dropped() == 5));
    let m = rt.metrics().blocking;
    assert_eq!(m.healthy_threads, 2);
    assert!(
        m.hijacked_total <= 5 && m.hijacked_total >= cap as u64,
        "{m:?}"
    );
    assert_eq!(m.timeouts, timeouts);
    assert_eq!(
        m.completed, 200,
        "late results are not counted as completions"
    );
}
