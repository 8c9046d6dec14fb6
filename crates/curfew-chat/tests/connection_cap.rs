//! A client IP over its connection cap is refused with 429 before the
//! upgrade, whatever user it claims to be; a closed connection frees its
//! place.

mod common;

use std::time::Duration;

use common::{Client, handshake, server, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_cap_refuses_with_429() {
    let server = server(|c| c.max_connections_per_ip = 3);
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(Client::connect(&server, &format!("user{i}")).await);
    }
    // A flood of further handshakes under fresh identities.
    for i in 3..23 {
        let q = format!("?token={}", token(&server, &format!("user{i}")));
        assert_eq!(
            handshake(&server, &q, &[]).await.err(),
            Some(429),
            "connection {i}"
        );
    }
    assert_eq!(server.stats().refused_busy, 20);
    assert_eq!(server.stats().connections_open, 3);

    // Closing one gives its place back.
    let mut first = open.remove(0);
    first.ws.close(None).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.stats().connections_open > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection never gave its place back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Client::connect(&server, "user99").await;
}
