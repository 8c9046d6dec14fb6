//! Clients: who a task works for, what they cost, and when to stop serving
//! them.
//!
//! The paper's recommended response to event handler poisoning is to pair
//! timeouts with a blacklist: a client whose requests keep timing out is
//! refused for a while. Curfew does this per runtime. Each task may carry a
//! [`ClientKey`]; the watchdog attributes poll time to that key and counts
//! every timeout as a strike. With a [`ClientPolicy`] set, a client that
//! collects `strikes` timeouts is refused for `cool_off`: spawns on its behalf
//! resolve at once with [`JoinError::is_refused`](crate::JoinError::is_refused).
//!
//! The module's parts:
//! - [`ClientKey`]: typed keys (`ip`, `id`, `net`, `route`) whose namespaces
//!   never collide, with a client's network prefix and the route it serves
//!   as the upper levels of a hierarchy;
//! - [`ClientPolicy`]: strikes, cool-offs and a [`CpuQuota`] per client, and
//!   the same limits ([`LevelPolicy`]) per network prefix and per route, so
//!   that rotating addresses within a /24 or a route that keeps timing out
//!   trips a limit too;
//! - the client table: a bounded table that evicts idle clients first, so
//!   a flood of identities cannot switch the policy off (see
//!   [`Builder::max_tracked_clients`](crate::Builder::max_tracked_clients));
//! - [`PolicyStore`]: the seam for sharing the policy between instances
//!   (the default [`MemoryStore`] shares nothing; `curfew-redis` shares it
//!   on Redis). Admission always reads only local state;
//! - [`RateLimiter`] and [`BlockList`]: rate limits by count (GCRA, on
//!   `governor`), and the in-memory block a shared limiter puts a flooding
//!   key in.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use curfew::policy::ClientPolicy;
//!
//! let rt = curfew::Runtime::builder()
//!     .event_threads(1)
//!     .poll_budget(Duration::from_millis(10))
//!     .client_policy(ClientPolicy::new(1, Duration::from_secs(60)))
//!     .build()?;
//! let spin = || async {
//!     // Never yields; stops once answered (or after 10 s).
//!     let t = std::time::Instant::now();
//!     while curfew::checkpoint().is_ok() && t.elapsed() < Duration::from_secs(10) {}
//! };
//! let first = curfew::task::Builder::new().client("mallory").spawn_on(&rt.handle(), spin());
//! assert!(rt.block_on(first).unwrap_err().is_timeout());
//! // One strike was enough: mallory is now refused without running anything.
//! let second = curfew::task::Builder::new().client("mallory").spawn_on(&rt.handle(), spin());
//! assert!(rt.block_on(second).unwrap_err().is_refused());
//! # Ok(()) }
//! ```

mod config;
mod key;
mod limiter;
mod store;
mod table;

pub use config::{ClientPolicy, CpuQuota, LevelPolicy, QuotaError};
pub use key::{ClientKey, Namespace};
pub use limiter::{BlockList, Limited, Rate, RateLimiter};
pub use store::{MemoryStore, PolicyStore, Usage};
pub use table::LocalPolicy;
pub(crate) use table::{
    AdmitMemo, Admitted, COARSE_CLOCK_MAX_INTERVAL, Clients, NO_CLIENT, WouldBlock, log_cool_off,
};
