//! The little the runtime asks of the operating system.
//!
//! A hijacked thread keeps burning a core until its poll returns. On Linux,
//! when `Builder::demote_hijacked_threads` is on, the watchdog moves such a
//! thread to the `SCHED_IDLE` policy, so that it only gets CPU nobody else
//! wants: the healthy threads and the watchdog itself run first. Lowering a thread's priority needs no privilege. When
//! the poll finally returns, the thread asks for its ordinary policy back
//! ([`restore_current`]) before it takes the runtime's locks on its way out,
//! so that a thread starved of CPU cannot hold a lock the watchdog needs.

/// The calling thread's OS id, or 0 where there is none to use.
pub(crate) fn current_tid() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions and cannot fail.
        i64::from(unsafe { libc::gettid() })
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Moves the thread with OS id `tid` (of this process) to the lowest
/// scheduling class. Returns whether it worked; failure only costs CPU
/// share, so callers may ignore it.
pub(crate) fn demote(tid: i64) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(tid) = libc::pid_t::try_from(tid) else {
            return false;
        };
        if tid <= 0 {
            return false;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` for the duration of the
        // call, and the syscall only changes the scheduling policy of the
        // thread `tid`. The caller passes the id of a thread of this process
        // that it has just seen stuck in a poll, so the id cannot have been
        // recycled for another thread yet.
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        false
    }
}

/// Puts the calling thread back on the ordinary scheduling policy after a
/// [`demote`]. Best effort: leaving `SCHED_IDLE` needs an `RLIMIT_NICE` that
/// allows nice 0 (or `CAP_SYS_NICE`); without it the thread stays idle-class
/// for the few instructions it has left.
pub(crate) fn restore_current() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is valid for the call; pid 0 means the calling
        // thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
