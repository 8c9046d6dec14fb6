//! Blocking jobs far past their budget (sleeping, reading a FIFO that never
//! gets data, spinning) are answered with a timeout while still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curfew_suite::{spin_until, wait_until};

const BUDGET: Duration = Duration::from_millis(40);

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .job_budget(BUDGET)
        .build()
        .unwrap()
}

fn expect_timeout<T: std::fmt::Debug>(res: Result<T, curfew::JoinError>) -> curfew::TimeoutError {
    let t = res.unwrap_err().into_timeout().expect("a timeout");
    assert_eq!(t.budget(), BUDGET);
    assert!(t.elapsed() >= BUDGET);
    assert_eq!(t.location(), curfew::Location::WorkerPool);
    t
}

#[test]
fn sleeping_job_times_out_while_asleep() {
    let rt = runtime();
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let start = Instant::now();
    let h = rt.spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        f.store(true, Ordering::SeqCst);
    });
    expect_timeout(rt.block_on(h));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        !finished.load(Ordering::SeqCst),
        "answered while the job still sleeps"
    );
    rt.shutdown_timeout(Duration::from_millis(10));
}

#[cfg(unix)]
#[test]
fn fifo_read_times_out_while_blocked_in_open() {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("curfew-pool-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("readdos");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let f = fifo.clone();
    // The vulnerable pattern: std::fs::read of a client-named path.
    let h = rt.spawn_blocking(move || std::fs::read(f).map(|d| d.len()));
    expect_timeout(rt.block_on(h));
    assert!(wait_until(Duration::from_secs(10), || rt
        .metrics()
        .blocking
        .hijacked_threads
        == 1));
    // The replacement is registered in the same watchdog tick as the
    // write-off, just after it: wait for it rather than read in between.
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .metrics()
            .blocking
            .healthy_threads
            == 2),
        "no replacement for the hijacked pool thread: {:?}",
        rt.metrics().blocking
    );
    // Give the stuck reader a writer that closes at once: its open returns,
    // the read sees end-of-file, and the abandoned thread exits.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    assert!(wait_until(Duration::from_secs(10), || rt
        .metrics()
        .blocking
        .hijacked_threads
        == 0));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn spinning_job_times_out_while_spinning() {
    let rt = runtime();
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let h = rt.spawn_blocking(move || spin_until(&r));
    expect_timeout(rt.block_on(h));
    assert!(!release.load(Ordering::SeqCst));
    release.store(true, Ordering::SeqCst);
}

#[test]
fn per_job_budget_overrides_the_runtime_default() {
    let rt = runtime();
    let h = curfew::task::Builder::new()
        .job_budget(Duration::from_secs(30))
        .spawn_blocking_on(&rt.handle(), || {
            std::thread::sleep(BUDGET * 3);
            "done"
        });
    assert_eq!(rt.block_on(h).unwrap(), "done");
    let h = curfew::task::Builder::new()
        .name("thumbnail")
        .job_budget(Duration::from_millis(10))
        .spawn_blocking_on(&rt.handle(), || std::thread::sleep(Duration::from_secs(2)));
    let t = rt.block_on(h).unwrap_err().into_timeout().unwrap();
    assert_eq!(t.budget(), Duration::from_millis(10));
    assert_eq!(t.name(), Some("thumbnail"));
    rt.shutdown_timeout(Duration::from_millis(10));
}
