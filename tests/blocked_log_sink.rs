//! A log sink that blocks never stops the timeouts. Here the subscriber
//! holds every warn event until the test lets it go, as a full pipe to a
//! stalled log shipper would: overruns are still answered meanwhile, and
//! the events arrive once the sink moves again.
//!
//! This file holds one test on purpose: it installs a global subscriber.

use std::time::Duration;

use curfew_suite::{answered_within, spin_until_timed_out};

mod log_sink;

#[test]
fn a_log_sink_that_blocks_does_not_stop_the_timeouts() {
    let sink = log_sink::Sink::install();
    // Not dropped if an assertion fails: a wedged watchdog would hang the
    // drop, and the test must fail instead.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(2)
            .poll_budget(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    // Each overrun makes warn events (the timeout, the hijack), which the
    // sink holds: a watchdog that emitted them itself would stop at the
    // first one, and the second overrun would never be answered.
    for i in 0..3 {
        let h = rt.spawn(async { spin_until_timed_out(Duration::from_secs(20)) });
        let res = answered_within(h, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("overrun {i} never answered while the log sink was blocked"));
        assert!(res.unwrap_err().is_timeout());
    }
    assert_eq!(rt.metrics().event.timeouts, 3);
    // The runtime still serves.
    let h = rt.spawn(async { 5 });
    assert_eq!(
        answered_within(h, Duration::from_secs(10))
            .unwrap()
            .unwrap(),
        5
    );

    // Once the sink moves, the events it held come through.
    sink.open();
    assert!(
        sink.wait_written("poll over budget", 3),
        "timeout events after the sink opened: {:?}",
        sink.messages()
    );
    drop(std::mem::ManuallyDrop::into_inner(rt));
}
