//! Counters of what the server did, for tests, the load client and `/stats`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The live counters, one relaxed atomic each.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of the server's counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
            /// Resident set size of the process, bytes (0 where unknown).
            pub rss_bytes: u64,
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Relaxed),)*
                    rss_bytes: rss_bytes(),
                }
            }
        }
    };
}

counters! {
    /// WebSockets open now.
    connections_open,
    /// WebSockets accepted since start.
    connections_accepted,
    /// Handshakes refused `401` (missing or bad token).
    refused_unauthorized,
    /// Handshakes refused `403` (origin).
    refused_origin,
    /// Handshakes refused `429` (per-IP or total connection cap, or cooling off).
    refused_busy,
    /// Messages broadcast.
    messages,
    /// Frames queued to connections.
    frames_queued,
    /// Frames written to connections.
    frames_sent,
    /// Requests answered `rate_limited`.
    rate_limited,
    /// Frames answered `too_large`.
    too_large,
    /// Frames answered `invalid`.
    invalid,
    /// Handlers answered `timeout`.
    timeouts,
    /// Handlers refused (`refused`).
    refused,
    /// Connections closed 1008 after repeated protocol errors.
    protocol_closes,
    /// Connections closed 1013 for not reading fast enough.
    slow_closes,
    /// Connections closed 1009 for a frame over the hard frame limit.
    oversize_closes,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// The resident set size of a process (`"self"` or a pid) from
/// `/proc/<pid>/status`, in bytes; 0 where unknown.
pub fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The resident set size of this process, in bytes; 0 where unknown.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}
