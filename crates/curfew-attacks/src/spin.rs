//! An infinite loop: a handler that iterates as often as the client asks.
//!
//! **Crate:** none; the pattern is a loop bounded only by client input (a page
//! size, a retry count, a "rounds" field). Davis et al. count infinite loops
//! among the CPU-bound EHP attacks. **Growth:** linear in n; at
//! `usize::MAX` iterations (the corpus's attack size) it runs for centuries.

use std::hint::black_box;

use crate::{AttackError, util};

/// The iteration count `n` in decimal.
pub fn payload(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Runs a loop for the number of iterations in the body and reports a
/// checksum. `black_box` keeps the optimizer from removing the loop.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let n = util::count("infinite-loop", body)?;
    let mut acc: u64 = 0;
    for i in 0..n {
        acc = black_box(acc.wrapping_mul(31).wrapping_add(i));
    }
    Ok(format!("spun {n} iterations (checksum {acc:#x})"))
}
