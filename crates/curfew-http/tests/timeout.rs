//! A handler that never yields is answered 503 with Retry-After within its
//! budget, while the other routes keep answering.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, get_from, runtime, spin};
use curfew_http::CurfewLayer;

fn app(stop: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/spin",
            get(move || {
                let stop = stop.clone();
                async move {
                    spin(&stop, Duration::from_secs(3));
                    "spun"
                }
            }),
        )
        .layer(CurfewLayer::new().poll_budget(Duration::from_millis(50)))
}

#[test]
fn never_yielding_handler_gets_503_while_hello_answers() {
    let stop = Arc::new(AtomicBool::new(false));
    let server = TestServer::start(runtime(), app(stop.clone()), |s| s);
    let addr = server.addr;

    let spinner = std::thread::spawn(move || {
        let t = Instant::now();
        let r = get_from([127, 0, 0, 1], addr, "/spin").expect("reply to /spin");
        (r, t.elapsed())
    });
    // While it spins (3 s unless stopped), /hello answers on other
    // connections.
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..5 {
        let r = get_from([127, 0, 0, 1], addr, "/hello").expect("reply to /hello");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello");
    }
    let (r, took) = spinner.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.body.contains("budget"), "{}", r.body);
    // Answered long before the handler would have finished (3 s); the
    // bound is loose because the machine may be loaded.
    assert!(took < Duration::from_millis(2500), "503 took {took:?}");
    drop(server);
}
