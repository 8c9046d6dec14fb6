//! Work sharing: a thread does not wake another for the single task it
//! queues itself, since it runs that task next; but if its current poll runs
//! on, the task must not wait for it while another thread sits parked; nor
//! when the thread is written off, or held in the I/O driver by a tokio task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use curfew_suite::{spin_until, wait_until};

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

/// The order in which a test's tasks log their numbers.
type Order = Arc<Mutex<Vec<u32>>>;

fn log(order: &Order, n: u32) {
    order.lock().unwrap().push(n);
}

/// From a poll, spawns (and detaches) one task for each of `numbers`, each
/// logging its number.
fn spawn_loggers(order: &Order, numbers: std::ops::RangeInclusive<u32>) {
    for n in numbers {
        let o = order.clone();
        drop(curfew::spawn(async move { log(&o, n) }));
    }
}

/// Runs `body` as a task on `rt` and returns the order logged once it holds
/// `count` numbers (waiting up to 10 s).
fn logged<F>(rt: &curfew::Runtime, count: usize, body: impl FnOnce(Order) -> F) -> Vec<u32>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let order = Order::default();
    rt.block_on(rt.spawn(body(order.clone()))).unwrap();
    assert!(wait_until(Duration::from_secs(10), || order
        .lock()
        .unwrap()
        .len()
        == count));
    order.lock().unwrap().clone()
}

/// The last task a poll spawns runs first once the poll returns (the
/// thread's `next` slot); those spawned before it keep their order. And a
/// chain of tasks each spawning the next takes the slot at most three times
/// in a row: a task queued before the chain runs within it.
#[test]
fn the_last_task_a_poll_spawns_runs_next_and_a_chain_cannot_starve_the_rest() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let seen = logged(&rt, 3, |o| async move { spawn_loggers(&o, 1..=3) });
    assert_eq!(seen, [3, 1, 2]);

    // A queued task, then a chain of eight: each link spawns the next.
    type Link = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    fn link(o: Order, n: u32) -> Link {
        Box::pin(async move {
            log(&o, n);
            if n < 8 {
                drop(curfew::spawn(link(o, n + 1)));
            }
        })
    }
    let seen = logged(&rt, 9, |o| async move {
        spawn_loggers(&o, 100..=100);
        drop(curfew::spawn(link(o, 1)));
    });
    let queued_at = seen.iter().position(|&n| n == 100).unwrap();
    assert!(
        queued_at <= 3,
        "the queued task waited behind the chain: {seen:?}"
    );
}

/// A task waiting on a child it spawned runs as soon as the child finishes,
/// before the tasks queued on its thread earlier: the child's end wakes it
/// into the thread's `next` slot, although the child's watched poll is over
/// by then. (A connection and its request's handler stay together on one
/// thread; queued behind every connection the driver woke, the connection
/// would keep its handler's task alive all that while.)
#[test]
fn a_task_woken_by_its_finished_child_runs_before_the_tasks_queued_earlier() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let seen = logged(&rt, 5, |o| async move {
        spawn_loggers(&o, 1..=3);
        let c = o.clone();
        curfew::spawn(async move { log(&c, 10) }).await.unwrap();
        log(&o, 20);
    });
    assert_eq!(seen, [10, 20, 1, 2, 3]);
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

#[test]
fn a_task_woken_by_a_hijacked_poll_is_run_by_another_thread() {
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_millis(20))
        .hijack_grace(Duration::ZERO)
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let consumer_ran = Arc::new(AtomicBool::new(false));
    let consumer = rt.spawn({
        let ran = consumer_ran.clone();
        async move {
            rx.await.unwrap();
            ran.store(true, Ordering::SeqCst);
        }
    });
    let hijacked = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let poisoned = rt.spawn({
        let (hijacked, release) = (hijacked.clone(), release.clone());
        async move {
            // Written off first; only then wake the consumer, which lands
            // on this (hijacked) thread's own queue.
            spin_until(&hijacked);
            tx.send(()).unwrap();
            spin_until(&release);
        }
    });
    assert!(curfew_suite::wait_until(Duration::from_secs(20), || {
        rt.metrics().event.hijacked_threads == 1
    }));
    hijacked.store(true, Ordering::SeqCst);
    let ran = curfew_suite::wait_until(Duration::from_secs(20), || {
        consumer_ran.load(Ordering::SeqCst)
    });
    release.store(true, Ordering::SeqCst);
    assert!(ran, "the woken task waited for the hijacked poll to return");
    rt.block_on(consumer).unwrap();
    assert!(rt.block_on(poisoned).unwrap_err().is_timeout());
}

#[test]
fn a_task_spawned_from_a_tokio_task_holding_the_driver_still_runs() {
    let rt = curfew::Runtime::builder().event_threads(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.block_on(async move {
        curfew::spawn(async move {
            // A tokio task runs inside the I/O driver, on the event thread
            // that holds it, and here keeps that thread after spawning.
            drop(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let ran = Arc::new(AtomicBool::new(false));
                let r = ran.clone();
                drop(curfew::spawn(
                    async move { r.store(true, Ordering::SeqCst) },
                ));
                let deadline = Instant::now() + Duration::from_secs(20);
                while !ran.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                tx.send(ran.load(Ordering::SeqCst)).unwrap();
            }));
        })
        .await
        .unwrap();
    });
    let ran = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        ran,
        "the curfew task waited for the tokio task to give the thread back"
    );
}
