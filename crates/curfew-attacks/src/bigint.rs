//! Parsing a long decimal number with num-bigint.
//!
//! **Crate:** num-bigint 0.4 (current). **Issue:** decimal conversion is
//! quadratic by design (schoolbook multiplication by powers of ten; the
//! opposite direction is num-bigint#79). **Growth:** O(n²) in the number of
//! digits, so a 1 MB body of digits takes seconds.

use num_bigint::BigUint;

use crate::{AttackError, util};

/// A pseudo-random decimal number of exactly `n` digits (no leading zero;
/// empty for `n = 0`).
pub fn payload(n: usize) -> Vec<u8> {
    let mut rng = util::SplitMix64::new(0x6269_6769_6e74);
    let mut digits = Vec::with_capacity(n);
    for i in 0..n {
        let r = rng.next_u64();
        let d = if i == 0 { 1 + r % 9 } else { r % 10 };
        digits.push(b'0' + d as u8);
    }
    digits
}

/// Parses the body as a decimal `BigUint` and reports its bit length.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let text = util::utf8("bigint-parse", body)?;
    let value: BigUint = text
        .trim()
        .parse()
        .map_err(|e| AttackError::with_source("bigint-parse", "not a decimal integer", e))?;
    Ok(format!("parsed a {}-bit integer", value.bits()))
}
