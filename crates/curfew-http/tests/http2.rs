//! HTTP/2 is served, and the layer's answers reach HTTP/2 clients too.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::{TestServer, runtime, spin};
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
            .layer(CurfewLayer::new())
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
