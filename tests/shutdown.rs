//! Shutdown: dropping or shutting down a runtime while hijacked threads
//! still spin returns within the shutdown timeout; queued tasks are
//! cancelled and later spawns refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curfew_suite::{finished_within, spin_until, wait_until};

fn runtime_with_spinners(release: &Arc<AtomicBool>) -> curfew::Runtime {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(20))
        .job_budget(Duration::from_millis(20))
        .hijack_grace(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = release.clone();
        let h = rt.spawn(async move { spin_until(&r) });
        assert!(rt.block_on(h).unwrap_err().is_timeout());
    }
    // A job not started within its budget (counted from its spawn) is
    // answered with a queue timeout and never runs; on a loaded machine the
    // pool thread may wake that late, so spawn until one runs and overruns.
    loop {
        let (r, started) = (release.clone(), Arc::new(AtomicBool::new(false)));
        let s = started.clone();
        let job = rt.spawn_blocking(move || {
            s.store(true, Ordering::SeqCst);
            spin_until(&r)
        });
        assert!(rt.block_on(job).unwrap_err().is_timeout());
        if started.load(Ordering::SeqCst) {
            break;
        }
    }
    assert!(wait_until(Duration::from_secs(20), || {
        let m = rt.metrics();
        m.event.hijacked_threads == 3 && m.blocking.hijacked_threads == 1
    }));
    rt
}

#[test]
fn shutdown_timeout_returns_in_time_with_spinning_hijacked_threads() {
    let release = Arc::new(AtomicBool::new(false));
    let rt = runtime_with_spinners(&release);
    let start = Instant::now();
    rt.shutdown_timeout(Duration::from_millis(300));
    let took = start.elapsed();
    // Generous slack for a loaded machine; the point is that it returns
    // while four threads still spin.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(!release.load(Ordering::SeqCst));
    release.store(true, Ordering::SeqCst);
}

#[test]
fn drop_returns_with_spinning_hijacked_threads() {
    let release = Arc::new(AtomicBool::new(false));
    let rt = runtime_with_spinners(&release);
    let start = Instant::now();
    drop(rt);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        start.elapsed()
    );
    release.store(true, Ordering::SeqCst);
}

#[test]
fn drop_waits_out_a_long_poll_through_the_watchdog() {
    // A poll that is running when the runtime is dropped is still timed
    // out and written off, so drop returns after about budget + grace.
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(30))
        .hijack_grace(Duration::ZERO)
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (r, s) = (release.clone(), started.clone());
    let h = rt.spawn(async move {
        s.store(true, Ordering::SeqCst);
        spin_until(&r)
    });
    // The poll must be running at the drop (a task still queued is
    // cancelled instead): on a loaded machine that can take a while.
    assert!(wait_until(Duration::from_secs(10), || started.load(Ordering::SeqCst)));
    let start = Instant::now();
    drop(rt);
    assert!(start.elapsed() < Duration::from_secs(3));
    let err = futures::executor::block_on(h).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    release.store(true, Ordering::SeqCst);
}

#[test]
fn queued_tasks_are_cancelled_and_later_spawns_refused() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let handle = rt.handle();
    let pending = rt.spawn(std::future::pending::<()>());
    rt.shutdown_timeout(Duration::from_secs(5));
    let err = futures::executor::block_on(pending).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    let late = handle.spawn(async { 1 });
    let err = futures::executor::block_on(late).unwrap_err();
    assert!(err.is_refused());
    assert_eq!(err.refusal(), Some(&curfew::Refusal::Shutdown));
}

#[test]
fn drop_is_bounded_while_a_thread_is_held_at_the_hijack_cap() {
    // 1 event thread, cap 1, two spinning tasks: the first thread is
    // written off, its replacement is held at the cap (overdue).
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .max_hijacked_threads(1)
        .poll_budget(Duration::from_millis(20))
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let r = release.clone();
        let h = rt.spawn(async move { spin_until(&r) });
        assert!(rt.block_on(h).unwrap_err().is_timeout());
    }
    assert!(wait_until(Duration::from_secs(10), || {
        let m = rt.metrics().event;
        m.hijacked_threads == 1 && m.overdue_threads == 1
    }));
    let took = finished_within(Duration::from_secs(10), move || drop(rt)).map(|((), d)| d);
    release.store(true, Ordering::SeqCst);
    let took = took.expect("drop(rt) hung while a thread was held at the cap");
    assert!(took < Duration::from_secs(3), "drop took {took:?}");
}

#[test]
fn drop_is_bounded_while_a_pool_thread_is_held_at_the_abandon_cap() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .max_abandoned_threads(1)
        .job_budget(Duration::from_millis(20))
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let mut started_jobs = 0;
    while started_jobs < 2 {
        // Spawn until two jobs have run (one not started within its budget
        // is answered from the queue and never runs).
        let (r, started) = (release.clone(), Arc::new(AtomicBool::new(false)));
        let s = started.clone();
        let h = rt.spawn_blocking(move || {
            s.store(true, Ordering::SeqCst);
            spin_until(&r)
        });
        assert!(rt.block_on(h).unwrap_err().is_timeout());
        started_jobs += usize::from(started.load(Ordering::SeqCst));
    }
    assert!(wait_until(Duration::from_secs(10), || {
        let m = rt.metrics().blocking;
        m.hijacked_threads == 1 && m.overdue_threads == 1
    }));
    let took = finished_within(Duration::from_secs(10), move || drop(rt)).map(|((), d)| d);
    release.store(true, Ordering::SeqCst);
    let took = took.expect("drop(rt) hung while a pool thread was held at the cap");
    assert!(took < Duration::from_secs(3), "drop took {took:?}");
}

#[test]
fn drop_waits_for_a_poll_within_its_budget() {
    // Bounded, but not by skipping the work in progress: a poll that ends
    // within its budget completes before drop returns.
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = rt.spawn(async move {
        s.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        "done"
    });
    assert!(wait_until(Duration::from_secs(10), || started.load(Ordering::SeqCst)));
    drop(rt);
    assert_eq!(futures::executor::block_on(h).unwrap(), "done");
}
