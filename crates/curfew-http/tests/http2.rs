//! HTTP/2 is served, and the layer's answers reach HTTP/2 clients too.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::{TestServer, runtime, spinning};
use curfew_http::CurfewLayer;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn http2_requests_are_served_and_timed() {
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let stop = stop.clone();
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/spin", spinning(stop.clone(), Duration::from_secs(3)))
            .layer(CurfewLayer::new().poll_budget(common::SPIN_BUDGET))
    };
    let server = TestServer::start(runtime(), app, |s| s);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let url = |p: &str| {
        format!("http://{}{p}", server.addr)
            .parse::<http::Uri>()
            .unwrap()
    };

    let r = client.get(url("/hello")).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "hello");

    // A poisoned stream is answered, and the connection's other streams
    // go on.
    let (spun, hello) = tokio::join!(client.get(url("/spin")), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.get(url("/hello")).await
    });
    stop.store(true, Ordering::SeqCst);
    let spun = spun.unwrap();
    assert_eq!(spun.status(), 503);
    assert!(spun.headers().contains_key("retry-after"));
    assert_eq!(hello.unwrap().status(), 200);
    // Shut down off this runtime, which the client's connection needs.
    drop(client);
    let t = std::time::Instant::now();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "graceful shutdown took {:?}",
        t.elapsed()
    );
}

/// The header-read timeout times HTTP/1 heads only: an HTTP/2 connection
/// that sits idle between its streams for longer is left open (the idle
/// timeout is what closes it).
#[tokio::test]
async fn an_idle_http2_connection_outlives_the_header_timeout() {
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(CurfewLayer::new());
    // The client's preface must come within the timeout: a second is a
    // margin no loaded machine's scheduling eats.
    let server = TestServer::start(runtime(), app, |s| {
        s.header_read_timeout(Duration::from_millis(1000))
            .idle_timeout(Duration::from_secs(30))
    });
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for i in 0..2 {
        let req = http::Request::get(format!("http://{}/hello", server.addr))
            .body(Body::empty())
            .unwrap();
        let r = send
            .send_request(req)
            .await
            .expect("the same connection answers");
        assert_eq!(r.status(), 200);
        if i == 0 {
            // Idle for over twice the header-read timeout, and more than
            // its sweep's margin.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }
    assert!(!conn.is_finished(), "the connection is still open");
    drop(send);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}
