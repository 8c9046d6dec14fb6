//! A `tracing` subscriber whose writer is stuck: it holds every warn event
//! until the test lets it go, as a full pipe to a stalled log shipper
//! would, then keeps the event's message. For the tests that show curfew's
//! timeouts do not wait on a log sink.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::{Context, SubscriberExt};

/// The sink; clones share it.
#[derive(Clone, Default)]
pub struct Sink {
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    /// A shut sink, installed as the process's global subscriber (so that
    /// it sees every thread's events: a test binary may install only one).
    pub fn install() -> Sink {
        let sink = Sink::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(sink.clone()))
            .expect("the only global subscriber of this test binary");
        sink
    }

    /// Lets the held events through, and every later one at once.
    pub fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    /// How many warn events with `what` in their message were written.
    pub fn written(&self, what: &str) -> usize {
        let written = self.written.lock().unwrap();
        written.iter().filter(|m| m.contains(what)).count()
    }

    /// Waits up to 20 s for `n` warn events with `what` in their message.
    pub fn wait_written(&self, what: &str, n: usize) -> bool {
        curfew_suite::wait_until(Duration::from_secs(20), || self.written(what) >= n)
    }

    /// The messages written so far, for a failure's message.
    pub fn messages(&self) -> Vec<String> {
        self.written.lock().unwrap().clone()
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
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        // Held for at most 60 s, so that a broken runtime fails its test
        // rather than hangs it.
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
