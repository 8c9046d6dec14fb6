//! A client policy for [curfew] that holds across instances, on
//! Redis.
//!
//! A service runs on several instances (and the supervisor's worker
//! processes are separate processes too). With per-runtime tables, an
//! attacker who spreads poisoned requests over N instances gets N times the
//! strikes. [`RedisStore`] shares strikes, cool-offs and CPU-time quotas
//! between them, and [`RedisRateLimiter`] gives an exact per-key rate limit
//! across them.
//!
//! - **Every check-and-record is one atomic step on the server**: a Lua
//!   script (`src/lua/*.lua`, loaded once with [`redis::Script`] and run by
//!   hash). The read-then-write race that let a chat's one-message-a-second
//!   limit pass hundreds of messages in a reconnect burst cannot happen.
//! - **Admission never waits on Redis.** A runtime's admission reads only
//!   its own table; the store feeds that table from a pub/sub channel and
//!   sends strikes and usage asynchronously, in batches.
//! - **Redis down is not an outage.** The local policy goes on alone, with
//!   one warning and a counter; the store reconnects with backoff and
//!   resyncs when Redis is back.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use curfew::policy::{ClientPolicy, CpuQuota};
//!
//! let store = curfew_redis::RedisStore::builder("redis://127.0.0.1:6379/").build()?;
//! let rt = curfew::Runtime::builder()
//!     .client_policy(
//!         ClientPolicy::new(3, Duration::from_secs(60))
//!             .cpu_quota("2s/60s".parse::<CpuQuota>()?),
//!     )
//!     .policy_store(store)
//!     .build()?;
//! # drop(rt);
//! # Ok(()) }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    clippy::undocumented_unsafe_blocks
)]

mod error;
mod limiter;
mod scripts;
mod store;
pub mod testing;

pub use error::Error;
pub use limiter::RedisRateLimiter;
pub use store::{Builder, RedisStore, StoreMetrics};
