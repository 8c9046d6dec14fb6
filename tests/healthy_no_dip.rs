//! A written-off or handed-off thread hands its place in `healthy_threads`
//! straight to its replacement: the metric never shows the group a thread
//! short in between. The watchdog's event for each of the two (written
//! later, by curfew's log thread) carries `healthy`, the metric as
//! `metrics()` reads it at the moment between taking the thread out of
//! service and starting the replacement.
#![cfg(target_os = "linux")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use curfew_suite::wait_until;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

mod sched;
use sched::spinner;

/// What the layer read from each event: (message, healthy event threads).
#[derive(Default, Clone)]
struct AtEvent {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

#[derive(Default)]
struct Fields {
    message: String,
    healthy: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "healthy" {
            self.healthy = Some(value);
        }
    }
}

const HIJACKED: &str = "thread hijacked by an overrunning poll";
const HANDED_OFF: &str = "long poll handed off";

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AtEvent {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if !(f.message.contains(HIJACKED) || f.message.contains(HANDED_OFF)) {
            return;
        }
        let healthy = f.healthy.expect("the event carries `healthy`");
        self.seen.lock().unwrap().push((f.message, healthy));
    }
}

/// Runs `go` on a fresh 2-thread runtime built by `builder` and returns
/// what the layer read at the first event containing `wanted`.
fn healthy_at(at: &AtEvent, builder: curfew::Builder, wanted: &str) -> (String, u64) {
    let rt = builder.event_threads(2).build().unwrap();
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
