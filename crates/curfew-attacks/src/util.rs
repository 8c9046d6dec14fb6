//! Small helpers shared by the vectors.

use crate::AttackError;

/// SplitMix64: a tiny deterministic generator, so payloads are reproducible
/// without a dependency on `rand`.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The body as UTF-8 text, or an error naming the vector.
pub(crate) fn utf8<'a>(vector: &'static str, body: &'a [u8]) -> Result<&'a str, AttackError> {
    std::str::from_utf8(body).map_err(|e| AttackError::with_source(vector, "body is not UTF-8", e))
}

/// The body as a decimal count, or an error naming the vector.
pub(crate) fn count(vector: &'static str, body: &[u8]) -> Result<u64, AttackError> {
    utf8(vector, body)?
        .trim()
        .parse()
        .map_err(|e| AttackError::with_source(vector, "body is not a decimal count", e))
}
