//! Slow and idle clients: the header-read, body-progress and idle timeouts
//! of `serve` close them, while other clients are served.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use common::{TestServer, closed_within, connect_from, get_from, read_reply, runtime};
use curfew_http::CurfewLayer;

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/upload",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .layer(CurfewLayer::new())
}

/// Sends one byte every 50 ms of a head that never ends, so that the
/// connection is never idle and only the header-read timeout can end it.
/// Stops 8 s after `start`. True if the server cut the connection off: a
/// write failed, or it closed within 5 s of the last byte.
fn trickle_a_head(s: &mut std::net::TcpStream, start: Instant) -> bool {
    for b in b"GET /hello HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain([b'a'; 200].iter())
    {
        if s.write_all(&[*b]).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    closed_within(s, Duration::from_secs(5))
}

/// A client from another address is answered.
fn others_are_served(addr: std::net::SocketAddr) {
    assert_eq!(
        get_from([127, 0, 0, 1], addr, "/hello").unwrap().status,
        200
    );
}

#[test]
fn trickling_headers_are_cut_off() {
    let server = TestServer::start(runtime(), app(), |s| {
        s.header_read_timeout(Duration::from_millis(400))
            .idle_timeout(Duration::from_secs(30))
    });
    let mut s = connect_from([127, 0, 0, 1], server.addr);
    let start = Instant::now();
    assert!(
        trickle_a_head(&mut s, start),
        "a trickling header is cut off"
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "cut off in {took:?}");
    others_are_served(server.addr);
}

#[test]
fn stalled_body_is_answered_400_and_closed() {
    let server = TestServer::start(runtime(), app(), |s| {
        s.body_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_secs(30))
    });
    let mut s = connect_from([127, 0, 0, 1], server.addr);
    let start = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
        .unwrap();
    let r = read_reply(&mut s).expect("an answer to a stalled body");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "and the connection is closed"
    );
}

#[test]
fn idle_connections_are_closed() {
    // Long enough that a loaded machine cannot hold the client between
    // its connect and its request for that long.
    let server = TestServer::start(runtime(), app(), |s| {
        s.idle_timeout(Duration::from_millis(1500))
            .header_read_timeout(Duration::from_secs(30))
    });
    // Idle before its first byte.
    let mut silent = connect_from([127, 0, 0, 1], server.addr);
    // Idle after a request on a keep-alive connection.
    let mut kept = connect_from([127, 0, 0, 1], server.addr);
    assert_eq!(common::get(&mut kept, "/hello").unwrap().status, 200);
    let start = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "silent connection closed"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(10)),
        "idle keep-alive closed"
    );
    // Far sooner than the 30 s header-read timeout.
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A connection that never starts a request (silent, or stuck in the
/// HTTP/2 preface, before hyper knows which protocol it speaks) is closed
/// at the header-read timeout, not left to the idle reaper.
#[test]
fn connections_that_never_start_a_request_are_closed_at_the_header_timeout() {
    let server = TestServer::start(runtime(), app(), |s| {
        s.header_read_timeout(Duration::from_millis(1200))
            .idle_timeout(Duration::from_secs(60))
    });
    let mut silent = connect_from([127, 0, 0, 2], server.addr);
    let mut preface = connect_from([127, 0, 0, 3], server.addr);
    let start = Instant::now();
    // Half of "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", then nothing.
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    for (name, s) in [("silent", &mut silent), ("half a preface", &mut preface)] {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "the {name} connection is still open after {:?}",
            start.elapsed()
        );
    }
    // Far sooner than the 60 s idle timeout.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // A connection that starts a request in time is not affected: it is
    // served past the first-request deadline (each gap shorter than the
    // header-read timeout, which also bounds HTTP/1 idle time, by more
    // than a loaded machine holds a client up).
    // Its requests span 1.7 s from its connect, past the 1.2 s within
    // which a first request must start.
    let mut s = connect_from([127, 0, 0, 4], server.addr);
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        assert_eq!(common::get(&mut s, "/hello").unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// After a first request on a keep-alive connection, the next head is
/// timed as well, trickled or never sent; the HTTP/1 idle time between
/// requests is the header-read timeout's.
#[test]
fn the_heads_after_the_first_are_timed_too() {
    // The second connection's first head must come within the timeout
    // of its connect, after the first's request: a loaded machine's
    // margin.
    let server = TestServer::start(runtime(), app(), |s| {
        s.header_read_timeout(Duration::from_millis(1000))
            .idle_timeout(Duration::from_secs(60))
    });
    let mut trickled = connect_from([127, 0, 0, 5], server.addr);
    let mut silent = connect_from([127, 0, 0, 6], server.addr);
    for s in [&mut trickled, &mut silent] {
        assert_eq!(common::get(s, "/hello").unwrap().status, 200);
    }
    let start = Instant::now();
    assert!(
        trickle_a_head(&mut trickled, start),
        "a trickled second head is cut off"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)),
        "a keep-alive connection idle past the header-read timeout is closed"
    );
    // Far sooner than the 60 s idle timeout.
    let took = start.elapsed();
    assert!(took < Duration::from_secs(13), "{took:?}");
    others_are_served(server.addr);
}

/// A connection that keeps sending requests, each head whole, is never cut
/// off by the header-read timeout, however long it lives.
#[test]
fn a_busy_keep_alive_connection_outlives_the_header_timeout() {
    let server = TestServer::start(runtime(), app(), |s| {
        s.header_read_timeout(Duration::from_millis(1000))
            .idle_timeout(Duration::from_secs(60))
    });
    let mut s = connect_from([127, 0, 0, 7], server.addr);
    let start = Instant::now();
    let mut served = 0;
    // Three times the timeout, with gaps of a fifth of it.
    while start.elapsed() < Duration::from_millis(3000) {
        assert_eq!(common::get(&mut s, "/hello").unwrap().status, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(served >= 5, "{served}");
}

/// A response whose body goes out for longer than the header-read timeout
/// is not cut off by it: the connection waits for no head until the body
/// is written, and the clock on the next head starts only then.
#[test]
fn a_slow_response_body_is_not_cut_off_by_the_header_timeout() {
    const CHUNKS: usize = 8;
    const CHUNK: &[u8] = b"0123456789";
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                // Eight chunks 250 ms apart: 2 s, twice the timeout.
                let chunks = futures::stream::unfold(0, |i| async move {
                    if i == CHUNKS {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(CHUNK)), i + 1))
                });
                (
                    [(
                        http::header::CONTENT_LENGTH,
                        (CHUNKS * CHUNK.len()).to_string(),
                    )],
                    axum::body::Body::from_stream(chunks),
                )
            }),
        )
        .layer(CurfewLayer::new());
    let server = TestServer::start(runtime(), app, |s| {
        s.header_read_timeout(Duration::from_millis(1000))
            .idle_timeout(Duration::from_secs(30))
    });
    let mut s = connect_from([127, 0, 0, 8], server.addr);
    let start = Instant::now();
    let reply = common::get(&mut s, "/slow").expect("the whole slow body");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "0123456789".repeat(CHUNKS));
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the body took its time: {:?}",
        start.elapsed()
    );
    // The connection is still open for the next request.
    assert_eq!(common::get(&mut s, "/hello").unwrap().status, 200);
    // And idle after it, it is closed at the header-read timeout.
    assert!(closed_within(&mut s, Duration::from_secs(5)));
}

/// A handler that answers without reading its request's body does not keep
/// the connection waiting for the rest of it: hyper drains only what has
/// arrived, so a body still on its way ends the connection after the
/// answer, long before any timeout, and a body that arrived whole leaves
/// the connection open for the next request.
#[test]
fn an_ignored_request_body_still_arriving_ends_the_connection_after_the_answer() {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/ignore", post(|| async { "ignored" }))
        .layer(CurfewLayer::new());
    let server = TestServer::start(runtime(), app, |s| {
        s.header_read_timeout(Duration::from_secs(60))
            .body_timeout(Duration::from_secs(60))
            .idle_timeout(Duration::from_secs(60))
    });
    // Whole: drained, and the connection goes on.
    let mut s = connect_from([127, 0, 0, 9], server.addr);
    write!(
        s,
        "POST /ignore HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello"
    )
    .unwrap();
    let reply = read_reply(&mut s).unwrap();
    assert_eq!((reply.status, &*reply.body), (200, "ignored"));
    assert_eq!(common::get(&mut s, "/hello").unwrap().status, 200);

    // On its way (10 of 100,000 bytes): answered, then closed.
    let mut s = connect_from([127, 0, 0, 9], server.addr);
    write!(
        s,
        "POST /ignore HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n0123456789"
    )
    .unwrap();
    let reply = read_reply(&mut s).unwrap();
    assert_eq!((reply.status, &*reply.body), (200, "ignored"));
    assert!(
        closed_within(&mut s, Duration::from_secs(20)),
        "the connection waited for the rest of an ignored body"
    );
}
