//! A log sink that blocks never holds a `503` back. Under
//! `curfew_http::serve`, the layer's answer to an HTTP/1 handler that never
//! yields is written on the watchdog's thread, and its `tracing` event is
//! emitted from curfew's log thread: here the subscriber holds every warn
//! event until the test lets it go, and the timeouts are answered
//! meanwhile.
//!
//! This file holds one test on purpose: it installs a global subscriber.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use curfew_http::CurfewLayer;

mod log_sink;

/// One request on a fresh connection; the response's status.
fn status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    // The layer's 503 ends with a shutdown: read to the end either way.
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

#[test]
fn a_blocked_log_sink_does_not_hold_back_the_503() {
    let sink = log_sink::Sink::install();
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/spin",
                get(move || {
                    let stop = stop.clone();
                    async move {
                        let t = std::time::Instant::now();
                        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(10)
                        {
                            std::hint::spin_loop();
                        }
                        "spun"
                    }
                }),
            )
            .layer(CurfewLayer::new().poll_budget(Duration::from_millis(50)))
    };
    // Not dropped if an assertion fails: a watchdog held by the sink would
    // hang the drop, and the test must fail instead.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(2)
            .poll_budget(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = rt.spawn(async move { curfew_http::serve(listener, app).await });

    // Three handlers never yield; each is answered while the sink holds
    // the events of the ones before (a read gives up after 10 s).
    for _ in 0..3 {
        assert_eq!(status(addr, "/spin"), 503);
    }
    assert_eq!(status(addr, "/hello"), 200);
    stop.store(true, Ordering::SeqCst);

    // Once the sink moves, the events it held come through.
    sink.open();
    assert!(
        sink.wait_written("handler timed out", 3),
        "the layer's events after the sink opened: {:?}",
        sink.messages()
    );
    server.abort();
    std::mem::ManuallyDrop::into_inner(rt).shutdown_timeout(Duration::from_secs(5));
}
