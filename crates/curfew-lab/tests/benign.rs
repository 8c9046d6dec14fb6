//! Both modes answer the benign routes.

mod common;

use std::time::Duration;

use curfew_lab::server::{Mode, ServerConfig};

#[test]
fn every_mode_answers_benign_requests() {
    let rt = common::client_rt();
    for mode in Mode::ALL {
        let server = common::server(mode, &ServerConfig::default());
        let addr = server.addr();
        rt.block_on(async {
            for _ in 0..20 {
                let hello = common::get(addr, "/hello").await;
                assert_eq!(
                    (hello.status, hello.body.as_str()),
                    (200, "hello\n"),
                    "{mode}"
                );
                assert_eq!(hello.outcome, "ok");
                let file = common::get(addr, "/file").await;
                assert_eq!(file.status, 200, "{mode}: {}", file.body);
                assert!(file.body.ends_with("bytes\n"), "{mode}: {}", file.body);
            }
            let index = common::get(addr, "/").await;
            assert!(index.body.contains("fancy-regex"), "{mode}");
            let missing = common::get(addr, "/nope").await;
            assert_eq!(missing.status, 404);
        });
        let s = server.shutdown(Duration::from_secs(2));
        assert_eq!(s.handlers_left, 0, "{mode}");
    }
}

#[test]
fn attack_route_runs_benign_payloads() {
    let rt = common::client_rt();
    for mode in Mode::ALL {
        let server = common::server(mode, &ServerConfig::default());
        let addr = server.addr();
        rt.block_on(async {
            let v = curfew_attacks::by_name("fancy-regex").unwrap();
            let a = common::request(
                addr,
                hyper::Method::POST,
                "/attack/fancy-regex",
                "someone",
                v.benign_payload(),
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(a.status, 200, "{mode}: {}", a.body);
            let a = common::request(
                addr,
                hyper::Method::POST,
                "/attack/no-such-vector",
                "someone",
                "x",
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(a.status, 404, "{mode}");
        });
        server.shutdown(Duration::from_secs(2));
    }
}
