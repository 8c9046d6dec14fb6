//! A log sink that blocks never stops the timeouts. Here the subscriber
//! holds every warn event from curfew until the test lets it go, as a full
//! pipe to a stalled log shipper would: overruns are still answered
//! meanwhile, and the events arrive once the sink moves again.
//!
//! This file holds one test on purpose: it installs a global subscriber.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use curfew_suite::{answered_within, spin_until_timed_out, wait_until};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Blocks on every warn event from curfew while the gate is shut (for at
/// most 60 s, so that a broken runtime fails the test rather than hangs
/// it), then keeps the event's message.
#[derive(Clone, Default)]
struct Sink {
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    fn written(&self, what: &str) -> usize {
        let written = self.written.lock().unwrap();
        written.iter().filter(|m| m.contains(what)).count()
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Sink {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != "curfew" || *meta.level() != tracing::Level::WARN {
            return;
        }
        let (lock, cv) = &*self.open;
        let start = Instant::now();
        let mut open = lock.lock().unwrap();
        while !*open && start.elapsed() < Duration::from_secs(60) {
            open = cv.wait_timeout(open, Duration::from_millis(100)).unwrap().0;
        }
        drop(open);
        let mut m = Message(String::new());
        event.record(&mut m);
        self.written.lock().unwrap().push(m.0);
    }
}

#[test]
fn a_log_sink_that_blocks_does_not_stop_the_timeouts() {
    let sink = Sink::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(sink.clone()))
        .unwrap();
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

    // Once the sink moves, the events it held come through, in order.
    sink.open();
    assert!(
        wait_until(Duration::from_secs(20), || sink.written("poll over budget")
            == 3),
        "timeout events after the sink opened: {:?}",
        sink.written.lock().unwrap()
    );
    drop(std::mem::ManuallyDrop::into_inner(rt));
}
