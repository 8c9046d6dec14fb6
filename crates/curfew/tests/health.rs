//! `written_off_threads`: what a supervisor reads to decide a recycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "gave up waiting");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_abandoned_pool_thread_is_listed_with_its_cpu_until_its_job_returns() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .job_budget(Duration::from_millis(30))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = stop.clone();
    let job = rt.spawn_blocking(move || {
        while !spinning.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    assert!(rt.block_on(job).unwrap_err().is_timeout());
    let listed = wait_for(|| {
        let v = rt.written_off_threads();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(listed.len(), 1);
    let t = &listed[0];
    assert_eq!(t.location, curfew::Location::WorkerPool);
    assert!(!t.overdue);
    assert!(t.tid > 0);
    // Its CPU clock runs while it spins.
    let c0 = t.cpu_time().expect("the thread's CPU clock");
    let c1 = wait_for(|| t.cpu_time().filter(|c| *c > c0));
    assert!(c1 > c0);
    assert!(curfew::health::thread_cpu_time(std::process::id(), t.tid).is_some());
    // Once the job returns, the thread exits and leaves the list.
    stop.store(true, Ordering::Relaxed);
    wait_for(|| rt.written_off_threads().is_empty().then_some(()));
    assert!(t.cpu_time().is_none(), "the thread has exited");
}

#[test]
fn threads_held_at_the_cap_are_listed_as_overdue() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .max_hijacked_threads(1)
        .poll_budget(Duration::from_millis(20))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let spin = |stop: Arc<AtomicBool>| async move {
        while !stop.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    };
    let a = rt.spawn(spin(stop.clone()));
    assert!(rt.block_on(a).unwrap_err().is_timeout());
    let b = rt.spawn(spin(stop.clone()));
    assert!(rt.block_on(b).unwrap_err().is_timeout());
    let listed = wait_for(|| {
        let v = rt.written_off_threads();
        (v.len() == 2).then_some(v)
    });
    assert_eq!(listed.iter().filter(|t| t.overdue).count(), 1);
    assert!(
        listed
            .iter()
            .all(|t| t.location == curfew::Location::EventThread)
    );
    stop.store(true, Ordering::Relaxed);
    wait_for(|| rt.written_off_threads().is_empty().then_some(()));
}

#[test]
fn the_default_runtime_is_reported_only_once_started() {
    // Each test file is its own process: nothing has started it here yet,
    // unless another test in this file did, which none does.
    assert!(curfew::health::default_runtime().is_none());
}

/// A reporter waiting in `wait_for_write_off` with a long timeout is woken
/// by the write-off itself, not by the timeout.
#[test]
fn a_write_off_wakes_the_waiting_reporter_at_once() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(30))
        .build()
        .unwrap();
    let handle = rt.handle();
    let mut seen = curfew::health::write_offs();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        // Other tests in this process may write threads off too: wait
        // until this runtime's own write-off shows.
        while handle.written_off_threads().is_empty() {
            let now = curfew::health::wait_for_write_off(seen, Duration::from_secs(60));
            assert!(now > seen, "a wait of a minute timed out: no wake-up");
            seen = now;
        }
        start.elapsed()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = stop.clone();
    let h = rt.spawn(async move {
        while !spinning.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    assert!(rt.block_on(h).unwrap_err().is_timeout());
    let waited = waiter.join().unwrap();
    eprintln!("the reporter saw the write-off {waited:?} after it began waiting");
    stop.store(true, Ordering::Relaxed);
}
