//! Aborts: `abort()` gives `is_cancelled()`, and the future is dropped.

use std::time::Duration;

use curfew_suite::{DropCounter, wait_until};

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder().event_threads(2).build().unwrap()
}

#[test]
fn aborting_an_idle_task_cancels_it_and_drops_its_future() {
    let rt = runtime();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let h = rt.spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await;
    });
    assert!(!h.is_finished());
    h.abort();
    assert!(h.is_finished());
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_cancelled());
    assert!(!err.is_timeout() && !err.is_panic());
    assert!(wait_until(Duration::from_secs(10), || drops.dropped() == 1));
}

#[test]
fn abort_after_completion_keeps_the_output() {
    let rt = runtime();
    let h = rt.spawn(async { 9 });
    assert!(wait_until(Duration::from_secs(10), || h.is_finished()));
    h.abort();
    assert_eq!(rt.block_on(h).unwrap(), 9);
}

#[test]
fn aborting_a_running_task_answers_at_once_and_drops_it_after_the_poll() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .no_default_budgets()
        .build()
        .unwrap();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set just after the abort: the poll runs until then, so the abort
    // lands while it runs however late this thread gets to it.
    let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drops = DropCounter::new();
    let (s, a, guard) = (started.clone(), aborted.clone(), drops.guard());
    let h = rt.spawn(async move {
        let _guard = guard;
        s.store(true, std::sync::atomic::Ordering::SeqCst);
        curfew_suite::spin_until(&a);
        curfew::task::yield_now().await;
        unreachable!("aborted tasks are not polled again");
    });
    assert!(wait_until(Duration::from_secs(10), || started
        .load(std::sync::atomic::Ordering::SeqCst)));
    h.abort();
    aborted.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(rt.block_on(h).unwrap_err().is_cancelled());
    assert!(wait_until(Duration::from_secs(10), || drops.dropped() == 1));
}

#[test]
fn aborting_a_queued_blocking_job_cancels_it() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let busy = rt.spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)).is_ok());
    let queued = rt.spawn_blocking(|| unreachable!("aborted before it ran"));
    queued.abort();
    assert!(rt.block_on(queued).unwrap_err().is_cancelled());
    tx.send(()).unwrap();
    assert!(rt.block_on(busy).unwrap());
}
