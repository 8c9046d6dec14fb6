//! The client policy's admission costs, next to a real Redis:
//!
//! - `policy_check`: the check a server makes before reading a body
//!   (`Handle::cooling_off`: strikes, cool-offs, quotas at the client and
//!   network levels), with the default in-memory store and with a
//!   `RedisStore` attached. It reads only local state either way.
//! - `rate_limit`: the in-memory GCRA limiter (governor), the exact Redis
//!   limiter (one round trip, one Lua step), and a key the Redis limiter
//!   has blocked in local memory.
//! - `admission`: what a client key adds to a spawn. Two event threads
//!   each spawn and await 1,000 empty tasks, without a key and with one
//!   client's key on one route (as `CurfewLayer` spawns every handler of a
//!   client's requests): the client table's lookup on the spawn path.
//!   `clients_among_new_ones`: 32 clients' keys in turn (each kept, as a
//!   server's connection keeps its peer's), in a full table (64 entries)
//!   into which every 8th spawn brings a client never seen before, which
//!   evicts another: a server that has seen more clients than it tracks,
//!   and keeps meeting new ones.
//!
//! ```text
//! cargo bench --bench policy          # needs redis-server on PATH
//! ```

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use curfew::policy::{ClientKey, ClientPolicy, LevelPolicy, Rate, RateLimiter};
use curfew_redis::{RedisRateLimiter, RedisStore};
use futures::FutureExt;

fn keys() -> Vec<ClientKey> {
    (0..256u32)
        .map(|i| ClientKey::ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
        .collect()
}

fn policy_check(c: &mut Criterion) {
    let server = curfew_redis::testing::RedisServer::start();
    let url = server.url();
    let policy = ClientPolicy::new(3, Duration::from_secs(60))
        .network(LevelPolicy::new(10, Duration::from_secs(60)));
    let store = RedisStore::builder(&url).build().unwrap();
    let mut g = c.benchmark_group("policy_check");
    for (name, b) in [
        ("memory", curfew::Runtime::builder()),
        (
            "redis_store",
            curfew::Runtime::builder().policy_store(store),
        ),
    ] {
        let rt = b.event_threads(1).client_policy(policy).build().unwrap();
        let h = rt.handle();
        let keys = keys();
        for k in &keys {
            let t = curfew::task::Builder::new()
                .client(k.clone())
                .spawn_on(&h, async {});
            rt.block_on(t).unwrap();
        }
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                std::hint::black_box(h.cooling_off(&keys[i]))
            })
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    let server = curfew_redis::testing::RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("rate_limit");
    let user = ClientKey::id("bench");
    let local = RateLimiter::new(Rate::new(Duration::from_nanos(1), 1_000_000).unwrap());
    g.bench_function("memory_governor", |b| {
        b.iter(|| std::hint::black_box(local.check(&user)))
    });
    let fast = Rate::new(Duration::from_nanos(1), 1_000_000).unwrap();
    let exact = rt
        .block_on(RedisRateLimiter::connect_with_prefix(&url, fast, "fast"))
        .unwrap();
    g.bench_function("redis_exact", |b| {
        b.iter(|| rt.block_on(exact.check(&user)).unwrap())
    });
    let slow = Rate::new(Duration::from_secs(3600), 1).unwrap();
    let blocking = rt
        .block_on(RedisRateLimiter::connect_with_prefix(&url, slow, "slow"))
        .unwrap();
    let _ = rt.block_on(blocking.check(&user));
    assert!(rt.block_on(blocking.check(&user)).is_err());
    g.bench_function("redis_blocked_in_memory", |b| {
        b.iter(|| {
            let r = blocking.check(&user).now_or_never();
            assert!(matches!(r, Some(Err(_))), "answered without a round trip");
        })
    });
    g.finish();
}

fn admission(c: &mut Criterion) {
    const PER_THREAD: usize = 1_000;
    let key = ClientKey::ip(std::net::Ipv4Addr::LOCALHOST.into()).with_route("/search");
    let mut g = c.benchmark_group("admission");
    g.throughput(criterion::Throughput::Elements(2 * PER_THREAD as u64));
    // Addresses of new clients, never repeated within a run.
    let next_new = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0x0b00_0000));
    let steady: Vec<ClientKey> = (1..=32u32)
        .map(|i| {
            ClientKey::ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()).with_route("/search")
        })
        .collect();
    for (name, keys, new_every) in [
        ("no_key", vec![], 0),
        ("one_client", vec![key], 0),
        ("clients_among_new_ones", steady, 8),
    ] {
        let rt = curfew::Runtime::builder()
            .event_threads(2)
            .max_tracked_clients(64)
            .build()
            .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let loops: Vec<_> = (0..2)
                        .map(|_| {
                            let keys = keys.clone();
                            let next_new = next_new.clone();
                            curfew::spawn(async move {
                                for i in 0..PER_THREAD {
                                    let mut t = curfew::task::Builder::new();
                                    if new_every > 0 && i % new_every == new_every - 1 {
                                        let ip = next_new.fetch_add(1, Relaxed);
                                        let new =
                                            ClientKey::ip(std::net::Ipv4Addr::from(ip).into());
                                        t = t.client(new.with_route("/search"));
                                    } else if !keys.is_empty() {
                                        t = t.client(keys[i % keys.len()].clone());
                                    }
                                    t.spawn(async {}).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for l in loops {
                        l.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, admission, policy_check, rate_limit);
criterion_main!(benches);
