//! Panics: a panicking task gives `is_panic()`, and its thread keeps serving.
//!
//! The panic hook runs inside the poll, and printing a backtrace in a debug
//! build can take longer than a default budget on a loaded machine, so these
//! runtimes have budgets far from the point.

use std::time::Duration;

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_secs(30))
        .job_budget(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn panic_is_reported_and_the_thread_keeps_serving() {
    let rt = runtime();
    let h = rt.spawn(async {
        if std::hint::black_box(true) {
            panic!("boom {}", std::hint::black_box(7));
        }
    });
    let err = rt.block_on(h).unwrap_err();
    assert!(err.is_panic());
    assert!(!err.is_timeout() && !err.is_cancelled());
    assert_eq!(err.to_string(), "task panicked with message \"boom 7\"");
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom 7");

    // The one event thread survived and serves.
    for i in 0..10 {
        assert_eq!(rt.block_on(rt.spawn(async move { i })).unwrap(), i);
    }
    let m = rt.metrics().event;
    assert_eq!(m.panicked, 1);
    assert_eq!(m.completed, 10);
    assert_eq!(m.healthy_threads, 1);
    assert_eq!(m.hijacked_total, 0);
}

#[test]
fn panic_in_a_blocking_job_is_reported() {
    let rt = runtime();
    let err = rt
        .block_on(rt.spawn_blocking(|| -> u8 { panic!("job failed") }))
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(rt.block_on(rt.spawn_blocking(|| 3)).unwrap(), 3);
    assert_eq!(rt.metrics().blocking.panicked, 1);
}

#[test]
#[should_panic(expected = "not a panic")]
fn into_panic_on_another_error_panics() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let h = rt.spawn(std::future::pending::<()>());
    h.abort();
    rt.block_on(h).unwrap_err().into_panic();
}
