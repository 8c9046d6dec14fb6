//! Times every vector at its benign and attack sizes and prints a Markdown
//! table; this is how `attack_size` was calibrated.
//!
//! ```text
//! cargo run -p curfew-attacks --release --example measure
//! cargo run -p curfew-attacks --release --example measure -- yaml-aliases 6 7 8
//! ```
//!
//! With no arguments it covers every vector except `infinite-loop`, which never
//! ends at its attack size. With a vector name and sizes it times just those
//! sizes, for calibration. Handlers run on a thread with a 2 MiB stack, the
//! default for Tokio's workers, so a vector that would overflow a worker's
//! stack shows up here. Peak RSS is the process's high-water mark while the
//! attack payload was handled (Linux only; reset through
//! `/proc/self/clear_refs`). The CPU column is the handler thread's own CPU
//! time (user and system), which competing processes do not inflate; on an
//! idle machine it is close to the wall time.

use std::time::{Duration, Instant};

use curfew_attacks::{Vector, all, by_name};

const WORKER_STACK: usize = 2 << 20;

struct Run {
    elapsed: Duration,
    cpu: Duration,
    outcome: String,
}

/// CPU time (user and system) consumed by the calling thread so far: unlike
/// wall time, it does not grow when other processes compete for the cores.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the handler `times` times on a fresh worker thread and returns the
/// median run.
fn run_on_worker(vector: &'static Vector, body: Vec<u8>, times: usize) -> Run {
    std::thread::Builder::new()
        .name(vector.name.to_owned())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let mut runs: Vec<Run> = (0..times)
                .map(|_| {
                    let cpu_start = thread_cpu_time();
                    let start = Instant::now();
                    let result = (vector.handler)(&body);
                    let elapsed = start.elapsed();
                    let cpu = thread_cpu_time() - cpu_start;
                    let outcome = match result {
                        Ok(summary) => format!("Ok: {summary}"),
                        Err(e) => format!("Err: {e}"),
                    };
                    Run {
                        elapsed,
                        cpu,
                        outcome,
                    }
                })
                .collect();
            runs.sort_by_key(|r| r.elapsed);
            runs.swap_remove(times / 2)
        })
        .expect("spawn a worker")
        .join()
        .expect("the handler panicked")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.1} µs", secs * 1e6)
    }
}

fn fmt_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn short(s: &str) -> String {
    let s = s.replace('|', "/");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// The median of 21 benign runs (they are too quick for one to mean much).
fn benign(vector: &'static Vector) -> Run {
    run_on_worker(vector, vector.benign_payload(), 21)
}

fn attack(vector: &'static Vector, n: usize) -> (usize, Duration, Run, Option<u64>) {
    let start = Instant::now();
    let body = (vector.payload)(n);
    let generated = start.elapsed();
    let len = body.len();
    reset_peak_rss();
    let run = run_on_worker(vector, body, 1);
    (len, generated, run, peak_rss_mib())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "{} cores available; handlers run on a {} MiB stack; load average {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        WORKER_STACK >> 20,
        load_average()
    );

    if let Some(name) = args.first() {
        let vector = by_name(name).unwrap_or_else(|| panic!("no vector called {name}"));
        println!("| {name} n | payload | generate | wall | CPU | peak RSS | outcome |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for n in &args[1..] {
            let n: usize = n.parse().expect("sizes are integers");
            let (len, generated, run, rss) = attack(vector, n);
            println!(
                "| {n} | {} | {} | {} | {} | {} MiB | {} |",
                fmt_bytes(len),
                fmt_duration(generated),
                fmt_duration(run.elapsed),
                fmt_duration(run.cpu),
                rss.unwrap_or(0),
                short(&run.outcome)
            );
        }
        println!("\nload average at the end: {}", load_average());
        return;
    }

    println!(
        "| vector | benign n | benign | attack n | payload | generate | attack wall | attack CPU | peak RSS | attack outcome |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for vector in all() {
        if vector.name == "infinite-loop" {
            continue;
        }
        let b = benign(vector);
        assert!(
            b.outcome.starts_with("Ok"),
            "{}: {}",
            vector.name,
            b.outcome
        );
        let (len, generated, run, rss) = attack(vector, vector.attack_size);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} MiB | {} |",
            vector.name,
            vector.benign_size,
            fmt_duration(b.elapsed),
            vector.attack_size,
            fmt_bytes(len),
            fmt_duration(generated),
            fmt_duration(run.elapsed),
            fmt_duration(run.cpu),
            rss.unwrap_or(0),
            short(&run.outcome)
        );
    }
    println!("\nload average at the end: {}", load_average());
}
