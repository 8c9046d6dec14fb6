//! Redis killed mid-run: requests go on under the local policy with exactly
//! one warning per store; Redis back: the stores resync, and a cool-off
//! decided during the outage reaches the other instance.
//!
//! One test in this file: it installs a global tracing subscriber to count
//! the warnings.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use curfew::Runtime;
use curfew::policy::{ClientKey, ClientPolicy};
use curfew_redis::RedisStore;
use redis::Commands;
use tracing_subscriber::layer::SubscriberExt;

/// Counts warnings from `curfew_redis`.
struct Warnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let m = e.metadata();
        if *m.level() == tracing::Level::WARN && m.target() == "curfew_redis" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn redis_down_then_back() {
    let warnings = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut server = common::RedisServer::start();
    let policy = ClientPolicy::new(1, Duration::from_secs(120));
    let mk = || {
        let store = RedisStore::builder(server.url())
            .flush_interval(Duration::from_millis(5))
            .max_backoff(Duration::from_millis(200))
            .build()
            .unwrap();
        let rt = Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(10))
            .client_policy(policy)
            .policy_store(store.clone())
            .build()
            .unwrap();
        (store, rt)
    };
    let (a, ra) = mk();
    let (b, rb) = mk();

    server.kill();
    // Requests go on, and the local policy (the insurance) still refuses.
    let mallory = ClientKey::id("mallory");
    let t = curfew::task::Builder::new()
        .client(mallory.clone())
        .spawn_on(&ra.handle(), async { common::spin_until_timed_out() });
    assert!(ra.block_on(t).unwrap_err().is_timeout());
    assert!(
        ra.handle().cooling_off(&mallory).is_some(),
        "refused locally"
    );
    let both_down = common::wait_until(Duration::from_secs(10), || {
        a.metrics().outages == 1 && b.metrics().outages == 1
    });
    assert!(both_down, "{:?} {:?}", a.metrics(), b.metrics());
    for i in 0..2000u64 {
        let rt = if i % 2 == 0 { &ra } else { &rb };
        let t = curfew::task::Builder::new()
            .client(i)
            .spawn_on(&rt.handle(), async move { i });
        assert_eq!(
            rt.block_on(t).unwrap(),
            i,
            "requests go on while Redis is down"
        );
    }
    std::thread::sleep(Duration::from_millis(500)); // several reconnect attempts
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        2,
        "one warning per store, not per request"
    );
    assert_eq!((a.metrics().outages, b.metrics().outages), (1, 1));
    assert!(!a.metrics().connected);
    assert_eq!(
        rb.handle().cooling_off(&mallory),
        None,
        "B has not heard yet"
    );

    // Redis is back, empty: A uploads the cool-off it decided meanwhile,
    // and B learns it.
    server.restart();
    let resynced = common::wait_until(Duration::from_secs(20), || {
        a.metrics().resyncs >= 1 && b.metrics().resyncs >= 1
    });
    assert!(resynced, "{:?} {:?}", a.metrics(), b.metrics());
    let learned = common::wait_until(Duration::from_secs(20), || {
        rb.handle().cooling_off(&mallory).is_some()
    });
    assert!(learned, "the outage's cool-off reaches B after the resync");
    let mut con = server.connection();
    let ttl: i64 = con.pttl(a.redis_key("cool", &mallory)).unwrap();
    assert!(ttl > 60_000, "{ttl}");
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        2,
        "no warning on the way back"
    );
    assert!(a.metrics().connected && b.metrics().connected);
}
