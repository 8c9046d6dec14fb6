//! The runtime: configuration, start-up, spawning and shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use async_task::{ScheduleInfo, WithInfo};
use crossbeam_utils::CachePadded;

use crate::context;
use crate::driver::IoDriver;
use crate::error::{BuildError, Refusal};
use crate::executor::{self, Group, GroupId, Runnable};
use crate::metrics::RuntimeMetrics;
use crate::policy::{Admitted, ClientKey, ClientPolicy, Clients, MemoryStore, PolicyStore};
use crate::task::{self, Budget, Header, JoinHandle, Registry};
use crate::watchdog;

/// Validated settings of a runtime.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) event_threads: usize,
    pub(crate) blocking_threads: usize,
    pub(crate) poll_budget: Option<Duration>,
    pub(crate) job_budget: Option<Duration>,
    pub(crate) max_hijacked_threads: usize,
    pub(crate) max_abandoned_threads: usize,
    pub(crate) max_blocking_queue: usize,
    pub(crate) hijack_grace: Duration,
    pub(crate) watchdog_interval: Duration,
    pub(crate) time_slice: Duration,
    pub(crate) thread_name: String,
    pub(crate) thread_stack_size: usize,
    pub(crate) client_policy: Option<ClientPolicy>,
    pub(crate) max_tracked_clients: usize,
    pub(crate) max_overdue_per_route: usize,
    pub(crate) demote_hijacked: bool,
    pub(crate) demote_overrunning: bool,
    pub(crate) hand_off_long_polls: Option<Duration>,
    pub(crate) hand_off_idle: bool,
    pub(crate) blocking_nice: i32,
}

/// Default poll budget: the paper's event-loop setting for its Figure 3.
pub const DEFAULT_POLL_BUDGET: Duration = Duration::from_millis(100);
/// Default job budget: Node.cure's default for its worker pool.
pub const DEFAULT_JOB_BUDGET: Duration = Duration::from_secs(1);
/// The longest budget the watchdog can time: 2^27 − 1 seconds, about four
/// years and three months. [`Builder::build`] rejects a longer poll or job
/// budget; [`task::Builder`](crate::task::Builder) caps a longer one at
/// this. For no budget at all, use [`Builder::no_default_budgets`] or
/// [`task::Builder::unlimited`](crate::task::Builder::unlimited).
///
/// Budgets are timed in the finest of microseconds, milliseconds and
/// seconds that holds them, rounded up: a timeout is never early, and the
/// rounding adds less than 1 µs to budgets up to 134 s, and less than
/// 1/130,000 of the budget to longer ones (on top of the watchdog's
/// interval).
pub const MAX_BUDGET: Duration = crate::slot::MAX_BUDGET;

const MAX_THREADS: usize = 1024;

/// Builds a [`Runtime`] with custom settings.
///
/// Every setting has a default; [`build`](Self::build) checks them all and
/// returns a [`BuildError`] naming the first bad one, never a panic.
///
/// ```
/// use std::time::Duration;
///
/// let rt = curfew::Runtime::builder()
///     .event_threads(2)
///     .poll_budget(Duration::from_millis(50))
///     .max_hijacked_threads(8)
///     .thread_name("api")
///     .build()
///     .expect("valid settings");
/// # drop(rt);
///
/// let err = curfew::Runtime::builder().event_threads(0).build().unwrap_err();
/// assert_eq!(err.setting(), "event_threads");
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    event_threads: Option<usize>,
    blocking_threads: usize,
    poll_budget: Option<Duration>,
    job_budget: Option<Duration>,
    max_hijacked_threads: Option<usize>,
    max_abandoned_threads: Option<usize>,
    max_blocking_queue: usize,
    hijack_grace: Duration,
    watchdog_interval: Duration,
    time_slice: Duration,
    thread_name: String,
    thread_stack_size: usize,
    client_policy: Option<ClientPolicy>,
    max_tracked_clients: usize,
    max_overdue_per_route: Option<usize>,
    policy_store: Arc<dyn PolicyStore>,
    demote_hijacked: bool,
    demote_overrunning: bool,
    hand_off_long_polls: Option<Duration>,
    hand_off_idle: bool,
    blocking_nice: i32,
    tokio_handle: Option<tokio::runtime::Handle>,
    env_error: Option<BuildError>,
    is_default: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            event_threads: None,
            blocking_threads: 4,
            poll_budget: Some(DEFAULT_POLL_BUDGET),
            job_budget: Some(DEFAULT_JOB_BUDGET),
            max_hijacked_threads: None,
            max_abandoned_threads: None,
            max_blocking_queue: 4096,
            hijack_grace: Duration::from_millis(5),
            watchdog_interval: Duration::from_micros(500),
            time_slice: Duration::from_millis(2),
            thread_name: "curfew".into(),
            thread_stack_size: 2 << 20,
            client_policy: None,
            max_tracked_clients: 1024,
            max_overdue_per_route: None,
            policy_store: Arc::new(MemoryStore),
            demote_hijacked: false,
            demote_overrunning: true,
            hand_off_long_polls: None,
            hand_off_idle: false,
            blocking_nice: 0,
            tokio_handle: None,
            env_error: None,
            is_default: false,
        }
    }
}

impl Builder {
    /// Settings with their defaults: one event thread per core, a 100 ms
    /// poll budget, four pool threads with a 1 s job budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// Event threads that poll async tasks. Default: the number of cores.
    pub fn event_threads(mut self, n: usize) -> Self {
        self.event_threads = Some(n);
        self
    }

    /// Worker-pool threads that run blocking jobs. Default: 4, as Node's
    /// pool.
    pub fn blocking_threads(mut self, n: usize) -> Self {
        self.blocking_threads = n;
        self
    }

    /// The longest one poll of an async task may run. Default: 100 ms.
    /// At least the [`watchdog_interval`](Self::watchdog_interval) and at
    /// most [`MAX_BUDGET`].
    pub fn poll_budget(mut self, budget: Duration) -> Self {
        self.poll_budget = Some(budget);
        self
    }

    /// The longest one blocking job may take, counted from its spawn (time
    /// spent queued included). Default: 1 s. At least the
    /// [`watchdog_interval`](Self::watchdog_interval) and at most
    /// [`MAX_BUDGET`].
    pub fn job_budget(mut self, budget: Duration) -> Self {
        self.job_budget = Some(budget);
        self
    }

    /// Turns the default budgets off: tasks are timed out only if they set
    /// a budget of their own. The watchdog still runs, for per-task budgets,
    /// client accounting and [`need_yield`](crate::need_yield).
    pub fn no_default_budgets(mut self) -> Self {
        self.poll_budget = None;
        self.job_budget = None;
        self
    }

    /// The most event threads that may be hijacked at once. Default: four
    /// times the event threads.
    ///
    /// At the cap, an overrunning poll is still answered with a timeout on
    /// time, but its thread is not replaced until a hijacked thread exits:
    /// the runtime runs with fewer healthy threads and reports them as
    /// `overdue_threads` in [`metrics`](Runtime::metrics). It never starts
    /// more threads than `event_threads + max_hijacked_threads`. Once every
    /// event thread is stuck, queued tasks are answered with a queue timeout
    /// after their budget ([`JoinError::is_queue_timeout`](crate::JoinError::is_queue_timeout)).
    /// Tasks with a route reach the cap one route at a time only up to
    /// [`max_overdue_per_route`](Self::max_overdue_per_route), which is
    /// what keeps threads for the other routes under a flood of requests
    /// that never return.
    pub fn max_hijacked_threads(mut self, n: usize) -> Self {
        self.max_hijacked_threads = Some(n);
        self
    }

    /// The most pool threads that may be abandoned at once (the same rule
    /// as [`max_hijacked_threads`](Self::max_hijacked_threads), for the
    /// worker pool). Default: four times the pool threads.
    pub fn max_abandoned_threads(mut self, n: usize) -> Self {
        self.max_abandoned_threads = Some(n);
        self
    }

    /// The most jobs the worker pool queues; past it `spawn_blocking`
    /// resolves at once with [`JoinError::is_refused`](crate::JoinError::is_refused).
    /// Default: 4096.
    pub fn max_blocking_queue(mut self, n: usize) -> Self {
        self.max_blocking_queue = n;
        self
    }

    /// How long a timed-out poll may keep its thread before the thread is
    /// written off and replaced. Code that reaches a
    /// [`checkpoint`](crate::checkpoint) within the grace gives its thread
    /// back and nothing is abandoned. Default: 5 ms. Zero replaces at once.
    pub fn hijack_grace(mut self, grace: Duration) -> Self {
        self.hijack_grace = grace;
        self
    }

    /// How often the watchdog samples the threads while any is awake.
    /// A poll is first seen at most about one interval after it starts
    /// (at once if it is the first on its thread after a wake-up), and
    /// answered when its budget runs out after that, so timeouts land
    /// between the budget and the budget plus about one interval.
    /// Default: 500 µs; allowed: 100 µs to 100 ms.
    pub fn watchdog_interval(mut self, interval: Duration) -> Self {
        self.watchdog_interval = interval;
        self
    }

    /// How long a poll runs before [`need_yield`](crate::need_yield)
    /// returns true. Default: 2 ms.
    pub fn time_slice(mut self, slice: Duration) -> Self {
        self.time_slice = slice;
        self
    }

    /// The prefix of thread names. Default: `curfew`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// The stack size of event and pool threads. Default: 2 MiB.
    pub fn thread_stack_size(mut self, bytes: usize) -> Self {
        self.thread_stack_size = bytes;
        self
    }

    /// Refuse clients whose tasks keep timing out. Default: none (clients
    /// are only accounted).
    pub fn client_policy(mut self, policy: ClientPolicy) -> Self {
        self.client_policy = Some(policy);
        self
    }

    /// How many distinct clients (and networks and routes, when the policy
    /// limits them) the client table holds. When it is full, a new client
    /// evicts an idle one; clients with strikes, cool-offs or quota spent
    /// are kept ahead of idle ones. Default: 1024.
    pub fn max_tracked_clients(mut self, n: usize) -> Self {
        self.max_tracked_clients = n;
        self
    }

    /// The most tasks of one route that may be stuck at once: polls or jobs
    /// that ran past their budget and have not returned (on threads written
    /// off, or held at the cap). While a route has this many, its new tasks
    /// are refused ([`Refusal::RouteOverdue`]), at the spawn and again when
    /// a task that was already queued is first polled; as soon as one of
    /// the stuck polls returns, the route is served again. Default: half of
    /// [`max_hijacked_threads`](Self::max_hijacked_threads), at least 1.
    ///
    /// It applies to tasks whose client key carries a route
    /// ([`ClientKey::with_route`]), as `curfew-http`'s layer gives every
    /// request's handler, whatever the [`ClientPolicy`]. It is what keeps a
    /// server answering through a flood of requests whose handlers never
    /// return: however many clients send them, one route can write off at
    /// most this many threads plus the ones already running it when the
    /// limit was reached (at most `event_threads`), so with the defaults the
    /// cap on hijacked threads is never reached by one route and healthy
    /// threads are left for the other routes. A poll that never returns
    /// keeps its place for good, so a route whose handlers loop forever
    /// stays refused until the process is replaced (see `curfew-supervisor`,
    /// which recycles a worker whose written-off threads burn CPU). A route
    /// that must run long, on purpose, should have a budget to match.
    pub fn max_overdue_per_route(mut self, n: usize) -> Self {
        self.max_overdue_per_route = Some(n);
        self
    }

    /// Shares strikes, cool-offs and CPU usage with other instances through
    /// `store` (see [`PolicyStore`]). Default: [`MemoryStore`], which
    /// shares nothing. Admission reads only the runtime's own table either
    /// way.
    pub fn policy_store(mut self, store: impl PolicyStore) -> Self {
        self.policy_store = Arc::new(store);
        self
    }

    /// Whether the thread of a poll that overruns its budget is moved to the
    /// idle scheduling class (Linux `SCHED_IDLE`) for a moment at its
    /// timeout, before the caller is woken. Default: true.
    ///
    /// This is what gets the `TimeoutError` to its caller sooner: a caller
    /// woken onto the core where the poll still spins otherwise waits up to
    /// a scheduler tick (4 ms at HZ=250) for the spinner's slice to end. In
    /// the delivery bench it took the p99 past the budget of the spinning
    /// rows from 0.62-4.55 ms to 0.63-1.69 ms (`benches/RESULTS.md`).
    ///
    /// The thread gets its ordinary policy back one watchdog interval later
    /// (the caller has been woken by then), or as soon as the poll returns,
    /// whichever comes first, so that a poll on its way out (at a
    /// [`checkpoint`](crate::checkpoint)) is not slowed down on a busy
    /// machine. Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` or an
    /// `RLIMIT_NICE` that allows nice 0; the runtime checks at build time,
    /// and where it may not, it does not demote at all. (Should the restore
    /// be refused later all the same, the thread exits and is replaced, so
    /// that no task runs at idle priority because an earlier one overran.)
    /// [`demote_hijacked_threads`](Self::demote_hijacked_threads) is
    /// separate: it keeps a hijacked thread demoted for good.
    pub fn demote_overrunning_polls(mut self, enabled: bool) -> Self {
        self.demote_overrunning = enabled;
        self
    }

    /// Hands off the thread of an event-thread poll that has run `after`
    /// without returning: the runtime starts another event thread in its
    /// place at once, so that a long poll does not take an event thread's
    /// worth of capacity for the rest of its budget, and lowers the long
    /// poll's thread by 10 nice levels (Linux), so that benign threads get
    /// about nine tenths of a core they share with it. When the poll
    /// returns, in time or not, its thread finishes it as usual (its task's
    /// output is delivered, or its timeout stands) and exits. `None` (the
    /// default) turns it off.
    ///
    /// This is the scheduler's side of a defence against blocking and
    /// CPU-bound attacks: with a 100 ms budget and `after` at 10 ms, a poll
    /// blocked on a FIFO or spinning costs the other clients an event
    /// thread for 10 ms instead of 100 ms. Go's scheduler hands a processor
    /// off from a thread stuck in a system call in the same way.
    ///
    /// The costs: a thread is started for each poll that runs past `after`
    /// (tens of µs), and a handed-off poll that needs CPU gets less of it
    /// on a busy machine, so an honest long poll may take longer. Set
    /// `after` well above the longest poll the service means to run (async
    /// code's should be short). Only polls with a budget are handed off,
    /// and only on event threads (the worker pool is where long jobs
    /// belong). A handed-off thread holds a place under
    /// [`max_hijacked_threads`](Self::max_hijacked_threads) until its poll
    /// returns; at the cap, long polls keep their threads. At its timeout
    /// the poll is treated as any other: answered, and its thread written
    /// off after the grace (with no second replacement).
    ///
    /// The thread is niced rather than moved to `SCHED_IDLE`: a thread that
    /// is preempted inside a page fault holds the process's address-space
    /// lock, every `mmap` (a new thread's stack, a growing allocation)
    /// queues behind it and every later page fault behind that, so an
    /// idle-class thread that a busy machine starves can freeze the whole
    /// process for seconds, as the lab's study saw.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let rt = curfew::Runtime::builder()
    ///     .poll_budget(Duration::from_millis(100))
    ///     .hand_off_long_polls(Some(Duration::from_millis(10)))
    ///     .build()
    ///     .unwrap();
    /// # drop(rt);
    /// ```
    pub fn hand_off_long_polls(mut self, after: Option<Duration>) -> Self {
        self.hand_off_long_polls = after;
        self
    }

    /// Whether a poll handed off by
    /// [`hand_off_long_polls`](Self::hand_off_long_polls) also moves to the
    /// idle scheduling class (Linux `SCHED_IDLE`) until its timeout, on top
    /// of the 10 nice levels. Default: false.
    ///
    /// A niced thread still counts as busy when the kernel places a waking
    /// thread, so benign threads crowd onto the cores it does not run on
    /// while it takes every gap they leave; a core whose only runnable
    /// thread is in the idle class counts as free, and a thread woken there
    /// preempts the spinner at once. In the lab's supervised study this
    /// took benign throughput while a handed-off poll spun from about 72%
    /// of its calm level to about 92% (`benches/RESULTS.md`).
    ///
    /// The risk is the one [`demote_hijacked_threads`](Self::demote_hijacked_threads)
    /// documents: an idle-class thread that the kernel preempts inside a
    /// page fault holds a lock that the rest of the process may queue
    /// behind, on a machine too busy to run it. The runtime narrows it: the
    /// thread is niced first, is put back on the ordinary class (still
    /// niced) one watchdog interval after its timeout and before this
    /// runtime starts any thread, and returns to the ordinary class by
    /// itself when its poll returns. It is meant for workers under a
    /// supervisor (`curfew-supervisor`) that recycles a process at its
    /// first written-off thread, where the spinner's process is gone soon
    /// after its timeout. Where the kernel would not let the thread leave
    /// the idle class again (`RLIMIT_NICE`, see
    /// [`demote_overrunning_polls`](Self::demote_overrunning_polls)), the
    /// setting has no effect.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let rt = curfew::Runtime::builder()
    ///     .hand_off_long_polls(Some(Duration::from_millis(10)))
    ///     .hand_off_to_idle_class(true)
    ///     .build()
    ///     .unwrap();
    /// # drop(rt);
    /// ```
    pub fn hand_off_to_idle_class(mut self, enabled: bool) -> Self {
        self.hand_off_idle = enabled;
        self
    }

    /// Whether a hijacked thread is moved to the idle scheduling class
    /// (Linux `SCHED_IDLE`), so that a poisoned poll spinning on it only gets
    /// CPU nobody else wants. Default: false.
    ///
    /// It gives the healthy threads the cores back, but it has a cost that
    /// can be worse: a demoted thread that holds a lock the whole process
    /// shares (the allocator's, or the kernel's lock on the address space
    /// while it faults a page in) makes every other thread wait behind a
    /// thread that hardly runs. Turn it on for CPU-bound attack surfaces, and
    /// measure.
    pub fn demote_hijacked_threads(mut self, enabled: bool) -> Self {
        self.demote_hijacked = enabled;
        self
    }

    /// How far below the event threads the worker-pool threads run, as a
    /// nice increment from 0 (the same priority, the default) to 19 (the
    /// lowest; the result is capped at nice 19). Linux only; elsewhere it
    /// is accepted and has no effect.
    ///
    /// A CPU-bound job (a search, a parse, a hash) run with
    /// [`spawn_blocking`](crate::spawn_blocking) competes for the cores
    /// with the event threads, whose latency every client sees; a
    /// poisoned job does so for its whole budget before the watchdog
    /// writes its thread off. At nice 10 a pool thread gets about a tenth
    /// of the share of an event thread when both want a core, and all of
    /// a core that nobody else wants, so jobs still run at full speed on
    /// an idle machine. Lowering a thread's priority needs no privilege.
    ///
    /// ```
    /// let rt = curfew::Runtime::builder().blocking_nice(10).build().unwrap();
    /// # drop(rt);
    /// let err = curfew::Runtime::builder().blocking_nice(20).build().unwrap_err();
    /// assert_eq!(err.setting(), "blocking_nice");
    /// ```
    pub fn blocking_nice(mut self, nice: i32) -> Self {
        self.blocking_nice = nice;
        self
    }

    /// Drive I/O and timers with an existing tokio runtime instead of the
    /// runtime's own.
    ///
    /// By default a runtime owns a current-thread tokio runtime for its
    /// sockets and timers, which its event threads drive while they are idle
    /// (as tokio's workers do), so a readiness event wakes its task on the
    /// thread that will run it. With a handle given here, the other runtime's
    /// threads drive I/O and every wake-up crosses over to curfew's threads.
    pub fn tokio_handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.tokio_handle = Some(handle);
        self
    }

    /// Reads settings from the environment, as Node.cure reads
    /// `NODECURE_NODE_TIMEOUT_MS`:
    ///
    /// | variable | setting |
    /// | --- | --- |
    /// | `CURFEW_EVENT_THREADS` | [`event_threads`](Self::event_threads) |
    /// | `CURFEW_BLOCKING_THREADS` | [`blocking_threads`](Self::blocking_threads) |
    /// | `CURFEW_POLL_BUDGET_MS` | [`poll_budget`](Self::poll_budget) |
    /// | `CURFEW_JOB_BUDGET_MS` | [`job_budget`](Self::job_budget) |
    /// | `CURFEW_MAX_HIJACKED_THREADS` | [`max_hijacked_threads`](Self::max_hijacked_threads) |
    /// | `CURFEW_MAX_ABANDONED_THREADS` | [`max_abandoned_threads`](Self::max_abandoned_threads) |
    /// | `CURFEW_MAX_BLOCKING_QUEUE` | [`max_blocking_queue`](Self::max_blocking_queue) |
    /// | `CURFEW_HIJACK_GRACE_MS` | [`hijack_grace`](Self::hijack_grace) |
    ///
    /// A variable that is set but not a whole number makes
    /// [`build`](Self::build) fail with an error naming it. The default
    /// runtime behind [`curfew::spawn`](crate::spawn) is built this way.
    pub fn from_env(self) -> Self {
        self.apply_vars(|k| std::env::var(k).ok())
    }

    pub(crate) fn apply_vars(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        fn num(
            get: &impl Fn(&str) -> Option<String>,
            var: &'static str,
            err: &mut Option<BuildError>,
        ) -> Option<u64> {
            let v = get(var)?;
            match v.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    err.get_or_insert(BuildError::new(var, format!("`{v}` is not a whole number")));
                    None
                }
            }
        }
        let e = &mut self.env_error;
        if let Some(n) = num(&get, "CURFEW_EVENT_THREADS", e) {
            self.event_threads = Some(n as usize);
        }
        if let Some(n) = num(&get, "CURFEW_BLOCKING_THREADS", e) {
            self.blocking_threads = n as usize;
        }
        if let Some(n) = num(&get, "CURFEW_POLL_BUDGET_MS", e) {
            self.poll_budget = Some(Duration::from_millis(n));
        }
        if let Some(n) = num(&get, "CURFEW_JOB_BUDGET_MS", e) {
            self.job_budget = Some(Duration::from_millis(n));
        }
        if let Some(n) = num(&get, "CURFEW_MAX_HIJACKED_THREADS", e) {
            self.max_hijacked_threads = Some(n as usize);
        }
        if let Some(n) = num(&get, "CURFEW_MAX_ABANDONED_THREADS", e) {
            self.max_abandoned_threads = Some(n as usize);
        }
        if let Some(n) = num(&get, "CURFEW_MAX_BLOCKING_QUEUE", e) {
            self.max_blocking_queue = n as usize;
        }
        if let Some(n) = num(&get, "CURFEW_HIJACK_GRACE_MS", e) {
            self.hijack_grace = Duration::from_millis(n);
        }
        self
    }

    fn validate(&self) -> Result<Config, BuildError> {
        if let Some(e) = &self.env_error {
            return Err(e.clone());
        }
        let event_threads = self
            .event_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let count = |setting: &'static str, n: usize, max: usize| {
            if n == 0 {
                Err(BuildError::new(setting, "must be at least 1"))
            } else if n > max {
                Err(BuildError::new(
                    setting,
                    format!("{n} is more than the limit of {max}"),
                ))
            } else {
                Ok(n)
            }
        };
        count("event_threads", event_threads, MAX_THREADS)?;
        count("blocking_threads", self.blocking_threads, MAX_THREADS)?;
        let interval = self.watchdog_interval;
        if interval < Duration::from_micros(100) || interval > Duration::from_millis(100) {
            return Err(BuildError::new(
                "watchdog_interval",
                format!("{interval:?} is outside 100µs..=100ms"),
            ));
        }
        let budget = |setting: &'static str, b: Option<Duration>| match b {
            Some(d) if d.is_zero() => Err(BuildError::new(
                setting,
                "a budget must be greater than zero",
            )),
            Some(d) if d > MAX_BUDGET => Err(BuildError::new(
                setting,
                format!(
                    "{d:?} is longer than the longest budget the watchdog can time ({MAX_BUDGET:?}, \
                     about four years); for no budget, use `no_default_budgets`"
                ),
            )),
            Some(d) if d < interval => Err(BuildError::new(
                setting,
                format!(
                    "{d:?} is shorter than the watchdog interval ({interval:?}), which cannot enforce it"
                ),
            )),
            _ => Ok(b),
        };
        let poll_budget = budget("poll_budget", self.poll_budget)?;
        let job_budget = budget("job_budget", self.job_budget)?;
        let max_hijacked_threads = count(
            "max_hijacked_threads",
            self.max_hijacked_threads
                .unwrap_or(4 * event_threads.max(1)),
            64 * MAX_THREADS,
        )
        .map_err(|e| hijack_cap_error(e, "event thread"))?;
        let max_abandoned_threads = count(
            "max_abandoned_threads",
            self.max_abandoned_threads
                .unwrap_or(4 * self.blocking_threads.max(1)),
            64 * MAX_THREADS,
        )
        .map_err(|e| hijack_cap_error(e, "pool thread"))?;
        count("max_blocking_queue", self.max_blocking_queue, 1 << 24)?;
        count("max_tracked_clients", self.max_tracked_clients, 1 << 20)?;
        let max_overdue_per_route = count(
            "max_overdue_per_route",
            self.max_overdue_per_route
                .unwrap_or((max_hijacked_threads / 2).max(1)),
            u32::MAX as usize,
        )?;
        if self.time_slice.is_zero() {
            return Err(BuildError::new("time_slice", "must be greater than zero"));
        }
        if self.hijack_grace > Duration::from_secs(60) {
            return Err(BuildError::new("hijack_grace", "must be at most 60 s"));
        }
        if self.thread_name.is_empty() || self.thread_name.contains('\0') {
            return Err(BuildError::new(
                "thread_name",
                "must be non-empty and contain no NUL byte",
            ));
        }
        if !(0..=19).contains(&self.blocking_nice) {
            return Err(BuildError::new(
                "blocking_nice",
                format!(
                    "{} is not a nice increment from 0 to 19 (pool threads cannot run above the event threads' priority)",
                    self.blocking_nice
                ),
            ));
        }
        if self.thread_stack_size < 64 * 1024 {
            return Err(BuildError::new(
                "thread_stack_size",
                "must be at least 64 KiB",
            ));
        }
        if self.hand_off_long_polls.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::new(
                "hand_off_long_polls",
                "must be greater than zero (None turns it off)",
            ));
        }
        if self.hand_off_idle && self.hand_off_long_polls.is_none() {
            return Err(BuildError::new(
                "hand_off_to_idle_class",
                "needs hand_off_long_polls: only handed-off polls move to the idle class",
            ));
        }
        if let Some(p) = &self.client_policy {
            if p.strikes == 0 {
                return Err(BuildError::new(
                    "client_policy",
                    "strikes must be at least 1",
                ));
            }
            if p.cool_off.is_zero() {
                return Err(BuildError::new(
                    "client_policy",
                    "cool_off must be greater than zero",
                ));
            }
        }
        Ok(Config {
            event_threads,
            blocking_threads: self.blocking_threads,
            poll_budget,
            job_budget,
            max_hijacked_threads,
            max_abandoned_threads,
            max_blocking_queue: self.max_blocking_queue,
            hijack_grace: self.hijack_grace,
            watchdog_interval: interval,
            time_slice: self.time_slice,
            thread_name: self.thread_name.clone(),
            thread_stack_size: self.thread_stack_size,
            client_policy: self.client_policy,
            max_tracked_clients: self.max_tracked_clients,
            max_overdue_per_route,
            demote_hijacked: self.demote_hijacked,
            // Only where the thread can be given its policy back: a poll
            // that checks its budget must not crawl at idle priority
            // through its way out on a busy machine, and the tasks after a
            // demoted poll must not run at idle priority either.
            demote_overrunning: self.demote_overrunning && crate::sys::can_restore(),
            hand_off_long_polls: self.hand_off_long_polls,
            // As for `demote_overrunning`: a handed-off poll must not be
            // left at idle priority for good where the kernel would refuse
            // to give it its policy back.
            hand_off_idle: self.hand_off_idle && crate::sys::can_restore(),
            blocking_nice: self.blocking_nice,
        })
    }

    /// Checks the settings and starts the runtime's threads.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let config = self.validate()?;
        let (tokio, io) = match self.tokio_handle {
            Some(h) => (h, None),
            None => {
                let io = IoDriver::new(&config.thread_name).map_err(|e| {
                    BuildError::new("tokio", format!("cannot start the I/O driver: {e}"))
                })?;
                (io.handle().clone(), Some(io))
            }
        };
        let shared = Arc::new(Shared {
            event: Group::new(
                GroupId::Event,
                config.event_threads,
                config.max_hijacked_threads,
                usize::MAX,
            ),
            blocking: Group::new(
                GroupId::Blocking,
                config.blocking_threads,
                config.max_abandoned_threads,
                config.max_blocking_queue,
            ),
            clients: Clients::start(
                config.max_tracked_clients,
                config.client_policy,
                self.policy_store.clone(),
                config.max_overdue_per_route,
            ),
            event_budget: Budget::new(config.poll_budget),
            blocking_budget: Budget::new(config.job_budget),
            config,
            tokio,
            io,
            shutdown: AtomicBool::new(false),
            watchdog_stop: AtomicBool::new(false),
            watchdog_parked: CachePadded::new(crate::slot::WatchdogPark::new()),
            watchdog: OnceLock::new(),
            exit_lock: Mutex::new(()),
            exit_cv: Condvar::new(),
            is_default: self.is_default,
            epoch: Instant::now(),
            refused: AtomicU64::new(0),
            registry: Registry::new(),
            tick: CachePadded::new(AtomicU64::new(0)),
        });
        let mut rt = Runtime {
            handle: Handle {
                shared: shared.clone(),
            },
            watchdog: None,
        };
        let start = |gid: GroupId, n: usize| -> Result<(), BuildError> {
            for i in 0..n {
                executor::spawn_thread(&shared, gid).map_err(|e| {
                    BuildError::new(
                        "threads",
                        format!(
                            "cannot start {} {} of {n} (stack of {} bytes): {e}",
                            match gid {
                                GroupId::Event => "event thread",
                                GroupId::Blocking => "pool thread",
                            },
                            i + 1,
                            shared.config.thread_stack_size
                        ),
                    )
                })?;
            }
            Ok(())
        };
        // The watchdog's log thread, from this thread: it takes this
        // thread's scheduling settings (see `crate::deferred`).
        crate::deferred::start();
        let started = start(GroupId::Event, shared.config.event_threads)
            .and_then(|()| start(GroupId::Blocking, shared.config.blocking_threads))
            .and_then(|()| {
                watchdog::start(shared.clone()).map_err(|e| {
                    BuildError::new("threads", format!("cannot start the watchdog: {e}"))
                })
            });
        match started {
            Ok(wd) => {
                rt.watchdog = Some(wd);
                Ok(rt)
            }
            Err(e) => {
                shared.stop_unstarted();
                Err(e)
            }
        }
    }
}

fn hijack_cap_error(e: BuildError, what: &str) -> BuildError {
    if e.reason.starts_with("must be at least") {
        BuildError::new(
            e.setting,
            format!(
                "must be at least 1: with no room for a replacement, every timed-out poll would cost \
                 an {what} for good"
            ),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod builder_tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    /// `CURFEW_JOB_BUDGET_MS=600000` used to validate and then be encoded
    /// as "unlimited": the budget was never enforced.
    #[test]
    fn a_ten_minute_budget_from_the_environment_is_enforced() {
        let config = Builder::new()
            .apply_vars(vars(&[
                ("CURFEW_JOB_BUDGET_MS", "600000"),
                ("CURFEW_POLL_BUDGET_MS", "3600000"),
            ]))
            .validate()
            .unwrap();
        for (budget, want) in [
            (config.job_budget, Duration::from_secs(600)),
            (config.poll_budget, Duration::from_secs(3600)),
        ] {
            assert_eq!(budget, Some(want));
            let code = crate::slot::budget_code(budget);
            assert_ne!(
                code,
                crate::slot::UNLIMITED,
                "{want:?} would never be enforced"
            );
            assert_eq!(crate::slot::budget_duration(code), want);
        }
    }

    const VARS: [&str; 8] = [
        "CURFEW_EVENT_THREADS",
        "CURFEW_BLOCKING_THREADS",
        "CURFEW_POLL_BUDGET_MS",
        "CURFEW_JOB_BUDGET_MS",
        "CURFEW_MAX_HIJACKED_THREADS",
        "CURFEW_MAX_ABANDONED_THREADS",
        "CURFEW_MAX_BLOCKING_QUEUE",
        "CURFEW_HIJACK_GRACE_MS",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 256,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any environment (numbers of any size, words, blanks) validates or
        /// is refused with an error naming a variable or setting: never a
        /// panic, and never a budget the watchdog cannot time.
        #[test]
        fn any_environment_validates_or_names_the_problem(
            values in proptest::collection::vec(
                proptest::option::of(proptest::prop_oneof![
                    "[0-9]{1,25}",
                    " ?[0-9]{1,6} ?",
                    "\\PC{0,8}",
                ]),
                VARS.len(),
            )
        ) {
            let get = |k: &str| {
                VARS.iter().position(|v| *v == k).and_then(|i| values[i].clone())
            };
            match Builder::new().apply_vars(get).validate() {
                Ok(config) => {
                    for b in [config.poll_budget, config.job_budget].into_iter().flatten() {
                        let code = crate::slot::budget_code(Some(b));
                        proptest::prop_assert_ne!(code, crate::slot::UNLIMITED);
                        proptest::prop_assert!(crate::slot::budget_duration(code) >= b);
                    }
                }
                Err(e) => proptest::prop_assert!(e.to_string().contains(e.setting()), "{}", e),
            }
        }
    }

    #[test]
    fn a_budget_past_the_longest_is_an_error() {
        let err = Builder::new()
            .apply_vars(vars(&[("CURFEW_JOB_BUDGET_MS", "18446744073709551615")]))
            .validate()
            .unwrap_err();
        assert_eq!(err.setting(), "job_budget");
        assert!(err.to_string().contains("longest budget"), "{err}");
    }
}

/// State shared by a runtime's threads, handles and tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) event: Group,
    pub(crate) blocking: Group,
    pub(crate) clients: Arc<Clients>,
    pub(crate) tokio: tokio::runtime::Handle,
    /// The runtime's own I/O driver, driven by its event threads; `None`
    /// with [`Builder::tokio_handle`].
    pub(crate) io: Option<IoDriver>,
    shutdown: AtomicBool,
    pub(crate) watchdog_stop: AtomicBool,
    /// Set while the watchdog is parked (every thread was idle): polls that
    /// begin meanwhile stamp their start (`WorkerCtx::stamp_poll`). Read on
    /// every poll, written twice per watchdog park, so on a line of its own.
    pub(crate) watchdog_parked: CachePadded<crate::slot::WatchdogPark>,
    pub(crate) watchdog: OnceLock<Thread>,
    exit_lock: Mutex<()>,
    exit_cv: Condvar,
    is_default: bool,
    /// `config.poll_budget` and `config.job_budget`, worked out once.
    event_budget: Budget,
    blocking_budget: Budget,
    pub(crate) epoch: Instant,
    pub(crate) refused: AtomicU64,
    /// Every live task, for shutdown.
    pub(crate) registry: Registry,
    /// The watchdog's tick count, which a task reads when it is queued: the
    /// watchdog knows when each tick began, and so how long a queued task
    /// has waited at least (see `watchdog::QueueWatch`). One relaxed load
    /// per schedule; written once per watchdog tick.
    pub(crate) tick: CachePadded<AtomicU64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn group(&self, gid: GroupId) -> &Group {
        match gid {
            GroupId::Event => &self.event,
            GroupId::Blocking => &self.blocking,
        }
    }

    #[inline]
    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub(crate) fn unpark_watchdog(&self) {
        if let Some(t) = self.watchdog.get() {
            t.unpark();
        }
    }

    /// Wakes the watchdog if it is parked for want of anything to watch,
    /// after this thread has made itself watchable (left its park, or
    /// queued a task while it sits in the I/O driver). A watchdog between
    /// two ticks is left alone: it looks again within an interval anyway,
    /// and waking it on every thread's wake-up would cost a futex call and
    /// a tick each time. See [`WatchdogPark`](crate::slot::WatchdogPark)
    /// for the handshake with the watchdog's own park.
    #[inline]
    pub(crate) fn wake_parked_watchdog(&self) {
        if self.watchdog_parked.must_wake() {
            self.unpark_watchdog();
        }
    }

    /// Stops the threads of a runtime whose start failed partway, and waits
    /// for them to exit. They have never been given a task, so each leaves
    /// its loop as soon as it sees the shutdown; the wait is bounded all the
    /// same.
    fn stop_unstarted(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let alive =
            || self.event.alive.load(Ordering::SeqCst) + self.blocking.alive.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = self.exit_lock.lock().unwrap_or_else(|e| e.into_inner());
        while alive() > 0 && Instant::now() < deadline {
            // Wake them on every round: one may have been about to park when
            // the shutdown was set.
            self.event.notify_all();
            self.blocking.notify_all();
            g = self
                .exit_cv
                .wait_timeout(g, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(g);
        if let Some(io) = &self.io {
            io.close();
        }
    }

    pub(crate) fn thread_exited(&self) {
        let _g = self.exit_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.exit_cv.notify_all();
        drop(_g);
        self.unpark_watchdog();
    }

    /// The schedule function of async tasks.
    fn schedule_event(&self, r: Runnable, woken_while_running: bool) {
        // For the queue deadline: the tick in which the task was queued.
        r.metadata()
            .queued
            .store(self.tick.load(Ordering::Relaxed), Ordering::Relaxed);
        let r = match context::with_worker(|w| match w {
            Some(w) => w.push_local(self, r, woken_while_running),
            None => Err(r),
        }) {
            Ok(wake_another) => {
                if wake_another {
                    self.event.notify();
                }
                return;
            }
            Err(r) => r,
        };
        self.event.push_remote(r);
    }

    /// The schedule function of blocking jobs.
    /// (The job's place in the bounded queue was reserved by its spawn.)
    pub(crate) fn schedule_blocking(&self, r: Runnable) {
        self.blocking.push_remote(r);
    }

    pub(crate) fn refuse<T>(&self, r: Refusal) -> JoinHandle<T> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        JoinHandle::refused(r)
    }

    /// An inline scope's header for its next run, on an event thread (see
    /// `context::reuse_inline_header`): reset in place when its name and
    /// client are these very ones and it has no span, else made anew.
    /// Returns whether it was made anew.
    pub(crate) fn reuse_header(
        &self,
        header: &mut Option<Header>,
        memo: &mut Option<crate::policy::AdmitMemo>,
        name: &Arc<str>,
        client: Option<&ClientKey>,
        poll_budget: Option<Duration>,
    ) -> Result<bool, Refusal> {
        if self.is_shutdown() {
            return Err(Refusal::Shutdown);
        }
        let admitted = match client {
            Some(c) => self.clients.admit_memo(c, memo)?,
            None => Admitted::NONE,
        };
        let budget = poll_budget.map_or(self.event_budget, |b| Budget::new(Some(b)));
        // A header with a span, or on the default runtime (whose tasks
        // carry their spawner's tokio runtime), is made anew each time.
        let span = task_span(Some(name), client);
        if let Some(h) = header.as_mut().filter(|h| {
            !self.is_default
                && span.is_disabled()
                && h.span.is_none()
                && h.name.as_ref().is_some_and(|n| Arc::ptr_eq(n, name))
                && match (&h.client, client) {
                    (Some(a), Some(b)) => ClientKey::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        }) {
            h.reset(budget, admitted);
            return Ok(false);
        }
        *header = Some(Header::new(
            budget,
            admitted,
            GroupId::Event.location(),
            Some(name.clone()),
            client.cloned(),
            self.spawner_tokio(),
            span,
        ));
        Ok(true)
    }

    /// Builds a task's header, or the refusal for it.
    pub(crate) fn header(&self, opts: task::Builder, gid: GroupId) -> Result<Header, Refusal> {
        self.header_or_back(opts, gid)
            .map_err(|(refusal, _)| refusal)
    }

    /// As [`header`](Self::header), giving a refused task's options back
    /// (an inline scope keeps its name and client for its caller).
    pub(crate) fn header_or_back(
        &self,
        opts: task::Builder,
        gid: GroupId,
    ) -> Result<Header, (Refusal, task::Builder)> {
        if self.is_shutdown() {
            return Err((Refusal::Shutdown, opts));
        }
        let admitted = match &opts.client {
            Some(c) => match self.clients.admit(c) {
                Ok(admitted) => admitted,
                Err(refusal) => return Err((refusal, opts)),
            },
            None => Admitted::NONE,
        };
        let budget = match gid {
            GroupId::Event => opts.poll_budget.map_or(self.event_budget, Budget::new),
            GroupId::Blocking => opts.job_budget.map_or(self.blocking_budget, Budget::new),
        };
        let span = task_span(opts.name.as_deref(), opts.client.as_ref());
        Ok(Header::new(
            budget,
            admitted,
            gid.location(),
            opts.name,
            opts.client,
            self.spawner_tokio(),
            span,
        ))
    }

    /// On the default runtime, a task runs with its spawner's tokio
    /// runtime entered, so that the spawner's sockets and timers work.
    fn spawner_tokio(&self) -> Option<tokio::runtime::Handle> {
        if self.is_default {
            tokio::runtime::Handle::try_current().ok()
        } else {
            None
        }
    }
}

/// A task's span. Every task gets one; when debug-level curfew spans are
/// filtered out (the usual case) this is one load of the global level.
fn task_span(name: Option<&str>, client: Option<&ClientKey>) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        target: "curfew",
        "task",
        name,
        client = client.map(|c| c.as_str()),
    )
}

/// A curfew runtime: event threads, a worker pool and a watchdog.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(2).build()?;
/// let answer = rt.block_on(async {
///     let a = curfew::spawn(async { 40 });
///     let b = curfew::spawn_blocking(|| 2);
///     a.await.unwrap() + b.await.unwrap()
/// });
/// assert_eq!(answer, 42);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runtime {
    handle: Handle,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A runtime with default settings.
    pub fn new() -> Result<Runtime, BuildError> {
        Builder::new().build()
    }

    /// A handle to spawn on this runtime from anywhere.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Spawns an async task under the poll budget.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Runs a blocking job on the worker pool under the job budget.
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle.spawn_blocking(f)
    }

    /// Runs `future` to completion on the current thread, with this runtime
    /// as the target of `curfew::spawn` and its tokio runtime entered.
    ///
    /// The future itself is not under the watchdog (the calling thread
    /// cannot be replaced); the tasks it spawns are.
    ///
    /// # Panics
    ///
    /// Panics if called from one of curfew's own threads, where it would
    /// block a thread the watchdog is timing.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// A snapshot of the runtime's counters.
    pub fn metrics(&self) -> RuntimeMetrics {
        self.handle.metrics()
    }

    /// Shuts the runtime down, waiting at most `timeout` for its threads.
    ///
    /// Idle threads exit, and polls in progress are left to finish. Threads
    /// still busy when the timeout runs out, such as hijacked threads
    /// spinning in a poisoned poll, are detached: each drops its task and
    /// exits when its poll returns.
    ///
    /// When it returns, every task's handle is resolved: queued tasks are
    /// dropped and their handles resolve as cancelled; so are idle tasks,
    /// even those nothing would ever wake (as tokio cancels them), and tasks
    /// whose poll is still running on a detached thread (their future is
    /// dropped when that poll returns). Tasks woken later, for example by
    /// the I/O driver shutting down, are dropped at once. Futures dropped
    /// here run their destructors on the calling thread.
    ///
    /// The I/O driver (and the `tokio::spawn`ed tasks on it) shuts down when
    /// the last of the runtime's threads has exited, so that a poll still
    /// running on a detached thread finds its timers and sockets as they
    /// were; a thread hijacked for good keeps it up until the process ends.
    pub fn shutdown_timeout(mut self, timeout: Duration) {
        self.close(Some(Instant::now() + timeout));
    }

    /// Shuts the runtime down without waiting for its threads.
    pub fn shutdown_background(self) {
        self.shutdown_timeout(Duration::ZERO);
    }

    fn close(&mut self, deadline: Option<Instant>) {
        let Some(wd) = self.watchdog.take() else {
            return;
        };
        let shared = &self.handle.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        shared.event.notify_all();
        shared.blocking.notify_all();
        {
            // Without a deadline (drop), wait for the threads that are not
            // stuck: each finishes its current poll, which the watchdog
            // still bounds (over budget, a thread is stuck, and no longer
            // waited for, whether it could be written off or is held at the
            // cap). With a deadline, wait for every thread until then.
            let mut g = shared.exit_lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let remaining = match deadline {
                    None => shared.event.unstuck_threads() + shared.blocking.unstuck_threads(),
                    Some(_) => {
                        shared.event.alive.load(Ordering::SeqCst)
                            + shared.blocking.alive.load(Ordering::SeqCst)
                    }
                };
                if remaining == 0 {
                    break;
                }
                let mut wait = Duration::from_millis(10);
                if let Some(d) = deadline {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    wait = wait.min(d - now);
                }
                g = shared
                    .exit_cv
                    .wait_timeout(g, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        shared.watchdog_stop.store(true, Ordering::SeqCst);
        shared.unpark_watchdog();
        // The watchdog hands back the tasks it held for the queue deadline
        // before it exits.
        let _ = wd.join();
        // What it logged last (a timeout just before the shutdown) is
        // written before the program can exit; a stalled sink is not
        // waited for long.
        crate::deferred::flush(Duration::from_millis(250));
        // Drop what is queued, and from now on whatever is scheduled.
        shared.event.close();
        shared.blocking.close();
        // A task whose poll still runs on a detached thread: its handle is
        // answered as cancelled now, and its future dropped when that poll
        // returns.
        shared.event.cancel_running();
        shared.blocking.cancel_running();
        // Resolve every handle still open, and cancel every task left: an
        // idle one is woken and, its queue being closed, dropped here.
        for entry in shared.registry.close() {
            entry.cancel();
        }
        if let Some(io) = &shared.io {
            io.close();
        }
    }
}

impl Drop for Runtime {
    /// Shuts down like [`shutdown_timeout`](Runtime::shutdown_timeout), but
    /// waits only for the threads that are not stuck: at most about the
    /// poll or job budget (plus a watchdog interval), since the watchdog
    /// keeps timing the polls in progress, and a thread whose poll has run
    /// over budget is detached, whether it was written off or is held at
    /// the hijack cap. Only a poll with no budget
    /// ([`task::Builder::unlimited`](crate::task::Builder::unlimited), or
    /// [`Builder::no_default_budgets`]) can hold a drop for longer.
    fn drop(&mut self) {
        self.close(None);
    }
}

/// A cheap, cloneable reference to a runtime, for spawning from anywhere.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The runtime of the current curfew task or `block_on`.
    ///
    /// # Panics
    ///
    /// Panics outside a curfew runtime; see [`try_current`](Self::try_current).
    pub fn current() -> Handle {
        Self::try_current()
            .expect("`curfew::Handle::current` called outside a curfew runtime (a curfew task or `block_on`)")
    }

    /// The runtime of the current curfew task or `block_on`, if any.
    pub fn try_current() -> Option<Handle> {
        context::try_current()
    }

    /// Spawns an async task on this runtime under the poll budget.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_with(task::Builder::new(), future)
    }

    /// Runs a blocking job on this runtime's worker pool under the job
    /// budget.
    pub fn spawn_blocking<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_blocking_with(task::Builder::new(), f)
    }

    /// Like [`Runtime::block_on`].
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        assert!(
            !context::on_worker_thread(),
            "cannot call `block_on` on a curfew event or pool thread: it would block a thread \
             the watchdog is timing; `.await` the future instead"
        );
        let _tokio = self.shared.tokio.enter();
        let _rt = context::enter_runtime(self.clone());
        futures::executor::block_on(future)
    }

    /// A snapshot of the runtime's counters.
    pub fn metrics(&self) -> RuntimeMetrics {
        RuntimeMetrics::collect(&self.shared)
    }

    /// How long `client` is still refused by the runtime's
    /// [`ClientPolicy`] (cooling off, over its CPU quota, or its network or
    /// route refused), or `None` if it is not (or no policy is set). A
    /// server calls this before it reads a request's body, so that a
    /// refused client costs no more than its headers.
    ///
    /// It takes a read lock on the client table and reads a few atomics; it
    /// neither tracks a new client nor counts a refusal. A timeout's strike
    /// is recorded before its caller is woken, unless a new client's
    /// admission holds the table's lock at that moment: then at one of the
    /// watchdog's next ticks, and this may answer `None` for that short
    /// while after the caller has its `TimeoutError`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use curfew::policy::ClientPolicy;
    ///
    /// let rt = curfew::Runtime::builder()
    ///     .event_threads(1)
    ///     .poll_budget(Duration::from_millis(10))
    ///     .client_policy(ClientPolicy::new(1, Duration::from_secs(60)))
    ///     .build()?;
    /// let mallory = curfew::ClientKey::from("mallory");
    /// assert_eq!(rt.handle().cooling_off(&mallory), None);
    /// let spin = curfew::task::Builder::new().client("mallory").spawn_on(&rt.handle(), async {
    ///     // Never yields; stops once answered (or after 10 s).
    ///     let t = std::time::Instant::now();
    ///     while curfew::checkpoint().is_ok() && t.elapsed() < Duration::from_secs(10) {}
    /// });
    /// assert!(rt.block_on(spin).unwrap_err().is_timeout());
    /// let left = rt.handle().cooling_off(&mallory).expect("one strike is enough");
    /// assert!(left <= Duration::from_secs(60));
    /// # Ok(()) }
    /// ```
    pub fn cooling_off(&self, client: &ClientKey) -> Option<Duration> {
        self.shared.clients.peek_cooling_off(client)
    }

    pub(crate) fn spawn_with<F>(&self, opts: task::Builder, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let shared = &self.shared;
        let header = match shared.header(opts, GroupId::Event) {
            Ok(h) => h,
            Err(r) => return shared.refuse(r),
        };
        let sched = shared.clone();
        let schedule = WithInfo(move |r, info: ScheduleInfo| {
            sched.schedule_event(r, info.woken_while_running)
        });
        shared.event.spawned.fetch_add(1, Ordering::Relaxed);
        task::spawn_raw(header, future, schedule, Some(&shared.registry), |r| {
            shared.schedule_event(r, false)
        })
    }
}

pub(crate) static DEFAULT: OnceLock<Runtime> = OnceLock::new();

/// The runtime `curfew::spawn` uses outside any curfew runtime, started on
/// first use with [`Builder::from_env`].
pub(crate) fn default_handle() -> &'static Handle {
    &DEFAULT
        .get_or_init(|| {
            tracing::info!(
                target: "curfew",
                caller = ?tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()).ok(),
                "starting the default runtime: `curfew::spawn` was called outside a curfew runtime"
            );
            let mut b = Builder::new().from_env();
            b.is_default = true;
            b.build()
                .unwrap_or_else(|e| panic!("cannot start curfew's default runtime: {e}"))
        })
        .handle
}

#[cfg(all(test, not(curfew_loom)))]
mod tests {
    use super::*;

    /// Waits up to 10 s for `cond`.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_registry_forgets_finished_tasks() {
        let rt = Runtime::builder().event_threads(2).build().unwrap();
        let handles: Vec<_> = (0..100).map(|i| rt.spawn(async move { i })).collect();
        let jobs: Vec<_> = (0..10).map(|i| rt.spawn_blocking(move || i)).collect();
        for h in handles {
            rt.block_on(h).unwrap();
        }
        for j in jobs {
            rt.block_on(j).unwrap();
        }
        assert_eq!(rt.handle.shared.registry.len(), 0);
        let idle = rt.spawn(std::future::pending::<()>());
        assert!(eventually(|| rt.handle.shared.registry.len() == 1));
        idle.abort();
        assert!(eventually(|| rt.handle.shared.registry.len() == 0));
    }

    #[test]
    fn shutdown_leaves_no_cycle_through_the_shared_state() {
        let rt = Runtime::builder().event_threads(1).build().unwrap();
        let weak = Arc::downgrade(&rt.handle.shared);
        // A task on the runtime's own timer (woken by the driver's
        // shutdown), an idle one nothing will wake, a detached one, and
        // one still queued.
        let sleeper = rt.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });
        let idle = rt.spawn(std::future::pending::<()>());
        drop(rt.spawn(std::future::pending::<()>()));
        assert!(eventually(|| rt.metrics().event.polls >= 3));
        let queued = rt.spawn(async { 1 });
        rt.shutdown_timeout(Duration::from_secs(5));
        for h in [sleeper, idle] {
            assert!(futures::executor::block_on(h).unwrap_err().is_cancelled());
        }
        let _ = futures::executor::block_on(queued);
        assert!(
            eventually(|| weak.upgrade().is_none()),
            "the runtime's shared state outlived its shutdown"
        );
    }
}
