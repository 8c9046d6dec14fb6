//! Connection floods: the total cap, the per-IP cap and the descriptor
//! headroom shed the excess at accept, and other clients are served.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{TestServer, closed_within, connect_from, get_from, runtime};

fn app() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// Opens `n` idle connections from `local` and waits until the server has
/// taken them (a request on one more succeeds or is shed).
fn hold(local: [u8; 4], addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect_from(local, addr)).collect()
}

#[test]
fn per_ip_cap_sheds_one_flooding_address_only() {
    let server = TestServer::start(runtime(), app(), |s| s.max_connections_per_ip(8));
    let addr = server.addr;
    let held = hold([127, 0, 0, 21], addr, 8);
    // Let the server accept them, in order.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect_from([127, 0, 0, 21], addr);
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "the 9th is shed"
    );
    assert_eq!(
        get_from([127, 0, 0, 22], addr, "/hello").unwrap().status,
        200
    );
    drop(held);
    // Slots come back when connections close.
    let mut ok = false;
    for _ in 0..50 {
        if get_from([127, 0, 0, 21], addr, "/hello").is_ok_and(|r| r.status == 200) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "the address is served again once its connections close");
}

#[test]
fn total_cap_sheds_past_the_limit() {
    let server = TestServer::start(runtime(), app(), |s| s.max_connections(6));
    let addr = server.addr;
    let mut held = Vec::new();
    for i in 0..6u8 {
        held.push(connect_from([127, 0, 1, 1 + i], addr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect_from([127, 0, 1, 100], addr);
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "the 7th is shed"
    );
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if get_from([127, 0, 1, 101], addr, "/hello").is_ok_and(|r| r.status == 200) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "served again below the cap");
}

#[test]
fn accepts_near_the_descriptor_limit_are_shed() {
    // A descriptor limit of 10 with a headroom of 6 leaves 4 connections.
    let server = TestServer::start(runtime(), app(), |s| {
        s.descriptor_limit(10).descriptor_headroom(6)
    });
    let addr = server.addr;
    let held = hold([127, 0, 2, 1], addr, 4);
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = connect_from([127, 0, 2, 2], addr);
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "the 5th is shed"
    );
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        if get_from([127, 0, 2, 3], addr, "/hello").is_ok_and(|r| r.status == 200) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "served again once descriptors are free");
}
