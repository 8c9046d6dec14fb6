//! Every timeout produces a `tracing` warn event naming the task, client,
//! budget, elapsed time and hijacked count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// An event's level and its fields, rendered.
type Event = (tracing::Level, HashMap<String, String>);

#[derive(Default, Clone)]
struct Captured(Arc<Mutex<Vec<Event>>>);

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields(HashMap::new());
        event.record(&mut f);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), f.0));
    }
}

#[test]
fn timeout_emits_a_warn_event_with_the_numbers() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    // The watchdog has its own thread, so the subscriber must be global.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(15))
        .build()
        .unwrap();
    let h = curfew::task::Builder::new()
        .name("resize")
        .client("192.0.2.9")
        .spawn_on(&rt.handle(), async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        });
    assert!(rt.block_on(h).unwrap_err().is_timeout());

    // The watchdog answers the caller first and records the event just
    // after, so the event may land a moment after `block_on` returns.
    let is_timeout_event =
        |f: &HashMap<String, String>| f.get("message").is_some_and(|m| m.contains("over budget"));
    let recorded = curfew_suite::wait_until(Duration::from_secs(20), || {
        captured
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, f)| is_timeout_event(f))
    });
    assert!(recorded, "a timeout event");
    let events = captured.0.lock().unwrap();
    let (level, fields) = events
        .iter()
        .find(|(_, f)| is_timeout_event(f))
        .expect("a timeout event");
    assert_eq!(*level, tracing::Level::WARN);
    assert_eq!(fields["task"], "resize");
    assert_eq!(fields["client"], "192.0.2.9");
    assert_eq!(fields["budget_ms"], "15.0");
    let elapsed: f64 = fields["elapsed_ms"].parse().unwrap();
    assert!(elapsed >= 15.0, "{elapsed}");
    assert!(fields.contains_key("hijacked"));
    assert_eq!(fields["location"], "event thread");
}
