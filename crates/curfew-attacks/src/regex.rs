//! ReDoS through fancy-regex, a backtracking regex engine.
//!
//! **Crate:** fancy-regex 0.14 (pinned to `=0.14.0`). **Issue:** a backtracking
//! engine with its backtrack limit lifted (`RegexBuilder::backtrack_limit(usize::MAX)`),
//! as an application does when the default limit rejects legitimate inputs.
//! **Growth:** exponential: `(a|b|ab)*(?=c)` can split `"ab"` × n into `a`, `b`
//! or `ab` in 2^n ways, and tries every one before failing, because no `c`
//! follows. Each extra pair roughly doubles the time.
//!
//! The pattern needs the lookahead (or a backreference): without one,
//! fancy-regex hands the whole pattern to the linear-time `regex` crate. Since
//! 0.16 it also hands over an easy pattern whose only fancy part is a trailing
//! easy lookahead, so this exact pattern is linear there; a variant such as
//! `(a|b|ab)*(?=c)\w` still backtracks exponentially in 0.20.
//!
//! With the default limit of 1,000,000 backtracking steps the same search stops
//! early with `BacktrackLimitExceeded`; [`handle_defended`] shows that defence.

use std::sync::OnceLock;

use fancy_regex::{Regex, RegexBuilder};

use crate::{AttackError, util};

/// The vulnerable pattern: overlapping alternation under a star, then a
/// lookahead that never matches.
pub const PATTERN: &str = r"(a|b|ab)*(?=c)";

/// fancy-regex's default backtrack limit, used by [`handle_defended`].
pub const DEFAULT_BACKTRACK_LIMIT: usize = 1_000_000;

fn lifted() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        RegexBuilder::new(PATTERN)
            .backtrack_limit(usize::MAX)
            .build()
            .expect("PATTERN compiles")
    })
}

fn defended() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        RegexBuilder::new(PATTERN)
            .backtrack_limit(DEFAULT_BACKTRACK_LIMIT)
            .build()
            .expect("PATTERN compiles")
    })
}

/// `"ab"` repeated `n` times: 2n bytes, no `c`, so no match.
pub fn payload(n: usize) -> Vec<u8> {
    b"ab".repeat(n)
}

/// Matches [`PATTERN`] against the body with the backtrack limit lifted.
///
/// Returns `"match: true"` or `"match: false"`; the cost is exponential in the
/// number of `ab` pairs.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    run("fancy-regex", lifted(), body)
}

/// Matches [`PATTERN`] against the body with the default backtrack limit.
///
/// Small inputs are answered like [`handle`]; on an attack input the engine
/// gives up after [`DEFAULT_BACKTRACK_LIMIT`] steps and this returns an
/// [`AttackError`] wrapping fancy-regex's `BacktrackLimitExceeded`.
pub fn handle_defended(body: &[u8]) -> Result<String, AttackError> {
    run("fancy-regex-defended", defended(), body)
}

fn run(vector: &'static str, re: &Regex, body: &[u8]) -> Result<String, AttackError> {
    let text = util::utf8(vector, body)?;
    let matched = re
        .is_match(text)
        .map_err(|e| AttackError::with_source(vector, "regex search failed", e))?;
    Ok(format!("match: {matched}"))
}
