//! A client policy whose cool-off is `Duration::MAX` ("ban for good") must
//! not wedge the runtime, whatever the policy's arithmetic does with it: the
//! watchdog's overrun path contains a panic and releases the slot it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use curfew::policy::ClientPolicy;
use curfew_suite::{answered_within, spin_until};

#[test]
fn a_ban_for_good_does_not_wedge_the_watchdog() {
    // Not dropped if an assertion fails: a wedged runtime would hang its
    // drop, and the test must fail instead.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(2)
            .poll_budget(Duration::from_millis(20))
            .client_policy(ClientPolicy::new(1, Duration::MAX))
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    for client in ["mallory", "eve", "trent"] {
        let r = release.clone();
        let h = curfew::task::Builder::new()
            .client(client)
            .spawn_on(&rt.handle(), async move { spin_until(&r) });
        let res = answered_within(h, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{client}'s overrun never answered"));
        assert!(res.unwrap_err().is_timeout());
    }
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(std::mem::ManuallyDrop::into_inner(rt));
        let _ = tx.send(());
    });
    let dropped = rx.recv_timeout(Duration::from_secs(10));
    release.store(true, Ordering::SeqCst);
    dropped.expect("drop(rt) hung");
}
