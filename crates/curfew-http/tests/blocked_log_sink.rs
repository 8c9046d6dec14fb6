//! A log sink that blocks never holds a `503` back. The layer's answer to
//! a handler that never yields is written on the watchdog's thread, and
//! its `tracing` event is emitted from curfew's log thread: here the
//! subscriber holds every warn event until the test lets it go, as a full
//! pipe to a stalled log shipper would, and the timeouts are answered
//! meanwhile.
//!
//! This file holds one test on purpose: it installs a global subscriber.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use common::{TestServer, get_from, runtime, spinning};
use curfew_http::CurfewLayer;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Blocks on every warn event while the gate is shut (for at most 60 s,
/// so that a broken server fails the test rather than hangs it), then
/// counts it.
#[derive(Clone, Default)]
struct Sink {
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<String>>>,
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
fn a_blocked_log_sink_does_not_hold_back_the_503() {
    let sink = Sink::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(sink.clone()))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = TestServer::start(
        runtime(),
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/spin", spinning(stop.clone(), Duration::from_secs(10)))
            .layer(CurfewLayer::new().poll_budget(common::SPIN_BUDGET)),
        |s| s,
    );
    // Three clients' handlers never yield; each is answered while the sink
    // holds the events of the ones before (the read times out after 20 s).
    for i in 1..=3 {
        let r = get_from([127, 0, 5, i], server.addr, "/spin").expect("an answer");
        assert_eq!(r.status, 503, "{r:?}");
    }
    let hello = get_from([127, 0, 5, 9], server.addr, "/hello").unwrap();
    assert_eq!(hello.status, 200);
    stop.store(true, Ordering::SeqCst);

    // Once the sink moves, the events it held come through.
    let (lock, cv) = &*sink.open;
    *lock.lock().unwrap() = true;
    cv.notify_all();
    let timed_out = || {
        let written = sink.written.lock().unwrap();
        written
            .iter()
            .filter(|m| m.contains("handler timed out"))
            .count()
    };
    let start = Instant::now();
    while timed_out() < 3 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        timed_out() == 3,
        "the layer's events after the sink opened: {:?}",
        sink.written.lock().unwrap()
    );
}
