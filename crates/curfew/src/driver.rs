//! The I/O and timer driver of a runtime that owns one.
//!
//! A runtime built without [`Builder::tokio_handle`] owns a current-thread
//! tokio runtime for its sockets and timers, and its event threads drive it
//! themselves, as tokio's own workers do: an event thread with nothing to run
//! parks *in* the driver (`epoll_wait`), so a readiness event wakes the task
//! on that thread, which queues it locally and runs it, with no hop through
//! another thread. One thread at a time holds the driver (tokio hands it to
//! the next parked thread when the holder leaves); the others wait for work
//! or for the driver.
//!
//! A task's poll never runs inside the driver: the driver is held only by a
//! thread that is parked, so a poisoned poll cannot hold up I/O for the rest
//! of the runtime (compare tokio#6315). When every event thread stays busy,
//! the watchdog notices that no thread has entered the driver for a whole
//! interval and asks the next thread between polls to give it one
//! non-blocking turn, so I/O and timers still advance, about once a
//! millisecond (tokio's workers do the same every 61 tasks). If no thread
//! takes that turn within another interval and every event thread is stuck
//! (in a poll past its budget, or written off), a helper thread drives the
//! driver until an event thread enters it again: timers keep firing, and a
//! `Runtime::block_on` waiting on one still wakes, however many event
//! threads are stuck.
//!
//! `Handle::block_on` of this tokio runtime, called inside a curfew task,
//! does not drive it (only `Runtime::block_on` can drive a current-thread
//! runtime); it relies on the other event threads, as any blocking call in
//! a task does.
//!
//! Tasks spawned with `tokio::spawn` from inside a curfew task land on this
//! runtime and run inside the driver, on whichever event thread holds it:
//! they are not under any budget. Spawn with `curfew::spawn` instead.
//!
//! [`Builder::tokio_handle`]: crate::Builder::tokio_handle

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::thread::Thread;

use arc_swap::ArcSwapOption;
use futures::task::AtomicWaker;

/// A current-thread tokio runtime that event threads drive while idle.
pub(crate) struct IoDriver {
    /// Taken out at shutdown; each thread inside the driver holds its own
    /// reference, so the runtime is shut down only after the last one left.
    rt: ArcSwapOption<OwnedRuntime>,
    handle: tokio::runtime::Handle,
    /// Threads inside the driver (parked in it or taking a turn).
    inside: AtomicUsize,
    /// Times a thread has left the driver.
    turns: AtomicU64,
    /// Set by the watchdog when no thread entered the driver for an
    /// interval; taken by the first event thread between polls.
    starved: AtomicBool,
    /// The watchdog's last look at `turns`.
    seen_turns: AtomicU64,
    /// Set by the watchdog while the helper thread should drive.
    helping: AtomicBool,
    /// Wakes the helper out of the driver when it should stop.
    help_waker: AtomicWaker,
    /// The helper thread, started on first need.
    helper: OnceLock<Thread>,
    /// Set by `close`.
    closed: AtomicBool,
}

/// Shuts the tokio runtime down without waiting when the last reference
/// goes, from whichever thread that is (even inside an async context).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

/// See [`IoDriver::hold`].
pub(crate) struct DriverRef(#[allow(dead_code)] std::sync::Arc<OwnedRuntime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl IoDriver {
    pub(crate) fn new(thread_name: &str) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .thread_name(format!("{thread_name}-io"))
            .enable_all()
            .build()?;
        Ok(Self {
            handle: rt.handle().clone(),
            rt: ArcSwapOption::from_pointee(OwnedRuntime(Some(rt))),
            inside: AtomicUsize::new(0),
            turns: AtomicU64::new(0),
            starved: AtomicBool::new(false),
            seen_turns: AtomicU64::new(u64::MAX),
            helping: AtomicBool::new(false),
            help_waker: AtomicWaker::new(),
            helper: OnceLock::new(),
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Drives I/O and timers on the calling thread until `until` completes.
    /// Returns `false`, without running `until`, once the driver has been
    /// shut down.
    ///
    /// Must not be called from inside a tokio runtime (an event thread calls
    /// it only between polls).
    pub(crate) fn drive_until(&self, until: impl Future<Output = ()>) -> bool {
        let Some(rt) = self.rt.load_full() else {
            return false;
        };
        let Some(tokio_rt) = rt.0.as_ref() else {
            return false;
        };
        self.inside.fetch_add(1, Ordering::SeqCst);
        tokio_rt.block_on(until);
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.turns.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// One non-blocking turn of the driver: ready I/O and expired timers
    /// wake their tasks, and up to 61 `tokio::spawn`ed tasks run. If another
    /// thread holds the driver, returns at once (that thread is driving).
    pub(crate) fn turn(&self) {
        self.drive_until(YieldOnce(false));
    }

    /// Whether the watchdog asked for a turn; clears the request.
    #[inline]
    pub(crate) fn take_starved(&self) -> bool {
        self.starved.load(Ordering::Relaxed) && self.starved.swap(false, Ordering::Relaxed)
    }

    /// Called by the watchdog every interval while any thread is awake:
    /// asks for a turn if no event thread was inside the driver since last
    /// time. Returns whether the helper thread should drive: the turn asked
    /// for last time has not been taken.
    pub(crate) fn check(&self) -> bool {
        let turns = self.turns.load(Ordering::Relaxed);
        let last = self.seen_turns.swap(turns, Ordering::Relaxed);
        if self.inside.load(Ordering::SeqCst) == 0 && turns == last {
            self.starved.swap(true, Ordering::Relaxed)
        } else {
            false
        }
    }

    /// Watchdog: the helper should drive. Returns false if it already was.
    pub(crate) fn start_helping(&self) -> bool {
        !self.helping.swap(true, Ordering::AcqRel)
    }

    /// Watchdog: an event thread drives again; the helper leaves the driver.
    pub(crate) fn stop_helping(&self) {
        if self.helping.swap(false, Ordering::AcqRel) {
            self.help_waker.wake();
        }
    }

    pub(crate) fn helper_thread(&self) -> Option<&Thread> {
        self.helper.get()
    }

    pub(crate) fn set_helper_thread(&self, t: Thread) {
        let _ = self.helper.set(t);
    }

    /// The helper thread's loop: drive while asked to, park otherwise, and
    /// return once the driver is closed.
    pub(crate) fn help(&self) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            if !self.helping.load(Ordering::Acquire) {
                std::thread::park();
                continue;
            }
            let Some(rt) = self.rt.load_full() else {
                return;
            };
            let Some(tokio_rt) = rt.0.as_ref() else {
                return;
            };
            // Not counted in `inside` or `turns`: those say whether an event
            // thread drives, which is what ends the help.
            tokio_rt.block_on(Helping(self));
        }
    }

    /// A reference to the driver's tokio runtime that keeps it from shutting
    /// down, held by each runtime thread for its whole life (`None` once the
    /// driver is closed). A thread still inside a task's poll when the
    /// runtime shuts down (a background shutdown does not wait for it) may
    /// touch a timer or a socket of that runtime; tokio panics if it has
    /// shut down by then.
    pub(crate) fn hold(&self) -> Option<DriverRef> {
        self.rt.load_full().map(DriverRef)
    }

    /// Drops the runtime's own reference; the tokio runtime shuts down (its
    /// `tokio::spawn`ed tasks are dropped) when the last runtime thread has
    /// exited ([`hold`](Self::hold)). The helper thread leaves and exits.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.helping.store(false, Ordering::Release);
        self.help_waker.wake();
        if let Some(t) = self.helper.get() {
            t.unpark();
        }
        self.rt.store(None);
    }
}

/// Completes when the helper should leave the driver.
struct Helping<'a>(&'a IoDriver);

impl Future for Helping<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let done =
            || !self.0.helping.load(Ordering::Acquire) || self.0.closed.load(Ordering::Acquire);
        if done() {
            return Poll::Ready(());
        }
        self.0.help_waker.register(cx.waker());
        if done() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Pending once (after waking itself), then ready: makes `block_on` give
/// the driver exactly one non-blocking poll.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl std::fmt::Debug for IoDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoDriver")
            .field("inside", &self.inside.load(Ordering::Relaxed))
            .field("turns", &self.turns.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
