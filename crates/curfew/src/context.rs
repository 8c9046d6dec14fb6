//! Thread-local context: which runtime `curfew::spawn` targets, which slot
//! this thread publishes its polls in, and which task is being polled.

use std::cell::{Cell, RefCell};

use crate::executor::WorkerCtx;
use crate::runtime::Handle;
use crate::slot::PollEnd;
use crate::task::Header;

struct Context {
    /// The runtime `curfew::spawn` uses: set on curfew's own threads and
    /// inside `block_on`.
    runtime: RefCell<Option<Handle>>,
    /// The worker loop running on this thread, if it is a curfew thread.
    worker: Cell<*const WorkerCtx>,
    /// The task being polled right now, for `checkpoint()`.
    task: Cell<*const Header>,
}

thread_local! {
    static CONTEXT: Context = const {
        Context {
            runtime: RefCell::new(None),
            worker: Cell::new(std::ptr::null()),
            task: Cell::new(std::ptr::null()),
        }
    };
}

/// Restores the previous runtime when dropped.
pub(crate) struct RuntimeGuard {
    prev: Option<Handle>,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let _ = CONTEXT.try_with(|c| *c.runtime.borrow_mut() = prev);
    }
}

/// Makes `handle` the runtime `curfew::spawn` uses on this thread.
pub(crate) fn enter_runtime(handle: Handle) -> RuntimeGuard {
    let prev = CONTEXT.with(|c| c.runtime.borrow_mut().replace(handle));
    RuntimeGuard { prev }
}

/// Runs `f` with the current runtime's handle, or the default runtime's.
pub(crate) fn with_handle<R>(f: impl FnOnce(&Handle) -> R) -> R {
    CONTEXT.with(|c| match &*c.runtime.borrow() {
        Some(h) => f(h),
        None => f(crate::runtime::default_handle()),
    })
}

/// The current runtime's handle, if this thread is inside one.
pub(crate) fn try_current() -> Option<Handle> {
    CONTEXT
        .try_with(|c| c.runtime.borrow().clone())
        .ok()
        .flatten()
}

/// Whether this thread is one of curfew's event or pool threads.
pub(crate) fn on_worker_thread() -> bool {
    CONTEXT.with(|c| !c.worker.get().is_null())
}

/// Clears the worker pointer when the worker loop ends.
pub(crate) struct WorkerGuard(());

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        let _ = CONTEXT.try_with(|c| c.worker.set(std::ptr::null()));
    }
}

/// Registers the worker loop that runs on this thread.
///
/// The caller keeps `worker` alive and in place for as long as the guard
/// lives; the guard clears the pointer before `worker` can go away.
pub(crate) fn enter_worker(worker: &WorkerCtx) -> WorkerGuard {
    CONTEXT.with(|c| c.worker.set(worker));
    WorkerGuard(())
}

/// Runs `f` with this thread's worker loop, if it has one.
#[inline]
pub(crate) fn with_worker<R>(f: impl FnOnce(Option<&WorkerCtx>) -> R) -> R {
    CONTEXT.with(|c| {
        let w = c.worker.get();
        // SAFETY: the pointer is set by `enter_worker` from a `WorkerCtx`
        // that the worker loop keeps alive until its `WorkerGuard` clears the
        // pointer, and it is only read on this same thread.
        f(unsafe { w.as_ref() })
    })
}

/// Polls a task under the watchdog: publishes the poll in this thread's
/// slot, makes the task current for `checkpoint()`, runs `poll`, then ends
/// the poll and reports whether the watchdog fired.
///
/// Cost on top of `poll`: one thread-local access, three plain stores, one
/// compare-exchange, and a check of two flags (one thread-local, one shared
/// and read-mostly) that ask for a clock read on the first poll after the
/// thread woke from a park and while the watchdog is parked. `poll` must not
/// unwind (the caller catches panics inside it), so the end of the poll is
/// always published.
#[inline]
pub(crate) fn poll_under_watchdog<R>(header: &Header, poll: impl FnOnce() -> R) -> (R, PollEnd) {
    CONTEXT.with(|c| {
        let prev_task = c.task.replace(header);
        let w = c.worker.get();
        let out = if w.is_null() {
            (poll(), PollEnd::InTime)
        } else {
            // SAFETY: see `with_worker`.
            let w = unsafe { &*w };
            let seq = w.next_seq();
            w.stamp_poll(seq);
            let slot = &w.slot.state;
            slot.begin(seq, header.budget_code, header.client_idx, header);
            let r = poll();
            let end = slot.end(seq, header.budget_code);
            w.slot.count_poll();
            (r, end)
        };
        c.task.set(prev_task);
        out
    })
}

/// Counts a finished task on this thread's slot.
pub(crate) fn count_finished(panicked: bool) {
    with_worker(|w| {
        if let Some(w) = w {
            w.slot.count_finished(panicked);
        }
    });
}

/// Runs `f` with the task being polled on this thread, if any.
#[inline]
pub(crate) fn with_current_task<R>(f: impl FnOnce(Option<&Header>) -> R) -> R {
    CONTEXT.with(|c| {
        let t = c.task.get();
        // SAFETY: `poll_under_watchdog` sets the pointer for the duration of
        // a poll, during which the task's allocation (and so its header) is
        // kept alive by the running `Runnable`, and restores the previous
        // value before returning. It is only read on this thread.
        f(unsafe { t.as_ref() })
    })
}
