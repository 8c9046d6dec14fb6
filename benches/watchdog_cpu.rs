//! The watchdog thread's CPU use, idle and busy, read from
//! `/proc/self/task/<tid>/schedstat` (on-CPU nanoseconds) and
//! `/proc/self/task/<tid>/stat` (utime + stime, in clock ticks) for the
//! thread named `<thread_name>-watchdog`. Target: under 1% of a core idle.
//!
//! Phases, each a fixed window on one runtime (2 event threads, 4 pool
//! threads, default budgets):
//!
//! 1. `idle, first 2 s`: from just after `build()` returns, sleep 2 s.
//! 2. `idle, steady`: the next 5 s.
//! 3. `busy`: 4 tasks yield in a loop (and stall 10 µs per poll) for 3 s.
//! 4. `idle after busy`: 0.5 s after the load stopped, a 3 s window.
//!
//! Each phase also prints the runtime's other threads (event, pool, the
//! private tokio I/O thread), and an idle tokio runtime for reference.
//!
//! ```text
//! cargo bench --bench watchdog_cpu
//! ```
//!
//! Without `--bench` (as under `cargo test --benches`) the windows are
//! 10x shorter.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CLK_TCK: f64 = 100.0;

fn report(phase: &str, prefix: &str, f: impl FnOnce()) {
    let before = common::thread_cpu(prefix);
    let t0 = Instant::now();
    f();
    let wall = t0.elapsed();
    let after = common::thread_cpu(prefix);
    let wall_ns = wall.as_nanos() as f64;
    for (name, (ns1, ticks1)) in &after {
        let (ns0, ticks0) = before.get(name).copied().unwrap_or((0, 0));
        let cpu_ns = ns1.saturating_sub(ns0) as f64;
        let ticks = ticks1.saturating_sub(ticks0) as f64;
        let marker = if name.contains("watchdog") { "**" } else { "" };
        println!(
            "| {phase} | {marker}{name}{marker} | {:.3} | {marker}{:.3}%{marker} | {:.2}% |",
            wall.as_secs_f64(),
            100.0 * cpu_ns / wall_ns,
            100.0 * (ticks / CLK_TCK) / wall.as_secs_f64(),
        );
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let scale = if bench_mode { 1.0 } else { 0.1 };
    let secs = |s: f64| Duration::from_secs_f64(s * scale);

    println!(
        "watchdog CPU: {} event threads, 4 pool threads, default budgets, watchdog interval 500 µs",
        common::threads()
    );
    println!("| phase | thread | wall (s) | CPU, schedstat | CPU, stat ticks |");
    println!("| --- | --- | ---: | ---: | ---: |");

    let rt = common::curfew_builder()
        .thread_name("wdcpu")
        .build()
        .expect("curfew runtime");
    report("idle, first 2 s", "wdcpu", || std::thread::sleep(secs(2.0)));
    report("idle, steady", "wdcpu", || std::thread::sleep(secs(5.0)));

    let stop = Arc::new(AtomicBool::new(false));
    report("busy", "wdcpu", || {
        for _ in 0..2 * common::threads() {
            let stop = stop.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    curfew::task::yield_now().await;
                    common::stall(Duration::from_micros(10));
                }
            });
        }
        std::thread::sleep(secs(3.0));
        stop.store(true, Ordering::Relaxed);
    });
    std::thread::sleep(secs(0.5));
    report("idle after busy", "wdcpu", || std::thread::sleep(secs(3.0)));
    let polls = rt.metrics();
    drop(rt);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::threads())
        .thread_name("tokioref")
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio.block_on(async {});
    std::thread::sleep(secs(0.5));
    report("tokio runtime idle (reference)", "tokioref", || {
        std::thread::sleep(secs(3.0))
    });
    drop(tokio);
    println!("\ncurfew metrics at the end: {polls:?}");
}
