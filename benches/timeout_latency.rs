//! Timeout delivery latency: how long after a budget runs out the caller
//! awaiting the task holds its `TimeoutError`.
//!
//! For each budget (5, 10, 50, 100 ms) and each kind of overrun, it runs a
//! bounded number of trials and prints p50, p99 and max of
//!
//! ```text
//! delivery = (instant the caller's await returns) - (instant the poll started + budget)
//! ```
//!
//! where the poll's start is recorded by the task itself, as its first
//! instruction; or, in the rows marked `from spawn`, as a user sees it:
//!
//! ```text
//! delivery = (instant the caller's await returns) - (instant of the spawn call + budget)
//! ```
//!
//! A blocking job's budget counts from its spawn, so the job rows are always
//! measured from the spawn. Kinds:
//!
//! * `spin/block_on`: an async task spins past its budget (no checkpoint);
//!   the caller is `Runtime::block_on` on the bench thread.
//! * `spin/task`: the same, awaited by another curfew task on the other
//!   event thread (the caller a server would have).
//! * `sleep-job/block_on`, `sleep-job/task`: a `spawn_blocking` job that
//!   sleeps past its job budget.
//! * `spin/task+load`: `spin/task` while two more tasks keep both event
//!   threads busy (yield + 10 µs stall, as tokio's busy benches).
//!
//! The overrunning poll or job stops by itself 10 ms after its budget, so
//! each trial also exercises the hijack (grace 5 ms) and the replacement of
//! the thread.
//!
//! ```text
//! cargo bench --bench timeout_latency
//! ```
//!
//! `CURFEW_BENCH_DEMOTE=0` runs with `Builder::demote_overrunning_polls`
//! off, for an A/B run against the default; `CURFEW_BENCH_INTERVAL_US`
//! sets `Builder::watchdog_interval` (default 500).
//!
//! A trial whose overrun ran to its end (budget + 10 ms) without its caller
//! being answered with a timeout is counted as `missed`, and ranks above
//! every delivered timeout in the percentiles.
//!
//! `CURFEW_BENCH_TRIALS` sets the trials per budget (default 50). Without
//! `--bench` (as under `cargo test --benches`) it runs 2 trials per budget
//! as a smoke test. The target is budget + 1 ms at p99.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const BUDGETS_MS: [u64; 4] = [5, 10, 50, 100];
/// How long an overrunning poll or job keeps going past its budget.
const TAIL: Duration = Duration::from_millis(10);
/// A bound on the whole run, whatever the trial count.
const MAX_TOTAL: Duration = Duration::from_secs(240);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spin,
    SleepJob,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    BlockOn,
    Task,
}

/// One trial's outcome.
enum Sample {
    TimedOut {
        /// Signed, in nanoseconds: negative would mean the timeout came
        /// early.
        delivery_ns: i64,
        /// The elapsed time the `TimeoutError` reported.
        reported: Duration,
    },
    /// The overrun ran to its end (budget + `TAIL`) and its caller got
    /// its output: no timeout was delivered at all.
    Missed,
}

fn run_trial(
    rt: &curfew::Runtime,
    kind: Kind,
    caller: Caller,
    budget: Duration,
    from_spawn: bool,
) -> Sample {
    let started: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let s = started.clone();
    let handle = rt.handle();
    // The caller: spawns the overrunning work and awaits it; returns the
    // instant its await returned.
    let call = async move {
        let spawned = Instant::now();
        let res = match kind {
            Kind::Spin => {
                curfew::task::Builder::new()
                    .poll_budget(budget)
                    .spawn_on(&handle, async move {
                        let t0 = Instant::now();
                        let _ = s.set(t0);
                        while t0.elapsed() < budget + TAIL {
                            std::hint::spin_loop();
                        }
                    })
                    .await
            }
            Kind::SleepJob => {
                curfew::task::Builder::new()
                    .job_budget(budget)
                    .spawn_blocking_on(&handle, move || {
                        let _ = s.set(Instant::now());
                        std::thread::sleep(budget + TAIL);
                    })
                    .await
            }
        };
        let end = Instant::now();
        (res, end, spawned)
    };
    let (res, end, spawned) = match caller {
        Caller::BlockOn => rt.block_on(call),
        // The caller only awaits; it has no budget of its own, so that a
        // slow wake-up shows as a late delivery rather than as a timeout of
        // the caller.
        Caller::Task => rt
            .block_on(
                curfew::task::Builder::new()
                    .unlimited()
                    .spawn_on(&rt.handle(), call),
            )
            .expect("the caller task"),
    };
    let err = match res {
        Ok(()) => return Sample::Missed,
        Err(e) => e,
    };
    let t = err.timeout().expect("a timeout error");
    let start = *started.get().expect("the overrun started");
    let deadline = if from_spawn || kind == Kind::SleepJob {
        spawned + budget
    } else {
        start + budget
    };
    let delivery_ns = if end >= deadline {
        (end - deadline).as_nanos() as i64
    } else {
        -((deadline - end).as_nanos() as i64)
    };
    Sample::TimedOut {
        delivery_ns,
        reported: t.elapsed(),
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(ns: i64) -> String {
    if ns == i64::MAX {
        "missed".to_string()
    } else {
        format!("{:.3}", ns as f64 / 1e6)
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let trials: usize = if bench_mode {
        common::env_or("CURFEW_BENCH_TRIALS", 50) as usize
    } else {
        2
    };
    let began = Instant::now();
    // `CURFEW_BENCH_DEMOTE=0` turns off the demotion of overrunning polls
    // at the timeout, for an A/B run.
    let demote = std::env::var("CURFEW_BENCH_DEMOTE").map_or(true, |v| v != "0");
    // `CURFEW_BENCH_INTERVAL_US`: the watchdog interval (default 500 µs).
    let interval_us = common::watchdog_interval_us();
    println!(
        "timeout delivery latency: {} event threads, 4 pool threads, watchdog interval \
         {interval_us} µs, hijack grace 5 ms, overrunning polls demoted at the timeout: \
         {demote}, {trials} trials per row",
        common::threads()
    );
    println!(
        "delivery = caller's await returned - (poll start + budget), or - (spawn + budget) \
         in the rows `from spawn` (and for jobs, whose budget counts from their spawn); \
         target: p99 <= 1 ms\n"
    );
    println!(
        "| kind | budget (ms) | trials | missed | p50 (ms) | p99 (ms) | max (ms) | min (ms) | reported elapsed p50 (ms) | slowest trial: reported - budget (ms) | p99 within budget + 1 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let rows: [(&str, Kind, Caller, bool, bool); 7] = [
        ("spin/block_on", Kind::Spin, Caller::BlockOn, false, false),
        (
            "spin/block_on from spawn",
            Kind::Spin,
            Caller::BlockOn,
            false,
            true,
        ),
        ("spin/task", Kind::Spin, Caller::Task, false, false),
        (
            "spin/task from spawn",
            Kind::Spin,
            Caller::Task,
            false,
            true,
        ),
        ("spin/task+load", Kind::Spin, Caller::Task, true, false),
        (
            "sleep-job/block_on from spawn",
            Kind::SleepJob,
            Caller::BlockOn,
            false,
            true,
        ),
        (
            "sleep-job/task from spawn",
            Kind::SleepJob,
            Caller::Task,
            false,
            true,
        ),
    ];
    let mut misses = 0;
    'rows: for (label, kind, caller, load, from_spawn) in rows {
        for budget_ms in BUDGETS_MS {
            let budget = Duration::from_millis(budget_ms);
            let rt = common::curfew_builder()
                .thread_name("lat")
                .blocking_threads(4)
                .demote_overrunning_polls(demote)
                .build()
                .expect("curfew runtime");
            let stop = Arc::new(AtomicBool::new(false));
            if load {
                for _ in 0..common::threads() {
                    let stop = stop.clone();
                    rt.spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            curfew::task::yield_now().await;
                            common::stall(Duration::from_micros(10));
                        }
                    });
                }
            }
            let mut d = Vec::with_capacity(trials);
            let mut reported = Vec::with_capacity(trials);
            let mut missed = 0usize;
            // The slowest delivered trial: (delivery, reported elapsed -
            // budget), to tell a late watchdog from a slow wake-up.
            let mut worst: Option<(i64, i64)> = None;
            for _ in 0..trials {
                if began.elapsed() > MAX_TOTAL {
                    println!("(stopped: the run reached its {MAX_TOTAL:?} bound)");
                    stop.store(true, Ordering::Relaxed);
                    break 'rows;
                }
                match run_trial(&rt, kind, caller, budget, from_spawn) {
                    Sample::TimedOut {
                        delivery_ns,
                        reported: r,
                    } => {
                        d.push(delivery_ns);
                        let late = r.as_nanos() as i64 - budget.as_nanos() as i64;
                        if worst.is_none_or(|(w, _)| delivery_ns > w) {
                            worst = Some((delivery_ns, late));
                        }
                        reported.push(r.as_nanos() as i64);
                    }
                    Sample::Missed => missed += 1,
                }
                // Let the overrunning poll or job finish, so trials do not
                // pile hijacked threads onto the two cores.
                std::thread::sleep(TAIL + Duration::from_millis(2));
            }
            stop.store(true, Ordering::Relaxed);
            // A missed timeout counts as a delivery later than any other.
            let n = d.len() + missed;
            d.sort_unstable();
            reported.sort_unstable();
            d.extend(std::iter::repeat_n(i64::MAX, missed));
            let p99 = percentile(&d, 99.0);
            let ok = n > 0 && p99 <= 1_000_000;
            if !ok {
                misses += 1;
            }
            if n == 0 {
                continue;
            }
            println!(
                "| {label} | {budget_ms} | {n} | {missed} | {} | {} | {} | {} | {} | {} | {} |",
                ms(percentile(&d, 50.0)),
                ms(p99),
                ms(*d.last().unwrap()),
                ms(d[0]),
                if reported.is_empty() {
                    "-".to_string()
                } else {
                    ms(percentile(&reported, 50.0))
                },
                worst.map_or("-".to_string(), |(_, late)| ms(late)),
                if ok { "yes" } else { "**no**" },
            );
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
    println!(
        "\n{misses} row(s) over budget + 1 ms at p99; total {:.1} s",
        began.elapsed().as_secs_f64()
    );
}
