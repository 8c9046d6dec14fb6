//! The few operating-system calls the supervisor needs, each wrapped once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Clears (`inherit = true`) or sets `FD_CLOEXEC` on `fd`.
///
/// Async-signal-safe (two `fcntl` calls), so it may run between `fork` and
/// `exec`.
pub(crate) fn set_inheritable(fd: RawFd, inherit: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD reads and writes only the
    // descriptor flags of `fd`; an invalid fd is reported as EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if inherit {
            flags & !libc::FD_CLOEXEC
        } else {
            flags | libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks for SIGKILL when the parent dies, then checks that the parent is
/// still `parent` (it may have died before the request took effect).
///
/// Async-signal-safe; called between `fork` and `exec` (the setting
/// survives `exec` of a binary that is not set-user-id). Linux only;
/// elsewhere it does nothing.
pub(crate) fn die_with_parent(parent: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the calling
        // process; getppid has no preconditions.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                // Not io::Error::other: no allocation between fork and exec.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    Ok(())
}

/// Lowers the calling thread to nice 19, the lowest ordinary priority
/// (Linux; elsewhere it does nothing). Returns whether it worked. No
/// privilege is needed, and none can undo it, so call it only on a thread
/// that does nothing else.
pub(crate) fn lowest_priority_for_this_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory effects; on Linux PRIO_PROCESS
        // with who = 0 names the calling thread only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The parent process id.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Sends `signal` to process `pid`. The caller must know that `pid` has not
/// been reaped yet (so the id cannot belong to another process).
pub(crate) fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill has no memory effects; the caller guarantees the pid is
    // an unreaped child of ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resident memory of process `pid`, from `/proc/<pid>/statm`.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// A descriptor for process `pid` (`pidfd_open`), through which a signal
/// reaches that process and no other, even once the id is reaped and
/// reused. Call it while the process is known to be unreaped (right after
/// the spawn). Linux 5.3 and later; elsewhere an error.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it has no memory effects.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor, and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal`). An
/// error `ESRCH` means it has exited already.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is open (borrowed from an `OwnedFd`), the
    // `siginfo` pointer may be null, and flags are 0; no memory effects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe, both ends close-on-exec (a child gets the write end only through
/// an explicit redirection, which `dup2` makes inheritable there): `(read,
/// write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody
    // else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a process's threads were doing, in one line, for the log of a
/// worker killed at its drain deadline: how many threads are in each state,
/// then each one not asleep in the ordinary way (`S`), or not on the
/// ordinary scheduling policy, with its name, state, kernel wait channel,
/// policy and nice value. A drain that overran with threads in `D`
/// (uninterruptible: a page fault or an `mmap` waiting for the address-space
/// lock, a disk wait) or on `SCHED_IDLE` is a different problem from one
/// whose requests are still running (`R`, or `S` in a read).
///
/// `None` when `/proc/<pid>/task` cannot be read (the process is gone).
/// The caller must know that `pid` is not reaped yet, or check afterwards
/// (a signal through the pidfd that succeeds) before it trusts the result.
///
/// The cost: every thread looked up here gets `/proc` dentries that it
/// must flush as it exits, and reaping the process waits (spinning in the
/// kernel) for a niced thread preempted in that flush (see
/// `curfew::health`). So it is taken only at a drain-deadline kill, where
/// the diagnosis is worth a slower reap; the health sampling never looks
/// under `/proc/<pid>/task`.
pub(crate) fn threads_snapshot(pid: u32) -> Option<String> {
    /// Threads listed one by one, at most.
    const LISTED: usize = 12;
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut counts: Vec<(char, usize)> = Vec::new();
    let mut listed = Vec::new();
    let mut unlisted = 0usize;
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // exited meanwhile
        };
        let Some(t) = ThreadStat::parse(&stat) else {
            continue;
        };
        match counts.iter_mut().find(|(s, _)| *s == t.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.state, 1)),
        }
        if t.state == 'S' && t.policy == 0 {
            continue;
        }
        if listed.len() == LISTED {
            unlisted += 1;
            continue;
        }
        let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
        let wchan = match wchan.trim() {
            "" | "0" => "-",
            w => w,
        };
        listed.push(format!(
            "{} {} {} {} nice={}",
            t.comm,
            t.state,
            wchan,
            policy_name(t.policy),
            t.nice
        ));
    }
    counts.sort_unstable();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let mut s = format!("{total} threads (");
    for (i, (state, n)) in counts.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("{n} {state}"));
    }
    s.push(')');
    for l in &listed {
        s.push_str("; ");
        s.push_str(l);
    }
    if unlisted > 0 {
        s.push_str(&format!("; {unlisted} more"));
    }
    Some(s)
}

/// The fields of `/proc/<pid>/task/<tid>/stat` that [`threads_snapshot`]
/// reports.
#[derive(Debug, PartialEq)]
struct ThreadStat {
    comm: String,
    state: char,
    nice: i64,
    policy: u32,
}

impl ThreadStat {
    /// Parses a `stat` line. The name is in parentheses and may itself hold
    /// spaces and parentheses, so the fields are counted from its last `)`.
    fn parse(stat: &str) -> Option<Self> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat.get(open + 1..close)?.to_owned();
        let rest: Vec<&str> = stat.get(close + 1..)?.split_ascii_whitespace().collect();
        // After the name: state is field 3 of proc(5), nice 19, policy 41.
        Some(Self {
            comm,
            state: rest.first()?.chars().next()?,
            nice: rest.get(16)?.parse().ok()?,
            policy: rest.get(38)?.parse().ok()?,
        })
    }
}

fn policy_name(policy: u32) -> &'static str {
    match policy {
        0 => "other",
        1 => "fifo",
        2 => "rr",
        3 => "batch",
        5 => "idle",
        6 => "deadline",
        _ => "policy?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_from_the_last_parenthesis() {
        // A name with a space and a parenthesis, in state D, nice -5,
        // SCHED_IDLE (5): fields as proc(5) numbers them.
        let mut fields = vec!["0"; 52 - 2];
        fields[0] = "D";
        fields[16] = "-5";
        fields[38] = "5";
        let line = format!("4242 (odd) name) {}", fields.join(" "));
        assert_eq!(
            ThreadStat::parse(&line),
            Some(ThreadStat {
                comm: "odd) name".into(),
                state: 'D',
                nice: -5,
                policy: 5,
            })
        );
        assert_eq!(ThreadStat::parse("4242 (cut short) R 1"), None);
    }

    #[test]
    fn a_snapshot_counts_this_process_threads_and_lists_the_unusual_ones() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let spinner = std::thread::Builder::new()
            .name("snap-spinner".into())
            .spawn(move || {
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        let snap = threads_snapshot(std::process::id()).expect("our own /proc");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        // This thread is running while it reads: at least one R, listed.
        assert!(snap.contains(" threads ("), "{snap}");
        assert!(snap.contains(" R"), "{snap}");
        assert!(snap.contains("other nice="), "{snap}");
        assert_eq!(threads_snapshot(u32::MAX), None);
    }
}
