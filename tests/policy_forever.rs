//! A cool-off of `Duration::MAX` means "refused for good": the watchdog adds
//! it to its clock with saturating arithmetic, so it neither panics (debug
//! builds) nor wraps to a time in the past (release builds).

use std::time::Duration;

use curfew::policy::ClientPolicy;

#[test]
fn a_cool_off_of_duration_max_refuses_for_good() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(10))
        .client_policy(ClientPolicy::new(1, Duration::MAX))
        .build()
        .unwrap();
    let h = rt.handle();
    let attack = || {
        curfew::task::Builder::new()
            .client("mallory")
            .spawn_on(&h, async {
                curfew_suite::spin_until_timed_out(Duration::from_secs(20))
            })
    };
    assert!(rt.block_on(attack()).unwrap_err().is_timeout());
    let err = rt.block_on(attack()).unwrap_err();
    match err.refusal() {
        Some(curfew::Refusal::ClientCoolingOff { remaining, .. }) => {
            assert!(
                *remaining > Duration::from_secs(100 * 365 * 24 * 3600),
                "{remaining:?}"
            );
        }
        other => panic!("mallory must be refused for good, got {other:?}"),
    }
    let left = rt.handle().cooling_off(&"mallory".into());
    assert!(
        left.is_some_and(|d| d > Duration::from_secs(1 << 40)),
        "{left:?}"
    );
    // The watchdog survived the overrun: a later overrun is still answered.
    let other = curfew::task::Builder::new()
        .client("trudy")
        .spawn_on(&h, async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        });
    assert!(rt.block_on(other).unwrap_err().is_timeout());
}
