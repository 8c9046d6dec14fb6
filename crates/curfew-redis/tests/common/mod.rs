//! A real `redis-server` per test ([`RedisServer`]: a free port of
//! 127.0.0.1, a temporary directory, killed when dropped), and waiting
//! helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub use curfew_redis::testing::RedisServer;

/// A plain synchronous connection, for looking at the server's state.
pub fn connection(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

/// Spins until the current curfew task is answered with a timeout.
pub fn spin_until_timed_out() {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        for _ in 0..1024 {
            std::hint::spin_loop();
        }
        if curfew::checkpoint().is_err() {
            return;
        }
    }
}

/// Polls `cond` every millisecond until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
