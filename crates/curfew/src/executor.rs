//! Threads that run tasks: the event threads and the worker pool.
//!
//! Both are a [`Group`] of threads that take [`Runnable`]s from queues and run
//! them, each thread publishing its polls in its own [`Slot`] for the
//! watchdog. The groups differ only in their queues:
//!
//! * **Event threads** (Node's event loop) poll async tasks. Each has
//!   local queues that the others can steal from: a `next` slot for the
//!   last task a poll on the thread spawned or woke, which runs as soon as
//!   that poll returns (as tokio's LIFO slot: a request's handler right
//!   after the connection that spawned it, while what they share is in the
//!   cache; at most three such tasks in a row); a FIFO deque for the other
//!   tasks spawned or woken on the thread; and a FIFO deque for tasks that
//!   yielded, which run only once the thread has looked at everything else
//!   (as tokio defers yielded tasks), so a loop of yielding tasks cannot
//!   starve work from outside. A shared injector takes tasks spawned or
//!   woken from other threads. A hijacked thread's local tasks stay
//!   stealable, so they are never stuck behind the poisoned poll; the
//!   `next` task becomes stealable once the watchdog has seen it wait.
//! * **The worker pool** (Node's worker pool) runs blocking jobs from one
//!   bounded injector. A job is a task that completes in its first poll.
//!
//! The hot path is [`WorkerCtx::run`]: pop, run, check the slot. Parking
//! follows the usual protocol: a thread registers as a sleeper, re-checks the
//! queues, then parks; a producer pushes, fences, then wakes a sleeper only
//! if there is one, so a busy runtime never takes the sleepers' lock. A
//! thread that queues a single task for itself (a spawn or a wake from inside
//! a poll) wakes no one, since it runs that task next; the watchdog wakes a
//! parked thread to steal it if the current poll runs on. An event thread of
//! a runtime that owns its I/O driver parks inside that driver
//! (`crate::driver`), so it also drives sockets and timers while idle.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use arc_swap::ArcSwap;
use crossbeam_deque::{Steal, Stealer, Worker};
use futures::task::AtomicWaker;

use crate::context;
use crate::error::Location;
use crate::inject::{Inject, Link, Linked, Take};
use crate::runtime::Shared;
use crate::slot::{EXPIRED, HIJACKED, IDLE, RUNNING, SlotState, tag};
use crate::task::Header;

/// A task ready to be polled.
pub(crate) type Runnable = async_task::Runnable<Header>;

/// Most tasks an event thread moves from the injector to its own queue at
/// once.
const INJECT_BATCH: usize = 32;

/// Where `async_task` keeps a task's metadata (its [`Header`]), in bytes
/// from the start of the task's allocation: the same for every task, since
/// it depends on the metadata's type alone. Learned from the first task
/// linked into an injector, so that a link (8 bytes in every header) need
/// not also record its task's pointer.
static HEADER_OFFSET: AtomicUsize = AtomicUsize::new(usize::MAX);

// SAFETY: the link is in the task's header, inside the task's allocation,
// which the `Runnable` given up by `into_raw` keeps alive (and unused by
// anyone else, since a task has one `Runnable` at a time) until `from_raw`
// takes it back. Both directions go through the allocation's own pointer
// (`into_raw`'s), never through a reference to the header, so the pointers
// keep the whole allocation's provenance.
unsafe impl Linked for Runnable {
    fn into_link(self) -> std::ptr::NonNull<Link> {
        let header = std::ptr::from_ref::<Header>(self.metadata()) as usize;
        let raw = self.into_raw();
        let offset = header - raw.as_ptr() as usize;
        if HEADER_OFFSET.load(Ordering::Relaxed) != offset {
            HEADER_OFFSET.store(offset, Ordering::Relaxed);
        }
        // SAFETY: the link is inside the live allocation `raw` points to.
        unsafe {
            raw.byte_add(offset + std::mem::offset_of!(Header, link))
                .cast::<Link>()
        }
    }

    unsafe fn from_link(link: std::ptr::NonNull<Link>) -> Self {
        // The push that queued `link` (after the store above) happens
        // before this take, so the offset is set.
        let offset = HEADER_OFFSET.load(Ordering::Relaxed);
        debug_assert_ne!(offset, usize::MAX);
        // SAFETY: `link` came from `into_link`, which added these very
        // offsets to the pointer `into_raw` returned; its task has not been
        // taken back, so the allocation is alive.
        unsafe {
            let raw = link
                .byte_sub(offset + std::mem::offset_of!(Header, link))
                .cast::<()>();
            Runnable::from_raw(raw)
        }
    }
}

/// Which group a thread belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupId {
    Event,
    Blocking,
}

impl GroupId {
    pub(crate) fn location(self) -> Location {
        match self {
            GroupId::Event => Location::EventThread,
            GroupId::Blocking => Location::WorkerPool,
        }
    }
}

/// One monitored thread, as the rest of the runtime sees it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: usize,
    /// The protocol word shared with the watchdog.
    pub(crate) state: SlotState<Header>,
    /// The poll sequence number the watchdog found over its time slice.
    pub(crate) slice_expired: AtomicU32,
    /// Lets other event threads steal this thread's local tasks.
    pub(crate) stealers: Option<Stealers>,
    /// Set by the thread itself as it starts, before it can park.
    thread: OnceLock<Thread>,
    /// The OS thread id, for demoting a hijacked thread's scheduling
    /// priority; 0 until the thread starts.
    pub(crate) os_tid: std::sync::atomic::AtomicI64,
    /// Set by the watchdog when it moved this thread to the idle scheduling
    /// class (at a timeout or a hijack); cleared by the thread when it asks
    /// for its ordinary policy back.
    pub(crate) demoted: AtomicBool,
    /// Set by the watchdog when it handed this thread's long poll off
    /// (`Builder::hand_off_long_polls`): another thread took its place, and
    /// this one exits once the poll returns.
    pub(crate) handed_off: AtomicBool,
    /// Set by a producer that woke this thread from its park.
    notified: AtomicBool,
    /// Wakes this thread while it is parked in the I/O driver.
    driver_waker: AtomicWaker,
    // Owner-written counters (a plain load and store each, no contention).
    polls: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
    // Watchdog-private observation of the state word.
    pub(crate) seen_word: AtomicU64,
    pub(crate) seen_at_ns: AtomicU64,
    pub(crate) deferred: AtomicBool,
    /// Watchdog-private: the state word under which it last found tasks
    /// waiting in this thread's local queues (`u64::MAX` for none).
    pub(crate) queued_word: AtomicU64,
    /// When the last poll that stamped its own start began (ns since the
    /// runtime's epoch) and that poll's sequence number. The watchdog counts
    /// that poll from this stamp instead of from its own first sighting,
    /// which may come a few ms late when the watchdog itself was parked.
    /// Written by the first poll after a wake-up and by polls that begin
    /// while the watchdog is parked (`WorkerCtx::stamp_poll`), never by a
    /// busy thread whose watchdog is awake.
    pub(crate) stamp_ns: AtomicU64,
    pub(crate) stamp_seq: AtomicU32,
}

/// The stealing ends of an event thread's local deques.
#[derive(Debug)]
pub(crate) struct Stealers {
    next: Stealer<Runnable>,
    ready: Stealer<Runnable>,
    yielded: Stealer<Runnable>,
}

impl Stealers {
    fn is_empty(&self) -> bool {
        self.next.is_empty() && self.ready.is_empty() && self.yielded.is_empty()
    }

    fn len(&self) -> usize {
        self.next.len() + self.ready.len() + self.yielded.len()
    }
}

/// How many tasks in a row a thread takes from its `next` slot before it
/// looks at its other queues (as tokio's LIFO slot): two tasks that keep
/// waking each other cannot starve the rest.
const NEXT_IN_A_ROW: u32 = 3;

/// An event thread's local deques.
struct Local {
    /// At most one task: the last one a poll on this thread spawned or
    /// woke, run next, while what it needs is still in the cache (a
    /// request's handler right after the connection that spawned it). As
    /// stealable as the others: a poll that overruns does not strand it.
    next: Worker<Runnable>,
    /// Spawned or woken on this thread.
    ready: Worker<Runnable>,
    /// Yielded: run after the injector has been looked at.
    yielded: Worker<Runnable>,
}

impl Local {
    fn new() -> Self {
        Self {
            next: Worker::new_fifo(),
            ready: Worker::new_fifo(),
            yielded: Worker::new_fifo(),
        }
    }

    fn stealers(&self) -> Stealers {
        Stealers {
            next: self.next.stealer(),
            ready: self.ready.stealer(),
            yielded: self.yielded.stealer(),
        }
    }

    fn pop_any(&self) -> Option<Runnable> {
        self.next
            .pop()
            .or_else(|| self.ready.pop())
            .or_else(|| self.yielded.pop())
    }
}

#[inline]
fn bump(counter: &AtomicU64) {
    // Only the owner thread writes: no read-modify-write needed.
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl Slot {
    /// Wakes the thread from its park, whether it parked in the I/O driver
    /// or on its own.
    fn wake(&self) {
        self.notified.store(true, Ordering::Release);
        self.driver_waker.wake();
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Puts this thread back on the ordinary scheduling policy if the
    /// watchdog demoted it and the kernel allows it (the watchdog's side;
    /// the thread's own is `WorkerCtx::undemote`).
    pub(crate) fn restore_policy(&self) {
        if self.demoted.load(Ordering::Relaxed)
            && crate::sys::restore(self.os_tid.load(Ordering::Relaxed))
        {
            self.demoted.store(false, Ordering::Relaxed);
        }
    }

    /// Whether tasks wait in this thread's local queues.
    pub(crate) fn has_queued(&self) -> bool {
        self.stealers.as_ref().is_some_and(|st| !st.is_empty())
    }

    /// Whether another thread may take a task from this thread's queues
    /// now. The `next` slot counts only once the watchdog has seen it wait
    /// through a whole poll of the owner's (`next_waited`): until then the
    /// owner means to run it as soon as its poll returns.
    fn has_stealable(&self) -> bool {
        self.stealers.as_ref().is_some_and(|st| {
            !st.ready.is_empty()
                || !st.yielded.is_empty()
                || (!st.next.is_empty() && self.next_waited())
        })
    }

    /// Whether the watchdog has seen this thread's queued tasks wait while
    /// the same poll ran on (its `queued_word` is the current state word):
    /// then the `next` task is fair game for other threads.
    fn next_waited(&self) -> bool {
        self.queued_word.load(Ordering::Relaxed) == self.state.load()
    }

    #[inline]
    pub(crate) fn count_poll(&self) {
        bump(&self.polls);
    }

    pub(crate) fn count_finished(&self, panicked: bool) {
        bump(if panicked {
            &self.panicked
        } else {
            &self.completed
        });
    }
}

/// Totals folded in from threads that have exited.
#[derive(Debug, Default)]
struct Retired {
    polls: AtomicU64,
    completed: AtomicU64,
    panicked: AtomicU64,
}

/// Counts a group reports in [`crate::metrics`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct GroupCounts {
    pub(crate) polls: u64,
    pub(crate) completed: u64,
    pub(crate) panicked: u64,
    pub(crate) queue_depth: usize,
}

/// A set of threads sharing queues, a target size and a hijack cap.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) id: GroupId,
    /// Healthy threads to keep.
    pub(crate) target: usize,
    /// Most threads that may be hijacked (abandoned) at once.
    pub(crate) max_hijacked: usize,
    /// Maximum queued tasks (the worker pool's bound); `usize::MAX` for none.
    pub(crate) capacity: usize,
    pub(crate) injector: Inject<Runnable>,
    pub(crate) queued: AtomicUsize,
    /// Every live thread's slot, healthy or hijacked.
    pub(crate) slots: ArcSwap<Vec<Arc<Slot>>>,
    slots_lock: Mutex<()>,
    sleepers: Mutex<Vec<Arc<Slot>>>,
    num_sleeping: AtomicUsize,
    next_id: AtomicUsize,
    /// Threads that are not hijacked. Changed only by thread start-up,
    /// a hijack (watchdog) and a healthy thread's exit.
    pub(crate) healthy: AtomicUsize,
    /// Threads alive, hijacked or not.
    pub(crate) alive: AtomicUsize,
    pub(crate) hijacked_now: AtomicUsize,
    pub(crate) hijacked_total: AtomicU64,
    pub(crate) deferred_total: AtomicU64,
    /// Long polls handed off (`Builder::hand_off_long_polls`). A handed-off
    /// thread holds a place under the hijack cap, counted in
    /// `hijacked_now`, until it exits.
    pub(crate) handed_off_total: AtomicU64,
    /// Threads moved to `SCHED_IDLE` by the watchdog (at a timeout, a
    /// hand-off to the idle class or a hijack).
    pub(crate) demoted_total: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Of `timeouts`, tasks answered while still queued (queue timeouts).
    pub(crate) queue_timeouts: AtomicU64,
    pub(crate) spawned: AtomicU64,
    /// Set by a runtime shutting down once it has drained the queues: from
    /// then on a task scheduled here is dropped (cancelled) at once, so that
    /// nothing is left in a queue nobody will run.
    closed: AtomicBool,
    retired: Retired,
}

impl Group {
    pub(crate) fn new(id: GroupId, target: usize, max_hijacked: usize, capacity: usize) -> Self {
        Self {
            id,
            target,
            max_hijacked,
            capacity,
            injector: Inject::new(),
            queued: AtomicUsize::new(0),
            slots: ArcSwap::from_pointee(Vec::new()),
            slots_lock: Mutex::new(()),
            sleepers: Mutex::new(Vec::new()),
            num_sleeping: AtomicUsize::new(0),
            next_id: AtomicUsize::new(0),
            healthy: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            hijacked_now: AtomicUsize::new(0),
            hijacked_total: AtomicU64::new(0),
            deferred_total: AtomicU64::new(0),
            handed_off_total: AtomicU64::new(0),
            demoted_total: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            queue_timeouts: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            retired: Retired::default(),
        }
    }

    fn register(&self, slot: Arc<Slot>) {
        let _g = self.slots_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = Vec::clone(&self.slots.load());
        v.push(slot);
        self.slots.store(Arc::new(v));
    }

    fn deregister(&self, slot: &Arc<Slot>) {
        {
            let _g = self.slots_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut v = Vec::clone(&self.slots.load());
            v.retain(|s| !Arc::ptr_eq(s, slot));
            self.slots.store(Arc::new(v));
        }
        self.retired
            .polls
            .fetch_add(slot.polls.load(Ordering::Relaxed), Ordering::Relaxed);
        self.retired
            .completed
            .fetch_add(slot.completed.load(Ordering::Relaxed), Ordering::Relaxed);
        self.retired
            .panicked
            .fetch_add(slot.panicked.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> GroupCounts {
        let mut c = GroupCounts {
            polls: self.retired.polls.load(Ordering::Relaxed),
            completed: self.retired.completed.load(Ordering::Relaxed),
            panicked: self.retired.panicked.load(Ordering::Relaxed),
            queue_depth: self.injector.len(),
        };
        for s in self.slots.load().iter() {
            c.polls += s.polls.load(Ordering::Relaxed);
            c.completed += s.completed.load(Ordering::Relaxed);
            c.panicked += s.panicked.load(Ordering::Relaxed);
            c.queue_depth += s.stealers.as_ref().map_or(0, Stealers::len);
        }
        c
    }

    /// Queues a runnable from a thread that is not one of this group's.
    pub(crate) fn push_remote(&self, r: Runnable) {
        self.injector.push(r);
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Relaxed) {
            // The runtime has shut down and drained its queues (its store of
            // `closed` and this push are ordered by the two fences, so one
            // of the two drains sees the task): cancel it here.
            self.drain();
            return;
        }
        self.notify_fenced();
    }

    /// Wakes one parked thread, if any thread is parked. Cost when none is:
    /// one fence and one load.
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        self.notify_fenced();
    }

    #[inline]
    fn notify_fenced(&self) {
        if self.num_sleeping.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.notify_slow();
    }

    #[cold]
    fn notify_slow(&self) {
        let woken = {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            // Skip a thread already woken (one that the I/O driver handed a
            // task, still on the list until it has left the driver): it is
            // on its way back to its queues anyway.
            let i = sleepers
                .iter()
                .rposition(|s| !s.notified.load(Ordering::Acquire));
            let s = i.map(|i| sleepers.swap_remove(i));
            self.num_sleeping.store(sleepers.len(), Ordering::SeqCst);
            s
        };
        if let Some(s) = woken {
            s.wake();
        }
    }

    /// Wakes every parked thread (shutdown).
    pub(crate) fn notify_all(&self) {
        let all = {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            self.num_sleeping.store(0, Ordering::SeqCst);
            std::mem::take(&mut *sleepers)
        };
        for s in all {
            s.wake();
        }
    }

    /// Whether a thread stuck past its budget can still be written off and
    /// replaced (the cap on hijacked threads has room).
    pub(crate) fn can_replace(&self) -> bool {
        self.hijacked_now.load(Ordering::Relaxed) < self.max_hijacked
    }

    /// Takes a place under the cap on hijacked threads, for a thread about
    /// to be written off or handed off, so that the cap holds even while
    /// threads exit concurrently. Returns how many places were taken
    /// before, or `None` at the cap.
    pub(crate) fn take_cap_place(&self) -> Option<usize> {
        self.hijacked_now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_hijacked).then_some(n + 1)
            })
            .ok()
    }

    /// Threads not stuck in a poll that ran over budget (timed out, held at
    /// the cap, or written off): what a dropped runtime waits for.
    pub(crate) fn unstuck_threads(&self) -> usize {
        self.slots
            .load()
            .iter()
            .filter(|s| !matches!(tag(s.state.load()), EXPIRED | HIJACKED))
            .count()
    }

    /// Shutdown, once the watchdog has stopped: answers the task of every
    /// poll still running (on a thread the shutdown leaves behind) as
    /// cancelled. The claim keeps the task alive while its header is used;
    /// the expiry makes its thread drop the task when the poll returns.
    pub(crate) fn cancel_running(&self) {
        for slot in self.slots.load().iter() {
            let word = slot.state.load();
            if tag(word) != RUNNING {
                continue;
            }
            if let Some(header) = slot.state.claim(word) {
                // SAFETY: the slot is claimed, so its owner cannot finish
                // the poll (and drop the task) until `expire` below.
                let header = unsafe { &*header };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| header.abort()));
                slot.state.expire();
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.injector.is_empty() || self.slots.load().iter().any(|s| s.has_stealable())
    }

    /// Shutdown: closes the group's queues and drops every queued task,
    /// including those in the local queues of threads still stuck in a poll;
    /// their handles resolve as cancelled. A task scheduled later is dropped
    /// at once (`push_remote`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.drain();
    }

    fn drain(&self) {
        while let Some(r) = self.take_queued(true) {
            drop(r);
        }
    }

    /// Takes one queued task out of the injector or, if `from_locals`, out
    /// of any thread's local queue (shutdown, and the watchdog for the queue
    /// deadline).
    pub(crate) fn take_queued(&self, from_locals: bool) -> Option<Runnable> {
        let take = |steal: &dyn Fn() -> Steal<Runnable>| loop {
            match steal() {
                Steal::Success(r) => break Some(r),
                Steal::Retry => continue,
                Steal::Empty => break None,
            }
        };
        if let Some(r) = self.injector.pop() {
            return Some(r);
        }
        if from_locals {
            for slot in self.slots.load().iter() {
                if let Some(st) = &slot.stealers {
                    if let Some(r) = take(&|| st.next.steal())
                        .or_else(|| take(&|| st.ready.steal()))
                        .or_else(|| take(&|| st.yielded.steal()))
                    {
                        return Some(r);
                    }
                }
            }
        }
        None
    }
}

/// Starts one more thread in `group`, counted as healthy from now.
///
/// The slot is registered before the thread runs, so the caller (often the
/// watchdog) never waits for the new thread to be scheduled.
pub(crate) fn spawn_thread(shared: &Arc<Shared>, gid: GroupId) -> io::Result<()> {
    shared.group(gid).healthy.fetch_add(1, Ordering::SeqCst);
    spawn_replacement(shared, gid)
}

/// Starts a thread in the place of one that has just stopped counting as
/// healthy (written off, or handed off) but is still counted: the new
/// thread takes over its count, so `healthy` never dips between the two,
/// as [`RuntimeMetrics`](crate::RuntimeMetrics) readers would otherwise
/// see. If no thread can be started, the count drops by one (the old
/// thread leaves it with nobody in its place) and the watchdog's refill
/// tries again. ([`spawn_thread`] counts its thread first and ends here.)
pub(crate) fn spawn_replacement(shared: &Arc<Shared>, gid: GroupId) -> io::Result<()> {
    let group = shared.group(gid);
    let id = group.next_id.fetch_add(1, Ordering::Relaxed);
    let local = (gid == GroupId::Event).then(Local::new);
    let name = match gid {
        GroupId::Event => format!("{}-{id}", shared.config.thread_name),
        GroupId::Blocking => format!("{}-blocking-{id}", shared.config.thread_name),
    };
    let slot = Arc::new(Slot {
        id,
        state: SlotState::new(),
        slice_expired: AtomicU32::new(u32::MAX),
        stealers: local.as_ref().map(Local::stealers),
        thread: OnceLock::new(),
        os_tid: std::sync::atomic::AtomicI64::new(0),
        demoted: AtomicBool::new(false),
        handed_off: AtomicBool::new(false),
        notified: AtomicBool::new(false),
        driver_waker: AtomicWaker::new(),
        polls: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        panicked: AtomicU64::new(0),
        seen_word: AtomicU64::new(u64::MAX),
        seen_at_ns: AtomicU64::new(0),
        stamp_ns: AtomicU64::new(0),
        stamp_seq: AtomicU32::new(u32::MAX),
        deferred: AtomicBool::new(false),
        queued_word: AtomicU64::new(u64::MAX),
    });
    group.alive.fetch_add(1, Ordering::SeqCst);
    group.register(slot.clone());
    let ctx = WorkerCtx {
        shared: shared.clone(),
        gid,
        slot: slot.clone(),
        local,
        seq: Cell::new(0),
        tick: Cell::new(0),
        next_in_a_row: Cell::new(0),
        in_driver: Cell::new(false),
        in_run: Cell::new(false),
        stamp_next_poll: Cell::new(false),
        job_stamp: Cell::new(None),
    };
    let spawned = std::thread::Builder::new()
        .name(name)
        .stack_size(shared.config.thread_stack_size)
        .spawn(move || {
            let _ = ctx.slot.thread.set(std::thread::current());
            ctx.slot
                .os_tid
                .store(crate::sys::current_tid(), Ordering::Relaxed);
            ctx.main();
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            group.deregister(&slot);
            group.alive.fetch_sub(1, Ordering::SeqCst);
            group.healthy.fetch_sub(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// The state of one worker loop, owned by its thread.
pub(crate) struct WorkerCtx {
    shared: Arc<Shared>,
    gid: GroupId,
    pub(crate) slot: Arc<Slot>,
    local: Option<Local>,
    seq: Cell<u32>,
    tick: Cell<u32>,
    /// Tasks taken from the `next` slot in a row.
    next_in_a_row: Cell<u32>,
    /// Set while the thread is parked in the I/O driver.
    in_driver: Cell<bool>,
    /// Set while the thread runs a task (`Runnable::run`): its watched
    /// poll, and the bookkeeping after it (the output stored, the
    /// `JoinHandle` woken, a finished future dropped).
    in_run: Cell<bool>,
    /// Set on waking from a park: the next poll stamps its start time.
    stamp_next_poll: Cell<bool>,
    /// Pool threads: when the job about to run was spawned, which its poll
    /// stamps as its start, so that a job's budget counts from its spawn.
    job_stamp: Cell<Option<u64>>,
}

/// How many rounds (each a `sched_yield`) a thread looks for work before it
/// parks. Event threads: 2-8 rounds cost the HTTP server bench about 5% less
/// CPU per request than 32, with no loss on the scheduler workloads; none at
/// all, or busy-spinning instead of yielding, cost more. The price is paid
/// by callers that wait on blocking jobs: the blocking round-trip bench
/// takes about 15% longer (still about 0.2x tokio's time). Pool threads
/// keep 32: jobs often come back to back (`benches/RESULTS.md`).
const fn spin_rounds(gid: GroupId) -> u32 {
    match gid {
        GroupId::Event => 4,
        GroupId::Blocking => 32,
    }
}

impl WorkerCtx {
    /// The runtime this thread belongs to.
    #[inline]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    #[inline]
    pub(crate) fn next_seq(&self) -> u32 {
        let s = self.seq.get().wrapping_add(1);
        self.seq.set(s);
        s
    }

    /// Called just before the poll numbered `seq` is published: the first
    /// poll after a wake-up, and any poll while the watchdog is parked,
    /// records when it began, so the watchdog can time it exactly although
    /// it may itself be waking from a park and see the poll late. Never
    /// later than the poll's start (so no late timeout) and never earlier
    /// (so no early one). A busy runtime's watchdog is not parked, so a busy
    /// thread reads no clock.
    ///
    /// A pool thread stamps every poll: a job with the time it was spawned
    /// (no clock read; its budget counts from there, queueing included),
    /// anything else (a timed drop) with the time it begins.
    #[inline]
    pub(crate) fn stamp_poll(&self, seq: u32) {
        if self.gid == GroupId::Blocking
            || self.stamp_next_poll.get()
            || self.shared.watchdog_parked.is_parked()
        {
            self.stamp_poll_slow(seq);
        }
    }

    #[cold]
    fn stamp_poll_slow(&self, seq: u32) {
        self.stamp_next_poll.set(false);
        let now = match self.job_stamp.take() {
            Some(spawned) => spawned,
            None => self.shared.epoch.elapsed().as_nanos() as u64,
        };
        self.slot.stamp_ns.store(now, Ordering::Relaxed);
        // Published by the poll's own Release store of the state word.
        self.slot.stamp_seq.store(seq, Ordering::Relaxed);
    }

    /// The sequence number of the poll this thread published last: the
    /// running poll's, or, after a watched scope inside it, the number the
    /// scope's end gave it back under.
    #[inline]
    pub(crate) fn seq(&self) -> u32 {
        self.seq.get()
    }

    /// Pushes a task woken or spawned on this thread, if it belongs to
    /// this thread's runtime and group. Gives the task back otherwise.
    ///
    /// Returns whether another thread is worth waking for it: only when a
    /// task becomes stealable. A task queued from this thread's own poll,
    /// or from the end of the task run it belongs to (a finished task waking
    /// its `JoinHandle`'s owner), goes to the `next` slot, which other
    /// threads take from only after it has waited a whole poll, and wakes
    /// no one unless it pushes the slot's previous task out into `ready`
    /// (as tokio's LIFO slot): this thread runs it as soon as the poll
    /// returns, which is sooner than a parked thread could wake, so a chain
    /// of spawns, or a request's handler and its connection waking each
    /// other, stays on one thread without a futex call each time. (Queued
    /// at the back of `ready` instead, a connection woken by its finished
    /// handler waits behind every other connection the driver woke, and
    /// with it the handler's task cell: dozens of cells alive at once
    /// overflow the allocator's per-thread cache, and a thread woken for
    /// each one steals connections, whose buffers are then freed across
    /// threads.) The first task the I/O driver wakes here wakes no one
    /// either (this thread leaves the driver at once to run it); yielded
    /// tasks never do.
    /// Should the poll run on, the watchdog wakes a parked thread to steal
    /// what waits here (see `Watchdog::inspect`). A poll that has been
    /// timed out or written off does not count as this thread's own: its
    /// thread may never come back for the task.
    #[inline]
    pub(crate) fn push_local(
        &self,
        shared: &Shared,
        r: Runnable,
        yielded: bool,
    ) -> Result<bool, Runnable> {
        match &self.local {
            // A runtime shutting down takes tasks through `push_remote`,
            // which cancels them once the queues are closed.
            Some(local) if std::ptr::eq(&*self.shared, shared) && !shared.is_shutdown() => {
                if yielded {
                    local.yielded.push(r);
                    Ok(false)
                } else {
                    if self.in_driver.get() {
                        let alone = local.ready.is_empty() && local.next.is_empty();
                        local.ready.push(r);
                        // The driver woke a task on this thread: leave the
                        // driver and run it (no syscall: tokio's waker for
                        // its own thread only sets a flag). Also make sure
                        // the watchdog is up, in case a `tokio::spawn`ed task
                        // keeps this thread in the driver.
                        if !self.slot.notified.swap(true, Ordering::AcqRel) {
                            self.slot.driver_waker.wake();
                            self.shared.wake_parked_watchdog();
                        }
                        return Ok(!alone);
                    }
                    // Within this thread's poll, or just after it: a task
                    // that finishes wakes its `JoinHandle`'s owner once its
                    // watched poll has ended (the slot is idle again), and
                    // that owner (a connection waiting for its request's
                    // handler) is as much this thread's next task as one
                    // woken during the poll. Not after an overrun (the slot
                    // is expired or hijacked then), nor on a thread whose
                    // long poll was handed off: it exits once the poll
                    // returns, at a lowered priority, so what it queues
                    // belongs in `ready`, where the thread that replaced it
                    // can take it at once.
                    let state = tag(self.slot.state.load());
                    if (state == RUNNING || (state == IDLE && self.in_run.get()))
                        && !self.slot.handed_off.load(Ordering::Relaxed)
                    {
                        // From this thread's poll: run it next; what was
                        // next waits its turn in `ready`, where it can be
                        // stolen, so only then is another thread worth
                        // waking. Tasks already in `ready` were announced
                        // when they were queued; waking a thread again for
                        // them at every spawn moves work (and its memory)
                        // between threads for nothing.
                        let moved = match local.next.pop() {
                            Some(prev) => {
                                local.ready.push(prev);
                                true
                            }
                            None => false,
                        };
                        local.next.push(r);
                        Ok(moved)
                    } else {
                        local.ready.push(r);
                        Ok(true)
                    }
                }
            }
            _ => Err(r),
        }
    }

    fn group(&self) -> &Group {
        self.shared.group(self.gid)
    }

    /// A task's first poll: whether to refuse it after all (see
    /// `Clients::readmit`), counting the refusal.
    #[cold]
    pub(crate) fn readmit(&self, header: &Header) -> Option<crate::Refusal> {
        let r = self
            .shared
            .clients
            .readmit(header.admitted, header.client.as_ref())?;
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        Some(r)
    }

    /// A poll (or timed drop) of `header`'s task that ran past its budget
    /// has returned: it no longer counts against its route.
    #[cold]
    pub(crate) fn overdue_returned(&self, header: &Header) {
        if header.overdue.swap(false, Ordering::Relaxed) {
            self.shared.clients.overdue_end(header.admitted.route);
        }
    }

    fn main(self) {
        if self.gid == GroupId::Blocking && self.shared.config.blocking_nice != 0 {
            crate::sys::lower_current_priority(self.shared.config.blocking_nice);
        }
        // Keeps the I/O driver's tokio runtime up until this thread exits,
        // so that a poll still running after a background shutdown finds
        // its timers and sockets working (dropped last: declared first).
        let _driver = self.shared.io.as_ref().and_then(|io| io.hold());
        let _tokio = self.shared.tokio.enter();
        let _runtime =
            context::enter_runtime(crate::runtime::Handle::from_shared(self.shared.clone()));
        let worker = context::enter_worker(&self);
        let leave = self.run();
        drop(worker);
        self.retire(leave);
    }

    /// The worker loop. Returns why the thread leaves.
    fn run(&self) -> Leave {
        let group = self.group();
        let io = match self.gid {
            GroupId::Event => self.shared.io.as_ref(),
            GroupId::Blocking => None,
        };
        loop {
            if self.shared.is_shutdown() {
                return Leave::Healthy;
            }
            if let Some(io) = io
                && io.take_starved()
            {
                // Every thread has been busy for a watchdog interval: give
                // I/O and timers a turn between two polls.
                io.turn();
            }
            match self.find_task(group) {
                Some(r) => {
                    if self.gid == GroupId::Blocking {
                        self.check_job_deadline(group, &r);
                    }
                    self.in_run.set(true);
                    r.run();
                    self.in_run.set(false);
                    self.job_stamp.set(None);
                    if tag(self.slot.state.load()) == HIJACKED {
                        return Leave::Hijacked;
                    }
                    if self.slot.handed_off.load(Ordering::Relaxed) {
                        // Another thread took our place while the poll ran.
                        return Leave::HandedOff;
                    }
                    if self.slot.demoted.load(Ordering::Relaxed) && !self.undemote() {
                        // Stuck at idle priority: make way for a thread
                        // at the ordinary one.
                        return Leave::Healthy;
                    }
                }
                None => self.park(group),
            }
        }
    }

    /// A pool thread, before it runs a job: a job whose budget (counted
    /// from its spawn) ran out while it waited is answered with a queue
    /// timeout and not started (no side effects after its caller was told
    /// it timed out); otherwise its poll is stamped with its spawn time. One
    /// clock read per job. The thread holds the job, so nothing else can
    /// resolve it with a timeout meanwhile.
    fn check_job_deadline(&self, group: &Group, r: &Runnable) {
        let header = r.metadata();
        if header.is_resolved_early() {
            return;
        }
        let spawned = header.queued.load(Ordering::Relaxed);
        if let Some(budget) = header.budget() {
            let now = self.shared.epoch.elapsed().as_nanos() as u64;
            let waited = now.saturating_sub(spawned);
            if u128::from(waited) >= budget.as_nanos() {
                if header.time_out_queued(std::time::Duration::from_nanos(waited)) {
                    group.timeouts.fetch_add(1, Ordering::Relaxed);
                    group.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                    header.wake_join();
                }
                return;
            }
        }
        self.job_stamp.set(Some(spawned));
    }

    fn find_task(&self, group: &Group) -> Option<Runnable> {
        let found = match &self.local {
            Some(local) => {
                let from_injector = || {
                    // A share of what is queued, as tokio takes: enough to
                    // save trips here, not so much that other threads idle.
                    let share = |len: usize| (len / group.target.max(1) + 1).min(INJECT_BATCH);
                    match group.injector.take_batch(share, |r| local.ready.push(r)) {
                        Take::Item(r) => Some(r),
                        Take::Empty | Take::Busy => None,
                    }
                };
                // Check the injector first now and then, so that tasks from
                // outside are not starved by a busy local queue.
                let tick = self.tick.get().wrapping_add(1);
                self.tick.set(tick);
                let in_a_row = self.next_in_a_row.get();
                if in_a_row < NEXT_IN_A_ROW
                    && tick % 61 != 0
                    && let Some(r) = local.next.pop()
                {
                    self.next_in_a_row.set(in_a_row + 1);
                    return Some(r);
                }
                self.next_in_a_row.set(0);
                if tick % 61 == 0 {
                    from_injector().or_else(|| local.pop_any())
                } else {
                    local.ready.pop().or_else(|| local.next.pop()).or_else(|| {
                        // Then the injector, then our own yielded tasks,
                        // and only then other threads' queues.
                        let r = from_injector()
                            .or_else(|| local.yielded.pop())
                            .or_else(|| self.steal(group, local));
                        if r.is_some() && !local.ready.is_empty() {
                            // We took a batch: wake a sleeper to share it.
                            group.notify();
                        }
                        r
                    })
                }
            }
            None => group.injector.pop(),
        };
        if found.is_some() && self.local.is_none() {
            group.queued.fetch_sub(1, Ordering::Relaxed);
            if !group.injector.is_empty() {
                group.notify();
            }
        }
        found
    }

    /// Steals from the other event threads: their ready tasks first, then
    /// a `next` task that has waited a whole poll (see `Slot::next_waited`),
    /// then their yielded ones.
    fn steal(&self, group: &Group, local: &Local) -> Option<Runnable> {
        let slots = group.slots.load();
        let n = slots.len();
        if n <= 1 {
            return None;
        }
        let start = self.slot.id % n;
        for kind in 0..3 {
            for i in 0..n {
                let other = &slots[(start + i) % n];
                if Arc::ptr_eq(other, &self.slot) {
                    continue;
                }
                let Some(st) = &other.stealers else { continue };
                let stealer = match kind {
                    0 => &st.ready,
                    1 if other.next_waited() => &st.next,
                    1 => continue,
                    _ => &st.yielded,
                };
                loop {
                    match stealer.steal_batch_and_pop(&local.ready) {
                        Steal::Success(r) => return Some(r),
                        Steal::Retry => continue,
                        Steal::Empty => break,
                    }
                }
            }
        }
        None
    }

    fn park(&self, group: &Group) {
        for _ in 0..spin_rounds(self.gid) {
            if group.has_work() || self.shared.is_shutdown() {
                return;
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        {
            let mut sleepers = group.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            sleepers.push(self.slot.clone());
            group.num_sleeping.store(sleepers.len(), Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        let seq = self.seq.get();
        if !group.has_work() && !self.shared.is_shutdown() {
            self.slot.state.sleep(seq);
            let drove = match (self.gid, &self.shared.io) {
                (GroupId::Event, Some(io)) => {
                    self.in_driver.set(true);
                    let drove = io.drive_until(Notified {
                        slot: &self.slot,
                        shared: &self.shared,
                    });
                    self.in_driver.set(false);
                    // Drop the driver's waker, so that a later wake does not
                    // poke a driver this thread no longer holds.
                    drop(self.slot.driver_waker.take());
                    drove
                }
                _ => false,
            };
            if !drove {
                while !self.slot.notified.swap(false, Ordering::Acquire)
                    && !self.shared.is_shutdown()
                {
                    std::thread::park();
                }
            }
            // Time the next poll from its own start (see `stamp_poll`).
            self.stamp_next_poll.set(true);
            self.slot.state.wake(seq);
            // The watchdog parks when every thread sleeps; it must watch the
            // polls this thread is about to run.
            self.shared.wake_parked_watchdog();
        }
        // Leave the sleeper list if no producer took us off it.
        let mut sleepers = group.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = sleepers.iter().position(|s| Arc::ptr_eq(s, &self.slot)) {
            sleepers.swap_remove(i);
            group.num_sleeping.store(sleepers.len(), Ordering::SeqCst);
        }
        self.slot.notified.store(false, Ordering::Relaxed);
    }

    /// Asks for the ordinary scheduling policy back after the watchdog
    /// demoted this thread at a timeout, and the poll then returned before
    /// the watchdog restored it (one watchdog interval). Returns false when
    /// the kernel refuses (leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an
    /// `RLIMIT_NICE` that allows nice 0): the thread must then exit, and the
    /// watchdog starts a replacement at the ordinary priority.
    #[cold]
    fn undemote(&self) -> bool {
        if !self.slot.demoted.swap(false, Ordering::Relaxed) || crate::sys::restore_current() {
            return true;
        }
        tracing::debug!(
            target: "curfew",
            thread = self.slot.id,
            "cannot leave the idle scheduling class; the thread exits and is replaced"
        );
        false
    }

    fn retire(self, leave: Leave) {
        if self.slot.demoted.swap(false, Ordering::Relaxed) {
            // The watchdog demoted us; take locks below at normal priority
            // (best effort: without the privilege we stay idle-class for
            // the few instructions left).
            crate::sys::restore_current();
        }
        let group = self.group();
        if let Some(local) = &self.local {
            // Hand on whatever was queued here.
            while let Some(r) = local.pop_any() {
                if self.shared.is_shutdown() {
                    drop(r);
                } else {
                    group.injector.push(r);
                }
            }
            group.notify();
        }
        group.deregister(&self.slot);
        match leave {
            Leave::HandedOff => {
                // Its place under the cap; its replacement runs already.
                group.hijacked_now.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!(
                    target: "curfew",
                    thread = self.slot.id,
                    "handed-off thread's long poll returned; the thread exits"
                );
            }
            Leave::Hijacked => {
                group.hijacked_now.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(
                    target: "curfew",
                    thread = self.slot.id,
                    group = ?self.gid,
                    "hijacked thread's poll returned; the task was dropped and the thread exits"
                );
            }
            Leave::Healthy => {
                group.healthy.fetch_sub(1, Ordering::SeqCst);
            }
        }
        group.alive.fetch_sub(1, Ordering::SeqCst);
        // Wakes the watchdog, which refills the group if a healthy thread
        // left before shutdown (one that could not leave the idle class).
        self.shared.thread_exited();
    }
}

/// Why a worker thread leaves its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Shutdown, or it could not leave the idle class: it counted as
    /// healthy.
    Healthy,
    /// Its poll returned after the watchdog wrote it off.
    Hijacked,
    /// Its long poll returned after the watchdog handed it off.
    HandedOff,
}

/// Completes when the thread's slot is notified or the runtime shuts down:
/// what a thread parked in the I/O driver waits for.
struct Notified<'a> {
    slot: &'a Slot,
    shared: &'a Shared,
}

impl std::future::Future for Notified<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let ready =
            || self.slot.notified.swap(false, Ordering::Acquire) || self.shared.is_shutdown();
        if ready() {
            return std::task::Poll::Ready(());
        }
        self.slot.driver_waker.register(cx.waker());
        // A producer may have set the flag before the waker was in place.
        if ready() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}
