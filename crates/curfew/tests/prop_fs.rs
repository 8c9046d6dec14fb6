//! Property: `fs::read_limited` of a file of any size with any limit reads
//! the file exactly, refuses it as too large, or times out at the job
//! budget. Never a panic, an abort (a sparse file that claims terabytes used
//! to abort the process) or a hang.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const BUDGET: Duration = Duration::from_millis(20);

/// File sizes: small ones written with data, and sparse ones that claim
/// gigabytes to a terabyte (far more than can be read within the budget).
fn file_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=300_000,
        1 => Just(65_536u64),
        1 => (1u64 << 32)..=(1u64 << 40),
    ]
}

/// Limits: around the file's size, small, or anything up to `usize::MAX`.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..=300_000,
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn read_limited_reads_refuses_or_times_out_for_any_size_and_limit() {
    let runtime = |budget| {
        curfew::Runtime::builder()
            .event_threads(1)
            .blocking_threads(2)
            .job_budget(budget)
            .hijack_grace(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    // Sparse files are read under a short budget (memory grows with what
    // is read until it runs out); real ones under one that a loaded machine
    // cannot miss.
    let short = runtime(BUDGET);
    let generous = runtime(Duration::from_secs(10));
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "curfew-prop-fs-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(file_len(), limit(), 0usize..=3),
        |(len, limit, offset)| {
            // Also a limit exactly at, or just around, the file's size.
            let limit = match offset {
                1 => usize::try_from(len).unwrap_or(usize::MAX),
                2 => usize::try_from(len).unwrap_or(usize::MAX).saturating_sub(1),
                3 => usize::try_from(len).unwrap_or(usize::MAX).saturating_add(1),
                _ => limit,
            };
            let path = dir.join(format!("f{}", case.fetch_add(1, Ordering::Relaxed)));
            let sparse = len > 300_000 && len != 65_536;
            let data = if sparse {
                std::fs::File::create(&path).unwrap().set_len(len).unwrap();
                Vec::new()
            } else {
                let data = pattern(len as usize);
                std::fs::write(&path, &data).unwrap();
                data
            };
            let rt = if sparse { &short } else { &generous };
            let got = rt.block_on(curfew::fs::read_limited(path.clone(), limit));
            std::fs::remove_file(&path).unwrap();
            let too_large = len > limit as u64;
            match got {
                Ok(bytes) => {
                    prop_assert!(!too_large, "{len} bytes read under a limit of {limit}");
                    prop_assert!(!sparse, "a {len}-byte file read within {BUDGET:?}");
                    prop_assert!(bytes == data, "{len} bytes read wrong");
                }
                Err(e) if e.kind() == ErrorKind::FileTooLarge => {
                    prop_assert!(
                        too_large,
                        "{len} bytes refused under a limit of {limit}: {e}"
                    );
                }
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    // A job that never started: on a loaded machine, the
                    // earlier cases' jobs can still hold both pool threads
                    // (their grace is long) past this one's short budget.
                    // It says so, and read nothing.
                    let never_started = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<curfew::TimeoutError>())
                        .is_some_and(curfew::TimeoutError::is_queue_timeout);
                    // Otherwise only a file too big to read within the budget.
                    prop_assert!(
                        sparse && (!too_large || never_started),
                        "{len} bytes, limit {limit}: {e}"
                    );
                }
                Err(e) => prop_assert!(false, "{len} bytes, limit {limit}: {e}"),
            }
            Ok(())
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
    result.unwrap();
}
