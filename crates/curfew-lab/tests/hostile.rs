//! The lab's server against hostile clients: a client-id header cannot
//! name another client unless trusted, header ids and addresses never
//! collide, and absurd or malformed bodies are answered at once.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use curfew_lab::server::{Mode, ServerConfig};
use hyper::Method;

fn policy(trust_client_header: bool) -> ServerConfig {
    ServerConfig {
        strikes: 1,
        cool_off: Duration::from_secs(30),
        trust_client_header,
        ..ServerConfig::default()
    }
}

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 4096];
    let n = s
        .read(&mut buf)
        .expect("an answer before the body is complete");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn untrusted_client_header_names_no_one() {
    let server = common::server(Mode::CurfewPolicy, &policy(false));
    let addr = server.addr();
    common::client_rt().block_on(async {
        let limit = Duration::from_secs(10);
        let body = usize::MAX.to_string();
        let a = common::request(
            addr,
            Method::POST,
            "/attack/infinite-loop",
            "victim",
            body,
            limit,
        )
        .await;
        assert_eq!((a.status, a.outcome.as_str()), (503, "timeout"));
    });
    server.stop_spinning();
    let m = server.probe().metrics().unwrap();
    assert!(m.client("id:victim").is_none(), "{:?}", m.clients);
    assert!(m.client("ip:127.0.0.1").is_some_and(|c| c.cooling_off));
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}

#[test]
fn header_ids_and_addresses_never_collide() {
    let server = common::server(Mode::CurfewPolicy, &policy(true));
    let addr = server.addr();
    common::client_rt().block_on(async {
        let limit = Duration::from_secs(10);
        let body = usize::MAX.to_string();
        // Strikes against the id "127.0.0.1"...
        let a = common::request(
            addr,
            Method::POST,
            "/attack/infinite-loop",
            "127.0.0.1",
            body,
            limit,
        )
        .await;
        assert_eq!((a.status, a.outcome.as_str()), (503, "timeout"));
    });
    server.stop_spinning();
    // ...do not refuse the address 127.0.0.1.
    let hello = raw(addr, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    let m = server.probe().metrics().unwrap();
    assert!(m.client("id:127.0.0.1").is_some_and(|c| c.cooling_off));
    assert!(!m.client("ip:127.0.0.1").is_some_and(|c| c.cooling_off));
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}

#[test]
fn absurd_and_malformed_bodies_are_answered_at_once() {
    let server = common::server(Mode::Curfew, &ServerConfig::default());
    let addr = server.addr();
    // A declared length of 10^18 followed by 3 bytes: refused, not waited
    // for.
    let r = raw(
        addr,
        b"POST /attack/fancy-regex HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000000000\r\n\r\nabc",
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    // A malformed chunk is a bad request, not a too-large one.
    let r = raw(
        addr,
        b"POST /attack/fancy-regex HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}
