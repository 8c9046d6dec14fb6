//! Tasks hosted on the caller's own tokio runtime, for tests that pause time.
//!
//! A `#[tokio::test]` runs on a current-thread runtime, and one that calls
//! `tokio::time::pause()` relies on that runtime's ordering: a spawned task
//! runs when the test yields, and the clock moves only when every task is
//! idle (auto-advance) or the test advances it. A task on curfew's event
//! threads races the test instead: the test may advance the clock before the
//! task has registered its timer, and the runtime may auto-advance while the
//! task is still running elsewhere.
//!
//! So when [`curfew::spawn`](crate::spawn) is called outside any curfew
//! runtime, from a current-thread tokio runtime whose clock is paused, the
//! task runs on that runtime, as `tokio::spawn` would run it, and a blocking
//! job runs on that runtime's blocking pool, as `tokio::task::spawn_blocking`
//! would (which keeps the paused clock from auto-advancing while the job
//! runs). Both keep the default runtime's budgets, client policy and
//! counters, and are timed on the real clock, not the paused one:
//!
//! * a [`checkpoint`](crate::checkpoint) past the budget returns the
//!   `TimeoutError`, as on curfew's threads;
//! * a poll or job that returns past its budget has its handle answered with
//!   the `TimeoutError`, and its output is dropped.
//!
//! What is lost is the answer *during* an overrunning poll: the thread is
//! the test's own and cannot be replaced, so a poll that never returns hangs
//! the test, as it would under `tokio::spawn`. On a current-thread runtime
//! the awaiting caller shares that thread anyway, so it could not see an
//! earlier answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::context;
use crate::error::Location;
use crate::executor::{GroupId, Runnable};
use crate::runtime::Shared;
use crate::task::{self, Header, JoinHandle};

/// Whether tasks spawned from `tokio`'s context (the current one) should be
/// hosted there: a current-thread runtime whose clock is paused.
///
/// tokio has no query for a paused clock. Its `Instant::now()` reads the
/// real clock unless time is paused, so the test is whether it stands still
/// while the real clock moves. Auto-advance and `advance` happen only on the
/// runtime's own thread between polls, not while this runs inside one. It
/// runs only on current-thread runtimes, and costs two reads of tokio's
/// clock and a few of the real one (until it ticks: tens of nanoseconds).
/// On a system whose clock ticks too coarsely to see within a bounded spin,
/// the answer is no, and tasks run on curfew's threads.
pub(crate) fn hosts_tasks(tokio: &tokio::runtime::Handle) -> bool {
    if tokio.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return false;
    }
    let before = tokio::time::Instant::now();
    let real = std::time::Instant::now();
    let ticked = (0..10_000).any(|_| std::time::Instant::now() != real);
    ticked && tokio::time::Instant::now() == before
}

/// Spawns an async task of `shared`'s runtime on `tokio`'s thread.
pub(crate) fn spawn<F>(
    shared: &Arc<Shared>,
    tokio: tokio::runtime::Handle,
    opts: task::Builder,
    future: F,
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let header = match shared.header(opts, GroupId::Event) {
        Ok(h) => h,
        Err(r) => return shared.refuse(r),
    };
    let host = shared.clone();
    // Each wake-up queues one run of the task on the caller's runtime, in
    // the same place `tokio::spawn` would queue a task it wakes.
    let schedule = move |r: Runnable| {
        let host = host.clone();
        drop(tokio.spawn(async move { context::run_hosted(&host, r) }));
    };
    shared
        .event
        .spawned
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Not registered: the caller's tokio runtime owns the task and drops it
    // when it shuts down, as it drops its own.
    task::spawn_raw(header, future, schedule, None, Runnable::schedule)
}

/// Runs a blocking job of `shared`'s runtime on `tokio`'s blocking pool.
pub(crate) fn spawn_blocking<F, R>(
    shared: &Arc<Shared>,
    tokio: tokio::runtime::Handle,
    opts: task::Builder,
    f: F,
) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let header = match shared.header(opts, GroupId::Blocking) {
        Ok(h) => h,
        Err(r) => return shared.refuse(r),
    };
    let host = shared.clone();
    let schedule = move |r: Runnable| {
        let host = host.clone();
        drop(tokio.spawn_blocking(move || context::run_hosted(&host, r)));
    };
    shared
        .blocking
        .spawned
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    task::spawn_raw(
        header,
        async move { f() },
        schedule,
        None,
        Runnable::schedule,
    )
}

/// A hosted poll or job has run `elapsed` (real time) against its budget:
/// answers its handle with the timeout if the budget is spent, and records
/// it as the watchdog records an overrun. Returns whether it is timed out.
pub(crate) fn check_budget(shared: &Shared, header: &Header, elapsed: Duration) -> bool {
    match header.budget() {
        Some(budget) if elapsed >= budget => {}
        _ => return header.is_timed_out(),
    }
    if header.time_out(elapsed) {
        let group = match header.location {
            Location::EventThread => &shared.event,
            Location::WorkerPool => &shared.blocking,
        };
        group
            .timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cool_off = shared
            .clients
            .strike(header.admitted.client, header.client.as_ref());
        header.wake_join();
        tracing::warn!(
            target: "curfew",
            task = header.name.as_deref().unwrap_or(""),
            client = header.client.as_ref().map(|c| c.as_str()).unwrap_or(""),
            budget_ms = header.budget().map_or(f64::INFINITY, |b| b.as_secs_f64() * 1e3),
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            location = %header.location,
            hosted = true,
            "poll over budget on the caller's paused runtime: answered with a TimeoutError"
        );
        if let (Some(client), Some(cool_off)) = (&header.client, cool_off) {
            crate::policy::log_cool_off(client, cool_off);
        }
    }
    header.is_timed_out()
}
