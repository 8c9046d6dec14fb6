//! Property-based tests over the policy configuration: whatever the
//! strikes, cool-offs, quotas, levels, table size and keys, building a
//! runtime either succeeds or fails with a clear error, and running tasks
//! under the policy neither panics nor hangs.

use std::net::IpAddr;
use std::time::Duration;

use curfew::policy::{ClientKey, ClientPolicy, CpuQuota, LevelPolicy, Rate, RateLimiter};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..5_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn quota() -> impl Strategy<Value = Option<CpuQuota>> {
    (duration(), duration()).prop_map(|(q, w)| CpuQuota::new(q, w).ok())
}

fn level() -> impl Strategy<Value = Option<LevelPolicy>> {
    proptest::option::of((any::<u32>(), duration(), quota()).prop_map(|(s, c, q)| {
        let l = LevelPolicy::new(s, c);
        match q {
            Some(q) => l.cpu_quota(q),
            None => l,
        }
    }))
}

fn policy() -> impl Strategy<Value = ClientPolicy> {
    (
        prop_oneof![Just(0u32), Just(1), Just(2), any::<u32>()],
        duration(),
        quota(),
        level(),
        level(),
    )
        .prop_map(|(strikes, cool_off, q, net, route)| {
            let mut p = ClientPolicy::new(strikes, cool_off);
            p.cpu_quota = q;
            p.network = net;
            p.route = route;
            p
        })
}

fn key() -> impl Strategy<Value = ClientKey> {
    let base = prop_oneof![
        any::<[u8; 4]>().prop_map(|b| ClientKey::ip(IpAddr::from(b))),
        any::<[u8; 16]>().prop_map(|b| ClientKey::ip(IpAddr::from(b))),
        ".{0,12}".prop_map(ClientKey::id),
        (any::<[u8; 4]>(), any::<u8>()).prop_map(|(b, n)| ClientKey::net(IpAddr::from(b), n)),
    ];
    (base, proptest::option::of("/[a-z]{0,3}")).prop_map(|(k, r)| match r {
        Some(r) => k.with_route(r),
        None => k,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_policy_builds_or_fails_cleanly_and_runs_tasks(
        policy in policy(),
        capacity in 0usize..40,
        keys in proptest::collection::vec(key(), 1..24),
        spin in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let built = curfew::Runtime::builder()
            .event_threads(1)
            .blocking_threads(1)
            .poll_budget(Duration::from_millis(5))
            .client_policy(policy)
            .max_tracked_clients(capacity)
            .build();
        let rt = match built {
            Ok(rt) => rt,
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        let h = rt.handle();
        for (key, spin) in keys.iter().zip(spin) {
            let t = curfew::task::Builder::new().client(key.clone()).spawn_on(&h, async move {
                if spin {
                    curfew_suite::spin_until_timed_out(Duration::from_secs(10));
                }
            });
            match rt.block_on(t) {
                Ok(()) => {}
                Err(e) => prop_assert!(e.is_timeout() || e.is_refused(), "{e:?}"),
            }
            let _ = h.cooling_off(key);
        }
        let m = rt.metrics();
        prop_assert!(m.clients.len() <= capacity.max(1));
    }

    #[test]
    fn keys_round_trip_and_parsing_never_panics(k in key(), s in ".{0,40}") {
        let plain = k.without_route();
        prop_assert_eq!(ClientKey::from_qualified(&plain.qualified()), Some(plain));
        let _ = ClientKey::from_qualified(&s);
        let _ = s.parse::<CpuQuota>();
    }

    #[test]
    fn any_rate_limits_without_panicking(period in duration(), burst in any::<u32>(), n in 0usize..50) {
        if let Some(rate) = Rate::new(period, burst) {
            let limiter = RateLimiter::new(rate);
            let key = ClientKey::id("k");
            let admitted = (0..n).filter(|_| limiter.check(&key).is_ok()).count();
            prop_assert!(admitted <= n.min(burst as usize));
        }
    }
}
