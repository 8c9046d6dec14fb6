//! Request bodies: the budget of body bytes in flight answers 503 before
//! reading, and malformed bodies are 400, not 413.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use common::{TestServer, connect_from, get_from, read_reply, runtime};
use curfew_http::CurfewLayer;

fn app(reads: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/upload",
            post(move |body: Bytes| {
                reads.fetch_add(1, Ordering::SeqCst);
                async move { format!("{} bytes", body.len()) }
            }),
        )
        .layer(CurfewLayer::new())
}

#[test]
fn bodies_past_the_byte_budget_are_refused_before_reading() {
    let reads = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(runtime(), app(reads.clone()), |s| {
        s.max_body_bytes_in_flight(1000)
    });
    let addr = server.addr;
    // 600 bytes, sent slowly: they hold their share of the budget.
    let mut first = connect_from([127, 0, 0, 31], addr);
    first
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n0123456789")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // 600 more do not fit: 503 at once, before a byte of body is sent.
    let mut second = connect_from([127, 0, 0, 32], addr);
    second
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n")
        .unwrap();
    let r = read_reply(&mut second).expect("an answer without a body");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A length of 10^18 is refused the same way, not waited for.
    let mut huge = connect_from([127, 0, 0, 33], addr);
    huge.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000000000\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(read_reply(&mut huge).unwrap().status, 503);
    assert_eq!(reads.load(Ordering::SeqCst), 0);
    // Finishing the first body gives its bytes back.
    first.write_all(&[b'x'; 590]).unwrap();
    let r = read_reply(&mut first).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "600 bytes"));
    let mut again = connect_from([127, 0, 0, 32], addr);
    again
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\n")
        .unwrap();
    again.write_all(&[b'y'; 600]).unwrap();
    assert_eq!(read_reply(&mut again).unwrap().status, 200);
    assert_eq!(
        get_from([127, 0, 0, 34], addr, "/hello").unwrap().status,
        200
    );
}

#[test]
fn malformed_chunked_bodies_are_400() {
    let reads = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(runtime(), app(reads), |s| s);
    for bad in [
        // Not a hex chunk size.
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        // A chunk size that overflows.
        &b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"[..],
        // Chunk data longer than its size.
        &b"2\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let mut s = connect_from([127, 0, 0, 35], server.addr);
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        s.write_all(bad).unwrap();
        let r = read_reply(&mut s).expect("an answer");
        assert_eq!(r.status, 400, "{:?} -> {r:?}", String::from_utf8_lossy(bad));
    }
}
