//! Reading threads' scheduling policies from outside, and a task that
//! spins until released, for the tests of demotion and hand-off.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use curfew_suite::wait_until;

/// Lets a [`spinner`] go when set, and when dropped: a test that fails
/// while its spinner runs then ends with its panic, instead of leaving its
/// runtime's drop waiting for the spin until the test times out.
pub struct Release(Arc<AtomicBool>);

impl std::ops::Deref for Release {
    type Target = AtomicBool;
    fn deref(&self) -> &AtomicBool {
        &self.0
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Spawns a task that spins (no await, no checkpoint) until released, then
/// returns `out`; gives back its handle, its thread and the release flag.
/// Bind the flag after the runtime, so that it drops (and releases) first.
pub fn spinner<T: Send + 'static>(
    rt: &curfew::Runtime,
    out: T,
) -> (curfew::JoinHandle<T>, i32, Release) {
    let release = Arc::new(AtomicBool::new(false));
    let os_tid = Arc::new(AtomicI32::new(0));
    let (r, t) = (release.clone(), os_tid.clone());
    let h = rt.spawn(async move {
        t.store(tid(), Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        out
    });
    assert!(wait_until(Duration::from_secs(10), || os_tid
        .load(Ordering::SeqCst)
        != 0));
    (h, os_tid.load(Ordering::SeqCst), Release(release))
}

/// The scheduling policy of thread `tid` of this process.
pub fn policy_of(tid: i32) -> i32 {
    // SAFETY: sched_getscheduler has no memory effects.
    unsafe { libc::sched_getscheduler(tid) }
}

/// The calling thread's scheduling policy.
pub fn policy() -> i32 {
    policy_of(0)
}

/// The calling thread's OS id.
pub fn tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Whether this process may leave `SCHED_IDLE` (root, or a generous
/// `RLIMIT_NICE`), as the runtime checks before it demotes anything: tried
/// on a thread that waits meanwhile, so that nothing needs CPU at idle
/// priority.
pub fn may_restore() -> bool {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let probe = std::thread::spawn(move || {
        tid_tx.send(tid()).unwrap();
        let _ = done_rx.recv();
    });
    let target = tid_rx.recv().unwrap();
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid for the calls, which change only the policy
    // of the probe thread, alive until `done_tx` is dropped.
    let can = unsafe {
        assert_eq!(
            libc::sched_setscheduler(target, libc::SCHED_IDLE, &param),
            0
        );
        libc::sched_setscheduler(target, libc::SCHED_OTHER, &param) == 0
    };
    drop(done_tx);
    probe.join().unwrap();
    can
}

/// The nice value of thread `tid` of this process (0: the calling thread).
pub fn nice_of(tid: i32) -> i32 {
    // SAFETY: getpriority has no memory effects; on Linux PRIO_PROCESS
    // names one thread. errno is cleared first: -1 is a valid nice value.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        assert!(
            !(n == -1 && *libc::__errno_location() != 0),
            "getpriority({tid}) failed"
        );
        n
    }
}
