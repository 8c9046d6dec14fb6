//! Searches in a process of their own, killed when they overrun.
//!
//! A written-off search keeps its thread spinning until the regex returns,
//! because Rust cannot stop a thread, and those threads cost every room
//! latency even at idle priority (see the crate's README). A process can be
//! stopped: with [`ChatConfig::search_process`](crate::ChatConfig) set, each
//! search starts the chat binary again as a one-shot search worker (no
//! `fork` of the threaded server: a fresh `exec`), hands it the room's
//! history and the pattern on stdin, and reads the matches from its stdout.
//! The job that waits for it still runs on curfew's worker pool under the
//! search budget, so the client gets its `timeout` at the budget as before;
//! then the worker process is killed, and the CPU comes back at once. The
//! job's thread, blocked on the dead worker's pipe, wakes up and returns.
//!
//! The cost is a process start per search, a few milliseconds of CPU:
//! searches are rate limited like every other message. A worker dies with
//! the server (`PR_SET_PDEATHSIG`), so even a server killed outright
//! leaves no search spinning. If a worker cannot be started (out of
//! processes or memory), the search runs on the pool in process, logged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::protocol::SearchMatch;
use crate::rooms::Entry;
use crate::search;

/// Set in a search worker's environment, to the server's pid; the chat
/// binary checks it first thing ([`run_worker_if_asked`]).
pub const WORKER_ENV: &str = "CURFEW_CHAT_SEARCH_WORKER";

/// The most bytes a worker may answer with; more means a broken worker.
const MAX_REPLY: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
struct Request {
    pattern: String,
    /// The history, oldest first.
    history: Vec<WireEntry>,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    id: u64,
    from: String,
    text: String,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Matches(Vec<SearchMatch>),
    /// The pattern does not compile.
    Invalid,
}

/// Why an isolated search gave no answer.
#[derive(Debug)]
pub enum SearchError {
    /// The worker could not be started.
    Start(std::io::Error),
    /// The worker ended without a well-formed answer (killed at its
    /// budget, or crashed).
    NoAnswer,
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchError::Start(e) => write!(f, "cannot start a search worker: {e}"),
            SearchError::NoAnswer => f.write_str("search worker ended without an answer"),
        }
    }
}

impl std::error::Error for SearchError {}

/// If this process was started as a search worker, runs its one search and
/// exits; otherwise returns at once. Call it first thing in `main`.
pub fn run_worker_if_asked() {
    let Some(parent) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    die_with_parent(parent.to_str().and_then(|p| p.parse().ok()));
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        std::process::exit(2);
    }
    let Ok(req) = serde_json::from_slice::<Request>(&input) else {
        std::process::exit(2);
    };
    let history: Vec<Arc<Entry>> = req
        .history
        .into_iter()
        .map(|e| {
            Arc::new(Entry {
                id: e.id,
                from: e.from.into(),
                text: e.text.into(),
            })
        })
        .collect();
    let reply = match search::search(&history, &req.pattern) {
        Some(m) => Reply::Matches(m),
        None => Reply::Invalid,
    };
    let mut out = std::io::stdout().lock();
    let ok = serde_json::to_writer(&mut out, &reply).is_ok() && out.flush().is_ok();
    std::process::exit(if ok { 0 } else { 2 })
}

/// Asks the kernel to kill this worker when the server that started it
/// dies (a search that never ends must not outlive it), and exits at once
/// if the server is already gone.
///
/// Strictly, the signal comes when the server's *thread* that started the
/// worker ends. That is the pool thread running [`SearchProcess::run`],
/// which stays blocked on the worker's stdout (timed out or not) until the
/// worker has exited, so it never ends first.
fn die_with_parent(parent: Option<u32>) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent
        // death signal; getppid has no preconditions.
        let (set, ppid) = unsafe {
            (
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ),
                libc::getppid(),
            )
        };
        // The parent may have died before the signal was set up.
        if set != 0 || parent.is_some_and(|p| i64::from(ppid) != i64::from(p)) {
            std::process::exit(2);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}

/// One search worker process. Shared between the job that starts it and
/// waits for its answer, and the handler that kills it when the job
/// overruns.
#[derive(Debug)]
pub struct SearchProcess {
    exe: PathBuf,
    /// Starting, waiting, killing and reaping all happen under this lock,
    /// so a kill never reaches a reaped child's pid (which the system may
    /// have given to another process) and a killed search never starts.
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    NotStarted,
    Running(Child),
    /// Reaped, or killed before it started.
    Done,
}

impl SearchProcess {
    /// A search worker of `exe`, started by [`run`](Self::run).
    pub fn new(exe: &Path) -> Arc<Self> {
        Arc::new(Self {
            exe: exe.to_owned(),
            state: Mutex::new(State::NotStarted),
        })
    }

    /// Starts the worker, sends it the search, waits for the answer and
    /// reaps the worker: the matches, newest first, or `None` if the
    /// pattern does not compile. Blocks; run it on the worker pool.
    pub fn run(
        &self,
        history: &[Arc<Entry>],
        pattern: &str,
    ) -> Result<Option<Vec<SearchMatch>>, SearchError> {
        let (mut stdin, stdout) = {
            let mut state = self.lock();
            if !matches!(*state, State::NotStarted) {
                return Err(SearchError::NoAnswer);
            }
            let mut child = Command::new(&self.exe)
                .env(WORKER_ENV, std::process::id().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(SearchError::Start)?;
            let pipes = (child.stdin.take(), child.stdout.take());
            *state = State::Running(child);
            match pipes {
                (Some(i), Some(o)) => (i, o),
                _ => return Err(SearchError::NoAnswer),
            }
        };
        let req = Request {
            pattern: pattern.to_owned(),
            history: history
                .iter()
                .map(|e| WireEntry {
                    id: e.id,
                    from: e.from.to_string(),
                    text: e.text.to_string(),
                })
                .collect(),
        };
        // A worker killed while reading makes this fail: no answer.
        let sent = serde_json::to_writer(&mut stdin, &req).is_ok();
        drop(stdin);
        let mut out = Vec::new();
        let read = stdout.take(MAX_REPLY).read_to_end(&mut out);
        self.reap();
        if !sent || read.is_err() {
            return Err(SearchError::NoAnswer);
        }
        match serde_json::from_slice(&out) {
            Ok(Reply::Matches(m)) => Ok(Some(m)),
            Ok(Reply::Invalid) => Ok(None),
            Err(_) => Err(SearchError::NoAnswer),
        }
    }

    /// Kills the worker if it is running, or keeps it from starting. Its
    /// pipe then closes, and [`run`](Self::run) returns.
    pub fn kill(&self) {
        let mut state = self.lock();
        match &mut *state {
            State::Running(child) => {
                let _ = child.kill();
            }
            State::NotStarted => *state = State::Done,
            State::Done => {}
        }
    }

    /// Waits for the worker to exit (its stdout is closed, so it has, or
    /// is about to) and forgets it.
    fn reap(&self) {
        let mut state = self.lock();
        if let State::Running(child) = &mut *state {
            // A worker that closed stdout but lingers is killed rather than
            // waited for.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        *state = State::Done;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SearchProcess {
    fn drop(&mut self) {
        // Never leave a worker behind, whatever happened to the job.
        self.reap();
    }
}
