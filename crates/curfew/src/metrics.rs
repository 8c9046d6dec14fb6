//! A snapshot of what a runtime has done: tasks, polls, timeouts, hijacked
//! threads, queues, and per-client poll time and strikes.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = curfew::Runtime::builder().event_threads(1).build()?;
//! rt.block_on(rt.spawn(async {}))?;
//! let m = rt.metrics();
//! assert_eq!(m.event.spawned, 1);
//! assert_eq!(m.event.completed, 1);
//! assert_eq!(m.event.healthy_threads, 1);
//! println!("{m:#?}");
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::executor::Group;
use crate::policy::ClientKey;
use crate::runtime::Shared;
use crate::slot::{self, EXPIRED, HIJACKED};

/// Counters of one thread group: the event threads or the worker pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupMetrics {
    /// Threads that are neither hijacked nor overdue: the group's working
    /// capacity.
    pub healthy_threads: usize,
    /// Threads hijacked (abandoned) right now, still running a poisoned
    /// poll or job. Never above the cap.
    pub hijacked_threads: usize,
    /// Threads hijacked since start.
    pub hijacked_total: u64,
    /// Threads whose task has timed out but which could not be replaced
    /// because the hijack cap is reached: the group is running short. Not
    /// counted in `healthy_threads`.
    pub overdue_threads: usize,
    /// How many times a replacement was put off by the cap.
    pub deferred_total: u64,
    /// Threads whose long poll was handed off and still runs, not (yet)
    /// hijacked
    /// ([`Builder::hand_off_long_polls`](crate::runtime::Builder::hand_off_long_polls));
    /// another thread works in the place of each. Not counted in
    /// `healthy_threads` or `hijacked_threads`.
    pub handed_off_threads: usize,
    /// Long polls handed off since start.
    pub handed_off_total: u64,
    /// Times since start that the watchdog moved a thread to the idle
    /// scheduling class: an overrunning poll at its timeout
    /// ([`Builder::demote_overrunning_polls`](crate::runtime::Builder::demote_overrunning_polls)),
    /// a handed-off one
    /// ([`Builder::hand_off_to_idle_class`](crate::runtime::Builder::hand_off_to_idle_class))
    /// or a hijacked thread
    /// ([`Builder::demote_hijacked_threads`](crate::runtime::Builder::demote_hijacked_threads)).
    /// Only demotions the kernel accepted count.
    pub demoted_total: u64,
    /// Tasks (or jobs) spawned.
    pub spawned: u64,
    /// Tasks that ran to completion (whether or not anyone awaited them).
    pub completed: u64,
    /// Tasks that panicked.
    pub panicked: u64,
    /// Tasks answered with a timeout (queue timeouts included).
    pub timeouts: u64,
    /// Of `timeouts`, tasks answered while still queued, because no thread
    /// was free to run them within their budget
    /// ([`JoinError::is_queue_timeout`](crate::JoinError::is_queue_timeout)).
    pub queue_timeouts: u64,
    /// Polls run (one per job in the worker pool).
    pub polls: u64,
    /// Tasks waiting in queues.
    pub queue_depth: usize,
}

impl GroupMetrics {
    pub(crate) fn collect(g: &Group) -> Self {
        let counts = g.counts();
        let (mut overdue_threads, mut handed_off_threads) = (0, 0);
        for s in g.slots.load().iter() {
            let tag = slot::tag(s.state.load());
            if tag == EXPIRED && s.deferred.load(Ordering::Relaxed) {
                overdue_threads += 1;
            }
            // Handed off, and not (yet) hijacked: it counts as one then.
            if tag != HIJACKED && s.handed_off.load(Ordering::Relaxed) {
                handed_off_threads += 1;
            }
        }
        let hijacked_now = g.hijacked_now.load(Ordering::SeqCst);
        Self {
            healthy_threads: g
                .healthy
                .load(Ordering::SeqCst)
                .saturating_sub(overdue_threads),
            hijacked_threads: hijacked_now.saturating_sub(handed_off_threads),
            handed_off_threads,
            handed_off_total: g.handed_off_total.load(Ordering::Relaxed),
            demoted_total: g.demoted_total.load(Ordering::Relaxed),
            hijacked_total: g.hijacked_total.load(Ordering::Relaxed),
            overdue_threads,
            deferred_total: g.deferred_total.load(Ordering::Relaxed),
            spawned: g.spawned.load(Ordering::Relaxed),
            completed: counts.completed,
            panicked: counts.panicked,
            timeouts: g.timeouts.load(Ordering::Relaxed),
            queue_timeouts: g.queue_timeouts.load(Ordering::Relaxed),
            polls: counts.polls,
            queue_depth: counts.queue_depth,
        }
    }
}

/// What the runtime knows about one client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientMetrics {
    /// The client.
    pub client: ClientKey,
    /// Poll and job time spent on the client's tasks, sampled by the
    /// watchdog at its interval (a statistical estimate, unbiased for polls
    /// of any length).
    pub poll_time: Duration,
    /// The client's tasks that timed out.
    pub timeouts: u64,
    /// Strikes towards the next cool-off under the client policy.
    pub strikes: u32,
    /// Spawns refused while the client was cooling off.
    pub refused: u64,
    /// Whether the client is cooling off now.
    pub cooling_off: bool,
}

/// A snapshot of a runtime's counters, from [`Runtime::metrics`](crate::Runtime::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeMetrics {
    /// The event threads.
    pub event: GroupMetrics,
    /// The worker pool.
    pub blocking: GroupMetrics,
    /// Spawns refused (full queue, shutdown, cooling-off client).
    pub refused: u64,
    /// The entries of the client table: clients, and the networks and
    /// routes the policy limits, in table order.
    pub clients: Vec<ClientMetrics>,
    /// Entries evicted so far to make room for new clients.
    pub evicted_clients: u64,
}

impl RuntimeMetrics {
    pub(crate) fn collect(shared: &Shared) -> Self {
        let (clients, evicted_clients) = shared.clients.snapshot();
        Self {
            event: GroupMetrics::collect(&shared.event),
            blocking: GroupMetrics::collect(&shared.blocking),
            refused: shared.refused.load(Ordering::Relaxed),
            clients,
            evicted_clients,
        }
    }

    /// Timeouts across both groups.
    pub fn timeouts(&self) -> u64 {
        self.event.timeouts + self.blocking.timeouts
    }

    /// The metrics of one client, if it is in the table: the first entry
    /// whose key reads `key` (an IP key and an id key of the same text are
    /// two entries).
    pub fn client(&self, key: &str) -> Option<&ClientMetrics> {
        self.clients.iter().find(|c| c.client.as_str() == key)
    }
}
