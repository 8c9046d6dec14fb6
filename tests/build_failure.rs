//! A `build()` that fails partway stops the threads it had already started.
//!
//! The failure is real: the test re-runs itself in a child process whose
//! address space (`RLIMIT_AS`) has room for exactly two more thread stacks of
//! the size asked for, and builds a runtime of four event threads. The third
//! thread cannot start, so `build()` fails after two threads are running;
//! before the fix they stayed alive for good.

#![cfg(target_os = "linux")]

use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "CURFEW_TEST_BUILD_FAILURE_CHILD";
const STACK: usize = 512 << 20;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The process's virtual size in bytes (`VmSize`), which `RLIMIT_AS` bounds.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmSize in kB");
    kib * 1024
}

#[test]
fn a_build_that_fails_late_stops_the_threads_it_started() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_build_that_fails_late_stops_the_threads_it_started",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("build failed late and left no thread behind"),
        "the child did not run the scenario:\n{stdout}\n{stderr}"
    );
}

fn child() {
    // Warm up everything that allocates address space once per process
    // (the allocator's arenas, tokio's globals), so that the limit below is
    // spent on thread stacks.
    drop(
        curfew::Runtime::builder()
            .event_threads(1)
            .blocking_threads(1)
            .build()
            .unwrap(),
    );
    // Threads of the warm-up runtime may still be on their way out after
    // its drop returned: count once the number has settled.
    let mut before = threads();
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = threads();
        if now == before || Instant::now() > settle {
            before = now;
            break;
        }
        before = now;
    }
    // Room for two stacks and half of a third.
    let limit = vm_size() + 2 * STACK as u64 + (STACK as u64) / 2;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one valid `rlimit` for the duration of the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0);

    let err = curfew::Runtime::builder()
        .event_threads(4)
        .blocking_threads(1)
        .thread_stack_size(STACK)
        .build()
        .expect_err("four stacks of 512 MiB do not fit under the limit");
    assert_eq!(err.setting(), "threads", "{err}");

    // `build` has waited for its threads to leave their loops; give the OS a
    // moment to reap them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = threads();
    assert!(
        after <= before,
        "threads left behind by the failed build: {after} against {before} before it: {err}"
    );
    // Threads 1 and 2 had started; the third could not.
    assert!(err.to_string().contains("event thread 3 of 4"), "{err}");
    println!("build failed late and left no thread behind: {err}");
}
