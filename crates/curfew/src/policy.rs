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
//!     let t = std::time::Instant::now();
//!     while t.elapsed() < Duration::from_millis(200) {}
//! };
//! let first = curfew::task::Builder::new().client("mallory").spawn_on(&rt.handle(), spin());
//! assert!(rt.block_on(first).unwrap_err().is_timeout());
//! // One strike was enough: mallory is now refused without running anything.
//! let second = curfew::task::Builder::new().client("mallory").spawn_on(&rt.handle(), spin());
//! assert!(rt.block_on(second).unwrap_err().is_refused());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Identifies the client a task works for: an IP address, a user id, an API
/// key. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(Arc<str>);

impl ClientKey {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for ClientKey {
    fn from(s: &str) -> Self {
        ClientKey(s.into())
    }
}

impl From<String> for ClientKey {
    fn from(s: String) -> Self {
        ClientKey(s.into())
    }
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        ClientKey(ip.to_string().into())
    }
}

/// A socket address identifies its client by IP alone: one client may open
/// many connections from different ports.
impl From<SocketAddr> for ClientKey {
    fn from(addr: SocketAddr) -> Self {
        addr.ip().into()
    }
}

impl From<u64> for ClientKey {
    fn from(id: u64) -> Self {
        ClientKey(id.to_string().into())
    }
}

/// When to stop serving a client whose requests keep timing out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPolicy {
    /// Timeouts that put a client into cool-off.
    pub strikes: u32,
    /// How long a client is refused once it has collected its strikes. Its
    /// strike count starts again from zero afterwards.
    pub cool_off: Duration,
}

impl ClientPolicy {
    /// Refuse a client for `cool_off` once it has caused `strikes` timeouts.
    pub fn new(strikes: u32, cool_off: Duration) -> Self {
        Self { strikes, cool_off }
    }
}

#[derive(Debug, Default)]
struct ClientStats {
    busy_ns: AtomicU64,
    timeouts: AtomicU64,
    strikes: AtomicU32,
    refused: AtomicU64,
    /// Milliseconds since the registry's epoch until which the client is
    /// refused; 0 when it is not cooling off.
    cooling_until_ms: AtomicU64,
}

/// Whole milliseconds of `d`, saturating at `u64::MAX` (about 584 million
/// years) instead of truncating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The index reserved for tasks without a client, and for clients beyond
/// the tracking capacity.
pub(crate) const NO_CLIENT: u32 = 0;

pub(crate) struct Clients {
    index: RwLock<Index>,
    stats: Box<[ClientStats]>,
    policy: Option<ClientPolicy>,
    epoch: Instant,
    untracked: AtomicU64,
}

#[derive(Default)]
struct Index {
    by_key: HashMap<ClientKey, u32>,
    keys: Vec<ClientKey>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("capacity", &(self.stats.len() - 1))
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Clients {
    pub(crate) fn new(capacity: usize, policy: Option<ClientPolicy>) -> Self {
        Self {
            index: RwLock::new(Index::default()),
            stats: (0..=capacity).map(|_| ClientStats::default()).collect(),
            policy,
            epoch: Instant::now(),
            untracked: AtomicU64::new(0),
        }
    }

    /// Finds or assigns the index of `key`. Clients past the capacity share
    /// [`NO_CLIENT`] and are counted as untracked.
    pub(crate) fn index_of(&self, key: &ClientKey) -> u32 {
        if let Some(&i) = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .get(key)
        {
            return i;
        }
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = index.by_key.get(key) {
            return i;
        }
        if index.keys.len() + 1 >= self.stats.len() {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return NO_CLIENT;
        }
        index.keys.push(key.clone());
        let i = index.keys.len() as u32;
        index.by_key.insert(key.clone(), i);
        i
    }

    /// The index of `key` if it is tracked, without assigning one.
    pub(crate) fn lookup(&self, key: &ClientKey) -> Option<u32> {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .get(key)
            .copied()
    }

    /// How long `key` is still refused, if it is cooling off. A read only:
    /// it assigns no index and counts no refusal.
    pub(crate) fn peek_cooling_off(&self, key: &ClientKey) -> Option<Duration> {
        self.policy?;
        let idx = self.lookup(key)?;
        let until = self.stats[idx as usize]
            .cooling_until_ms
            .load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }

    /// Returns how long the client at `idx` is still refused, if it is.
    pub(crate) fn cooling_off(&self, idx: u32) -> Option<Duration> {
        if idx == NO_CLIENT || self.policy.is_none() {
            return None;
        }
        let stats = &self.stats[idx as usize];
        let until = stats.cooling_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = self.now_ms();
        if now < until {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            Some(Duration::from_millis(until - now))
        } else {
            // Cool-off over: let the client back in with a clean slate.
            let _ = stats.cooling_until_ms.compare_exchange(
                until,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            None
        }
    }

    /// Watchdog: adds sampled busy time to a client.
    pub(crate) fn add_busy(&self, idx: u32, d: Duration) {
        if idx != NO_CLIENT {
            if let Some(s) = self.stats.get(idx as usize) {
                s.busy_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Watchdog: records a timeout against a client. Returns the cool-off
    /// that started, if this strike was the last one allowed.
    pub(crate) fn strike(&self, idx: u32) -> Option<Duration> {
        let stats = self.stats.get(idx as usize).filter(|_| idx != NO_CLIENT)?;
        stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let policy = self.policy?;
        let strikes = stats.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        if strikes >= policy.strikes {
            stats.strikes.store(0, Ordering::Relaxed);
            // Saturating: `Duration::MAX` means "for good", never a wrap
            // (release) or a panic on the watchdog thread (debug).
            let until = self.now_ms().saturating_add(millis(policy.cool_off));
            stats.cooling_until_ms.store(until, Ordering::Relaxed);
            Some(policy.cool_off)
        } else {
            None
        }
    }

    pub(crate) fn snapshot(&self) -> (Vec<crate::metrics::ClientMetrics>, u64) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        let clients = index
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let s = &self.stats[i + 1];
                let until = s.cooling_until_ms.load(Ordering::Relaxed);
                crate::metrics::ClientMetrics {
                    client: key.clone(),
                    poll_time: Duration::from_nanos(s.busy_ns.load(Ordering::Relaxed)),
                    timeouts: s.timeouts.load(Ordering::Relaxed),
                    strikes: s.strikes.load(Ordering::Relaxed),
                    refused: s.refused.load(Ordering::Relaxed),
                    cooling_off: until > now,
                }
            })
            .collect();
        (clients, self.untracked.load(Ordering::Relaxed))
    }
}
