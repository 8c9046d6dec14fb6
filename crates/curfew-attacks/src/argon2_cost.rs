//! Verifying a password against an Argon2 PHC string whose parameters the
//! attacker chose.
//!
//! **Crate:** argon2 0.5. **Issue:** `PasswordVerifier::verify_password` takes
//! `m_cost`, `t_cost` and `p_cost` from the hash string, so a client that can
//! supply or plant the hash chooses both the time and the memory of every
//! verification. **Growth:** linear in m·t, plus m KiB allocated for the run;
//! here t is fixed at [`T_COST`] and the size knob is m in KiB.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::AttackError;

/// The password every request tries.
pub const PASSWORD: &str = "correct horse battery staple";

/// The number of passes in every payload.
pub const T_COST: u32 = 8;

/// A base64 (unpadded) salt of 16 bytes.
const SALT: &str = "c2FsdHNhbHRzYWx0c2FsdA";

/// A base64 (unpadded) 32-byte output that does not match [`PASSWORD`].
const OUTPUT: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A PHC string `$argon2id$v=19$m=n,t=8,p=1$...` with `m_cost = n` KiB.
///
/// Argon2 needs `m_cost >= 8`; a smaller `n` gives a string [`handle`]
/// rejects at once.
pub fn payload(n: usize) -> Vec<u8> {
    format!("$argon2id$v=19$m={n},t={T_COST},p=1${SALT}${OUTPUT}").into_bytes()
}

/// Verifies [`PASSWORD`] against the PHC string in the body and reports the
/// outcome.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let text = crate::util::utf8("argon2-cost", body)?.trim();
    let hash = PasswordHash::new(text)
        .map_err(|e| AttackError::with_source("argon2-cost", "bad PHC string", e))?;
    let params = hash
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    match Argon2::default().verify_password(PASSWORD.as_bytes(), &hash) {
        Ok(()) => Ok(format!("{params}: password matches")),
        Err(argon2::password_hash::Error::Password) => Ok(format!("{params}: password rejected")),
        Err(e) => Err(AttackError::with_source(
            "argon2-cost",
            "argon2 refused the parameters",
            e,
        )),
    }
}
