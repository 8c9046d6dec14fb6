//! The watchdog: one thread that samples every event and pool thread, and
//! the one place that says what happens on an overrun.
//!
//! # Sampling ("lazy", as Node.cure's cheaper watchdog)
//!
//! Threads publish each poll in their [`Slot`] with a sequence number; they
//! never read a clock. Every `watchdog_interval` the watchdog reads each slot.
//! The first time it sees a poll it notes the time; a poll it keeps seeing has
//! been running *at least* since that note. So a timeout never fires early.
//! Once it has seen a poll, the watchdog sleeps no longer than until that
//! poll's budget runs out (see [`Watchdog::sleep`]), so a timeout fires when
//! it is due after that first sighting: at most about one interval late, and
//! on time for a poll that stamped its own start (the first after a thread's
//! wake-up, or one begun while the watchdog was parked). When every thread
//! is parked, the watchdog parks too, and the first thread to wake unparks
//! it.
//!
//! # On an overrun
//!
//! [`Watchdog::overrun`] and [`Watchdog::write_off`] are the whole story:
//!
//! 1. the task's `JoinHandle` is resolved with a [`TimeoutError`] at once,
//!    and the first outcome wins (a task that completed or was aborted in the
//!    meantime keeps its outcome);
//! 2. the task is marked timed out, so [`checkpoint`](crate::checkpoint)
//!    returns the error and the task is dropped when its poll returns;
//! 3. the overrun is recorded: a `tracing` warn event (written by the log
//!    thread), the group's timeout count, the client's strike (before the
//!    caller is woken, unless a new client's admission holds the client
//!    table's lock: then at a later tick, after the caller has its error);
//! 4. after the hijack grace, if the poll is still running, the thread is
//!    marked hijacked and a replacement thread is started, so the runtime
//!    keeps its full count of healthy threads (and, if configured, the
//!    hijacked thread is moved to the idle scheduling class). The hijacked thread drops the
//!    task and exits when its poll returns;
//! 5. at the cap on hijacked threads, the thread is not replaced: it is
//!    reported as overdue and replaced as soon as a hijacked thread exits.
//!
//! A task whose key carries a route also counts against its route until its
//! poll returns; a route with
//! [`max_overdue_per_route`](crate::Builder::max_overdue_per_route) such
//! polls is refused, at the spawn and at a queued task's first poll, so that
//! one poisonous route cannot bring the runtime to its cap.
//!
//! The overrun path never leaves a slot claimed: a panic in it (from a
//! tracing subscriber, a waker, or the client policy) is caught, the slot is
//! released, and the watchdog carries on; so is a panic anywhere else in a
//! tick.
//!
//! # The queue deadline
//!
//! A group is *starved* when none of its threads is free to run queued work:
//! each is running a poll past its budget, timed out, or written off, and
//! the cap leaves no room to replace one (below the cap, a thread past its
//! budget is replaced within the hijack grace, which is soon enough). Then
//! no thread will come for the queued tasks in time, so the watchdog takes
//! them out of the queues (the shared one and the stuck threads' own) and
//! answers each that has waited longer than its budget with a queue timeout
//! ([`JoinError::is_queue_timeout`]). A task counts as queued from the
//! watchdog tick in which it was scheduled (a lower bound: never early). A
//! blocking job counts from its spawn, and its budget keeps counting while it
//! runs. As soon as a thread is free again, the tasks still waiting go back
//! to the shared queue, in order; the answered ones are dropped by the
//! thread that takes them, under the watchdog.
//!
//! # The I/O driver
//!
//! When no event thread has entered the runtime's own I/O driver for two
//! intervals and none is free (each is in a poll past its budget, or
//! written off), the watchdog has a helper thread drive it until an event
//! thread comes back, so that timers and sockets keep working, and a
//! `Runtime::block_on` waiting on a timer still wakes, while every event
//! thread is stuck.
//!
//! [`TimeoutError`]: crate::TimeoutError
//! [`JoinError::is_queue_timeout`]: crate::JoinError::is_queue_timeout

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::deferred::emit;
use crate::executor::{self, Group, GroupId, Runnable, Slot};
use crate::runtime::Shared;
use crate::slot::{self, EXPIRED, HIJACKED, IDLE, RUNNING, SLEEPING, UNLIMITED};

/// How many recent ticks the watchdog remembers the time of (about 2 s at
/// the default interval). A task queued longer ago counts from the oldest.
const TICK_HISTORY: usize = 4096;

/// How old a poll's own start stamp may be and still be trusted (see
/// `inspect`).
const STAMP_MAX_AGE: Duration = Duration::from_secs(1);

pub(crate) fn start(shared: Arc<Shared>) -> io::Result<std::thread::JoinHandle<()>> {
    let name = format!("{}-watchdog", shared.config.thread_name);
    let handle = std::thread::Builder::new()
        .name(name)
        .stack_size(256 * 1024)
        .spawn({
            let shared = shared.clone();
            move || {
                // Every event of this thread goes through the log thread:
                // a subscriber that blocks must not stop the timeouts (see
                // `crate::deferred`).
                crate::deferred::mark_watchdog_thread();
                // Wake-up preemption of spinning threads, so that the
                // watchdog runs on time while poisoned polls hold every core.
                let short = crate::sys::request_short_slice(Duration::from_micros(100));
                // Its sleeps end on time: an overrun is answered when it is
                // due (see `Watchdog::sleep`), not one timer slack later.
                let precise = crate::sys::precise_timers();
                if tracing::enabled!(target: "curfew", tracing::Level::DEBUG) {
                    emit(move || {
                        tracing::debug!(
                            target: "curfew",
                            short_slice = short,
                            precise_timers = precise,
                            "watchdog started"
                        );
                    });
                }
                Watchdog::new(shared).run()
            }
        })?;
    let _ = shared.watchdog.set(handle.thread().clone());
    Ok(handle)
}

struct Watchdog {
    shared: Arc<Shared>,
    last_tick: Instant,
    /// The last tick published in `Shared::tick`.
    tick: u64,
    /// When ticks `first_tick..=tick` were published (ns since the epoch).
    tick_ns: VecDeque<u64>,
    first_tick: u64,
    /// Tasks taken out of a starved group's queues, per group.
    held: [VecDeque<Held>; 2],
    /// When the next held task's deadline passes, per group.
    next_due: [u64; 2],
    /// The soonest a poll this tick saw running within its budget runs out
    /// of it (ns since the epoch), or `u64::MAX`: the watchdog sleeps no
    /// longer than that, so an overrun is answered when it happens rather
    /// than at the next regular tick.
    poll_due: Cell<u64>,
    /// Ticks often enough for admission to judge by their readings of the
    /// clock (`Clients::publish_now`).
    publish_clock: bool,
    /// Strikes that found the client table's lock taken, to record at the
    /// next ticks: (client index, key).
    pending_strikes: std::cell::RefCell<Vec<(u32, Option<crate::ClientKey>)>>,
    /// Strikes lost at the cap since the last report.
    lost_strikes: Cell<u64>,
}

/// Strikes kept for a later tick at most; past this they are lost (and
/// counted in a warning).
const MAX_PENDING_STRIKES: usize = 4096;

/// When a task queued at `since_ns` has waited its budget.
fn deadline(r: &Runnable, since_ns: u64) -> u64 {
    match r.metadata().budget() {
        Some(b) => since_ns.saturating_add(u64::try_from(b.as_nanos()).unwrap_or(u64::MAX)),
        None => u64::MAX,
    }
}

/// A task the watchdog holds while its group is starved.
struct Held {
    runnable: Runnable,
    /// Queued at the latest then (ns since the epoch).
    since_ns: u64,
    answered: bool,
}

/// What one look at a slot found.
#[derive(PartialEq, Eq)]
enum Seen {
    /// The thread is parked or written off: nothing to watch.
    Quiet,
    /// The thread is awake and must be watched.
    Awake,
}

/// How much a handed-off poll's thread is niced (`Builder::hand_off_long_polls`):
/// about a tenth of a core's share against one ordinary thread, so benign
/// threads run first while a lock it holds is still let go within
/// milliseconds. (`SCHED_IDLE` would be starved outright on a busy machine,
/// and a page fault it is preempted in freezes the whole process: every
/// `mmap` queues behind it, and every later page fault behind that.)
const HAND_OFF_NICE: i32 = 10;

/// The log line of a thread the watchdog could not start (the next tick's
/// refill tries again).
#[cold]
fn cannot_start(group: &Group, e: &std::io::Error) {
    let location = group.id.location();
    let error = e.to_string();
    emit(move || {
        tracing::error!(
            target: "curfew",
            location = %location,
            error = %error,
            "cannot start a replacement thread; will retry"
        );
    });
}

/// Moves thread `tid` of `group` to the idle scheduling class, and counts
/// it if the kernel agreed.
fn demote(group: &Group, tid: i64) {
    if crate::sys::demote(tid) {
        group.demoted_total.fetch_add(1, Ordering::Relaxed);
    }
}

fn group_index(gid: GroupId) -> usize {
    match gid {
        GroupId::Event => 0,
        GroupId::Blocking => 1,
    }
}

/// Withdraws the watchdog's reading of the clock from admission when
/// dropped (`Clients::withdraw_now`).
struct WithdrawClock(Arc<Shared>);

impl Drop for WithdrawClock {
    fn drop(&mut self) {
        self.0.clients.withdraw_now();
    }
}

impl Watchdog {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            last_tick: Instant::now(),
            tick: 0,
            tick_ns: VecDeque::new(),
            first_tick: 1,
            held: [VecDeque::new(), VecDeque::new()],
            next_due: [0; 2],
            poll_due: Cell::new(u64::MAX),
            publish_clock: shared.config.watchdog_interval
                <= crate::policy::COARSE_CLOCK_MAX_INTERVAL,
            pending_strikes: std::cell::RefCell::new(Vec::new()),
            lost_strikes: Cell::new(0),
            shared,
        }
    }

    /// Keeps a strike for a later tick: the table's lock was taken.
    fn defer_strike(&self, idx: u32, key: Option<crate::ClientKey>) {
        let mut pending = self.pending_strikes.borrow_mut();
        if pending.len() < MAX_PENDING_STRIKES {
            pending.push((idx, key));
        } else {
            self.lost_strikes.set(self.lost_strikes.get() + 1);
        }
    }

    /// Records the strikes kept from earlier ticks, those it can now, and
    /// says how many were lost at the cap since it last did. Returns
    /// whether some are still waiting.
    fn retry_strikes(&self) -> bool {
        let lost = self.lost_strikes.replace(0);
        if lost > 0 {
            emit(move || {
                tracing::warn!(
                    target: "curfew",
                    lost,
                    "timeouts' strikes lost: the client table's lock stayed taken for thousands \
                     of timeouts"
                );
            });
        }
        let mut pending = self.pending_strikes.borrow_mut();
        if pending.is_empty() {
            return false;
        }
        let mut cool_offs = Vec::new();
        let mut contained = false;
        pending.retain(|(idx, key)| {
            let done = catch_unwind(AssertUnwindSafe(|| {
                self.shared.clients.try_strike(*idx, key.as_ref())
            }));
            match done {
                Ok(Err(crate::policy::WouldBlock)) => true,
                Ok(Ok(cool_off)) => {
                    if let (Some(client), Some(cool_off)) = (key, cool_off) {
                        cool_offs.push((client.clone(), cool_off));
                    }
                    false
                }
                Err(_) => {
                    contained = true;
                    false
                }
            }
        });
        let waiting = !pending.is_empty();
        drop(pending);
        for (client, cool_off) in cool_offs {
            emit(move || crate::policy::log_cool_off(&client, cool_off));
        }
        if contained {
            emit(|| {
                tracing::error!(
                    target: "curfew",
                    "a panic in the client policy was contained; a timeout's strike is lost"
                );
            });
        }
        waiting
    }

    /// At the watchdog's exit: the strikes still kept get a last chance,
    /// for up to 100 ms (a shared policy store should hear of them), and
    /// the rest are counted as lost.
    fn settle_strikes(&self) {
        let until = Instant::now() + Duration::from_millis(100);
        while self.retry_strikes() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let left = self.pending_strikes.borrow_mut().drain(..).count() as u64;
        self.lost_strikes.set(self.lost_strikes.get() + left);
        self.retry_strikes();
    }

    /// Starts a tick: publishes its number, then notes when it was
    /// published. A task that read tick `k` was queued before tick `k + 1`
    /// was published.
    fn publish_tick(&mut self) -> Instant {
        self.tick += 1;
        self.shared.tick.store(self.tick, Ordering::Relaxed);
        let now = Instant::now();
        if self.publish_clock {
            self.shared.clients.publish_now(now);
        }
        self.tick_ns.push_back(self.now_ns(now));
        if self.tick_ns.len() > TICK_HISTORY {
            self.tick_ns.pop_front();
            self.first_tick += 1;
        }
        now
    }

    /// The latest a task that read tick `k` can have been queued.
    fn queued_by(&self, k: u64, now_ns: u64) -> u64 {
        let next = k.saturating_add(1);
        if next > self.tick {
            return now_ns;
        }
        let i = next.saturating_sub(self.first_tick) as usize;
        self.tick_ns
            .get(i)
            .or(self.tick_ns.back())
            .copied()
            .unwrap_or(now_ns)
    }

    fn now_ns(&self, now: Instant) -> u64 {
        now.duration_since(self.shared.epoch).as_nanos() as u64
    }

    fn run(mut self) {
        let interval = self.shared.config.watchdog_interval;
        // However the loop ends, unwinding included, admission goes back to
        // the clock: a reading no tick renews would keep refusals for good.
        let _clock = WithdrawClock(self.shared.clone());
        while !self.shared.watchdog_stop.load(Ordering::SeqCst) {
            let now = self.publish_tick();
            // A panic in a tick (from a tracing subscriber, say) must not
            // take the watchdog down with it: every later overrun would go
            // unanswered. Whatever the tick was doing is retried next time.
            let awake = match catch_unwind(AssertUnwindSafe(|| self.tick(now))) {
                Ok(awake) => awake,
                Err(_) => {
                    let _ = catch_unwind(|| {
                        emit(|| {
                            tracing::error!(target: "curfew", "watchdog tick panicked; carrying on");
                        });
                    });
                    true
                }
            };
            self.last_tick = now;
            if awake {
                let sleep = self.sleep(interval);
                if !sleep.is_zero() {
                    std::thread::park_timeout(sleep);
                }
            } else {
                // Every thread is parked. The first to wake unparks us
                // (`Shared::wake_parked_watchdog`); until we look again,
                // polls stamp their own start. `try_park` looks at every
                // thread once more after setting the flag, so that a thread
                // that woke after the tick above is not slept through.
                let shared = self.shared.clone();
                shared.clients.withdraw_now();
                let now = Instant::now();
                let may_park = shared
                    .watchdog_parked
                    .try_park(|| catch_unwind(AssertUnwindSafe(|| self.tick(now))).unwrap_or(true));
                self.last_tick = now;
                if may_park {
                    std::thread::park();
                    shared.watchdog_parked.unparked();
                    self.last_tick = Instant::now();
                }
            }
        }
        // Strikes still waiting for the client table's lock.
        let _ = catch_unwind(AssertUnwindSafe(|| self.settle_strikes()));
        // Hand back the tasks held for the queue deadline: the runtime
        // shutting down drains the queues next.
        for gid in [GroupId::Event, GroupId::Blocking] {
            let group = self.shared.group(gid);
            for h in self.held[group_index(gid)].drain(..) {
                group.injector.push(h.runnable);
            }
        }
    }

    /// How long to sleep before the next tick: an interval, or less if a
    /// poll seen running runs out of its budget sooner, or a held task's
    /// queue deadline passes sooner. Without this, an overrun would wait
    /// for the first regular tick after it, on average half an interval.
    fn sleep(&self, interval: Duration) -> Duration {
        let held_due = |gi: usize| {
            if self.held[gi].is_empty() {
                u64::MAX
            } else {
                self.next_due[gi]
            }
        };
        let due = self.poll_due.get().min(held_due(0)).min(held_due(1));
        if due == u64::MAX {
            return interval;
        }
        let now_ns = self.now_ns(Instant::now());
        Duration::from_nanos(due.saturating_sub(now_ns)).min(interval)
    }

    /// One look at every thread. Returns whether any is awake.
    fn tick(&mut self, now: Instant) -> bool {
        self.poll_due.set(u64::MAX);
        // Strikes kept from earlier ticks keep the watchdog awake.
        let mut awake = self.retry_strikes();
        let mut event_free = true;
        for gid in [GroupId::Event, GroupId::Blocking] {
            let shared = self.shared.clone();
            let group = shared.group(gid);
            let mut free = false;
            for slot in group.slots.load().iter() {
                let (seen, slot_free) = self.inspect(group, slot, now);
                awake |= seen == Seen::Awake;
                free |= slot_free;
            }
            awake |= self.refill(group);
            // A replacement started in this tick is free.
            free = free
                || group
                    .slots
                    .load()
                    .iter()
                    .any(|s| matches!(slot::tag(s.state.load()), IDLE | SLEEPING));
            awake |= self.queue_deadline(group, free);
            if gid == GroupId::Event {
                event_free = free;
            }
        }
        if let Some(io) = &self.shared.io {
            // Help only a starved group: busy threads come back between
            // polls and take the turn asked for.
            let need = io.check() && !event_free;
            self.help_io(need);
        }
        awake
    }

    /// Applies the queue deadline to a group (see the module docs). `free`
    /// says whether one of its threads is free for queued work. Returns
    /// whether the watchdog holds tasks of the group.
    fn queue_deadline(&mut self, group: &Group, free: bool) -> bool {
        let gi = group_index(group.id);
        if free || self.shared.is_shutdown() {
            if !self.held[gi].is_empty() {
                // In order, ahead of nothing: the queues were empty of these.
                for h in self.held[gi].drain(..) {
                    group.injector.push(h.runnable);
                }
                group.notify();
            }
            self.next_due[gi] = u64::MAX;
            return false;
        }
        // Read here, after the slots were inspected: the tick's own `now`
        // can be older than a task queued since, which must not count as
        // queued before it was.
        let now_ns = self.now_ns(Instant::now());
        // Starved: take in whatever is queued.
        while let Some(r) = group.take_queued(true) {
            let since_ns = match group.id {
                GroupId::Event => {
                    self.queued_by(r.metadata().queued.load(Ordering::Relaxed), now_ns)
                }
                GroupId::Blocking => r.metadata().queued.load(Ordering::Relaxed),
            };
            let due = deadline(&r, since_ns);
            self.next_due[gi] = self.next_due[gi].min(due);
            self.held[gi].push_back(Held {
                runnable: r,
                since_ns,
                answered: false,
            });
        }
        if self.held[gi].is_empty() {
            return false;
        }
        if now_ns >= self.next_due[gi] {
            let mut answered = 0u64;
            let mut next_due = u64::MAX;
            for h in self.held[gi].iter_mut().filter(|h| !h.answered) {
                let header = h.runnable.metadata();
                if now_ns >= deadline(&h.runnable, h.since_ns) {
                    h.answered = true;
                    let waited = Duration::from_nanos(now_ns.saturating_sub(h.since_ns));
                    if header.time_out_queued(waited) {
                        group.timeouts.fetch_add(1, Ordering::Relaxed);
                        group.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                        header.wake_join();
                        answered += 1;
                    }
                } else {
                    next_due = next_due.min(deadline(&h.runnable, h.since_ns));
                }
            }
            self.next_due[gi] = next_due;
            if answered > 0 {
                let location = group.id.location();
                let held = self.held[gi].len();
                emit(move || {
                    tracing::warn!(
                        target: "curfew",
                        location = %location,
                        answered,
                        held,
                        "no thread free to run queued tasks: answered those past their budget \
                         with a queue timeout"
                    );
                });
            }
        }
        true
    }

    /// Has the helper thread drive the I/O driver while no event thread
    /// does, and stops it once one does again.
    fn help_io(&self, need: bool) {
        let Some(io) = &self.shared.io else { return };
        if !need {
            io.stop_helping();
            return;
        }
        if self.shared.is_shutdown() || !io.start_helping() {
            return;
        }
        if io.helper_thread().is_none() {
            let shared = self.shared.clone();
            let name = format!("{}-io-helper", self.shared.config.thread_name);
            let spawned = std::thread::Builder::new()
                .name(name)
                .stack_size(self.shared.config.thread_stack_size)
                .spawn(move || {
                    if let Some(io) = &shared.io {
                        io.help();
                    }
                });
            match spawned {
                Ok(h) => io.set_helper_thread(h.thread().clone()),
                Err(e) => {
                    io.stop_helping();
                    let error = e.to_string();
                    emit(move || {
                        tracing::error!(
                            target: "curfew",
                            error = %error,
                            "cannot start the I/O helper thread; will retry"
                        );
                    });
                }
            }
        }
        if let Some(t) = io.helper_thread() {
            t.unpark();
        }
    }

    /// Looks at one thread, acting on an overrun. Returns whether the thread
    /// is awake, and whether it is free for queued work (parked, between
    /// polls, or in a poll still within its budget).
    fn inspect(&self, group: &Group, slot: &Slot, now: Instant) -> (Seen, bool) {
        let word = slot.state.load();
        let mut now_ns = self.now_ns(now);
        let seen = slot.seen_word.load(Ordering::Relaxed);
        if seen != word {
            // A poll (or state) we have not seen before. Count its age from
            // now, so that elapsed times are lower bounds and timeouts never
            // fire early; but if the poll stamped its own start (the first
            // poll after a wake-up, or one begun while we were parked),
            // count from that. "Now" is read again here, after the word: the
            // tick's own reading can be older than this poll (a tick that
            // was preempted part-way), and counting from it would answer
            // the poll early by as much, now that the watchdog wakes when a
            // poll is due rather than at a later regular tick.
            now_ns = self.now_ns(Instant::now());
            let mut since_ns = now_ns;
            if slot::tag(word) == RUNNING
                && slot.stamp_seq.load(Ordering::Relaxed) == slot::seq(word)
            {
                let stamp = slot.stamp_ns.load(Ordering::Relaxed).min(now_ns);
                // A stamp from 2^32 polls ago carries the same (wrapped)
                // sequence number; at any real poll rate that is tens of
                // seconds old, while a true one is at most the watchdog's
                // own wake-up delay old. A pool thread stamps every poll
                // (a job with its spawn time, which may be long ago), so its
                // stamps are never stale.
                if group.id == GroupId::Blocking
                    || now_ns - stamp <= STAMP_MAX_AGE.as_nanos() as u64
                {
                    since_ns = stamp;
                }
            }
            slot.seen_word.store(word, Ordering::Relaxed);
            slot.seen_at_ns.store(since_ns, Ordering::Relaxed);
            if slot::tag(word) != EXPIRED {
                slot.deferred.store(false, Ordering::Relaxed);
            }
        }
        let since =
            Duration::from_nanos(now_ns.saturating_sub(slot.seen_at_ns.load(Ordering::Relaxed)));
        // A thread does not wake another for the one task it queued itself
        // (it means to run it next). If its tasks are still waiting a whole
        // interval later, and the thread has not moved on to another poll
        // meanwhile (its poll runs on, or a `tokio::spawn`ed task holds it
        // in the I/O driver), a parked thread is woken here to steal them.
        let queued = slot.has_queued();
        if queued {
            if slot.queued_word.swap(word, Ordering::Relaxed) == word {
                group.notify();
            }
        } else {
            slot.queued_word.store(u64::MAX, Ordering::Relaxed);
        }
        match slot::tag(word) {
            // Keep watching while tasks wait on such a thread.
            SLEEPING if queued => (Seen::Awake, true),
            SLEEPING => (Seen::Quiet, true),
            HIJACKED if queued => (Seen::Awake, false),
            HIJACKED => (Seen::Quiet, false),
            IDLE => (Seen::Awake, true),
            RUNNING => {
                // Sampled CPU accounting: whoever is running now is charged
                // for the time since the last sample.
                self.shared
                    .clients
                    .add_busy(slot.state.client(), now.duration_since(self.last_tick));
                let budget = slot::budget(word);
                if budget != UNLIMITED && since >= slot::budget_duration(budget) {
                    self.overrun(group, slot, word, since, now_ns);
                    (Seen::Awake, group.can_replace())
                } else {
                    if budget != UNLIMITED {
                        let left = slot::budget_duration(budget) - since;
                        let due = now_ns.saturating_add(left.as_nanos() as u64);
                        self.poll_due.set(self.poll_due.get().min(due));
                    }
                    if let Some(after) = self.shared.config.hand_off_long_polls
                        && since >= after
                        && group.id == GroupId::Event
                        && budget != UNLIMITED
                        && !slot.handed_off.load(Ordering::Relaxed)
                    {
                        self.hand_off(group, slot, word);
                    }
                    if since >= self.shared.config.time_slice {
                        slot.slice_expired.store(slot::seq(word), Ordering::Relaxed);
                    }
                    // A handed-off thread's replacement takes queued work.
                    (Seen::Awake, !slot.handed_off.load(Ordering::Relaxed))
                }
            }
            EXPIRED => {
                if since >= self.shared.config.watchdog_interval {
                    // The caller was woken a tick ago: a poll still running
                    // (perhaps on its way out through a checkpoint) gets its
                    // ordinary policy back.
                    slot.restore_policy();
                }
                if since >= self.shared.config.hijack_grace {
                    self.write_off(group, slot, word);
                }
                // Under the cap the thread is replaced once the grace runs
                // out (a few ms): a replacement will come for the queued
                // tasks, so they are not answered with queue timeouts
                // meanwhile.
                (Seen::Awake, group.can_replace())
            }
            _ => (Seen::Awake, false),
        }
    }

    /// Hands off the thread of a poll within its budget that has run long
    /// (`Builder::hand_off_long_polls`): takes a place under the hijack cap,
    /// marks the slot, starts a replacement, then lowers the long poll's
    /// priority. The poll is held while it is marked, so that it cannot
    /// return in between: its owner, once the poll returns, sees
    /// `handed_off` and exits.
    #[cold]
    fn hand_off(&self, group: &Group, slot: &Slot, word: u64) {
        if group.take_cap_place().is_none() {
            return; // at the cap: the long poll keeps its thread
        }
        if !slot.state.hold(word) {
            // The poll returned just now.
            group.hijacked_now.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        slot.handed_off.store(true, Ordering::Relaxed);
        group.handed_off_total.fetch_add(1, Ordering::Relaxed);
        slot.state.release(word);
        if tracing::enabled!(target: "curfew", tracing::Level::DEBUG) {
            // As `metrics()` would read it now, between taking the thread
            // out of service and starting its replacement.
            let healthy = crate::metrics::GroupMetrics::collect(group).healthy_threads;
            let thread = slot.id;
            emit(move || {
                tracing::debug!(
                    target: "curfew",
                    thread,
                    healthy,
                    "long poll handed off; starting a thread in its place"
                );
            });
        }
        // The replacement first: starting a thread maps its stack, which
        // takes the process's address-space lock for writing, and must not
        // queue behind a read hold (a page fault) of a thread that runs
        // slowly.
        self.replace(group);
        // 0 until the thread has stored its id, and to `lower_priority` 0
        // means the calling thread: this one.
        let tid = slot.os_tid.load(Ordering::Relaxed);
        if tid > 0 {
            crate::sys::lower_priority(tid, HAND_OFF_NICE);
            // After the replacement's stack is mapped (see above), and
            // marked, so that the restores before any later thread start,
            // at the timeout and at the poll's return all apply to it.
            if self.shared.config.hand_off_idle && !slot.demoted.swap(true, Ordering::Relaxed) {
                demote(group, tid);
            }
        }
    }

    /// Steps 1-3: answer the caller, mark the task, record the overrun.
    ///
    /// Nothing between the claim and `expire` may unwind past `expire`: a
    /// slot left claimed would keep its owner spinning at the end of its
    /// poll for good. Whatever could panic there (the client policy, a
    /// waker) runs under `catch_unwind`.
    fn overrun(&self, group: &Group, slot: &Slot, word: u64, elapsed: Duration, now_ns: u64) {
        let Some(header) = slot.state.claim(word) else {
            return; // the poll returned just now
        };
        // SAFETY: the slot is claimed, so its owner cannot finish the poll
        // (and so cannot drop the task) until `expire` below; the header
        // lives inline in the task's allocation, which the running
        // `Runnable` keeps alive for the whole poll.
        let header = unsafe { &*header };
        if self.shared.config.demote_overrunning && !slot.demoted.swap(true, Ordering::Relaxed) {
            // Before the caller is woken: a caller (or a replacement thread)
            // woken onto this core then preempts the spinning poll at once,
            // instead of waiting up to a scheduler tick for it.
            demote(group, slot.os_tid.load(Ordering::Relaxed));
        }
        let answered = header.time_out(elapsed);
        // The poll counts against its route until it returns (even the
        // timed drop of a task answered already: it holds the thread too).
        let route = header.admitted.route;
        if route != crate::policy::NO_CLIENT && !header.overdue.swap(true, Ordering::Relaxed) {
            self.shared.clients.overdue_start(route);
        }
        let mut cool_off = None;
        let mut contained = Ok(());
        if answered {
            // Record before waking the caller, so that it sees the count.
            group.timeouts.fetch_add(1, Ordering::Relaxed);
            // Unless a new client's admission holds the table's lock: the
            // strike then waits for a later tick (`retry_strikes`) rather
            // than the watchdog for the lock.
            contained = catch_unwind(AssertUnwindSafe(|| {
                let (idx, key) = (header.admitted.client, header.client.as_ref());
                match self.shared.clients.try_strike(idx, key) {
                    Ok(c) => cool_off = c,
                    Err(crate::policy::WouldBlock) => self.defer_strike(idx, key.cloned()),
                }
            }));
            // Wake the caller even if the policy panicked.
            contained = contained.and(catch_unwind(AssertUnwindSafe(|| header.wake_join())));
        }
        let info = answered.then(|| {
            (
                header.name.clone(),
                header.client.clone(),
                header.budget(),
                cool_off,
            )
        });
        // From here on the header may be freed.
        let expired = slot.state.expire();
        slot.seen_word.store(expired, Ordering::Relaxed);
        slot.seen_at_ns.store(now_ns, Ordering::Relaxed);
        if contained.is_err() {
            emit(|| {
                tracing::error!(
                    target: "curfew",
                    "a panic in the overrun path (client policy or waker) was contained"
                );
            });
        }

        if let Some((name, client, budget, cool_off)) = info {
            let location = group.id.location();
            let hijacked = group.hijacked_now.load(Ordering::Relaxed);
            emit(move || {
                tracing::warn!(
                    target: "curfew",
                    task = name.as_deref().unwrap_or(""),
                    client = client.as_ref().map(|c| c.as_str()).unwrap_or(""),
                    budget_ms = budget.map_or(f64::INFINITY, |b| b.as_secs_f64() * 1e3),
                    elapsed_ms = elapsed.as_secs_f64() * 1e3,
                    location = %location,
                    hijacked,
                    "poll over budget: answered with a TimeoutError"
                );
                if let (Some(client), Some(cool_off)) = (client, cool_off) {
                    crate::policy::log_cool_off(&client, cool_off);
                }
            });
        }
        if self.shared.config.hijack_grace.is_zero() {
            self.write_off(group, slot, expired);
        }
    }

    /// Step 4-5: the grace ran out; replace the thread, within the cap.
    fn write_off(&self, group: &Group, slot: &Slot, expired: u64) {
        if slot.handed_off.load(Ordering::Relaxed) {
            // Its place under the cap is taken and it was replaced already.
            if slot.state.hijack(expired) {
                self.hijacked(group, slot, group.hijacked_now.load(Ordering::Relaxed));
            }
            return;
        }
        // A place under the cap first.
        let Some(prev) = group.take_cap_place() else {
            if !slot.deferred.swap(true, Ordering::Relaxed) {
                group.deferred_total.fetch_add(1, Ordering::Relaxed);
                crate::health::note_write_off();
                let (location, cap) = (group.id.location(), group.max_hijacked);
                emit(move || {
                    tracing::warn!(
                        target: "curfew",
                        location = %location,
                        cap,
                        "overrunning thread not replaced: hijacked-thread cap reached; running \
                         with fewer healthy threads until a hijacked thread exits"
                    );
                });
            }
            return;
        };
        if !slot.state.hijack(expired) {
            // The poll returned during the grace: the thread is healthy.
            group.hijacked_now.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        slot.deferred.store(false, Ordering::Relaxed);
        self.hijacked(group, slot, prev + 1);
        self.replace(group);
    }

    /// A thread was just hijacked: its priority and the record.
    fn hijacked(&self, group: &Group, slot: &Slot, now_hijacked: usize) {
        if self.shared.config.demote_hijacked {
            if !slot.demoted.swap(true, Ordering::Relaxed) {
                // It may spin for a long time yet: let it have only spare CPU.
                demote(group, slot.os_tid.load(Ordering::Relaxed));
            }
        } else {
            // Demoted at the timeout (a grace shorter than the interval),
            // but hijacked threads keep their priority (so that, for one, a
            // supervisor's kill is not slowed by a thread that hardly runs).
            slot.restore_policy();
        }
        group.hijacked_total.fetch_add(1, Ordering::Relaxed);
        crate::health::note_write_off();
        let (location, thread) = (group.id.location(), slot.id);
        // As `metrics()` would read it now, between taking the thread out of
        // service and starting its replacement.
        let healthy = crate::metrics::GroupMetrics::collect(group).healthy_threads;
        emit(move || {
            tracing::warn!(
                target: "curfew",
                location = %location,
                thread,
                hijacked = now_hijacked,
                healthy,
                "thread hijacked by an overrunning poll; starting a replacement"
            );
        });
    }

    /// Gives every thread demoted at a timeout its ordinary policy back,
    /// before this thread starts another. Starting a thread maps its stack,
    /// which waits for the process's address-space lock; a demoted thread
    /// preempted inside a page fault holds that lock, and on a busy machine
    /// it would only run again once the watchdog restored it: the watchdog
    /// would wait for it, every timeout with it, and every page fault in
    /// the process behind the queued `mmap`. (Threads demoted for good
    /// with `demote_hijacked_threads` keep their class; that setting's
    /// documented risk.)
    #[cold]
    fn restore_demoted(&self) {
        for group in [&self.shared.event, &self.shared.blocking] {
            for slot in group.slots.load().iter() {
                let for_good =
                    self.shared.config.demote_hijacked && slot::tag(slot.state.load()) == HIJACKED;
                if !for_good {
                    slot.restore_policy();
                }
            }
        }
    }

    /// Starts a thread in the place of one that was just written off or
    /// handed off, which still counts as healthy until then: the new one
    /// takes over its count, so that `healthy` shows no dip in between.
    fn replace(&self, group: &Group) {
        if self.shared.is_shutdown() {
            group.healthy.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // Before a stack is mapped: see `restore_demoted`.
        self.restore_demoted();
        if let Err(e) = executor::spawn_replacement(&self.shared, group.id) {
            cannot_start(group, &e);
        }
        self.refill(group);
    }

    /// Starts threads until the group has its target of healthy ones.
    /// Returns whether it is still short (to try again next tick).
    fn refill(&self, group: &Group) -> bool {
        if self.shared.is_shutdown() {
            return false;
        }
        if group.healthy.load(Ordering::SeqCst) < group.target {
            self.restore_demoted();
        }
        while group.healthy.load(Ordering::SeqCst) < group.target {
            if let Err(e) = executor::spawn_thread(&self.shared, group.id) {
                cannot_start(group, &e);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watchdog of its own over a built runtime's state (the runtime's
    /// own watchdog runs beside it; only `sleep` is called here).
    fn watchdog() -> (crate::Runtime, Watchdog) {
        let rt = crate::Runtime::builder().event_threads(1).build().unwrap();
        let w = Watchdog::new(rt.handle().shared.clone());
        (rt, w)
    }

    #[test]
    fn with_nothing_due_it_sleeps_an_interval() {
        let (_rt, w) = watchdog();
        let interval = Duration::from_millis(7);
        assert_eq!(w.sleep(interval), interval);
    }

    #[test]
    fn it_sleeps_until_a_seen_poll_is_due_and_no_longer_than_an_interval() {
        let (_rt, w) = watchdog();
        // Generous margins: a loaded machine may preempt the test between
        // its reading of the clock and the watchdog's.
        let interval = Duration::from_secs(60);
        let now = w.now_ns(Instant::now());
        w.poll_due.set(now + 5_000_000_000);
        let s = w.sleep(interval);
        assert!(
            s <= Duration::from_secs(5) && s > Duration::from_secs(4),
            "{s:?}"
        );
        w.poll_due.set(now + 100_000_000_000);
        assert_eq!(w.sleep(interval), interval);
        // Already due: no sleep at all, so the next tick answers it now.
        w.poll_due.set(now.saturating_sub(1));
        assert_eq!(w.sleep(interval), Duration::ZERO);
    }

    #[test]
    fn a_queue_deadline_counts_only_while_tasks_are_held() {
        let (_rt, mut w) = watchdog();
        let interval = Duration::from_secs(60);
        // `next_due` starts at 0 and is only kept while tasks are held:
        // counted without any, it would make the watchdog spin.
        assert_eq!(w.next_due, [0, 0]);
        assert_eq!(w.sleep(interval), interval);
        let header = crate::task::Header::new(
            crate::task::Budget::new(Some(Duration::from_millis(20))),
            crate::policy::Admitted::NONE,
            crate::error::Location::WorkerPool,
            None,
            None,
            None,
            tracing::Span::none(),
        );
        let (runnable, task) = async_task::Builder::new()
            .metadata(header)
            .spawn(|_: &crate::task::Header| async {}, |_| {});
        task.detach();
        let now = w.now_ns(Instant::now());
        w.held[1].push_back(Held {
            runnable,
            since_ns: now,
            answered: false,
        });
        w.next_due[1] = now + 5_000_000_000;
        let s = w.sleep(interval);
        assert!(
            s <= Duration::from_secs(5) && s > Duration::from_secs(4),
            "{s:?}"
        );
    }
}
