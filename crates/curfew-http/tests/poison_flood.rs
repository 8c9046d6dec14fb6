//! Issue 14 item 7: fifty requests whose handlers never yield must not take
//! `/hello` offline. Each overrun writes its event thread off; at the cap on
//! written-off threads the runtime must still keep a thread for new work.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, connect_from, get_from, runtime, spin};
use curfew_http::CurfewLayer;

#[test]
#[ignore = "needs the runtime's reserved event thread"]
fn hello_answers_through_fifty_infinite_loops() {
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/loop",
                get(move || {
                    let stop = stop.clone();
                    async move {
                        spin(&stop, Duration::from_secs(20));
                        "spun"
                    }
                }),
            )
            .layer(CurfewLayer::new())
    };
    let server = TestServer::start(runtime(), app, |s| s);
    let addr = server.addr;
    let attackers: Vec<_> = (0..50u8)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect_from([127, 0, 3, 1 + i], addr);
                let _ = common::get(&mut s, "/loop");
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
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        let _ = a.join();
    }
    assert!(
        failures.is_empty(),
        "/hello failed during the flood: {failures:?}"
    );
    // Generous: the target is 1 s on a quiet machine.
    assert!(worst < Duration::from_secs(3), "/hello took {worst:?}");
    assert_eq!(
        get_from([127, 0, 0, 1], addr, "/hello").unwrap().status,
        200
    );
}
