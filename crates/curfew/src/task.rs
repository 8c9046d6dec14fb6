//! Tasks: spawning with options, join handles, and cooperative yielding.
//!
//! Every task is an [`async_task`] task whose metadata is a `Header`: the
//! task's budget, name and client, and the outcome cell that lets the
//! watchdog answer the task's [`JoinHandle`] while a poll is still running.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let rt = curfew::Runtime::builder().event_threads(2).build()?;
//! let handle = curfew::task::Builder::new()
//!     .name("checkout")
//!     .client("198.51.100.4")
//!     .poll_budget(Duration::from_millis(50))
//!     .spawn_on(&rt.handle(), async { 6 * 7 });
//! assert_eq!(rt.block_on(handle)?, 42);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use async_task::FallibleTask;
use futures::task::AtomicWaker;

use crate::context;
use crate::error::{JoinError, Location, Refusal, TimeoutError};
use crate::inject::Link;
use crate::policy::{Admitted, ClientKey};
use crate::runtime::Handle;
use crate::slot::{ABORTED, IDLE, PollEnd, TIMED_OUT, Verdict, tag};

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A poll or job budget as a task's header keeps it: the slot's compact
/// code (see [`budget_code`](crate::slot::budget_code)), the budget rounded
/// up to the unit the watchdog counts in. Working it out takes 128-bit
/// arithmetic, so a runtime works out its default budgets once, when it is
/// built, and a spawn pays for it only when it sets a budget of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    code: u32,
}

impl Budget {
    pub(crate) fn new(budget: Option<Duration>) -> Self {
        Self {
            code: crate::slot::budget_code(budget),
        }
    }
}

/// The metadata every task carries, inline in its `async_task` allocation.
///
/// It outlives every poll of the task (a running `Runnable` keeps the
/// allocation alive), which is what lets the watchdog reach it through the
/// pointer a thread publishes in its slot.
#[derive(Debug)]
pub(crate) struct Header {
    /// Pending until the first of completion, timeout and abort wins, with
    /// the numbers of a timeout.
    outcome: Verdict,
    /// Woken when the watchdog or an abort resolves the task.
    join_waker: AtomicWaker,
    /// When the task was queued, for the queue deadline. An async task: the
    /// watchdog tick current when it was last queued (see
    /// `Shared::schedule_event`). A blocking job: when it was spawned, in ns
    /// since the runtime's epoch, where its budget counts from.
    pub(crate) queued: AtomicU64,
    /// The task's entry in its runtime's [`Registry`], or `NO_KEY`.
    registry_key: AtomicUsize,
    /// The budget, encoded for the slot's word (`UNLIMITED` for none); the
    /// header keeps no other form of it (see [`Header::budget`]).
    pub(crate) budget_code: u32,
    /// What admission found: the client's and the route's entries, and the
    /// refusal epoch, which the first poll looks at again.
    pub(crate) admitted: Admitted,
    /// Set by the watchdog when it counted a poll of this task among its
    /// route's overdue ones; cleared by the thread when that poll returns.
    pub(crate) overdue: AtomicBool,
    pub(crate) location: Location,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) client: Option<ClientKey>,
    /// A tokio runtime to enter while polling, when it differs from the
    /// one the thread has entered for good (the drop-in `curfew::spawn`).
    pub(crate) tokio: Option<tokio::runtime::Handle>,
    /// The task's span, when curfew's debug-level spans are enabled: boxed,
    /// so that a task without one carries a pointer, not a disabled `Span`.
    pub(crate) span: Option<Box<tracing::Span>>,
    /// Links the task into its group's injector while it is queued there.
    pub(crate) link: Link,
}

impl Header {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        budget: Budget,
        admitted: Admitted,
        location: Location,
        name: Option<Arc<str>>,
        client: Option<ClientKey>,
        tokio: Option<tokio::runtime::Handle>,
        span: tracing::Span,
    ) -> Self {
        Self {
            outcome: Verdict::new(),
            join_waker: AtomicWaker::new(),
            queued: AtomicU64::new(0),
            registry_key: AtomicUsize::new(NO_KEY),
            budget_code: budget.code,
            admitted,
            overdue: AtomicBool::new(false),
            location,
            name,
            client,
            tokio,
            span: (!span.is_disabled()).then(|| Box::new(span)),
            link: Link::new(),
        }
    }

    /// Makes an inline scope's header that resolved in time (and is
    /// published nowhere) ready for the scope's next run: a pending
    /// outcome, no overdue mark, and the new budget and admission. The
    /// name, client, span, location and registered hook stay.
    pub(crate) fn reset(&mut self, budget: Budget, admitted: Admitted) {
        self.outcome = Verdict::new();
        self.overdue = AtomicBool::new(false);
        self.budget_code = budget.code;
        self.admitted = admitted;
    }

    /// The task produced its output (or panicked). False if a timeout or an
    /// abort got there first.
    fn complete(&self) -> bool {
        self.outcome.complete()
    }

    /// Watchdog: marks the task timed out. False if it had already
    /// completed or been aborted. The caller records the timeout, then
    /// calls [`Self::wake_join`], so that whoever the handle wakes sees the
    /// timeout in the metrics.
    pub(crate) fn time_out(&self, elapsed: Duration) -> bool {
        self.outcome.resolve_timeout(duration_ns(elapsed), false)
    }

    /// Watchdog: answers a task that waited in a queue for `waited`, longer
    /// than its budget, with no thread free to run it. False if it had
    /// already been resolved.
    pub(crate) fn time_out_queued(&self, waited: Duration) -> bool {
        self.outcome.resolve_timeout(duration_ns(waited), true)
    }

    /// Wakes the task's `JoinHandle`.
    pub(crate) fn wake_join(&self) {
        self.join_waker.wake();
    }

    pub(crate) fn abort(&self) -> bool {
        let won = self.outcome.abort();
        if won {
            self.join_waker.wake();
        }
        won
    }

    /// Whether the watchdog has answered for this task. One relaxed load:
    /// this is what [`checkpoint`](crate::checkpoint) costs.
    #[inline]
    pub(crate) fn is_timed_out(&self) -> bool {
        self.outcome.is_timed_out_relaxed()
    }

    /// The task's poll (or job) budget, if it has one, as the watchdog
    /// holds it to: rounded up to a whole microsecond (millisecond past
    /// 134 s, second past 37 hours) and capped at `MAX_BUDGET`.
    pub(crate) fn budget(&self) -> Option<Duration> {
        (self.budget_code != crate::slot::UNLIMITED)
            .then(|| crate::slot::budget_duration(self.budget_code))
    }

    pub(crate) fn is_resolved_early(&self) -> bool {
        self.outcome.is_resolved_early()
    }

    /// The timeout the watchdog answered with. Call only once the outcome
    /// has been seen as timed out.
    pub(crate) fn timeout_error(&self) -> TimeoutError {
        let (elapsed_ns, queued) = self.outcome.timeout_numbers();
        TimeoutError {
            budget: self.budget().unwrap_or(Duration::MAX),
            elapsed: Duration::from_nanos(elapsed_ns),
            name: self.name.clone(),
            client: self.client.clone(),
            location: self.location,
            queued,
        }
    }

    /// The error of a task resolved by the watchdog or by an abort.
    fn early_error(&self) -> Option<JoinError> {
        match self.outcome.load() {
            TIMED_OUT => Some(JoinError::timed_out(self.timeout_error())),
            ABORTED => Some(JoinError::cancelled()),
            _ => None,
        }
    }
}

/// The future async-task runs: the user's future, polled under the
/// watchdog, with panics caught.
///
/// Whenever the user's future is dropped before it completes (a timeout, an
/// abort, a shutdown), its destructors run under the watchdog as a poll of
/// their own with the task's budget (see [`drop_timed`]), so a destructor
/// that never returns costs a written-off thread, not a healthy one.
#[pin_project::pin_project(PinnedDrop)]
pub(crate) struct Guarded<'h, F> {
    header: &'h Header,
    #[pin]
    inner: Option<F>,
    /// The registry the task is entered in, if any. It belongs to the
    /// runtime's shared state, which the task's schedule function keeps
    /// alive for as long as the task exists, and so for as long as this
    /// future.
    registry: *const Registry,
    /// Not polled yet: the first poll looks at admission again.
    fresh: bool,
}

impl<'h, F> Guarded<'h, F> {
    pub(crate) fn new(header: &'h Header, inner: F, registry: Option<&Registry>) -> Self {
        Self {
            header,
            inner: Some(inner),
            registry: registry.map_or(std::ptr::null(), |r| r as *const Registry),
            fresh: true,
        }
    }
}

#[pin_project::pinned_drop]
impl<F> PinnedDrop for Guarded<'_, F> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        let header: &Header = this.header;
        if this.inner.is_some() {
            drop_timed(header, this.inner);
        }
        // SAFETY: see the field's comment: the registry outlives the task.
        if let Some(registry) = unsafe { this.registry.as_ref() } {
            registry.remove(header.registry_key.swap(NO_KEY, Ordering::Relaxed));
        }
    }
}

impl<F: Future> Future for Guarded<'_, F> {
    type Output = Result<F::Output, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let header: &Header = this.header;
        let Some(fut) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(JoinError::cancelled()));
        };
        if header.is_resolved_early() {
            // Aborted or timed out (in a queue) while waiting: drop the
            // future here, under the watchdog.
            drop_timed(header, this.inner);
            return Poll::Ready(Err(JoinError::cancelled()));
        }
        if std::mem::take(this.fresh) && header.admitted.recheck() {
            // Admission was decided at the spawn; a task that waited in a
            // queue meanwhile may have become one to refuse (its route's
            // polls got stuck, or its client's cool-off began). It is
            // refused here, before it takes the thread.
            if let Some(refusal) = context::readmit(header) {
                drop_timed(header, this.inner);
                return Poll::Ready(if header.complete() {
                    Err(JoinError::refused(refusal))
                } else {
                    Err(JoinError::cancelled())
                });
            }
        }

        let (res, end) = context::poll_under_watchdog(header, || {
            catch_unwind(AssertUnwindSafe(|| {
                let _span = header.span.as_deref().map(tracing::Span::enter);
                let _tokio = header.tokio.as_ref().map(|h| h.enter());
                fut.poll(cx)
            }))
        });

        if end != PollEnd::InTime || header.is_resolved_early() {
            // The caller has been answered already. Whatever the poll
            // produced is dropped, and so is the future, on this thread, so
            // its destructors run now: under the watchdog if the thread is
            // still healthy, as they are on a written-off thread (which
            // exits afterwards).
            drop(res);
            if end == PollEnd::Hijacked {
                drop_quietly(this.inner);
            } else {
                drop_timed(header, this.inner);
            }
            return Poll::Ready(Err(JoinError::cancelled()));
        }
        match res {
            Ok(Poll::Pending) => {
                // The task goes idle: enter it in the registry (once), so
                // that a shutdown can cancel it even if nothing wakes it.
                // Tasks that finish in their first poll never pay for this.
                // SAFETY: see the field's comment: the registry outlives
                // the task.
                if let Some(registry) = unsafe { this.registry.as_ref() } {
                    if header.registry_key.load(Ordering::Relaxed) == NO_KEY {
                        let hint = (header as *const Header as usize) >> 6;
                        if let Some(key) = registry.insert(hint, cx.waker().clone(), header) {
                            header.registry_key.store(key, Ordering::Relaxed);
                        }
                    }
                }
                Poll::Pending
            }
            Ok(Poll::Ready(out)) => {
                context::count_finished(false);
                // A finished future holds nothing of the task's work; drop
                // it now rather than under a timed poll of its own.
                drop_quietly(this.inner);
                if header.complete() {
                    Poll::Ready(Ok(out))
                } else {
                    Poll::Ready(Err(JoinError::cancelled()))
                }
            }
            Err(panic) => {
                context::count_finished(true);
                drop_timed(header, this.inner);
                header.complete();
                Poll::Ready(Err(JoinError::panic(panic)))
            }
        }
    }
}

/// Drops a task's future, under the watchdog when on a healthy curfew
/// thread between polls: the drop is published as a poll of the task with
/// the task's budget, so a destructor that overruns is answered for (the
/// task is resolved already, so nobody is woken) and its thread is written
/// off and replaced, exactly as for a poll. Nested in a poll (a destructor
/// that drops another task), it is part of that poll's time; elsewhere (a
/// runtime shutting down, a thread that is not curfew's) it runs untimed.
fn drop_timed<F>(header: &Header, slot: Pin<&mut Option<F>>) {
    if slot.is_none() {
        return;
    }
    let nested = context::in_task();
    context::with_worker(|w| match w {
        Some(w) if !nested && tag(w.slot.state.load()) == IDLE => {
            let seq = w.next_seq();
            w.stamp_poll(seq);
            let state = &w.slot.state;
            state.begin(seq, header.budget_code, header.admitted.client, header);
            drop_quietly(slot);
            // A written-off thread sees its slot hijacked after the runnable
            // returns, and exits (`WorkerCtx::run`).
            if state.end(seq, header.budget_code) != PollEnd::InTime {
                w.overdue_returned(header);
            }
        }
        _ => drop_quietly(slot),
    });
}

/// No registry entry.
const NO_KEY: usize = usize::MAX;

const REGISTRY_SHARDS: usize = 32;

/// Every task of a runtime that has gone idle (returned `Pending`) at least
/// once, as tokio's owned-task list: what a shutdown uses to resolve their
/// handles and to cancel those that nothing will wake again. (A shutdown
/// finds the other tasks in the queues, or running in a thread's slot.)
///
/// An entry holds a waker of its task (which keeps the task's allocation,
/// and so the header, alive) and is removed when the task's future is
/// dropped. A task that is idle and detached, with nothing left to wake it,
/// thus stays until the runtime shuts down, as in tokio. Entering and
/// leaving take one of 32 locks, picked by the task's address; a task that
/// finishes in its first poll (a burst of small spawns) never does.
pub(crate) struct Registry {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
}

#[derive(Default)]
struct Shard {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    closed: bool,
}

/// A registered task: its waker, and its header.
pub(crate) struct Entry {
    waker: Waker,
    header: NonNull<Header>,
}

// SAFETY: the header is `Sync` and is only read through shared references,
// and the waker in the same entry keeps the allocation it lives in alive.
unsafe impl Send for Entry {}

impl Entry {
    /// Resolves the task's handle as cancelled, unless it was resolved
    /// already, then wakes the task so that its future is dropped.
    pub(crate) fn cancel(self) {
        // SAFETY: `self.waker` keeps the task, and so its header, alive.
        let header = unsafe { self.header.as_ref() };
        header.abort();
        self.waker.wake();
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..REGISTRY_SHARDS)
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
        }
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i % REGISTRY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a task; `hint` spreads tasks over the shards. Returns the key,
    /// or `None` once the registry is closed (the runtime shut down).
    fn insert(&self, hint: usize, waker: Waker, header: &Header) -> Option<usize> {
        let shard_no = hint % REGISTRY_SHARDS;
        let mut shard = self.shard(shard_no);
        if shard.closed {
            return None;
        }
        let entry = Entry {
            waker,
            header: NonNull::from(header),
        };
        let i = match shard.free.pop() {
            Some(i) => {
                shard.entries[i] = Some(entry);
                i
            }
            None => {
                shard.entries.push(Some(entry));
                shard.entries.len() - 1
            }
        };
        Some(i * REGISTRY_SHARDS + shard_no)
    }

    fn remove(&self, key: usize) {
        if key == NO_KEY {
            return;
        }
        let entry = {
            let mut shard = self.shard(key % REGISTRY_SHARDS);
            let i = key / REGISTRY_SHARDS;
            let e = shard.entries.get_mut(i).and_then(Option::take);
            if e.is_some() {
                shard.free.push(i);
            }
            e
        };
        // The waker is dropped outside the lock.
        drop(entry);
    }

    /// Closes the registry to new tasks and takes every entry out.
    pub(crate) fn close(&self) -> Vec<Entry> {
        let mut all = Vec::new();
        for i in 0..REGISTRY_SHARDS {
            let mut shard = self.shard(i);
            shard.closed = true;
            shard.free.clear();
            all.extend(shard.entries.drain(..).flatten());
        }
        all
    }

    /// Tasks entered now.
    #[cfg(all(test, not(curfew_loom)))]
    pub(crate) fn len(&self) -> usize {
        (0..REGISTRY_SHARDS)
            .map(|i| self.shard(i).entries.iter().flatten().count())
            .sum()
    }
}

/// Creates the task for `future`, with `header` as its metadata, and
/// queues its first run with `first`. The task enters `registry` (if
/// given) when it first goes idle.
///
/// `first` does what `schedule` does, called directly rather than through
/// `Runnable::schedule`. That one clones a waker before calling `schedule`
/// and drops it after, so that what `schedule` captured stays alive while
/// it runs. The spawner keeps its own runtime alive, so the first run needs
/// no such guard, and a guard dropped after the push would be a write to the
/// task's state while the thread that took the task is already running it.
pub(crate) fn spawn_raw<F, S>(
    header: Header,
    future: F,
    schedule: S,
    registry: Option<&Registry>,
    first: impl FnOnce(async_task::Runnable<Header>),
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    S: async_task::Schedule<Header> + Send + Sync + 'static,
{
    let reg = registry;
    // SAFETY: `spawn_unchecked` lifts the `'static` bound on the future, and
    // we need that only so the future may borrow its own header (the task's
    // metadata), which async-task keeps alive and in place for as long as the
    // future exists, and point at its runtime's registry, which the schedule
    // function keeps alive for as long as the task exists (the caller passes
    // the registry of the runtime whose shared state `schedule` owns). The
    // future borrows nothing else and is `Send` (`F` is, and `Header` and
    // `Registry` are `Sync`), and the schedule function is `Send + Sync +
    // 'static`, so the `Runnable` and its wakers may go to any thread.
    let (runnable, task) = unsafe {
        async_task::Builder::new()
            .metadata(header)
            .spawn_unchecked(move |h: &Header| Guarded::new(h, future, reg), schedule)
    };
    first(runnable);
    JoinHandle::new(task)
}

/// Drops a future in place, swallowing a panic from its destructor so that
/// it cannot take the thread down.
fn drop_quietly<F>(slot: Pin<&mut Option<F>>) {
    let _ = catch_unwind(AssertUnwindSafe(move || {
        let mut slot = slot;
        slot.set(None);
    }));
}

/// The task side of a running `JoinHandle`.
struct Running<T> {
    task: FallibleTask<Result<T, JoinError>, Header>,
    /// The task's metadata. `FallibleTask` has no accessor for it, so the
    /// pointer is taken from the `Task` before it is made fallible.
    header: NonNull<Header>,
}

impl<T> Running<T> {
    fn header(&self) -> &Header {
        // SAFETY: `header` points at the metadata inside the task's
        // allocation, which `self.task` keeps alive; the metadata is never
        // moved or mutated through anything but shared references.
        unsafe { self.header.as_ref() }
    }

    fn detach(self) {
        self.task.detach();
    }
}

/// A handle's state. The refusal is boxed so that a `JoinHandle` stays
/// small (32 bytes, against 80 with the error inline): handles are kept by
/// the thousand in collections, and a refusal is rare next to a spawn.
enum Inner<T> {
    Running(Running<T>),
    Refused(Box<Refusal>),
    Cancelled,
    Done,
}

/// An owned permission to await a task's output, as tokio's `JoinHandle`.
///
/// It resolves exactly once: to the output, or to a [`JoinError`] that says
/// whether the task timed out, panicked, was aborted or was refused. A
/// timeout arrives while the offending poll is still running: the watchdog
/// does not wait for the task to give its thread back.
///
/// Dropping a `JoinHandle` detaches the task; it keeps running.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(1).build()?;
/// let h = rt.spawn(async { "done" });
/// assert_eq!(rt.block_on(h)?, "done");
///
/// let h = rt.spawn(std::future::pending::<()>());
/// h.abort();
/// assert!(rt.block_on(h).unwrap_err().is_cancelled());
/// # Ok(()) }
/// ```
pub struct JoinHandle<T> {
    inner: Mutex<Inner<T>>,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(task: async_task::Task<Result<T, JoinError>, Header>) -> Self {
        let header = NonNull::from(task.metadata());
        Self {
            inner: Mutex::new(Inner::Running(Running {
                task: task.fallible(),
                header,
            })),
        }
    }

    pub(crate) fn refused(r: Refusal) -> Self {
        Self {
            inner: Mutex::new(Inner::Refused(Box::new(r))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Aborts the task. Its handle resolves with
    /// [`JoinError::is_cancelled`] unless it had already finished or timed
    /// out. An idle task's future is dropped at once; a running one is
    /// dropped when its current poll returns.
    pub fn abort(&self) {
        let mut inner = self.lock();
        if let Inner::Running(running) = &*inner {
            if running.header().abort() {
                // Dropping the task cancels it: async-task drops the future
                // now if it is idle, or after the poll that is running.
                *inner = Inner::Cancelled;
            }
        }
    }

    /// Whether the task has finished, timed out or been aborted, so that
    /// awaiting the handle will not wait.
    pub fn is_finished(&self) -> bool {
        match &*self.lock() {
            Inner::Running(r) => r.task.is_finished() || r.header().is_resolved_early(),
            _ => true,
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let running = match inner {
            Inner::Running(running) => running,
            Inner::Refused(_) => {
                let Inner::Refused(r) = std::mem::replace(inner, Inner::Done) else {
                    unreachable!()
                };
                return Poll::Ready(Err(JoinError::refused(*r)));
            }
            Inner::Cancelled => {
                *inner = Inner::Done;
                return Poll::Ready(Err(JoinError::cancelled()));
            }
            Inner::Done => panic!("`JoinHandle` polled after it resolved"),
        };
        let polled = Pin::new(&mut running.task).poll(cx);
        let header = running.header();
        let out = match polled {
            // The watchdog's or an abort's answer wins over whatever the
            // future returned while being dropped.
            Poll::Ready(out) => header
                .early_error()
                .map(Err)
                .or(out)
                .unwrap_or_else(|| Err(JoinError::cancelled())),
            Poll::Pending => {
                header.join_waker.register(cx.waker());
                match header.early_error() {
                    Some(err) => Err(err),
                    None => return Poll::Pending,
                }
            }
        };
        if let Inner::Running(task) = std::mem::replace(inner, Inner::Done) {
            task.detach();
        }
        Poll::Ready(out)
    }
}

// SAFETY: a `JoinHandle` is a `FallibleTask` (Send and Sync when its output
// is Send) plus a pointer to the task's `Header`, which is `Sync` and lives
// as long as the task.
unsafe impl<T: Send> Send for JoinHandle<T> {}
// SAFETY: as above; shared access goes through the `Mutex`.
unsafe impl<T: Send> Sync for JoinHandle<T> {}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Inner::Running(task) = std::mem::replace(inner, Inner::Done) {
            task.detach();
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Options for one spawn: a name, a client and budgets.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let rt = curfew::Runtime::builder().event_threads(1).build()?;
/// let job = curfew::task::Builder::new()
///     .name("thumbnail")
///     .job_budget(Duration::from_secs(2))
///     .spawn_blocking_on(&rt.handle(), || 2 + 2);
/// assert_eq!(rt.block_on(job)?, 4);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) client: Option<ClientKey>,
    pub(crate) poll_budget: Option<Option<Duration>>,
    pub(crate) job_budget: Option<Option<Duration>>,
}

impl Builder {
    /// Options with the runtime's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the task in timeouts, tracing spans and metrics.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(name.as_ref().into());
        self
    }

    /// As [`name`](Self::name), sharing `name` instead of copying it: for a
    /// server that spawns a task per request and keeps its names.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let route: Arc<str> = Arc::from("/search");
    /// let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    /// let h = curfew::task::Builder::new()
    ///     .shared_name(route.clone())
    ///     .spawn_on(&rt.handle(), async { 1 });
    /// assert_eq!(rt.block_on(h).unwrap(), 1);
    /// ```
    pub fn shared_name(mut self, name: Arc<str>) -> Self {
        self.name = Some(name);
        self
    }

    /// The client the task works for. Its poll time and timeouts are
    /// attributed to this key, and the runtime's
    /// [`ClientPolicy`](crate::policy::ClientPolicy) may refuse it.
    pub fn client(mut self, client: impl Into<ClientKey>) -> Self {
        self.client = Some(client.into());
        self
    }

    /// The budget for each poll of this task, instead of the runtime's.
    ///
    /// A budget longer than [`MAX_BUDGET`](crate::MAX_BUDGET) (about four
    /// years) is capped at it: the task is still timed, and its
    /// [`TimeoutError::budget`] reports the cap. A budget shorter than the
    /// runtime's watchdog interval is enforced at the interval.
    ///
    /// # Panics
    ///
    /// Panics if `budget` is zero; use [`unlimited`](Self::unlimited) to
    /// exempt a task from the watchdog.
    pub fn poll_budget(mut self, budget: Duration) -> Self {
        assert!(!budget.is_zero(), "a poll budget must be greater than zero");
        self.poll_budget = Some(Some(budget.min(crate::MAX_BUDGET)));
        self
    }

    /// The budget for this blocking job, instead of the runtime's, capped at
    /// [`MAX_BUDGET`](crate::MAX_BUDGET) like
    /// [`poll_budget`](Self::poll_budget).
    ///
    /// # Panics
    ///
    /// Panics if `budget` is zero.
    pub fn job_budget(mut self, budget: Duration) -> Self {
        assert!(!budget.is_zero(), "a job budget must be greater than zero");
        self.job_budget = Some(Some(budget.min(crate::MAX_BUDGET)));
        self
    }

    /// Exempts the task or job from the watchdog: it is never timed out.
    /// For trusted work that is known to run long, such as a startup load.
    pub fn unlimited(mut self) -> Self {
        self.poll_budget = Some(None);
        self.job_budget = Some(None);
        self
    }

    /// Spawns `future` on the current curfew runtime, or on the default
    /// runtime (see [`spawn`](crate::spawn)).
    ///
    /// # Panics
    ///
    /// Panics outside any curfew or tokio runtime, as
    /// [`curfew::spawn`](crate::spawn) does; use [`spawn_on`](Self::spawn_on).
    #[track_caller]
    pub fn spawn<F>(self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        context::with_target("curfew::task::Builder::spawn", |t| t.spawn(self, future))
    }

    /// Spawns `future` on the runtime behind `handle`.
    pub fn spawn_on<F>(self, handle: &Handle, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        handle.spawn_with(self, future)
    }

    /// Runs `f` on the current runtime's worker pool under the job budget.
    ///
    /// # Panics
    ///
    /// Panics outside any curfew or tokio runtime, as
    /// [`curfew::spawn`](crate::spawn) does; use
    /// [`spawn_blocking_on`](Self::spawn_blocking_on).
    #[track_caller]
    pub fn spawn_blocking<F, R>(self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        context::with_target("curfew::task::Builder::spawn_blocking", |t| {
            t.spawn_blocking(self, f)
        })
    }

    /// Runs `f` on the worker pool of the runtime behind `handle`.
    pub fn spawn_blocking_on<F, R>(self, handle: &Handle, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        handle.spawn_blocking_with(self, f)
    }
}

impl Builder {
    /// Runs `future` in place, inside the current task's polls, as a watched
    /// scope of its own: each of its polls is held to this builder's poll
    /// budget (else the runtime's) and charged to its client, and a poll
    /// that overruns is answered while it still runs, as a spawned task's
    /// would be, with `on_timeout` called on the watchdog's thread.
    ///
    /// This is a spawn without the task: no allocation, no queue, no second
    /// poll of the caller to collect the output. The price is that the
    /// caller's own task cannot go on while the future's poll runs, so a
    /// poll that never returns takes the caller with it. Use it where the
    /// caller has nothing else to do meanwhile and `on_timeout` can answer
    /// for it: an HTTP/1 connection serving one request at a time, whose
    /// `on_timeout` writes the `503` to the socket
    /// (`curfew_http::CurfewLayer` does this under `curfew_http::serve`).
    /// Otherwise spawn and await the [`JoinHandle`].
    ///
    /// Admission happens here, as for a spawn: a client cooling off (or a
    /// refused route) gets its refusal from the first poll, and `future` is
    /// dropped unpolled.
    ///
    /// Where it is watched: inside a task's poll on a curfew thread, the
    /// usual case. Polled anywhere else it is watched as a spawned task
    /// would be there: a poll of a hosted task is timed on the clock when
    /// it returns, and elsewhere (a thread of a tokio runtime, `block_on`)
    /// nothing times it. Outside every curfew runtime no client table is
    /// consulted.
    ///
    /// ```
    /// use std::time::Duration;
    /// use curfew::task::{Builder, OnTimeout};
    /// use curfew::TimeoutError;
    ///
    /// struct Log;
    /// impl OnTimeout for Log {
    ///     fn on_timeout(&self, error: &TimeoutError) {
    ///         eprintln!("answered for: {error}");
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = curfew::Runtime::builder().event_threads(1).build()?;
    /// let out = rt.block_on(rt.spawn(async {
    ///     Builder::new()
    ///         .name("lookup")
    ///         .poll_budget(Duration::from_millis(50))
    ///         .inline(async { 6 * 7 }, Log)
    ///         .await
    /// }))?;
    /// assert_eq!(out?, 42);
    /// # Ok(()) }
    /// ```
    pub fn inline<F, H>(self, future: F, on_timeout: H) -> Inline<F, H>
    where
        F: Future,
        H: OnTimeout,
    {
        self.inline_with(|| future, on_timeout)
    }

    /// As [`inline`](Self::inline), with the future made by `make` once the
    /// scope is admitted: a refused scope never makes it (a server's
    /// handler is not even called for a client cooling off), and an
    /// admitted one makes it where it stays until the `Inline` is moved,
    /// rather than moving it in.
    ///
    /// ```
    /// use curfew::task::{Builder, OnTimeout};
    /// use curfew::TimeoutError;
    ///
    /// struct Quiet;
    /// impl OnTimeout for Quiet {
    ///     fn on_timeout(&self, _: &TimeoutError) {}
    /// }
    ///
    /// let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    /// let out = rt.block_on(rt.spawn(async {
    ///     Builder::new().inline_with(|| async { 6 * 7 }, Quiet).await
    /// }));
    /// assert_eq!(out.unwrap().unwrap(), 42);
    /// ```
    #[inline]
    pub fn inline_with<F, H>(self, make: impl FnOnce() -> F, on_timeout: H) -> Inline<F, H>
    where
        F: Future,
        H: OnTimeout,
    {
        let (header, refusal) = match context::inline_header(self) {
            Ok(h) => (Some(h), None),
            Err((refusal, opts)) => (
                None,
                Some(Box::new(Refused {
                    refusal: Some(refusal),
                    name: opts.name,
                    client: opts.client,
                })),
            ),
        };
        let future = header.is_some().then(make);
        Inline {
            cell: InlineCell::new(header, Some(on_timeout)),
            shared: None,
            future,
            refusal,
            registered: false,
        }
    }
}

/// What an [`Inline`] future does when the watchdog answers one of its
/// polls with a timeout.
pub trait OnTimeout: Send + Sync + 'static {
    /// Called once, on the watchdog's thread, while the overrunning poll is
    /// still running and its caller cannot go on: answer for it here (write
    /// the error response, wake whoever waits). The poll may also return in
    /// the meantime; it then waits for this call to finish, and the
    /// [`Inline`] future resolves to the same timeout. Keep it short and
    /// non-blocking: the watchdog watches no other thread while it runs.
    /// Log through [`defer_log`], not with a `tracing` event here: a
    /// subscriber's writer may block. A panic is caught and logged.
    fn on_timeout(&self, error: &TimeoutError);
}

/// Emits a log event without ever holding up a watchdog: on a watchdog's
/// thread (in an [`OnTimeout`] hook, say), `f` is queued for curfew's log
/// thread and this returns at once; on any other thread `f` runs now. A
/// `tracing` event is written by the subscriber on the thread that emits
/// it, and a writer that blocks (a full pipe to a stalled log shipper, a
/// paused terminal) would stop every timeout in the process meanwhile.
///
/// What the log thread runs goes to the global subscriber (not one set
/// for the calling thread with `set_default`), outside the caller's span,
/// under the thread name `curfew-log`, and is timestamped when it is
/// written: usually microseconds later, seconds later behind a stalled
/// sink. The queue holds 4,096 calls; past that `f` is dropped, and the
/// log thread reports how many were, at most once a second. A panic in
/// `f` is caught. A runtime's shutdown waits up to 250 ms for what its
/// watchdog queued to be written.
///
/// ```
/// curfew::task::defer_log(|| tracing::warn!("said without holding up a watchdog"));
/// ```
pub fn defer_log(f: impl FnOnce() + Send + 'static) {
    crate::deferred::emit(f);
}

/// The parts of an [`Inline`] the watchdog reaches: the header, whose
/// address it reads from the slot, and the hook, through the waker kept in
/// the header. Never moved once the `Inline` is pinned, and only ever
/// reached through shared references (`!Unpin`, so the `&mut` a projection
/// makes of it asserts nothing).
struct InlineCell<H> {
    header: Option<Header>,
    /// `None` in an `Inline` whose header and hook are in its
    /// [`InlineScope`], and in a scope between runs.
    hook: Option<H>,
    _pin: std::marker::PhantomPinned,
}

impl<H> InlineCell<H> {
    fn new(header: Option<Header>, hook: Option<H>) -> Self {
        Self {
            header,
            hook,
            _pin: std::marker::PhantomPinned,
        }
    }
}

/// The cell an `Inline` uses: its own, or its scope's.
///
/// # Safety
///
/// The caller holds `shared`'s `busy` (an `Inline` made by its scope does,
/// until it is dropped), so nothing else writes the scope's cell meanwhile.
unsafe fn cell_of<'a, H>(
    own: &'a InlineCell<H>,
    shared: Option<&'a SharedScope<H>>,
) -> &'a InlineCell<H> {
    match shared {
        // SAFETY: the caller's promise.
        Some(s) => unsafe { &(*s.cell.get()).inline },
        None => own,
    }
}

/// What an [`InlineScope`] shares with the `Inline`s it makes, one at a
/// time.
struct SharedScope<H> {
    /// An `Inline` of this scope exists: it alone reaches `cell` (but for
    /// the watchdog, as for any inline header; see `cell`).
    busy: AtomicBool,
    /// An `Inline` of this scope was answered with a timeout, written off,
    /// or dropped before it resolved: the header may be in any state, so
    /// the scope is used no more.
    spent: AtomicBool,
    cell: std::cell::UnsafeCell<SharedCell<H>>,
}

struct SharedCell<H> {
    /// The header and hook of the running `Inline`, or of the last one.
    /// The watchdog reaches them as it reaches any inline scope's: while
    /// it holds one of the `Inline`'s polls claimed.
    inline: InlineCell<H>,
    /// The header's join waker is the hook's (kept while the header is).
    registered: bool,
    /// The last admission of the header's client.
    memo: Option<crate::policy::AdmitMemo>,
}

impl<H> SharedScope<H> {
    /// Gives `busy` back, with what its holder wrote.
    fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// Uses the scope no more (seen by the next holder of `busy`, which
    /// this one gives back after).
    fn spend(&self) {
        self.spent.store(true, Ordering::Relaxed);
    }
}

// SAFETY: `cell` is reached only by the holder of `busy` (an `Inline`,
// which is `Send` when `H` and its future are) and by the watchdog, which
// reaches an inline header and hook only while it holds a poll of the
// running `Inline` claimed, as for an `Inline` of its own; `busy` is taken
// with Acquire and given back with Release, so each holder sees what the
// last one wrote.
unsafe impl<H: Send + Sync> Send for SharedScope<H> {}
// SAFETY: as above: `&SharedScope` gives no access to `cell` but through
// `busy`.
unsafe impl<H: Send + Sync> Sync for SharedScope<H> {}

/// One scope for a caller's successive [`Builder::inline`] futures, run one
/// at a time: an HTTP/1 connection's requests, say. The header is made and
/// its hook registered once, not for each future, and the client's
/// admission is remembered while nothing it rests on changes (no eviction
/// from the client table, no refusal begun anywhere, no CPU quota in the
/// policy); each future still gets its own budget, its route's limit on
/// stuck tasks, and its own `on_timeout` hook.
///
/// [`inline_with`](Self::inline_with) makes an [`Inline`] as
/// [`Builder::inline_with`] would. While one made earlier still exists, or
/// off a curfew thread, or once one of them has been answered with a
/// timeout, written off or dropped before it resolved, the scope makes a
/// fresh `Inline` of the ordinary kind instead: the scope only ever saves
/// work.
///
/// ```
/// use std::sync::Arc;
/// use curfew::task::{InlineScope, OnTimeout};
/// use curfew::TimeoutError;
///
/// struct Log;
/// impl OnTimeout for Log {
///     fn on_timeout(&self, error: &TimeoutError) {
///         eprintln!("answered for: {error}");
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(1).build()?;
/// let sum = rt.block_on(rt.spawn(async {
///     let scope = InlineScope::new();
///     let name: Arc<str> = Arc::from("/lookup");
///     let mut sum = 0;
///     for i in 0..3 {
///         sum += scope.inline_with(&name, None, None, || async move { i }, Log).await.unwrap();
///     }
///     sum
/// }))?;
/// assert_eq!(sum, 3);
/// # Ok(()) }
/// ```
pub struct InlineScope<H> {
    shared: Arc<SharedScope<H>>,
}

impl<H: OnTimeout> InlineScope<H> {
    /// A scope with no header yet.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(SharedScope {
                busy: AtomicBool::new(false),
                spent: AtomicBool::new(false),
                cell: std::cell::UnsafeCell::new(SharedCell {
                    inline: InlineCell::new(None, None),
                    registered: false,
                    memo: None,
                }),
            }),
        }
    }

    /// As [`Builder::inline_with`], for a future named `name`, for
    /// `client`, under `poll_budget` (else the runtime's): the name and the
    /// client are cloned only when they differ from the last future's.
    pub fn inline_with<F: Future>(
        &self,
        name: &Arc<str>,
        client: Option<&ClientKey>,
        poll_budget: Option<Duration>,
        make: impl FnOnce() -> F,
        on_timeout: H,
    ) -> Inline<F, H> {
        self.prepare(name, client, poll_budget, on_timeout)
            .inline_with(make)
    }

    /// The first half of [`inline_with`](Self::inline_with): admission and
    /// the header, with `name` and `client` borrowed only meanwhile. The
    /// scope is taken until the `Inline` that
    /// [`Prepared::inline_with`] makes is dropped (or the `Prepared` is).
    pub fn prepare(
        &self,
        name: &Arc<str>,
        client: Option<&ClientKey>,
        poll_budget: Option<Duration>,
        on_timeout: H,
    ) -> Prepared<H> {
        self.prepare_with(name, client, poll_budget, |_| Some(on_timeout))
    }

    /// As [`prepare`](Self::prepare), with the hook made by `hook`, which
    /// is given the scope's hook from its last run, if it has one, and may
    /// return `None` to keep it (a hook that is the same for every run, a
    /// connection's socket say, is then not made again). Given `None`, it
    /// must return a hook.
    ///
    /// # Panics
    ///
    /// Panics if `hook` returns `None` when given `None`.
    pub fn prepare_with(
        &self,
        name: &Arc<str>,
        client: Option<&ClientKey>,
        poll_budget: Option<Duration>,
        hook: impl FnOnce(Option<&H>) -> Option<H>,
    ) -> Prepared<H> {
        let made = |hook: Option<H>| hook.expect("a hook made when there was none to keep");
        let fresh = |hook: Option<H>| {
            let on_timeout = made(hook);
            let mut b = Builder::new().shared_name(name.clone());
            if let Some(c) = client {
                b = b.client(c.clone());
            }
            if let Some(budget) = poll_budget {
                b = b.poll_budget(budget);
            }
            Prepared(PreparedKind::Fresh(Box::new((b, on_timeout))))
        };
        let s = &self.shared;
        if s.spent.load(Ordering::Relaxed) || s.busy.swap(true, Ordering::Acquire) {
            return fresh(hook(None));
        }
        // Marked by the last holder before it gave `busy` back.
        if s.spent.load(Ordering::Relaxed) {
            s.release();
            return fresh(hook(None));
        }
        // SAFETY: `busy` is ours, and no poll of the last `Inline` is
        // published in a slot any more: it gave `busy` back only once it
        // was dropped, and an `Inline` whose poll the watchdog answered or
        // wrote off marks the scope spent.
        let cell = unsafe { &mut *s.cell.get() };
        let budget = poll_budget.map(|b| b.min(crate::MAX_BUDGET));
        match context::reuse_inline_header(
            &mut cell.inline.header,
            &mut cell.memo,
            name,
            client,
            budget,
        ) {
            Some(Ok(rebuilt)) => {
                if rebuilt {
                    cell.registered = false;
                }
                if let Some(new) = hook(cell.inline.hook.as_ref()) {
                    cell.inline.hook = Some(new);
                } else if cell.inline.hook.is_none() {
                    panic!("a hook made when there was none to keep");
                }
                Prepared(PreparedKind::Scoped(s.clone()))
            }
            Some(Err(refusal)) => {
                s.release();
                Prepared(PreparedKind::Refused(Box::new((
                    Refused {
                        refusal: Some(refusal),
                        name: Some(name.clone()),
                        client: client.cloned(),
                    },
                    made(hook(None)),
                ))))
            }
            None => {
                s.release();
                fresh(hook(None))
            }
        }
    }
}

/// An admitted (or refused) run of an [`InlineScope`], not yet given its
/// future: see [`InlineScope::prepare`].
pub struct Prepared<H>(PreparedKind<H>);

/// Small, so that it moves cheaply on the usual path: the rare ones are
/// boxed.
enum PreparedKind<H> {
    /// The scope is ours, its header ready and its hook in place.
    Scoped(Arc<SharedScope<H>>),
    /// Refused at admission.
    Refused(Box<(Refused, H)>),
    /// The scope was not to be had: an ordinary scope.
    Fresh(Box<(Builder, H)>),
    /// Made into an `Inline`.
    Taken,
}

impl<H: OnTimeout> Prepared<H> {
    /// The `Inline` for the future `make` makes, if admitted (a refused
    /// run never calls `make`).
    pub fn inline_with<F: Future>(mut self, make: impl FnOnce() -> F) -> Inline<F, H> {
        match std::mem::replace(&mut self.0, PreparedKind::Taken) {
            PreparedKind::Scoped(s) => {
                // SAFETY: `busy` is ours (see `prepare`).
                let registered = unsafe { (*s.cell.get()).registered };
                Inline {
                    cell: InlineCell::new(None, None),
                    // Holds `busy` from here, and gives it back when dropped.
                    shared: Some(s),
                    future: Some(make()),
                    refusal: None,
                    registered,
                }
            }
            PreparedKind::Refused(refused) => {
                let (refused, hook) = *refused;
                Inline {
                    cell: InlineCell::new(None, Some(hook)),
                    shared: None,
                    future: None,
                    refusal: Some(Box::new(refused)),
                    registered: false,
                }
            }
            PreparedKind::Fresh(fresh) => {
                let (builder, hook) = *fresh;
                builder.inline_with(make, hook)
            }
            PreparedKind::Taken => unreachable!("a `Prepared` is used once"),
        }
    }
}

impl<H> Drop for Prepared<H> {
    fn drop(&mut self) {
        // Never made into an `Inline`: the scope's header is ready and
        // published nowhere, and stays usable.
        if let PreparedKind::Scoped(s) = &self.0 {
            s.release();
        }
    }
}

impl<H> std::fmt::Debug for Prepared<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            PreparedKind::Scoped(_) => "scoped",
            PreparedKind::Refused(_) => "refused",
            PreparedKind::Fresh(_) => "fresh",
            PreparedKind::Taken => "taken",
        };
        f.debug_tuple("Prepared").field(&kind).finish()
    }
}

impl<H: OnTimeout> Default for InlineScope<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H> Clone for InlineScope<H> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<H> std::fmt::Debug for InlineScope<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineScope")
            .field("busy", &self.shared.busy.load(Ordering::Relaxed))
            .field("spent", &self.shared.spent.load(Ordering::Relaxed))
            .finish()
    }
}

/// A future run in place under a budget of its own: see
/// [`Builder::inline`]. Resolves as a [`JoinHandle`] would.
#[pin_project::pin_project(PinnedDrop)]
pub struct Inline<F, H> {
    cell: InlineCell<H>,
    /// The scope whose header and hook this uses instead of `cell`'s, and
    /// which this holds until it is dropped.
    shared: Option<Arc<SharedScope<H>>>,
    #[pin]
    future: Option<F>,
    /// Boxed: rare, and the future moves with the caller's.
    refusal: Option<Box<Refused>>,
    /// The header's waker (the hook) is in place.
    registered: bool,
}

/// An inline scope refused at admission: the refusal, until it is
/// returned, and what the scope was given to name it by.
struct Refused {
    refusal: Option<Refusal>,
    name: Option<Arc<str>>,
    client: Option<ClientKey>,
}

impl<F, H> Inline<F, H> {
    /// The header and hook: this `Inline`'s own, or its scope's.
    fn cell(&self) -> &InlineCell<H> {
        // SAFETY: an `Inline` with a scope holds its `busy` until dropped.
        unsafe { cell_of(&self.cell, self.shared.as_deref()) }
    }

    /// The `on_timeout` hook given to [`Builder::inline`].
    pub fn hook(&self) -> &H {
        self.cell()
            .hook
            .as_ref()
            .expect("an `Inline` always has its hook")
    }

    /// The name given to the [`Builder`], refused or not, before and after
    /// the scope resolves.
    pub fn name(&self) -> Option<&str> {
        match (&self.cell().header, &self.refusal) {
            (Some(h), _) => h.name.as_deref(),
            (None, Some(r)) => r.name.as_deref(),
            (None, None) => None,
        }
    }

    /// The client given to the [`Builder`], refused or not, before and
    /// after the scope resolves.
    pub fn client(&self) -> Option<&ClientKey> {
        match (&self.cell().header, &self.refusal) {
            (Some(h), _) => h.client.as_ref(),
            (None, Some(r)) => r.client.as_ref(),
            (None, None) => None,
        }
    }
}

impl<F, H> std::fmt::Debug for Inline<F, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline")
            .field(
                "name",
                &self.cell().header.as_ref().and_then(|h| h.name.as_deref()),
            )
            .field("refused", &self.refusal.is_some())
            .field("done", &self.future.is_none())
            .finish_non_exhaustive()
    }
}

/// The waker kept in an inline header's join slot: waking it is the
/// watchdog answering the scope, and calls the hook.
struct HookWaker<H>(std::marker::PhantomData<H>);

impl<H: OnTimeout> HookWaker<H> {
    const VTABLE: std::task::RawWakerVTable =
        std::task::RawWakerVTable::new(Self::clone, Self::wake, Self::wake, Self::drop);

    /// # Safety
    ///
    /// `cell` must stay in place, alive, until the waker and every clone of
    /// it are dropped, and may be woken only while it is. The waker is only
    /// ever stored in `cell`'s own header, which drops it with the cell,
    /// and only the watchdog wakes it, while it holds the scope's poll
    /// claimed, which keeps the `Inline` inside its poll.
    unsafe fn waker(cell: *const InlineCell<H>) -> Waker {
        // SAFETY: the vtable's functions uphold the `RawWaker` contract for
        // this pointer under the conditions above.
        unsafe { Waker::from_raw(std::task::RawWaker::new(cell.cast(), &Self::VTABLE)) }
    }

    unsafe fn clone(p: *const ()) -> std::task::RawWaker {
        std::task::RawWaker::new(p, &Self::VTABLE)
    }

    unsafe fn wake(p: *const ()) {
        // SAFETY: see `waker`: the cell is alive while the waker is woken.
        let cell = unsafe { &*p.cast::<InlineCell<H>>() };
        if let (Some(header), Some(hook)) = (&cell.header, &cell.hook) {
            hook.on_timeout(&header.timeout_error());
        }
    }

    unsafe fn drop(_: *const ()) {}
}

impl<F: Future, H: OnTimeout> Future for Inline<F, H> {
    type Output = Result<F::Output, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared: Option<&SharedScope<H>> = this.shared.as_deref();
        // SAFETY: as in `Inline::cell`: this holds the scope's `busy`.
        let cell: &InlineCell<H> = unsafe { cell_of(this.cell, shared) };
        let Some(header) = &cell.header else {
            // Refused at admission: the future was never made (or, given
            // to `inline`, was dropped unpolled).
            let refusal = this
                .refusal
                .as_mut()
                .and_then(|r| r.refusal.take())
                .expect("`Inline` polled after it completed");
            return Poll::Ready(Err(JoinError::refused(refusal)));
        };
        let Some(fut) = this.future.as_mut().as_pin_mut() else {
            panic!("`Inline` polled after it completed");
        };
        if !*this.registered {
            // SAFETY: the cell is pinned inside `self` (`Inline` is
            // `!Unpin` through it), or in its scope's allocation, and owns
            // the header that keeps the waker; only the watchdog's claim of
            // this scope's poll wakes it (an inline header is never
            // queued, registered or aborted).
            header
                .join_waker
                .register(&unsafe { HookWaker::<H>::waker(cell) });
            *this.registered = true;
            if let Some(s) = shared {
                // SAFETY: this holds `busy`, and the header is not
                // published (this is before the poll); `registered` is a
                // field apart from the `inline` borrowed above.
                unsafe { std::ptr::addr_of_mut!((*s.cell.get()).registered).write(true) };
            }
        }
        let scoped = context::poll_scoped(header, || {
            catch_unwind(AssertUnwindSafe(|| {
                let _span = header.span.as_deref().map(tracing::Span::enter);
                fut.poll(cx)
            }))
        });
        let Some((res, end)) = scoped else {
            // The caller's own poll was answered: its task is dropped when
            // the poll returns, and this with it.
            return Poll::Pending;
        };
        match end {
            PollEnd::InTime => match res {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(out)) => {
                    drop_quietly(this.future);
                    header.complete();
                    Poll::Ready(Ok(out))
                }
                Err(panic) => {
                    drop_quietly(this.future);
                    header.complete();
                    Poll::Ready(Err(JoinError::panic(panic)))
                }
            },
            PollEnd::TimedOut => {
                // Answered already (the hook ran): what the poll produced
                // goes, and the future with it, inside the caller's poll.
                // A scope's header stays timed out: the scope is done.
                if let Some(s) = shared {
                    s.spend();
                }
                drop(res);
                drop_quietly(this.future);
                Poll::Ready(Err(JoinError::timed_out(header.timeout_error())))
            }
            PollEnd::Hijacked => {
                // The thread is written off; its task is dropped when the
                // poll returns, and this with it.
                if let Some(s) = shared {
                    s.spend();
                }
                drop(res);
                Poll::Pending
            }
        }
    }
}

#[pin_project::pinned_drop]
impl<F, H> PinnedDrop for Inline<F, H> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(s) = this.shared.as_deref() {
            // Dropped before it resolved (or after the watchdog answered
            // it, which marked it already): the header's outcome may be
            // anything, so the scope is not used again.
            if this.future.is_some() {
                s.spend();
            }
            s.release();
        }
    }
}

/// Yields once to the scheduler, like `tokio::task::yield_now`.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Yields if the current poll has used up its time slice
/// ([`need_yield`](crate::need_yield)); otherwise returns at once. Call it in
/// long loops to keep latency low for the other tasks, like Glommio's
/// `yield_if_needed`.
pub async fn yield_if_needed() {
    if crate::need_yield() {
        yield_now().await;
    }
}

/// Tests of the task plumbing alone (no runtime threads), small enough for
/// Miri: `cargo +nightly miri test -p curfew --lib task::tests`. They cover
/// the unsafe parts: futures borrowing their own header through
/// `spawn_unchecked`, and the `JoinHandle`'s pointer to that header.
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::AtomicUsize;

    type Queue = Arc<StdMutex<Vec<async_task::Runnable<Header>>>>;

    fn header() -> Header {
        Header::new(
            Budget::new(Some(Duration::from_millis(10))),
            Admitted::NONE,
            Location::EventThread,
            Some("t".into()),
            None,
            None,
            tracing::Span::none(),
        )
    }

    fn spawn<F>(q: &Queue, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let q2 = q.clone();
        spawn_raw(
            header(),
            fut,
            move |r| q2.lock().unwrap().push(r),
            None,
            async_task::Runnable::schedule,
        )
    }

    fn run_all(q: &Queue) {
        loop {
            let next = q.lock().unwrap().pop();
            match next {
                Some(r) => {
                    r.run();
                }
                None => break,
            }
        }
    }

    #[test]
    fn output_reaches_the_handle() {
        let q = Queue::default();
        let h = spawn(&q, async { 41 + 1 });
        assert!(!h.is_finished());
        run_all(&q);
        assert!(h.is_finished());
        assert_eq!(futures::executor::block_on(h).unwrap(), 42);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_header_is_no_more_than_128_bytes() {
        // Every task carries one. 16 bytes more (the injector's link, before
        // the budget was packed) cost the axum layer about 5% of its requests
        // a second, and a task's size decides how many pages a burst of
        // spawns faults in (`benches/RESULTS.md`).
        assert!(
            std::mem::size_of::<Header>() <= 128,
            "{} bytes",
            std::mem::size_of::<Header>()
        );
    }

    #[test]
    fn a_small_output_keeps_its_task_small() {
        // A task stores its `Result<T, JoinError>` inline: an error of 72
        // bytes made every small task 64 bytes larger.
        assert_eq!(
            std::mem::size_of::<Result<(), crate::JoinError>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn a_join_handle_is_four_words() {
        // Handles are kept by the thousand (a burst of spawns awaited in
        // order, a server's in-flight requests): a refusal's error inline
        // made each 80 bytes.
        assert!(
            std::mem::size_of::<JoinHandle<()>>() <= 4 * std::mem::size_of::<usize>(),
            "{} bytes",
            std::mem::size_of::<JoinHandle<()>>()
        );
    }

    #[test]
    fn timeout_wins_over_a_later_output() {
        let q = Queue::default();
        let h = spawn(&q, async { "late" });
        // What the watchdog does, without a thread to claim.
        let header = match &*h.lock() {
            Inner::Running(r) => r.header,
            _ => unreachable!(),
        };
        // SAFETY: the handle keeps the task, and so its header, alive.
        let header = unsafe { header.as_ref() };
        assert!(header.time_out(Duration::from_millis(12)));
        header.wake_join();
        assert!(checkpoint_would_fail(header));
        run_all(&q); // the future is dropped, not completed
        let err = futures::executor::block_on(h).unwrap_err();
        let t = err.timeout().unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(12));
        assert_eq!(t.name(), Some("t"));
    }

    fn checkpoint_would_fail(h: &Header) -> bool {
        h.is_timed_out()
    }

    #[test]
    fn abort_drops_the_future_and_detach_keeps_running() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct D;
        impl Drop for D {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let q = Queue::default();
        let d = D;
        let h = spawn(&q, async move {
            let _d = d;
            std::future::pending::<()>().await
        });
        run_all(&q);
        h.abort();
        run_all(&q); // async-task reschedules the task to drop its future
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        assert!(futures::executor::block_on(h).unwrap_err().is_cancelled());

        let ran = Arc::new(AtomicUsize::new(0));
        let r2 = ran.clone();
        drop(spawn(&q, async move { r2.fetch_add(1, Ordering::SeqCst) }));
        run_all(&q);
        assert_eq!(ran.load(Ordering::SeqCst), 1, "a dropped handle detaches");
    }

    #[test]
    fn panics_are_caught_and_dropped_runnables_cancel() {
        let q = Queue::default();
        let h = spawn(&q, async {
            if std::hint::black_box(true) {
                panic!("inside");
            }
        });
        run_all(&q);
        assert!(futures::executor::block_on(h).unwrap_err().is_panic());

        let h = spawn(&q, async { 1 });
        q.lock().unwrap().clear(); // a runtime shutting down drops its queue
        assert!(futures::executor::block_on(h).unwrap_err().is_cancelled());
    }
}
