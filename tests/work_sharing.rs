//! Work sharing: a thread does not wake another for the single task it
//! queues itself, since it runs that task next; but if its current poll runs
//! on, the task must not wait for it while another thread sits parked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curfew_suite::spin_until;

#[test]
fn a_task_queued_behind_a_long_poll_is_run_by_a_parked_thread() {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .no_default_budgets()
        .build()
        .unwrap();
    // Let both event threads go idle and park.
    std::thread::sleep(Duration::from_millis(100));

    let ran = Arc::new(AtomicBool::new(false));
    let spawner = rt.spawn({
        let ran = ran.clone();
        async move {
            let me = std::thread::current().id();
            let queued = curfew::spawn({
                let ran = ran.clone();
                async move {
                    ran.store(true, Ordering::SeqCst);
                    std::thread::current().id()
                }
            });
            // A long poll that only ends once the queued task has run (or
            // after a generous bound, which fails the test).
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ran.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            (me, ran.load(Ordering::SeqCst), queued)
        }
    });
    let (spawner_thread, ran_during_poll, queued) = rt.block_on(spawner).unwrap();
    assert!(
        ran_during_poll,
        "the queued task waited for the spawner's poll to end"
    );
    let runner_thread = rt.block_on(queued).unwrap();
    assert_ne!(runner_thread, spawner_thread);
}

#[test]
fn a_chain_of_spawns_completes_on_a_busy_runtime() {
    // Each task spawns the next and ends; no task wakes another thread. The
    // chain must still complete while another event thread is busy with a
    // poll that never yields (so it can only run on the spawner's thread).
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .no_default_budgets()
        .build()
        .unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let busy = rt.spawn({
        let release = release.clone();
        async move { spin_until(&release) }
    });

    fn link(n: usize, done: tokio::sync::oneshot::Sender<usize>) {
        if n == 0 {
            let _ = done.send(0);
        } else {
            drop(curfew::spawn(async move { link(n - 1, done) }));
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let chain = rt.spawn(async move {
        link(10_000, tx);
        rx.await.unwrap()
    });
    let r = rt.block_on(chain);
    release.store(true, Ordering::SeqCst);
    assert_eq!(r.unwrap(), 0);
    rt.block_on(busy).unwrap();
}
