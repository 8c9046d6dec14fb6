//! `Builder::demote_overrunning_polls`: a poll that overruns its budget is
//! moved to `SCHED_IDLE` at the timeout, and no task after it runs at idle
//! priority, whether or not the thread may leave the idle class again.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

/// The calling thread's scheduling policy.
fn policy() -> i32 {
    // SAFETY: sched_getscheduler has no memory effects; 0 is this thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// The calling thread's OS id.
fn tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Spins on the CPU (no await point) for `d`.
fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Drops `CAP_SYS_NICE` from the calling thread's capability sets (Linux
/// capabilities belong to threads, and threads it starts inherit them), so
/// that it and the runtime it builds cannot leave `SCHED_IDLE` again when
/// `RLIMIT_NICE` is 0, as for an ordinary user.
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
    // and set only the calling thread's capabilities.
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
        // RLIMIT_NICE is per process; 0 only limits raising priority, which
        // no other test in this binary does.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NICE, &mut limit), 0);
        limit.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NICE, &limit), 0);
    }
}

/// One event thread; a task overruns a 20 ms budget by 30 ms and returns
/// within a long grace; then every task after it reports its policy. Returns
/// the policy and thread of the overrun (after its timeout) and of each task
/// after it.
fn overrun_then_check(demote: bool) -> ((i32, i32), Vec<(i32, i32)>, curfew::RuntimeMetrics) {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(20))
        .hijack_grace(Duration::from_secs(30))
        .demote_overrunning_polls(demote)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let over = rt.spawn(async move {
        spin(Duration::from_millis(50));
        // The timeout fired 30 ms ago: this is the policy it left us in.
        tx.send((policy(), tid())).unwrap();
    });
    let err = rt.block_on(over).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let in_overrun = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(rt.block_on(rt.spawn(async { (policy(), tid()) })).unwrap());
        std::thread::sleep(Duration::from_millis(2));
    }
    (in_overrun, after, rt.metrics())
}

/// Whether this process may leave `SCHED_IDLE` (root, or a generous
/// `RLIMIT_NICE`): then the demoted thread itself goes on.
fn may_restore() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is valid for the calls, which change only the
        // policy of this short-lived thread.
        unsafe {
            assert_eq!(libc::sched_setscheduler(0, libc::SCHED_IDLE, &param), 0);
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0
        }
    })
    .join()
    .unwrap()
}

fn check(in_overrun: (i32, i32), after: &[(i32, i32)], same_thread: bool) {
    assert_eq!(in_overrun.0, libc::SCHED_IDLE, "demoted at the timeout");
    assert!(
        after.iter().all(|&(p, _)| p == libc::SCHED_OTHER),
        "tasks after the overrun ran at {after:?}"
    );
    let threads: std::collections::HashSet<i32> = after.iter().map(|&(_, t)| t).collect();
    assert_eq!(threads.len(), 1, "one event thread: {after:?}");
    if same_thread {
        assert!(threads.contains(&in_overrun.1), "restored in place");
    } else {
        assert!(!threads.contains(&in_overrun.1), "replaced");
    }
}

#[test]
fn an_overrunning_poll_runs_at_idle_priority_and_the_next_task_does_not() {
    let (in_overrun, after, metrics) = overrun_then_check(true);
    check(in_overrun, &after, may_restore());
    assert_eq!(metrics.event.hijacked_total, 0, "{metrics:?}");
}

#[test]
fn without_the_privilege_to_leave_idle_the_thread_is_replaced() {
    let (in_overrun, after, metrics) = std::thread::spawn(|| {
        drop_cap_sys_nice();
        overrun_then_check(true)
    })
    .join()
    .unwrap();
    check(in_overrun, &after, false);
    assert_eq!(metrics.event.hijacked_total, 0, "{metrics:?}");
}

#[test]
fn demotion_can_be_turned_off() {
    let (in_overrun, after, _) = overrun_then_check(false);
    assert_eq!(in_overrun.0, libc::SCHED_OTHER);
    assert!(
        after.iter().all(|&(p, _)| p == libc::SCHED_OTHER),
        "{after:?}"
    );
}
