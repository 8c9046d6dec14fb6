//! Graceful shutdown lets the requests in flight finish, then stops.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, get_from, runtime};
use curfew_http::CurfewLayer;

#[test]
fn in_flight_requests_finish_during_graceful_shutdown() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // The handler says when it has started, and when it is about to
    // answer: the test asks for the shutdown once the request is in
    // flight, and checks that the shutdown waited for it, by these flags
    // rather than by the clock. (A shutdown that did not wait ends well
    // within the handler's 500 ms.)
    let (started_tx, started) = std::sync::mpsc::sync_channel::<()>(1);
    let finished = Arc::new(AtomicBool::new(false));
    let app = {
        let finished = finished.clone();
        Router::new()
            .route(
                "/slow",
                get(move || async move {
                    let _ = started_tx.try_send(());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    finished.store(true, Ordering::SeqCst);
                    "finished"
                }),
            )
            .layer(CurfewLayer::new())
    };
    let mut server = TestServer::start(runtime(), app, |s| s);
    let addr = server.addr;
    let slow = std::thread::spawn(move || get_from([127, 0, 0, 1], addr, "/slow"));
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("the request reached its handler");
    assert!(
        server.shutdown(Duration::from_secs(10)),
        "shutdown finished"
    );
    assert!(
        finished.load(Ordering::SeqCst),
        "the shutdown finished before the request in flight"
    );
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!((r.status, r.body.as_str()), (200, "finished"));
    // Stopped: no more connections.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// A draining server answers keep-alive clients one more time with
/// `Connection: close` instead of closing under them: a client that pauses
/// between requests, as real ones do, loses none of them. Without the
/// linger, the idle connections closed at once and each client's next
/// request failed on a closed socket.
#[test]
fn keep_alive_clients_are_told_to_leave_before_the_close() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};

    const CLIENTS: usize = 4;
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(CurfewLayer::new());
    let mut server = TestServer::start(runtime(), app, |s| s.drain_linger(Duration::from_secs(5)));
    let addr = server.addr;
    let started = Arc::new(Barrier::new(CLIENTS + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS as u8)
        .map(|i| {
            let started = started.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = common::connect_from([127, 0, 4, 1 + i], addr);
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut answered = 0;
                let first = common::get(&mut s, "/hello");
                started.wait();
                let mut reply = first;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let r = reply.map_err(|e| format!("request {answered} failed: {e}"))?;
                    assert_eq!(r.status, 200);
                    answered += 1;
                    if r.header("connection") == Some("close") {
                        // The server closes its side after that answer.
                        return Ok(common::closed_within(&mut s, Duration::from_secs(5)));
                    }
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        return Err(format!("no `Connection: close` after {answered} answers"));
                    }
                    // A client's think time: the connection is idle now.
                    std::thread::sleep(Duration::from_millis(20));
                    reply = common::get(&mut s, "/hello");
                }
            })
        })
        .collect();
    started.wait();
    let t = Instant::now();
    assert!(
        server.shutdown(Duration::from_secs(15)),
        "shutdown finished"
    );
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        assert_eq!(c.join().unwrap(), Ok(true), "client closed cleanly");
    }
    // The linger ends as soon as every client has left, not after 5 s.
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
}
