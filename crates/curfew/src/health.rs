//! The threads a runtime has written off, for a supervisor that takes their
//! CPU back by recycling the process.
//!
//! A hijacked event thread or an abandoned pool thread keeps running its
//! poisoned poll or job, and keeps burning CPU, until that code returns:
//! Rust cannot stop a thread. [`Handle::written_off_threads`] lists those
//! threads with their OS thread ids, so that something outside the runtime
//! can watch what they cost ([`WrittenOffThread::cpu_time`], which the
//! process reports to its supervisor) and, past a limit, replace the whole
//! process. `curfew-supervisor` does exactly that.
//!
//! Prefer `cpu_time` in the process to [`thread_cpu_time`] read from
//! another one: a lookup of `/proc/<pid>/task/<tid>` leaves dentries that
//! the thread must flush as it exits, and a written-off thread is niced or
//! demoted; preempted while it flushes, it makes the `waitpid` that reaps
//! its process spin in the kernel until it runs again (half a second and
//! more was measured on a busy 2-core machine).
//!
//! Reading the list takes no lock on the runtime's hot path: it walks the
//! same slot table the watchdog reads.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let rt = curfew::Runtime::builder()
//!     .event_threads(1)
//!     .poll_budget(Duration::from_millis(20))
//!     .build()?;
//! assert!(rt.handle().written_off_threads().is_empty());
//! let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let spinning = stop.clone();
//! let stuck = rt.spawn(async move {
//!     while !spinning.load(std::sync::atomic::Ordering::Relaxed) {
//!         std::hint::spin_loop();
//!     }
//! });
//! assert!(rt.block_on(stuck).unwrap_err().is_timeout());
//! // The watchdog writes the thread off a hijack grace after the timeout.
//! let mut written_off = Vec::new();
//! for _ in 0..500 {
//!     written_off = rt.handle().written_off_threads();
//!     if !written_off.is_empty() {
//!         break;
//!     }
//!     std::thread::sleep(Duration::from_millis(10));
//! }
//! assert_eq!(written_off.len(), 1);
//! assert_eq!(written_off[0].location, curfew::Location::EventThread);
//! # #[cfg(target_os = "linux")]
//! assert!(written_off[0].cpu_time().is_some());
//! stop.store(true, std::sync::atomic::Ordering::Relaxed);
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::Location;
use crate::executor::GroupId;
use crate::runtime::Handle;
use crate::slot::{self, EXPIRED, HIJACKED};

/// One thread that the runtime no longer counts on: its task or job timed
/// out and its poll has not returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrittenOffThread {
    /// The OS thread id (`gettid`) on Linux; 0 where the platform has none.
    pub tid: i64,
    /// An event thread (hijacked) or a pool thread (abandoned).
    pub location: Location,
    /// `false` for a thread that was written off and replaced; `true` for
    /// one whose task timed out but which could not be replaced because
    /// the cap on written-off threads was reached (it still counts in
    /// `overdue_threads` of the metrics).
    pub overdue: bool,
}

impl WrittenOffThread {
    /// The CPU time the thread has used since it started, from its thread
    /// CPU clock (nanosecond precision; no `/proc` lookup). `None` if the
    /// thread has exited or the platform does not say.
    pub fn cpu_time(&self) -> Option<Duration> {
        crate::sys::thread_cpu_clock(self.tid)
    }
}

/// Write-offs in this process so far, and a condition variable that
/// wakes [`wait_for_write_off`].
static WRITE_OFFS: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// Called by a watchdog that has just written a thread off (or found one
/// overdue at the cap): wakes whoever waits in [`wait_for_write_off`].
pub(crate) fn note_write_off() {
    let (count, cv) = &WRITE_OFFS;
    *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    cv.notify_all();
}

/// How many threads the runtimes of this process have written off so far
/// (hijacked or abandoned, or found overdue at the cap), for
/// [`wait_for_write_off`].
pub fn write_offs() -> u64 {
    *WRITE_OFFS.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Blocks until the count of write-offs passes `seen` or `timeout` runs
/// out, and returns the count. A health reporter waits here between its
/// periodic reports, so that a supervisor hears of a poisoned thread at
/// once rather than up to a period later.
///
/// ```
/// use std::time::Duration;
///
/// let seen = curfew::health::write_offs();
/// // Nothing is written off meanwhile: the wait times out.
/// let now = curfew::health::wait_for_write_off(seen, Duration::from_millis(10));
/// assert!(now >= seen);
/// ```
pub fn wait_for_write_off(seen: u64, timeout: Duration) -> u64 {
    let (count, cv) = &WRITE_OFFS;
    let guard = count.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = cv
        .wait_timeout_while(guard, timeout, |n| *n <= seen)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

/// The CPU time used by thread `tid` of process `pid`, from
/// `/proc/<pid>/task/<tid>/schedstat`; `None` if there is no such thread or
/// no such file (non-Linux platforms).
pub fn thread_cpu_time(pid: u32, tid: i64) -> Option<Duration> {
    if tid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let ns: u64 = s.split_ascii_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The default runtime behind [`curfew::spawn`](crate::spawn) outside any
/// curfew runtime, if something has started it; `None` otherwise (this
/// never starts it).
pub fn default_runtime() -> Option<Handle> {
    crate::runtime::DEFAULT.get().map(crate::Runtime::handle)
}

impl Handle {
    /// The runtime's written-off threads right now: event threads hijacked
    /// by a poll that overran its budget, pool threads abandoned by a job
    /// that overran, and threads whose task timed out but which are held at
    /// the cap (`overdue`). Each leaves the list when its poll returns and
    /// the thread exits.
    pub fn written_off_threads(&self) -> Vec<WrittenOffThread> {
        let mut out = Vec::new();
        for gid in [GroupId::Event, GroupId::Blocking] {
            let group = self.shared.group(gid);
            for s in group.slots.load().iter() {
                let tag = slot::tag(s.state.load());
                let overdue = tag == EXPIRED && s.deferred.load(Ordering::Relaxed);
                if tag == HIJACKED || overdue {
                    out.push(WrittenOffThread {
                        tid: s.os_tid.load(Ordering::Relaxed),
                        location: gid.location(),
                        overdue,
                    });
                }
            }
        }
        out
    }
}

impl crate::Runtime {
    /// The runtime's written-off threads; see
    /// [`Handle::written_off_threads`].
    pub fn written_off_threads(&self) -> Vec<WrittenOffThread> {
        self.handle().written_off_threads()
    }
}
