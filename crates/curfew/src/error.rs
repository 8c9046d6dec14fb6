//! Errors: why a task did not produce its output, and why a runtime could not
//! be built.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use crate::policy::ClientKey;

/// Where an overrun happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// A poll of an async task on an event thread overran the poll budget.
    EventThread,
    /// A blocking job on the worker pool overran the job budget.
    WorkerPool,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Location::EventThread => "event thread",
            Location::WorkerPool => "worker pool",
        })
    }
}

/// A task or job ran past its budget and was answered with a timeout.
///
/// Every number in it comes from the watchdog that fired: the budget in force,
/// how long the poll or job had been running when the watchdog saw it over
/// budget (a lower bound: it started at most one watchdog interval earlier),
/// and which task and client it belonged to.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let rt = curfew::Runtime::builder()
///     .event_threads(1)
///     .poll_budget(Duration::from_millis(20))
///     .build()?;
/// let handle = curfew::task::Builder::new()
///     .name("spin")
///     .client("203.0.113.7")
///     .spawn_on(&rt.handle(), async {
///         // Never yields: only the watchdog can answer for it. It stops
///         // once answered (or after 10 s).
///         let start = std::time::Instant::now();
///         while curfew::checkpoint().is_ok() && start.elapsed() < Duration::from_secs(10) {
///             std::hint::spin_loop();
///         }
///     });
/// let err = rt.block_on(handle).unwrap_err();
/// let timeout = err.timeout().expect("a timeout");
/// assert_eq!(timeout.budget(), Duration::from_millis(20));
/// assert!(timeout.elapsed() >= timeout.budget());
/// assert_eq!(timeout.name(), Some("spin"));
/// assert_eq!(timeout.client().map(|c| c.to_string()).as_deref(), Some("203.0.113.7"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutError {
    pub(crate) budget: Duration,
    pub(crate) elapsed: Duration,
    pub(crate) name: Option<std::sync::Arc<str>>,
    pub(crate) client: Option<ClientKey>,
    pub(crate) location: Location,
    /// The poll or job never started: the task waited in a queue, with no
    /// thread free to run it, for longer than its budget.
    pub(crate) queued: bool,
}

impl TimeoutError {
    /// The budget the task ran under, as the watchdog held it to: rounded
    /// up to a whole microsecond (to a millisecond past 134 s, a second past
    /// 37 hours), so a budget given in whole microseconds or coarser comes
    /// back as given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// How long the poll or job had run when the watchdog fired (at least the
    /// budget). A blocking job's time counts from its spawn, queueing
    /// included. For a [queue timeout](Self::is_queue_timeout), how long the
    /// task had waited in the queue.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The task's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The client the task was spawned for, if any.
    pub fn client(&self) -> Option<&ClientKey> {
        self.client.as_ref()
    }

    /// Whether an async poll or a blocking job overran (or, for a
    /// [queue timeout](Self::is_queue_timeout), which group's queue the task
    /// waited in).
    pub fn location(&self) -> Location {
        self.location
    }

    /// Whether the poll or job never started: the task waited in the queue
    /// of its [`location`](Self::location) for longer than its budget while
    /// no thread was free to run it (every thread was running an over-budget
    /// poll or had been written off). The task is dropped without running.
    pub fn is_queue_timeout(&self) -> bool {
        self.queued
    }
}

impl fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "task `{name}`")?,
            None => f.write_str("task")?,
        }
        if let Some(client) = &self.client {
            write!(f, " for client {client}")?;
        }
        let what = match self.location {
            Location::EventThread => "poll budget",
            Location::WorkerPool => "job budget",
        };
        if self.queued {
            return write!(
                f,
                " timed out without starting: waited at least {:.1?} in the {} queue with no \
                 thread free to run it, over its {what} of {:?}",
                self.elapsed, self.location, self.budget
            );
        }
        write!(
            f,
            " timed out: ran for at least {:.1?} on the {}, over its {what} of {:?}",
            self.elapsed, self.location, self.budget
        )
    }
}

impl std::error::Error for TimeoutError {}

/// Why the runtime refused to run a task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The worker pool's queue already held its maximum number of jobs.
    QueueFull {
        /// The configured maximum queue length.
        capacity: usize,
    },
    /// The runtime is shutting down or has shut down.
    Shutdown,
    /// The client is cooling off after repeated timeouts.
    ClientCoolingOff {
        /// The client that was refused.
        client: ClientKey,
        /// How much longer the cool-off lasts.
        remaining: Duration,
    },
    /// The client (or its network) has spent its CPU-time quota for the
    /// current window.
    QuotaSpent {
        /// The client, or the network, that was refused.
        client: ClientKey,
        /// CPU time spent in the window.
        spent: Duration,
        /// The quota per window.
        quota: Duration,
        /// How long until the window frees it.
        remaining: Duration,
    },
    /// The route's tasks are stuck: `overdue` of its polls or jobs ran past
    /// their budget and are still running (on threads written off, or held
    /// at the cap), the most the runtime allows one route
    /// ([`Builder::max_overdue_per_route`](crate::Builder::max_overdue_per_route)).
    /// The route is refused until one of them returns, so that it cannot
    /// take the last healthy threads.
    RouteOverdue {
        /// The route, a [`Namespace::Route`](crate::policy::Namespace::Route) key.
        route: ClientKey,
        /// Its polls stuck past their budget now.
        overdue: u32,
        /// The most allowed.
        limit: u32,
    },
}

impl Refusal {
    /// How long until a retry may succeed, where the refusal says: the rest
    /// of a cool-off or of a quota window (a `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::ClientCoolingOff { remaining, .. } | Refusal::QuotaSpent { remaining, .. } => {
                Some(*remaining)
            }
            Refusal::QueueFull { .. } | Refusal::Shutdown | Refusal::RouteOverdue { .. } => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { capacity } => {
                write!(f, "the worker pool queue is full ({capacity} jobs)")
            }
            Refusal::Shutdown => f.write_str("the runtime is shut down"),
            Refusal::ClientCoolingOff { client, remaining } => write!(
                f,
                "client {client} is cooling off after repeated timeouts ({remaining:.1?} left)"
            ),
            Refusal::QuotaSpent {
                client,
                spent,
                quota,
                remaining,
            } => write!(
                f,
                "client {client} has spent its CPU quota ({spent:.1?} of {quota:.1?}; {remaining:.1?} left in the window)"
            ),
            Refusal::RouteOverdue {
                route,
                overdue,
                limit,
            } => write!(
                f,
                "route {route} has {overdue} tasks stuck past their budget (the limit is {limit}); \
                 refused until one returns"
            ),
        }
    }
}

pub(crate) enum Repr {
    Timeout(TimeoutError),
    Panic(Box<dyn Any + Send + 'static>),
    Cancelled,
    Refused(Refusal),
}

/// A task did not produce its output: it timed out, panicked, was aborted or
/// was refused.
///
/// This is the error of a [`JoinHandle`](crate::JoinHandle), as in tokio.
pub struct JoinError {
    /// Boxed: one pointer, not 64 bytes. A task's output is a `Result<T,
    /// JoinError>`, stored inside the task, so an inline error would make
    /// every task with a small output 64 bytes larger for a case that is
    /// rare.
    pub(crate) repr: Box<Repr>,
}

impl JoinError {
    pub(crate) fn timed_out(e: TimeoutError) -> Self {
        Self {
            repr: Box::new(Repr::Timeout(e)),
        }
    }
    pub(crate) fn panic(p: Box<dyn Any + Send + 'static>) -> Self {
        Self {
            repr: Box::new(Repr::Panic(p)),
        }
    }
    pub(crate) fn cancelled() -> Self {
        Self {
            repr: Box::new(Repr::Cancelled),
        }
    }
    pub(crate) fn refused(r: Refusal) -> Self {
        Self {
            repr: Box::new(Repr::Refused(r)),
        }
    }

    /// The task ran past its budget and the watchdog answered for it. Also
    /// true for a [queue timeout](Self::is_queue_timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(*self.repr, Repr::Timeout(_))
    }

    /// The task timed out without starting: it waited in a queue longer than
    /// its budget while no thread was free to run it (see
    /// [`TimeoutError::is_queue_timeout`]).
    pub fn is_queue_timeout(&self) -> bool {
        matches!(&*self.repr, Repr::Timeout(t) if t.queued)
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(*self.repr, Repr::Panic(_))
    }

    /// The task was aborted, or dropped unfinished by a runtime shutting down.
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.repr, Repr::Cancelled)
    }

    /// The task was never run: the queue was full, the runtime was shut
    /// down, or the client is cooling off.
    pub fn is_refused(&self) -> bool {
        matches!(*self.repr, Repr::Refused(_))
    }

    /// The timeout details, if the task timed out.
    pub fn timeout(&self) -> Option<&TimeoutError> {
        match &*self.repr {
            Repr::Timeout(t) => Some(t),
            _ => None,
        }
    }

    /// Why the task was refused, if it was.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &*self.repr {
            Repr::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The panic payload.
    ///
    /// # Panics
    ///
    /// Panics if the error is not a panic; check [`is_panic`](Self::is_panic)
    /// or use [`try_into_panic`](Self::try_into_panic).
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .expect("`JoinError::into_panic` called on an error that is not a panic")
    }

    /// The panic payload, or the error itself if it is not a panic.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        if !self.is_panic() {
            return Err(self);
        }
        match *self.repr {
            Repr::Panic(p) => Ok(p),
            _ => unreachable!("checked above"),
        }
    }

    /// Turns the error into the `TimeoutError` it carries, if any.
    pub fn into_timeout(self) -> Result<TimeoutError, JoinError> {
        if !self.is_timeout() {
            return Err(self);
        }
        match *self.repr {
            Repr::Timeout(t) => Ok(t),
            _ => unreachable!("checked above"),
        }
    }
}

fn panic_message(p: &(dyn Any + Send)) -> Option<&str> {
    p.downcast_ref::<&'static str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::Timeout(t) => t.fmt(f),
            Repr::Panic(p) => match panic_message(p.as_ref()) {
                Some(msg) => write!(f, "task panicked with message {msg:?}"),
                None => f.write_str("task panicked"),
            },
            Repr::Cancelled => f.write_str("task was cancelled"),
            Repr::Refused(r) => write!(f, "task was refused: {r}"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.repr {
            Repr::Timeout(t) => f.debug_tuple("JoinError::Timeout").field(t).finish(),
            Repr::Panic(p) => f
                .debug_tuple("JoinError::Panic")
                .field(&panic_message(p.as_ref()).unwrap_or("..."))
                .finish(),
            Repr::Cancelled => f.write_str("JoinError::Cancelled"),
            Repr::Refused(r) => f.debug_tuple("JoinError::Refused").field(r).finish(),
        }
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.repr {
            Repr::Timeout(t) => Some(t),
            _ => None,
        }
    }
}

/// A timeout becomes an error of kind `TimedOut` that wraps the
/// [`TimeoutError`] (reach it with `get_ref` and `downcast_ref`); a refusal,
/// one of kind `WouldBlock`; anything else, `Other`.
impl From<JoinError> for std::io::Error {
    fn from(e: JoinError) -> Self {
        if e.is_refused() {
            return std::io::Error::new(std::io::ErrorKind::WouldBlock, e.to_string());
        }
        match e.into_timeout() {
            Ok(t) => t.into(),
            Err(e) => std::io::Error::other(e.to_string()),
        }
    }
}

/// The error a task's handle gives for this timeout: for code that answers
/// for a task itself, as an [`OnTimeout`](crate::task::OnTimeout) hook does.
impl From<TimeoutError> for JoinError {
    fn from(e: TimeoutError) -> Self {
        JoinError::timed_out(e)
    }
}

impl From<TimeoutError> for std::io::Error {
    fn from(e: TimeoutError) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// A runtime setting was invalid; [`Builder::build`](crate::Builder::build)
/// returns this instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub(crate) setting: &'static str,
    pub(crate) reason: String,
}

impl BuildError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the offending setting, as the builder method or
    /// environment variable spells it.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid curfew setting `{}`: {}",
            self.setting, self.reason
        )
    }
}

impl std::error::Error for BuildError {}
