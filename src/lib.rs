//! Shared helpers for curfew's examples, integration tests and benchmarks.
//!
//! The runtime itself lives in the `curfew` crate; this package only owns the
//! top-level `examples/`, `tests/` and `benches/` directories.
#![warn(missing_docs)]

use std::time::{Duration, Instant};

/// Spins on the current thread for `d` without yielding, like a handler stuck
/// in a super-linear computation. Returns how many iterations it ran.
pub fn spin_for(d: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    n
}
