//! The lab's server against hostile clients: a client-id header cannot
//! name another client unless trusted, header ids and addresses never
//! collide, absurd or malformed bodies are answered at once, an error never
//! echoes a huge payload back, and a flood of infinite loops from distinct
//! ids does not take `/hello` offline.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use curfew::metrics::ClientMetrics;
use curfew::{ClientKey, RuntimeMetrics};
use curfew_lab::server::{Mode, ServerConfig};
use hyper::Method;

/// The table entry of `key`, matched by namespace and text.
fn entry<'a>(m: &'a RuntimeMetrics, key: &ClientKey) -> Option<&'a ClientMetrics> {
    m.clients.iter().find(|c| c.client == *key)
}

fn localhost() -> ClientKey {
    ClientKey::ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

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
    assert!(
        entry(&m, &ClientKey::id("victim")).is_none(),
        "{:?}",
        m.clients
    );
    assert!(entry(&m, &localhost()).is_some_and(|c| c.cooling_off));
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
    assert!(entry(&m, &ClientKey::id("127.0.0.1")).is_some_and(|c| c.cooling_off));
    assert!(!entry(&m, &localhost()).is_some_and(|c| c.cooling_off));
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

/// `read-path`'s error names the path it could not read: a 4 MB path must
/// not come back as a 4 MB answer.
#[test]
fn an_error_does_not_echo_a_huge_payload() {
    let server = common::server(Mode::Curfew, &ServerConfig::default());
    let addr = server.addr();
    let path = format!("/no/such/dir/{}", "a".repeat(4 << 20));
    let a = common::client_rt().block_on(common::request(
        addr,
        Method::POST,
        "/attack/read-path",
        "someone",
        path,
        Duration::from_secs(30),
    ));
    assert_eq!(a.status, 422, "{}", &a.body[..a.body.len().min(300)]);
    assert!(a.body.len() < 1024, "{} bytes echoed", a.body.len());
    assert!(a.body.contains("bytes in all"), "{}", a.body);
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}

/// Issue 14 item 7: fifty `POST /attack/infinite-loop` with distinct client
/// ids (so that no client-level policy can help) each write off the event
/// thread they run on. The route's limit on stuck handlers refuses the
/// route once a few are stuck, queued requests included, so the cap on
/// hijacked threads is never reached and `/hello` keeps answering.
#[test]
fn hello_answers_through_fifty_infinite_loops_from_distinct_ids() {
    let server = common::server(Mode::Curfew, &ServerConfig::default());
    let addr = server.addr();
    let rt = common::client_rt();
    let (answers, worst) = rt.block_on(async {
        let started = Instant::now();
        let attackers: Vec<_> = (0..50)
            .map(|i| {
                tokio::spawn(async move {
                    let a = common::request(
                        addr,
                        Method::POST,
                        "/attack/infinite-loop",
                        &format!("attacker-{i}"),
                        u64::MAX.to_string(),
                        Duration::from_secs(20),
                    )
                    .await;
                    (a, started.elapsed())
                })
            })
            .collect();
        let mut worst = Duration::ZERO;
        for _ in 0..10 {
            let t = Instant::now();
            // Generous for a loaded machine; the target is 1 s.
            let a = common::request(
                addr,
                Method::GET,
                "/hello",
                "benign",
                "",
                Duration::from_secs(5),
            )
            .await;
            assert_eq!((a.status, a.outcome.as_str()), (200, "ok"), "{a:?}");
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut answers = Vec::new();
        for a in attackers {
            answers.push(a.await.expect("an attacker got no answer"));
        }
        (answers, worst)
    });
    let m = server.probe().metrics().unwrap();
    server.stop_spinning();
    eprintln!(
        "/hello: worst {worst:?} of 10 through the flood; hijacked {}, refused {}",
        m.event.hijacked_threads, m.refused
    );
    assert!(worst < Duration::from_secs(3), "/hello took {worst:?}");
    let (mut timeouts, mut refused) = (0, 0);
    for (a, at) in &answers {
        match (a.status, a.outcome.as_str()) {
            (503, "timeout") => timeouts += 1,
            (503, "refused") => refused += 1,
            other => panic!("a poisoned request got {other:?} after {at:?}: {}", a.body),
        }
        // The loops spin until stopped: an answer came from the runtime.
        assert!(*at < Duration::from_secs(10), "answered after {at:?}");
    }
    assert_eq!(timeouts + refused, 50);
    assert!(refused > 0, "the route was never refused");
    assert!(
        m.event.hijacked_threads < 8,
        "one route reached the cap: {:?}",
        m.event
    );
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}
