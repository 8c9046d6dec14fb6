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
//!
//! Before the criterion groups, the bench runs spawn bursts in processes of
//! their own (`spawn_burst_processes`): a burst's time depends on the state
//! of the process (its heap, where its threads run), which one process per
//! runtime would leave to chance, and two runtimes in one process would
//! share (one's bursts reuse the heap the other's left). Six processes per
//! runtime, tokio's and curfew's taking turns, 31 bursts each.
//! `SCHED_BURST_PROCESSES` and `SCHED_BURST_ROUNDS` change the counts (0
//! processes skips it); a filter that does not match `spawn_burst_processes`
//! skips it too.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
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
            b.iter_custom(|iters| (0..iters).map(|_| burst(&|| tokio_burst(&rt))).sum())
        });
    }
    {
        let rt = common::curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| burst(&|| curfew_burst(&rt))).sum())
        });
    }
    g.finish();
}

fn tokio_burst(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let hs: Vec<_> = (0..NUM_SPAWN).map(|_| tokio::spawn(async {})).collect();
        for h in hs {
            h.await.unwrap();
        }
    })
}

fn curfew_burst(rt: &curfew::Runtime) {
    rt.block_on(async {
        let hs: Vec<_> = (0..NUM_SPAWN).map(|_| curfew::spawn(async {})).collect();
        for h in hs {
            h.await.unwrap();
        }
    })
}

/// One burst after an idle pause; returns the burst's time.
fn burst(run: &dyn Fn()) -> Duration {
    std::thread::sleep(BURST_IDLE);
    let start = std::time::Instant::now();
    run();
    start.elapsed()
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
/// Set in the child processes of `spawn_burst_processes`: the runtime
/// (`tokio` or `curfew`) and the number of rounds, as `curfew:31`.
const BURST_CHILD: &str = "SCHED_BURST_CHILD";

/// A child of `spawn_burst_processes`: one runtime, `rounds` bursts, each
/// burst's time in ms on a line of its own on stdout.
fn burst_child(spec: &str) {
    let (runtime, rounds) = spec
        .split_once(':')
        .and_then(|(r, n)| Some((r, n.parse::<usize>().ok()?)))
        .expect("SCHED_BURST_CHILD: runtime:rounds");
    let times: Vec<Duration> = match runtime {
        "tokio" => {
            let rt = common::tokio_rt();
            (0..rounds).map(|_| burst(&|| tokio_burst(&rt))).collect()
        }
        "curfew" => {
            let rt = common::curfew_rt();
            (0..rounds).map(|_| burst(&|| curfew_burst(&rt))).collect()
        }
        other => panic!("SCHED_BURST_CHILD: unknown runtime {other}"),
    };
    for t in times {
        println!("{:.4}", t.as_secs_f64() * 1e3);
    }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn env_count(name: &str, default: usize) -> usize {
    common::env_u64(name).map_or(default, |n| n as usize)
}

/// Runs one burst process and returns its times.
fn burst_process(exe: &std::path::Path, runtime: &str, rounds: usize) -> Vec<f64> {
    let out = std::process::Command::new(exe)
        .env(BURST_CHILD, format!("{runtime}:{rounds}"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start a burst process");
    assert!(
        out.status.success(),
        "{runtime} burst process: {}",
        out.status
    );
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("a burst time"))
        .collect();
    assert_eq!(
        times.len(),
        rounds,
        "{runtime} burst process: rounds reported"
    );
    times
}

/// Spawn bursts from `block_on`, each runtime alone in its own processes,
/// tokio's and curfew's processes taking turns (see the module docs).
/// Prints each process's median, then the median and the spread (p10 to
/// p90) of all rounds of each runtime.
fn spawn_burst_processes() {
    let processes = env_count("SCHED_BURST_PROCESSES", 6);
    let rounds = env_count("SCHED_BURST_ROUNDS", 31).max(1);
    if processes == 0 {
        return;
    }
    println!(
        "spawn_burst_processes: {processes} processes x {rounds} rounds per runtime, ms per burst"
    );
    let exe = std::env::current_exe().expect("the bench's own path");
    let (mut all_t, mut all_c) = (Vec::new(), Vec::new());
    for p in 0..processes {
        let (mut t, mut c) = if p % 2 == 0 {
            let t = burst_process(&exe, "tokio", rounds);
            (t, burst_process(&exe, "curfew", rounds))
        } else {
            let c = burst_process(&exe, "curfew", rounds);
            (burst_process(&exe, "tokio", rounds), c)
        };
        let (tm, cm) = (quantile(&mut t, 0.5), quantile(&mut c, 0.5));
        println!(
            "  pair {p}: tokio {tm:.2}, curfew {cm:.2} ({:.2}x)",
            cm / tm
        );
        all_t.extend(t);
        all_c.extend(c);
    }
    let spread = |v: &mut [f64]| (quantile(v, 0.1), quantile(v, 0.5), quantile(v, 0.9));
    let (t10, t50, t90) = spread(&mut all_t);
    let (c10, c50, c90) = spread(&mut all_c);
    println!(
        "  tokio:  median {t50:.2}, p10-p90 {t10:.2}-{t90:.2} (width {:.2})",
        t90 - t10
    );
    println!(
        "  curfew: median {c50:.2}, p10-p90 {c10:.2}-{c90:.2} (width {:.2})",
        c90 - c10
    );
    println!(
        "  curfew/tokio: median {:.2}x, width {:.2}x",
        c50 / t50,
        (c90 - c10) / (t90 - t10)
    );
}

/// Whether the command line's filter (criterion's first free argument), if
/// any, matches `name`.
fn filter_matches(name: &str) -> bool {
    const TAKES_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--profile-time",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut free = args.iter().enumerate().filter(|(i, a)| {
        !a.starts_with('-') && (*i == 0 || !TAKES_VALUE.contains(&args[i - 1].as_str()))
    });
    free.next().is_none_or(|(_, f)| name.contains(f.as_str()))
}

fn main() {
    if let Ok(spec) = std::env::var(BURST_CHILD) {
        burst_child(&spec);
        return;
    }
    if filter_matches("spawn_burst_processes") {
        spawn_burst_processes();
    }
    scheduler();
    Criterion::default().configure_from_args().final_summary();
}
