//! The shared policy: strikes counted exactly across stores, a cool-off
//! reaching a second instance, and CPU quotas spent across instances.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use curfew::policy::{ClientKey, ClientPolicy, CpuQuota, LevelPolicy, PolicyStore};
use curfew::{Refusal, Runtime};
use curfew_redis::RedisStore;
use redis::Commands;

fn runtime(store: &RedisStore, policy: ClientPolicy, budget: Duration) -> Runtime {
    Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(budget)
        .client_policy(policy)
        .policy_store(store.clone())
        .build()
        .unwrap()
}

fn store(server: &common::RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .flush_interval(Duration::from_millis(5))
        .build()
        .unwrap()
}

#[test]
fn a_thousand_concurrent_strikes_from_two_stores_are_counted_exactly() {
    let server = common::RedisServer::start();
    let policy = ClientPolicy::new(1_000_000, Duration::from_secs(60));
    let (a, b) = (store(&server), store(&server));
    let _ra = runtime(&a, policy, Duration::from_secs(1));
    let _rb = runtime(&b, policy, Duration::from_secs(1));
    let key = ClientKey::id("counted");
    let limits = LevelPolicy::new(0, Duration::from_secs(60));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.clone();
            std::thread::spawn(move || {
                for _ in 0..250 {
                    s.strike(&key, &limits);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut con = common::connection(&server);
    let rkey = a.redis_key("strikes", &key);
    let counted = common::wait_until(Duration::from_secs(10), || {
        con.get::<_, Option<u64>>(&rkey).unwrap() == Some(1000)
    });
    assert!(counted, "{:?}", con.get::<_, Option<u64>>(&rkey));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        con.get::<_, Option<u64>>(&rkey).unwrap(),
        Some(1000),
        "no batch sent twice"
    );
    assert_eq!(a.metrics().strikes_sent + b.metrics().strikes_sent, 1000);
}

#[test]
fn strikes_spread_over_two_instances_start_one_shared_cool_off() {
    let server = common::RedisServer::start();
    // A client needs 3 strikes; locally each instance sees only 2 of 4.
    let policy = ClientPolicy::new(3, Duration::from_secs(60));
    let (a, b) = (store(&server), store(&server));
    let ra = runtime(&a, policy, Duration::from_millis(10));
    let rb = runtime(&b, policy, Duration::from_millis(10));
    let spin = |rt: &Runtime| {
        let t = curfew::task::Builder::new()
            .client("mallory")
            .spawn_on(&rt.handle(), async { common::spin_until_timed_out() });
        assert!(rt.block_on(t).unwrap_err().is_timeout());
    };
    spin(&ra);
    spin(&rb);
    spin(&ra);
    let key = ClientKey::id("mallory");
    let shared = common::wait_until(Duration::from_secs(10), || {
        ra.handle().cooling_off(&key).is_some() && rb.handle().cooling_off(&key).is_some()
    });
    assert!(
        shared,
        "three strikes over two instances refuse the client on both"
    );
}

#[test]
fn a_cool_off_reaches_a_second_instance() {
    let server = common::RedisServer::start();
    let policy = ClientPolicy::new(1, Duration::from_secs(60));
    let (a, b) = (store(&server), store(&server));
    let ra = runtime(&a, policy, Duration::from_millis(10));
    let rb = runtime(&b, policy, Duration::from_millis(10));
    let key = ClientKey::ip("203.0.113.9".parse().unwrap());
    let t = curfew::task::Builder::new()
        .client(key.clone())
        .spawn_on(&ra.handle(), async { common::spin_until_timed_out() });
    assert!(ra.block_on(t).unwrap_err().is_timeout());
    let start = Instant::now();
    assert!(
        common::wait_until(Duration::from_secs(10), || rb
            .handle()
            .cooling_off(&key)
            .is_some()),
        "the cool-off must reach the second instance"
    );
    eprintln!("cool-off propagated in {:?}", start.elapsed());
    let t = curfew::task::Builder::new()
        .client(key.clone())
        .spawn_on(&rb.handle(), async {});
    let err = rb.block_on(t).unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::ClientCoolingOff { .. })),
        "{err}"
    );
    assert!(b.metrics().received >= 1);
    // Other clients are served on both.
    let t = curfew::task::Builder::new()
        .client(ClientKey::id("203.0.113.9"))
        .spawn_on(&rb.handle(), async { 5 });
    assert_eq!(rb.block_on(t).unwrap(), 5);
}

#[test]
fn cpu_quota_is_spent_across_instances() {
    let server = common::RedisServer::start();
    let quota = CpuQuota::new(Duration::from_millis(400), Duration::from_secs(60)).unwrap();
    let policy = ClientPolicy::new(3, Duration::from_secs(60)).cpu_quota(quota);
    let (a, b) = (store(&server), store(&server));
    let ra = Arc::new(runtime(&a, policy, Duration::from_secs(5)));
    let rb = Arc::new(runtime(&b, policy, Duration::from_secs(5)));
    let key = ClientKey::id("botnet");
    // 300 ms on each instance: within the quota locally, over it together
    // (by a margin that sampling on a loaded machine cannot eat).
    for rt in [&ra, &rb] {
        let t = curfew::task::Builder::new()
            .client(key.clone())
            .spawn_on(&rt.handle(), async {
                let s = Instant::now();
                while s.elapsed() < Duration::from_millis(300) {
                    std::hint::spin_loop();
                }
            });
        rt.block_on(t).unwrap();
    }
    let refused = common::wait_until(Duration::from_secs(10), || {
        ra.handle().cooling_off(&key).is_some() && rb.handle().cooling_off(&key).is_some()
    });
    assert!(
        refused,
        "the quota spent across both instances refuses on both"
    );
    let t = curfew::task::Builder::new()
        .client(key.clone())
        .spawn_on(&ra.handle(), async {});
    let err = ra.block_on(t).unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::QuotaSpent { .. })),
        "{err}"
    );
}
