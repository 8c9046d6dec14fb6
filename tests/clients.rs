//! Per-client accounting: poll time and timeouts are attributed to the
//! client key, and the client policy refuses a client after its strikes.

use std::time::Duration;

use curfew::policy::ClientPolicy;

#[test]
fn poll_time_and_timeouts_are_attributed_to_clients() {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(2))
        .build()
        .unwrap();
    let h = rt.handle();
    let busy = curfew::task::Builder::new()
        .client("busy")
        .spawn_on(&h, async {
            curfew_suite::spin_for(Duration::from_millis(200))
        });
    let quiet = curfew::task::Builder::new()
        .client("quiet")
        .spawn_on(&h, async {});
    let bad = curfew::task::Builder::new()
        .client("bad")
        .poll_budget(Duration::from_millis(400))
        .spawn_on(&h, async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        });
    rt.block_on(busy).unwrap();
    rt.block_on(quiet).unwrap();
    assert!(rt.block_on(bad).unwrap_err().is_timeout());

    let m = rt.metrics();
    let busy = m.client("busy").expect("busy is accounted");
    let quiet = m.client("quiet").expect("quiet is accounted");
    let bad = m.client("bad").expect("bad is accounted");
    // Sampled at the watchdog interval, on a machine that may stall any
    // thread for a while: generous bounds (busy spins 200 ms, bad at least
    // its 400 ms budget, quiet nothing).
    assert!(busy.poll_time >= Duration::from_millis(50), "{busy:?}");
    assert!(bad.poll_time > busy.poll_time, "{bad:?} vs {busy:?}");
    assert!(quiet.poll_time < Duration::from_millis(50), "{quiet:?}");
    assert_eq!((busy.timeouts, quiet.timeouts, bad.timeouts), (0, 0, 1));
    assert!(!bad.cooling_off, "no policy, no cool-off");
}

#[test]
fn policy_refuses_a_client_after_its_strikes_and_not_others() {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_millis(10))
        .client_policy(ClientPolicy::new(2, Duration::from_secs(60)))
        .build()
        .unwrap();
    let h = rt.handle();
    let attack = |who: &str| {
        curfew::task::Builder::new()
            .client(who)
            .spawn_on(&h, async {
                curfew_suite::spin_until_timed_out(Duration::from_secs(20))
            })
    };
    assert!(rt.block_on(attack("mallory")).unwrap_err().is_timeout());
    assert!(rt.block_on(attack("mallory")).unwrap_err().is_timeout());
    let err = rt.block_on(attack("mallory")).unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    match err.refusal() {
        Some(curfew::Refusal::ClientCoolingOff { client, remaining }) => {
            assert_eq!(client.as_str(), "mallory");
            assert!(*remaining > Duration::from_secs(50));
        }
        other => panic!("wrong refusal: {other:?}"),
    }
    // Blocking jobs for the same client are refused too; others are served.
    let job = curfew::task::Builder::new()
        .client("mallory")
        .spawn_blocking_on(&h, || ());
    assert!(rt.block_on(job).unwrap_err().is_refused());
    let alice = curfew::task::Builder::new()
        .client("alice")
        .spawn_on(&h, async { 1 });
    assert_eq!(rt.block_on(alice).unwrap(), 1);

    let m = rt.metrics();
    let mallory = m.client("mallory").unwrap();
    assert!(mallory.cooling_off);
    assert_eq!(mallory.timeouts, 2);
    assert_eq!(mallory.refused, 2);
    assert_eq!(m.refused, 2);
}

#[test]
fn clients_beyond_the_tracking_capacity_evict_idle_ones() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .max_tracked_clients(2)
        .build()
        .unwrap();
    for c in ["a", "b", "c", "d"] {
        let t = curfew::task::Builder::new()
            .client(c)
            .spawn_on(&rt.handle(), async {});
        rt.block_on(t).unwrap();
    }
    let m = rt.metrics();
    assert_eq!(m.clients.len(), 2);
    assert_eq!(m.evicted_clients, 2);
    // The two most recent stay.
    assert!(m.client("c").is_some() && m.client("d").is_some(), "{m:?}");
}

/// Admission judges by the time of the watchdog's last tick while it ticks,
/// and by the clock while it is parked: a cool-off that has run out while
/// the runtime sat idle (its watchdog parked) admits the client again, and
/// the first spawn after the idle spell does not judge by a stale tick.
#[test]
fn a_cool_off_that_ran_out_while_the_runtime_was_idle_admits_again() {
    // The cool-off is long enough that a loaded machine's stall cannot end
    // it before the refusal is checked; the runtime's budget is far from
    // the point, the spin's own is short.
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_secs(30))
        .client_policy(ClientPolicy::new(1, Duration::from_secs(1)))
        .build()
        .unwrap();
    let h = rt.handle();
    let spin = curfew::task::Builder::new()
        .client("mallory")
        .poll_budget(Duration::from_millis(10))
        .spawn_on(&h, async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        });
    assert!(rt.block_on(spin).unwrap_err().is_timeout());
    let refused = curfew::task::Builder::new()
        .client("mallory")
        .spawn_on(&h, async {});
    assert!(rt.block_on(refused).unwrap_err().is_refused());
    // Idle, from this thread's side: nothing runs, and the watchdog parks.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(h.cooling_off(&curfew::ClientKey::id("mallory")).is_none());
    let again = curfew::task::Builder::new()
        .client("mallory")
        .spawn_on(&h, async { 7 });
    assert_eq!(rt.block_on(again).expect("admitted after the cool-off"), 7);
}
