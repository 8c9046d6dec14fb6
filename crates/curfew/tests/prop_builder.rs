//! Property: any runtime configuration either builds a runtime that runs a
//! task and a job and shuts down, or is refused with a `BuildError` that
//! names its setting. Never a panic, an abort or a hang.
//!
//! The values mix the valid, the edges of each range and the absurd (zero,
//! `usize::MAX`, `Duration::MAX`, NUL bytes, stacks no system can map).
//! Thread counts stay small when valid so that each case costs milliseconds.

use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
struct Settings {
    event_threads: usize,
    blocking_threads: usize,
    poll_budget: Option<Duration>,
    job_budget: Option<Duration>,
    no_default_budgets: bool,
    max_hijacked_threads: Option<usize>,
    max_abandoned_threads: Option<usize>,
    max_blocking_queue: usize,
    hijack_grace: Duration,
    watchdog_interval: Duration,
    time_slice: Duration,
    thread_name: String,
    thread_stack_size: usize,
    max_tracked_clients: usize,
    demote_hijacked: bool,
}

fn threads() -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => 1usize..=3,
        1 => Just(0usize),
        1 => 1025usize..,
    ]
}

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => 1usize..=64,
        1 => Just(0usize),
        1 => any::<usize>(),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        8 => (1u64..=2_000_000).prop_map(Duration::from_micros),
        1 => Just(Duration::ZERO),
        1 => (0u64..=1_000).prop_map(Duration::from_nanos),
        1 => (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        1 => Just(Duration::MAX),
        1 => Just(curfew::MAX_BUDGET),
        1 => Just(curfew::MAX_BUDGET + Duration::from_nanos(1)),
    ]
}

/// Mostly the watchdog's range (100 µs to 100 ms), or anything.
fn interval() -> impl Strategy<Value = Duration> {
    prop_oneof![
        16 => (100u64..=100_000).prop_map(Duration::from_micros),
        1 => duration(),
    ]
}

/// Mostly a budget of 1 ms to 2 s (at least any interval above), or
/// anything.
fn budget() -> impl Strategy<Value = Duration> {
    prop_oneof![
        6 => (100u64..=2_000).prop_map(Duration::from_millis),
        1 => duration(),
    ]
}

fn stack_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => (64usize << 10)..=(8 << 20),
        1 => 0usize..(64 << 10),
        // Sizes that no thread can be started with: `build` must fail
        // cleanly, after starting none or some of its threads.
        1 => (1usize << 46)..=usize::MAX,
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        (threads(), threads(), proptest::option::of(budget())),
        (
            proptest::option::of(budget()),
            any::<bool>(),
            proptest::option::of(count()),
            proptest::option::of(count()),
            count(),
        ),
        (duration(), interval(), duration()),
        (
            prop_oneof![
                16 => "[a-z0-9-]{1,12}",
                1 => "\\PC{0,20}",
                1 => "[a-z]{0,4}\0[a-z]{0,4}",
            ],
            stack_size(),
            count(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (event_threads, blocking_threads, poll_budget),
                (
                    job_budget,
                    no_default_budgets,
                    max_hijacked_threads,
                    max_abandoned_threads,
                    max_blocking_queue,
                ),
                (hijack_grace, watchdog_interval, time_slice),
                (thread_name, thread_stack_size, max_tracked_clients, demote_hijacked),
            )| Settings {
                event_threads,
                blocking_threads,
                poll_budget,
                job_budget,
                no_default_budgets,
                max_hijacked_threads,
                max_abandoned_threads,
                max_blocking_queue,
                hijack_grace,
                watchdog_interval,
                time_slice,
                thread_name,
                thread_stack_size,
                max_tracked_clients,
                demote_hijacked,
            },
        )
}

fn builder(s: &Settings) -> curfew::Builder {
    let mut b = curfew::Runtime::builder()
        .event_threads(s.event_threads)
        .blocking_threads(s.blocking_threads);
    if let Some(d) = s.poll_budget {
        b = b.poll_budget(d);
    }
    if let Some(d) = s.job_budget {
        b = b.job_budget(d);
    }
    if s.no_default_budgets {
        b = b.no_default_budgets();
    }
    if let Some(n) = s.max_hijacked_threads {
        b = b.max_hijacked_threads(n);
    }
    if let Some(n) = s.max_abandoned_threads {
        b = b.max_abandoned_threads(n);
    }
    b.max_blocking_queue(s.max_blocking_queue)
        .hijack_grace(s.hijack_grace)
        .watchdog_interval(s.watchdog_interval)
        .time_slice(s.time_slice)
        .thread_name(s.thread_name.clone())
        .thread_stack_size(s.thread_stack_size)
        .max_tracked_clients(s.max_tracked_clients)
        .demote_hijacked_threads(s.demote_hijacked)
}

/// What one configuration came to.
#[derive(Debug)]
enum Outcome {
    Ran,
    Refused(&'static str),
}

/// Builds, uses and drops a runtime on a thread of its own; a hang shows as
/// a timeout here rather than as a test that never ends.
fn try_settings(s: &Settings) -> Result<Outcome, TestCaseError> {
    let (tx, rx) = mpsc::channel();
    let b = builder(s);
    std::thread::spawn(move || {
        let out = match b.build() {
            Err(e) => {
                let named = e.to_string().contains(e.setting());
                Ok((Outcome::Refused(e.setting()), named))
            }
            Ok(rt) => {
                let task = rt.block_on(rt.spawn(async { 6 * 7 }));
                let job = rt.block_on(rt.spawn_blocking(|| 6 * 7));
                drop(rt);
                match (task, job) {
                    (Ok(42), Ok(42)) => Ok((Outcome::Ran, true)),
                    other => Err(format!("a built runtime failed a trivial task: {other:?}")),
                }
            }
        };
        let _ = tx.send(out);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok((outcome, named))) => {
            prop_assert!(named, "the error does not name its setting: {outcome:?}");
            Ok(outcome)
        }
        Ok(Err(msg)) => Err(TestCaseError::fail(msg)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(TestCaseError::fail("build, use or drop hung for 30 s"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(TestCaseError::fail(
            "build, use or drop panicked (see the thread's message above)",
        )),
    }
}

#[test]
fn any_configuration_builds_or_is_refused() {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let tally: Mutex<BTreeMap<&'static str, usize>> = Mutex::default();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&settings(), |s| {
            let outcome = try_settings(&s)?;
            // A few refusals that must hold whatever the other settings.
            let key = match outcome {
                Outcome::Refused(setting) => setting,
                Outcome::Ran => "(ran)",
            };
            *tally.lock().unwrap().entry(key).or_default() += 1;
            if let Outcome::Ran = outcome {
                prop_assert!(s.event_threads >= 1 && s.event_threads <= 1024);
                prop_assert!(!s.thread_name.is_empty() && !s.thread_name.contains('\0'));
                prop_assert!(s.thread_stack_size >= 64 << 10);
                if !s.no_default_budgets {
                    for b in [s.poll_budget, s.job_budget].into_iter().flatten() {
                        prop_assert!(b <= curfew::MAX_BUDGET, "{b:?} built");
                        prop_assert!(!b.is_zero());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let tally = tally.into_inner().unwrap();
    println!("outcomes: {tally:?}");
    let ran = tally.get("(ran)").copied().unwrap_or(0);
    let refused = tally.values().sum::<usize>() - ran;
    // Both kinds were exercised (the mix makes each likely in every run).
    assert!(ran > 0 && refused > 0, "ran {ran}, refused {refused}");
}
