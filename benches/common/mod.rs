//! Shared set-up for the benches: both runtimes with the same thread count,
//! and criterion settings that keep a full `cargo bench` short.
#![allow(dead_code)] // each bench target uses a different subset

use std::time::Duration;

use criterion::Criterion;

/// Threads per runtime: event threads for curfew, workers for tokio.
/// Two by default (one per core on the reference machine); override with
/// `CURFEW_BENCH_THREADS`.
pub fn threads() -> usize {
    env_or("CURFEW_BENCH_THREADS", 2) as usize
}

/// A bench setting from the environment: `name`'s value if it is a whole
/// number, else `None`.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A positive bench setting from the environment, or `default` if `name` is
/// unset, zero or not a number.
pub fn env_or(name: &str, default: u64) -> u64 {
    env_u64(name).filter(|&n| n > 0).unwrap_or(default)
}

/// A multi-threaded tokio runtime with [`threads`] workers.
pub fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A curfew runtime with [`threads`] event threads and default budgets.
pub fn curfew_rt() -> curfew::Runtime {
    curfew_builder().build().expect("curfew runtime")
}

/// The builder behind [`curfew_rt`], to adjust before building.
pub fn curfew_builder() -> curfew::Builder {
    curfew::Runtime::builder()
        .event_threads(threads())
        .thread_name("bench")
        .watchdog_interval(Duration::from_micros(watchdog_interval_us()))
}

/// The watchdog interval the benches' curfew runtimes use:
/// `CURFEW_BENCH_INTERVAL_US`, or the runtime's default of 500 µs.
pub fn watchdog_interval_us() -> u64 {
    env_or("CURFEW_BENCH_INTERVAL_US", 500)
}

/// Criterion settings: 20 samples over 3 s after a 1 s warm-up.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// Busy-waits for `d` while yielding the CPU, as tokio's benches' `stall`.
pub fn stall(d: Duration) {
    let now = std::time::Instant::now();
    while now.elapsed() < d {
        std::thread::yield_now();
    }
}

/// CPU time of each thread of this process whose name starts with
/// `prefix`, keyed by `"name (tid)"`: (on-CPU ns from
/// `/proc/self/task/<tid>/schedstat`, utime + stime in clock ticks from
/// `/proc/self/task/<tid>/stat`). Linux only; empty elsewhere.
pub fn thread_cpu(prefix: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_string();
        if !comm.starts_with(prefix) {
            continue;
        }
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let ticks = std::fs::read_to_string(p.join("stat"))
            .ok()
            .and_then(|s| {
                // The fields after `(comm)`, which may hold spaces; utime
                // and stime are fields 14 and 15, so 12 and 13 from here.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        out.insert(
            format!("{comm} ({})", e.file_name().to_string_lossy()),
            (ns, ticks),
        );
    }
    out
}

/// Total on-CPU nanoseconds of the threads whose name starts with `prefix`
/// (threads that exited in between are not counted).
pub fn total_cpu_ns(prefix: &str) -> u64 {
    thread_cpu(prefix).values().map(|v| v.0).sum()
}

/// tokio's `yield_many`: tasks spawned from outside, each yielding this
/// many times.
pub const YIELD_MANY_TASKS: usize = 200;
/// Yields per task in `yield_many`.
pub const YIELD_MANY_YIELDS: usize = 1_000;

/// One round of `yield_many` on tokio; `rx` has room for every task's report.
pub fn yield_many_tokio(
    rt: &tokio::runtime::Runtime,
    tx: &std::sync::mpsc::SyncSender<()>,
    rx: &std::sync::mpsc::Receiver<()>,
) {
    for _ in 0..YIELD_MANY_TASKS {
        let tx = tx.clone();
        rt.spawn(async move {
            for _ in 0..YIELD_MANY_YIELDS {
                tokio::task::yield_now().await;
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..YIELD_MANY_TASKS {
        rx.recv().unwrap();
    }
}

/// One round of `yield_many` on curfew.
pub fn yield_many_curfew(
    rt: &curfew::Runtime,
    tx: &std::sync::mpsc::SyncSender<()>,
    rx: &std::sync::mpsc::Receiver<()>,
) {
    for _ in 0..YIELD_MANY_TASKS {
        let tx = tx.clone();
        rt.spawn(async move {
            for _ in 0..YIELD_MANY_YIELDS {
                curfew::task::yield_now().await;
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..YIELD_MANY_TASKS {
        rx.recv().unwrap();
    }
}
