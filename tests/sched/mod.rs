//! Reading threads' scheduling policies from outside, for the tests of
//! demotion and hand-off.
#![allow(dead_code)]

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
