//! The per-user message rate limit: one atomic GCRA step per message.
//!
//! Seed 000's chat limited users with a Redis read followed by a write; a
//! burst of buffered messages flushed on reconnect all read the old value
//! before any write landed, and hundreds passed. Here the check and the
//! record are one step that nothing can interleave with:
//!
//! * in memory, [`governor`]'s keyed GCRA limiter: one compare-and-swap on
//!   the user's state word;
//! * with `--redis`, one Lua script (`gcra.lua`) run atomically by the
//!   server, so several instances share one exact limit. A user found over
//!   the limit is then blocked in local memory until its next allowed time,
//!   so that a flood costs no further round trips. When Redis fails or
//!   answers slower than [`REDIS_TIMEOUT`], the check falls back to the
//!   in-memory limiter, with one warning until Redis answers again.
//!
//! The key is the user id from the token, so reconnecting does not reset
//! the limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Rate;

/// The longest a Redis rate-limit check may take before the in-memory
/// limiter answers instead.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Why a limiter could not be built.
#[derive(Debug)]
pub struct LimitError(String);

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitError {}

/// A per-user rate limiter, in memory or in Redis.
#[derive(Debug)]
pub struct RateLimit {
    memory: Memory,
    redis: Option<RedisGcra>,
}

struct Memory {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl Memory {
    fn new(rate: Rate, burst: NonZeroU32) -> Self {
        let quota = Quota::with_period(rate.interval())
            .expect("Rate guarantees a non-zero interval")
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, user: &Arc<str>) -> Result<(), Duration> {
        self.limiter
            .check_key(user)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

impl RateLimit {
    /// An in-memory limiter: `rate`, plus `burst` at once.
    pub fn memory(rate: Rate, burst: NonZeroU32) -> Self {
        Self {
            memory: Memory::new(rate, burst),
            redis: None,
        }
    }

    /// A limiter in Redis at `url`, shared by every instance that uses the
    /// same Redis. Fails if Redis cannot be reached now.
    pub async fn redis(url: &str, rate: Rate, burst: NonZeroU32) -> Result<Self, LimitError> {
        let client =
            redis::Client::open(url).map_err(|e| LimitError(format!("--redis `{url}`: {e}")))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            redis::aio::ConnectionManager::new(client),
        )
        .await
        .map_err(|_| LimitError(format!("--redis `{url}`: no answer within 5 s")))?
        .map_err(|e| LimitError(format!("--redis `{url}`: {e}")))?;
        let redis = RedisGcra {
            conn,
            script: redis::Script::new(include_str!("gcra.lua")),
            interval_us: u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX),
            burst: burst.get(),
            blocked: Mutex::new(HashMap::new()),
            degraded: AtomicBool::new(false),
        };
        // One step now, so that a wrong password or a Redis without
        // scripting is a start-up error, not a warning on the first message.
        redis
            .step("curfew-chat:rate:startup-probe")
            .await
            .map_err(|e| LimitError(format!("--redis `{url}`: {e}")))?;
        Ok(Self {
            memory: Memory::new(rate, burst),
            redis: Some(redis),
        })
    }

    /// Whether the limit is kept in Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Admits one message from `user`, or says how long until it may send.
    /// The second value is true when Redis failed and memory answered.
    pub async fn check(&self, user: &Arc<str>) -> (Result<(), Duration>, bool) {
        match &self.redis {
            None => (self.memory.check(user), false),
            Some(r) => match r.check(user).await {
                Some(result) => (result, false),
                None => (self.memory.check(user), true),
            },
        }
    }

    /// Drops state of users idle long enough to be back at full burst.
    pub fn forget_idle(&self) {
        self.memory.limiter.retain_recent();
        self.memory.limiter.shrink_to_fit();
        if let Some(r) = &self.redis {
            let now = Instant::now();
            r.blocked
                .lock()
                .expect("blocked map")
                .retain(|_, until| *until > now);
        }
    }
}

struct RedisGcra {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    interval_us: u64,
    burst: u32,
    /// Users known to be over the limit, until when: answered without a
    /// round trip.
    blocked: Mutex<HashMap<Arc<str>, Instant>>,
    /// Set while Redis is failing, so that it is reported once.
    degraded: AtomicBool,
}

impl std::fmt::Debug for RedisGcra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGcra")
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisGcra {
    async fn step(&self, key: &str) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        self.script
            .key(key)
            .arg(self.interval_us)
            .arg(self.burst)
            .invoke_async(&mut conn)
            .await
    }

    /// `None` when Redis could not answer in time.
    async fn check(&self, user: &Arc<str>) -> Option<Result<(), Duration>> {
        let now = Instant::now();
        if let Some(until) = self.blocked.lock().expect("blocked map").get(user) {
            if *until > now {
                return Some(Err(*until - now));
            }
        }
        let key = format!("curfew-chat:rate:{user}");
        let answer = match tokio::time::timeout(REDIS_TIMEOUT, self.step(&key)).await {
            Ok(Ok(wait_us)) => wait_us,
            Ok(Err(e)) => return self.degrade(&e.to_string()),
            Err(_) => return self.degrade(&format!("no answer within {REDIS_TIMEOUT:?}")),
        };
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("redis rate limit answering again");
        }
        if answer == 0 {
            return Some(Ok(()));
        }
        let wait = Duration::from_micros(answer);
        let mut blocked = self.blocked.lock().expect("blocked map");
        blocked.insert(user.clone(), Instant::now() + wait);
        Some(Err(wait))
    }

    fn degrade(&self, why: &str) -> Option<Result<(), Duration>> {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "redis rate limit unavailable; limiting in memory until it answers"
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_burst_then_wait() {
        let limit = RateLimit::memory("1/s".parse().unwrap(), NonZeroU32::new(5).unwrap());
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        let admitted = (0..100)
            .filter(|_| futures::executor::block_on(limit.check(&alice)).0.is_ok())
            .count();
        assert_eq!(admitted, 5);
        let wait = limit.check(&alice).await.0.unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limit.check(&bob).await.0.is_ok(), "users are limited apart");
    }
}
