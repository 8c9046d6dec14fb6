//! `serve` calls an app that is ready at once straight away, and waits for
//! one that is not (tower's `poll_ready`), with the connection's waker.

mod common;

use std::future::Ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use common::{TestServer, closed_within, connect_from, runtime};
use http::{Request, Response};

/// Ready on every third `poll_ready`; the two before it wake their caller
/// from another thread 20 ms later. Errs instead once `fail` is
/// set. Counts its calls.
#[derive(Clone)]
struct Fickle {
    asked: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicUsize>,
}

impl tower::Service<Request<curfew_http::Body>> for Fickle {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = Ready<Result<Response<Body>, std::io::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            return Poll::Ready(Err(std::io::Error::other("app failed")));
        }
        if self.asked.fetch_add(1, Ordering::SeqCst) % 3 != 2 {
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                waker.wake();
            });
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<curfew_http::Body>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok(Response::new(Body::from(format!("call {n}")))))
    }
}

#[test]
fn an_app_not_ready_at_once_is_waited_for_and_one_that_fails_ends_the_connection() {
    let app = Fickle {
        asked: Arc::default(),
        calls: Arc::default(),
        fail: Arc::default(),
    };
    let (asked, calls, fail) = (app.asked.clone(), app.calls.clone(), app.fail.clone());
    let server = TestServer::start(runtime(), app, |s| s);
    let mut s = connect_from([127, 0, 0, 1], server.addr);
    for n in 1..=3 {
        let r = common::get(&mut s, "/").expect("answered once ready");
        assert_eq!((r.status, r.body), (200, format!("call {n}")));
    }
    // Each request was asked three times: not ready, not ready, ready.
    assert_eq!(asked.load(Ordering::SeqCst), 9);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An app whose readiness fails is not called; hyper ends the
    // connection on its error.
    fail.store(1, Ordering::SeqCst);
    let mut s = connect_from([127, 0, 0, 1], server.addr);
    std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
