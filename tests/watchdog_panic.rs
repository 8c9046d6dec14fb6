//! A tracing subscriber that panics never wedges the runtime, nor silences
//! it. Here it panics on curfew's first warning (a timeout's, written by
//! curfew's log thread, as all of the watchdog's events are): later
//! overruns are still answered, their warnings still reach the subscriber,
//! and the runtime still drops in bounded time.
//!
//! This file holds one test on purpose: it installs a global subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use curfew_suite::{answered_within, spin_until};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Panics on the first warn event from curfew, and counts the ones after.
#[derive(Clone, Default)]
struct PanicOnce(Arc<(AtomicBool, AtomicUsize)>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOnce {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != "curfew" || *meta.level() != tracing::Level::WARN {
            return;
        }
        let (panicked, after) = &*self.0;
        if !panicked.swap(true, Ordering::SeqCst) {
            panic!("a tracing subscriber panicked on curfew's first warning");
        }
        after.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_panicking_subscriber_does_not_wedge_the_runtime_or_silence_it() {
    let layer = PanicOnce::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer.clone()))
        .unwrap();

    // Not dropped if an assertion fails: a wedged runtime would hang its
    // drop, and the test must fail instead.
    let rt = std::mem::ManuallyDrop::new(
        curfew::Runtime::builder()
            .event_threads(2)
            .poll_budget(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    let release = Arc::new(AtomicBool::new(false));
    for i in 0..3 {
        let r = release.clone();
        let h = rt.spawn(async move { spin_until(&r) });
        let res = answered_within(h, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("overrun {i} never answered: the watchdog is wedged"));
        assert!(res.unwrap_err().is_timeout());
    }
    // The subscriber did panic, and the events after its panic still
    // reach it: the thread that writes them lives on.
    assert!(
        layer.0.0.load(Ordering::SeqCst),
        "no warning reached the subscriber"
    );
    assert!(
        curfew_suite::wait_until(Duration::from_secs(20), || layer.0.1.load(Ordering::SeqCst)
            >= 2),
        "warnings after the panic: {}",
        layer.0.1.load(Ordering::SeqCst)
    );
    // The runtime still serves and still shuts down in bounded time.
    assert_eq!(rt.block_on(rt.spawn(async { 5 })).unwrap(), 5);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        drop(std::mem::ManuallyDrop::into_inner(rt));
        let _ = tx.send(start.elapsed());
    });
    let took = rx.recv_timeout(Duration::from_secs(10));
    release.store(true, Ordering::SeqCst);
    let took = took.expect("drop(rt) hung after a panic on the watchdog thread");
    assert!(took < Duration::from_secs(3), "{took:?}");
}
