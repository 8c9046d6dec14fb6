//! Client keys live in namespaces: an id taken from a header can never name
//! a peer address, so it cannot get the clients behind that address refused.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use curfew::policy::{ClientPolicy, Namespace};
use curfew::{ClientKey, Runtime};

#[test]
fn ip_and_id_keys_never_collide() {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    assert_ne!(ClientKey::ip(ip), ClientKey::id("127.0.0.1"));
    assert_ne!(ClientKey::from(ip), ClientKey::from("127.0.0.1"));
    assert_eq!(
        ClientKey::from(SocketAddr::new(ip, 4242)),
        ClientKey::ip(ip)
    );
    // An IPv4-mapped IPv6 peer is the IPv4 client.
    let mapped = IpAddr::V6(Ipv6Addr::from(0xffff_7f00_0001u128));
    assert_eq!(ClientKey::ip(mapped), ClientKey::ip(ip));
    for key in [
        ClientKey::ip(ip),
        ClientKey::id("ip:127.0.0.1"),
        ClientKey::net(ip, 24),
        ClientKey::route("/attack/x"),
        ClientKey::ip("2001:db8::1".parse().unwrap())
            .network()
            .unwrap(),
    ] {
        assert_eq!(
            ClientKey::from_qualified(&key.qualified()),
            Some(key.clone())
        );
    }
    assert_eq!(ClientKey::id("ip:127.0.0.1").namespace(), Namespace::Id);
    assert_eq!(
        ClientKey::ip("2001:db8:1:2:3::9".parse().unwrap())
            .network()
            .unwrap()
            .as_str(),
        "2001:db8:1:2::/64"
    );
}

#[test]
fn an_id_header_reading_a_peer_ip_cannot_get_that_ip_refused() {
    let rt = Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(10))
        .client_policy(ClientPolicy::new(1, Duration::from_secs(60)))
        .build()
        .unwrap();
    let h = rt.handle();
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let poisoned = curfew::task::Builder::new()
        .client(ClientKey::id("127.0.0.1"))
        .spawn_on(&h, async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        });
    assert!(rt.block_on(poisoned).unwrap_err().is_timeout());
    assert!(h.cooling_off(&ClientKey::id("127.0.0.1")).is_some());
    assert_eq!(h.cooling_off(&ClientKey::ip(peer)), None);
    let benign = curfew::task::Builder::new()
        .client(ClientKey::ip(peer))
        .spawn_on(&h, async { 7 });
    assert_eq!(rt.block_on(benign).unwrap(), 7);
}
