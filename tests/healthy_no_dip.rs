//! A written-off or handed-off thread hands its place in `healthy_threads`
//! straight to its replacement: the metric never shows the group a thread
//! short in between. The watchdog logs each of the two events between
//! taking the thread out of service and starting the replacement, so a
//! layer that reads the runtime's metrics when the event is recorded sees
//! that moment exactly (the watchdog's own thread records it).
#![cfg(target_os = "linux")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use curfew_suite::wait_until;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

mod sched;
use sched::spinner;

/// The runtime whose metrics the layer reads, and what it read at each
/// event: (message, healthy event threads).
#[derive(Default, Clone)]
struct AtEvent {
    handle: Arc<Mutex<Option<curfew::Handle>>>,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

const HIJACKED: &str = "thread hijacked by an overrunning poll";
const HANDED_OFF: &str = "long poll handed off";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AtEvent {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        if !(m.0.contains(HIJACKED) || m.0.contains(HANDED_OFF)) {
            return;
        }
        let Some(handle) = self.handle.lock().unwrap().clone() else {
            return;
        };
        let healthy = handle.metrics().event.healthy_threads;
        self.seen.lock().unwrap().push((m.0, healthy));
    }
}

/// Runs `go` on a fresh 2-thread runtime built by `builder` and returns
/// what the layer read at the first event containing `wanted`.
fn healthy_at(at: &AtEvent, builder: curfew::Builder, wanted: &str) -> (String, usize) {
    let rt = builder.event_threads(2).build().unwrap();
    *at.handle.lock().unwrap() = Some(rt.handle());
    at.seen.lock().unwrap().clear();
    let (h, _, release) = spinner(&rt, ());
    let found = wait_until(Duration::from_secs(20), || {
        at.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| m.contains(wanted))
    });
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = rt.block_on(h);
    *at.handle.lock().unwrap() = None;
    assert!(found, "no event containing {wanted:?}: {:?}", at.seen);
    let seen = at.seen.lock().unwrap();
    seen.iter()
        .find(|(m, _)| m.contains(wanted))
        .cloned()
        .unwrap()
}

#[test]
fn a_replaced_thread_leaves_no_dip_in_healthy_threads() {
    let at = AtEvent::default();
    // The watchdog has a thread of its own: the subscriber must be global.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(at.clone()))
        .unwrap();

    // A write-off: the spinner overruns a 30 ms budget with no grace.
    let (msg, healthy) = healthy_at(
        &at,
        curfew::Runtime::builder().poll_budget(Duration::from_millis(30)),
        HIJACKED,
    );
    assert_eq!(healthy, 2, "at {msg:?}");

    // A hand-off: the spinner runs past 20 ms of a 60 s budget.
    let (msg, healthy) = healthy_at(
        &at,
        curfew::Runtime::builder()
            .poll_budget(Duration::from_secs(60))
            .hand_off_long_polls(Some(Duration::from_millis(20))),
        HANDED_OFF,
    );
    assert_eq!(healthy, 2, "at {msg:?}");
}
