//! Hierarchical keys: strikes and quotas also count per network prefix
//! (/24, /64) and per route, so rotating addresses within a prefix, or a
//! route that keeps timing out for many clients, trips a limit.

use std::net::IpAddr;
use std::time::Duration;

use curfew::policy::{ClientPolicy, CpuQuota, LevelPolicy, Namespace};
use curfew::{ClientKey, Refusal, Runtime};

fn spin(h: &curfew::Handle, key: ClientKey) -> curfew::JoinHandle<bool> {
    curfew::task::Builder::new().client(key).spawn_on(h, async {
        curfew_suite::spin_until_timed_out(Duration::from_secs(20))
    })
}

fn ip(s: &str) -> ClientKey {
    ClientKey::ip(s.parse::<IpAddr>().unwrap())
}

fn refusal(rt: &Runtime, key: ClientKey) -> Option<Refusal> {
    let t = curfew::task::Builder::new()
        .client(key)
        .spawn_on(&rt.handle(), async {});
    rt.block_on(t).err().and_then(|e| e.refusal().cloned())
}

#[test]
fn rotating_addresses_within_a_prefix_trips_the_network_limit() {
    let rt = Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_millis(10))
        .client_policy(
            ClientPolicy::new(5, Duration::from_secs(60))
                .network(LevelPolicy::new(3, Duration::from_secs(60))),
        )
        .build()
        .unwrap();
    let h = rt.handle();
    // Three addresses of one /24, one timeout each: no client has reached
    // its own limit of 5.
    for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert!(rt.block_on(spin(&h, ip(host))).unwrap_err().is_timeout());
    }
    match refusal(&rt, ip("10.0.0.77")) {
        Some(Refusal::ClientCoolingOff { client, .. }) => {
            assert_eq!(client.namespace(), Namespace::Net);
            assert_eq!(client.as_str(), "10.0.0.0/24");
        }
        other => panic!("the /24 must be refused, got {other:?}"),
    }
    assert_eq!(refusal(&rt, ip("10.0.1.1")), None, "another /24 is served");
    assert_eq!(
        refusal(&rt, ClientKey::id("10.0.0.77")),
        None,
        "ids have no network"
    );
    // IPv6: the /64.
    assert_eq!(refusal(&rt, ip("2001:db8::1")), None);
}

#[test]
fn a_network_quota_limits_the_sum_of_its_clients() {
    let net_quota = CpuQuota::new(Duration::from_millis(400), Duration::from_secs(60)).unwrap();
    let rt = Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(5))
        .client_policy(
            ClientPolicy::new(5, Duration::from_secs(60))
                .network(LevelPolicy::new(0, Duration::ZERO).cpu_quota(net_quota)),
        )
        .build()
        .unwrap();
    let h = rt.handle();
    // Two addresses, 300 ms each: each within any per-client limit, 600 ms
    // together against the /24's 400 ms (CPU time is sampled at the
    // watchdog's interval, so the margin is wide enough for a loaded
    // machine's stalls).
    for host in ["192.0.2.1", "192.0.2.2"] {
        let t = curfew::task::Builder::new()
            .client(ip(host))
            .spawn_on(&h, async {
                curfew_suite::spin_for(Duration::from_millis(300));
            });
        rt.block_on(t).unwrap();
    }
    match refusal(&rt, ip("192.0.2.200")) {
        Some(Refusal::QuotaSpent { client, .. }) => assert_eq!(client.as_str(), "192.0.2.0/24"),
        other => panic!("the /24's quota is spent, got {other:?}"),
    }
    assert_eq!(refusal(&rt, ip("198.51.100.1")), None);
}

#[test]
fn a_route_that_keeps_timing_out_trips_its_breaker() {
    let rt = Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_millis(10))
        .client_policy(
            ClientPolicy::new(5, Duration::from_secs(60))
                .route(LevelPolicy::new(2, Duration::from_secs(30))),
        )
        .build()
        .unwrap();
    let h = rt.handle();
    for who in ["a", "b"] {
        let key = ClientKey::id(who).with_route("/slow");
        assert!(rt.block_on(spin(&h, key)).unwrap_err().is_timeout());
    }
    match refusal(&rt, ClientKey::id("c").with_route("/slow")) {
        Some(Refusal::ClientCoolingOff { client, remaining }) => {
            assert_eq!(client, ClientKey::route("/slow"));
            assert!(remaining <= Duration::from_secs(30));
        }
        other => panic!("the route breaker must be open, got {other:?}"),
    }
    // The same clients on another route, and the route-less client, are served.
    assert_eq!(refusal(&rt, ClientKey::id("c").with_route("/fast")), None);
    assert_eq!(refusal(&rt, ClientKey::id("a")), None);
}
