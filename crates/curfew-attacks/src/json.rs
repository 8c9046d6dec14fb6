//! Parsing a huge JSON body into `serde_json::Value`.
//!
//! **Crate:** serde_json 1.x (current). **Issue:** none in the crate: parsing is
//! linear, but a server that accepts bodies of any size hands the client a
//! knob on its CPU and memory (the Node.js guide: `JSON.parse` of 50 MB takes
//! 1.3 s). **Growth:** linear in the body, about 64 bytes per element; the
//! `Value` tree takes several times the body in memory.

use std::io::Write as _;

use crate::AttackError;

/// A JSON array of `n` small objects such as
/// `{"id":7,"name":"user-7","tags":["a","b"],"score":0.5}`.
pub fn payload(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + n * 64);
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        write!(
            out,
            r#"{{"id":{i},"name":"user-{i}","tags":["a","b"],"score":0.5}}"#
        )
        .expect("writing to a Vec cannot fail");
    }
    out.push(b']');
    out
}

/// Parses the body into a `serde_json::Value` and reports what it found.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| AttackError::with_source("json-huge", "invalid JSON", e))?;
    Ok(match &value {
        serde_json::Value::Array(items) => format!("parsed an array of {} elements", items.len()),
        serde_json::Value::Object(map) => format!("parsed an object of {} keys", map.len()),
        _ => "parsed a scalar".to_owned(),
    })
}
