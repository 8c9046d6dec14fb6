//! The queue deadline: every task gets an answer, even when every event
//! thread is stuck and the hijack cap is full. A task that has waited in a
//! queue longer than its budget, with no thread free to run it, is answered
//! with a queue timeout; a blocking job's budget counts from its spawn; the
//! I/O and timer driver keeps turning, so a timer in `block_on` still fires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use curfew_suite::wait_until;

const BUDGET: Duration = Duration::from_millis(50);
/// Generous: the point is that every handle is answered at all, and within
/// a small multiple of its budget even on a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_secs(2);

/// Blocks its thread until `release` is set, as a read of a FIFO that never
/// gets a writer does (a sleep loop, to spare the machine's cores).
fn block_until(release: &AtomicBool) {
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Awaits each handle on a thread of its own and reports when it resolved,
/// so that an unanswered handle shows as a missing report, not a hung test.
fn answer_times<T: Send + 'static>(
    handles: Vec<(Instant, curfew::JoinHandle<T>)>,
) -> mpsc::Receiver<(usize, Duration, Result<T, curfew::JoinError>)> {
    let (tx, rx) = mpsc::channel();
    for (i, (spawned, h)) in handles.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let res = futures::executor::block_on(h);
            let _ = tx.send((i, spawned.elapsed(), res));
        });
    }
    rx
}

/// Collects `n` reports, waiting at most `bound` past the first spawn.
fn collect<T>(
    rx: &mpsc::Receiver<(usize, Duration, Result<T, curfew::JoinError>)>,
    n: usize,
    bound: Duration,
) -> Vec<(usize, Duration, Result<T, curfew::JoinError>)> {
    let deadline = Instant::now() + bound + Duration::from_secs(3);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => got.push(r),
            Err(_) => break,
        }
    }
    got
}

/// The shape of the outside report: 1 event thread, cap 2, 6 tasks blocked
/// for good with 20 ordinary tasks queued behind them, 50 ms budget.
#[test]
fn every_handle_is_answered_when_blocked_tasks_fill_the_threads() {
    // Kept from dropping if an assertion fails, so that a runtime with
    // unanswered tasks fails the test instead of hanging it in its drop.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .max_hijacked_threads(2)
            .poll_budget(BUDGET)
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let mut handles: Vec<(Instant, curfew::JoinHandle<u32>)> = Vec::new();
    for _ in 0..6 {
        let r = release.clone();
        handles.push((
            Instant::now(),
            rt.spawn(async move {
                block_until(&r);
                0
            }),
        ));
    }
    for i in 0..20u32 {
        handles.push((Instant::now(), rt.spawn(async move { i + 1 })));
    }
    let rx = answer_times(handles);
    let got = collect(&rx, 26, ANSWER_BOUND);
    let slowest = got.iter().map(|g| g.1).max().unwrap_or_default();
    eprintln!(
        "answered {} of 26, slowest {slowest:?} after its spawn",
        got.len()
    );
    assert_eq!(
        got.len(),
        26,
        "unanswered handles: {:?}",
        rt.metrics().event
    );
    for (i, took, res) in &got {
        assert!(
            *took < ANSWER_BOUND,
            "handle {i} answered {took:?} after its spawn"
        );
        match res {
            // A blocked task can only time out.
            _ if *i < 6 => assert!(res.as_ref().unwrap_err().is_timeout(), "{res:?}"),
            // An ordinary one either ran or was answered from the queue.
            Ok(v) => assert_eq!(*v, *i as u32 - 5),
            Err(e) => assert!(e.is_queue_timeout(), "{e:?}"),
        }
    }
    let m = rt.metrics().event;
    assert!(m.queue_timeouts >= 1, "{m:?}");
    assert!(m.hijacked_threads <= 2, "{m:?}");
    release.store(true, Ordering::SeqCst);
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

/// Fills the cap first (1 event thread, cap 2: three stuck threads), then
/// spawns ordinary tasks: nothing can run them, so each is answered with a
/// queue timeout, never before its budget; and the driver still turns.
#[test]
fn at_the_cap_new_tasks_get_queue_timeouts_and_timers_still_fire() {
    // Kept from dropping if an assertion fails, so that a runtime with
    // unanswered tasks fails the test instead of hanging it in its drop.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .max_hijacked_threads(2)
            .poll_budget(BUDGET)
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    for _ in 0..3 {
        let r = release.clone();
        let h = rt.spawn(async move { block_until(&r) });
        let err = rt.block_on(h).unwrap_err();
        assert!(err.is_timeout() && !err.is_queue_timeout(), "{err:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = rt.metrics().event;
            m.hijacked_threads == 2 && m.overdue_threads == 1
        }),
        "{:?}",
        rt.metrics().event
    );
    let m = rt.metrics().event;
    assert_eq!(
        m.healthy_threads, 0,
        "an overdue thread is not healthy: {m:?}"
    );

    let handles: Vec<_> = (0..20u32)
        .map(|i| (Instant::now(), rt.spawn(async move { i })))
        .collect();
    let rx = answer_times(handles);
    let got = collect(&rx, 20, ANSWER_BOUND);
    assert_eq!(
        got.len(),
        20,
        "unanswered handles: {:?}",
        rt.metrics().event
    );
    for (i, took, res) in got {
        let err = res.expect_err("no thread can run it");
        assert!(err.is_queue_timeout(), "{err:?}");
        let t = err.timeout().unwrap();
        assert_eq!(t.budget(), BUDGET);
        assert!(t.elapsed() >= BUDGET, "answered early: {t}");
        assert!(took >= BUDGET, "handle {i} answered {took:?} after spawn");
        assert!(
            took < ANSWER_BOUND,
            "handle {i} answered {took:?} after spawn"
        );
        assert!(t.to_string().contains("without starting"), "{t}");
    }
    assert!(rt.metrics().event.queue_timeouts >= 20);

    // Every event thread is stuck, yet a timer in `block_on` fires.
    let handle = rt.handle();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let res = handle.block_on(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::time::timeout(Duration::from_millis(30), std::future::pending::<()>()).await
        });
        let _ = tx.send((res.is_err(), start.elapsed()));
    });
    let (elapsed, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a timer in block_on never fired while every event thread was stuck");
    assert!(elapsed, "the timeout should have elapsed");
    assert!(took >= Duration::from_millis(50), "{took:?}");

    // Once a thread is back, tasks run again.
    release.store(true, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || {
        rt.metrics().event.healthy_threads == 1
    }));
    assert_eq!(rt.block_on(rt.spawn(async { 7 })).unwrap(), 7);
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

/// 16 jobs blocked for good on 2 pool threads: a job's budget counts from
/// its spawn, so each is answered within about its budget of its spawn, not
/// after waiting its turn (which took up to 8 budgets).
#[test]
fn blocking_jobs_are_answered_within_their_budget_of_their_spawn() {
    let budget = Duration::from_millis(300);
    // Kept from dropping if an assertion fails, so that a runtime with
    // unanswered tasks fails the test instead of hanging it in its drop.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .blocking_threads(2)
            .max_abandoned_threads(16)
            .job_budget(budget)
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let r = release.clone();
            (Instant::now(), rt.spawn_blocking(move || block_until(&r)))
        })
        .collect();
    let rx = answer_times(handles);
    let got = collect(&rx, 16, 4 * budget);
    let slowest = got.iter().map(|g| g.1).max().unwrap_or_default();
    eprintln!(
        "answered {} of 16, slowest {slowest:?} after its spawn",
        got.len()
    );
    assert_eq!(got.len(), 16);
    for (i, took, res) in got {
        let err = res.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let t = err.timeout().unwrap();
        assert!(t.elapsed() >= budget, "job {i} answered early: {t}");
        assert!(took >= budget, "job {i} answered {took:?} after spawn");
        // Waiting its turn behind the others took 2-8 budgets.
        assert!(took < 4 * budget, "job {i} answered {took:?} after spawn");
    }
    release.store(true, Ordering::SeqCst);
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

/// A job that waited in the queue and then runs still counts its budget
/// from its spawn.
#[test]
fn a_jobs_budget_includes_its_wait_in_the_queue() {
    let budget = Duration::from_millis(200);
    // Kept from dropping if an assertion fails, so that a runtime with
    // unanswered tasks fails the test instead of hanging it in its drop.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .blocking_threads(1)
            .job_budget(budget)
            .build()
            .unwrap(),
    );
    // The first job holds the only thread for most of the budget; the
    // second waits, then runs for most of the budget: together past it.
    // The first has a budget of its own far from the point, so that a
    // loaded machine's late start cannot time it out.
    let first = curfew::task::Builder::new()
        .job_budget(Duration::from_secs(30))
        .spawn_blocking_on(&rt.handle(), move || std::thread::sleep(budget * 3 / 5));
    let spawned = Instant::now();
    let second = rt.spawn_blocking(move || std::thread::sleep(budget * 4 / 5));
    assert!(rt.block_on(first).is_ok());
    let err = rt.block_on(second).unwrap_err();
    let took = spawned.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    let t = err.timeout().unwrap();
    assert!(t.elapsed() >= budget, "{t}");
    assert!(took >= budget && took < Duration::from_secs(5), "{took:?}");
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

/// A job whose budget ran out while it waited behind a job still within
/// its own (longer) budget is answered with a queue timeout when a thread
/// reaches it, and is not started.
#[test]
fn a_job_past_its_deadline_when_picked_up_never_starts() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .job_budget(Duration::from_secs(5))
        .build()
        .unwrap();
    let first = rt.spawn_blocking(|| std::thread::sleep(Duration::from_millis(150)));
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let second = curfew::task::Builder::new()
        .job_budget(Duration::from_millis(50))
        .spawn_blocking_on(&rt.handle(), move || r.store(true, Ordering::SeqCst));
    assert!(rt.block_on(first).is_ok());
    let err = rt.block_on(second).unwrap_err();
    assert!(err.is_queue_timeout(), "{err:?}");
    assert!(err.timeout().unwrap().elapsed() >= Duration::from_millis(50));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a job past its deadline was started"
    );
    assert_eq!(rt.metrics().blocking.queue_timeouts, 1);
}
