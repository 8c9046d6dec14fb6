//! The exact Redis rate limiter: 1,000 concurrent check-and-records from two
//! limiters (two instances' connections) admit exactly the limit, and a
//! key over its limit is answered from local memory.

mod common;

use std::time::Duration;

use curfew::policy::{ClientKey, Rate};
use curfew_redis::RedisRateLimiter;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_thousand_concurrent_checks_from_two_limiters_admit_exactly_the_limit() {
    let server = common::RedisServer::start();
    let rt = rt();
    rt.block_on(async {
        let rate = Rate::new(Duration::from_secs(3600), 100).unwrap();
        let a = RedisRateLimiter::connect(&server.url(), rate)
            .await
            .unwrap();
        let b = RedisRateLimiter::connect(&server.url(), rate)
            .await
            .unwrap();
        let key = ClientKey::id("burst");
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let l = if i % 2 == 0 { a.clone() } else { b.clone() };
                let key = key.clone();
                tokio::spawn(async move { l.check(&key).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 100, "exactly the burst of 100 passes");
        // Past the limit, each limiter blocks the key locally: further
        // checks make no round trip.
        let before = a.round_trips() + b.round_trips();
        for _ in 0..100 {
            let l = a.check(&key).await.unwrap_err();
            assert!(l.retry_after > Duration::from_secs(30), "{l}");
        }
        assert!(a.round_trips() + b.round_trips() - before <= 1);
        assert!(a.check(&ClientKey::id("other")).await.is_ok());
    });
}

#[test]
fn one_per_second_across_two_limiters_admits_one_and_refills() {
    let server = common::RedisServer::start();
    let rt = rt();
    rt.block_on(async {
        let rate = Rate::new(Duration::from_millis(300), 1).unwrap();
        let a = RedisRateLimiter::connect(&server.url(), rate)
            .await
            .unwrap();
        let b = RedisRateLimiter::connect(&server.url(), rate)
            .await
            .unwrap();
        let key = ClientKey::id("u");
        let checks = (0..200).map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.clone();
            async move { l.check(&key).await.is_ok() }
        });
        let admitted = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        assert_eq!(admitted, 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            b.check(&key).await.is_ok(),
            "the cell refills after the period"
        );
    });
}

#[test]
fn with_redis_down_checks_fall_back_to_memory() {
    let mut server = common::RedisServer::start();
    let rt = rt();
    rt.block_on(async {
        let rate = Rate::new(Duration::from_secs(3600), 3).unwrap();
        let l = RedisRateLimiter::connect(&server.url(), rate)
            .await
            .unwrap();
        server.kill();
        let key = ClientKey::id("k");
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(l.check(&key).await.is_ok());
        }
        assert_eq!(admitted, 3, "the in-memory fallback keeps the rate");
        assert_eq!(l.outages(), 1);
    });
}
