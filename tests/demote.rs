//! `Builder::demote_overrunning_polls`: the thread of a poll that overruns
//! its budget is moved to `SCHED_IDLE` for one watchdog interval at the
//! timeout, then gets its ordinary policy back while the poll still runs;
//! no task after it runs at idle priority, even if its thread may not leave
//! the idle class by itself. Policies are read from outside the thread, so
//! that the observation does not depend on a demoted thread getting CPU.
#![cfg(target_os = "linux")]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use curfew_suite::wait_until;

mod sched;
use sched::{may_restore, policy, policy_of, spinner, tid};

/// Drops `CAP_SYS_NICE` from the calling thread (capabilities belong to
/// threads) and sets `RLIMIT_NICE` to 0 for the process (it only limits
/// raising priority back, which threads with the capability may do anyway):
/// the calling thread can then no longer leave `SCHED_IDLE` by itself.
fn drop_cap_sys_nice() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_NICE: u32 = 23;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: `header` and `data` are the kernel's capability header and a
    // two-element data array (version 3), valid for the calls, which read
    // and set only the calling thread's capabilities and the process's
    // `RLIMIT_NICE`.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_SYS_NICE);
        data[0].permitted &= !(1 << CAP_SYS_NICE);
        data[0].inheritable &= !(1 << CAP_SYS_NICE);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NICE, &mut limit), 0);
        limit.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NICE, &limit), 0);
    }
}

/// A 100 ms watchdog interval (the most allowed; the budget may not be
/// shorter): the demotion lasts that
/// long, so that a test thread polling every millisecond sees it even on a
/// loaded machine.
fn runtime(demote: bool) -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(100))
        .watchdog_interval(Duration::from_millis(100))
        .hijack_grace(Duration::from_secs(30))
        .demote_overrunning_polls(demote)
        .build()
        .unwrap()
}

/// Asserts that thread `tid` stays at the ordinary policy for 300 ms,
/// read every millisecond (past the 100 ms budget and interval: a demotion
/// would show).
fn stays_ordinary(tid: i32) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ten tasks after an overrun: each one's policy and thread.
fn tasks_after(rt: &curfew::Runtime) -> Vec<(i32, i32)> {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(2));
            rt.block_on(rt.spawn(async { (policy(), tid()) })).unwrap()
        })
        .collect()
}

#[test]
fn an_overrunning_poll_is_demoted_for_a_moment_and_restored_while_it_runs() {
    let rt = runtime(true);
    let may = may_restore();
    let (h, spinning, release) = spinner(&rt, ());
    if may {
        // Counted, not sampled: the idle spell lasts one interval, which a
        // loaded machine can keep this thread from seeing. The count moves
        // once the kernel has taken the change.
        assert!(
            wait_until(Duration::from_secs(10), || rt.metrics().event.demoted_total
                == 1),
            "demoted at the timeout: {:?}",
            rt.metrics().event
        );
        // Restored one watchdog interval later, though the poll runs on.
        assert!(
            wait_until(Duration::from_secs(10), || policy_of(spinning)
                == libc::SCHED_OTHER),
            "restored while the poll still runs"
        );
        assert!(!release.load(Ordering::SeqCst));
    } else {
        // Where the thread could not be given its policy back, the runtime
        // does not demote at all.
        stays_ordinary(spinning);
    }
    release.store(true, Ordering::SeqCst);
    assert!(rt.block_on(h).unwrap_err().is_timeout());
    let after = tasks_after(&rt);
    assert!(
        after.iter().all(|&(p, _)| p == libc::SCHED_OTHER),
        "tasks after the overrun ran at {after:?}"
    );
    assert_eq!(rt.metrics().event.hijacked_total, 0);
}

/// The safety net: a poll that returns within the interval on a thread
/// that may not leave `SCHED_IDLE` by itself. Its thread exits and is
/// replaced (or, if it was never demoted or the watchdog's restore came
/// first, goes on at the ordinary policy): either way no later task runs at
/// idle priority.
#[test]
fn a_thread_that_cannot_leave_idle_by_itself_runs_nothing_more_at_idle() {
    let rt = runtime(true);
    // Only the event thread loses the privilege; the watchdog keeps it.
    let first = rt
        .block_on(rt.spawn(async {
            drop_cap_sys_nice();
            tid()
        }))
        .unwrap();
    let h = rt.spawn(async {
        // Return as soon as the timeout is seen: within the interval.
        while curfew::checkpoint().is_ok() {
            std::hint::spin_loop();
        }
        tid()
    });
    assert!(rt.block_on(h).unwrap_err().is_timeout());
    let after = tasks_after(&rt);
    assert!(
        after.iter().all(|&(p, _)| p == libc::SCHED_OTHER),
        "tasks after the overrun ran at {after:?}"
    );
    let replaced = after.iter().all(|&(_, t)| t != first);
    eprintln!(
        "thread {first} {}",
        if replaced {
            "exited and was replaced"
        } else {
            "went on at the ordinary policy (restored by the watchdog, or never demoted: the \
             checkpoint can see the budget run out before the watchdog does)"
        }
    );
    assert_eq!(rt.metrics().event.hijacked_total, 0);
}

#[test]
fn demotion_can_be_turned_off() {
    let rt = runtime(false);
    let (h, spinning, release) = spinner(&rt, ());
    stays_ordinary(spinning);
    release.store(true, Ordering::SeqCst);
    assert!(rt.block_on(h).unwrap_err().is_timeout());
    assert_eq!(rt.metrics().event.demoted_total, 0);
}
