//! Measures the shared policy against a real Redis: seed 000's burst
//! (exact limiter and naive read-then-write, in the same run), admission
//! overhead, and cool-off propagation between two instances.
//!
//! ```text
//! cargo run --release -p curfew-redis --example measure            # starts its own redis-server
//! cargo run --release -p curfew-redis --example measure -- redis://127.0.0.1:6379/
//! ```

use std::time::{Duration, Instant};

use curfew::policy::{ClientKey, ClientPolicy, LevelPolicy, PolicyStore, Rate};
use curfew_redis::{RedisRateLimiter, RedisStore};
use futures::FutureExt;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Seed 000's limiter: read the count, then write it, in two round trips.
async fn naive_check(con: &mut redis::aio::ConnectionManager, key: &str) -> bool {
    let n: Option<u64> = redis::cmd("GET").arg(key).query_async(con).await.unwrap();
    if n.unwrap_or(0) >= 1 {
        return false;
    }
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(n.unwrap_or(0) + 1)
        .arg("EX")
        .arg(1)
        .query_async(con)
        .await
        .unwrap();
    true
}

fn main() {
    let arg = std::env::args().nth(1);
    let (_server, url) = match arg {
        Some(url) => (None, url),
        None => {
            let s = curfew_redis::testing::RedisServer::start();
            let u = s.url();
            (Some(s), u)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("measure-{}", std::process::id());

    // 1. Seed 000: 500 messages from one user within 10 ms over two
    //    instances, limit 1 per second.
    let (exact, naive, spread) = rt.block_on(async {
        let rate = Rate::per_second(1).unwrap();
        let a = RedisRateLimiter::connect_with_prefix(&url, rate, &prefix)
            .await
            .unwrap();
        let b = RedisRateLimiter::connect_with_prefix(&url, rate, &prefix)
            .await
            .unwrap();
        let client = redis::Client::open(url.as_str()).unwrap();
        let ca = redis::aio::ConnectionManager::new(client.clone())
            .await
            .unwrap();
        let cb = redis::aio::ConnectionManager::new(client).await.unwrap();
        let user = ClientKey::id("seed-000");
        let start = Instant::now();
        let exact = futures::future::join_all((0..500).map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            let user = user.clone();
            async move { l.check(&user).await.is_ok() }
        }))
        .await;
        let spread = start.elapsed();
        let naive_key = format!("{prefix}:naive:seed-000");
        let naive = futures::future::join_all((0..500).map(|i| {
            let mut con = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            let k = naive_key.clone();
            async move { naive_check(&mut con, &k).await }
        }))
        .await;
        (
            exact.iter().filter(|x| **x).count(),
            naive.iter().filter(|x| **x).count(),
            spread,
        )
    });
    println!("seed 000 burst: 500 messages over two instances in {spread:.1?}, limit 1/s");
    println!("  exact (GCRA, one Lua step):  {exact} admitted");
    println!("  naive (GET then SET):        {naive} admitted");

    // 2. Admission overhead.
    let policy = ClientPolicy::new(3, Duration::from_secs(60))
        .network(LevelPolicy::new(10, Duration::from_secs(60)));
    let store_a = RedisStore::builder(&url).prefix(&prefix).build().unwrap();
    let store_b = RedisStore::builder(&url).prefix(&prefix).build().unwrap();
    let mk = |s: &RedisStore| {
        curfew::Runtime::builder()
            .event_threads(1)
            .client_policy(policy)
            .policy_store(s.clone())
            .build()
            .unwrap()
    };
    let (ra, rb) = (mk(&store_a), mk(&store_b));
    let ha = ra.handle();
    let keys: Vec<ClientKey> = (0..256u32)
        .map(|i| ClientKey::ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
        .collect();
    for k in &keys {
        // Put the clients in the table (admission assigns entries).
        let t = curfew::task::Builder::new()
            .client(k.clone())
            .spawn_on(&ha, async {});
        ra.block_on(t).unwrap();
    }
    let mut check = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let k = &keys[i % keys.len()];
        let t = Instant::now();
        std::hint::black_box(ha.cooling_off(k));
        check.push(t.elapsed());
    }
    let (limiter, blocked, redis_rtt) = rt.block_on(async {
        let fast = Rate::new(Duration::from_nanos(1), 1_000_000).unwrap();
        let l = RedisRateLimiter::connect_with_prefix(&url, fast, &format!("{prefix}-fast"))
            .await
            .unwrap();
        let slow = Rate::new(Duration::from_secs(3600), 1).unwrap();
        let s = RedisRateLimiter::connect_with_prefix(&url, slow, &format!("{prefix}-slow"))
            .await
            .unwrap();
        let user = ClientKey::id("bench");
        let mut lat = Vec::with_capacity(5000);
        for _ in 0..5000 {
            let t = Instant::now();
            l.check(&user).await.unwrap();
            lat.push(t.elapsed());
        }
        let _ = s.check(&user).await;
        let _ = s.check(&user).await; // now blocked locally
        let mut blocked = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let t = Instant::now();
            let r = s.check(&user).now_or_never();
            blocked.push(t.elapsed());
            assert!(matches!(r, Some(Err(_))));
        }
        let mut ping = Vec::with_capacity(5000);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut con = redis::aio::ConnectionManager::new(client).await.unwrap();
        for _ in 0..5000 {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
            ping.push(t.elapsed());
        }
        (lat, blocked, ping)
    });
    let (mut check, mut limiter, mut blocked, mut redis_rtt) = (check, limiter, blocked, redis_rtt);
    println!("admission overhead (median / p99):");
    println!(
        "  policy check, Redis store attached (local state only): {:.0?} / {:.0?}",
        pct(&mut check, 0.5),
        pct(&mut check, 0.99)
    );
    println!(
        "  exact Redis rate limiter (one round trip):              {:.0?} / {:.0?}",
        pct(&mut limiter, 0.5),
        pct(&mut limiter, 0.99)
    );
    println!(
        "  key blocked in memory:                                  {:.0?} / {:.0?}",
        pct(&mut blocked, 0.5),
        pct(&mut blocked, 0.99)
    );
    println!(
        "  (a bare Redis PING on the same loopback:                {:.0?} / {:.0?})",
        pct(&mut redis_rtt, 0.5),
        pct(&mut redis_rtt, 0.99)
    );

    // 3. Cool-off propagation: a strike that starts a cool-off on A (the
    //    call the watchdog makes), until B's runtime refuses the client.
    let hb = rb.handle();
    let one = LevelPolicy::new(1, Duration::from_secs(60));
    let mut prop = Vec::with_capacity(200);
    for i in 0..200 {
        let k = ClientKey::id(format!("prop-{i}"));
        let t = Instant::now();
        store_a.strike(&k, &one);
        while hb.cooling_off(&k).is_none() {
            assert!(t.elapsed() < Duration::from_secs(10), "no propagation");
            std::thread::sleep(Duration::from_micros(200));
        }
        prop.push(t.elapsed());
    }
    println!(
        "cool-off propagation A -> B over {} cool-offs (flush interval 20 ms): median {:.1?}, p99 {:.1?}, max {:.1?}",
        prop.len(),
        pct(&mut prop, 0.5),
        pct(&mut prop, 0.99),
        pct(&mut prop, 1.0)
    );
}
