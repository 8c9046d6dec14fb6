//! [`RedisRateLimiter`]: an exact rate limit across instances, one round
//! trip and one atomic step per check, with an in-memory block.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use curfew::policy::{BlockList, ClientKey, Limited, Rate, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{Error, redact};
use crate::scripts;

/// An exact per-key rate limit shared by every instance on one Redis: GCRA
/// in one Lua step (`lua/gcra.lua`), so a burst spread over instances and
/// connections passes exactly as many events as the rate allows, never
/// more.
///
/// Unlike the client policy, an exact limit across instances needs Redis on
/// the path: one round trip per check. Once a key is over its limit, it is
/// blocked in local memory until its next allowed time, so that a flood
/// costs no further round trips. If Redis fails, checks fall back to an
/// in-memory limiter with the same rate (one `tracing` warning per outage).
///
/// ```no_run
/// # async fn demo() -> Result<(), curfew_redis::Error> {
/// use curfew::policy::{ClientKey, Rate};
///
/// let limiter = curfew_redis::RedisRateLimiter::connect(
///     "redis://127.0.0.1:6379/",
///     Rate::per_second(1).unwrap(),
/// )
/// .await?;
/// let user = ClientKey::id("alice");
/// if let Err(limited) = limiter.check(&user).await {
///     println!("try again in {:?}", limited.retry_after);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    con: ConnectionManager,
    url: String,
    prefix: String,
    rate: Rate,
    period_us: u64,
    blocks: BlockList,
    fallback: RateLimiter,
    up: AtomicBool,
    outages: AtomicU64,
    round_trips: AtomicU64,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("rate", &self.inner.rate)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Connects to the Redis at `url` (checking the server and the
    /// credentials now) with the key prefix `curfew`.
    pub async fn connect(url: &str, rate: Rate) -> Result<Self, Error> {
        Self::connect_with_prefix(url, rate, "curfew").await
    }

    /// As [`connect`](Self::connect), with a key prefix of one's own (one
    /// per limit, when a service has several).
    pub async fn connect_with_prefix(url: &str, rate: Rate, prefix: &str) -> Result<Self, Error> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|source| Error::Url {
            url: shown.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connect = async {
            let mut con = ConnectionManager::new_with_config(client, config).await?;
            redis::cmd("PING").query_async::<String>(&mut con).await?;
            scripts::gcra().load_async(&mut con).await?;
            Ok::<_, redis::RedisError>(con)
        };
        let con = match tokio::time::timeout(Duration::from_secs(4), connect).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
        .map_err(|source| Error::Connect {
            url: shown.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                con,
                url: shown,
                prefix: format!("{prefix}:rate"),
                rate,
                period_us: u64::try_from(rate.period().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
                blocks: BlockList::new(),
                fallback: RateLimiter::new(rate),
                up: AtomicBool::new(true),
                outages: AtomicU64::new(0),
                round_trips: AtomicU64::new(0),
            }),
        })
    }

    /// The limiter's rate.
    pub fn rate(&self) -> Rate {
        self.inner.rate
    }

    /// Checks and records one event for `key`: answered from local memory
    /// if the key is blocked, else one atomic step on Redis.
    pub async fn check(&self, key: &ClientKey) -> Result<(), Limited> {
        let inner = &*self.inner;
        if let Some(retry_after) = inner.blocks.blocked(key) {
            return Err(Limited { retry_after });
        }
        let mut con = inner.con.clone();
        inner.round_trips.fetch_add(1, Relaxed);
        let r = scripts::gcra()
            .key(format!("{}:{}", inner.prefix, key.qualified()))
            .arg(inner.period_us)
            .arg(inner.rate.burst())
            .invoke_async::<(i64, i64)>(&mut con)
            .await;
        match r {
            Ok((admitted, wait_us)) => {
                if !inner.up.swap(true, Relaxed) {
                    tracing::info!(target: "curfew_redis", url = %inner.url, "Redis is back: rate limits are exact again");
                }
                if admitted == 1 {
                    Ok(())
                } else {
                    let retry_after = Duration::from_micros(wait_us.max(1) as u64);
                    inner.blocks.block(key, retry_after);
                    Err(Limited { retry_after })
                }
            }
            Err(e) => {
                if inner.up.swap(false, Relaxed) {
                    inner.outages.fetch_add(1, Relaxed);
                    tracing::warn!(
                        target: "curfew_redis",
                        url = %inner.url,
                        error = %e,
                        "Redis unreachable: rate limits fall back to this instance's memory"
                    );
                }
                inner.fallback.check(key)
            }
        }
    }

    /// Checks that went to Redis (blocked keys do not).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Relaxed)
    }

    /// Times Redis became unreachable.
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Relaxed)
    }
}
