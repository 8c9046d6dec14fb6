//! Runs a server as N worker processes of one binary that share one
//! listening socket, and takes the CPU back from runaway handlers by
//! recycling the process they poisoned: a replacement first, then a drain
//! of the poisoned worker's benign requests, then the kill.
//!
//! Rust cannot stop a thread. Curfew answers the caller of a handler that
//! overruns its budget and replaces the stuck thread, but the stuck code
//! keeps its thread and its CPU until it returns, which may be never. A
//! process can be killed safely; a thread cannot. So the supervisor watches
//! what each worker's written-off threads cost (their number, their thread
//! CPU clocks, the worker's resident memory) and, past a limit, replaces the
//! worker. Unlike gunicorn's arbiter or PHP-FPM's terminate timeout, it loses
//! no request: curfew already knows which thread is poisoned while the rest
//! of the process serves, so the poisoned worker is drained, not shot.
//!
//! # Use
//!
//! A few lines in `main`. The same binary is the supervisor when started by
//! hand and a worker when the supervisor re-executes it:
//!
//! ```no_run
//! # async fn serve(_: tokio::net::TcpListener, _: impl std::future::Future<Output = ()>) -> std::io::Result<()> { Ok(()) }
//! fn main() -> Result<(), curfew_supervisor::Error> {
//!     let config = curfew_supervisor::Config::new("127.0.0.1:3000".parse().unwrap())
//!         .processes(2);
//!     let summary = curfew_supervisor::run(config, |worker| async move {
//!         // Any server with a graceful shutdown: axum::serve, curfew_http::serve,
//!         // or hyper-util's GracefulShutdown in an accept loop.
//!         serve(worker.tokio_listener()?, worker.drain()).await
//!     })?;
//!     println!("recycled {} workers", summary.recycled);
//!     Ok(())
//! }
//! ```
//!
//! [`run`] never returns in a worker: the worker exits once its serve
//! future returns. Handlers spawned with `curfew::spawn` inside it run on
//! the curfew runtime that [`Worker::run`] built and watches. For full
//! control (your own runtimes, a listener handed to a server of your own),
//! use [`role`] and the [`Worker`] methods.
//!
//! # The shared socket: passed down, not `SO_REUSEPORT`
//!
//! The supervisor binds the socket once and every worker inherits the same
//! descriptor (re-executed with it left open, its number in the
//! environment). All workers accept from **one accept queue**. That is what
//! makes a drain lossless: a connection the kernel has completed but no
//! worker has accepted yet belongs to no worker, so when a poisoned worker
//! stops accepting, the connections waiting in the queue are taken by the
//! others. With `SO_REUSEPORT` each worker would own a queue of its own, the
//! kernel would keep hashing new connections into the draining worker's
//! queue until it closes its socket, and closing it resets every
//! connection still queued there (Linux can migrate them only with
//! `net.ipv4.tcp_migrate_req` or an eBPF program). One queue also means an
//! idle worker accepts first, and a port in use fails once, in the
//! supervisor, with a clear error. The cost is that every worker waiting in
//! `epoll` wakes for a new connection and all but one find nothing to
//! accept, which is cheap for a few workers.
//!
//! # Recycling
//!
//! Every health interval (20 ms) each worker reports its written-off threads
//! (hijacked event threads, abandoned pool threads, threads held at the cap)
//! with their OS thread ids and the CPU time each has used, which the worker
//! reads from the threads' CPU clocks; the supervisor reads the worker's RSS
//! from `/proc/<pid>/statm`. It looks nothing up under
//! `/proc/<pid>/task/<tid>`: the dentries such a lookup leaves must be
//! flushed by the thread as it exits, and a niced written-off thread
//! preempted while it flushes them makes the supervisor's `waitpid` spin in
//! the kernel until it runs again (`benches/RESULTS.md`). A worker is recycled when, for longer than the grace
//! (default: none),
//!
//! * it has at least [`Config::recycle_at_written_off`] written-off threads
//!   (default 1: the first one),
//! * or they burn more than [`Config::recycle_at_cpu_share`] of a core,
//! * or its RSS passes [`Config::recycle_at_rss`] (and a draining worker
//!   past twice that is killed at once),
//! * or it has sent no report for [`Config::silence_timeout`].
//!
//! Then a warm spare (started earlier, runtimes up, waiting in
//! [`Worker::wait_for_turn`]) is told to serve, the poisoned worker is told
//! to drain ([`Worker::drain`] resolves), a new spare is started, and the
//! poisoned worker exits as soon as its in-flight requests are done (at once
//! if there are none), or is killed at the [drain
//! deadline](Config::drain_deadline). The deadline is kept by a thread of
//! its own, which sends the `SIGKILL` through the worker's pidfd (Linux
//! 5.3 and later): the kill is on time even while the supervisor's loop is
//! held up (a log line waiting on a file a frozen worker writes to, say),
//! and a late kill can reach no process that reused the worker's id. With
//! no spare ready, the poisoned
//! worker keeps serving until its replacement is ready (at most the ready
//! timeout). At most [`Config::max_draining`] workers drain at once, so
//! there are never more than `processes + spares + max_draining` processes.
//! A worker that dies unasked is replaced, the spare first and new starts
//! spaced by the [`Backoff`].
//!
//! # Lifecycle
//!
//! SIGTERM or SIGINT drains every worker and makes [`Supervisor::run`]
//! return (a second signal kills them at once). Workers run in their own
//! process group, so a Ctrl-C at a terminal reaches only the supervisor. On
//! Linux each worker asks for SIGKILL when the supervisor dies
//! (`PR_SET_PDEATHSIG`, checked against `getppid` right after), so no
//! orphan keeps the port. Start, ready, serve, recycle, drain, kill and
//! restart are `tracing` events (target `curfew_supervisor`), and the
//! [`Summary`] counts workers started, recycled, killed while draining and
//! restarted.
//!
//! A worker's stdout and stderr are pipes of its own, whose lines threads
//! of the supervisor copy, whole and in order, to the supervisor's stdout
//! and stderr (and the supervisor waits up to a second for the workers'
//! last lines before [`Supervisor::run`] returns). Inheriting them would
//! make each one open file for every process, and a write holds locks every
//! other writer waits for: a worker thread stalled inside a write (demoted
//! by the watchdog, on a busy machine) would stall the supervisor's next
//! log line and every decision behind it.
//!
//! # Limits
//!
//! Linux only for the health readings and the death signal (`/proc`,
//! `prctl`). A request still in flight in a poisoned worker at the drain
//! deadline is lost with the process; so is a request whose own handler is
//! the runaway one, which curfew has already answered with a timeout. Idle
//! keep-alive connections of a draining worker are closed by the server's
//! graceful shutdown; a client that sends on such a connection at the very
//! moment it closes must retry, as HTTP/1.1 allows for idempotent requests.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]

mod config;
mod deadlines;
mod proto;
mod relay;
mod supervisor;
mod sys;
mod worker;

use std::fmt;
use std::future::Future;

pub use config::{Backoff, Config, DEFAULT_HAND_OFF, Error};
pub use supervisor::{Summary, Supervisor};
pub use worker::Worker;

/// What this process is.
#[derive(Debug)]
pub enum Role {
    /// Started by hand: the supervisor, socket bound, ready to run.
    Supervisor(Box<Supervisor>),
    /// Started by a supervisor: one of its workers.
    Worker(Worker),
}

/// Decides what this process is. A worker claims the socket its
/// supervisor passed down; a supervisor checks the configuration and binds
/// the socket, so a bad setting or a port in use is reported here.
pub fn role(config: Config) -> Result<Role, Error> {
    if let Some(w) = Worker::from_env(&config)? {
        return Ok(Role::Worker(w));
    }
    supervisor::bind(config).map(|s| Role::Supervisor(Box::new(s)))
}

/// Runs this binary under the supervisor: in the supervisor, runs the
/// workers until SIGTERM or SIGINT and returns what happened; in a worker,
/// runs `serve` with [`Worker::run`] and exits when it returns.
pub fn run<F, Fut, E>(config: Config, serve: F) -> Result<Summary, Error>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    match role(config)? {
        Role::Worker(w) => w.run(serve),
        Role::Supervisor(s) => s.run(),
    }
}
