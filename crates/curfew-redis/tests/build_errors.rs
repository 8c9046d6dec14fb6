//! Bad settings are clear errors when the store or limiter is built, not a
//! silent fallback later.

mod common;

use std::time::Duration;

use curfew::policy::Rate;
use curfew_redis::{RedisRateLimiter, RedisStore};

#[test]
fn a_bad_url_is_an_error_at_build_time() {
    for url in ["", "http://127.0.0.1:6379/", "redis://", "not a url"] {
        let e = RedisStore::builder(url).build().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("Redis"), "{url:?}: {msg}");
    }
}

#[test]
fn a_wrong_password_is_an_error_at_build_time_and_is_not_shown() {
    let server = common::RedisServer::with_password("s3cret");
    let wrong = format!("redis://:hunter2@127.0.0.1:{}/", server.port);
    let e = RedisStore::builder(&wrong).build().unwrap_err();
    assert!(e.is_auth(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(
        !msg.contains("hunter2"),
        "the password must not be shown: {msg}"
    );
    // The right password works.
    RedisStore::builder(server.url()).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(RedisRateLimiter::connect(
            &wrong,
            Rate::per_second(1).unwrap(),
        ))
        .unwrap_err();
    assert!(e.is_auth(), "{e}");
}

#[test]
fn nothing_listening_is_an_error_at_build_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
}
