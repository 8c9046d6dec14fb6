//! Drain deadlines kept by a thread of their own.
//!
//! The supervisor's loop kills a draining worker once its drain deadline
//! passes, at its next health tick. Whatever holds that loop up holds the
//! kill up with it: a log line it writes to a file a frozen worker is
//! writing too, a slow `/proc` read, a burst of events. This thread only
//! waits for the earliest deadline and sends `SIGKILL` through the worker's
//! pidfd, so a drain ends on time whatever the loop is doing; the loop
//! still handles the exit (and counts the kill) when it gets there. A tick
//! that sees the deadline passed first kills through here too
//! ([`Deadlines::kill_now`]), under the same lock, so a worker is killed,
//! and its threads noted, once.
//!
//! The pidfd is opened right after the spawn, while the worker cannot have
//! been reaped, so a late signal reaches the worker or nothing, never a
//! process that reused its id.
//!
//! Just before the kill the thread notes what the worker's threads were
//! doing ([`sys::threads_snapshot`]), and the loop logs it with the kill,
//! with how long the worker took to die: a drain that overran because its
//! threads waited in the kernel is a different problem from one whose
//! requests were still running.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::sys;

/// Workers' drain deadlines, with the thread that enforces them.
pub(crate) struct Deadlines {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Worker id → its process id, pidfd and drain deadline.
    armed: HashMap<u64, (u32, Arc<OwnedFd>, Instant)>,
    /// Workers this thread killed (for the loop's log and tests).
    killed: Vec<(u64, Killed)>,
    stop: bool,
}

/// A kill at a drain deadline.
#[derive(Debug)]
pub(crate) struct Killed {
    /// When the signal went.
    pub(crate) at: Instant,
    /// The worker's threads just before (see [`sys::threads_snapshot`]).
    pub(crate) threads: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under the lock; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deadlines {
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("curfew-deadlines".into())
            .spawn(move || run(&s))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Kill worker `id` (process `pid`) through `pidfd` at `deadline`
    /// unless it is [forgotten](Self::forget) first. Arming again moves the
    /// deadline.
    pub(crate) fn arm(&self, id: u64, pid: u32, pidfd: Arc<OwnedFd>, deadline: Instant) {
        self.shared.lock().armed.insert(id, (pid, pidfd, deadline));
        self.shared.changed.notify_one();
    }

    /// The loop's tick found worker `id`'s deadline passed: kills it now, as
    /// the thread would, unless the thread already has (or the worker's
    /// deadline is not armed here). Under the same lock as the thread, so
    /// the worker is killed, and its threads noted, once; the exit's
    /// handling logs it either way. True if this call sent the signal.
    pub(crate) fn kill_now(&self, id: u64) -> bool {
        let mut st = self.shared.lock();
        let killed = kill_armed(&mut st, id);
        drop(st);
        // The tick calls this until the worker is reaped: only a deadline
        // actually taken away changes what the thread waits for.
        if killed {
            self.shared.changed.notify_one();
        }
        killed
    }

    /// Forgets worker `id` (it exited, or it no longer drains): disarms its
    /// deadline, and returns the kill if this thread killed it.
    pub(crate) fn forget(&self, id: u64) -> Option<Killed> {
        let mut st = self.shared.lock();
        st.armed.remove(&id);
        let i = st.killed.iter().position(|(k, _)| *k == id)?;
        Some(st.killed.swap_remove(i).1)
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills worker `id` if its deadline is armed, and disarms it. True if the
/// signal went.
fn kill_armed(st: &mut State, id: u64) -> bool {
    let Some((pid, pidfd, _)) = st.armed.remove(&id) else {
        return false;
    };
    // A few `/proc` reads, then the signal, then the bookkeeping. Nothing
    // here logs, so nothing here can wait on a file a frozen worker holds.
    // The snapshot is of the worker: the signal that follows succeeds only
    // if the worker was not reaped, so its id was not reused in between.
    let threads = sys::threads_snapshot(pid);
    if sys::pidfd_signal(&pidfd, libc::SIGKILL).is_err() {
        return false;
    }
    st.killed.push((
        id,
        Killed {
            at: Instant::now(),
            threads,
        },
    ));
    true
}

fn run(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        let due: Vec<u64> = st
            .armed
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            kill_armed(&mut st, id);
        }
        let next = st.armed.values().map(|(_, _, at)| *at).min();
        st = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                shared
                    .changed
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};
    use std::time::Duration;

    fn sleeper() -> (Child, Arc<OwnedFd>, u32) {
        let child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = sys::pidfd_open(child.id()).expect("pidfd_open (Linux 5.3+)");
        let pid = child.id();
        (child, Arc::new(fd), pid)
    }

    /// Waits up to `limit` for `child` to exit.
    fn exited_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn an_armed_worker_is_killed_at_its_deadline_and_a_disarmed_one_is_not() {
        let d = Deadlines::start().expect("start the thread");
        let (mut doomed, fd, pid) = sleeper();
        let (mut spared, fd2, pid2) = sleeper();
        let armed_at = Instant::now();
        d.arm(1, pid, fd, armed_at + Duration::from_millis(100));
        d.arm(2, pid2, fd2, armed_at + Duration::from_millis(100));
        assert!(d.forget(2).is_none(), "not killed before its deadline");
        let st = exited_within(&mut doomed, Duration::from_secs(10)).expect("killed");
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        assert!(
            armed_at.elapsed() >= Duration::from_millis(100),
            "not before its deadline"
        );
        let killed = d.forget(1).expect("reported");
        assert!(d.forget(1).is_none(), "reported once");
        assert!(killed.at >= armed_at + Duration::from_millis(100));
        // `sleep`, one thread, asleep in the ordinary way when killed.
        let threads = killed.threads.expect("a snapshot of the worker");
        assert!(threads.starts_with("1 threads (1 S)"), "{threads}");
        // Well past the deadline the disarmed one still runs.
        std::thread::sleep(Duration::from_millis(300));
        assert!(spared.try_wait().expect("try_wait").is_none());
        assert!(d.forget(2).is_none());
        spared.kill().expect("kill");
        spared.wait().expect("reap");
    }

    /// The loop's tick and the thread can both find a deadline passed: the
    /// worker is killed once, and its threads noted while it still ran,
    /// whichever goes first.
    #[test]
    fn a_deadline_is_enforced_once_by_the_tick_or_the_thread() {
        let d = Deadlines::start().expect("start the thread");
        // The tick first: the thread finds nothing left to kill.
        let (mut first, fd, pid) = sleeper();
        d.arm(1, pid, fd, Instant::now() + Duration::from_secs(3600));
        assert!(d.kill_now(1), "the tick kills");
        assert!(!d.kill_now(1), "and only once");
        let st = exited_within(&mut first, Duration::from_secs(10)).expect("killed");
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        let killed = d.forget(1).expect("reported, as the thread's kills are");
        let threads = killed.threads.expect("a snapshot of the worker");
        assert!(
            threads.starts_with("1 threads (1 ") && !threads.contains(" Z"),
            "taken before the kill: {threads}"
        );
        // The thread first: the tick that comes after kills nothing, and
        // the snapshot stays the one taken before the kill.
        let (mut second, fd, pid) = sleeper();
        d.arm(2, pid, fd, Instant::now());
        exited_within(&mut second, Duration::from_secs(10)).expect("killed by the thread");
        assert!(!d.kill_now(2), "already killed");
        let threads = d.forget(2).expect("reported").threads.expect("a snapshot");
        assert!(
            threads.starts_with("1 threads (1 ") && !threads.contains(" Z"),
            "taken before the kill: {threads}"
        );
        // Not armed here (a worker without a pidfd): nothing to do.
        assert!(!d.kill_now(3));
    }

    #[test]
    fn a_late_kill_of_a_reaped_worker_reaches_nobody() {
        let d = Deadlines::start().expect("start the thread");
        let (mut child, fd, pid) = sleeper();
        child.kill().expect("kill");
        child.wait().expect("reap");
        // Its id may now be reused; the pidfd still names the dead worker.
        d.arm(7, pid, fd, Instant::now());
        std::thread::sleep(Duration::from_millis(100));
        assert!(d.forget(7).is_none(), "ESRCH: nothing was signalled");
        drop(d); // the thread stops and is joined
    }
}
