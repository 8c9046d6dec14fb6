//! `Builder::hand_off_long_polls`: an event-thread poll that runs past the
//! threshold gets a thread started in its place at once, so the runtime's
//! capacity does not wait for the poll's timeout; the long poll's thread
//! is niced by 10 and exits when the poll returns. Priorities are read
//! from outside the thread.
#![cfg(target_os = "linux")]

use std::sync::atomic::Ordering;
use std::time::Duration;

use curfew_suite::wait_until;

mod sched;
use sched::{may_restore, nice_of, policy, policy_of, spinner, tid};

/// One event thread, so that every task behind a long poll needs the
/// hand-off's replacement; a 30 ms threshold.
fn builder(budget: Duration) -> curfew::Builder {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(budget)
        .hand_off_long_polls(Some(Duration::from_millis(30)))
}

fn runtime(budget: Duration) -> curfew::Runtime {
    builder(budget).build().unwrap()
}

/// As [`runtime`], with handed-off polls moved to the idle class.
fn idle_runtime(budget: Duration) -> curfew::Runtime {
    builder(budget)
        .hand_off_to_idle_class(true)
        .build()
        .unwrap()
}

/// Waits until `n` polls are handed off (their threads not yet gone);
/// fails the test after 10 s.
#[track_caller]
fn wait_handed_off(rt: &curfew::Runtime, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .metrics()
            .event
            .handed_off_threads
            == n),
        "{n} handed off: {:?}",
        rt.metrics().event
    );
}

/// Whether thread `tid` of this process is still alive.
fn alive(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

#[test]
fn a_long_poll_is_handed_off_and_the_others_run_meanwhile() {
    // A budget long enough that nothing times out: the hand-off alone
    // keeps the runtime serving.
    let rt = runtime(Duration::from_secs(60));
    let (h, spinning, release) = spinner(&rt, 7);
    // The hand-off comes once the watchdog sees the poll past the
    // threshold; its replacement takes the thread's place in the count at
    // once (tests/healthy_no_dip.rs).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = rt.metrics().event;
            m.handed_off_threads == 1 && m.healthy_threads == 1
        }),
        "handed off and replaced: {:?}",
        rt.metrics().event
    );
    let m = rt.metrics().event;
    assert_eq!(
        (m.healthy_threads, m.hijacked_threads, m.handed_off_total),
        (1, 0, 1),
        "{m:?}"
    );
    // The only event thread spins, yet tasks run: on the replacement, at
    // the ordinary priority, while the long poll's thread is niced by 10.
    let mut base = None;
    for _ in 0..20 {
        let (p, n, t) = rt
            .block_on(rt.spawn(async { (policy(), nice_of(0), tid()) }))
            .unwrap();
        assert_eq!(p, libc::SCHED_OTHER);
        assert_ne!(t, spinning);
        assert_eq!(*base.get_or_insert(n), n);
    }
    let base = base.unwrap();
    assert_eq!(
        nice_of(spinning),
        (base + 10).min(19),
        "niced while it spins"
    );
    assert!(!release.load(Ordering::SeqCst));
    // The long poll ends in time: its output is delivered, and its thread
    // leaves.
    release.store(true, Ordering::SeqCst);
    assert_eq!(rt.block_on(h).unwrap(), 7);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(spinning)),
        "the handed-off thread exits"
    );
    let m = rt.metrics().event;
    assert_eq!(
        (m.healthy_threads, m.hijacked_threads, m.handed_off_threads),
        (1, 0, 0),
        "{m:?}"
    );
    assert_eq!(m.timeouts, 0);
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
}

#[test]
fn a_handed_off_poll_that_overruns_is_answered_and_written_off_once() {
    let rt = runtime(Duration::from_millis(150));
    let (h, spinning, release) = spinner(&rt, 7);
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .metrics()
            .event
            .hijacked_threads
            == 1),
        "written off: {:?}",
        rt.metrics().event
    );
    let m = rt.metrics().event;
    // Replaced once, at the hand-off: not again at the write-off.
    assert_eq!(
        (
            m.healthy_threads,
            m.handed_off_threads,
            m.hijacked_total,
            m.handed_off_total
        ),
        (1, 0, 1, 1),
        "{m:?}"
    );
    let written_off = rt.handle().written_off_threads();
    assert_eq!(written_off.len(), 1);
    assert_eq!(written_off[0].tid, i64::from(spinning));
    // Niced for running long, and kept so through the timeout and the
    // write-off.
    let base = rt.block_on(rt.spawn(async { nice_of(0) })).unwrap();
    assert_eq!(nice_of(spinning), (base + 10).min(19));
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || !alive(spinning)));
    assert!(wait_until(Duration::from_secs(10), || rt
        .metrics()
        .event
        .hijacked_threads
        == 0));
    assert_eq!(rt.metrics().event.healthy_threads, 1);
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
}

#[test]
fn at_the_cap_a_long_poll_keeps_its_thread() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_secs(60))
        .max_hijacked_threads(1)
        .hand_off_long_polls(Some(Duration::from_millis(30)))
        .build()
        .unwrap();
    let (first, _, release_first) = spinner(&rt, 7);
    wait_handed_off(&rt, 1);
    // The replacement takes the second long poll; the cap's one place is
    // taken, so it is not handed off.
    let (second, second_tid, release_second) = spinner(&rt, 7);
    std::thread::sleep(Duration::from_millis(200));
    let m = rt.metrics().event;
    assert_eq!((m.handed_off_total, m.handed_off_threads), (1, 1), "{m:?}");
    // Threads inherit this thread's nice value.
    assert_eq!(nice_of(second_tid), nice_of(0), "not niced");
    release_second.store(true, Ordering::SeqCst);
    release_first.store(true, Ordering::SeqCst);
    assert_eq!(rt.block_on(second).unwrap(), 7);
    assert_eq!(rt.block_on(first).unwrap(), 7);
    wait_handed_off(&rt, 0);
    assert_eq!(rt.metrics().event.healthy_threads, 1);
}

#[test]
fn off_by_default() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_secs(60))
        .build()
        .unwrap();
    let (h, spinning, release) = spinner(&rt, 7);
    std::thread::sleep(Duration::from_millis(200));
    let m = rt.metrics().event;
    assert_eq!((m.handed_off_total, m.healthy_threads), (0, 1), "{m:?}");
    assert_eq!(nice_of(spinning), nice_of(0));
    release.store(true, Ordering::SeqCst);
    assert_eq!(rt.block_on(h).unwrap(), 7);
    assert!(alive(spinning), "the thread goes on serving");
}

#[test]
fn a_zero_threshold_is_a_configuration_error() {
    let err = curfew::Runtime::builder()
        .hand_off_long_polls(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("hand_off_long_polls"), "{err}");
}

#[test]
fn idle_class_needs_the_hand_off() {
    let err = curfew::Runtime::builder()
        .hand_off_to_idle_class(true)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("hand_off_to_idle_class"), "{err}");
}

#[test]
fn a_handed_off_poll_runs_in_the_idle_class_when_asked_and_leaves_it_when_done() {
    let rt = idle_runtime(Duration::from_secs(60));
    let base = rt.block_on(rt.spawn(async { nice_of(0) })).unwrap();
    let (h, spinning, release) = spinner(&rt, 7);
    wait_handed_off(&rt, 1);
    // Niced in every case; in the idle class only where the kernel would
    // let it out again. (The count moves first: the watchdog starts the
    // replacement, then lowers the long poll's thread.)
    let expected = if may_restore() {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    assert!(
        wait_until(Duration::from_secs(10), || nice_of(spinning)
            == (base + 10).min(19)
            && policy_of(spinning) == expected),
        "nice {} (base {base}), policy {} (expected {expected})",
        nice_of(spinning),
        policy_of(spinning)
    );
    // The replacement serves at the ordinary class.
    let p = rt.block_on(rt.spawn(async { policy() })).unwrap();
    assert_eq!(p, libc::SCHED_OTHER);
    release.store(true, Ordering::SeqCst);
    assert_eq!(rt.block_on(h).unwrap(), 7);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(spinning)),
        "the handed-off thread exits"
    );
    assert_eq!(rt.metrics().event.timeouts, 0);
}

#[test]
fn an_idle_class_hand_off_is_back_in_the_ordinary_class_after_its_timeout() {
    if !may_restore() {
        eprintln!("skipped: this process may not leave SCHED_IDLE");
        return;
    }
    // No demotion at the timeout: the one counted is the hand-off's.
    let rt = builder(Duration::from_millis(150))
        .hand_off_to_idle_class(true)
        .demote_overrunning_polls(false)
        .build()
        .unwrap();
    let base = rt.block_on(rt.spawn(async { nice_of(0) })).unwrap();
    let (h, spinning, release) = spinner(&rt, 7);
    // Counted, not sampled: the thread is in the idle class from its
    // hand-off to its timeout, 120 ms that a loaded machine can keep this
    // thread from seeing.
    assert!(
        wait_until(Duration::from_secs(10), || rt.metrics().event.demoted_total
            == 1),
        "handed off to the idle class: {:?}",
        rt.metrics().event
    );
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Written off at the ordinary class (a supervisor's kill must not wait
    // for a thread that hardly runs), still niced.
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .metrics()
            .event
            .hijacked_threads
            == 1
            && policy_of(spinning) == libc::SCHED_OTHER),
        "written off and restored: {:?}, policy {}",
        rt.metrics().event,
        policy_of(spinning)
    );
    assert_eq!(nice_of(spinning), (base + 10).min(19));
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || !alive(spinning)));
}

#[test]
fn an_idle_class_hand_off_is_restored_before_the_runtime_starts_a_thread() {
    if !may_restore() {
        eprintln!("skipped: this process may not leave SCHED_IDLE");
        return;
    }
    let rt = idle_runtime(Duration::from_secs(60));
    let (first, first_tid, release_first) = spinner(&rt, 1);
    assert!(wait_until(Duration::from_secs(10), || policy_of(first_tid)
        == libc::SCHED_IDLE));
    // The second long poll runs on the first one's replacement; its own
    // hand-off starts a thread, which maps a stack: the first spinner must
    // not hold the address-space lock at idle priority meanwhile.
    let (second, second_tid, release_second) = spinner(&rt, 2);
    wait_handed_off(&rt, 2);
    // The first is restored before the second's replacement starts, and
    // the second demoted after it.
    assert!(
        wait_until(Duration::from_secs(10), || policy_of(second_tid)
            == libc::SCHED_IDLE),
        "the newest in the idle class: policy {}",
        policy_of(second_tid)
    );
    assert_eq!(policy_of(first_tid), libc::SCHED_OTHER, "restored");
    release_first.store(true, Ordering::SeqCst);
    release_second.store(true, Ordering::SeqCst);
    assert_eq!(rt.block_on(first).unwrap(), 1);
    assert_eq!(rt.block_on(second).unwrap(), 2);
}
