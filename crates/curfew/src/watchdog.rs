//! The watchdog: one thread that samples every event and pool thread, and
//! the one place that says what happens on an overrun.
//!
//! # Sampling ("lazy", as Node.cure's cheaper watchdog)
//!
//! Threads publish each poll in their [`Slot`] with a sequence number; they
//! never read a clock. Every `watchdog_interval` the watchdog reads each slot.
//! The first time it sees a poll it notes the time; a poll it keeps seeing has
//! been running *at least* since that note. So a timeout never fires early,
//! and fires at most about two intervals late. When every thread is parked,
//! the watchdog parks too, and the first thread to wake unparks it.
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
//! 3. the overrun is recorded: a `tracing` warn event, the group's timeout
//!    count, the client's strike;
//! 4. after the hijack grace, if the poll is still running, the thread is
//!    marked hijacked and a replacement thread is started, so the runtime
//!    keeps its full count of healthy threads (and, if configured, the
//!    hijacked thread is moved to the idle scheduling class). The hijacked thread drops the
//!    task and exits when its poll returns;
//! 5. at the cap on hijacked threads, the thread is not replaced: it is
//!    reported as overdue and replaced as soon as a hijacked thread exits.
//!
//! [`TimeoutError`]: crate::TimeoutError

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::executor::{self, Group, GroupId, Slot};
use crate::runtime::Shared;
use crate::slot::{self, EXPIRED, HIJACKED, IDLE, RUNNING, SLEEPING, UNLIMITED};

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
                // Wake-up preemption of spinning threads, so that the
                // watchdog runs on time while poisoned polls hold every core.
                let short = crate::sys::request_short_slice(Duration::from_micros(100));
                tracing::debug!(target: "curfew", short_slice = short, "watchdog started");
                Watchdog::new(shared).run()
            }
        })?;
    let _ = shared.watchdog.set(handle.thread().clone());
    Ok(handle)
}

struct Watchdog {
    shared: Arc<Shared>,
    last_tick: Instant,
}

/// What one look at a slot found.
#[derive(PartialEq, Eq)]
enum Seen {
    /// The thread is parked or written off: nothing to watch.
    Quiet,
    /// The thread is awake and must be watched.
    Awake,
}

impl Watchdog {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            last_tick: Instant::now(),
        }
    }

    fn now_ns(&self, now: Instant) -> u64 {
        now.duration_since(self.shared.epoch).as_nanos() as u64
    }

    fn run(mut self) {
        let interval = self.shared.config.watchdog_interval;
        while !self.shared.watchdog_stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut awake = false;
            for gid in [GroupId::Event, GroupId::Blocking] {
                let group = self.shared.group(gid);
                for slot in group.slots.load().iter() {
                    awake |= self.inspect(group, slot, now) == Seen::Awake;
                }
                awake |= self.refill(group);
            }
            if let Some(io) = &self.shared.io {
                io.check();
            }
            self.last_tick = now;
            if awake {
                std::thread::park_timeout(interval);
            } else {
                // Every thread is parked. The first to wake unparks us;
                // until we look again, polls stamp their own start.
                self.shared.watchdog_parked.store(true, Ordering::Relaxed);
                std::thread::park();
                self.shared.watchdog_parked.store(false, Ordering::Relaxed);
                self.last_tick = Instant::now();
            }
        }
    }

    fn inspect(&self, group: &Group, slot: &Slot, now: Instant) -> Seen {
        let word = slot.state.load();
        let now_ns = self.now_ns(now);
        let seen = slot.seen_word.load(Ordering::Relaxed);
        if seen != word {
            // A poll (or state) we have not seen before. Count its age from
            // now, so that elapsed times are lower bounds and timeouts never
            // fire early; but if the poll stamped its own start (the first
            // poll after a wake-up, or one begun while we were parked),
            // count from that.
            let mut since_ns = now_ns;
            if slot::tag(word) == RUNNING
                && slot.stamp_seq.load(Ordering::Relaxed) == slot::seq(word)
            {
                let stamp = slot.stamp_ns.load(Ordering::Relaxed).min(now_ns);
                // A stamp from 2^32 polls ago carries the same (wrapped)
                // sequence number; at any real poll rate that is tens of
                // seconds old, while a true one is at most the watchdog's
                // own wake-up delay old.
                if now_ns - stamp <= STAMP_MAX_AGE.as_nanos() as u64 {
                    since_ns = stamp;
                }
            }
            slot.seen_word.store(word, Ordering::Relaxed);
            slot.seen_at_ns.store(since_ns, Ordering::Relaxed);
            if slot::tag(word) != EXPIRED {
                slot.deferred.store(false, Ordering::Relaxed);
            }
        }
        let since = Duration::from_nanos(now_ns - slot.seen_at_ns.load(Ordering::Relaxed));
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
            SLEEPING | HIJACKED if queued => Seen::Awake,
            SLEEPING | HIJACKED => Seen::Quiet,
            IDLE => Seen::Awake,
            RUNNING => {
                // Sampled CPU accounting: whoever is running now is charged
                // for the time since the last sample.
                self.shared
                    .clients
                    .add_busy(slot.state.client(), now.duration_since(self.last_tick));
                let budget = slot::budget(word);
                if budget != UNLIMITED && since >= Duration::from_micros(u64::from(budget)) {
                    self.overrun(group, slot, word, since, now_ns);
                } else if since >= self.shared.config.time_slice {
                    slot.slice_expired.store(slot::seq(word), Ordering::Relaxed);
                }
                Seen::Awake
            }
            EXPIRED => {
                if since >= self.shared.config.hijack_grace {
                    self.write_off(group, slot, word);
                }
                Seen::Awake
            }
            _ => Seen::Awake,
        }
    }

    /// Steps 1-3: answer the caller, mark the task, record the overrun.
    fn overrun(&self, group: &Group, slot: &Slot, word: u64, elapsed: Duration, now_ns: u64) {
        let Some(header) = slot.state.claim(word) else {
            return; // the poll returned just now
        };
        // SAFETY: the slot is claimed, so its owner cannot finish the poll
        // (and so cannot drop the task) until `expire` below; the header
        // lives inline in the task's allocation, which the running
        // `Runnable` keeps alive for the whole poll.
        let header = unsafe { &*header };
        let answered = header.time_out(elapsed);
        let info = answered.then(|| {
            // Record before waking the caller, so that it sees the count.
            group.timeouts.fetch_add(1, Ordering::Relaxed);
            let cool_off = self
                .shared
                .clients
                .strike(header.client_idx, header.client.as_ref());
            header.wake_join();
            (
                header.name.clone(),
                header.client.clone(),
                header.budget,
                cool_off,
            )
        });
        // From here on the header may be freed.
        let expired = slot.state.expire();
        slot.seen_word.store(expired, Ordering::Relaxed);
        slot.seen_at_ns.store(now_ns, Ordering::Relaxed);

        if let Some((name, client, budget, cool_off)) = info {
            tracing::warn!(
                target: "curfew",
                task = name.as_deref().unwrap_or(""),
                client = client.as_ref().map(|c| c.as_str()).unwrap_or(""),
                budget_ms = budget.map_or(f64::INFINITY, |b| b.as_secs_f64() * 1e3),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                location = %group.id.location(),
                hijacked = group.hijacked_now.load(Ordering::Relaxed),
                "poll over budget: answered with a TimeoutError"
            );
            if let (Some(client), Some(cool_off)) = (client, cool_off) {
                tracing::warn!(
                    target: "curfew",
                    client = client.as_str(),
                    cool_off_ms = cool_off.as_millis() as u64,
                    "client refused for a cool-off after repeated timeouts"
                );
            }
        }
        if self.shared.config.hijack_grace.is_zero() {
            self.write_off(group, slot, expired);
        }
    }

    /// Step 4-5: the grace ran out; replace the thread, within the cap.
    fn write_off(&self, group: &Group, slot: &Slot, expired: u64) {
        // Reserve a place under the cap first, so that the cap holds even
        // while threads exit concurrently.
        let reserved = group
            .hijacked_now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < group.max_hijacked).then_some(n + 1)
            });
        let Ok(prev) = reserved else {
            if !slot.deferred.swap(true, Ordering::Relaxed) {
                group.deferred_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "curfew",
                    location = %group.id.location(),
                    cap = group.max_hijacked,
                    "overrunning thread not replaced: hijacked-thread cap reached; running with \
                     fewer healthy threads until a hijacked thread exits"
                );
            }
            return;
        };
        if !slot.state.hijack(expired) {
            // The poll returned during the grace: the thread is healthy.
            group.hijacked_now.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        slot.deferred.store(false, Ordering::Relaxed);
        if self.shared.config.demote_hijacked {
            // It may spin for a long time yet: let it have only spare CPU.
            crate::sys::demote(slot.os_tid.load(Ordering::Relaxed));
        }
        group.healthy.fetch_sub(1, Ordering::SeqCst);
        group.hijacked_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            target: "curfew",
            location = %group.id.location(),
            thread = slot.id,
            hijacked = prev + 1,
            "thread hijacked by an overrunning poll; starting a replacement"
        );
        self.refill(group);
    }

    /// Starts threads until the group has its target of healthy ones.
    /// Returns whether it is still short (to try again next tick).
    fn refill(&self, group: &Group) -> bool {
        if self.shared.is_shutdown() {
            return false;
        }
        while group.healthy.load(Ordering::SeqCst) < group.target {
            if let Err(e) = executor::spawn_thread(&self.shared, group.id) {
                tracing::error!(
                    target: "curfew",
                    location = %group.id.location(),
                    error = %e,
                    "cannot start a replacement thread; will retry"
                );
                return true;
            }
        }
        false
    }
}
