//! A full pool queue refuses jobs with a clear error instead of queueing
//! without bound.

use std::time::Duration;

#[test]
fn jobs_past_the_queue_bound_are_refused() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .max_blocking_queue(4)
        // Far from the point: the jobs wait in the queue, their budgets
        // counting, while the test fills it and checks the refusal.
        .job_budget(Duration::from_secs(30))
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    // Occupy the one thread, then fill the queue.
    let busy = rt.spawn_blocking(move || {
        rx.lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20))
            .ok();
    });
    assert!(curfew_suite::wait_until(Duration::from_secs(10), || {
        rt.metrics().blocking.queue_depth == 0
    }));
    let queued: Vec<_> = (0..4).map(|i| rt.spawn_blocking(move || i)).collect();
    let refused = rt.spawn_blocking(|| 99);
    let err = rt.block_on(refused).unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    assert_eq!(
        err.refusal(),
        Some(&curfew::Refusal::QueueFull { capacity: 4 })
    );
    assert!(err.to_string().contains("queue is full"), "{err}");
    assert_eq!(rt.metrics().refused, 1);

    // Once the thread is free the queued jobs run, and room comes back.
    tx.send(()).unwrap();
    rt.block_on(busy).unwrap();
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(rt.block_on(h).unwrap(), i);
    }
    assert_eq!(rt.block_on(rt.spawn_blocking(|| 7)).unwrap(), 7);
}
