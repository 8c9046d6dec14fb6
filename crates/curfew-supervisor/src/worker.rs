//! The worker's side: the inherited socket, the drain signal, and the
//! health reports.

use std::fmt;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::config::{Config, Error};
use crate::proto::{Command, Health};
use crate::sys;

/// Set in a worker's environment: its number.
pub(crate) const ENV_WORKER: &str = "CURFEW_SUPERVISOR_WORKER";
/// The inherited descriptors: `<listening socket>,<control socket>`.
pub(crate) const ENV_FDS: &str = "CURFEW_SUPERVISOR_FDS";
/// The supervisor's process id, to check that it is still our parent.
pub(crate) const ENV_PARENT: &str = "CURFEW_SUPERVISOR_PID";

/// Whether this process's inherited descriptors have been claimed.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// Where a worker stands with the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Started, not yet told anything.
    Waiting,
    /// Told to serve.
    Serve,
    /// Told to drain (or the supervisor is gone) before it served.
    Retire,
}

/// One worker process, as its own code sees it: the shared listening
/// socket, a future that resolves when the supervisor asks it to drain,
/// and the runtimes whose written-off threads it reports.
///
/// Cheap to clone. Obtained from [`role`](crate::role), or handed to the
/// closure of [`run`](crate::run) and [`Worker::run`].
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    config: Config,
    listener: TcpListener,
    writer: Mutex<UnixStream>,
    watched: Mutex<Vec<curfew::Handle>>,
    drain: watch::Sender<bool>,
    turn: Mutex<Turn>,
    turn_cv: Condvar,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id)
            .field("listener", &self.inner.listener)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| Error::NotAWorker(format!("{name} is not set")))
}

impl Worker {
    /// The worker this process is, if a supervisor started it.
    pub(crate) fn from_env(config: &Config) -> Result<Option<Worker>, Error> {
        let Ok(id) = std::env::var(ENV_WORKER) else {
            return Ok(None);
        };
        let bad = |what: String| Error::NotAWorker(what);
        let id: u64 = id
            .parse()
            .map_err(|_| bad(format!("{ENV_WORKER}=`{id}` is not a number")))?;
        let fds = var(ENV_FDS)?;
        let parsed: Vec<RawFd> = fds
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("{ENV_FDS}=`{fds}` is not two descriptors")))?;
        let [listen_fd, control_fd] = parsed[..] else {
            return Err(bad(format!("{ENV_FDS}=`{fds}` is not two descriptors")));
        };
        let parent: u32 = var(ENV_PARENT)?
            .parse()
            .map_err(|_| bad(format!("{ENV_PARENT} is not a process id")))?;
        if sys::parent_pid() != parent {
            return Err(bad(format!(
                "the supervisor (pid {parent}) is no longer this process's parent"
            )));
        }
        if listen_fd < 3 || control_fd < 3 || listen_fd == control_fd {
            return Err(bad(format!("{ENV_FDS}=`{fds}` names standard descriptors")));
        }
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(bad(
                "this process's worker descriptors were already claimed".into(),
            ));
        }
        // Our own children must not inherit them.
        sys::set_inheritable(listen_fd, false)
            .map_err(|e| Error::io("claim the listening socket", e))?;
        sys::set_inheritable(control_fd, false)
            .map_err(|e| Error::io("claim the control socket", e))?;
        // SAFETY: the supervisor left exactly these two descriptors open for
        // this process (they were valid, as the fcntl calls above showed),
        // and `CLAIMED` makes sure they are wrapped only once, so each has
        // one owner.
        let (listener, control) = unsafe {
            (
                TcpListener::from_raw_fd(listen_fd),
                UnixStream::from_raw_fd(control_fd),
            )
        };
        listener.local_addr().map_err(|e| {
            bad(format!(
                "descriptor {listen_fd} is not a listening socket: {e}"
            ))
        })?;
        let reader = control
            .try_clone()
            .map_err(|e| Error::io("clone the control socket", e))?;
        let (drain, _) = watch::channel(false);
        let worker = Worker {
            inner: Arc::new(Inner {
                id,
                config: config.clone(),
                listener,
                writer: Mutex::new(control),
                watched: Mutex::new(Vec::new()),
                drain,
                turn: Mutex::new(Turn::Waiting),
                turn_cv: Condvar::new(),
            }),
        };
        let w = worker.clone();
        std::thread::Builder::new()
            .name("supervisor-control".into())
            .spawn(move || w.read_commands(reader))
            .map_err(|e| Error::io("start the control thread", e))?;
        Ok(Some(worker))
    }

    fn read_commands(&self, reader: UnixStream) {
        let mut lines = BufReader::new(reader).lines();
        loop {
            let cmd = match lines.next() {
                Some(Ok(line)) => Command::parse(&line),
                // The supervisor is gone (it kills us too, on Linux): stop
                // taking connections and finish what is in flight.
                _ => Some(Command::Drain),
            };
            match cmd {
                Some(Command::Serve) => self.set_turn(Turn::Serve),
                Some(Command::Drain) => {
                    tracing::info!(target: "curfew_supervisor", worker = self.inner.id, "draining");
                    self.inner.drain.send_replace(true);
                    self.set_turn(Turn::Retire);
                    return;
                }
                None => {}
            }
        }
    }

    fn set_turn(&self, to: Turn) {
        let mut t = self.inner.turn.lock().unwrap_or_else(|e| e.into_inner());
        if *t == Turn::Waiting {
            *t = to;
        }
        self.inner.turn_cv.notify_all();
    }

    /// This worker's number (1, 2, ... in start order; a replacement gets a
    /// new number).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The shared listening socket (a new descriptor for the same socket at
    /// each call, non-blocking). All workers accept from its one queue.
    pub fn listener(&self) -> std::io::Result<TcpListener> {
        let l = self.inner.listener.try_clone()?;
        l.set_nonblocking(true)?;
        Ok(l)
    }

    /// [`listener`](Self::listener) as a tokio listener; call it inside a
    /// tokio runtime.
    pub fn tokio_listener(&self) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::from_std(self.listener()?)
    }

    /// Resolves when the supervisor asks this worker to drain: stop
    /// accepting, finish the requests in flight (closing keep-alive
    /// connections after their current response), then return from the
    /// serve loop so that the process exits.
    ///
    /// It is what graceful shutdown APIs take: hyper-util's
    /// `GracefulShutdown` (select on it in the accept loop, then call
    /// `shutdown().await`), axum's and `curfew_http`'s
    /// `serve(..).with_graceful_shutdown(worker.drain())`. It does not need
    /// a tokio runtime, and may be called any number of times.
    pub fn drain(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.drain.subscribe();
        async move {
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }

    /// Whether the supervisor has asked this worker to drain.
    pub fn is_draining(&self) -> bool {
        *self.inner.drain.borrow()
    }

    /// Reports the written-off threads of this curfew runtime to the
    /// supervisor. [`Worker::run`] watches the runtime it builds, and the
    /// default runtime behind `curfew::spawn` is always watched once
    /// started; call this for runtimes of your own.
    pub fn watch(&self, runtime: curfew::Handle) {
        self.inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(runtime);
    }

    /// Tells the supervisor that this worker is ready, and blocks until it
    /// is told to serve. Call it once the runtimes are built and before
    /// accepting: a warm spare waits here, already started, until a
    /// worker is recycled or dies.
    ///
    /// If the supervisor retires this worker before it ever serves (it is
    /// shutting down, or no longer needs a spare), the process exits here
    /// with status 0: it holds nothing in flight.
    pub fn wait_for_turn(&self) {
        if self.send(b"ready\n").is_err() {
            std::process::exit(0);
        }
        let mut t = self.inner.turn.lock().unwrap_or_else(|e| e.into_inner());
        while *t == Turn::Waiting {
            t = self
                .inner
                .turn_cv
                .wait(t)
                .unwrap_or_else(|e| e.into_inner());
        }
        if *t == Turn::Retire {
            tracing::info!(target: "curfew_supervisor", worker = self.inner.id, "spare retired before serving; exiting");
            std::process::exit(0);
        }
        drop(t);
        tracing::info!(target: "curfew_supervisor", worker = self.inner.id, pid = std::process::id(), "serving");
        let w = self.clone();
        let started = std::thread::Builder::new()
            .name("supervisor-health".into())
            .spawn(move || w.report_health());
        if started.is_err() {
            // The supervisor sees no heartbeat and recycles us.
            tracing::error!(target: "curfew_supervisor", "cannot start the health reporter");
        }
    }

    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        let mut w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(msg)
    }

    /// The written-off threads of every watched runtime.
    fn health(&self) -> Health {
        let mut h = Health::default();
        let mut runtimes = self
            .inner
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Handlers spawned with `curfew::spawn` outside any curfew runtime
        // (an axum handler under `#[tokio::main]`) run on the default one.
        runtimes.extend(curfew::health::default_runtime());
        for rt in &runtimes {
            for t in rt.written_off_threads() {
                if t.overdue {
                    h.overdue += 1;
                } else if t.location == curfew::Location::EventThread {
                    h.hijacked += 1;
                } else {
                    h.abandoned += 1;
                }
                if t.tid > 0 {
                    h.threads.push((t.tid, t.cpu_time()));
                }
            }
        }
        h
    }

    /// Reports every `health_interval`, and at once when a runtime of this
    /// process writes a thread off: the supervisor then hears of a
    /// poisoned thread within a fraction of a millisecond, not up to an
    /// interval later (every millisecond until the kill is CPU taken from
    /// benign clients).
    fn report_health(&self) {
        let interval = self.inner.config.health_interval;
        let mut seen = curfew::health::write_offs();
        loop {
            if self.send(self.health().encode().as_bytes()).is_err() {
                return;
            }
            seen = curfew::health::wait_for_write_off(seen, interval);
        }
    }

    /// Ends this worker process now with `code`, without waiting for
    /// threads still running a poisoned poll (they end with the process):
    /// the way out once the serve loop has drained.
    pub fn exit(&self, code: i32) -> ! {
        std::process::exit(code)
    }

    /// Serves with `serve` in this worker, then exits the process.
    ///
    /// Builds a curfew runtime for handlers
    /// ([`Config::runtime`](crate::Config::runtime)) and a tokio runtime for
    /// connections ([`Config::io_threads`](crate::Config::io_threads)
    /// threads, each with the curfew runtime entered), watches the curfew
    /// runtime, waits for its turn ([`wait_for_turn`](Self::wait_for_turn)),
    /// then runs `serve(worker)` on the tokio runtime. So `tokio::spawn`
    /// runs connections on the tokio threads and `curfew::spawn` runs
    /// handlers under the watchdog. When `serve` returns (after a drain, normally)
    /// the process exits: status 0 on `Ok`, 1 on `Err` (logged).
    pub fn run<F, Fut, E>(self, serve: F) -> !
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        let fail = |what: &str, e: &dyn fmt::Display| -> ! {
            tracing::error!(target: "curfew_supervisor", worker = self.inner.id, "{what}: {e}");
            eprintln!("curfew-supervisor worker {}: {what}: {e}", self.inner.id);
            std::process::exit(1)
        };
        // The curfew runtime owns its own I/O driver for the handlers; the
        // connection threads enter it, so that `curfew::spawn` in a
        // connection task spawns there (and not on the default runtime).
        let rt = match self.inner.config.runtime.clone().build() {
            Ok(rt) => rt,
            Err(e) => fail("cannot start the curfew runtime", &e),
        };
        let handle = rt.handle();
        let io = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.inner.config.io_threads)
            .thread_name("worker-io")
            .on_thread_start(move || std::mem::forget(handle.enter()))
            .enable_all()
            .build()
        {
            Ok(io) => io,
            Err(e) => fail("cannot start the tokio runtime", &e),
        };
        self.watch(rt.handle());
        self.wait_for_turn();
        let result = {
            let _curfew = rt.handle().enter();
            io.block_on(serve(self.clone()))
        };
        match result {
            Ok(()) => {
                tracing::info!(target: "curfew_supervisor", worker = self.inner.id, "drained; exiting");
                self.exit(0)
            }
            Err(e) => fail("serve failed", &e),
        }
    }
}
