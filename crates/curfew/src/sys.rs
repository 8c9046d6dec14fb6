//! The little the runtime asks of the operating system.
//!
//! A poll that overruns its budget keeps burning a core until it returns.
//! On Linux the watchdog moves its thread to the `SCHED_IDLE` policy for a
//! moment at its timeout, before it wakes the caller
//! (`Builder::demote_overrunning_polls`, on by default), so that the caller
//! preempts it at once instead of waiting out its time slice; one watchdog
//! interval later, or when the poll returns, the thread gets its ordinary
//! policy back ([`restore`], [`restore_current`]). Lowering a thread's
//! priority needs no privilege; raising it back does (`CAP_SYS_NICE`, or an
//! `RLIMIT_NICE` that allows nice 0), so the runtime demotes at timeouts
//! only where [`can_restore`] says it may. With
//! `Builder::demote_hijacked_threads`, a hijacked thread is demoted for good;
//! it asks for its ordinary policy back before it takes the runtime's locks
//! on its way out, so that a thread starved of CPU cannot hold a lock the
//! watchdog needs.
//!
//! The watchdog itself asks for a short EEVDF time slice
//! ([`request_short_slice`]): when it wakes on a core held by a spinning
//! poll it then preempts that poll at once instead of waiting out its slice,
//! which measured as the difference between a median delivery of 0.3-0.6 ms
//! and one of 0.8-3.8 ms past the budget for spinning tasks
//! (`benches/RESULTS.md`). Unprivileged threads may ask for it.

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

/// Raises the calling thread's nice value by `by` (capped at 19), which
/// lowers its priority and needs no privilege. Returns whether it worked;
/// failure only costs the other threads some CPU share.
pub(crate) fn lower_current_priority(by: i32) -> bool {
    lower_priority(0, by)
}

/// Raises the nice value of the thread with OS id `tid` of this process
/// (0: the calling thread) by `by`, capped at 19. Needs no privilege.
/// Returns whether it worked.
pub(crate) fn lower_priority(tid: i64, by: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(who) = libc::id_t::try_from(tid) else {
            return false;
        };
        // SAFETY: getpriority and setpriority have no memory effects; on
        // Linux, PRIO_PROCESS names one thread (0: the calling one). errno
        // is cleared first to tell a nice value of -1 from an error. The
        // caller passes the calling thread or one of this process's threads
        // that it saw in a poll a moment ago; had that thread just exited,
        // its id would not be handed out again before the kernel's pid
        // counter wraps, so the call would only fail (ESRCH).
        unsafe {
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, who);
            if now == -1 && *libc::__errno_location() != 0 {
                return false;
            }
            libc::setpriority(libc::PRIO_PROCESS, who, now.saturating_add(by).min(19)) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, by);
        false
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
/// allows nice 0 (or `CAP_SYS_NICE`); returns whether it worked.
pub(crate) fn restore_current() -> bool {
    restore(0)
}

/// Puts the thread with OS id `tid` (of this process; 0 for the calling
/// thread) back on the ordinary scheduling policy after a [`demote`]. Best
/// effort, with the same privilege as [`restore_current`].
pub(crate) fn restore(tid: i64) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(tid) = libc::pid_t::try_from(tid) else {
            return false;
        };
        if tid < 0 {
            return false;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is valid for the call, which only changes the
        // scheduling policy of thread `tid` (0: the calling thread). The
        // caller passes the id of a live thread of this process, as for
        // `demote`.
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        false
    }
}

/// Whether threads of this process may leave `SCHED_IDLE` again (see
/// [`restore`]). Tried on a thread started for it, which inherits the
/// calling thread's capabilities as the runtime's threads do, while it
/// waits: the calling thread moves it to `SCHED_IDLE` and back, so that
/// nothing needs CPU at idle priority (which a busy machine may not give
/// for a long time).
pub(crate) fn can_restore() -> bool {
    #[cfg(target_os = "linux")]
    {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let Ok(probe) = std::thread::Builder::new()
            .name("curfew-probe".into())
            .spawn(move || {
                let _ = tid_tx.send(current_tid());
                let _ = done_rx.recv();
            })
        else {
            return false;
        };
        let can = tid_rx
            .recv()
            .is_ok_and(|tid| tid > 0 && demote(tid) && restore(tid));
        drop(done_tx);
        let _ = probe.join();
        can
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Sets the calling thread's timer slack to 1 ns (Linux), so that its
/// timed sleeps end when asked instead of up to 50 µs later (the default
/// slack of an ordinary thread, which the kernel spends on merging timer
/// wake-ups). The watchdog sleeps until the next poll is due to run out of
/// its budget, so its slack is added to every timeout's delivery. Needs no
/// privilege; returns whether the call succeeded.
pub(crate) fn precise_timers() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_TIMERSLACK takes the slack by value and touches no
        // memory of ours; it applies to the calling thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Asks the kernel for a short time slice for the calling thread (Linux
/// 6.12 and later; EEVDF's custom slices), keeping its policy
/// (`SCHED_OTHER` or `SCHED_BATCH`; any other policy is left alone) and its
/// nice value. A thread with a shorter slice gets an earlier deadline, so when it
/// wakes on a core busy with a long-running thread it preempts that thread
/// at once instead of waiting out the other thread's slice (1.4 ms, read
/// from `/proc/<pid>/task/<tid>/sched` on this project's 2-core machine).
/// This is what keeps the watchdog on time while poisoned polls spin on
/// every core. Needs no privilege (checked as an unprivileged user on
/// Linux 6.18); returns whether the call succeeded. Before Linux 6.12 the
/// slice has no effect.
pub(crate) fn request_short_slice(slice: std::time::Duration) -> bool {
    #[cfg(target_os = "linux")]
    {
        /// `struct sched_attr`, `SCHED_ATTR_SIZE_VER1`.
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            sched_policy: u32,
            sched_flags: u64,
            sched_nice: i32,
            sched_priority: u32,
            sched_runtime: u64,
            sched_deadline: u64,
            sched_period: u64,
            sched_util_min: u32,
            sched_util_max: u32,
        }
        // Only the fair policies have slices; leave a real-time (or idle)
        // watchdog alone rather than move it to SCHED_OTHER.
        // SAFETY: sched_getscheduler has no memory effects; pid 0 is the
        // calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy < 0 {
            return false;
        }
        let reset_on_fork = policy & libc::SCHED_RESET_ON_FORK != 0;
        let policy = policy & !libc::SCHED_RESET_ON_FORK;
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return false;
        }
        // SAFETY: getpriority has no memory effects; errno is read only to
        // tell a nice value of -1 from an error.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, 0);
            if n == -1 && *libc::__errno_location() != 0 {
                return false;
            }
            n
        };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: policy as u32,
            // SCHED_FLAG_RESET_ON_FORK, kept as it was.
            sched_flags: u64::from(reset_on_fork),
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: slice.as_nanos().min(u128::from(u64::MAX)) as u64,
            sched_deadline: 0,
            sched_period: 0,
            sched_util_min: 0,
            sched_util_max: 0,
        };
        // SAFETY: `attr` is a valid, fully initialised `sched_attr` of the
        // size it declares, alive for the call; pid 0 is the calling thread
        // and the syscall's own flags argument must be 0.
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn set_policy(policy: libc::c_int) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is valid for the call; pid 0 is this thread.
        // Moving to BATCH or IDLE lowers priority and needs no privilege.
        assert_eq!(unsafe { libc::sched_setscheduler(0, policy, &param) }, 0);
    }

    fn policy() -> libc::c_int {
        // SAFETY: no memory effects; pid 0 is this thread.
        let p = unsafe { libc::sched_getscheduler(0) };
        p & !libc::SCHED_RESET_ON_FORK
    }

    #[test]
    fn short_slice_keeps_a_fair_policy() {
        std::thread::spawn(|| {
            set_policy(libc::SCHED_BATCH);
            assert!(request_short_slice(std::time::Duration::from_micros(100)));
            assert_eq!(policy(), libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn short_slice_leaves_other_policies_alone() {
        std::thread::spawn(|| {
            set_policy(libc::SCHED_IDLE);
            assert!(!request_short_slice(std::time::Duration::from_micros(100)));
            assert_eq!(policy(), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }
}

/// The CPU time thread `tid` of this process has used, from its thread CPU
/// clock (the clock `pthread_getcpuclockid` names, built from the thread
/// id as Linux defines it). Unlike `/proc/self/task/<tid>/schedstat`, this
/// looks nothing up in `/proc`: a `/proc` lookup leaves dentries behind
/// that the thread's exit must flush, and a dying thread with a low
/// priority (a handed-off poll's) that is preempted while it flushes them
/// makes whoever reaps the process spin in the kernel until it runs again
/// (`shrink_dcache_parent`, half a second and more on a busy machine).
/// `None` once the thread has exited, and off Linux.
pub(crate) fn thread_cpu_clock(tid: i64) -> Option<std::time::Duration> {
    #[cfg(target_os = "linux")]
    {
        let tid = libc::pid_t::try_from(tid).ok().filter(|&t| t > 0)?;
        // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED): the complement of the
        // id shifted left by 3, the per-thread bit (4) and the clock (2).
        let clock: libc::clockid_t = ((!tid) << 3) | 4 | 2;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; for a clock id that
        // names no thread of this process the call fails with EINVAL and
        // writes nothing.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return None;
        }
        Some(std::time::Duration::new(
            u64::try_from(ts.tv_sec).ok()?,
            u32::try_from(ts.tv_nsec).ok()?,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        None
    }
}
