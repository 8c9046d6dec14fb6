//! Rate limits by count (per-user messages or requests), and the in-memory
//! block that keeps a flooding key off a shared store.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::key::ClientKey;

/// A rate: `burst` events at once, refilled at one per `period` (GCRA, the
/// generic cell rate algorithm).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    period: Duration,
    burst: NonZeroU32,
}

impl Rate {
    /// `n` per second, all of them allowed at once. `None` for 0.
    pub fn per_second(n: u32) -> Option<Self> {
        let burst = NonZeroU32::new(n)?;
        Some(Self {
            period: Duration::from_secs(1) / n,
            burst,
        })
    }

    /// One event per `period`, up to `burst` at once. `None` for a zero
    /// period or burst, or a period over a year.
    pub fn new(period: Duration, burst: u32) -> Option<Self> {
        if period.is_zero() || period > Duration::from_secs(366 * 24 * 3600) {
            return None;
        }
        Some(Self {
            period,
            burst: NonZeroU32::new(burst)?,
        })
    }

    /// The time one event's cell takes to refill.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How many events may pass at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1/{:?} burst {}", self.period, self.burst)
    }
}

/// A key over its rate: when it may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The time until the key's next event is allowed.
    pub retry_after: Duration,
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited: retry after {:.3?}", self.retry_after)
    }
}

impl std::error::Error for Limited {}

/// An in-memory rate limiter per key, on `governor`: the state of each key
/// is one atomic word, and a check is one compare-and-swap.
///
/// ```
/// use curfew::policy::{ClientKey, Rate, RateLimiter};
///
/// let limiter = RateLimiter::new(Rate::per_second(1).unwrap());
/// let alice = ClientKey::id("alice");
/// assert!(limiter.check(&alice).is_ok());
/// let limited = limiter.check(&alice).unwrap_err();
/// assert!(limited.retry_after.as_millis() <= 1000);
/// ```
pub struct RateLimiter {
    inner: DefaultKeyedRateLimiter<ClientKey>,
    clock: DefaultClock,
    rate: Rate,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter allowing each key `rate`.
    pub fn new(rate: Rate) -> Self {
        let quota = Quota::with_period(rate.period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(rate.burst);
        Self {
            inner: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            rate,
        }
    }

    /// The limiter's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Checks and records one event for `key`, atomically.
    pub fn check(&self, key: &ClientKey) -> Result<(), Limited> {
        self.inner.check_key(key).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Forgets keys whose state is back to "full burst available", so that
    /// the limiter's memory tracks active keys only.
    pub fn retain_recent(&self) {
        self.inner.retain_recent();
    }
}

/// Keys blocked in local memory until a given time: once a shared limiter
/// has said a key is over its limit, further checks of that key answer here
/// without a round trip (rate-limiter-flexible's in-memory block).
#[derive(Debug, Default)]
pub struct BlockList {
    until: RwLock<HashMap<ClientKey, Instant>>,
}

/// Entries above which [`BlockList::block`] first drops expired ones.
const BLOCK_LIST_PURGE: usize = 4096;

impl BlockList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long `key` is still blocked, if it is: one read lock and one
    /// hash lookup.
    pub fn blocked(&self, key: &ClientKey) -> Option<Duration> {
        let until = *self
            .until
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)?;
        until.checked_duration_since(Instant::now())
    }

    /// Blocks `key` for `d` from now (a longer block already there stays).
    pub fn block(&self, key: &ClientKey, d: Duration) {
        let now = Instant::now();
        let Some(until) = now.checked_add(d) else {
            return;
        };
        let mut map = self.until.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= BLOCK_LIST_PURGE {
            map.retain(|_, t| *t > now);
        }
        let t = map.entry(key.clone()).or_insert(until);
        if *t < until {
            *t = until;
        }
    }

    /// Keys in the list, blocked or expired but not yet dropped.
    pub fn len(&self) -> usize {
        self.until.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the list holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
