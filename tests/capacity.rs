//! Capacity: after hijacks the runtime again has its full number of healthy
//! event threads; a hijacked thread drops its task and exits once its poll
//! returns; hijacked threads never exceed the cap, and at the cap callers
//! are still answered while the shortfall shows in the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curfew_suite::{DropCounter, spin_until, wait_until};

const LONG: Duration = Duration::from_secs(20);

fn runtime(threads: usize, cap: usize) -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(threads)
        .poll_budget(Duration::from_millis(20))
        .hijack_grace(Duration::ZERO)
        .max_hijacked_threads(cap)
        .build()
        .unwrap()
}

#[test]
fn hijacked_threads_are_replaced_then_drop_their_task_and_exit() {
    let rt = runtime(2, 8);
    let release = Arc::new(AtomicBool::new(false));
    let drops = DropCounter::new();
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let (release, guard) = (release.clone(), drops.guard());
            rt.spawn(async move {
                let _guard = guard;
                spin_until(&release);
            })
        })
        .collect();
    for h in spinners {
        assert!(rt.block_on(h).unwrap_err().is_timeout());
    }

    // Three threads are stuck, yet the runtime has its two healthy ones
    // (each replacement takes its written-off thread's place in the count
    // as it starts: tests/healthy_no_dip.rs). The watchdog counts a thread
    // in `hijacked_threads` (its place under the cap) a moment before it
    // counts the hijack in `hijacked_total`, so wait for both.
    assert!(
        wait_until(LONG, || {
            let m = rt.metrics().event;
            m.hijacked_threads == 3 && m.healthy_threads == 2 && m.hijacked_total == 3
        }),
        "{:?}",
        rt.metrics().event
    );
    let m = rt.metrics().event;
    assert_eq!(m.hijacked_total, 3);
    // ... and they serve.
    let served: Vec<_> = (0..20).map(|i| rt.spawn(async move { i })).collect();
    for (i, h) in served.into_iter().enumerate() {
        assert_eq!(rt.block_on(h).unwrap(), i);
    }
    assert_eq!(
        drops.dropped(),
        0,
        "futures are dropped only when their poll returns"
    );

    // The polls return: each hijacked thread drops its future, then exits.
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(LONG, || rt.metrics().event.hijacked_threads == 0));
    assert_eq!(drops.dropped(), 3);
    for name in drops.threads() {
        assert!(name.starts_with("curfew-"), "dropped on {name}");
    }
    let m = rt.metrics().event;
    assert_eq!(m.healthy_threads, 2);
    assert_eq!(m.completed, 20, "timed-out tasks never count as completed");
}

#[test]
fn at_the_cap_callers_are_answered_and_threads_are_not_replaced() {
    let cap = 1;
    let rt = runtime(2, cap);
    let release = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let release = release.clone();
            rt.spawn(async move { spin_until(&release) })
        })
        .collect();
    // Every caller is answered, although only one thread may be replaced.
    for h in spinners {
        assert!(rt.block_on(h).unwrap_err().is_timeout());
    }
    let mut saw_overdue = false;
    assert!(wait_until(LONG, || {
        let m = rt.metrics().event;
        assert!(m.hijacked_threads <= cap, "cap exceeded: {m:?}");
        saw_overdue |= m.overdue_threads >= 1;
        saw_overdue && m.deferred_total >= 1
    }));
    let m = rt.metrics().event;
    assert!(m.hijacked_threads <= cap);
    assert!(
        m.hijacked_total <= cap as u64,
        "no thread beyond the cap: {m:?}"
    );

    // When the polls return, overdue threads recover and the hijacked one
    // exits; the runtime is whole again.
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(LONG, || {
        let m = rt.metrics().event;
        m.hijacked_threads == 0 && m.overdue_threads == 0 && m.healthy_threads == 2
    }));
    assert_eq!(rt.block_on(rt.spawn(async { 5 })).unwrap(), 5);
}
