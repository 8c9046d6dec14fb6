//! Issue 14 item 7: fifty requests whose handlers never yield must not take
//! `/hello` offline. Each overrun writes its event thread off, and Rust
//! cannot stop the poll that holds it; without a limit, the cap on
//! written-off threads fills and the next poisoned polls hold the remaining
//! threads. The route's limit on stuck handlers (the runtime's
//! `max_overdue_per_route`, on by default; the layer puts the route on
//! every handler's key) refuses the route's further requests, queued ones
//! included, so healthy threads are left for `/hello`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, connect_from, get_from, runtime, spinning};
use curfew_http::CurfewLayer;

#[test]
fn hello_answers_through_fifty_infinite_loops() {
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/loop", spinning(stop.clone(), Duration::from_secs(20)))
            .layer(CurfewLayer::new().poll_budget(common::SPIN_BUDGET))
    };
    // The runtime's defaults but for 2 event threads, and a 50 ms budget
    // on the layer: the cap on hijacked threads is 8, the route's limit 4.
    let server = TestServer::start(runtime(), app, |s| s);
    let addr = server.addr;
    let started = Instant::now();
    let attackers: Vec<_> = (0..50u8)
        .map(|i| {
            std::thread::spawn(move || {
                // Fifty clients, so that no client-level policy could help.
                let mut s = connect_from([127, 0, 3, 1 + i], addr);
                let r = common::get(&mut s, "/loop");
                (r.map(|r| r.status), started.elapsed())
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut failures = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let mut s = connect_from([127, 0, 0, 1], addr);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        match common::get(&mut s, "/hello") {
            Ok(r) if r.status == 200 => worst = worst.max(t.elapsed()),
            other => failures.push(format!("{other:?} after {:?}", t.elapsed())),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every poisoned request was answered while the loops still spin:
    // 503 for those that ran and timed out, and for those refused.
    let answers: Vec<_> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    let m = server.handle.metrics();
    stop.store(true, Ordering::SeqCst);
    eprintln!("/hello: worst {worst:?} of 10 through the flood");
    assert!(
        failures.is_empty(),
        "/hello failed during the flood: {failures:?}"
    );
    // Generous: the target is 1 s on a quiet machine.
    assert!(worst < Duration::from_secs(3), "/hello took {worst:?}");
    for (status, at) in &answers {
        assert!(
            matches!(status, Ok(503)),
            "a poisoned request got {status:?} after {at:?}"
        );
        // The loops spin for 20 s unless stopped: an answer within a few
        // seconds came from the runtime, not from a loop that ended.
        assert!(*at < Duration::from_secs(10), "answered after {at:?}");
    }
    eprintln!(
        "hijacked now {}, refused {}, timeouts {}",
        m.event.hijacked_threads, m.refused, m.event.timeouts
    );
    assert!(
        m.event.hijacked_threads < 8,
        "one route reached the cap: {:?}",
        m.event
    );
    assert_eq!(
        get_from([127, 0, 0, 1], addr, "/hello").unwrap().status,
        200
    );
}
