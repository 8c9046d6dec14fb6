//! The worker pool's queue bound holds under concurrent spawners: the place
//! in the queue is reserved atomically, so many threads spawning at once
//! never queue more than `max_blocking_queue` jobs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

#[test]
fn concurrent_spawners_never_exceed_the_queue_bound() {
    const CAP: usize = 16;
    const SPAWNERS: usize = 16;
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .max_blocking_queue(CAP)
        .job_budget(Duration::from_secs(60))
        .build()
        .unwrap();
    for round in 0..200 {
        // Hold the only pool thread, so that every accepted job stays queued.
        let release = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let r = release.clone();
        let holder = rt.spawn_blocking(move || {
            started_tx.send(()).unwrap();
            while !r.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();

        let barrier = Arc::new(Barrier::new(SPAWNERS));
        let spawners: Vec<_> = (0..SPAWNERS)
            .map(|_| {
                let (handle, barrier) = (rt.handle(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..64)
                        .map(|_| handle.spawn_blocking(|| ()))
                        .filter(|h| !h.is_finished())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let accepted: Vec<_> = spawners
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect();
        assert!(
            accepted.len() <= CAP,
            "round {round}: {} jobs queued past a bound of {CAP}",
            accepted.len()
        );
        assert!(!accepted.is_empty());
        release.store(true, Ordering::SeqCst);
        rt.block_on(holder).unwrap();
        for h in accepted {
            rt.block_on(h).unwrap();
        }
    }
}
