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
//!   [`metrics`](Runtime::metrics) as `overdue_threads`. If every event
//!   thread is stuck, queued tasks wait until one comes back. Thread count
//!   never grows without bound.
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
mod driver;
mod enter;
pub mod error;
mod executor;
pub mod fs;
pub mod health;
pub mod metrics;
pub mod policy;
pub mod pool;
mod runtime;
mod slot;
mod sys;
pub mod task;
mod watchdog;

pub use enter::EnterGuard;
pub use error::{BuildError, JoinError, Location, Refusal, TimeoutError};
pub use metrics::RuntimeMetrics;
pub use policy::ClientKey;
pub use runtime::{Builder, DEFAULT_JOB_BUDGET, DEFAULT_POLL_BUDGET, Handle, Runtime};
pub use task::JoinHandle;

use std::future::Future;

/// Spawns an async task under the poll budget, like `tokio::spawn`.
///
/// Inside a curfew task or [`Runtime::block_on`] it spawns on that runtime.
/// Anywhere else, for example in a `#[tokio::main]` program or an axum
/// handler, it spawns on a default runtime that starts on first use (its
/// settings come from the environment, see [`Builder::from_env`]) and the
/// task is polled with the caller's tokio runtime entered.
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
/// Panics if the default runtime is needed and the environment holds an
/// invalid setting; the message names the variable.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    context::with_handle(|h| h.spawn(future))
}

/// Runs a blocking closure on the worker pool under the job budget, like
/// `tokio::task::spawn_blocking`, on the current or the default runtime.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(1).build()?;
/// let digest = rt.block_on(curfew::spawn_blocking(|| {
///     (0..1000u64).fold(0u64, |h, x| h.rotate_left(5) ^ x)
/// }))?;
/// # let _ = digest;
/// # Ok(()) }
/// ```
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    context::with_handle(|h| h.spawn_blocking(f))
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
    context::with_current_task(|t| match t {
        Some(h) if h.is_timed_out() => Err(h.timeout_error()),
        _ => Ok(()),
    })
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
