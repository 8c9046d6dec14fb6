//! Sorting: a large sort, and a naive quicksort fed its worst case.
//!
//! **Crate:** std's `slice::sort_unstable`, and a hand-written quicksort.
//! Davis et al. list array sorting among the long-running operations behind
//! EHP.
//! * [`handle`] sorts as many pseudo-random `u64`s as the client asks for (a
//!   result set or report whose size the client chooses). **Growth:**
//!   O(n log n) time and 8n bytes.
//! * [`handle_quicksort`] sorts the client's `u64`s with a textbook quicksort
//!   that takes the first element as pivot; already-sorted input, the most
//!   common input there is, makes it quadratic. **Growth:** O(n²) in the
//!   number of values (the body is 8n bytes).

use std::hint::black_box;

use crate::{AttackError, util};

/// The element count `n` in decimal, for [`handle`].
pub fn payload(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Generates as many pseudo-random `u64`s as the body asks for, sorts them and
/// reports the median. A count whose values cannot be allocated is an error.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let n = util::count("sort", body)?;
    let n = usize::try_from(n).map_err(|_| AttackError::new("sort", "count does not fit"))?;
    let mut values: Vec<u64> = Vec::new();
    // A count too large to allocate is refused rather than aborting the process.
    values
        .try_reserve_exact(n)
        .map_err(|e| AttackError::with_source("sort", "cannot allocate the values", e))?;
    let mut rng = util::SplitMix64::new(0x736f_7274);
    values.extend((0..n).map(|_| rng.next_u64()));
    values.sort_unstable();
    let median = values.get(n / 2).copied().unwrap_or(0);
    Ok(format!("sorted {n} values (median {median})"))
}

/// `0, 1, …, n-1` as little-endian `u64`s: 8n bytes, already sorted.
pub fn sorted_payload(n: usize) -> Vec<u8> {
    (0..n as u64).flat_map(u64::to_le_bytes).collect()
}

/// Reads little-endian `u64`s from the body, sorts them with a first-element
/// pivot quicksort, and reports the smallest and largest.
pub fn handle_quicksort(body: &[u8]) -> Result<String, AttackError> {
    if body.len() % 8 != 0 {
        return Err(AttackError::new(
            "quicksort-sorted",
            "body is not a whole number of u64s",
        ));
    }
    let mut values: Vec<u64> = body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect();
    naive_quicksort(&mut values);
    match (values.first(), values.last()) {
        (Some(lo), Some(hi)) => Ok(format!("sorted {} values ({lo}..={hi})", values.len())),
        _ => Ok("sorted 0 values".to_owned()),
    }
}

/// Lomuto-partition quicksort with the first element as pivot. It recurses
/// into the smaller side and loops on the larger, so the stack stays
/// O(log n) even when the time does not.
fn naive_quicksort(mut v: &mut [u64]) {
    while v.len() > 1 {
        let pivot = v[0];
        let mut store = 0;
        for i in 1..v.len() {
            if black_box(v[i] < pivot) {
                store += 1;
                v.swap(i, store);
            }
        }
        v.swap(0, store);
        let (left, rest) = v.split_at_mut(store);
        let right = &mut rest[1..];
        if left.len() < right.len() {
            naive_quicksort(left);
            v = right;
        } else {
            naive_quicksort(right);
            v = left;
        }
    }
}
