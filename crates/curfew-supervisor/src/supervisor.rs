//! The supervisor's side: start, watch, recycle, restart and drain the
//! worker processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::config::{Config, Error};
use crate::deadlines::Deadlines;
use crate::proto::{Command, Health, Report};
use crate::relay::{Relays, Stream};
use crate::sys;
use crate::worker::{ENV_FDS, ENV_PARENT, ENV_WORKER};

const TARGET: &str = "curfew_supervisor";

/// What a supervisor did, returned when it has drained its workers and
/// stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Worker processes started (spares included).
    pub started: u64,
    /// Workers recycled: replaced and drained because of written-off
    /// threads, their CPU, their memory or their silence.
    pub recycled: u64,
    /// Draining workers killed at the drain deadline with requests still
    /// in flight.
    pub killed_while_draining: u64,
    /// Workers that died without being asked (a panic, a signal, a failed
    /// start) and were replaced.
    pub restarts: u64,
}

/// A supervisor with its socket bound, ready to [`run`](Supervisor::run).
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    exe: PathBuf,
    args: Vec<OsString>,
}

/// Binds the shared listening socket.
pub(crate) fn bind(config: Config) -> Result<Supervisor, Error> {
    config.validate()?;
    let addr = config.addr;
    let bind_err = |source| Error::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(bind_err)?;
    // Only SO_REUSEADDR (restart while old connections are in TIME_WAIT),
    // never SO_REUSEPORT: a second server on the same port must fail.
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(config.backlog).map_err(bind_err)?;
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().map_err(bind_err)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("find the current executable", e))?;
    Ok(Supervisor {
        config,
        listener,
        addr,
        exe,
        args: std::env::args_os().skip(1).collect(),
    })
}

impl Supervisor {
    /// The address the workers serve on (with the port chosen, if port 0
    /// was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs the workers until SIGTERM or SIGINT, then drains them all and
    /// returns what happened.
    ///
    /// Runs on the calling thread (a current-thread tokio runtime of its
    /// own), which must live until this returns: Linux ties each worker's
    /// death signal to the thread that started it.
    pub fn run(self) -> Result<Summary, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the supervisor's runtime", e))?;
        let summary = rt.block_on(async { Supervision::new(self)?.run().await });
        // Every worker has been reaped when `run` ends normally; should it
        // end early, a wait still blocked on a live worker must not hold
        // the return up (dropping the runtime would wait for it).
        rt.shutdown_background();
        summary
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started, not yet ready.
    Starting,
    /// Ready and waiting: a warm spare.
    Spare,
    /// Serving.
    Active,
    /// Told to drain; killed at the deadline.
    Draining { deadline: Instant },
}

/// Why a worker is recycled.
#[derive(Debug, Clone, PartialEq)]
enum Poison {
    WrittenOff(usize),
    Cpu(f64),
    Rss(u64),
    Silent(Duration),
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Poison::WrittenOff(n) => write!(f, "{n} written-off thread(s)"),
            Poison::Cpu(share) => write!(
                f,
                "written-off threads burn {:.0}% of a core",
                share * 100.0
            ),
            Poison::Rss(b) => write!(f, "resident memory {} MiB", b >> 20),
            Poison::Silent(d) => write!(f, "no health report for {:.1} s", d.as_secs_f64()),
        }
    }
}

struct Proc {
    id: u64,
    pid: u32,
    state: State,
    control: OwnedWriteHalf,
    started: Instant,
    last_heard: Instant,
    health: Health,
    /// CPU of each written-off thread at the last sample.
    cpu_seen: HashMap<i64, Duration>,
    cpu_at: Option<Instant>,
    /// Written-off threads' CPU share of a core over the last sample.
    cpu_share: f64,
    poisoned_since: Option<Instant>,
    /// Set once a recycle is decided: the worker keeps serving until its
    /// replacement is active or the ready timeout passes.
    recycle: Option<(Poison, Instant)>,
    killed: bool,
    /// When the loop killed it at its drain deadline.
    killed_at_deadline: Option<Instant>,
    /// A pidfd for the worker, opened right after its spawn: kills go
    /// through it, so none can reach a process that reused the id. `None`
    /// where the kernel has no pidfds (before Linux 5.3).
    pidfd: Option<Arc<OwnedFd>>,
}

impl Proc {
    /// Starts the drain: the state, and the deadline given to the thread
    /// that kills the worker when it passes, whatever this loop is doing.
    fn drain_until(&mut self, deadline: Instant, deadlines: &Deadlines) {
        self.state = State::Draining { deadline };
        if let Some(fd) = &self.pidfd {
            deadlines.arm(self.id, self.pid, fd.clone(), deadline);
        }
    }
}

enum Event {
    Report(u64, Report),
    ControlClosed,
    Exited(u64, io::Result<std::process::ExitStatus>),
}

struct Supervision {
    sup: Supervisor,
    procs: Vec<Proc>,
    next_id: u64,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    summary: Summary,
    deaths_in_a_row: u32,
    next_start: Instant,
    shutting_down: bool,
    warned_cap: bool,
    deadlines: Deadlines,
    relays: Relays,
}

impl Supervision {
    fn new(sup: Supervisor) -> Result<Self, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Self {
            sup,
            procs: Vec::new(),
            next_id: 1,
            tx,
            rx,
            summary: Summary::default(),
            deaths_in_a_row: 0,
            next_start: Instant::now(),
            shutting_down: false,
            warned_cap: false,
            deadlines: Deadlines::start()
                .map_err(|e| Error::io("start the drain-deadline thread", e))?,
            relays: Relays::default(),
        })
    }

    fn cfg(&self) -> &Config {
        &self.sup.config
    }

    async fn run(mut self) -> Result<Summary, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("handle SIGTERM", e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("handle SIGINT", e))?;
        let mut tick = tokio::time::interval(self.cfg().health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            target: TARGET,
            addr = %self.sup.addr,
            processes = self.cfg().processes,
            spares = self.cfg().spares,
            "supervisor started"
        );
        self.fill().await;
        loop {
            tokio::select! {
                ev = self.rx.recv() => {
                    // The supervision holds a sender, so recv never ends.
                    if let Some(ev) = ev {
                        self.handle(ev).await;
                    }
                }
                _ = tick.tick() => self.tick().await,
                _ = term.recv() => self.shutdown("SIGTERM").await,
                _ = int.recv() => self.shutdown("SIGINT").await,
            }
            if self.shutting_down && self.procs.is_empty() {
                break;
            }
        }
        // The workers' last lines first.
        let relaying = self.relays.finish(Duration::from_secs(1));
        if relaying > 0 {
            tracing::debug!(target: TARGET, relaying, "output of a worker's child still open; not waiting");
        }
        let s = &self.summary;
        tracing::info!(
            target: TARGET,
            started = s.started,
            recycled = s.recycled,
            killed_while_draining = s.killed_while_draining,
            restarts = s.restarts,
            "supervisor stopped"
        );
        Ok(self.summary)
    }

    async fn shutdown(&mut self, why: &str) {
        if self.shutting_down {
            // A second signal: stop waiting.
            tracing::warn!(target: TARGET, signal = why, "second signal: killing every worker now");
            for p in &mut self.procs {
                kill(p, "second signal");
            }
            return;
        }
        self.shutting_down = true;
        tracing::info!(target: TARGET, signal = why, workers = self.procs.len(), "draining every worker");
        let deadline = Instant::now() + self.cfg().drain_deadline;
        for p in &mut self.procs {
            if !matches!(p.state, State::Draining { .. }) {
                p.drain_until(deadline, &self.deadlines);
                send(p, Command::Drain).await;
            }
        }
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Report(id, report) => {
                let Some(p) = self.procs.iter_mut().find(|p| p.id == id) else {
                    return;
                };
                p.last_heard = Instant::now();
                match report {
                    Report::Ready => {
                        if p.state == State::Starting {
                            p.state = State::Spare;
                            tracing::debug!(target: TARGET, worker = id, pid = p.pid, "worker ready");
                        }
                        self.fill().await;
                    }
                    Report::Health(h) => {
                        let worse = h.written_off() > p.health.written_off();
                        if h != p.health {
                            tracing::debug!(
                                target: TARGET,
                                worker = id,
                                hijacked = h.hijacked,
                                abandoned = h.abandoned,
                                overdue = h.overdue,
                                "health changed"
                            );
                        }
                        p.health = h;
                        if worse {
                            // Decide now rather than at the next tick: every
                            // millisecond until the kill is a benign
                            // client's CPU.
                            self.tick().await;
                        }
                    }
                }
            }
            Event::ControlClosed => {
                // The exit follows; nothing to do until then.
            }
            Event::Exited(id, status) => {
                let Some(i) = self.procs.iter().position(|p| p.id == id) else {
                    return;
                };
                let p = self.procs.swap_remove(i);
                let killed_by_deadline = self.deadlines.forget(id);
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                match p.state {
                    State::Draining { .. } => {
                        if let (Some(k), false) = (&killed_by_deadline, p.killed) {
                            // The deadline thread got there before a tick.
                            self.summary.killed_while_draining += 1;
                            tracing::warn!(
                                target: TARGET,
                                worker = id,
                                pid = p.pid,
                                killed_while_draining = self.summary.killed_while_draining,
                                threads = k.threads.as_deref().unwrap_or("-"),
                                died_after_ms = k.at.elapsed().as_millis() as u64,
                                "drain deadline passed; worker killed"
                            );
                        } else if let Some(at) = p.killed_at_deadline {
                            tracing::info!(
                                target: TARGET,
                                worker = id,
                                pid = p.pid,
                                died_after_ms = at.elapsed().as_millis() as u64,
                                "worker killed at its drain deadline exited"
                            );
                        } else if !p.killed {
                            tracing::info!(
                                target: TARGET,
                                worker = id,
                                pid = p.pid,
                                %status,
                                "drained worker exited"
                            );
                        }
                    }
                    _ if self.shutting_down => {}
                    _ => {
                        let now = Instant::now();
                        if now.duration_since(p.started) >= self.cfg().backoff.reset_after {
                            self.deaths_in_a_row = 0;
                        }
                        self.deaths_in_a_row = self.deaths_in_a_row.saturating_add(1);
                        let delay = self.cfg().backoff.delay(self.deaths_in_a_row);
                        self.next_start = self.next_start.max(now + delay);
                        self.summary.restarts += 1;
                        tracing::warn!(
                            target: TARGET,
                            worker = id,
                            pid = p.pid,
                            %status,
                            deaths_in_a_row = self.deaths_in_a_row,
                            backoff_ms = delay.as_millis() as u64,
                            restarts = self.summary.restarts,
                            "worker died; restarting"
                        );
                    }
                }
                self.fill().await;
            }
        }
    }

    /// Samples health, enforces deadlines, recycles, starts processes.
    async fn tick(&mut self) {
        let now = Instant::now();
        let cfg = self.sup.config.clone();
        let deadlines = &self.deadlines;
        for p in &mut self.procs {
            // Memory still growing while the worker drains (the request
            // that allocates is the one in flight): past twice the limit
            // the drain ends at once.
            if let (State::Draining { deadline }, Some(limit)) = (p.state, cfg.rss) {
                if now < deadline
                    && sys::rss_bytes(p.pid).is_some_and(|r| r > limit.saturating_mul(2))
                {
                    tracing::warn!(
                        target: TARGET,
                        worker = p.id,
                        pid = p.pid,
                        limit_mib = limit >> 20,
                        "draining worker passed twice the memory limit; ending the drain now"
                    );
                    p.drain_until(now, deadlines);
                }
            }
            match p.state {
                // A deadline the thread keeps: killed through it, at most
                // once whichever of the two gets there first, and logged
                // with the exit.
                State::Draining { deadline }
                    if now >= deadline && !p.killed && p.pidfd.is_some() =>
                {
                    deadlines.kill_now(p.id);
                }
                State::Draining { deadline } if now >= deadline && !p.killed => {
                    // Without a pidfd: the snapshot is the worker's if the
                    // kill by pid then succeeds.
                    let threads = sys::threads_snapshot(p.pid);
                    if kill(p, "drain deadline passed") {
                        p.killed_at_deadline = Some(Instant::now());
                    }
                    self.summary.killed_while_draining += 1;
                    tracing::warn!(
                        target: TARGET,
                        worker = p.id,
                        pid = p.pid,
                        killed_while_draining = self.summary.killed_while_draining,
                        threads = p.killed_at_deadline.and(threads).as_deref().unwrap_or("-"),
                        "drain deadline passed; worker killed"
                    );
                }
                State::Starting
                    if now.duration_since(p.started) >= cfg.ready_timeout && !p.killed =>
                {
                    tracing::warn!(target: TARGET, worker = p.id, pid = p.pid, "worker not ready in time; killed");
                    kill(p, "not ready in time");
                }
                State::Active if p.recycle.is_none() => {
                    sample(p, now);
                    match poisoned(p, &cfg, now) {
                        Some(why) => {
                            let since = *p.poisoned_since.get_or_insert(now);
                            if now.duration_since(since) >= cfg.grace {
                                tracing::warn!(
                                    target: TARGET,
                                    worker = p.id,
                                    pid = p.pid,
                                    reason = %why,
                                    hijacked = p.health.hijacked,
                                    abandoned = p.health.abandoned,
                                    overdue = p.health.overdue,
                                    "worker poisoned; recycling"
                                );
                                p.recycle = Some((why, now));
                            }
                        }
                        None => p.poisoned_since = None,
                    }
                }
                _ => {}
            }
        }
        self.recycle(now).await;
        self.fill().await;
    }

    /// Replaces and drains the workers marked for recycling, within the
    /// cap on draining workers.
    async fn recycle(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        let cap = self.cfg().draining_cap();
        let ready_timeout = self.cfg().ready_timeout;
        let deadline = now + self.cfg().drain_deadline;
        loop {
            let draining = self
                .procs
                .iter()
                .filter(|p| matches!(p.state, State::Draining { .. }))
                .count();
            let Some(i) = self
                .procs
                .iter()
                .position(|p| p.state == State::Active && p.recycle.is_some())
            else {
                return;
            };
            if draining >= cap {
                if !self.warned_cap {
                    self.warned_cap = true;
                    tracing::warn!(
                        target: TARGET,
                        cap,
                        "poisoned worker waits: the cap on draining workers is reached"
                    );
                }
                return;
            }
            self.warned_cap = false;
            // Its replacement first: a warm spare, if one is ready, unless
            // one serves in its place already (`fill` activates one while
            // a poisoned worker waits for the cap on draining workers).
            let serving = self.serving();
            let spare = self.procs.iter().position(|p| p.state == State::Spare);
            let (_, decided) = self.procs[i]
                .recycle
                .clone()
                .unwrap_or((Poison::WrittenOff(0), now));
            if serving >= self.cfg().processes {
                // Replaced already.
            } else if let Some(s) = spare {
                activate(&mut self.procs[s]).await;
            } else if now.duration_since(decided) < ready_timeout {
                // No spare yet (fill starts one): keep serving meanwhile.
                return;
            } else {
                tracing::warn!(
                    target: TARGET,
                    worker = self.procs[i].id,
                    "no replacement ready in time; draining without one"
                );
            }
            let p = &mut self.procs[i];
            p.drain_until(deadline, &self.deadlines);
            self.summary.recycled += 1;
            tracing::info!(
                target: TARGET,
                worker = p.id,
                pid = p.pid,
                recycled = self.summary.recycled,
                drain_deadline_ms = self.sup.config.drain_deadline.as_millis() as u64,
                "worker draining"
            );
            send(p, Command::Drain).await;
        }
    }

    /// Workers serving and not marked for recycling.
    fn serving(&self) -> usize {
        self.procs
            .iter()
            .filter(|p| p.state == State::Active && p.recycle.is_none())
            .count()
    }

    /// Keeps `processes` workers serving and `spares` warm spares, within
    /// the process cap and the restart backoff.
    async fn fill(&mut self) {
        if self.shutting_down {
            return;
        }
        let n = self.cfg().processes;
        loop {
            let active = self.serving();
            if active >= n {
                break;
            }
            let Some(s) = self.procs.iter().position(|p| p.state == State::Spare) else {
                break;
            };
            activate(&mut self.procs[s]).await;
        }
        let cap = n + self.cfg().spares + self.cfg().draining_cap();
        loop {
            let serving = self.serving();
            let coming = self
                .procs
                .iter()
                .filter(|p| matches!(p.state, State::Starting | State::Spare) && !p.killed)
                .count();
            let wanted = n.saturating_sub(serving) + self.cfg().spares;
            if coming >= wanted || self.procs.len() >= cap || Instant::now() < self.next_start {
                break;
            }
            if let Err(e) = self.start() {
                let delay = self.cfg().backoff.max;
                self.next_start = Instant::now() + delay;
                tracing::error!(target: TARGET, error = %e, retry_ms = delay.as_millis() as u64, "cannot start a worker");
                break;
            }
        }
    }

    /// Starts one worker: this binary again, with the listening socket and
    /// one end of a control socket pair inherited.
    fn start(&mut self) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let listen_fd = self.sup.listener.as_raw_fd();
        let control_fd = theirs.as_raw_fd();
        // The worker's stdout and stderr: pipes of its own, relayed
        // (`crate::relay`).
        let (out_from, out_to) = sys::pipe()?;
        let (err_from, err_to) = sys::pipe()?;
        let parent = std::process::id();
        let mut cmd = std::process::Command::new(&self.sup.exe);
        cmd.args(&self.sup.args)
            .env(ENV_WORKER, id.to_string())
            .env(ENV_FDS, format!("{listen_fd},{control_fd}"))
            .env(ENV_PARENT, parent.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(out_to))
            .stderr(std::process::Stdio::from(err_to))
            // Its own process group: a Ctrl-C at the terminal reaches only
            // the supervisor, which drains the workers instead of losing
            // their requests.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (prctl, getppid, fcntl),
        // allocating nothing; the descriptors it touches are the child's
        // copies of two descriptors this function keeps open until after
        // the spawn.
        unsafe {
            cmd.pre_exec(move || {
                sys::die_with_parent(parent)?;
                sys::set_inheritable(listen_fd, true)?;
                sys::set_inheritable(control_fd, true)
            });
        }
        let child = cmd.spawn()?;
        // Our copy of the pipe's write end goes with `cmd`, when this
        // returns; the relay ends once the worker's copies close.
        drop(theirs);
        for (from, to) in [(out_from, Stream::Stdout), (err_from, Stream::Stderr)] {
            if let Err(e) = self.relays.start(id, from, to) {
                tracing::warn!(target: TARGET, worker = id, error = %e, stream = ?to, "no thread to relay a worker's output");
            }
        }
        let pid = child.id();
        // Now, before the wait below can reap it.
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::debug!(target: TARGET, worker = id, error = %e, "no pidfd; kills go by pid");
                None
            }
        };
        ours.set_nonblocking(true)?;
        let (read, write) = UnixStream::from_std(ours)?.into_split();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(r) = Report::parse(&line) {
                    let _ = tx.send(Event::Report(id, r));
                }
            }
            let _ = tx.send(Event::ControlClosed);
        });
        // Reaped by a blocking wait, not by tokio's child future: that one
        // polls the child's pidfd and, when the pidfd reports an exit that
        // `waitpid` cannot collect yet, polls again at once. A worker whose
        // exit drags (a thread of it that the machine hardly runs must still
        // take its kill) then held this loop's only thread in a busy loop for
        // seconds: no recycle, no tick, and a core taken from the workers.
        //
        // And on a thread of its own at the lowest priority. Reaping a
        // process flushes its `/proc` dentries; while its last thread (often
        // the niced spinning one) still flushes its own, after it has woken
        // us, `wait` spins in the kernel until that thread has run. Any
        // reader of `/proc/<pid>/task/<tid>` (not this supervisor; `top -H`
        // or a per-thread exporter may be) creates such dentries. At nice 0
        // the spin took a core from the workers for up to 2 s and kept the
        // thread it waited for off the CPU; at nice 19 it yields to both.
        // Should no thread start, a thread of tokio's blocking pool reaps
        // the child at its own priority: a child is never left unreaped.
        let reap = move |mut child: std::process::Child, tx: mpsc::UnboundedSender<Event>| {
            let status = child.wait();
            let _ = tx.send(Event::Exited(id, status));
        };
        let (hand, take) = std::sync::mpsc::channel::<std::process::Child>();
        let tx = self.tx.clone();
        let reaper = std::thread::Builder::new()
            .name("supervisor-reap".into())
            .spawn(move || {
                if let Ok(child) = take.recv() {
                    sys::lowest_priority_for_this_thread();
                    reap(child, tx);
                }
            });
        let unreaped = match reaper {
            Ok(_) => hand.send(child).err().map(|e| e.0),
            Err(_) => Some(child),
        };
        if let Some(child) = unreaped {
            tracing::warn!(target: TARGET, worker = id, "no reaping thread; reaping on tokio's blocking pool");
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || reap(child, tx));
        }
        let now = Instant::now();
        self.procs.push(Proc {
            id,
            pid,
            state: State::Starting,
            control: write,
            started: now,
            last_heard: now,
            health: Health::default(),
            cpu_seen: HashMap::new(),
            cpu_at: None,
            cpu_share: 0.0,
            poisoned_since: None,
            recycle: None,
            killed: false,
            killed_at_deadline: None,
            pidfd,
        });
        self.summary.started += 1;
        tracing::info!(target: TARGET, worker = id, pid, "worker started");
        Ok(())
    }
}

async fn send(p: &mut Proc, cmd: Command) {
    // A worker that cannot hear us is dead or dying; its exit is handled.
    let _ = p.control.write_all(cmd.encode()).await;
}

async fn activate(p: &mut Proc) {
    p.state = State::Active;
    p.last_heard = Instant::now();
    send(p, Command::Serve).await;
    tracing::info!(target: TARGET, worker = p.id, pid = p.pid, "worker serving");
}

/// Kills the worker (once). Returns whether the signal reached it now.
fn kill(p: &mut Proc, why: &str) -> bool {
    if p.killed {
        return false;
    }
    p.killed = true;
    // Through the pidfd where there is one. Without, by pid: the exit event
    // has not been handled (the process is still listed), though the wait
    // may have reaped it a moment ago; an id is reused only after the
    // kernel's pid counter wraps.
    let sent = match &p.pidfd {
        Some(fd) => sys::pidfd_signal(fd, libc::SIGKILL),
        None => sys::signal(p.pid, libc::SIGKILL),
    };
    match sent {
        Err(e) => {
            tracing::debug!(target: TARGET, worker = p.id, error = %e, "kill failed (already gone)");
            false
        }
        Ok(()) => {
            tracing::info!(target: TARGET, worker = p.id, pid = p.pid, reason = why, "worker killed");
            true
        }
    }
}

/// Updates the CPU share of a worker's written-off threads.
fn sample(p: &mut Proc, now: Instant) {
    let mut burnt = Duration::ZERO;
    let mut seen = HashMap::with_capacity(p.health.threads.len());
    for &(tid, cpu) in &p.health.threads {
        if let Some(cpu) = cpu {
            if let Some(before) = p.cpu_seen.get(&tid) {
                burnt += cpu.saturating_sub(*before);
            }
            seen.insert(tid, cpu);
        }
    }
    if let Some(at) = p.cpu_at {
        let dt = now.duration_since(at).as_secs_f64();
        if dt > 0.0 {
            p.cpu_share = burnt.as_secs_f64() / dt;
        }
    }
    p.cpu_seen = seen;
    p.cpu_at = Some(now);
}

fn poisoned(p: &Proc, cfg: &Config, now: Instant) -> Option<Poison> {
    let n = p.health.written_off();
    if cfg.written_off > 0 && n >= cfg.written_off {
        return Some(Poison::WrittenOff(n));
    }
    if let Some(limit) = cfg.cpu_share {
        if p.cpu_share > limit {
            return Some(Poison::Cpu(p.cpu_share));
        }
    }
    if let Some(limit) = cfg.rss {
        if let Some(rss) = sys::rss_bytes(p.pid) {
            if rss > limit {
                return Some(Poison::Rss(rss));
            }
        }
    }
    let silent = now.duration_since(p.last_heard);
    if silent >= cfg.silence_timeout {
        return Some(Poison::Silent(silent));
    }
    None
}
