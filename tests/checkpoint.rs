//! Checkpoint: a loop calling `checkpoint()` stops soon after its budget runs
//! out, with the timeout error, and gives its thread back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curfew_suite::wait_until;

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(20))
        .job_budget(Duration::from_millis(20))
        // A long grace: the loop must give its thread back by itself.
        .hijack_grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn checkpoint_loop() -> (u64, Result<(), curfew::TimeoutError>) {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n + 1);
        if let Err(e) = curfew::checkpoint() {
            return (n, Err(e));
        }
    }
}

#[test]
fn async_loop_stops_with_the_timeout_and_keeps_its_thread() {
    let rt = runtime();
    let start = Instant::now();
    let left = Arc::new(AtomicBool::new(false));
    let l = left.clone();
    let h = rt.spawn(async move {
        let (_, res) = checkpoint_loop();
        let err = res.expect_err("the loop only ends on a timeout");
        assert!(err.elapsed() >= err.budget());
        l.store(true, Ordering::SeqCst);
        // The task returns on its own: that is what gives the thread back.
        Instant::now()
    });
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_timeout());
    // The single event thread was not hijacked: it serves the next task,
    // once the loop has left (on a loaded machine that can take longer than
    // the next task's own budget, which would then time out in the queue).
    assert!(wait_until(Duration::from_secs(10), || left.load(Ordering::SeqCst)));
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
    let m = rt.metrics().event;
    assert_eq!(m.hijacked_total, 0, "{m:?}");
    assert_eq!(m.healthy_threads, 1);
    assert_eq!(m.timeouts, 1);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the loop did not stop early"
    );
}

#[test]
fn blocking_loop_stops_with_the_timeout_and_keeps_its_thread() {
    let rt = runtime();
    let left = Arc::new(AtomicBool::new(false));
    let l = left.clone();
    let h = rt.spawn_blocking(move || {
        let res = checkpoint_loop().1;
        l.store(true, Ordering::SeqCst);
        res
    });
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(
        err.timeout().unwrap().location(),
        curfew::Location::WorkerPool
    );
    // The pool's one thread serves the next job once the loop has left
    // (on a loaded machine that can take longer than the next job's own
    // budget, which would then time out in the queue).
    assert!(wait_until(Duration::from_secs(10), || left.load(Ordering::SeqCst)));
    assert_eq!(rt.block_on(rt.spawn_blocking(|| 2)).unwrap(), 2);
    let m = rt.metrics().blocking;
    assert_eq!(m.hijacked_total, 0, "{m:?}");
    assert_eq!(m.healthy_threads, 1);
}

#[test]
fn checkpoint_is_ok_within_budget_and_outside_tasks() {
    assert!(curfew::checkpoint().is_ok());
    assert!(!curfew::need_yield());
    let rt = runtime();
    let ok = rt
        .block_on(rt.spawn(async { curfew::checkpoint() }))
        .unwrap();
    assert!(ok.is_ok());
}

#[test]
fn need_yield_turns_true_after_the_time_slice() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .no_default_budgets()
        .time_slice(Duration::from_millis(5))
        .build()
        .unwrap();
    let h = rt.spawn(async {
        let start = Instant::now();
        while !curfew::need_yield() {
            assert!(start.elapsed() < Duration::from_secs(10), "hint never came");
        }
        let first = start.elapsed();
        // After a yield the new poll starts a fresh slice.
        curfew::task::yield_now().await;
        (first, curfew::need_yield())
    });
    let (first, after_yield) = rt.block_on(h).unwrap();
    assert!(
        first >= Duration::from_millis(5),
        "hint came early: {first:?}"
    );
    assert!(!after_yield);
}
