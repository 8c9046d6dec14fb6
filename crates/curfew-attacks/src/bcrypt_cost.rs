//! Verifying a password against a bcrypt hash whose cost the attacker chose.
//!
//! **Crate:** bcrypt 0.19 (current). **Issue:** the cost is read from the hash
//! string itself, so wherever a client can supply or plant the hash (account
//! import, federated login, a settable password hash column) it chooses the
//! work of every later verification. **Growth:** 2^cost Blowfish key
//! expansions; the crate accepts costs 4 to 31, and cost 31 runs for days.

use crate::AttackError;

/// The password every request tries.
pub const PASSWORD: &str = "correct horse battery staple";

/// A syntactically valid salt and checksum (53 characters of bcrypt's
/// base64) that do not match [`PASSWORD`].
const SALT_AND_HASH: &str = "L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u";

/// A `$2b$NN$...` hash string with cost `n`.
///
/// Costs from 4 to 31 give a well-formed 60-byte hash; any other `n` gives a
/// string that [`handle`] rejects at once.
pub fn payload(n: usize) -> Vec<u8> {
    format!("$2b${n:02}${SALT_AND_HASH}").into_bytes()
}

/// Verifies [`PASSWORD`] against the hash in the body and reports the cost and
/// the outcome.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let hash = crate::util::utf8("bcrypt-cost", body)?.trim();
    let cost = hash.get(4..6).unwrap_or("?");
    let matches = bcrypt::verify(PASSWORD, hash)
        .map_err(|e| AttackError::with_source("bcrypt-cost", "bad bcrypt hash", e))?;
    Ok(format!(
        "cost {cost}: password {}",
        if matches { "matches" } else { "rejected" }
    ))
}
