//! A client cooling off is answered 429 with the cool-off left, before its
//! body is read: the test's body never finishes sending.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, connect_from, get_from, read_reply, runtime};
use curfew::policy::ClientPolicy;

#[test]
fn cooling_off_client_is_refused_before_its_body_is_read() {
    let stop = Arc::new(AtomicBool::new(false));
    let body_reads = Arc::new(AtomicUsize::new(0));
    let app = common::upload_app(body_reads.clone(), stop.clone());
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(rt, app, |s| s);
    let addr = server.addr;
    let mallory = [127, 0, 0, 3];

    // One strike: a handler that never yields.
    let r = get_from(mallory, addr, "/spin").unwrap();
    assert_eq!(r.status, 503);
    stop.store(true, Ordering::SeqCst);
    let key = curfew::ClientKey::ip("127.0.0.3".parse().unwrap());
    assert!(server.handle.cooling_off(&key).is_some());

    // A huge upload that never finishes: the answer comes anyway.
    let mut s = connect_from(mallory, addr);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\nonly the start",
    )
    .unwrap();
    let r = read_reply(&mut s).expect("a reply before the body is complete");
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        body_reads.load(Ordering::SeqCst),
        0,
        "the handler never ran"
    );

    // Another client is served.
    let r = get_from([127, 0, 0, 4], addr, "/hello").unwrap();
    assert_eq!(r.status, 200);
}

/// Under `serve`, the layer takes an HTTP/1 peer's key from its connection,
/// made once; a request whose address a layer before it changed is keyed by
/// the changed address, and strikes that client, not the connection's.
#[test]
fn a_strike_lands_on_the_address_an_earlier_layer_gave_the_request() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;

    let stop = Arc::new(AtomicBool::new(false));
    let app = axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .route(
            "/spin",
            common::spinning(stop.clone(), Duration::from_secs(3)),
        )
        .route(
            "/who",
            axum::routing::get(|ConnectInfo(a): ConnectInfo<SocketAddr>| async move {
                a.ip().to_string()
            }),
        )
        .layer(curfew_http::CurfewLayer::new().poll_budget(common::SPIN_BUDGET))
        // Outside the layer, so it runs first: `/spin` comes from elsewhere.
        .layer(axum::middleware::map_request(
            |mut req: axum::extract::Request| async move {
                if req.uri().path() == "/spin" {
                    req.extensions_mut()
                        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 1))));
                }
                req
            },
        ));
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(rt, app, |s| s);
    let me = [127, 0, 0, 11];
    let mut s = connect_from(me, server.addr);
    // The connection's own key first, so that it has made it.
    assert_eq!(common::get(&mut s, "/who").unwrap().body, "127.0.0.11");
    assert_eq!(common::get(&mut s, "/spin").unwrap().status, 503);
    stop.store(true, Ordering::SeqCst);
    let elsewhere = curfew::ClientKey::ip("192.0.2.7".parse().unwrap());
    let mine = curfew::ClientKey::ip("127.0.0.11".parse().unwrap());
    assert!(server.handle.cooling_off(&elsewhere).is_some());
    assert!(server.handle.cooling_off(&mine).is_none());
    assert_eq!(get_from(me, server.addr, "/hello").unwrap().status, 200);
}

/// A client cooling off is refused before the layer calls the service
/// inside it: a refused HTTP/1 request under `serve` costs no call of the
/// handler's service, not only no read of its body.
#[test]
fn a_refused_request_never_reaches_the_service_inside_the_layer() {
    let stop = Arc::new(AtomicBool::new(false));
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let spin_stop = stop.clone();
    let handler = tower::service_fn(move |req: http::Request<curfew_http::Body>| {
        let stop = spin_stop.clone();
        async move {
            if req.uri().path() == "/spin" {
                common::spin(&stop, Duration::from_secs(3));
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::from("hello")))
        }
    });
    let app = tower::ServiceBuilder::new()
        .layer(curfew_http::CurfewLayer::new().poll_budget(common::SPIN_BUDGET))
        .service(CountCalls(handler, inner_calls.clone()));
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(rt, app, |s| s);
    let mallory = [127, 0, 0, 12];
    assert_eq!(get_from(mallory, server.addr, "/spin").unwrap().status, 503);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(inner_calls.load(Ordering::SeqCst), 1, "the spin was called");
    for _ in 0..3 {
        assert_eq!(
            get_from(mallory, server.addr, "/hello").unwrap().status,
            429
        );
    }
    assert_eq!(
        inner_calls.load(Ordering::SeqCst),
        1,
        "a refused request was called"
    );
    assert_eq!(
        get_from([127, 0, 0, 13], server.addr, "/hello")
            .unwrap()
            .status,
        200
    );
    assert_eq!(inner_calls.load(Ordering::SeqCst), 2);
}

/// Counts the calls of the service it wraps, as they are made (not when
/// their futures are polled).
#[derive(Clone)]
struct CountCalls<S>(S, Arc<AtomicUsize>);

impl<S, R> tower::Service<R> for CountCalls<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.call(req)
    }
}
