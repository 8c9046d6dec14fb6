//! Graceful shutdown lets the requests in flight finish, then stops.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, get_from, runtime};
use curfew_http::CurfewLayer;

#[test]
fn in_flight_requests_finish_during_graceful_shutdown() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "finished"
            }),
        )
        .layer(CurfewLayer::new());
    let mut server = TestServer::start(runtime(), app, |s| s);
    let addr = server.addr;
    let slow = std::thread::spawn(move || get_from([127, 0, 0, 1], addr, "/slow"));
    std::thread::sleep(Duration::from_millis(150));
    let t = Instant::now();
    assert!(
        server.shutdown(Duration::from_secs(10)),
        "shutdown finished"
    );
    let r = slow
        .join()
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!((r.status, r.body.as_str()), (200, "finished"));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "it waited for the request"
    );
    // Stopped: no more connections.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
