//! The seam between a runtime's own policy state and a store that shares it
//! between instances.

use std::fmt;
use std::time::Duration;

use super::config::{CpuQuota, LevelPolicy};
use super::key::ClientKey;
use super::table::LocalPolicy;

/// Where strikes, cool-offs and CPU usage go beyond the runtime that saw
/// them.
///
/// A runtime always keeps its own client table, and its admission decision
/// reads only that table: a store never sits on the spawn path. What a
/// store does is share: it hears about each strike (on the watchdog
/// thread, so it must not block), it may take the CPU time the watchdog
/// attributed in batches ([`LocalPolicy::drain_usage`]), and it writes what
/// other instances decided into the local table ([`LocalPolicy::cool_off`],
/// [`LocalPolicy::quota_spent`]).
///
/// The default, [`MemoryStore`], shares nothing: the runtime's table alone
/// is the policy, at no extra cost. `curfew-redis` provides a store on
/// Redis.
pub trait PolicyStore: Send + Sync + fmt::Debug + 'static {
    /// Called once as the runtime starts, with its table.
    fn attach(&self, local: LocalPolicy) {
        let _ = local;
    }

    /// A timeout was charged to `key` (a client, its network or a route),
    /// whose level has `limits`. Called on the watchdog thread: it must
    /// return at once (queue the work, never wait on I/O).
    fn strike(&self, key: &ClientKey, limits: &LevelPolicy) {
        let _ = (key, limits);
    }

    /// Whether the runtime should keep CPU time aside for
    /// [`LocalPolicy::drain_usage`]. Read once, at start.
    fn shares_usage(&self) -> bool {
        false
    }
}

/// The default store: the runtime's own table, shared with no one.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

impl PolicyStore for MemoryStore {}

/// CPU time the watchdog attributed to a key since the last
/// [`LocalPolicy::drain_usage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// A client or a network.
    pub key: ClientKey,
    /// Poll and job time.
    pub cpu: Duration,
    /// The quota that applies at the key's level, if any.
    pub quota: Option<CpuQuota>,
}
