//! At the hijack cap, under a stream of never-returning tasks, ordinary
//! tasks are still answered promptly: run when a thread is free, answered
//! with a queue timeout within about their budget when none is, never left
//! waiting for a thread that will not come back. Threads stay bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_millis(50);
const CAP: usize = 2;
const EVENT_THREADS: usize = 2;

fn block_until(release: &AtomicBool) {
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn ordinary_tasks_are_answered_promptly_through_fifty_never_returning_ones() {
    // Not dropped if an assertion fails: a runtime that left tasks
    // unanswered may not drop in bounded time either, and the test must
    // fail, not hang.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(EVENT_THREADS)
            .max_hijacked_threads(CAP)
            .poll_budget(BUDGET)
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut poisoned = Vec::new();
    for round in 0..50u32 {
        let r = release.clone();
        poisoned.push(rt.spawn(async move { block_until(&r) }));
        // An ordinary task right behind each never-returning one, awaited
        // on a thread of its own so that an unanswered one cannot hang the
        // test.
        let spawned = Instant::now();
        let h = rt.spawn(async move { round });
        let tx = tx.clone();
        std::thread::spawn(move || {
            let res = futures::executor::block_on(h);
            let _ = tx.send((round, spawned.elapsed(), res));
        });
        let m = rt.metrics().event;
        assert!(m.hijacked_threads <= CAP, "over the cap: {m:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(tx);
    let mut served = 0;
    let mut queue_timeouts = 0;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    while answered < 50 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((round, took, res)) = rx.recv_timeout(left) else {
            break;
        };
        answered += 1;
        slowest = slowest.max(took);
        match res {
            Ok(v) => {
                assert_eq!(v, round);
                served += 1;
            }
            Err(e) => {
                assert!(e.is_queue_timeout(), "{e:?}");
                queue_timeouts += 1;
            }
        }
        // Generous for a loaded machine: about the budget is typical.
        assert!(
            took < Duration::from_secs(2),
            "ordinary task {round} answered {took:?} after its spawn"
        );
    }
    eprintln!(
        "ordinary tasks: {served} served, {queue_timeouts} queue timeouts, slowest {slowest:?}"
    );
    assert_eq!(answered, 50, "ordinary tasks left unanswered");
    // Every never-returning task is answered too.
    for h in poisoned {
        assert!(h.is_finished(), "a never-returning task was not answered");
        let err = futures::executor::block_on(h).unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    let m = rt.metrics().event;
    assert!(m.hijacked_threads <= CAP, "{m:?}");
    assert!(
        m.healthy_threads + m.overdue_threads <= EVENT_THREADS,
        "threads beyond the cap: {m:?}"
    );
    release.store(true, Ordering::SeqCst);
    drop(std::mem::ManuallyDrop::into_inner(rt));
}
