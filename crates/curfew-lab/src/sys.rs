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
