//! What the process costs, read from `/proc/self/status`.

/// Resident memory and thread count of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Threads in the process (`Threads`).
    pub threads: u64,
}

impl ProcStatus {
    /// Reads the current values; zeros where `/proc` is not available.
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    fn parse(status: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss_kib: field("VmRSS:"),
            threads: field("Threads:"),
        }
    }

    /// Resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// CPU time used so far, by the whole machine and by this process, in
/// clock ticks, from `/proc/stat` and `/proc/self/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Busy time of all CPUs (everything but idle and I/O wait).
    pub machine_busy: u64,
    /// This process's user and system time.
    pub process: u64,
}

impl CpuTimes {
    /// Reads the current values; zeros where `/proc` is not available.
    pub fn now() -> Self {
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|n| n.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let v: Vec<&str> = rest.split_whitespace().collect();
                Some(v.get(11)?.parse::<u64>().ok()? + v.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        Self {
            machine_busy,
            process,
        }
    }

    /// The cores that other processes kept busy on average between
    /// `earlier` and now, over `elapsed`.
    pub fn others_cores_since(&self, earlier: &CpuTimes, elapsed: std::time::Duration) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let machine = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        let process = self.process.saturating_sub(earlier.process) as f64;
        ((machine - process).max(0.0) / hz) / elapsed.as_secs_f64().max(1e-9)
    }
}

/// The system's load averages over 1, 5 and 15 minutes, as text, from
/// `/proc/loadavg`; `unknown` where it is not available.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t7\n";
        assert_eq!(
            ProcStatus::parse(s),
            ProcStatus {
                rss_kib: 2048,
                threads: 7
            }
        );
    }
}
