//! Shared helpers for curfew's examples, integration tests and benchmarks.
//!
//! The runtime itself lives in the `curfew` crate; this package only owns the
//! top-level `examples/`, `tests/` and `benches/` directories.
#![warn(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Spins on the current thread for `d` without yielding, like a handler stuck
/// in a super-linear computation. Returns how many iterations it ran.
pub fn spin_for(d: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    n
}

/// Spins until `release` is set, like a handler in an endless loop that only
/// the test can end.
pub fn spin_until(release: &AtomicBool) {
    while !release.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

/// Polls `cond` every millisecond until it holds or `timeout` passes.
/// Returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Counts how many of the guards made from it have been dropped, and on
/// which threads.
#[derive(Debug, Clone, Default)]
pub struct DropCounter {
    dropped: Arc<AtomicUsize>,
    threads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl DropCounter {
    /// A new counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard that counts itself when dropped.
    pub fn guard(&self) -> DropGuard {
        DropGuard(self.clone())
    }

    /// How many guards have been dropped.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// The names of the threads the guards were dropped on.
    pub fn threads(&self) -> Vec<String> {
        self.threads.lock().unwrap().clone()
    }
}

/// Made by [`DropCounter::guard`]; move it into a future to see when the
/// future is dropped.
#[derive(Debug)]
pub struct DropGuard(DropCounter);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.0.threads.lock().unwrap().push(name);
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// Spins without yielding until the watchdog has answered for the current
/// curfew task (`curfew::checkpoint()` fails), or until `max` has passed.
/// Returns whether the timeout came.
///
/// Tests use it instead of spinning for a fixed time past the budget, so that
/// they do not depend on how soon a loaded machine lets the watchdog run.
pub fn spin_until_timed_out(max: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < max {
        for _ in 0..1024 {
            std::hint::spin_loop();
        }
        if curfew::checkpoint().is_err() {
            return true;
        }
    }
    false
}

/// Awaits `handle` on a thread of its own for at most `bound`: `None` if it
/// was not answered by then.
///
/// Tests of a runtime that might be wedged use it instead of `block_on`, so
/// that a handle nobody answers fails the test instead of hanging it (the
/// waiting thread is left behind; the test process ends anyway).
pub fn answered_within<T: Send + 'static>(
    handle: curfew::JoinHandle<T>,
    bound: Duration,
) -> Option<Result<T, curfew::JoinError>> {
    finished_within(bound, move || futures::executor::block_on(handle)).map(|(r, _)| r)
}

/// Runs `f` on a thread of its own for at most `bound`: its result and how
/// long it took, or `None` if it had not returned by then (the thread is
/// left behind). For what may hang, such as dropping a runtime whose
/// threads are stuck.
pub fn finished_within<T: Send + 'static>(
    bound: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<(T, Duration)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let out = f();
        let _ = tx.send((out, start.elapsed()));
    });
    rx.recv_timeout(bound).ok()
}
