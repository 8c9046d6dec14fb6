//! What the policy refuses, and when: strikes, cool-offs and CPU-time quotas
//! at three levels.

use std::fmt;
use std::time::Duration;

/// When to stop serving a client whose requests keep timing out, or cost
/// too much CPU time.
///
/// The client level is `strikes`, `cool_off` and `cpu_quota`; the
/// `network` and `route` levels apply the same kind of limits to a
/// client's network prefix (/24 for IPv4, /64 for IPv6: see
/// [`ClientKey::network`](crate::policy::ClientKey::network)) and to the
/// route its task serves ([`ClientKey::with_route`](crate::policy::ClientKey::with_route)).
///
/// ```
/// use std::time::Duration;
/// use curfew::policy::{ClientPolicy, CpuQuota, LevelPolicy};
///
/// let policy = ClientPolicy::new(3, Duration::from_secs(60))
///     // At most 2 s of poll and job time per client per minute.
///     .cpu_quota(CpuQuota::new(Duration::from_secs(2), Duration::from_secs(60)).unwrap())
///     // A /24 or /64 that spends 10 s per minute is refused as a whole.
///     .network(LevelPolicy::new(10, Duration::from_secs(60))
///         .cpu_quota(CpuQuota::new(Duration::from_secs(10), Duration::from_secs(60)).unwrap()))
///     // A route that times out 20 times is answered at once for 30 s.
///     .route(LevelPolicy::new(20, Duration::from_secs(30)));
/// assert_eq!(policy.strikes, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPolicy {
    /// Timeouts that put a client into cool-off.
    pub strikes: u32,
    /// How long a client is refused once it has collected its strikes. Its
    /// strike count starts again from zero afterwards. `Duration::MAX`
    /// means for good.
    pub cool_off: Duration,
    /// The CPU time a client may spend per window, if limited.
    pub cpu_quota: Option<CpuQuota>,
    /// Limits on a client's network prefix, if any.
    pub network: Option<LevelPolicy>,
    /// Limits on a route, if any (the route-level breaker).
    pub route: Option<LevelPolicy>,
}

impl ClientPolicy {
    /// Refuse a client for `cool_off` once it has caused `strikes` timeouts.
    pub fn new(strikes: u32, cool_off: Duration) -> Self {
        Self {
            strikes,
            cool_off,
            cpu_quota: None,
            network: None,
            route: None,
        }
    }

    /// Also limits each client's CPU time per window.
    pub fn cpu_quota(mut self, quota: CpuQuota) -> Self {
        self.cpu_quota = Some(quota);
        self
    }

    /// Also limits each network prefix.
    pub fn network(mut self, level: LevelPolicy) -> Self {
        self.network = Some(level);
        self
    }

    /// Also limits each route: its timeouts, from any client, trip a
    /// breaker that refuses the route for a cool-off.
    pub fn route(mut self, level: LevelPolicy) -> Self {
        self.route = Some(level);
        self
    }

    /// The limits of one level.
    pub(crate) fn level(&self, level: Level) -> Option<LevelPolicy> {
        match level {
            Level::Client => Some(LevelPolicy {
                strikes: self.strikes,
                cool_off: self.cool_off,
                cpu_quota: self.cpu_quota,
            }),
            Level::Network => self.network,
            Level::Route => self.route,
        }
    }
}

/// The limits of the network or route level of a [`ClientPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelPolicy {
    /// Timeouts that start a cool-off; 0 means timeouts alone never do.
    pub strikes: u32,
    /// How long the key is refused once it has collected its strikes.
    pub cool_off: Duration,
    /// The CPU time the key may spend per window, if limited.
    pub cpu_quota: Option<CpuQuota>,
}

impl LevelPolicy {
    /// Refuse for `cool_off` after `strikes` timeouts (0: never by count).
    pub fn new(strikes: u32, cool_off: Duration) -> Self {
        Self {
            strikes,
            cool_off,
            cpu_quota: None,
        }
    }

    /// Also limits the level's CPU time per window.
    pub fn cpu_quota(mut self, quota: CpuQuota) -> Self {
        self.cpu_quota = Some(quota);
        self
    }
}

/// Which level of the key hierarchy an entry of the client table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Client,
    Network,
    Route,
}

/// A limit by cost, not by count: at most `quota` of poll and job time per
/// `window`, as the watchdog attributes it. Over it, a client is refused
/// with the time left until its window frees it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    quota: Duration,
    window: Duration,
}

impl CpuQuota {
    /// At most `quota` of CPU time per `window`. Both must be at least a
    /// millisecond, and the window at most a year.
    pub fn new(quota: Duration, window: Duration) -> Result<Self, QuotaError> {
        if quota < Duration::from_millis(1) {
            return Err(QuotaError(format!(
                "the quota must be at least 1 ms, not {quota:?}"
            )));
        }
        if window < Duration::from_millis(1) || window > Duration::from_secs(366 * 24 * 3600) {
            return Err(QuotaError(format!(
                "the window must be between 1 ms and a year, not {window:?}"
            )));
        }
        Ok(Self { quota, window })
    }

    /// The CPU time allowed per window.
    pub fn quota(&self) -> Duration {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl fmt::Debug for CpuQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.quota, self.window)
    }
}

/// Parses `QUOTA/WINDOW`, e.g. `2s/60s` or `500ms/10s` (units `ms`, `s`,
/// `m`, `h`).
impl std::str::FromStr for CpuQuota {
    type Err = QuotaError;

    fn from_str(s: &str) -> Result<Self, QuotaError> {
        let bad = || QuotaError(format!("expected QUOTA/WINDOW such as 2s/60s, not {s:?}"));
        let (q, w) = s.split_once('/').ok_or_else(bad)?;
        let q = parse_duration(q.trim()).ok_or_else(bad)?;
        let w = parse_duration(w.trim()).ok_or_else(bad)?;
        CpuQuota::new(q, w)
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// A [`CpuQuota`] that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaError(String);

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CPU quota: {}", self.0)
    }
}

impl std::error::Error for QuotaError {}
