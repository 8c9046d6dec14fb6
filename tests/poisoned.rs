//! Poisoned tasks: polls that never yield are answered with a timeout while
//! they are still spinning, and ordinary tasks spawned alongside complete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_millis(30);

#[test]
fn spinning_tasks_time_out_while_still_spinning_and_others_complete() {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(BUDGET)
        .max_hijacked_threads(8)
        .build()
        .unwrap();

    // Spinners run until we release them, far past their budget.
    let release = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicUsize::new(0));
    let poisoned: Vec<_> = (0..5)
        .map(|i| {
            let (release, spinning) = (release.clone(), spinning.clone());
            curfew::task::Builder::new()
                .name(format!("spinner-{i}"))
                .spawn_on(&rt.handle(), async move {
                    spinning.fetch_add(1, Ordering::SeqCst);
                    while !release.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                    spinning.fetch_sub(1, Ordering::SeqCst);
                })
        })
        .collect();
    // Ordinary tasks poll for microseconds; a budget far above that keeps
    // a descheduling on a loaded machine from counting against them.
    let ordinary: Vec<_> = (0..50u64)
        .map(|i| {
            curfew::task::Builder::new()
                .poll_budget(Duration::from_secs(10))
                .spawn_on(&rt.handle(), async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    i * 2
                })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, h) in poisoned.into_iter().enumerate() {
        let err = rt.block_on(h).expect_err("a spinner cannot complete");
        assert!(err.is_timeout(), "spinner {i}: {err:?}");
        let t = err.timeout().unwrap();
        assert_eq!(t.budget(), BUDGET);
        assert!(t.elapsed() >= BUDGET, "fired early: {t}");
        assert_eq!(t.name(), Some(format!("spinner-{i}").as_str()));
        assert_eq!(t.location(), curfew::Location::EventThread);
        assert!(!release.load(Ordering::SeqCst));
    }
    // Every timeout arrived while the spinners were still running: none
    // has been released, and they cannot stop on their own.
    assert!(spinning.load(Ordering::SeqCst) >= 1);
    for (i, h) in ordinary.into_iter().enumerate() {
        assert_eq!(rt.block_on(h).unwrap(), i as u64 * 2);
    }
    assert!(Instant::now() < deadline, "took far too long");
    let m = rt.metrics();
    assert_eq!(m.event.timeouts, 5);
    assert_eq!(m.event.completed, 50);
    release.store(true, Ordering::SeqCst);
}
