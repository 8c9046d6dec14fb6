//! The route's limit on stuck tasks, and admission looked at again on a
//! queued task's first poll.
//!
//! Rust cannot stop a poll that never returns, so every such poll writes off
//! its thread. A route whose tasks keep doing it would bring the runtime to
//! its cap on written-off threads, and then hold the rest. Once a route has
//! `max_overdue_per_route` polls stuck past their budget, its tasks are
//! refused: at the spawn, and when a task that was queued before the limit
//! was reached is first polled. Likewise a cool-off that begins while a
//! client's tasks wait in a queue refuses them before they run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use curfew::Refusal;
use curfew::policy::{ClientKey, ClientPolicy};
use curfew_suite::answered_within;

const BUDGET: Duration = Duration::from_millis(50);

/// Blocks its thread until `release` is set (a sleep loop, to spare the
/// machine's cores), as a poll that never returns does.
fn block_until(release: &AtomicBool) {
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_route_with_its_limit_of_stuck_polls_is_refused_queued_tasks_included() {
    const THREADS: usize = 2;
    const LIMIT: usize = 2;
    // Kept from dropping if an assertion fails: a runtime with threads
    // stuck for good may not drop in bounded time.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(THREADS)
            .max_hijacked_threads(8)
            .max_overdue_per_route(LIMIT)
            .poll_budget(BUDGET)
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    // All spawned before any of them overran: every one is admitted at its
    // spawn and waits in a queue.
    let poisoned: Vec<_> = (0..20u32)
        .map(|i| {
            let (r, s) = (release.clone(), started.clone());
            curfew::task::Builder::new()
                .client(ClientKey::id(format!("client-{i}")).with_route("/poison"))
                .spawn_on(&rt.handle(), async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    block_until(&r);
                })
        })
        .collect();
    let mut refused = 0;
    let mut timed_out = 0;
    for h in poisoned {
        match answered_within(h, Duration::from_secs(10))
            .expect("a poisoned task was never answered")
        {
            Err(e) if e.is_timeout() => timed_out += 1,
            Err(e) => {
                match e.refusal() {
                    Some(Refusal::RouteOverdue {
                        route,
                        overdue,
                        limit,
                    }) => {
                        assert_eq!(route.as_str(), "/poison");
                        assert_eq!(*limit, LIMIT as u32);
                        assert!(*overdue >= LIMIT as u32, "{e}");
                    }
                    other => panic!("unexpected refusal {other:?}: {e}"),
                }
                refused += 1;
            }
            Ok(()) => panic!("a blocked task completed before its release"),
        }
    }
    let ran = started.load(Ordering::SeqCst);
    eprintln!("{ran} started, {timed_out} timed out, {refused} refused");
    // At most the limit, plus one per thread already running the route
    // when the limit was reached.
    assert!(ran <= LIMIT + THREADS, "{ran} poisoned tasks started");
    assert_eq!(timed_out, ran);
    assert_eq!(refused, 20 - ran);
    let m = rt.metrics();
    assert!(m.event.hijacked_threads <= LIMIT + THREADS, "{:?}", m.event);
    assert!(m.refused >= refused as u64);

    // Other routes, and tasks without a route, are served meanwhile.
    let ok = curfew::task::Builder::new()
        .client(ClientKey::id("client-0").with_route("/ok"))
        .spawn_on(&rt.handle(), async { 7 });
    assert_eq!(
        answered_within(ok, Duration::from_secs(5))
            .unwrap()
            .unwrap(),
        7
    );
    assert_eq!(
        answered_within(rt.spawn(async { 8 }), Duration::from_secs(5))
            .unwrap()
            .unwrap(),
        8
    );
    // New tasks for the route are refused at the spawn.
    let late = curfew::task::Builder::new()
        .client(ClientKey::id("late").with_route("/poison"))
        .spawn_on(&rt.handle(), async {});
    assert!(late.is_finished(), "refused at once");
    assert!(
        answered_within(late, Duration::from_secs(1))
            .unwrap()
            .unwrap_err()
            .is_refused()
    );

    // Once the stuck polls return, the route is served again.
    release.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let h = curfew::task::Builder::new()
            .client(ClientKey::id("later").with_route("/poison"))
            .spawn_on(&rt.handle(), async { 9 });
        match answered_within(h, Duration::from_secs(5)) {
            Some(Ok(9)) => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert!(
        served,
        "the route was not served again after its polls returned"
    );
    drop(std::mem::ManuallyDrop::into_inner(rt));
}

#[test]
fn a_cool_off_that_begins_while_tasks_wait_refuses_them_before_they_run() {
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(20))
            .client_policy(ClientPolicy::new(1, Duration::from_secs(60)))
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    // Holds the only thread past its budget: one strike, and mallory cools
    // off, while the tasks below wait in the queue, admitted.
    let first = curfew::task::Builder::new()
        .client("mallory")
        .spawn_on(&rt.handle(), async move { block_until(&r) });
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let ran = ran.clone();
            curfew::task::Builder::new()
                .client("mallory")
                .spawn_on(&rt.handle(), async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
        })
        .collect();
    let err = answered_within(first, Duration::from_secs(5))
        .unwrap()
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    for h in queued {
        let err = answered_within(h, Duration::from_secs(5))
            .expect("a queued task was never answered")
            .unwrap_err();
        assert!(
            matches!(err.refusal(), Some(Refusal::ClientCoolingOff { client, .. }) if client.as_str() == "mallory"),
            "{err:?}"
        );
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a refused client's task ran");
    // Another client is served.
    let other = curfew::task::Builder::new()
        .client("alice")
        .spawn_on(&rt.handle(), async { 1 });
    assert_eq!(
        answered_within(other, Duration::from_secs(5))
            .unwrap()
            .unwrap(),
        1
    );
    release.store(true, Ordering::SeqCst);
    drop(std::mem::ManuallyDrop::into_inner(rt));
}
