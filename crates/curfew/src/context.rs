//! Thread-local context: which runtime `curfew::spawn` targets, which slot
//! this thread publishes its polls in, and which task is being polled.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::TimeoutError;
use crate::executor::{Runnable, WorkerCtx};
use crate::runtime::{Handle, Shared};
use crate::slot::PollEnd;
use crate::task::{self, Header, JoinHandle};

struct Context {
    /// The runtime `curfew::spawn` uses: set on curfew's own threads and
    /// inside `block_on`.
    runtime: RefCell<Option<Handle>>,
    /// The worker loop running on this thread, if it is a curfew thread.
    worker: Cell<*const WorkerCtx>,
    /// The task being polled right now, for `checkpoint()`.
    task: Cell<*const Header>,
    /// The runtime of the hosted task this thread is running (see
    /// [`crate::host`]), while it runs it.
    host: Cell<*const Shared>,
    /// When the hosted poll running on this thread began.
    hosted_since: Cell<Option<Instant>>,
}

thread_local! {
    static CONTEXT: Context = const {
        Context {
            runtime: RefCell::new(None),
            worker: Cell::new(std::ptr::null()),
            task: Cell::new(std::ptr::null()),
            host: Cell::new(std::ptr::null()),
            hosted_since: Cell::new(None),
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

/// Where `curfew::spawn` and its kin put a task.
pub(crate) enum Target<'a> {
    /// On this runtime's threads: the current one, or the default one.
    Runtime(&'a Handle),
    /// On the caller's tokio runtime (a current-thread one with its clock
    /// paused), under the default runtime's budgets: see [`crate::host`].
    Host(&'a Handle, tokio::runtime::Handle),
}

impl Target<'_> {
    pub(crate) fn spawn<F>(self, opts: task::Builder, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Target::Runtime(h) => h.spawn_with(opts, future),
            Target::Host(h, tokio) => crate::host::spawn(&h.shared, tokio, opts, future),
        }
    }

    pub(crate) fn spawn_blocking<F, R>(self, opts: task::Builder, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Target::Runtime(h) => h.spawn_blocking_with(opts, f),
            Target::Host(h, tokio) => crate::host::spawn_blocking(&h.shared, tokio, opts, f),
        }
    }
}

/// Runs `f` with where `what` (a spawning function, for the panic message)
/// puts a task: the current curfew runtime; outside one, the default
/// runtime, or the caller's tokio runtime if it is a current-thread one with
/// its clock paused.
///
/// # Panics
///
/// Panics outside any curfew or tokio runtime, where the task would start
/// (or land on) the default runtime unseen, as in
/// `rt.block_on(curfew::spawn(f))`; tokio's `spawn` panics there too.
#[track_caller]
pub(crate) fn with_target<R>(what: &str, f: impl FnOnce(Target<'_>) -> R) -> R {
    let mut f = Some(f);
    let inside = CONTEXT.with(|c| {
        c.runtime
            .borrow()
            .as_ref()
            .map(|h| (f.take().expect("called once"))(Target::Runtime(h)))
    });
    match inside {
        Some(r) => r,
        None => outside(what, f.take().expect("not called yet")),
    }
}

#[track_caller]
fn outside<R>(what: &str, f: impl FnOnce(Target<'_>) -> R) -> R {
    let Ok(tokio) = tokio::runtime::Handle::try_current() else {
        panic!(
            "`{what}` called outside any curfew or tokio runtime. Call it inside a curfew task, \
             `Runtime::block_on` or a tokio runtime, or spawn on a runtime from outside it with \
             `Runtime::spawn` or `Handle::spawn` (in `rt.block_on(curfew::spawn(f))` the argument \
             is evaluated before `block_on` enters `rt`: write `rt.block_on(rt.spawn(f))`)"
        )
    };
    let default = crate::runtime::default_handle();
    if crate::host::hosts_tasks(&tokio) {
        f(Target::Host(default, tokio))
    } else {
        f(Target::Runtime(default))
    }
}

/// Runs one turn of a hosted task on this thread (a thread of the caller's
/// tokio runtime), with `shared` as the runtime whose budgets it keeps.
pub(crate) fn run_hosted(shared: &Arc<Shared>, r: Runnable) {
    let prev = CONTEXT.with(|c| c.host.replace(Arc::as_ptr(shared)));
    // Restore the previous value even if the poll unwinds (it does not: the
    // task catches panics), so the pointer never outlives `shared`.
    struct Restore(*const Shared);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CONTEXT.try_with(|c| c.host.set(self.0));
        }
    }
    let _restore = Restore(prev);
    r.run();
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
            let host = c.host.get();
            if host.is_null() {
                (poll(), PollEnd::InTime)
            } else {
                // SAFETY: `run_hosted` sets the pointer from an `Arc` it
                // holds for as long as the pointer is set, on this thread.
                let host = unsafe { &*host };
                poll_hosted(c, host, header, poll)
            }
        } else {
            // SAFETY: see `with_worker`.
            let w = unsafe { &*w };
            let seq = w.next_seq();
            w.stamp_poll(seq);
            let slot = &w.slot.state;
            slot.begin(seq, header.budget_code, header.admitted.client, header);
            let r = poll();
            // A watched scope inside the poll (`poll_scoped`) hands the slot
            // back under a new number.
            let end = slot.end(w.seq(), header.budget_code);
            w.slot.count_poll();
            if end != PollEnd::InTime {
                w.overdue_returned(header);
            }
            (r, end)
        };
        c.task.set(prev_task);
        out
    })
}

/// Polls `poll` as a watched scope of the poll running on this thread
/// (see [`task::Inline`]): the slot is switched to `header`, with its
/// budget and client, for the length of `poll`, then handed back to the
/// enclosing poll under a new sequence number, so the watchdog times each
/// part on its own. `header` is current for `checkpoint()` meanwhile.
///
/// Returns `None`, without calling `poll`, when the enclosing poll has been
/// answered with a timeout or its thread written off: its task is about to
/// be dropped. Outside a task's poll on a curfew thread, `poll` is watched
/// as a poll of its own (timed on the clock when hosted, not at all
/// elsewhere), as [`poll_under_watchdog`] does.
pub(crate) fn poll_scoped<R>(header: &Header, poll: impl FnOnce() -> R) -> Option<(R, PollEnd)> {
    let mut poll = Some(poll);
    let nested = CONTEXT.with(|c| {
        let w = c.worker.get();
        let outer = c.task.get();
        if w.is_null() || outer.is_null() {
            return None;
        }
        // SAFETY: see `with_worker`.
        let w = unsafe { &*w };
        let slot = &w.slot.state;
        // SAFETY: `poll_under_watchdog` (or an enclosing scope) set the
        // pointer for the poll running now, whose header the running task
        // keeps alive.
        let outer_budget = unsafe { &*outer }.budget_code;
        let outer_client = slot.client();
        // What this thread published for the poll (it may have been claimed,
        // expired or written off since: `switch` sorts that out).
        let running = crate::slot::pack(crate::slot::RUNNING, w.seq(), outer_budget);
        let seq = w.next_seq();
        w.stamp_poll(seq);
        let entered = slot.switch(
            running,
            seq,
            header.budget_code,
            header.admitted.client,
            header,
            false,
        );
        if entered != PollEnd::InTime {
            // The enclosing poll's end finds the word as the watchdog left
            // it, whatever the number.
            return Some(None);
        }
        c.task.set(header);
        let r = (poll.take().expect("called once"))();
        c.task.set(outer);
        // A scope nested in this one handed the slot back under a number
        // of its own.
        let scoped = crate::slot::pack(crate::slot::RUNNING, w.seq(), header.budget_code);
        let back = w.next_seq();
        w.stamp_poll(back);
        let end = slot.switch(scoped, back, outer_budget, outer_client, outer, true);
        if end != PollEnd::InTime {
            w.overdue_returned(header);
        }
        Some(Some((r, end)))
    });
    match nested {
        Some(r) => r,
        None => Some(poll_under_watchdog(
            header,
            poll.take().expect("not called yet"),
        )),
    }
}

/// The header of an inline scope ([`task::Builder::inline`]): admitted
/// by, and given the budgets of, this thread's runtime, else the current
/// one; outside every curfew runtime, admitted without a client table. A
/// refusal gives the options back.
pub(crate) fn inline_header(
    opts: task::Builder,
) -> Result<Header, (crate::Refusal, task::Builder)> {
    let mut opts = Some(opts);
    let on_worker = with_worker(|w| {
        w.map(|w| {
            let opts = opts.take().expect("taken once");
            w.shared()
                .header_or_back(opts, crate::executor::GroupId::Event)
        })
    });
    if let Some(h) = on_worker {
        return h;
    }
    let opts = opts.take().expect("taken once");
    if let Some(h) = try_current() {
        return h
            .shared
            .header_or_back(opts, crate::executor::GroupId::Event);
    }
    let budget = opts.poll_budget.unwrap_or(Some(crate::DEFAULT_POLL_BUDGET));
    Ok(Header::new(
        task::Budget::new(budget),
        crate::policy::Admitted::NONE,
        crate::executor::GroupId::Event.location(),
        opts.name,
        opts.client,
        None,
        tracing::Span::none(),
    ))
}

/// The header of an [`task::InlineScope`]'s next `Inline`, on a curfew
/// thread (as [`inline_header`] finds its runtime): `header` reset in place, or made anew when it has a
/// different name or client (or a span), and admitted with `memo`. Returns
/// whether it was made anew, or the refusal; `None` off every curfew
/// thread (the caller makes an ordinary scope).
pub(crate) fn reuse_inline_header(
    header: &mut Option<Header>,
    memo: &mut Option<crate::policy::AdmitMemo>,
    name: &Arc<str>,
    client: Option<&crate::policy::ClientKey>,
    poll_budget: Option<std::time::Duration>,
) -> Option<Result<bool, crate::Refusal>> {
    with_worker(|w| {
        w.map(|w| {
            w.shared()
                .reuse_header(header, memo, name, client, poll_budget)
        })
    })
}

/// A task's first poll, on a curfew thread: whether to refuse it after all
/// (see `Clients::readmit`). Elsewhere (a hosted task, a test queue) the
/// admission at spawn stands.
#[cold]
pub(crate) fn readmit(header: &Header) -> Option<crate::Refusal> {
    with_worker(|w| w.and_then(|w| w.readmit(header)))
}

/// A hosted poll: timed on the real clock, and answered with a timeout if
/// it returns past its budget (the caller then drops what it produced).
#[cold]
fn poll_hosted<R>(
    c: &Context,
    host: &Shared,
    header: &Header,
    poll: impl FnOnce() -> R,
) -> (R, PollEnd) {
    let start = Instant::now();
    let prev = c.hosted_since.replace(Some(start));
    let r = poll();
    c.hosted_since.set(prev);
    let end = if crate::host::check_budget(host, header, start.elapsed()) {
        PollEnd::TimedOut
    } else {
        PollEnd::InTime
    };
    (r, end)
}

/// [`crate::checkpoint`]: the current task's timeout, if it has one.
#[inline]
pub(crate) fn checkpoint() -> Result<(), TimeoutError> {
    CONTEXT.with(|c| {
        // SAFETY: `poll_under_watchdog` sets the pointer for the duration of
        // a poll, during which the task's allocation (and so its header) is
        // kept alive by the running `Runnable`, and restores the previous
        // value before returning. It is only read on this thread.
        let Some(h) = (unsafe { c.task.get().as_ref() }) else {
            return Ok(());
        };
        if h.is_timed_out() {
            return Err(h.timeout_error());
        }
        match c.hosted_since.get() {
            None => Ok(()),
            Some(start) => checkpoint_hosted(c, h, start),
        }
    })
}

/// A checkpoint in a hosted poll, which no watchdog is timing: compares
/// the real time since the poll began with the budget.
#[cold]
fn checkpoint_hosted(c: &Context, h: &Header, start: Instant) -> Result<(), TimeoutError> {
    let host = c.host.get();
    if host.is_null() {
        return Ok(());
    }
    // SAFETY: as in `poll_under_watchdog`.
    let host = unsafe { &*host };
    if crate::host::check_budget(host, h, start.elapsed()) {
        Err(h.timeout_error())
    } else {
        Ok(())
    }
}

/// Whether this thread is inside a task's poll (or its timed drop).
#[inline]
pub(crate) fn in_task() -> bool {
    CONTEXT.with(|c| !c.task.get().is_null())
}

/// Counts a finished task on this thread's slot.
pub(crate) fn count_finished(panicked: bool) {
    with_worker(|w| {
        if let Some(w) = w {
            w.slot.count_finished(panicked);
        }
    });
}
