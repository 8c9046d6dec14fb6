//! The per-user message rate limit: one atomic GCRA step per message.
//!
//! Seed 000's chat limited users with a Redis read followed by a write; a
//! burst of buffered messages flushed on reconnect all read the old value
//! before any write landed, and hundreds passed. Here the check and the
//! record are one step that nothing can interleave with:
//!
//! * in memory, curfew's keyed [`RateLimiter`] (governor's GCRA: one
//!   compare-and-swap on the user's state word);
//! * with `--redis`, [`curfew_redis::RedisRateLimiter`]: one Lua step run
//!   atomically by the Redis server, so several instances share one exact
//!   limit. A user found over the limit is blocked in local memory until
//!   its next allowed time, so that a flood costs no further round trips;
//!   when Redis fails, the check falls back to memory with one warning.
//!
//! The key is the user id from the token, so reconnecting does not reset
//! the limit.

use std::num::NonZeroU32;
use std::time::Duration;

use curfew::ClientKey;
use curfew::policy::{Rate as PolicyRate, RateLimiter};
use curfew_redis::RedisRateLimiter;

use crate::config::Rate;

/// The Redis key prefix of the chat's message limit.
pub const REDIS_PREFIX: &str = "curfew-chat:rate";

/// A per-user rate limiter, in memory or in Redis.
#[derive(Debug)]
pub enum RateLimit {
    /// In this process.
    Memory(RateLimiter),
    /// In Redis, shared by every instance on it.
    Redis(RedisRateLimiter),
}

fn policy_rate(rate: Rate, burst: NonZeroU32) -> PolicyRate {
    PolicyRate::new(rate.interval(), burst.get())
        .expect("Rate guarantees a non-zero interval under a year")
}

impl RateLimit {
    /// An in-memory limiter: `rate`, plus `burst` at once.
    pub fn memory(rate: Rate, burst: NonZeroU32) -> Self {
        RateLimit::Memory(RateLimiter::new(policy_rate(rate, burst)))
    }

    /// A limiter in Redis at `url`. Fails if Redis cannot be reached or
    /// refuses the credentials now.
    pub async fn redis(
        url: &str,
        rate: Rate,
        burst: NonZeroU32,
    ) -> Result<Self, curfew_redis::Error> {
        RedisRateLimiter::connect_with_prefix(url, policy_rate(rate, burst), REDIS_PREFIX)
            .await
            .map(RateLimit::Redis)
    }

    /// Admits one message from `user`, or says how long until it may send.
    pub async fn check(&self, user: &ClientKey) -> Result<(), Duration> {
        let r = match self {
            RateLimit::Memory(l) => l.check(user),
            RateLimit::Redis(l) => l.check(user).await,
        };
        r.map_err(|limited| limited.retry_after)
    }

    /// Times Redis became unreachable (0 in memory).
    pub fn outages(&self) -> u64 {
        match self {
            RateLimit::Memory(_) => 0,
            RateLimit::Redis(l) => l.outages(),
        }
    }

    /// Drops state of users idle long enough to be back at full burst.
    pub fn forget_idle(&self) {
        if let RateLimit::Memory(l) = self {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_burst_then_wait() {
        let limit = RateLimit::memory("1/s".parse().unwrap(), NonZeroU32::new(5).unwrap());
        let alice = ClientKey::id("alice");
        let bob = ClientKey::id("bob");
        let mut admitted = 0;
        for _ in 0..100 {
            admitted += usize::from(limit.check(&alice).await.is_ok());
        }
        assert_eq!(admitted, 5);
        let wait = limit.check(&alice).await.unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limit.check(&bob).await.is_ok(), "users are limited apart");
    }
}
