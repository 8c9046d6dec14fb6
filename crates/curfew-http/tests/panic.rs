//! A panicking handler is answered 500, and its connection stays usable.

mod common;

use axum::Router;
use axum::routing::get;
use common::{TestServer, connect_from, runtime};
use curfew_http::CurfewLayer;

#[test]
fn panic_is_500_and_the_connection_stays_usable() {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .layer(
            // Generous: unwinding prints a backtrace when RUST_BACKTRACE is set.
            CurfewLayer::new().poll_budget(std::time::Duration::from_secs(2)),
        );
    let server = TestServer::start(runtime(), app, |s| s);
    let mut conn = connect_from([127, 0, 0, 1], server.addr);
    let r = common::get(&mut conn, "/panic").unwrap();
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        !r.body.contains("handler bug"),
        "the panic message stays private"
    );
    for _ in 0..3 {
        let r = common::get(&mut conn, "/hello").expect("same connection still served");
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    }
}
