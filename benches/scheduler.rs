//! tokio's scheduler benchmarks (`tokio/benches/rt_multi_threaded.rs`), run
//! on tokio and on curfew with the same number of threads, in one binary.
//!
//! Each workload is a criterion group with two functions, `tokio` and
//! `curfew`, so criterion prints them side by side:
//!
//! ```text
//! cargo bench --bench scheduler
//! ```
//!
//! curfew runs with its default budgets (a 100 ms poll budget), so the
//! watchdog is timing every poll, as it does in production.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::sync::oneshot;

const NUM_SPAWN: usize = 10_000;
const STALL: Duration = Duration::from_micros(10);

/// 10,000 spawns from inside a task running on the runtime.
fn spawn_many_local(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_many_local");
    let rem = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::sync_channel(1000);
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| {
                rem.store(NUM_SPAWN, Relaxed);
                let (tx, rem) = (tx.clone(), rem.clone());
                rt.spawn(async move {
                    for _ in 0..NUM_SPAWN {
                        let (tx, rem) = (tx.clone(), rem.clone());
                        tokio::spawn(async move {
                            if 1 == rem.fetch_sub(1, Relaxed) {
                                tx.send(()).unwrap();
                            }
                        });
                    }
                });
                rx.recv().unwrap();
            })
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| {
                rem.store(NUM_SPAWN, Relaxed);
                let (tx, rem) = (tx.clone(), rem.clone());
                rt.spawn(async move {
                    for _ in 0..NUM_SPAWN {
                        let (tx, rem) = (tx.clone(), rem.clone());
                        curfew::spawn(async move {
                            if 1 == rem.fetch_sub(1, Relaxed) {
                                tx.send(()).unwrap();
                            }
                        });
                    }
                });
                rx.recv().unwrap();
            })
        });
    }
    g.finish();
}

/// 10,000 spawns from a thread outside the runtime, workers idle; the
/// handles are then awaited in `block_on`.
fn spawn_many_remote_idle(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_many_remote_idle");
    {
        let rt = common::tokio_rt();
        let mut handles = Vec::with_capacity(NUM_SPAWN);
        g.bench_function("tokio", |b| {
            b.iter(|| {
                for _ in 0..NUM_SPAWN {
                    handles.push(rt.spawn(async {}));
                }
                rt.block_on(async {
                    for h in handles.drain(..) {
                        h.await.unwrap();
                    }
                });
            })
        });
    }
    {
        let rt = common::curfew_rt();
        let mut handles = Vec::with_capacity(NUM_SPAWN);
        g.bench_function("curfew", |b| {
            b.iter(|| {
                for _ in 0..NUM_SPAWN {
                    handles.push(rt.spawn(async {}));
                }
                rt.block_on(async {
                    for h in handles.drain(..) {
                        h.await.unwrap();
                    }
                });
            })
        });
    }
    g.finish();
}

/// The idle pause before each burst of `spawn_burst_block_on`: long enough
/// for every worker (and curfew's watchdog) to park.
const BURST_IDLE: Duration = Duration::from_millis(5);

/// Bursts of 10,000 empty tasks spawned from inside `block_on`, then awaited
/// in order, with the runtime idle (parked) before each burst. Only the
/// burst is timed.
fn spawn_burst_block_on(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_burst_block_on");
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(BURST_IDLE);
                    let start = std::time::Instant::now();
                    rt.block_on(async {
                        let hs: Vec<_> = (0..NUM_SPAWN).map(|_| tokio::spawn(async {})).collect();
                        for h in hs {
                            h.await.unwrap();
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(BURST_IDLE);
                    let start = std::time::Instant::now();
                    rt.block_on(async {
                        let hs: Vec<_> = (0..NUM_SPAWN).map(|_| curfew::spawn(async {})).collect();
                        for h in hs {
                            h.await.unwrap();
                        }
                    });
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

/// As `spawn_many_remote_idle`, while every worker is kept busy by tasks
/// that stall for 10 µs and yield (tokio's `spawn_many_remote_busy1`).
fn spawn_many_remote_busy(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_many_remote_busy");
    let busy_tasks = 2 * common::threads();
    {
        let rt = common::tokio_rt();
        let flag = Arc::new(AtomicBool::new(true));
        for _ in 0..busy_tasks {
            let flag = flag.clone();
            rt.spawn(async move {
                while flag.load(Relaxed) {
                    tokio::task::yield_now().await;
                    common::stall(STALL);
                }
            });
        }
        let mut handles = Vec::with_capacity(NUM_SPAWN);
        g.bench_function("tokio", |b| {
            b.iter(|| {
                for _ in 0..NUM_SPAWN {
                    handles.push(rt.spawn(async {}));
                }
                rt.block_on(async {
                    for h in handles.drain(..) {
                        h.await.unwrap();
                    }
                });
            })
        });
        flag.store(false, Relaxed);
    }
    {
        let rt = common::curfew_rt();
        let flag = Arc::new(AtomicBool::new(true));
        for _ in 0..busy_tasks {
            let flag = flag.clone();
            rt.spawn(async move {
                while flag.load(Relaxed) {
                    curfew::task::yield_now().await;
                    common::stall(STALL);
                }
            });
        }
        let mut handles = Vec::with_capacity(NUM_SPAWN);
        g.bench_function("curfew", |b| {
            b.iter(|| {
                for _ in 0..NUM_SPAWN {
                    handles.push(rt.spawn(async {}));
                }
                rt.block_on(async {
                    for h in handles.drain(..) {
                        h.await.unwrap();
                    }
                });
            })
        });
        flag.store(false, Relaxed);
    }
    g.finish();
}

/// 1,000 rounds of: spawn a task, which spawns a peer and does a oneshot
/// round trip with it.
fn ping_pong(c: &mut Criterion) {
    const NUM_PINGS: usize = 1_000;
    let mut g = c.benchmark_group("ping_pong");
    let rem = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::sync_channel(1000);
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| {
                let (done_tx, rem) = (done_tx.clone(), rem.clone());
                rem.store(NUM_PINGS, Relaxed);
                rt.spawn(async move {
                    for _ in 0..NUM_PINGS {
                        let (done_tx, rem) = (done_tx.clone(), rem.clone());
                        tokio::spawn(async move {
                            let (tx1, rx1) = oneshot::channel();
                            let (tx2, rx2) = oneshot::channel();
                            tokio::spawn(async move {
                                rx1.await.unwrap();
                                tx2.send(()).unwrap();
                            });
                            tx1.send(()).unwrap();
                            rx2.await.unwrap();
                            if 1 == rem.fetch_sub(1, Relaxed) {
                                done_tx.send(()).unwrap();
                            }
                        });
                    }
                });
                done_rx.recv().unwrap();
            })
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| {
                let (done_tx, rem) = (done_tx.clone(), rem.clone());
                rem.store(NUM_PINGS, Relaxed);
                rt.spawn(async move {
                    for _ in 0..NUM_PINGS {
                        let (done_tx, rem) = (done_tx.clone(), rem.clone());
                        curfew::spawn(async move {
                            let (tx1, rx1) = oneshot::channel();
                            let (tx2, rx2) = oneshot::channel();
                            curfew::spawn(async move {
                                rx1.await.unwrap();
                                tx2.send(()).unwrap();
                            });
                            tx1.send(()).unwrap();
                            rx2.await.unwrap();
                            if 1 == rem.fetch_sub(1, Relaxed) {
                                done_tx.send(()).unwrap();
                            }
                        });
                    }
                });
                done_rx.recv().unwrap();
            })
        });
    }
    g.finish();
}

/// 200 tasks, spawned from outside, each yielding 1,000 times.
fn yield_many(c: &mut Criterion) {
    let mut g = c.benchmark_group("yield_many");
    let (tx, rx) = mpsc::sync_channel(common::YIELD_MANY_TASKS);
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| common::yield_many_tokio(&rt, &tx, &rx))
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| common::yield_many_curfew(&rt, &tx, &rx))
        });
    }
    g.finish();
}

/// A chain of 1,000 spawns: each task spawns the next.
fn chained_spawn(c: &mut Criterion) {
    const ITER: usize = 1_000;

    fn tokio_iter(done: mpsc::SyncSender<()>, n: usize) {
        if n == 0 {
            done.send(()).unwrap();
        } else {
            tokio::spawn(async move { tokio_iter(done, n - 1) });
        }
    }

    fn curfew_iter(done: mpsc::SyncSender<()>, n: usize) {
        if n == 0 {
            done.send(()).unwrap();
        } else {
            curfew::spawn(async move { curfew_iter(done, n - 1) });
        }
    }

    let mut g = c.benchmark_group("chained_spawn");
    let (done_tx, done_rx) = mpsc::sync_channel(1000);
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| {
                let done = done_tx.clone();
                rt.spawn(async move { tokio_iter(done, ITER) });
                done_rx.recv().unwrap();
            })
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| {
                let done = done_tx.clone();
                rt.spawn(async move { curfew_iter(done, ITER) });
                done_rx.recv().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = scheduler;
    config = common::criterion();
    targets = spawn_many_local, spawn_many_remote_idle, spawn_burst_block_on,
        spawn_many_remote_busy, ping_pong, yield_many, chained_spawn
}
criterion_main!(scheduler);
