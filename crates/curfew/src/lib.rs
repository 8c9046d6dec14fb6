//! Curfew is an async runtime with first-class timeouts. A watchdog thread
//! times every poll of every task and every blocking job, and answers the
//! caller of one that overruns its budget with a [`TimeoutError`] while it is
//! still running, so that one poisoned request cannot stall the other
//! clients.
//!
//! This is the defence against *event handler poisoning* of Davis,
//! Williamson and Lee's Node.cure (USENIX Security 2018), rebuilt for async
//! Rust. `tokio::time::timeout` cannot do this: it fires only when the
//! future it wraps reaches an `.await`, and a poll stuck in a backtracking
//! regex or a quadratic parse never does. Curfew does not wait for the poll
//! to return: it resolves the task's [`JoinHandle`] with the timeout, writes
//! the stuck thread off and starts a replacement, so the runtime keeps its
//! capacity.
//!
//! # Drop-in spawning
//!
//! Where a tokio program calls `tokio::spawn`, call [`curfew::spawn`](spawn).
//! Inside a curfew runtime it spawns there; from a plain tokio context it
//! spawns on a default runtime started on first use, and polls the task with
//! the caller's tokio runtime entered, so tokio sockets, timers and channels
//! work unchanged.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant};
//!
//! let rt = curfew::Runtime::builder()
//!     .event_threads(2)
//!     .poll_budget(Duration::from_millis(25))
//!     .build()?;
//!
//! rt.block_on(async {
//!     // A poisoned handler: it never yields.
//!     let poisoned = curfew::spawn(async {
//!         let start = Instant::now();
//!         while start.elapsed() < Duration::from_millis(500) {
//!             std::hint::spin_loop();
//!         }
//!     });
//!     // An ordinary one, spawned after it.
//!     let ordinary = curfew::spawn(async {
//!         tokio::time::sleep(Duration::from_millis(5)).await;
//!         "served"
//!     });
//!
//!     let err = poisoned.await.unwrap_err();
//!     assert!(err.is_timeout());
//!     println!("{err}"); // task timed out: ran for at least 25.4ms ... poll budget of 25ms
//!     assert_eq!(ordinary.await.unwrap(), "served");
//! });
//! # Ok(()) }
//! ```
//!
//! Outside any curfew or tokio runtime, [`curfew::spawn`](spawn) panics, as
//! `tokio::spawn` does: spawn on a runtime from outside it with
//! [`Runtime::spawn`] or [`Handle::spawn`] (`rt.block_on(rt.spawn(f))`,
//! not `rt.block_on(curfew::spawn(f))`).
//!
//! # Tests that pause time
//!
//! A `#[tokio::test]` that calls `tokio::time::pause()` runs on a
//! current-thread runtime and relies on its ordering: a spawned task runs
//! when the test yields, and the clock moves only when every task waits. A
//! task on curfew's event threads would race the test instead. So, outside
//! a curfew runtime, [`curfew::spawn`](spawn) from a current-thread tokio
//! runtime whose clock is paused runs the task on that runtime's thread, as
//! `tokio::spawn` would, and [`spawn_blocking`] runs the job on its blocking
//! pool, as `tokio::task::spawn_blocking` would. Tests see the order they
//! saw with tokio, every run.
//!
//! The default runtime's budgets, client policy and counters still apply,
//! timed on the real clock (the paused one does not measure work): a
//! [`checkpoint`] past the budget returns the `TimeoutError`, and a poll or
//! job that returns past its budget resolves its handle with it. The one
//! thing such a task lacks is the watchdog's answer *during* a poll that
//! never returns: the thread is the test's own and cannot be replaced. On a
//! current-thread runtime the caller awaiting the handle shares that thread,
//! so it could not see an earlier answer anyway.
//!
//! ```
//! use std::time::Duration;
//!
//! # fn main() {
//! # tokio::runtime::Builder::new_current_thread()
//! #     .enable_all()
//! #     .start_paused(true)
//! #     .build()
//! #     .unwrap()
//! #     .block_on(a_handler_sleeps_a_second_of_paused_time());
//! # }
//! // In a test: #[tokio::test(start_paused = true)]
//! async fn a_handler_sleeps_a_second_of_paused_time() {
//!     let start = tokio::time::Instant::now();
//!     let handler = curfew::spawn(async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         "slept"
//!     });
//!     assert_eq!(handler.await.unwrap(), "slept");
//!     assert_eq!(start.elapsed(), Duration::from_secs(1)); // exactly
//! }
//! ```
//!
//! # Blocking work
//!
//! [`spawn_blocking`] runs a closure on a worker pool under a job budget,
//! with the same [`JoinHandle`]. An overrunning job is answered with a
//! timeout and its thread is abandoned and replaced; the pool's queue is
//! bounded. See the [`pool`] module for the dangling-worker problem this
//! leaves, and how to write jobs that are safe in spite of it.
//!
//! # Cooperative reclaim
//!
//! [`checkpoint`] is one relaxed load. In a task or job whose budget has run
//! out it returns the `TimeoutError`, so a long loop can stop, give its
//! thread back and avoid being abandoned. [`need_yield`] says when a poll has
//! used its time slice, for code that prefers to yield early.
//!
//! # Limits
//!
//! Rust cannot safely interrupt a running thread: signals and
//! `pthread_cancel` unwinding through Rust frames are undefined behaviour.
//! Curfew does not pretend otherwise. A poll that never returns keeps its
//! thread busy, and keeps burning its CPU, until it returns. What curfew
//! guarantees instead:
//!
//! * **The caller is answered** within the budget plus about two watchdog
//!   intervals (500 µs each by default), while the poll is still running.
//! * **Capacity is restored**: after a short grace the stuck thread is
//!   written off and a healthy replacement starts.
//! * **Abandoned threads are capped** ([`Builder::max_hijacked_threads`]).
//!   At the cap, the callers of overrunning tasks are still answered on time
//!   but threads are no longer replaced; the shortfall shows in
//!   [`metrics`](Runtime::metrics) as `overdue_threads`. No thread is kept
//!   in reserve: when every event thread is stuck, a task that has waited in
//!   the queue longer than its budget is answered with a queue timeout
//!   ([`JoinError::is_queue_timeout`]) without running, so every caller
//!   still gets an answer within about its budget, and timers and sockets
//!   keep being driven; tasks run again as soon as a stuck poll returns.
//!   Thread count never grows without bound. (Below the cap, a thread in
//!   its hijack grace is about to be replaced, so queued tasks wait for the
//!   replacement instead.)
//! * **One route cannot reach the cap.** A task whose client key carries a
//!   route ([`ClientKey::with_route`], as `curfew-http` gives every
//!   handler) counts against its route while a poll of it runs past its
//!   budget. At [`Builder::max_overdue_per_route`] such polls (half the cap
//!   by default) the route is refused ([`Refusal::RouteOverdue`]): at the
//!   spawn, and when a task already queued is first polled. So fifty
//!   requests to a handler that loops for good write off a few threads
//!   (the limit, plus those already running the route), are answered
//!   (timeouts for those that ran, refusals for the rest), and the
//!   remaining healthy threads keep serving the other routes. A first poll
//!   also looks again at the client policy when a cool-off has begun since
//!   the task's spawn.
//! * **The client is identified**: every timeout names its task and client,
//!   and a [`policy::ClientPolicy`] can refuse a client after repeated
//!   timeouts.
//! * **CPU comes back** wherever code reaches a [`checkpoint`]; otherwise
//!   only when the poll returns. A hijacked thread then drops its task (its
//!   destructors run) and exits.
//!
//! Real preemption of hostile code needs a process boundary or a Wasm
//! sandbox. The future a thread calls [`Runtime::block_on`] on is not timed
//! (that thread cannot be replaced), and neither is code on threads curfew
//! does not own, such as tokio's own workers.
//!
//! # Sockets and timers
//!
//! A runtime owns a current-thread tokio runtime for I/O and timers, which
//! its event threads drive while idle, as tokio's workers do; no task is
//! polled while its thread holds the driver. Tasks started with
//! `tokio::spawn` from inside a curfew task run on that driver without a
//! budget, so spawn handlers with [`spawn`]. To drive I/O with a tokio
//! runtime of your own instead, see [`Builder::tokio_handle`].
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]

mod context;
mod deferred;
mod driver;
mod enter;
pub mod error;
mod executor;
pub mod fs;
pub mod health;
mod host;
mod inject;
pub mod metrics;
pub mod policy;
pub mod pool;
mod runtime;
mod seqcell;
mod slot;
mod sys;
pub mod task;
mod watchdog;

pub use enter::EnterGuard;
pub use error::{BuildError, JoinError, Location, Refusal, TimeoutError};
pub use metrics::RuntimeMetrics;
pub use policy::ClientKey;
pub use runtime::{Builder, DEFAULT_JOB_BUDGET, DEFAULT_POLL_BUDGET, Handle, MAX_BUDGET, Runtime};
pub use task::JoinHandle;

use std::future::Future;

/// Spawns an async task under the poll budget, like `tokio::spawn`.
///
/// Where the task runs depends on where `spawn` is called:
///
/// * inside a curfew task or [`Runtime::block_on`]: on that runtime;
/// * elsewhere inside a tokio runtime, for example in a `#[tokio::main]`
///   program or an axum handler: on a default runtime that starts on first
///   use (its settings come from the environment, see
///   [`Builder::from_env`]), and the task is polled with the caller's tokio
///   runtime entered;
/// * inside a current-thread tokio runtime whose clock is paused (a
///   `#[tokio::test]` that calls `tokio::time::pause()`): on that runtime's
///   own thread, as `tokio::spawn` would run it, so the test's ordering and
///   its paused clock hold. The default runtime's budgets still apply, on
///   the real clock, at each [`checkpoint`] and when a poll returns; see
///   [Tests that pause time](crate#tests-that-pause-time);
/// * outside any curfew or tokio runtime: it panics, as `tokio::spawn` does.
///
/// # Spawning on a runtime from outside it
///
/// In `rt.block_on(curfew::spawn(f))`, `curfew::spawn(f)` is evaluated
/// before `block_on` enters `rt`, so it is outside every runtime. Had it
/// spawned there, `f` would run on the default runtime, with other budgets
/// and other threads, and none of `rt`'s settings would apply. It panics
/// instead, with a message that names the fix: spawn with [`Runtime::spawn`]
/// or [`Handle::spawn`], as in `rt.block_on(rt.spawn(f))`, or call
/// `curfew::spawn` inside the future given to `block_on`.
///
/// A panic rather than a logged warning: the mistake silently changes
/// which budgets protect the task, a warning goes unread as long as
/// nothing times out, and the same line panics under tokio, so code ported
/// from tokio meets the rule it already knows. The default runtime keeps
/// the use it exists for, the drop-in for `tokio::spawn` in tokio code;
/// its start is logged at the info level (target `curfew`).
///
/// ```
/// #[tokio::main]
/// async fn main() {
///     let (tx, rx) = tokio::sync::oneshot::channel();
///     let handle = curfew::spawn(async move {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         tx.send(7).unwrap();
///     });
///     handle.await.unwrap();
///     assert_eq!(rx.await.unwrap(), 7);
/// }
/// ```
///
/// # Panics
///
/// Panics outside any curfew or tokio runtime (see above), and if the
/// default runtime is needed and the environment holds an invalid setting;
/// the message names the variable.
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    context::with_target("curfew::spawn", |t| t.spawn(task::Builder::new(), future))
}

/// Runs a blocking closure on the worker pool under the job budget, like
/// `tokio::task::spawn_blocking`, on the current or the default runtime.
///
/// It follows the rules of [`spawn`]: outside any curfew or tokio runtime it
/// panics (spawn with [`Runtime::spawn_blocking`] or
/// [`Handle::spawn_blocking`] there), and from a current-thread tokio
/// runtime with a paused clock the job runs on that runtime's blocking pool,
/// which keeps the clock from auto-advancing while the job runs, as
/// `tokio::task::spawn_blocking` does.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(1).build()?;
/// let digest = rt.block_on(async {
///     curfew::spawn_blocking(|| (0..1000u64).fold(0u64, |h, x| h.rotate_left(5) ^ x)).await
/// })?;
/// # let _ = digest;
/// # Ok(()) }
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    context::with_target("curfew::spawn_blocking", |t| {
        t.spawn_blocking(task::Builder::new(), f)
    })
}

/// Returns the [`TimeoutError`] if the current task or job has run past its
/// budget, and `Ok(())` otherwise (including outside any curfew task).
///
/// It costs a thread-local access and one relaxed load, cheap enough for a
/// hot loop. Returning early on the error gives the thread back: a poll that
/// returns within the hijack grace is not abandoned. This is the counterpart
/// of V8's interrupt check in Node.cure.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let rt = curfew::Runtime::builder()
///     .event_threads(1)
///     .poll_budget(Duration::from_millis(20))
///     // Generous, so that the thread comes back even on a loaded machine
///     // that keeps it off its core for a while (the default is 5 ms).
///     .hijack_grace(Duration::from_secs(2))
///     .build()?;
/// let handle = rt.spawn(async {
///     let mut n = 0u64;
///     loop {
///         n = n.wrapping_add(1);
///         if n % 1024 == 0 {
///             curfew::checkpoint()?; // stops the loop once over budget
///         }
///     }
///     #[allow(unreachable_code)]
///     Ok::<(), curfew::TimeoutError>(())
/// });
/// assert!(rt.block_on(handle).unwrap_err().is_timeout());
/// assert_eq!(rt.metrics().event.hijacked_total, 0); // its thread came back
/// # Ok(()) }
/// ```
#[inline]
pub fn checkpoint() -> Result<(), TimeoutError> {
    context::checkpoint()
}

/// Whether the current poll has run longer than its time slice (or its
/// task is over budget), so a cooperative loop should yield soon, like
/// Seastar's `need_preempt()`. Always false outside a curfew thread.
///
/// The watchdog sets the hint when it sees the same poll running for a
/// [`time_slice`](Builder::time_slice); reading it is a thread-local access
/// and two relaxed loads.
///
/// ```
/// # async fn work(_: u32) {}
/// async fn crunch(items: Vec<u32>) {
///     for item in items {
///         work(item).await;
///         if curfew::need_yield() {
///             curfew::task::yield_now().await;
///         }
///     }
/// }
/// ```
#[inline]
pub fn need_yield() -> bool {
    context::with_worker(|w| match w {
        Some(w) => {
            w.slot
                .slice_expired
                .load(std::sync::atomic::Ordering::Relaxed)
                == w.seq()
                || checkpoint().is_err()
        }
        None => false,
    })
}
