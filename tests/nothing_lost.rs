//! Nothing lost: a randomized mix of 10,000 tasks (completing, panicking,
//! aborted, overrunning, yielding often) where every handle resolves exactly
//! once, with the right kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Complete,
    Panic,
    Abort,
    Overrun,
    Yielding,
    Blocking,
    BlockingOverrun,
}

const TASKS: usize = 10_000;

#[test]
fn every_handle_resolves_exactly_once_with_the_right_kind() {
    let seed: u64 = std::env::var("CURFEW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (set CURFEW_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    // A thousand expected panics: keep them off the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let expected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.ends_with(" panics"));
        if !expected {
            default_hook(info);
        }
    }));

    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .blocking_threads(2)
        .poll_budget(Duration::from_secs(2))
        .job_budget(Duration::from_secs(2))
        .hijack_grace(Duration::ZERO)
        .max_hijacked_threads(16)
        .max_abandoned_threads(64)
        .build()
        .unwrap();
    let handle = rt.handle();

    // How many times each task's body ran to its end.
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..TASKS).map(|_| AtomicU32::new(0)).collect());
    let mut kinds = Vec::with_capacity(TASKS);
    let mut handles = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let kind = match rng.random_range(0..1000) {
            0..=549 => Kind::Complete,
            550..=649 => Kind::Panic,
            650..=749 => Kind::Abort,
            750..=757 => Kind::Overrun,
            758..=949 => Kind::Yielding,
            950..=995 => Kind::Blocking,
            _ => Kind::BlockingOverrun,
        };
        let runs = runs.clone();
        let short = curfew::task::Builder::new()
            .poll_budget(Duration::from_millis(5))
            .job_budget(Duration::from_millis(5));
        let h: curfew::JoinHandle<usize> = match kind {
            Kind::Complete => handle.spawn(async move {
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
            Kind::Panic => handle.spawn(async move {
                if std::hint::black_box(true) {
                    panic!("task {i} panics");
                }
                i
            }),
            Kind::Abort => handle.spawn(async move {
                std::future::pending::<()>().await;
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
            Kind::Overrun => short.spawn_on(&handle, async move {
                // Spin until the watchdog has answered for us, however late
                // a loaded machine lets it run, then some more, so that the
                // thread is hijacked too.
                while curfew::checkpoint().is_ok() {
                    std::hint::spin_loop();
                }
                curfew_suite::spin_for(Duration::from_millis(10));
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
            Kind::Yielding => handle.spawn(async move {
                for _ in 0..20 {
                    curfew::task::yield_now().await;
                }
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
            Kind::Blocking => handle.spawn_blocking(move || {
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
            Kind::BlockingOverrun => short.spawn_blocking_on(&handle, move || {
                // Far past the budget, without using a core.
                std::thread::sleep(Duration::from_millis(500));
                runs[i].fetch_add(1, Ordering::SeqCst);
                i
            }),
        };
        if kind == Kind::Abort {
            h.abort();
        }
        kinds.push(kind);
        handles.push(h);
    }

    let results = rt.block_on(async {
        let mut out = Vec::with_capacity(TASKS);
        for h in handles {
            out.push(
                tokio::time::timeout(Duration::from_secs(60), h)
                    .await
                    .expect("every handle resolves"),
            );
        }
        out
    });

    let mut counts = std::collections::HashMap::new();
    for (i, (kind, res)) in kinds.iter().zip(results).enumerate() {
        *counts.entry(*kind).or_insert(0u64) += 1;
        match (kind, res) {
            (Kind::Complete | Kind::Yielding | Kind::Blocking, Ok(v)) => {
                assert_eq!(v, i);
                assert_eq!(runs[i].load(Ordering::SeqCst), 1, "task {i} ran once");
            }
            (Kind::Panic, Err(e)) => assert!(e.is_panic(), "task {i}: {e:?}"),
            (Kind::Abort, Err(e)) => {
                assert!(e.is_cancelled(), "task {i}: {e:?}");
                assert_eq!(runs[i].load(Ordering::SeqCst), 0);
            }
            (Kind::Overrun | Kind::BlockingOverrun, Err(e)) => {
                assert!(e.is_timeout(), "task {i}: {e:?}");
            }
            (kind, res) => panic!("task {i} ({kind:?}) resolved wrongly: {res:?}"),
        }
    }

    // The runtime's own accounting agrees.
    let m = rt.metrics();
    let n = |k| counts.get(&k).copied().unwrap_or(0);
    assert_eq!(m.event.timeouts, n(Kind::Overrun));
    assert_eq!(m.blocking.timeouts, n(Kind::BlockingOverrun));
    assert_eq!(m.event.panicked, n(Kind::Panic));
    assert_eq!(m.event.completed, n(Kind::Complete) + n(Kind::Yielding));
    assert_eq!(m.blocking.completed, n(Kind::Blocking));
    assert_eq!(
        m.event.spawned + m.blocking.spawned,
        TASKS as u64,
        "every spawn was counted"
    );
}
