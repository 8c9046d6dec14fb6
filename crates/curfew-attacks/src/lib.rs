//! Real Event Handler Poisoning vectors: request handlers built on real crates,
//! each paired with a payload generator whose size knob moves its cost from
//! microseconds to seconds.
//!
//! Event Handler Poisoning (EHP) attacks an event-driven server, which serves
//! many clients with a few threads: one request whose handler runs for a long
//! time (a backtracking regex, a quadratic parse, an attacker-chosen hash cost, a
//! read that never returns) holds one of those threads, and every other client
//! waits behind it. Davis et al. (USENIX Security 2018) sort these attacks into
//! ReDoS, ReadDoS and other CPU-bound denial of service; this crate adds the
//! flavours that show up in Rust crates today.
//!
//! Each [`Vector`] names the vulnerable crate and version, the advisory or issue,
//! how the cost grows, a payload generator, the handler a server would run on the
//! request body, and two calibrated sizes: [`Vector::benign_size`] completes in
//! well under a millisecond, [`Vector::attack_size`] keeps a thread busy for
//! roughly one to five seconds (measured in release mode on a 2-core machine;
//! see the crate's README). Every handler also exists as an ordinary function in
//! a module of its own, such as [`regex::handle`] or [`gzip::handle`].
//!
//! The crate is plain synchronous code with no knowledge of any runtime, so a
//! server, benchmark or test can call the handlers however it likes.
//!
//! # Example
//!
//! ```
//! use curfew_attacks::{AttackClass, CostKind, by_name};
//!
//! let vector = by_name("fancy-regex").expect("the corpus has a ReDoS vector");
//! assert_eq!(vector.class, AttackClass::ReDoS);
//! assert_eq!(vector.kind, CostKind::Cpu);
//!
//! // A benign request is answered at once...
//! let body = (vector.payload)(vector.benign_size);
//! assert_eq!((vector.handler)(&body).unwrap(), "match: false");
//!
//! // ...while `(vector.payload)(vector.attack_size)` would hold this thread for
//! // seconds. The defended variant gives up after a bounded amount of work:
//! let defended = by_name("fancy-regex-defended").unwrap();
//! let body = (defended.payload)(defended.attack_size);
//! assert!((defended.handler)(&body).is_err());
//! ```
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use std::error::Error as StdError;
use std::fmt;

pub mod argon2_cost;
pub mod bcrypt_cost;
pub mod bigint;
pub mod gzip;
pub mod json;
pub mod markup;
pub mod read;
pub mod regex;
pub mod sort;
pub mod spin;
pub mod websocket;
pub mod xml;
pub mod yaml;

mod util;

/// Compiles and runs the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
#[derive(Debug)]
pub struct ReadmeDoctests;

/// The attack classes of Davis et al. (2018), with "other CPU-bound DoS" split
/// by the mechanism that makes a handler slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackClass {
    /// Regular expression denial of service: a backtracking engine explores an
    /// exponential number of paths.
    ReDoS,
    /// Read denial of service: the handler reads a file the client named, which
    /// is huge, endless (`/dev/zero`) or never delivers data (a FIFO).
    ReadDoS,
    /// A super-linear parse or computation on attacker-sized input.
    CpuDoS,
    /// A key-derivation function whose cost parameter the attacker chose.
    HashCost,
    /// A small compressed body that inflates to a huge one.
    DecompressionBomb,
    /// A loop whose iteration count the attacker controls, up to "forever".
    InfiniteLoop,
}

impl AttackClass {
    /// A short stable name, e.g. `"ReDoS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttackClass::ReDoS => "ReDoS",
            AttackClass::ReadDoS => "ReadDoS",
            AttackClass::CpuDoS => "CpuDoS",
            AttackClass::HashCost => "HashCost",
            AttackClass::DecompressionBomb => "DecompressionBomb",
            AttackClass::InfiniteLoop => "InfiniteLoop",
        }
    }
}

impl fmt::Display for AttackClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a vector's cost lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CostKind {
    /// The handler computes: it holds a CPU for as long as it runs.
    Cpu,
    /// The handler sits in a blocking system call (or streams data through
    /// one); a thread is held even when no CPU is.
    BlockingIo,
}

impl CostKind {
    /// A short stable name, e.g. `"Cpu"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CostKind::Cpu => "Cpu",
            CostKind::BlockingIo => "BlockingIo",
        }
    }
}

impl fmt::Display for CostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One Event Handler Poisoning vector: a request handler and the payloads that
/// make it cheap or expensive.
#[derive(Debug, Clone, Copy)]
pub struct Vector {
    /// A URL-safe slug, unique in [`all`], e.g. `"fancy-regex"`.
    pub name: &'static str,
    /// The attack class.
    pub class: AttackClass,
    /// Whether the cost is computation or blocking I/O.
    pub kind: CostKind,
    /// The vulnerable crate, its version and the advisory or issue.
    pub vulnerable: &'static str,
    /// How the handler's cost grows with the size knob, e.g. `"O(n^2)"`.
    pub growth: &'static str,
    /// Builds a request body for size knob `n`.
    pub payload: fn(usize) -> Vec<u8>,
    /// What a server does with the request body; returns a short summary.
    pub handler: fn(&[u8]) -> Result<String, AttackError>,
    /// A size knob whose payload completes in well under a millisecond in
    /// release mode.
    pub benign_size: usize,
    /// A size knob whose payload keeps the handler busy for roughly one to five
    /// seconds in release mode on a 2-core machine (or forever, for the
    /// infinite loop).
    pub attack_size: usize,
}

impl Vector {
    /// Builds the payload for `n` and runs the handler on it.
    pub fn run(&self, n: usize) -> Result<String, AttackError> {
        (self.handler)(&(self.payload)(n))
    }

    /// The payload at [`Vector::benign_size`].
    pub fn benign_payload(&self) -> Vec<u8> {
        (self.payload)(self.benign_size)
    }

    /// The payload at [`Vector::attack_size`].
    pub fn attack_payload(&self) -> Vec<u8> {
        (self.payload)(self.attack_size)
    }
}

static VECTORS: [Vector; 15] = [
    Vector {
        name: "fancy-regex",
        class: AttackClass::ReDoS,
        kind: CostKind::Cpu,
        vulnerable: "fancy-regex 0.14 with RegexBuilder::backtrack_limit(usize::MAX): \
                     (a|b|ab)*(?=c) on \"ab\" x n",
        growth: "exponential in n",
        payload: regex::payload,
        handler: regex::handle,
        benign_size: 5,
        attack_size: 22,
    },
    Vector {
        name: "fancy-regex-defended",
        class: AttackClass::ReDoS,
        kind: CostKind::Cpu,
        vulnerable: "fancy-regex 0.14 with its default backtrack limit (1,000,000): \
                     the same pattern fails fast with BacktrackLimitExceeded",
        growth: "bounded by the backtrack limit",
        payload: regex::payload,
        handler: regex::handle_defended,
        benign_size: 5,
        attack_size: 22,
    },
    Vector {
        name: "ammonia-nesting",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "ammonia 4.x on html5ever (html5ever#788, open): <div> x n",
        growth: "O(n^2) in nesting depth",
        payload: markup::payload,
        handler: markup::handle,
        benign_size: 20,
        attack_size: 20_000,
    },
    Vector {
        name: "bigint-parse",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "num-bigint 0.4 decimal parsing (quadratic by design; cf. num-bigint#79)",
        growth: "O(n^2) in digits",
        payload: bigint::payload,
        handler: bigint::handle,
        benign_size: 100,
        attack_size: 1_500_000,
    },
    Vector {
        name: "bcrypt-cost",
        class: AttackClass::HashCost,
        kind: CostKind::Cpu,
        vulnerable: "bcrypt 0.19 verify against an attacker-supplied $2b$NN$ hash",
        growth: "2^n (n = cost, 4..=31)",
        payload: bcrypt_cost::payload,
        handler: bcrypt_cost::handle,
        benign_size: 4,
        attack_size: 15,
    },
    Vector {
        name: "argon2-cost",
        class: AttackClass::HashCost,
        kind: CostKind::Cpu,
        vulnerable: "argon2 0.5 verify_password on an attacker-supplied PHC string \
                     ($argon2id$v=19$m=n,t=8,p=1$...)",
        growth: "linear in n = m_cost (KiB), plus n KiB allocated",
        payload: argon2_cost::payload,
        handler: argon2_cost::handle,
        benign_size: 8,
        attack_size: 196_608,
    },
    Vector {
        name: "json-huge",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "serde_json 1.x parsing an unbounded body into Value",
        growth: "linear in n (array elements, about 64 bytes each)",
        payload: json::payload,
        handler: json::handle,
        benign_size: 10,
        attack_size: 400_000,
    },
    Vector {
        name: "gzip-bomb",
        class: AttackClass::DecompressionBomb,
        kind: CostKind::Cpu,
        vulnerable: "flate2 1.x GzDecoder inflating an unbounded body",
        growth: "linear in n (MiB inflated), ~1000x amplification",
        payload: gzip::payload,
        handler: gzip::handle,
        benign_size: 0,
        attack_size: 16_384,
    },
    Vector {
        name: "xml-attributes",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "quick-xml 0.37.5 (< 0.41, RUSTSEC-2026-0194): attributes() with \
                     duplicate checks on <a a0=\"\" ... a(n-1)=\"\">",
        growth: "O(n^2) in attributes",
        payload: xml::payload,
        handler: xml::handle,
        benign_size: 10,
        attack_size: 40_000,
    },
    Vector {
        name: "yaml-aliases",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "serde_yaml 0.8.26 (fixed in 0.9, serde-yaml PR #277): \
                     billion laughs through anchors and aliases",
        growth: "O(9^n) in levels",
        payload: yaml::payload,
        handler: yaml::handle,
        benign_size: 1,
        attack_size: 7,
    },
    Vector {
        name: "tungstenite-header",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "tungstenite 0.20.0 (RUSTSEC-2023-0065, fixed in 0.20.1): \
                     handshake with one n-byte header",
        growth: "O(n^2) in header bytes",
        payload: websocket::payload,
        handler: websocket::handle,
        benign_size: 16,
        attack_size: 6_000_000,
    },
    Vector {
        name: "read-path",
        class: AttackClass::ReadDoS,
        kind: CostKind::BlockingIo,
        vulnerable: "std::fs::read of a client-named path (directory traversal); \
                     payload names an n-byte sparse file (see read::DEV_ZERO and \
                     read::make_fifo for the unbounded variants)",
        growth: "linear in n (bytes read and held)",
        payload: read::payload,
        handler: read::handle,
        benign_size: 4096,
        attack_size: 512 << 20,
    },
    Vector {
        name: "infinite-loop",
        class: AttackClass::InfiniteLoop,
        kind: CostKind::Cpu,
        vulnerable: "a loop bounded only by a client-supplied count",
        growth: "linear in n; effectively unbounded at attack_size",
        payload: spin::payload,
        handler: spin::handle,
        benign_size: 1_000,
        attack_size: usize::MAX,
    },
    Vector {
        name: "sort",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "slice::sort_unstable of a client-chosen number of u64s",
        growth: "O(n log n), plus 8n bytes allocated",
        payload: sort::payload,
        handler: sort::handle,
        benign_size: 1_000,
        attack_size: 40_000_000,
    },
    Vector {
        name: "quicksort-sorted",
        class: AttackClass::CpuDoS,
        kind: CostKind::Cpu,
        vulnerable: "a hand-written quicksort with a first-element pivot, fed sorted input",
        growth: "O(n^2)",
        payload: sort::sorted_payload,
        handler: sort::handle_quicksort,
        benign_size: 100,
        attack_size: 80_000,
    },
];

/// Every vector in the corpus.
pub fn all() -> &'static [Vector] {
    &VECTORS
}

/// The vector called `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static Vector> {
    VECTORS.iter().find(|v| v.name == name)
}

/// A handler's failure: bad input, or a defence that stopped the work.
#[derive(Debug)]
pub struct AttackError {
    vector: &'static str,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl AttackError {
    /// An error from the vector called `vector`.
    pub fn new(vector: &'static str, message: impl Into<String>) -> Self {
        AttackError {
            vector,
            message: message.into(),
            source: None,
        }
    }

    /// An error from the vector called `vector`, caused by `source`.
    pub fn with_source(
        vector: &'static str,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        AttackError {
            vector,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The name of the vector whose handler failed.
    pub fn vector(&self) -> &'static str {
        self.vector
    }

    /// What went wrong, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for AttackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.vector, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for AttackError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
