//! After `shutdown_timeout` returns (and after a drop), every handle is
//! resolved and every task's future is dropped or will be when its poll
//! returns: queued tasks, tasks in a stuck thread's local queue, tasks that
//! wait on the runtime's own timers (woken by the driver's shutdown), idle
//! tasks nothing will ever wake, and tasks still running on a detached
//! thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curfew_suite::{DropCounter, wait_until};

const LONG: Duration = Duration::from_secs(10);

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .build()
        .unwrap()
}

fn assert_cancelled<T: std::fmt::Debug>(h: curfew::JoinHandle<T>) {
    assert!(h.is_finished(), "handle still open after shutdown");
    let err = futures::executor::block_on(h).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
}

#[test]
fn idle_tasks_that_nothing_will_wake_are_cancelled() {
    let rt = runtime();
    let drops = DropCounter::new();
    let g = drops.guard();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let idle = rt.spawn(async move {
        let _g = g;
        started_tx.send(()).unwrap();
        std::future::pending::<()>().await
    });
    started_rx.recv_timeout(LONG).unwrap();
    // Make sure the task is idle (polled and pending), not queued.
    assert!(wait_until(LONG, || rt.metrics().event.polls >= 1));
    rt.shutdown_timeout(Duration::from_secs(5));
    assert_cancelled(idle);
    assert_eq!(drops.dropped(), 1, "the idle task's future was not dropped");
}

#[test]
fn detached_idle_tasks_are_dropped_at_shutdown() {
    let rt = runtime();
    let drops = DropCounter::new();
    for _ in 0..10 {
        let g = drops.guard();
        drop(rt.spawn(async move {
            let _g = g;
            std::future::pending::<()>().await
        }));
    }
    assert!(wait_until(LONG, || rt.metrics().event.polls >= 10));
    drop(rt);
    assert_eq!(drops.dropped(), 10);
}

#[test]
fn tasks_on_the_runtimes_own_timers_are_resolved() {
    let rt = runtime();
    let drops = DropCounter::new();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let g = drops.guard();
            rt.spawn(async move {
                let _g = g;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        })
        .collect();
    assert!(wait_until(LONG, || rt.metrics().event.polls >= 5));
    rt.shutdown_timeout(Duration::from_secs(5));
    for h in handles {
        assert_cancelled(h);
    }
    assert!(wait_until(LONG, || drops.dropped() == 5));
}

#[test]
fn tasks_in_a_stuck_threads_local_queue_are_resolved() {
    // An unlimited poll (never timed out, so its thread is never replaced)
    // spawns a child, which lands in its thread's local queue; with one
    // event thread nothing can run it.
    let rt = runtime();
    let release = Arc::new(AtomicBool::new(false));
    let drops = DropCounter::new();
    let (child_tx, child_rx) = std::sync::mpsc::channel();
    let r = release.clone();
    let g = drops.guard();
    let stuck = curfew::task::Builder::new()
        .unlimited()
        .spawn_on(&rt.handle(), async move {
            let child = curfew::spawn(async move {
                let _g = g;
            });
            child_tx.send(child).unwrap();
            while !r.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    let child = child_rx.recv_timeout(LONG).unwrap();
    assert_eq!(rt.metrics().event.queue_depth, 1);
    rt.shutdown_timeout(Duration::from_millis(100));
    assert_cancelled(child);
    assert_eq!(drops.dropped(), 1, "the queued child was not dropped");
    // The stuck task's own handle is resolved too; its future is dropped
    // when its poll returns.
    assert_cancelled(stuck);
    release.store(true, Ordering::SeqCst);
}

#[test]
fn a_job_still_running_on_a_detached_thread_is_resolved() {
    let rt = runtime();
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let job = curfew::task::Builder::new()
        .unlimited()
        .spawn_blocking_on(&rt.handle(), move || {
            while !r.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    assert!(wait_until(LONG, || rt.metrics().blocking.polls >= 1 || {
        // The poll counter moves at the end of a poll; look at the queue.
        rt.metrics().blocking.queue_depth == 0
    }));
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown_timeout(Duration::from_millis(50));
    assert_cancelled(job);
    release.store(true, Ordering::SeqCst);
}

#[test]
fn a_task_queued_behind_a_stuck_one_is_resolved() {
    let rt = runtime();
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let _stuck = curfew::task::Builder::new()
        .unlimited()
        .spawn_on(&rt.handle(), async move {
            while !r.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    assert!(wait_until(LONG, || rt.metrics().event.queue_depth == 0));
    let queued = rt.spawn(async { 1 });
    rt.shutdown_timeout(Duration::from_millis(50));
    assert_cancelled(queued);
    release.store(true, Ordering::SeqCst);
}
