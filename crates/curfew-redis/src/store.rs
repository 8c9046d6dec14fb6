//! [`RedisStore`]: strikes, cool-offs and CPU usage shared between
//! instances through Redis, off the admission path.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use curfew::policy::{ClientKey, CpuQuota, LevelPolicy, LocalPolicy, PolicyStore, Usage};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc};

use crate::error::{Error, redact};
use crate::scripts;

/// Strikes queued on the watchdog thread before the worker takes them; past
/// it, strikes are counted in [`StoreMetrics::dropped_strikes`] and kept
/// only locally.
const STRIKE_QUEUE: usize = 65_536;

/// Keys held in the batch while Redis is down; past it, the oldest keys'
/// pending strikes and usage stay only local.
const PENDING_KEYS: usize = 100_000;

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct Builder {
    url: String,
    prefix: String,
    flush_interval: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    max_backoff: Duration,
}

impl Builder {
    /// Redis key prefix and pub/sub channel prefix. Default: `curfew`.
    /// Instances that share a policy use the same prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often strikes and CPU usage are sent, batched. Default: 20 ms.
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d.max(Duration::from_millis(1));
        self
    }

    /// How long connecting may take, at build and on reconnects. Default:
    /// 2 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one command may wait for its answer. Default: 1 s.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// The longest pause between reconnect attempts while Redis is down
    /// (the pause doubles from 50 ms). Default: 2 s.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d.max(Duration::from_millis(50));
        self
    }

    /// Connects (checking the URL, the server and the credentials now, so
    /// that a bad setting is an error at start rather than a silent
    /// fallback later), subscribes to the policy channel, and starts the
    /// store's thread.
    pub fn build(self) -> Result<RedisStore, Error> {
        let url = redact(&self.url);
        let client = redis::Client::open(self.url.as_str()).map_err(|source| Error::Url {
            url: url.clone(),
            source,
        })?;
        let (strikes_tx, strikes_rx) = mpsc::channel(STRIKE_QUEUE);
        let inner = Arc::new(Inner {
            url,
            prefix: self.prefix.clone(),
            channel: format!("{}:policy", self.prefix),
            strikes: strikes_tx,
            local: OnceLock::new(),
            attached: Notify::new(),
            up: AtomicBool::new(true),
            up_again: Notify::new(),
            stop: AtomicBool::new(false),
            stopped: Notify::new(),
            counters: Counters::default(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Thread)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("curfew-redis".into())
            .spawn(move || {
                rt.block_on(async move {
                    let conns = match Conns::connect(&client, &self, &worker).await {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(worker, client, conns, self, strikes_rx).await;
                })
            })
            .map_err(Error::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RedisStore {
                inner: inner.clone(),
                _thread: Arc::new(Stopper {
                    inner,
                    _thread: thread,
                }),
            }),
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(Error::Connect {
                    url: inner.url.clone(),
                    source,
                })
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Thread(std::io::Error::other(
                    "the store's thread ended while connecting",
                )))
            }
        }
    }
}

/// A [`PolicyStore`] on Redis: strikes, cool-offs and CPU-time quotas
/// shared by every runtime that uses the same Redis and prefix.
///
/// - Each strike (on the watchdog thread) is queued, never sent inline;
///   strikes and CPU usage go out in batches every
///   [`flush_interval`](Builder::flush_interval), each key's batch one
///   atomic Lua step on the server (`lua/strike.lua`, `lua/usage.lua`).
/// - A cool-off or spent quota decided there is published on the policy
///   channel; every instance puts it into its runtime's own table, which is
///   all that admission reads.
/// - When Redis is down, the runtime's own policy goes on alone (the
///   insurance): one `tracing` warning per outage, counted in
///   [`StoreMetrics::outages`]; the store reconnects with backoff and, once
///   back, resyncs: it uploads the cool-offs decided meanwhile, loads those
///   of other instances, and sends the strikes and usage it held.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use curfew::policy::ClientPolicy;
///
/// let store = curfew_redis::RedisStore::builder("redis://127.0.0.1:6379/").build()?;
/// let rt = curfew::Runtime::builder()
///     .client_policy(ClientPolicy::new(3, Duration::from_secs(60)))
///     .policy_store(store.clone())
///     .build()?;
/// # drop(rt);
/// println!("{:?}", store.metrics());
/// # Ok(()) }
/// ```
///
/// One store serves one runtime: attach a second runtime to a clone of it
/// and the second is ignored. Cloning shares the store (for its metrics).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
    _thread: Arc<Stopper>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("up", &self.inner.up.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counters of a [`RedisStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreMetrics {
    /// Whether the store is connected now.
    pub connected: bool,
    /// Times Redis became unreachable (one warning each).
    pub outages: u64,
    /// Times the store came back and resynced.
    pub resyncs: u64,
    /// Redis commands that failed.
    pub errors: u64,
    /// Strikes sent (summed over batches).
    pub strikes_sent: u64,
    /// Usage records sent.
    pub usage_sent: u64,
    /// Cool-offs and spent quotas received from the channel or a resync.
    pub received: u64,
    /// Strikes dropped because the queue was full (kept locally).
    pub dropped_strikes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    outages: AtomicU64,
    resyncs: AtomicU64,
    errors: AtomicU64,
    strikes_sent: AtomicU64,
    usage_sent: AtomicU64,
    received: AtomicU64,
    dropped_strikes: AtomicU64,
}

struct Inner {
    url: String,
    prefix: String,
    channel: String,
    strikes: mpsc::Sender<(ClientKey, LevelPolicy)>,
    local: OnceLock<LocalPolicy>,
    attached: Notify,
    up: AtomicBool,
    up_again: Notify,
    stop: AtomicBool,
    stopped: Notify,
    counters: Counters,
}

/// Stops the store's thread when the last clone of the store goes. The
/// thread also stops once its runtime is gone.
struct Stopper {
    inner: Arc<Inner>,
    _thread: std::thread::JoinHandle<()>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.inner.stop.store(true, Relaxed);
        self.inner.stopped.notify_one();
        self.inner.up_again.notify_waiters();
    }
}

impl RedisStore {
    /// Settings for a store on the Redis at `url`
    /// (`redis://[user:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder {
            url: url.into(),
            prefix: "curfew".into(),
            flush_interval: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The store's counters.
    pub fn metrics(&self) -> StoreMetrics {
        let c = &self.inner.counters;
        StoreMetrics {
            connected: self.inner.up.load(Relaxed),
            outages: c.outages.load(Relaxed),
            resyncs: c.resyncs.load(Relaxed),
            errors: c.errors.load(Relaxed),
            strikes_sent: c.strikes_sent.load(Relaxed),
            usage_sent: c.usage_sent.load(Relaxed),
            received: c.received.load(Relaxed),
            dropped_strikes: c.dropped_strikes.load(Relaxed),
        }
    }

    /// The Redis key of `key`'s `kind` (`strikes`, `cool`, `usage`,
    /// `spent`).
    pub fn redis_key(&self, kind: &str, key: &ClientKey) -> String {
        redis_key(&self.inner.prefix, kind, key)
    }
}

fn redis_key(prefix: &str, kind: &str, key: &ClientKey) -> String {
    format!("{prefix}:{kind}:{}", key.qualified())
}

impl PolicyStore for RedisStore {
    fn attach(&self, local: LocalPolicy) {
        if self.inner.local.set(local).is_ok() {
            self.inner.attached.notify_one();
        }
    }

    fn strike(&self, key: &ClientKey, limits: &LevelPolicy) {
        // On the watchdog thread: queue, never wait.
        if self.inner.strikes.try_send((key.clone(), *limits)).is_err() {
            self.inner.counters.dropped_strikes.fetch_add(1, Relaxed);
        }
    }

    fn shares_usage(&self) -> bool {
        true
    }
}

impl Inner {
    /// Redis failed: from up to down once, with one warning.
    fn mark_down(&self, e: &redis::RedisError) {
        self.counters.errors.fetch_add(1, Relaxed);
        if self.up.swap(false, Relaxed) {
            self.counters.outages.fetch_add(1, Relaxed);
            tracing::warn!(
                target: "curfew_redis",
                url = %self.url,
                error = %e,
                "Redis unreachable: the local policy goes on alone until it is back"
            );
        }
    }

    fn local(&self) -> Option<&LocalPolicy> {
        self.local.get()
    }

    /// Applies one channel message: `cool MS KEY` or `spent MS KEY`.
    fn apply(&self, msg: &str) {
        let mut parts = msg.splitn(3, ' ');
        let (Some(kind), Some(ms), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(ms), Some(key)) = (ms.parse::<u64>(), ClientKey::from_qualified(key)) else {
            return;
        };
        let Some(local) = self.local() else {
            return;
        };
        let d = Duration::from_millis(ms);
        match kind {
            "cool" => local.cool_off(&key, d),
            "spent" => local.quota_spent(&key, d),
            _ => return,
        }
        self.counters.received.fetch_add(1, Relaxed);
    }
}

struct Conns {
    con: ConnectionManager,
    messages: redis::aio::PubSubStream,
}

impl Conns {
    async fn connect(
        client: &redis::Client,
        b: &Builder,
        inner: &Inner,
    ) -> Result<Conns, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(b.connect_timeout))
            .set_response_timeout(Some(b.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(b.max_backoff);
        let connect = async {
            let mut con = ConnectionManager::new_with_config(client.clone(), config).await?;
            redis::cmd("PING").query_async::<String>(&mut con).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&inner.channel).await?;
            Ok(Conns {
                con,
                messages: pubsub.into_on_message(),
            })
        };
        match tokio::time::timeout(b.connect_timeout.saturating_mul(2), connect).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))),
        }
    }
}

/// Strikes and usage not yet on the server, per key.
#[derive(Default)]
struct Batch {
    strikes: HashMap<ClientKey, (u64, LevelPolicy)>,
    usage: HashMap<ClientKey, (Duration, CpuQuota)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.strikes.is_empty() && self.usage.is_empty()
    }

    fn add_strike(&mut self, key: ClientKey, limits: LevelPolicy) {
        if self.strikes.len() < PENDING_KEYS || self.strikes.contains_key(&key) {
            self.strikes.entry(key).or_insert((0, limits)).0 += 1;
        }
    }

    fn add_usage(&mut self, u: Usage) {
        let Some(quota) = u.quota else {
            return;
        };
        if self.usage.len() < PENDING_KEYS || self.usage.contains_key(&u.key) {
            self.usage.entry(u.key).or_insert((Duration::ZERO, quota)).0 += u.cpu;
        }
    }
}

async fn run(
    inner: Arc<Inner>,
    client: redis::Client,
    conns: Conns,
    b: Builder,
    mut strikes: mpsc::Receiver<(ClientKey, LevelPolicy)>,
) {
    // Wait for the runtime before anything else: resync needs its table.
    tokio::select! {
        _ = inner.attached.notified() => {}
        _ = inner.stopped.notified() => return,
    }
    if inner.stop.load(Relaxed) {
        return;
    }
    let Conns { mut con, messages } = conns;
    resync(&inner, &mut con).await;
    let subscriber = tokio::spawn(subscribe(
        inner.clone(),
        client.clone(),
        con.clone(),
        messages,
        b.clone(),
    ));
    let mut batch = Batch::default();
    let mut tick = tokio::time::interval(b.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.stopped.notified() => {}
        }
        if inner.stop.load(Relaxed) || !inner.local().is_some_and(LocalPolicy::is_alive) {
            break;
        }
        while let Ok((key, limits)) = strikes.try_recv() {
            batch.add_strike(key, limits);
        }
        if !inner.up.load(Relaxed) {
            // Down: try again after the backoff; the runtime's table keeps
            // accumulating usage meanwhile.
            match redis::cmd("PING").query_async::<String>(&mut con).await {
                Ok(_) => {
                    resync(&inner, &mut con).await;
                    inner.up.store(true, Relaxed);
                    inner.counters.resyncs.fetch_add(1, Relaxed);
                    inner.up_again.notify_waiters();
                    tracing::info!(target: "curfew_redis", url = %inner.url, "Redis is back: policy resynced");
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    inner.counters.errors.fetch_add(1, Relaxed);
                    let _ = e;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = inner.stopped.notified() => {}
                    }
                    backoff = (backoff * 2).min(b.max_backoff);
                    continue;
                }
            }
        }
        if let Some(local) = inner.local() {
            for u in local.drain_usage() {
                batch.add_usage(u);
            }
        }
        if !batch.is_empty() {
            if let Err(e) = flush(&inner, &mut con, &mut batch).await {
                inner.mark_down(&e);
            }
        }
    }
    subscriber.abort();
}

/// Sends the batch: each key's strikes or usage is one script call; the
/// calls go out together on the multiplexed connection. Keys that fail stay
/// in the batch.
async fn flush(
    inner: &Inner,
    con: &mut ConnectionManager,
    batch: &mut Batch,
) -> Result<(), redis::RedisError> {
    let strikes: Vec<_> = batch.strikes.drain().collect();
    let usage: Vec<_> = batch.usage.drain().collect();
    let strike_calls = strikes.iter().map(|(key, (n, limits))| {
        let mut con = con.clone();
        let q = key.qualified();
        let (k1, k2) = (
            redis_key(&inner.prefix, "strikes", key),
            redis_key(&inner.prefix, "cool", key),
        );
        async move {
            scripts::strike()
                .key(k1)
                .key(k2)
                .arg(*n)
                .arg(limits.strikes)
                .arg(millis(limits.cool_off))
                .arg(&inner.channel)
                .arg(q)
                .invoke_async::<i64>(&mut con)
                .await
        }
    });
    let usage_calls = usage.iter().map(|(key, (cpu, quota))| {
        let mut con = con.clone();
        let q = key.qualified();
        let (k1, k2) = (
            redis_key(&inner.prefix, "usage", key),
            redis_key(&inner.prefix, "spent", key),
        );
        async move {
            scripts::usage()
                .key(k1)
                .key(k2)
                .arg(u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX))
                .arg(u64::try_from(quota.quota().as_nanos()).unwrap_or(u64::MAX))
                .arg(millis(quota.window()))
                .arg(&inner.channel)
                .arg(q)
                .invoke_async::<i64>(&mut con)
                .await
        }
    });
    let (s, u) = futures::join!(
        futures::future::join_all(strike_calls),
        futures::future::join_all(usage_calls)
    );
    let mut first_err = None;
    for ((key, (n, limits)), r) in strikes.into_iter().zip(s) {
        match r {
            Ok(_) => {
                inner.counters.strikes_sent.fetch_add(n, Relaxed);
            }
            Err(e) => {
                batch.strikes.insert(key, (n, limits));
                first_err.get_or_insert(e);
            }
        }
    }
    for ((key, v), r) in usage.into_iter().zip(u) {
        match r {
            Ok(_) => {
                inner.counters.usage_sent.fetch_add(1, Relaxed);
            }
            Err(e) => {
                batch.usage.insert(key, v);
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Brings local and shared state together: uploads the local cool-offs
/// (another instance may have missed them), then loads every shared
/// cool-off and spent quota into the local table.
async fn resync(inner: &Inner, con: &mut ConnectionManager) {
    let Some(local) = inner.local() else {
        return;
    };
    let result: Result<(), redis::RedisError> = async {
        for (key, left) in local.cooling() {
            let ms = millis(left).max(1);
            let set: Option<String> = redis::cmd("SET")
                .arg(redis_key(&inner.prefix, "cool", &key))
                .arg(1)
                .arg("PX")
                .arg(ms)
                .arg("NX")
                .query_async(con)
                .await?;
            if set.is_some() {
                redis::cmd("PUBLISH")
                    .arg(&inner.channel)
                    .arg(format!("cool {ms} {}", key.qualified()))
                    .query_async::<i64>(con)
                    .await?;
            }
        }
        pull(inner, con).await
    }
    .await;
    if let Err(e) = result {
        inner.mark_down(&e);
    }
}

/// Loads every shared cool-off and spent quota into the local table.
async fn pull(inner: &Inner, con: &mut ConnectionManager) -> Result<(), redis::RedisError> {
    for kind in ["cool", "spent"] {
        let pattern = format!("{}:{kind}:*", inner.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(con)
                .await?;
            for k in keys {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(con).await?;
                let qualified = &k[pattern.len() - 1..];
                if let (true, Some(key)) = (ttl > 0, ClientKey::from_qualified(qualified)) {
                    inner.apply(&format!("{kind} {ttl} {}", key.qualified()));
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(())
}

/// Applies channel messages; resubscribes once Redis is back.
async fn subscribe(
    inner: Arc<Inner>,
    client: redis::Client,
    mut con: ConnectionManager,
    mut messages: redis::aio::PubSubStream,
    b: Builder,
) {
    loop {
        while let Some(msg) = messages.next().await {
            if let Ok(text) = msg.get_payload::<String>() {
                inner.apply(&text);
            }
        }
        // The connection dropped.
        if inner.stop.load(Relaxed) {
            return;
        }
        inner.mark_down(&redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the subscription connection dropped",
        )));
        loop {
            // Wait until the flusher sees Redis back (it resyncs), then
            // subscribe again.
            let again = inner.up_again.notified();
            if !inner.up.load(Relaxed) {
                again.await;
            }
            if inner.stop.load(Relaxed) {
                return;
            }
            let sub = async {
                let mut p = client.get_async_pubsub().await?;
                p.subscribe(&inner.channel).await?;
                Ok::<_, redis::RedisError>(p.into_on_message())
            };
            match tokio::time::timeout(b.connect_timeout, sub).await {
                Ok(Ok(m)) => {
                    messages = m;
                    // What was published while unsubscribed is in Redis.
                    if let Err(e) = pull(&inner, &mut con).await {
                        inner.mark_down(&e);
                    }
                    break;
                }
                Ok(Err(e)) => inner.mark_down(&e),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
