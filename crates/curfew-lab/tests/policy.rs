//! curfew-policy refuses a client after its strikes, with Retry-After, and
//! goes on serving the others.

mod common;

use std::time::Duration;

use curfew_lab::server::{Mode, ServerConfig};
use hyper::Method;

#[test]
fn repeat_offender_is_refused_with_retry_after() {
    let cfg = ServerConfig {
        strikes: 1,
        cool_off: Duration::from_secs(30),
        ..ServerConfig::default()
    };
    let server = common::server(Mode::CurfewPolicy, &cfg);
    let addr = server.addr();
    let body = usize::MAX.to_string();
    common::client_rt().block_on(async {
        let limit = Duration::from_secs(10);
        let first = common::request(
            addr,
            Method::POST,
            "/attack/infinite-loop",
            "mallory",
            body.clone(),
            limit,
        )
        .await;
        assert_eq!((first.status, first.outcome.as_str()), (503, "timeout"));
        let second = common::request(
            addr,
            Method::POST,
            "/attack/infinite-loop",
            "mallory",
            body,
            limit,
        )
        .await;
        assert_eq!((second.status, second.outcome.as_str()), (429, "refused"));
        let retry: u64 = second.retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=30).contains(&retry), "Retry-After: {retry}");
        // Another client is still served.
        assert_eq!(common::get(addr, "/hello").await.status, 200);
        let metrics = common::get(addr, "/metrics").await;
        assert!(metrics.body.contains("mallory"), "{}", metrics.body);
    });
    server.stop_spinning();
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}
