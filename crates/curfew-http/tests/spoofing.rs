//! The client key cannot be chosen by the client: forwarding headers count
//! only from trusted proxies, and only the hop a trusted proxy wrote.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{TestServer, connect_from, get_from, read_reply, runtime, spinning};
use curfew::ClientKey;
use curfew::policy::ClientPolicy;
use curfew_http::{CurfewLayer, TrustedProxies};

fn app(stop: Arc<AtomicBool>, proxies: TrustedProxies) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/spin", spinning(stop.clone(), Duration::from_secs(3)))
        .layer(
            CurfewLayer::new()
                .poll_budget(common::SPIN_BUDGET)
                .key_extractor(proxies),
        )
}

fn spin_from(local: [u8; 4], addr: std::net::SocketAddr, xff: &str) -> u16 {
    let mut s = connect_from(local, addr);
    write!(
        s,
        "GET /spin HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\n\r\n"
    )
    .unwrap();
    read_reply(&mut s).unwrap().status
}

#[test]
fn untrusted_peer_cannot_name_a_victim() {
    let stop = Arc::new(AtomicBool::new(false));
    // Only 127.0.0.200 is a proxy; the attacker at 127.0.0.5 is not.
    let proxies = TrustedProxies::x_forwarded_for(["127.0.0.200/32".parse().unwrap()]);
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(rt, app(stop.clone(), proxies), |s| s);
    let addr = server.addr;

    assert_eq!(spin_from([127, 0, 0, 5], addr, "127.0.0.9"), 503);
    stop.store(true, Ordering::SeqCst);
    // The strike went to the attacker, not to the address it wrote.
    assert!(
        server
            .handle
            .cooling_off(&ClientKey::ip("127.0.0.5".parse().unwrap()))
            .is_some()
    );
    assert!(
        server
            .handle
            .cooling_off(&ClientKey::ip("127.0.0.9".parse().unwrap()))
            .is_none()
    );
    let victim = get_from([127, 0, 0, 9], addr, "/hello").unwrap();
    assert_eq!(victim.status, 200);
    let attacker = get_from([127, 0, 0, 5], addr, "/hello").unwrap();
    assert_eq!(attacker.status, 429);
}

#[test]
fn behind_a_trusted_proxy_the_hop_it_saw_is_the_client() {
    let stop = Arc::new(AtomicBool::new(false));
    let proxies = TrustedProxies::x_forwarded_for(["127.0.0.200/32".parse().unwrap()]);
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(rt, app(stop.clone(), proxies), |s| s);
    let addr = server.addr;

    // The client wrote 198.51.100.1 itself; the proxy appended what it saw.
    assert_eq!(
        spin_from([127, 0, 0, 200], addr, "198.51.100.1, 203.0.113.7"),
        503
    );
    stop.store(true, Ordering::SeqCst);
    assert!(
        server
            .handle
            .cooling_off(&ClientKey::ip("203.0.113.7".parse().unwrap()))
            .is_some()
    );
    assert!(
        server
            .handle
            .cooling_off(&ClientKey::ip("198.51.100.1".parse().unwrap()))
            .is_none()
    );
    // The proxy itself is not struck: its other clients are served.
    assert!(
        server
            .handle
            .cooling_off(&ClientKey::ip("127.0.0.200".parse().unwrap()))
            .is_none()
    );
    let mut s = connect_from([127, 0, 0, 200], addr);
    write!(
        s,
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 192.0.2.44\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_reply(&mut s).unwrap().status, 200);
}
