//! The supervisor's settings, and its errors.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How the supervisor runs and recycles its workers.
///
/// Every setting has a default suited to a small server; only the address
/// is required. A setting that makes no sense (no workers, a drain deadline
/// of zero, a CPU share that is not a positive number) is reported by
/// [`role`](crate::role) as [`Error::Config`], never a panic.
///
/// ```
/// use std::time::Duration;
///
/// let config = curfew_supervisor::Config::new("127.0.0.1:0".parse().unwrap())
///     .processes(2)
///     .drain_deadline(Duration::from_secs(5))
///     .recycle_at_written_off(1)
///     .recycle_at_rss(512 << 20);
/// assert!(config.validate().is_ok());
/// assert!(config.processes(0).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) addr: SocketAddr,
    pub(crate) processes: usize,
    pub(crate) spares: usize,
    pub(crate) drain_deadline: Duration,
    pub(crate) max_draining: Option<usize>,
    pub(crate) written_off: usize,
    pub(crate) cpu_share: Option<f64>,
    pub(crate) rss: Option<u64>,
    pub(crate) grace: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) silence_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) backlog: i32,
    pub(crate) io_threads: usize,
    pub(crate) runtime: curfew::Builder,
}

/// How restarts of crashed workers are spaced.
///
/// After a worker dies on its own (a panic, a signal, an exit the supervisor
/// did not ask for), the next process start waits `initial`, then twice as
/// long after each further death in a row, up to `max`. A worker that lived
/// at least `reset_after` ends the series: the next death waits `initial`
/// again. The warm spare, when there is one, takes the dead worker's place
/// at once; the backoff only spaces the starts of new processes, so a
/// binary that crashes at start-up cannot make the supervisor spin.
///
/// Defaults: 100 ms, doubling to at most 5 s, reset after 10 s of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first death in a row.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A worker that lived this long ends a series of deaths.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait before the next start after `deaths` deaths in a row (0 for
    /// none).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = curfew_supervisor::Backoff::default();
    /// assert_eq!(b.delay(0), Duration::ZERO);
    /// assert_eq!(b.delay(1), Duration::from_millis(100));
    /// assert_eq!(b.delay(3), Duration::from_millis(400));
    /// assert_eq!(b.delay(60), Duration::from_secs(5));
    /// ```
    pub fn delay(&self, deaths: u32) -> Duration {
        if deaths == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(deaths - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// How long a poll runs before the default worker runtime hands its thread
/// off ([`Config::new`]): far above what an async poll should take, and a
/// tenth of curfew's default poll budget.
pub const DEFAULT_HAND_OFF: Duration = Duration::from_millis(10);

impl Config {
    /// The defaults, listening on `addr` (port 0 picks a free port).
    ///
    /// * 1 worker process and 1 warm spare;
    /// * recycle at the first written-off thread, at once (no grace), or
    ///   when written-off threads burn more than half a core;
    /// * no RSS limit;
    /// * a drain deadline of 10 s, with at most as many workers draining at
    ///   once as there are worker processes;
    /// * health reported every 20 ms; a worker silent for 5 s is recycled;
    ///   a started worker must be ready within 10 s;
    /// * restarts spaced by [`Backoff::default`];
    /// * in [`Worker::run`](crate::Worker::run), 1 tokio thread for
    ///   connections and a curfew runtime from `curfew::Builder::from_env`
    ///   that hands off a poll running past 10 ms
    ///   (`hand_off_long_polls`) and moves it to the idle scheduling class
    ///   until its timeout (`hand_off_to_idle_class`): until the worker is
    ///   recycled, its spinning poll takes neither an event thread nor,
    ///   where a benign thread wants it, a core.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            processes: 1,
            spares: 1,
            drain_deadline: Duration::from_secs(10),
            max_draining: None,
            written_off: 1,
            cpu_share: Some(0.5),
            rss: None,
            grace: Duration::ZERO,
            health_interval: Duration::from_millis(20),
            silence_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            backlog: 1024,
            io_threads: 1,
            runtime: curfew::Runtime::builder()
                .from_env()
                .hand_off_long_polls(Some(DEFAULT_HAND_OFF))
                .hand_off_to_idle_class(true),
        }
    }

    /// Where the shared socket listens.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Worker processes that serve (at least 1).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// Warm spares: started and ready, not serving, so that a recycle or a
    /// crash is covered without waiting for a process to start. Default 1;
    /// 0 starts the replacement on demand.
    pub fn spares(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    /// How long a draining worker may finish its in-flight requests before
    /// it is killed (more than zero). A worker that has nothing in flight
    /// exits at once.
    pub fn drain_deadline(mut self, d: Duration) -> Self {
        self.drain_deadline = d;
        self
    }

    /// The most workers draining at once (at least 1; default: the number
    /// of processes, and at least 2). A poisoned worker waits, still
    /// serving, while the cap is reached. The process count never exceeds
    /// `processes + spares + max_draining`.
    ///
    /// The floor of 2 is for a drain that does not end: a worker whose
    /// last requests never finish, or that is slow to die at its deadline
    /// (its threads must each be scheduled once to exit, and a niced
    /// spinning thread on a busy machine waits for its turn). With a cap of
    /// 1, the next poisoned worker would keep its spinning threads, and
    /// serve beside them, until that drain is over.
    pub fn max_draining(mut self, n: usize) -> Self {
        self.max_draining = Some(n);
        self
    }

    /// Recycle a worker once it has this many written-off threads
    /// (hijacked, abandoned or overdue) for longer than the grace. Default
    /// 1: the first one. 0 turns this rule off.
    pub fn recycle_at_written_off(mut self, n: usize) -> Self {
        self.written_off = n;
        self
    }

    /// Recycle a worker whose written-off threads burn more than this share
    /// of one core (0.5 = half a core), measured from their thread CPU
    /// clocks, for longer than the grace. `None` turns the rule off.
    pub fn recycle_at_cpu_share(mut self, share: impl Into<Option<f64>>) -> Self {
        self.cpu_share = share.into();
        self
    }

    /// Recycle a worker whose resident memory passes this many bytes. A
    /// draining worker that passes twice the limit (the allocating request
    /// is still in flight) is killed at once instead of at the drain
    /// deadline.
    pub fn recycle_at_rss(mut self, bytes: u64) -> Self {
        self.rss = Some(bytes);
        self
    }

    /// How long a recycle condition must hold before the worker is
    /// recycled. Default zero: at once.
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// How often a worker reports its health (more than zero, at most
    /// 1 s). Default 20 ms.
    pub fn health_interval(mut self, d: Duration) -> Self {
        self.health_interval = d;
        self
    }

    /// A serving worker that sends no health report for this long is
    /// recycled. Default 5 s.
    pub fn silence_timeout(mut self, d: Duration) -> Self {
        self.silence_timeout = d;
        self
    }

    /// How long a new worker may take to report ready before it is killed
    /// and counted as a failed start. Default 10 s.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// How restarts after crashes are spaced.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// The listening socket's backlog (the one accept queue all workers
    /// share). Default 1024.
    pub fn backlog(mut self, n: i32) -> Self {
        self.backlog = n;
        self
    }

    /// Tokio threads for connections in [`Worker::run`](crate::Worker::run).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }

    /// The curfew runtime that [`Worker::run`](crate::Worker::run) builds
    /// in each worker (its tokio handle is set to the connection runtime).
    ///
    /// It replaces the default whole: to keep the default's hand-off of
    /// long polls, set it on `builder` too:
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let config = curfew_supervisor::Config::new("127.0.0.1:0".parse().unwrap()).runtime(
    ///     curfew::Runtime::builder()
    ///         .poll_budget(Duration::from_millis(50))
    ///         .hand_off_long_polls(Some(curfew_supervisor::DEFAULT_HAND_OFF))
    ///         .hand_off_to_idle_class(true),
    /// );
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn runtime(mut self, builder: curfew::Builder) -> Self {
        self.runtime = builder;
        self
    }

    /// The listening address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn draining_cap(&self) -> usize {
        self.max_draining.unwrap_or(self.processes.max(2))
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if self.processes == 0 {
            return bad(
                "processes",
                "must be at least 1 (0 worker processes would serve nothing)".into(),
            );
        }
        if self.processes > 1024 {
            return bad("processes", format!("{} is more than 1024", self.processes));
        }
        if self.spares > 64 {
            return bad("spares", format!("{} is more than 64", self.spares));
        }
        if self.drain_deadline.is_zero() {
            return bad(
                "drain_deadline",
                "must be longer than zero (a worker with requests in flight needs time to finish them)"
                    .into(),
            );
        }
        if self.draining_cap() == 0 {
            return bad("max_draining", "must be at least 1".into());
        }
        if let Some(share) = self.cpu_share {
            if !(share.is_finite() && share > 0.0) {
                return bad(
                    "recycle_at_cpu_share",
                    format!("{share} is not a positive share of a core"),
                );
            }
        }
        if self.rss == Some(0) {
            return bad("recycle_at_rss", "must be more than 0 bytes".into());
        }
        if self.health_interval.is_zero() || self.health_interval > Duration::from_secs(1) {
            return bad(
                "health_interval",
                format!("{:?} is not between 1 ms and 1 s", self.health_interval),
            );
        }
        if self.silence_timeout < self.health_interval * 5 {
            return bad(
                "silence_timeout",
                format!(
                    "{:?} is less than 5 health intervals ({:?})",
                    self.silence_timeout,
                    self.health_interval * 5
                ),
            );
        }
        if self.ready_timeout.is_zero() {
            return bad("ready_timeout", "must be longer than zero".into());
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return bad(
                "backoff",
                format!(
                    "initial {:?} must be more than zero and at most max {:?}",
                    self.backoff.initial, self.backoff.max
                ),
            );
        }
        if self.backlog <= 0 {
            return bad(
                "backlog",
                format!("{} is not a positive backlog", self.backlog),
            );
        }
        if self.io_threads == 0 {
            return bad("io_threads", "must be at least 1".into());
        }
        Ok(())
    }
}

/// What can go wrong in the supervisor, or in a worker talking to it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    Config {
        /// The setting, as named by its [`Config`] method.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The listening socket could not be bound (the port is in use, the
    /// address is not local, ...).
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A system call or I/O the supervisor or a worker needs failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The process was started as a worker but its environment is not one
    /// a supervisor set up (missing or bad variables, or the supervisor is
    /// gone).
    NotAWorker(String),
}

impl Error {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Self {
        Error::Io { what, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { setting, reason } => {
                write!(f, "bad supervisor setting `{setting}`: {reason}")
            }
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Io { what, source } => write!(f, "cannot {what}: {source}"),
            Error::NotAWorker(why) => write!(f, "not started by a curfew supervisor: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::new("127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        base().validate().unwrap();
    }

    #[test]
    fn the_default_worker_runtime_hands_long_polls_off_to_the_idle_class() {
        let runtime = format!("{:?}", base().runtime);
        assert!(
            runtime.contains("hand_off_long_polls: Some(10ms)"),
            "{runtime}"
        );
        assert!(runtime.contains("hand_off_idle: true"), "{runtime}");
        // And it builds: the idle class comes with its hand-off.
        base().runtime.build().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(Config, &str)> = vec![
            (base().processes(0), "processes"),
            (base().drain_deadline(Duration::ZERO), "drain_deadline"),
            (base().max_draining(0), "max_draining"),
            (
                base().recycle_at_cpu_share(f64::NAN),
                "recycle_at_cpu_share",
            ),
            (base().recycle_at_cpu_share(-1.0), "recycle_at_cpu_share"),
            (base().recycle_at_rss(0), "recycle_at_rss"),
            (base().health_interval(Duration::ZERO), "health_interval"),
            (
                base().silence_timeout(Duration::from_millis(10)),
                "silence_timeout",
            ),
            (base().ready_timeout(Duration::ZERO), "ready_timeout"),
            (base().backlog(0), "backlog"),
            (base().io_threads(0), "io_threads"),
            (
                base().backoff(Backoff {
                    initial: Duration::ZERO,
                    ..Backoff::default()
                }),
                "backoff",
            ),
        ];
        for (cfg, name) in cases {
            match cfg.validate() {
                Err(Error::Config { setting, reason }) => {
                    assert_eq!(setting, name, "{reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{name}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(7), Duration::from_secs(5));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
    }
}
