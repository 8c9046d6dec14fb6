//! CPU-time quotas: a client may spend at most `quota` of poll and job time
//! per window, metered by the watchdog's attribution; over it, it is refused
//! with the time left in the window.

use std::time::Duration;

use curfew::policy::{ClientPolicy, CpuQuota};
use curfew::{Refusal, Runtime};

fn runtime(quota: CpuQuota) -> Runtime {
    Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(5))
        .client_policy(ClientPolicy::new(3, Duration::from_secs(60)).cpu_quota(quota))
        .build()
        .unwrap()
}

#[test]
fn a_client_over_its_cpu_quota_is_refused_with_the_time_left() {
    let quota = CpuQuota::new(Duration::from_millis(50), Duration::from_secs(60)).unwrap();
    let rt = runtime(quota);
    let h = rt.handle();
    // One cheap-looking request that costs 150 ms of CPU: no timeout, no
    // strike, but three times the quota.
    let costly = curfew::task::Builder::new()
        .client("botnet-1")
        .spawn_on(&h, async {
            curfew_suite::spin_for(Duration::from_millis(150));
        });
    rt.block_on(costly).unwrap();
    let next = curfew::task::Builder::new()
        .client("botnet-1")
        .spawn_on(&h, async {});
    let err = rt.block_on(next).unwrap_err();
    match err.refusal() {
        Some(Refusal::QuotaSpent {
            spent,
            quota,
            remaining,
            ..
        }) => {
            assert!(spent >= quota, "{err}");
            assert_eq!(*quota, Duration::from_millis(50));
            assert!(
                *remaining <= Duration::from_secs(60) && !remaining.is_zero(),
                "{err}"
            );
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
    assert!(err.refusal().unwrap().retry_after().is_some());
    assert!(h.cooling_off(&"botnet-1".into()).is_some());
    // Blocking jobs are metered too, and other clients are untouched.
    let job = curfew::task::Builder::new()
        .client("botnet-2")
        .spawn_blocking_on(&h, || curfew_suite::spin_for(Duration::from_millis(150)));
    rt.block_on(job).unwrap();
    let again = curfew::task::Builder::new()
        .client("botnet-2")
        .spawn_blocking_on(&h, || ());
    assert!(rt.block_on(again).unwrap_err().is_refused());
    let alice = curfew::task::Builder::new()
        .client("alice")
        .spawn_on(&h, async { 1 });
    assert_eq!(rt.block_on(alice).unwrap(), 1);
}

#[test]
fn the_window_frees_the_client() {
    // A window long enough that a loaded machine's stall cannot end it
    // before the refusal is checked, and short enough to wait out.
    let quota = CpuQuota::new(Duration::from_millis(20), Duration::from_secs(2)).unwrap();
    let rt = runtime(quota);
    let h = rt.handle();
    let costly = curfew::task::Builder::new()
        .client("c")
        .spawn_on(&h, async {
            curfew_suite::spin_for(Duration::from_millis(100));
        });
    rt.block_on(costly).unwrap();
    assert!(h.cooling_off(&"c".into()).is_some());
    let freed = curfew_suite::wait_until(Duration::from_secs(10), || {
        h.cooling_off(&"c".into()).is_none()
    });
    assert!(freed, "the window must free the client");
    let t = curfew::task::Builder::new()
        .client("c")
        .spawn_on(&h, async { 2 });
    assert_eq!(rt.block_on(t).unwrap(), 2);
}

#[test]
fn quotas_parse_and_reject_nonsense() {
    let q: CpuQuota = "2s/60s".parse().unwrap();
    assert_eq!(
        (q.quota(), q.window()),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
    let q: CpuQuota = "500ms/1m".parse().unwrap();
    assert_eq!(
        (q.quota(), q.window()),
        (Duration::from_millis(500), Duration::from_secs(60))
    );
    for bad in [
        "",
        "2s",
        "2/60",
        "0s/60s",
        "2s/0s",
        "-1s/5s",
        "1s/9999999h",
        "xs/1s",
    ] {
        let e = bad.parse::<CpuQuota>().unwrap_err();
        assert!(e.to_string().contains("CPU quota"), "{bad}: {e}");
    }
}
