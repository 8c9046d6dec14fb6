//! Destructors of timed-out or aborted futures run under the watchdog, not
//! untimed on a healthy thread: a destructor that never returns costs a
//! written-off (and replaced) thread, and the runtime keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curfew_suite::{answered_within, wait_until};

/// Blocks in its destructor until released, like a `Drop` that flushes to a
/// peer that never reads.
struct BlockOnDrop(Arc<AtomicBool>);

impl Drop for BlockOnDrop {
    fn drop(&mut self) {
        while !self.0.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Answered at all: run (`Some(v)`) or, while the stuck destructor held
/// the only thread past the budget, answered from the queue (`None`).
fn served_or_queue_timeout<T: std::fmt::Debug>(res: Result<T, curfew::JoinError>) -> Option<T> {
    match res {
        Ok(v) => Some(v),
        Err(e) if e.is_queue_timeout() => None,
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn an_aborted_tasks_destructor_runs_under_the_budget() {
    // Not dropped on a failed assertion (the test must fail, not hang).
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(30))
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let guard = BlockOnDrop(release.clone());
    let idle = rt.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });
    assert!(wait_until(Duration::from_secs(10), || rt
        .metrics()
        .event
        .polls
        >= 1));
    idle.abort();
    // The only event thread runs the destructor; the watchdog times it,
    // writes the thread off and starts another, which serves this (or, if it
    // waited a whole budget before the replacement came, answers it from the
    // queue) and then everything after it.
    let answered = answered_within(rt.spawn(async { 3 }), Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || {
        rt.metrics().event.hijacked_total >= 1
    }));
    let later = answered_within(rt.spawn(async { 3 }), Duration::from_secs(10));
    let m = rt.metrics().event;
    release.store(true, Ordering::SeqCst);
    let answered = answered.expect("an untimed destructor held the only event thread");
    assert!(matches!(served_or_queue_timeout(answered), None | Some(3)));
    assert_eq!(later.unwrap().unwrap(), 3);
    assert!(m.hijacked_total >= 1, "{m:?}");
    assert!(rt.block_on(idle).unwrap_err().is_cancelled());
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

#[test]
fn a_timed_out_tasks_destructor_runs_under_the_budget() {
    // The task reaches a checkpoint within the grace, so its thread would
    // stay healthy; but its destructor blocks.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(30))
            .hijack_grace(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let guard = BlockOnDrop(release.clone());
    let h = rt.spawn(async move {
        let _guard = guard;
        while curfew::checkpoint().is_ok() {
            std::hint::spin_loop();
        }
        // Give the thread back within the grace, keeping the guard: the
        // future is dropped after this poll, by the runtime.
        std::future::pending::<()>().await
    });
    assert!(rt.block_on(h).unwrap_err().is_timeout());
    let answered = answered_within(rt.spawn(async { 4 }), Duration::from_secs(10));
    // Once the thread is written off and replaced, tasks are served again.
    assert!(wait_until(Duration::from_secs(10), || {
        rt.metrics().event.hijacked_total >= 1
    }));
    let later = answered_within(rt.spawn(async { 4 }), Duration::from_secs(10));
    let m = rt.metrics().event;
    release.store(true, Ordering::SeqCst);
    let answered = answered.expect("an untimed destructor held the only event thread");
    assert!(matches!(served_or_queue_timeout(answered), None | Some(4)));
    assert_eq!(later.unwrap().unwrap(), 4);
    assert!(m.hijacked_total >= 1, "{m:?}");
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

#[test]
fn a_quick_destructor_costs_nothing() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(30))
        .build()
        .unwrap();
    for _ in 0..100 {
        let h = rt.spawn(std::future::pending::<()>());
        h.abort();
        assert!(rt.block_on(h).unwrap_err().is_cancelled());
    }
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
    let m = rt.metrics().event;
    assert_eq!((m.hijacked_total, m.timeouts), (0, 0), "{m:?}");
}
