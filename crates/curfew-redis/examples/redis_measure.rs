//! Measures the shared policy against a real Redis: seed 000's burst
//! (exact limiter and naive read-then-write, in the same run), admission
//! overhead, and cool-off propagation between two instances.
//!
//! ```text
//! cargo run --release -p curfew-redis --example redis_measure            # starts its own redis-server
//! cargo run --release -p curfew-redis --example redis_measure -- redis://127.0.0.1:6379/
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use curfew::policy::{ClientKey, ClientPolicy, LevelPolicy, PolicyStore, Rate};
use curfew_redis::{RedisRateLimiter, RedisStore};
use futures::FutureExt;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One burst: 500 handler tasks for one user, released together, half on
/// each instance's connection; first with the exact limiter, then with
/// seed 000's read-then-write. Returns (exact admitted, naive admitted, the
/// longer of the two bursts' durations).
async fn burst(url: &str, prefix: &str) -> (usize, usize, Duration) {
    let rate = Rate::per_second(1).unwrap();
    let a = RedisRateLimiter::connect_with_prefix(url, rate, prefix)
        .await
        .unwrap();
    let b = RedisRateLimiter::connect_with_prefix(url, rate, prefix)
        .await
        .unwrap();
    let client = redis::Client::open(url).unwrap();
    let ca = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let cb = redis::aio::ConnectionManager::new(client).await.unwrap();
    let user = ClientKey::id("seed-000");
    let naive_key = format!("{prefix}:naive:{}", user.qualified());

    let go = Arc::new(tokio::sync::Barrier::new(501));
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (l, user, go) = (
                if i % 2 == 0 { a.clone() } else { b.clone() },
                user.clone(),
                go.clone(),
            );
            tokio::spawn(async move {
                go.wait().await;
                l.check(&user).await.is_ok()
            })
        })
        .collect();
    go.wait().await;
    let start = Instant::now();
    let mut exact = 0;
    for t in tasks {
        exact += usize::from(t.await.unwrap());
    }
    let spread_exact = start.elapsed();

    let go = Arc::new(tokio::sync::Barrier::new(501));
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (mut con, key, go) = (
                if i % 2 == 0 { ca.clone() } else { cb.clone() },
                naive_key.clone(),
                go.clone(),
            );
            tokio::spawn(async move {
                go.wait().await;
                naive_check(&mut con, &key).await
            })
        })
        .collect();
    go.wait().await;
    let start = Instant::now();
    let mut naive = 0;
    for t in tasks {
        naive += usize::from(t.await.unwrap());
    }
    (exact, naive, spread_exact.max(start.elapsed()))
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

    // 1. Seed 000: 500 messages from one user, flushed at once on a
    //    reconnect (each a handler task of its own, released together),
    //    spread over two instances, against a limit of 1 per second. Five
    //    rounds, each with a fresh user; exact and naive in the same run.
    let rounds: Vec<(usize, usize, Duration)> = (0..5)
        .map(|round| rt.block_on(burst(&url, &format!("{prefix}-burst-{round}"))))
        .collect();
    println!("seed 000 burst: 500 messages from one user over two instances, limit 1/s, 5 rounds");
    for (round, (exact, naive, spread)) in rounds.iter().enumerate() {
        println!(
            "  round {round}: all 500 answered within {spread:.1?}: exact (GCRA, one Lua step) {exact} admitted, naive (GET then SET) {naive} admitted"
        );
    }

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

    // 3. Hierarchical keys over two instances: an attacker rotating
    //    addresses within one /24, and a route that times out for everyone.
    for shared in [false, true] {
        let (timeouts, refused) = rotate_prefix(&url, &format!("{prefix}-net-{shared}"), shared);
        println!(
            "prefix rotation over two instances ({}): {timeouts} poisoned requests ran before the /24 was refused; then {refused}/40 refused",
            if shared {
                "shared through Redis, /24 limit 4"
            } else {
                "each instance alone, /24 limit 4 each"
            },
        );
    }
    let (timeouts, refused, benign) = route_breaker(&url, &format!("{prefix}-route"));
    println!(
        "route breaker over two instances (limit 5 shared): {timeouts} timeouts on /poison from 100 rotating clients before it opened; then {refused}/40 refused at once; the same clients on /ok: {benign}/40 served"
    );

    // 4. Cool-off propagation: a strike that starts a cool-off on A (the
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
        "cool-off propagation A -> B over {} cool-offs: median {:.1?}, p99 {:.1?}, max {:.1?}",
        prop.len(),
        pct(&mut prop, 0.5),
        pct(&mut prop, 0.99),
        pct(&mut prop, 1.0)
    );
}

/// Two runtimes with a 20 ms poll budget and a policy with network and
/// route levels, sharing through Redis when `shared`.
fn pair(url: &str, prefix: &str, shared: bool) -> (curfew::Runtime, curfew::Runtime) {
    let policy = ClientPolicy::new(2, Duration::from_secs(60))
        .network(LevelPolicy::new(4, Duration::from_secs(60)))
        .route(LevelPolicy::new(5, Duration::from_secs(60)));
    let mk = || {
        let b = curfew::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(20))
            .client_policy(policy);
        let b = if shared {
            b.policy_store(
                RedisStore::builder(url)
                    .prefix(prefix)
                    .flush_interval(Duration::from_millis(5))
                    .build()
                    .unwrap(),
            )
        } else {
            b
        };
        b.build().unwrap()
    };
    (mk(), mk())
}

/// Runs one request for `key` on `rt`: a handler stuck in a loop when
/// `poison`. Returns "timeout", "refused" or "ok".
fn request(rt: &curfew::Runtime, key: ClientKey, poison: bool) -> &'static str {
    let t = curfew::task::Builder::new()
        .client(key)
        .spawn_on(&rt.handle(), async move {
            let start = Instant::now();
            while poison && start.elapsed() < Duration::from_secs(5) {
                if curfew::checkpoint().is_err() {
                    break;
                }
            }
        });
    match rt.block_on(t) {
        Ok(()) => "ok",
        Err(e) if e.is_timeout() => "timeout",
        Err(e) if e.is_refused() => "refused",
        Err(_) => "other",
    }
}

/// An attacker on 10.9.0.0/24 with a fresh address per request, alternating
/// between the instances, at one request every 20 ms. Returns the poisoned
/// requests that ran before the first refusal, and how many of the 40 that
/// follow were refused.
fn rotate_prefix(url: &str, prefix: &str, shared: bool) -> (usize, usize) {
    let (ra, rb) = pair(url, prefix, shared);
    let mut timeouts = 0;
    let mut host = 1u32;
    let mut next = || {
        host += 1;
        ClientKey::ip(std::net::Ipv4Addr::from(0x0a09_0000 + host % 250 + 1).into())
    };
    for i in 0..200 {
        let rt = if i % 2 == 0 { &ra } else { &rb };
        match request(rt, next(), true) {
            "timeout" => timeouts += 1,
            "refused" => break,
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = (0..40)
        .filter(|i| request(if i % 2 == 0 { &ra } else { &rb }, next(), true) == "refused")
        .count();
    (timeouts, refused)
}

/// 100 clients, each once, on a route whose handler never returns,
/// alternating between the instances. Returns the timeouts before the
/// breaker opened, how many of the next 40 were refused, and how many of 40
/// requests from the same clients to another route were served.
fn route_breaker(url: &str, prefix: &str) -> (usize, usize, usize) {
    let (ra, rb) = pair(url, prefix, true);
    let client = |i: usize| ClientKey::id(format!("user-{i}"));
    let mut timeouts = 0;
    let mut i = 0;
    while i < 100 {
        let rt = if i % 2 == 0 { &ra } else { &rb };
        match request(rt, client(i).with_route("/poison"), true) {
            "timeout" => timeouts += 1,
            "refused" => break,
            _ => {}
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = (0..40)
        .filter(|j| {
            let rt = if j % 2 == 0 { &ra } else { &rb };
            request(rt, client(200 + j).with_route("/poison"), true) == "refused"
        })
        .count();
    let benign = (0..40)
        .filter(|j| {
            let rt = if j % 2 == 0 { &ra } else { &rb };
            request(rt, client(*j).with_route("/ok"), false) == "ok"
        })
        .count();
    (timeouts, refused, benign)
}
