//! The client table: per-key counters that the watchdog charges by index,
//! with eviction, so that a flood of identities cannot switch the policy
//! off.
//!
//! Each task header holds a packed `u32`: the slot of its client's entry in
//! the low bits, the slot's *generation* in the high bits. When the table is
//! full, inserting a new key evicts an idle entry and bumps its slot's
//! generation, so a task still holding the old index charges nothing to the
//! new client: every charge first compares generations (one relaxed load).
//! Strikes, which can refuse a client, are recorded under the table's read
//! lock, which eviction (a writer) excludes, so a strike can never land on
//! the wrong client. A CPU sample taken at the very moment of reuse can;
//! it is at most one watchdog interval of time.
//!
//! Eviction prefers, in order: entries with nothing at stake (no strikes,
//! no cool-off, no quota spent in the current window), then entries with
//! CPU time in their window, then entries with strikes; an entry cooling off
//! or over its quota goes last. Within a class, the least recently seen
//! goes first. The victim is picked from a sample of at least
//! [`EVICTION_SAMPLE`] entries taken round the table (as Redis approximates
//! LRU), widened up to the whole table while it finds nothing idle.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::config::{ClientPolicy, CpuQuota, Level, LevelPolicy};
use super::key::{ClientKey, Namespace};
use super::store::{PolicyStore, Usage};
use crate::error::Refusal;
use crate::metrics::ClientMetrics;

/// Where each table's `id` comes from.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(0);

/// Each thread's last few resolutions of a key to its entries, so that a
/// spawn for a key the thread has just seen takes neither the table's lock
/// (whose cache line every spawning thread would otherwise write) nor a
/// hash of the key. A resolution is used as it is while the table has
/// evicted nothing since it was made, and after that only while its
/// entries are still its key's (see [`Clients::owned`]).
mod resolved {
    use super::{ClientKey, RefCell};

    struct Resolved {
        table: u64,
        evictions: u64,
        key: ClientKey,
        found: (u32, u32),
    }

    /// Small, so that a miss costs little: a thread spawning for many keys
    /// at once gains nothing from the cache, and loses only the scan.
    const SIZE: usize = 4;

    thread_local! {
        static CACHE: RefCell<([Option<Resolved>; SIZE], usize)> =
            const { RefCell::new(([const { None }; SIZE], 0)) };
    }

    /// Same key, and same route (the key's equality leaves the route out).
    fn same(a: &ClientKey, b: &ClientKey) -> bool {
        a == b && a.route_ref() == b.route_ref()
    }

    pub(super) fn get(table: u64, key: &ClientKey) -> Option<((u32, u32), u64)> {
        CACHE
            .try_with(|c| {
                let c = c.borrow();
                let r =
                    c.0.iter()
                        .flatten()
                        .find(|r| r.table == table && same(&r.key, key))?;
                key.adopt_fingerprint(&r.key);
                Some((r.found, r.evictions))
            })
            .ok()
            .flatten()
    }

    pub(super) fn put(table: u64, evictions: u64, key: &ClientKey, found: (u32, u32)) {
        let _ = CACHE.try_with(|c| {
            let (items, next) = &mut *c.borrow_mut();
            // Refresh this key's own place if it has one (found again
            // through the map since), else take the oldest.
            let i = items
                .iter()
                .position(|r| {
                    r.as_ref()
                        .is_some_and(|r| r.table == table && same(&r.key, key))
                })
                .unwrap_or_else(|| {
                    let i = *next;
                    *next = (i + 1) % SIZE;
                    i
                });
            items[i] = Some(Resolved {
                table,
                evictions,
                key: key.clone(),
                found,
            });
        });
    }
}

/// The index reserved for tasks without a client.
pub(crate) const NO_CLIENT: u32 = 0;

/// Entries looked at, at least, to pick an eviction victim.
pub(crate) const EVICTION_SAMPLE: usize = 64;

/// Whole milliseconds of `d`, saturating at `u64::MAX` (about 584 million
/// years) instead of truncating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole nanoseconds of `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Entry {
    /// The generation of the key now in this slot.
    generation: AtomicU32,
    /// The [fingerprint](ClientKey::fingerprint) of the key now in this
    /// slot: a resolution cached with a key is used only while it matches,
    /// however many times the slot's generation has wrapped round since.
    owner: AtomicU64,
    /// The entry's [`Level`], as `level_code`.
    level: AtomicU8,
    /// Packed index of the client's network entry, or `NO_CLIENT`.
    parent: AtomicU32,
    /// The owner the network entry had when it was linked: the link is
    /// followed only while the entry still has it (see
    /// [`Clients::parent_of`]), however often its generation has wrapped.
    parent_owner: AtomicU64,
    last_seen_ms: AtomicU64,
    busy_ns: AtomicU64,
    /// CPU time not yet handed to a sharing store.
    unreported_ns: AtomicU64,
    timeouts: AtomicU64,
    strikes: AtomicU32,
    refused: AtomicU64,
    /// Milliseconds since the table's epoch until which the key is refused;
    /// 0 when it is not cooling off.
    cooling_until_ms: AtomicU64,
    window_start_ms: AtomicU64,
    window_used_ns: AtomicU64,
    /// Until when a sharing store says the key's quota is spent.
    spent_until_ms: AtomicU64,
    /// Route entries: the route's polls and jobs that ran past their budget
    /// and have not returned yet.
    overdue: AtomicU32,
}

impl Entry {
    /// Records that the entry was used at `now_ms`. Stores only when the
    /// millisecond changed: a route's or a busy client's entry is used by
    /// every request on every thread, and a store each time would move its
    /// cache line between cores for nothing.
    #[inline]
    fn seen(&self, now_ms: u64) {
        if self.last_seen_ms.load(Relaxed) != now_ms {
            self.last_seen_ms.store(now_ms, Relaxed);
        }
    }

    fn reset(&self, level: Level, now_ms: u64) {
        self.level.store(level_code(level), Relaxed);
        self.parent.store(NO_CLIENT, Relaxed);
        self.parent_owner.store(0, Relaxed);
        self.last_seen_ms.store(now_ms, Relaxed);
        for a in [
            &self.busy_ns,
            &self.unreported_ns,
            &self.timeouts,
            &self.refused,
            &self.cooling_until_ms,
            &self.window_start_ms,
            &self.window_used_ns,
            &self.spent_until_ms,
        ] {
            a.store(0, Relaxed);
        }
        self.strikes.store(0, Relaxed);
        self.overdue.store(0, Relaxed);
    }

    fn level(&self) -> Level {
        match self.level.load(Relaxed) {
            1 => Level::Network,
            2 => Level::Route,
            _ => Level::Client,
        }
    }

    /// Eviction class: what the entry has at stake (higher is kept longer).
    fn class(&self, now_ms: u64) -> u8 {
        if self.cooling_until_ms.load(Relaxed) > now_ms
            || self.spent_until_ms.load(Relaxed) > now_ms
            || self.overdue.load(Relaxed) > 0
        {
            3
        } else if self.strikes.load(Relaxed) > 0 {
            2
        } else if self.window_used_ns.load(Relaxed) > 0 || self.unreported_ns.load(Relaxed) > 0 {
            1
        } else {
            0
        }
    }

    /// Charges `ns` to the quota window that holds `now_ms`.
    fn charge_window(&self, ns: u64, now_ms: u64, window_ms: u64) {
        let start = self.window_start_ms.load(Relaxed);
        if now_ms >= start.saturating_add(window_ms)
            && self
                .window_start_ms
                .compare_exchange(start, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            self.window_used_ns.store(ns, Relaxed);
            return;
        }
        self.window_used_ns.fetch_add(ns, Relaxed);
    }

    /// Whether the entry refuses now, and for how long.
    fn refusal(&self, limits: Option<&LevelPolicy>, now_ms: u64) -> Option<Why> {
        let until = self.cooling_until_ms.load(Relaxed);
        if until > now_ms {
            return Some(Why::CoolingOff(Duration::from_millis(until - now_ms)));
        }
        let spent = self.spent_until_ms.load(Relaxed);
        let quota = limits.and_then(|l| l.cpu_quota);
        if spent > now_ms {
            let q = quota.map_or(Duration::ZERO, |q| q.quota());
            return Some(Why::QuotaSpent(q, q, Duration::from_millis(spent - now_ms)));
        }
        let q = quota?;
        let used = self.window_used_ns.load(Relaxed);
        let end = self
            .window_start_ms
            .load(Relaxed)
            .saturating_add(millis(q.window()));
        (used >= nanos(q.quota()) && end > now_ms).then(|| {
            Why::QuotaSpent(
                Duration::from_nanos(used),
                q.quota(),
                Duration::from_millis(end - now_ms),
            )
        })
    }
}

/// A refusal found, not yet built: the entry that refuses, and why.
enum Found<'a> {
    /// The route's entry has this many tasks stuck past their budget.
    Overdue(&'a Entry, u32),
    /// The entry of the client, its network or its route is cooling off
    /// or over its quota.
    Entry(&'a Entry, Why, Level),
}

enum Why {
    CoolingOff(Duration),
    /// Spent, quota, remaining.
    QuotaSpent(Duration, Duration, Duration),
}

impl Why {
    fn into_refusal(self, client: ClientKey) -> Refusal {
        match self {
            Why::CoolingOff(remaining) => Refusal::ClientCoolingOff { client, remaining },
            Why::QuotaSpent(spent, quota, remaining) => Refusal::QuotaSpent {
                client,
                spent,
                quota,
                remaining,
            },
        }
    }
}

fn level_code(level: Level) -> u8 {
    match level {
        Level::Client => 0,
        Level::Network => 1,
        Level::Route => 2,
    }
}

fn level_of(key: &ClientKey) -> Level {
    match key.namespace() {
        Namespace::Net => Level::Network,
        Namespace::Route => Level::Route,
        Namespace::Ip | Namespace::Id => Level::Client,
    }
}

/// The event for a strike that started a client's cool-off (`strike`'s
/// answer), wherever the strike was recorded.
pub(crate) fn log_cool_off(client: &ClientKey, cool_off: Duration) {
    tracing::warn!(
        target: "curfew",
        client = client.as_str(),
        cool_off_ms = cool_off.as_millis() as u64,
        "client refused for a cool-off after repeated timeouts"
    );
}

/// [`Clients::try_strike`] found the table's lock taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WouldBlock;

struct Map {
    by_key: HashMap<ClientKey, u32, BuildHasherDefault<Fingerprint>>,
    /// The key in each slot; slot 0 is `NO_CLIENT`.
    keys: Vec<Option<ClientKey>>,
    /// Slots handed out so far (they are reused only by eviction).
    used: usize,
    /// Where the next eviction sample starts.
    hand: usize,
}

/// The map's hasher: a [`ClientKey`] hashes as its fingerprint, already a
/// keyed hash of the key (and worked out once per key), which this passes
/// on as it is.
#[derive(Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Not used by `ClientKey`; mixes bytes in all the same.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// What [`Clients::admit_memo`] keeps between admissions of one key: the
/// key itself (so that its address names no other key while this lives),
/// where it was admitted, and what that rested on.
pub(crate) struct AdmitMemo {
    table: u64,
    key: ClientKey,
    evictions: u64,
    admitted: Admitted,
    seen_ms: u64,
}

/// What admission found for a task: the packed indices of its client's
/// entry and of its route's, and the table's refusal epoch when it looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub(crate) client: u32,
    pub(crate) route: u32,
    /// [`Clients::refusal_epoch`] as admission read it, plus one; 0 when
    /// there is no policy to look at again.
    pub(crate) epoch: u64,
}

impl Admitted {
    /// A task without a client.
    pub(crate) const NONE: Admitted = Admitted {
        client: NO_CLIENT,
        route: NO_CLIENT,
        epoch: 0,
    };

    /// Whether the task's first poll must look at the table again.
    #[inline]
    pub(crate) fn recheck(&self) -> bool {
        self.route != NO_CLIENT || self.epoch != 0
    }
}

/// The client table of one runtime.
pub(crate) struct Clients {
    map: RwLock<Map>,
    entries: Box<[Entry]>,
    slot_bits: u32,
    policy: Option<ClientPolicy>,
    store: Arc<dyn PolicyStore>,
    shares_usage: bool,
    epoch: Instant,
    /// Evictions so far (a metric too). Bumped under the write lock: a
    /// resolution remembered at an older count is used only once its
    /// entries are found to be still its key's.
    evicted: AtomicU64,
    /// Bumped whenever a key starts being refused (a cool-off begins, or a
    /// store says a quota is spent): a task admitted under an older value
    /// is looked at again when it is first polled.
    refusal_epoch: CachePadded<AtomicU64>,
    /// The most polls of one route that may be stuck past their budget.
    route_limit: u32,
    /// Tells this table from every other in the process, for the threads'
    /// caches of resolved keys.
    id: u64,
    /// [`Clients::now_ms`] as the watchdog read it at its last tick, or
    /// [`CLOCK_UNKNOWN`] while it is parked or stopped (or ticks too seldom
    /// for its reading to serve): admission reads this instead of the
    /// clock. See [`Clients::admission_now_ms`].
    coarse_ms: CachePadded<AtomicU64>,
}

/// [`Clients::coarse_ms`] when admission must read the clock itself.
const CLOCK_UNKNOWN: u64 = u64::MAX;

/// The longest watchdog interval whose ticks' readings admission uses.
/// An older reading would still be right (admission confirms a refusal by
/// the clock), but would send more refusals that have just ended to the
/// clock for that confirmation.
pub(crate) const COARSE_CLOCK_MAX_INTERVAL: Duration = Duration::from_millis(5);

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("capacity", &(self.entries.len() - 1))
            .field("policy", &self.policy)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Clients {
    /// A table of `capacity` entries (at least 1, at most 2^20), attached to
    /// `store`, refusing a route with `route_limit` polls stuck past their
    /// budget.
    pub(crate) fn start(
        capacity: usize,
        policy: Option<ClientPolicy>,
        store: Arc<dyn PolicyStore>,
        route_limit: usize,
    ) -> Arc<Self> {
        let capacity = capacity.clamp(1, 1 << 20);
        let slot_bits = usize::BITS - capacity.leading_zeros();
        let clients = Arc::new(Self {
            map: RwLock::new(Map {
                by_key: HashMap::default(),
                keys: vec![None; capacity + 1],
                used: 0,
                hand: 1,
            }),
            entries: (0..=capacity).map(|_| Entry::default()).collect(),
            slot_bits,
            policy,
            shares_usage: store.shares_usage(),
            store,
            epoch: Instant::now(),
            evicted: AtomicU64::new(0),
            refusal_epoch: CachePadded::new(AtomicU64::new(0)),
            route_limit: u32::try_from(route_limit.max(1)).unwrap_or(u32::MAX),
            id: NEXT_TABLE_ID.fetch_add(1, Relaxed),
            coarse_ms: CachePadded::new(AtomicU64::new(CLOCK_UNKNOWN)),
        });
        clients.store.attach(LocalPolicy(Arc::downgrade(&clients)));
        clients
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }

    /// Watchdog, at each tick: publishes `now` (its reading of the clock at
    /// the tick) for admission to use until the next tick.
    pub(crate) fn publish_now(&self, now: Instant) {
        let ms = millis(now.saturating_duration_since(self.epoch)).saturating_add(1);
        self.coarse_ms.store(ms, Relaxed);
    }

    /// Watchdog, before it parks or stops: no tick will publish the time
    /// until it is back, so admission reads the clock meanwhile.
    pub(crate) fn withdraw_now(&self) {
        self.coarse_ms.store(CLOCK_UNKNOWN, Relaxed);
    }

    /// The time admission judges by: the watchdog's reading at its last
    /// tick while it ticks (at most one interval old, more only while the
    /// watchdog's thread is kept off its core or busy in a long tick, as
    /// in a slow `OnTimeout` hook), else the clock's. Never ahead of the
    /// clock, so it admits only what the clock admits; [`Clients::admit`]
    /// reads the clock to confirm a refusal. It saves a clock read on
    /// every admitted spawn with a client.
    #[inline]
    fn admission_now_ms(&self) -> u64 {
        match self.coarse_ms.load(Relaxed) {
            CLOCK_UNKNOWN => self.now_ms(),
            ms => ms,
        }
    }

    fn pack(&self, slot: usize, generation: u32) -> u32 {
        let gen_mask = u32::MAX >> self.slot_bits;
        ((generation & gen_mask) << self.slot_bits) | slot as u32
    }

    /// The entry a packed index names, if the index is still current (its
    /// slot has not been given to another key since). The generation is
    /// read with Acquire: a slot changing hands clears its owner before it
    /// takes its new generation (see `insert`), so a caller that reads the
    /// owner after this never sees a new generation with the old owner.
    #[inline]
    fn entry(&self, idx: u32) -> Option<&Entry> {
        let slot = (idx & ((1 << self.slot_bits) - 1)) as usize;
        if slot == 0 {
            return None;
        }
        let e = self.entries.get(slot)?;
        let gen_mask = u32::MAX >> self.slot_bits;
        (e.generation.load(Ordering::Acquire) & gen_mask == idx >> self.slot_bits).then_some(e)
    }

    /// Spawn path: finds or assigns `key`'s entry (and its network's where
    /// the policy limits networks, and its route's), and refuses the spawn
    /// if any of them is cooling off or over its quota, or if the route has
    /// as many tasks stuck past their budget as it may. Reads only local
    /// state.
    pub(crate) fn admit(&self, key: &ClientKey) -> Result<Admitted, Refusal> {
        // Read before the entries: a refusal that starts after this read
        // bumps the epoch, and the first poll looks again.
        let epoch = self.admission_epoch();
        let now = self.admission_now_ms();
        let (client, route) = self.resolve(key, now);
        // Every refusal holds while some time is still ahead (a cool-off's
        // or a spent quota's end), so a reading behind the clock admits
        // only what the clock admits. It may refuse what the clock no
        // longer does: a refusal is confirmed, and its time left measured,
        // by the clock's own reading, so none ends late or says it lasts
        // longer than it does.
        if self.find_refusal(client, route, now).is_some() {
            if let Some(r) = self.check(client, route, key, self.now_ms(), true) {
                return Err(r);
            }
        }
        Ok(Admitted {
            client,
            route,
            epoch,
        })
    }

    /// As [`admit`](Self::admit), for a caller that admits the same key
    /// again and again (an inline scope reused by one connection's
    /// requests, `task::InlineScope`), with `memo` kept between the calls.
    /// While the memo is the key's and nothing it rests on has changed (no
    /// eviction since, no refusal begun since, no policy with a CPU quota,
    /// which can start refusing without a new refusal epoch), the key is
    /// admitted as before: its route's stuck tasks are looked at, its
    /// entries marked seen once a millisecond, and nothing else is read.
    pub(crate) fn admit_memo(
        &self,
        key: &ClientKey,
        memo: &mut Option<AdmitMemo>,
    ) -> Result<Admitted, Refusal> {
        if let Some(m) = memo.as_mut().filter(|m| self.memo_holds(m, key)) {
            if let Some(r) = self.route_overdue(m.admitted.route, key, true) {
                return Err(r);
            }
            let now = self.admission_now_ms();
            if now == m.seen_ms {
                return Ok(m.admitted);
            }
            let want_net = self.wants_network(key);
            if self
                .touch(m.admitted.client, m.admitted.route, want_net, now)
                .is_some()
            {
                m.seen_ms = now;
                return Ok(m.admitted);
            }
        }
        // Read before the admission: an eviction after this read fails the
        // memo's next use.
        let evictions = self.evicted.load(Ordering::Acquire);
        let admitted = self.admit(key);
        *memo = match &admitted {
            Ok(a) if self.memo_allowed() => Some(AdmitMemo {
                table: self.id,
                key: key.clone(),
                evictions,
                admitted: *a,
                seen_ms: self.admission_now_ms(),
            }),
            _ => None,
        };
        admitted
    }

    /// [`Clients::refusal_epoch`] as an admission records it: plus one,
    /// or 0 when there is no policy to look at again.
    #[inline]
    fn admission_epoch(&self) -> u64 {
        match self.policy {
            Some(_) => self.refusal_epoch.load(Ordering::Acquire) + 1,
            None => 0,
        }
    }

    /// Whether `key`'s entries include its network's: only IP keys have
    /// one, and only a policy with a network level looks at it. Checked
    /// without building the network's key.
    #[inline]
    fn wants_network(&self, key: &ClientKey) -> bool {
        self.policy.is_some_and(|p| p.network.is_some()) && key.namespace() == Namespace::Ip
    }

    /// Whether `m`, a memo of admitting `key`, still stands.
    #[inline]
    fn memo_holds(&self, m: &AdmitMemo, key: &ClientKey) -> bool {
        m.table == self.id
            && m.admitted.epoch == self.admission_epoch()
            && ClientKey::ptr_eq(&m.key, key)
            && self.evicted.load(Ordering::Acquire) == m.evictions
    }

    /// No level of the policy has a CPU quota: a quota spent by the time
    /// charged to a key refuses it without a new refusal epoch.
    fn memo_allowed(&self) -> bool {
        self.policy.as_ref().is_none_or(|p| {
            p.cpu_quota.is_none()
                && p.network.is_none_or(|l| l.cpu_quota.is_none())
                && p.route.is_none_or(|l| l.cpu_quota.is_none())
        })
    }

    /// First poll of a task admitted as `admitted`: refuses it if its route
    /// has reached its limit of stuck tasks since, or (when a refusal
    /// started since its admission) if its client, network or route is now
    /// refused. Without a new refusal this is two relaxed loads, and one
    /// more for a task with a route; no lock, no clock.
    pub(crate) fn readmit(&self, admitted: Admitted, key: Option<&ClientKey>) -> Option<Refusal> {
        let key = key?;
        if let Some(r) = self.route_overdue(admitted.route, key, true) {
            return Some(r);
        }
        if admitted.epoch == 0 || self.admission_epoch() == admitted.epoch {
            return None;
        }
        self.check(admitted.client, admitted.route, key, self.now_ms(), true)
    }

    /// How long `key` is still refused, if it is. A read only: it assigns
    /// no entry and counts no refusal.
    pub(crate) fn peek(&self, key: &ClientKey) -> Option<Refusal> {
        let (idx, route) = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            let idx = map.by_key.get(key).copied()?;
            let route = key
                .route_ref()
                .and_then(|r| map.by_key.get(r).copied())
                .unwrap_or(NO_CLIENT);
            (idx, route)
        };
        self.check(idx, route, key, self.now_ms(), false)
    }

    /// Refuses a task of the route at `route` if the route has its limit of
    /// tasks stuck past their budget.
    #[inline]
    fn route_overdue(&self, route: u32, key: &ClientKey, count: bool) -> Option<Refusal> {
        let found = self.overdue(route)?;
        self.refusal(found, key, count)
    }

    /// The route at `route`, if it has as many tasks stuck past their
    /// budget as it may. Builds nothing.
    #[inline]
    fn overdue(&self, route: u32) -> Option<Found<'_>> {
        let e = self.entry(route)?;
        let overdue = e.overdue.load(Relaxed);
        (overdue >= self.route_limit).then_some(Found::Overdue(e, overdue))
    }

    fn check(
        &self,
        idx: u32,
        route: u32,
        key: &ClientKey,
        now: u64,
        count: bool,
    ) -> Option<Refusal> {
        let found = self.find_refusal(idx, route, now)?;
        self.refusal(found, key, count)
    }

    /// What refuses the key at `idx` (with its route at `route`) at `now`,
    /// if anything: the route's stuck tasks, else the client's, its
    /// network's or its route's cool-off or quota. Builds nothing.
    fn find_refusal(&self, idx: u32, route: u32, now: u64) -> Option<Found<'_>> {
        if let Some(found) = self.overdue(route) {
            return Some(found);
        }
        let policy = self.policy.as_ref()?;
        let e = self.entry(idx)?;
        if let Some(why) = e.refusal(policy.level(e.level()).as_ref(), now) {
            return Some(Found::Entry(e, why, Level::Client));
        }
        if let Some(net) = self.parent_of(e) {
            if let Some(why) = net.refusal(policy.network.as_ref(), now) {
                return Some(Found::Entry(net, why, Level::Network));
            }
        }
        if policy.route.is_some() {
            let e = self.entry(route)?;
            if let Some(why) = e.refusal(policy.route.as_ref(), now) {
                return Some(Found::Entry(e, why, Level::Route));
            }
        }
        None
    }

    /// The refusal `found` for `key`, counted on its entry if `count`.
    fn refusal(&self, found: Found<'_>, key: &ClientKey, count: bool) -> Option<Refusal> {
        let (e, refusal) = match found {
            Found::Overdue(e, overdue) => (
                e,
                Refusal::RouteOverdue {
                    route: key.route_key()?,
                    overdue,
                    limit: self.route_limit,
                },
            ),
            Found::Entry(e, why, level) => {
                let who = match level {
                    Level::Client => key.without_route(),
                    Level::Network => key.network()?,
                    Level::Route => key.route_key()?,
                };
                (e, why.into_refusal(who))
            }
        };
        if count {
            e.refused.fetch_add(1, Relaxed);
        }
        Some(refusal)
    }

    /// Watchdog: a task of the route at `route` overran its budget and its
    /// poll still runs. Cannot panic.
    pub(crate) fn overdue_start(&self, route: u32) {
        if let Some(e) = self.entry(route) {
            e.overdue.fetch_add(1, Relaxed);
        }
    }

    /// The overrunning poll counted by `overdue_start` has returned.
    pub(crate) fn overdue_end(&self, route: u32) {
        if let Some(e) = self.entry(route) {
            let _ = e
                .overdue
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Finds or assigns the entry of `key`, with its network link where
    /// the policy limits networks, and the entry of its route if it has
    /// one. Returns both packed indices. A key's route is not part of its
    /// identity, so the client's lookup needs no key of its own.
    fn resolve(&self, key: &ClientKey, now: u64) -> (u32, u32) {
        let want_net = self.wants_network(key);
        // Read before the lookup: a resolution made below, after an
        // eviction this read missed, is checked when next used.
        let evictions = self.evicted.load(Ordering::Acquire);
        // A remembered resolution stands as it is while nothing has been
        // evicted since; after that, while its entries are still the key's.
        let fresh = |&(found, at): &((u32, u32), u64)| at == evictions || self.owned(found, key);
        // The key's own memory first (a server's long-lived keys), then
        // this thread's few recent keys (keys made anew for each spawn).
        let cached = match key.resolution(self.id).filter(fresh) {
            Some((found, at)) => {
                if at != evictions {
                    key.remember_resolution(self.id, evictions, found);
                }
                Some(found)
            }
            None => resolved::get(self.id, key).filter(fresh).map(|(found, _)| {
                key.remember_resolution(self.id, evictions, found);
                found
            }),
        };
        if let Some((i, route)) = cached {
            if let Some(found) = self.touch(i, route, want_net, now) {
                return found;
            }
        }
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(&i) = map.by_key.get(key) {
                let route = match key.route_ref() {
                    None => Some(NO_CLIENT),
                    Some(r) => map.by_key.get(r).copied(),
                };
                if let Some(found) = route.and_then(|r| self.touch(i, r, want_net, now)) {
                    resolved::put(self.id, evictions, key, found);
                    key.remember_resolution(self.id, evictions, found);
                    return found;
                }
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let net = if want_net {
            key.network().map(|n| {
                let owner = n.fingerprint();
                (self.insert(&mut map, n, now, NO_CLIENT), owner)
            })
        } else {
            None
        };
        let keep = net.map_or(NO_CLIENT, |(net, _)| net);
        let idx = self.insert(&mut map, key.without_route(), now, keep);
        if let Some((net, owner)) = net {
            if let Some(e) = self.entry(idx) {
                e.parent_owner.store(owner, Relaxed);
                e.parent.store(net, Relaxed);
            }
        }
        let route = match key.route_key() {
            Some(route) => self.insert(&mut map, route, now, idx),
            None => NO_CLIENT,
        };
        (idx, route)
    }

    /// Whether the entries at `found` (a key's and its route's, as a cache
    /// remembers them) are still `key`'s: each slot's generation as the
    /// index has it, and the fingerprint of the key in it `key`'s. A slot
    /// given to another key since fails the first, unless its generation
    /// has wrapped round; the second holds only for that other key with a
    /// 64-bit hash equal to `key`'s under the process's random hash key.
    #[inline]
    fn owned(&self, (idx, route): (u32, u32), key: &ClientKey) -> bool {
        self.held_by(idx, key.fingerprint()).is_some()
            && match key.route_ref() {
                None => route == NO_CLIENT,
                Some(r) => self.held_by(route, r.fingerprint()).is_some(),
            }
    }

    /// The entry `idx` names, if its slot still has the generation the
    /// index has and its owner is `owner` (never 0: no owner, as while the
    /// slot changes hands, is nobody's).
    #[inline]
    fn held_by(&self, idx: u32, owner: u64) -> Option<&Entry> {
        self.entry(idx)
            .filter(|e| owner != 0 && e.owner.load(Ordering::Acquire) == owner)
    }

    /// The network entry `e` is linked to, while it is still the network's
    /// it was linked to: its generation as the link has it, and its owner
    /// the one it had then.
    #[inline]
    fn parent_of(&self, e: &Entry) -> Option<&Entry> {
        match e.parent.load(Relaxed) {
            NO_CLIENT => None,
            net => self.held_by(net, e.parent_owner.load(Relaxed)),
        }
    }

    /// Marks the entries of a key found at `idx` (with its route at `route`)
    /// as seen, and returns the pair, unless one of them has been given to
    /// another key since, or the key's network entry is wanted but not yet
    /// linked: the caller then resolves the key under the write lock.
    #[inline]
    fn touch(&self, idx: u32, route: u32, want_net: bool, now: u64) -> Option<(u32, u32)> {
        let e = self.entry(idx)?;
        e.seen(now);
        let linked = self.parent_of(e);
        if let Some(net) = linked {
            net.seen(now);
        }
        if route != NO_CLIENT {
            self.entry(route)?.seen(now);
        }
        (linked.is_some() || !want_net).then_some((idx, route))
    }

    /// Finds or inserts `key` under the write lock, evicting if the table is
    /// full (never the entry `keep` names).
    fn insert(&self, map: &mut Map, key: ClientKey, now: u64, keep: u32) -> u32 {
        if let Some(&i) = map.by_key.get(&key) {
            if let Some(e) = self.entry(i) {
                e.seen(now);
                return i;
            }
        }
        let capacity = self.entries.len() - 1;
        let keep_slot = (keep & ((1 << self.slot_bits) - 1)) as usize;
        let slot = if map.used < capacity {
            map.used += 1;
            map.used
        } else {
            let victim = self.victim(map, now, keep_slot);
            if let Some(old) = map.keys[victim].take() {
                map.by_key.remove(&old);
            }
            // Resolutions remembered before this are checked from here on.
            self.evicted.fetch_add(1, Ordering::Release);
            victim
        };
        let e = &self.entries[slot];
        // No owner while the slot changes hands, then a new generation:
        // tasks still holding the old index charge nothing from here on,
        // and a remembered resolution that the new generation matches
        // (one that has wrapped round) finds no owner, or the new one.
        e.owner.store(0, Relaxed);
        let generation = e.generation.load(Relaxed).wrapping_add(1);
        e.generation.store(generation, Ordering::Release);
        e.reset(level_of(&key), now);
        // Resolutions cached with the evicted key fail on the generation,
        // and on this if it has wrapped round. A key that came into a free
        // slot changed nobody's entries: every other cached resolution
        // stands.
        e.owner.store(key.fingerprint(), Ordering::Release);
        let idx = self.pack(slot, generation);
        map.keys[slot] = Some(key.clone());
        map.by_key.insert(key, idx);
        idx
    }

    /// The slot to evict: the lowest class, then the least recently seen,
    /// within a sample that widens while it finds nothing idle.
    fn victim(&self, map: &mut Map, now: u64, keep_slot: usize) -> usize {
        let capacity = self.entries.len() - 1;
        let mut best: Option<(u8, u64, usize)> = None;
        for n in 0..capacity {
            if n >= EVICTION_SAMPLE && best.is_some_and(|b| b.0 == 0) {
                break;
            }
            let slot = (map.hand + n - 1) % capacity + 1;
            if slot == keep_slot {
                continue;
            }
            let e = &self.entries[slot];
            let rank = (e.class(now), e.last_seen_ms.load(Relaxed), slot);
            if best.is_none_or(|b| (rank.0, rank.1) < (b.0, b.1)) {
                best = Some(rank);
            }
        }
        let slot = best.map_or(if keep_slot == 1 && capacity > 1 { 2 } else { 1 }, |b| b.2);
        map.hand = slot % capacity + 1;
        slot
    }

    /// Watchdog: adds sampled busy time to a client (and its network).
    pub(crate) fn add_busy(&self, idx: u32, d: Duration) {
        let Some(e) = self.entry(idx) else {
            return;
        };
        let ns = nanos(d);
        e.busy_ns.fetch_add(ns, Relaxed);
        if self.shares_usage {
            e.unreported_ns.fetch_add(ns, Relaxed);
        }
        let Some(policy) = &self.policy else {
            return;
        };
        let now = self.now_ms();
        e.seen(now);
        if let Some(q) = policy.cpu_quota {
            e.charge_window(ns, now, millis(q.window()));
        }
        if let Some(net) = self.parent_of(e) {
            net.busy_ns.fetch_add(ns, Relaxed);
            net.seen(now);
            if self.shares_usage {
                net.unreported_ns.fetch_add(ns, Relaxed);
            }
            if let Some(q) = policy.network.and_then(|n| n.cpu_quota) {
                net.charge_window(ns, now, millis(q.window()));
            }
        }
    }

    /// Records a timeout against a client, its network and its route.
    /// Returns the client's cool-off if this strike started one. Cannot
    /// panic. Waits for the table's lock: the watchdog uses
    /// [`try_strike`](Self::try_strike).
    pub(crate) fn strike(&self, idx: u32, key: Option<&ClientKey>) -> Option<Duration> {
        // The read lock keeps eviction out: the entry checked is the entry
        // charged.
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        self.strike_locked(&map, idx, key)
    }

    /// Watchdog: [`strike`](Self::strike), unless the table's lock is
    /// taken: then `Err`, and the watchdog tries again at its next tick.
    /// With std's Linux lock, `try_read` fails while a writer (a new
    /// client's admission) holds the lock or is queued for it, or has just
    /// released it to waiting threads. A writer's thread may be one the
    /// watchdog has moved to the idle class; waiting for it would hold up
    /// every timeout behind it. A strike kept for later is lost if the
    /// client's entry is evicted meanwhile, as it would be had the
    /// eviction come first.
    pub(crate) fn try_strike(
        &self,
        idx: u32,
        key: Option<&ClientKey>,
    ) -> Result<Option<Duration>, WouldBlock> {
        // No entry (no client, or one evicted): nothing to strike, and
        // nothing to wait for. Generations only move forward, so a stale
        // index stays stale.
        if self.entry(idx).is_none() {
            return Ok(None);
        }
        let map = match self.map.try_read() {
            Ok(map) => map,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(WouldBlock),
        };
        Ok(self.strike_locked(&map, idx, key))
    }

    fn strike_locked(&self, map: &Map, idx: u32, key: Option<&ClientKey>) -> Option<Duration> {
        let e = self.entry(idx)?;
        e.timeouts.fetch_add(1, Relaxed);
        let policy = self.policy?;
        let now = self.now_ms();
        let client_key = key.map(ClientKey::without_route);
        let started = self.strike_level(e, client_key.as_ref(), policy.level(Level::Client), now);
        if let Some(net) = self.parent_of(e) {
            net.timeouts.fetch_add(1, Relaxed);
            let net_key = key.and_then(ClientKey::network);
            if let Some(c) = self.strike_level(net, net_key.as_ref(), policy.network, now) {
                // From the watchdog's thread, by curfew's log thread (see
                // `crate::deferred`); from a hosted task's, at once.
                crate::deferred::emit(move || {
                    tracing::warn!(
                        target: "curfew",
                        network = net_key.as_ref().map(|k| k.as_str()).unwrap_or(""),
                        cool_off_ms = millis(c),
                        "network refused for a cool-off after repeated timeouts"
                    );
                });
            }
        }
        if let Some(route) = key.and_then(ClientKey::route_key) {
            if let Some(r) = map.by_key.get(&route).and_then(|&i| self.entry(i)) {
                r.timeouts.fetch_add(1, Relaxed);
                if let Some(c) = self.strike_level(r, Some(&route), policy.route, now) {
                    crate::deferred::emit(move || {
                        tracing::warn!(
                            target: "curfew",
                            route = route.as_str(),
                            cool_off_ms = millis(c),
                            "route breaker open: refused for a cool-off after repeated timeouts"
                        );
                    });
                }
            }
        }
        started
    }

    fn strike_level(
        &self,
        e: &Entry,
        key: Option<&ClientKey>,
        limits: Option<LevelPolicy>,
        now: u64,
    ) -> Option<Duration> {
        let limits = limits?;
        if let Some(key) = key {
            // The watchdog's overrun path must not unwind: a store that
            // panics loses this strike's sharing, nothing else.
            let shared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.store.strike(key, &limits)
            }));
            if shared.is_err() {
                let store = format!("{:?}", self.store);
                crate::deferred::emit(move || {
                    tracing::error!(target: "curfew", store = %store, "the policy store panicked on a strike");
                });
            }
        }
        if limits.strikes == 0 {
            return None;
        }
        let strikes = e.strikes.fetch_add(1, Relaxed).saturating_add(1);
        if strikes < limits.strikes {
            return None;
        }
        e.strikes.store(0, Relaxed);
        // Saturating: `Duration::MAX` means "for good", never a wrap
        // (release) or a panic on the watchdog thread (debug).
        let until = now.saturating_add(millis(limits.cool_off));
        e.cooling_until_ms.fetch_max(until, Relaxed);
        // Tasks already queued for this key are looked at again.
        self.refusal_epoch.fetch_add(1, Ordering::Release);
        Some(limits.cool_off)
    }

    /// How long `key` is still refused, for any reason, if it is.
    pub(crate) fn peek_cooling_off(&self, key: &ClientKey) -> Option<Duration> {
        self.peek(key).and_then(|r| r.retry_after())
    }

    /// Metrics: every entry, with the number of evictions so far.
    pub(crate) fn snapshot(&self) -> (Vec<ClientMetrics>, u64) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let now = self.now_ms();
        let clients = map
            .keys
            .iter()
            .enumerate()
            .filter_map(|(slot, key)| {
                let key = key.as_ref()?;
                let s = &self.entries[slot];
                Some(ClientMetrics {
                    client: key.clone(),
                    poll_time: Duration::from_nanos(s.busy_ns.load(Relaxed)),
                    timeouts: s.timeouts.load(Relaxed),
                    strikes: s.strikes.load(Relaxed),
                    refused: s.refused.load(Relaxed),
                    cooling_off: s.cooling_until_ms.load(Relaxed) > now,
                })
            })
            .collect();
        (clients, self.evicted.load(Relaxed))
    }
}

/// The runtime's own policy state, as a [`PolicyStore`] sees it: what the
/// store learns from other instances goes in here, and the CPU time the
/// watchdog attributed comes out, in batches.
///
/// It holds the table weakly: once the runtime is gone, every call is a
/// no-op.
#[derive(Clone)]
pub struct LocalPolicy(Weak<Clients>);

impl fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LocalPolicy")
            .field(&self.0.upgrade().is_some())
            .finish()
    }
}

impl LocalPolicy {
    /// Whether the runtime is still running.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// The runtime's policy, if it has one.
    pub fn policy(&self) -> Option<ClientPolicy> {
        self.0.upgrade()?.policy
    }

    /// Refuses `key` (a client, a network or a route) for `remaining` from
    /// now, as another instance decided. A longer local cool-off is kept.
    pub fn cool_off(&self, key: &ClientKey, remaining: Duration) {
        self.set(key, remaining, |e| &e.cooling_until_ms);
    }

    /// Refuses `key` for `remaining` because its CPU quota is spent across
    /// instances.
    pub fn quota_spent(&self, key: &ClientKey, remaining: Duration) {
        self.set(key, remaining, |e| &e.spent_until_ms);
    }

    fn set(&self, key: &ClientKey, remaining: Duration, field: fn(&Entry) -> &AtomicU64) {
        let Some(t) = self.0.upgrade() else {
            return;
        };
        let now = t.now_ms();
        let key = key.without_route();
        let idx = {
            let mut map = t.map.write().unwrap_or_else(|e| e.into_inner());
            t.insert(&mut map, key, now, NO_CLIENT)
        };
        if let Some(e) = t.entry(idx) {
            field(e).fetch_max(now.saturating_add(millis(remaining)), Relaxed);
            t.refusal_epoch.fetch_add(1, Ordering::Release);
        }
    }

    /// The keys cooling off now, with the time each has left.
    pub fn cooling(&self) -> Vec<(ClientKey, Duration)> {
        let Some(t) = self.0.upgrade() else {
            return Vec::new();
        };
        let now = t.now_ms();
        let map = t.map.read().unwrap_or_else(|e| e.into_inner());
        map.keys
            .iter()
            .enumerate()
            .filter_map(|(slot, key)| {
                let until = t.entries[slot].cooling_until_ms.load(Relaxed);
                (until > now).then(|| (key.clone(), Duration::from_millis(until - now)))
            })
            .filter_map(|(k, d)| Some((k?, d)))
            .collect()
    }

    /// Takes the CPU time charged since the last call, per key, with the
    /// quota that applies to it. Empty unless the store
    /// [shares usage](PolicyStore::shares_usage).
    pub fn drain_usage(&self) -> Vec<Usage> {
        let Some(t) = self.0.upgrade() else {
            return Vec::new();
        };
        let map = t.map.read().unwrap_or_else(|e| e.into_inner());
        map.keys
            .iter()
            .enumerate()
            .filter_map(|(slot, key)| {
                let key = key.as_ref()?;
                let e = &t.entries[slot];
                if e.unreported_ns.load(Relaxed) == 0 {
                    return None;
                }
                let cpu = Duration::from_nanos(e.unreported_ns.swap(0, Relaxed));
                let quota: Option<CpuQuota> = t
                    .policy
                    .and_then(|p| p.level(e.level()))
                    .and_then(|l| l.cpu_quota);
                Some(Usage {
                    key: key.clone(),
                    cpu,
                    quota,
                })
            })
            .collect()
    }
}

#[cfg(all(test, not(curfew_loom)))]
mod tests {
    use super::*;
    use crate::policy::store::MemoryStore;

    fn table(capacity: usize) -> Arc<Clients> {
        Clients::start(capacity, None, Arc::new(MemoryStore), usize::MAX)
    }

    fn holds(t: &Clients, key: &ClientKey) -> bool {
        t.map.read().unwrap().by_key.contains_key(key)
    }

    #[test]
    fn a_cached_resolution_follows_its_key_through_an_eviction() {
        let t = table(1);
        let (a, b) = (ClientKey::id("a"), ClientKey::id("b"));
        let first = t.admit(&a).unwrap().client;
        // Resolved again from this thread's cache.
        assert_eq!(t.admit(&a).unwrap().client, first);
        let taken = t.admit(&b).unwrap().client;
        assert!(holds(&t, &b) && !holds(&t, &a));
        // Even if `b`'s slot generation wraps round to the one `a` was
        // cached under, `a` must not resolve to `b`'s entry.
        let slot = (taken & ((1 << t.slot_bits) - 1)) as usize;
        let gen_mask = u32::MAX >> t.slot_bits;
        t.entries[slot]
            .generation
            .store(first >> t.slot_bits & gen_mask, Relaxed);
        let again = t.admit(&a).unwrap().client;
        assert!(
            holds(&t, &a) && !holds(&t, &b),
            "`a` resolved to `b`'s entry"
        );
        assert_ne!(again, first);
    }

    #[test]
    fn admission_judges_by_the_published_tick_and_the_clock_confirms_a_refusal() {
        let policy = ClientPolicy::new(1, Duration::from_millis(50));
        let t = Clients::start(16, Some(policy), Arc::new(MemoryStore), usize::MAX);
        let a = ClientKey::id("a");
        let idx = t.admit(&a).unwrap().client;
        // The watchdog's last reading comes well before the cool-off began.
        t.publish_now(Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.strike(idx, Some(&a)), Some(Duration::from_millis(50)));
        match t.admit(&a) {
            Err(Refusal::ClientCoolingOff { remaining, .. }) => assert!(
                remaining <= Duration::from_millis(50),
                "time left {remaining:?} measured from the old reading"
            ),
            other => panic!("refused while cooling off, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(80));
        // Over by the clock, not by the old reading: the clock's word holds.
        assert!(t.admit(&a).is_ok(), "the old reading kept the refusal");
        assert!(t.peek(&a).is_none(), "a query reads the clock");
        // The watchdog parks: admission reads the clock.
        t.withdraw_now();
        let idx = t.admit(&a).unwrap().client;
        t.strike(idx, Some(&a));
        assert!(t.admit(&a).is_err(), "refused while cooling off");
        // A reading is trusted when it admits.
        t.publish_now(Instant::now() + Duration::from_millis(60));
        assert!(t.admit(&a).is_ok(), "a reading past the cool-off admits");
    }

    #[test]
    fn a_key_remembers_where_it_was_found_for_every_thread_until_its_entry_goes() {
        let t = table(4);
        let a = ClientKey::id("a").with_route("/x");
        let first = t.admit(&a).unwrap();
        let found = (first.client, first.route);
        // Found again through the map, which remembers it in the key.
        let again = t.admit(&a).unwrap();
        assert_eq!((again.client, again.route), found);
        assert_eq!(a.resolution(t.id).map(|(f, _)| f), Some(found));
        // Another thread (its own cache empty) takes the key's memory, and
        // a clone of the key shares it.
        let (t2, a2) = (t.clone(), a.clone());
        let other = std::thread::spawn(move || t2.admit(&a2).unwrap())
            .join()
            .unwrap();
        assert_eq!((other.client, other.route), found);
        // Another table's memory is not this one's.
        assert_eq!(a.resolution(t.id + 1), None);
        // Found from its memory, not the map: admitted with the map
        // hiding it (which would give it a new entry), then put back.
        let from_memory = |t: &Clients| {
            let client = a.without_route();
            let idx = t.map.write().unwrap().by_key.remove(&client).unwrap();
            let admitted = t.admit(&a).unwrap();
            t.map.write().unwrap().by_key.insert(client, idx);
            admitted
        };
        // Keys coming into free slots leave it standing...
        t.admit(&ClientKey::id("b")).unwrap();
        assert!(t.owned(found, &a), "a new key in a free slot unseated `a`");
        assert_eq!(from_memory(&t), first, "a new key emptied `a`'s memory");
        // ... and so do evictions of other keys' entries: `b`, the least
        // recently seen, goes to make room for `d`.
        std::thread::sleep(Duration::from_millis(5));
        t.admit(&a).unwrap();
        for who in ["c", "d"] {
            t.admit(&ClientKey::id(who)).unwrap();
        }
        assert!(holds(&t, &a.without_route()) && !holds(&t, &ClientKey::id("b")));
        assert!(
            t.owned(found, &a),
            "an eviction of another key unseated `a`"
        );
        assert_eq!(from_memory(&t), first, "an eviction emptied `a`'s memory");
        // Once its own entry goes to another key, the memory is not used.
        for who in ["f", "g", "h", "i"] {
            std::thread::sleep(Duration::from_millis(2));
            t.admit(&ClientKey::id(who)).unwrap();
        }
        assert!(!holds(&t, &a.without_route()));
        assert!(!t.owned(found, &a));
        let after = t.admit(&a).unwrap();
        assert!(holds(&t, &a.without_route()) && t.owned((after.client, after.route), &a));
        // Equal keys made apart have memories of their own.
        let fresh = ClientKey::id("a").with_route("/x");
        assert_eq!(fresh.resolution(t.id), None);
    }

    #[test]
    fn a_network_link_is_not_followed_once_its_slot_is_another_networks() {
        let policy = ClientPolicy::new(100, Duration::from_secs(60))
            .network(LevelPolicy::new(1, Duration::from_secs(60)));
        let t = Clients::start(16, Some(policy), Arc::new(MemoryStore), usize::MAX);
        let ip = |s: &str| ClientKey::ip(s.parse().unwrap());
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let idx = t.admit(&a).unwrap().client;
        t.strike(idx, Some(&a));
        assert!(
            matches!(t.admit(&b), Err(Refusal::ClientCoolingOff { .. })),
            "the /24 cools off"
        );
        // The /24's slot goes to another network with the generation the
        // links hold (as after it has wrapped round), keeping its state.
        let net = t.entries[(idx & ((1 << t.slot_bits) - 1)) as usize]
            .parent
            .load(Relaxed);
        let other = ClientKey::ip("192.0.2.1".parse().unwrap())
            .network()
            .unwrap();
        {
            let mut map = t.map.write().unwrap();
            map.by_key.remove(&a.network().unwrap());
            map.by_key.insert(other.clone(), net);
        }
        let slot = (net & ((1 << t.slot_bits) - 1)) as usize;
        t.entries[slot].owner.store(other.fingerprint(), Relaxed);
        // `b`'s link names the other network's entry now: not followed, so
        // `b` is judged by a /24 entry of its own, which has no strikes.
        assert!(t.admit(&b).is_ok(), "judged by another network's entry");
    }

    #[test]
    fn a_remembered_index_whose_slot_went_to_another_key_is_not_used() {
        let t = table(8);
        let (a, b) = (ClientKey::id("a"), ClientKey::id("b"));
        t.admit(&a).unwrap();
        let at_b = t.admit(&b).unwrap();
        // `a` remembers `b`'s index (as it would if `b` had taken `a`'s
        // slot and the slot's generation had wrapped round to `a`'s).
        // (Remembered before some eviction, so that it is checked.)
        a.remember_resolution(t.id, u64::MAX, (at_b.client, NO_CLIENT));
        assert!(!t.owned((at_b.client, NO_CLIENT), &a));
        assert_ne!(t.admit(&a).unwrap().client, at_b.client);
        // A route's entry is checked too.
        let ax = ClientKey::id("a").with_route("/x");
        let by = ClientKey::id("b").with_route("/y");
        let found_ax = t.admit(&ax).unwrap();
        let found_by = t.admit(&by).unwrap();
        ax.remember_resolution(t.id, u64::MAX, (found_ax.client, found_by.route));
        assert!(!t.owned((found_ax.client, found_by.route), &ax));
        assert_eq!(t.admit(&ax).unwrap().route, found_ax.route);
    }

    #[test]
    fn keys_that_differ_only_in_route_resolve_apart() {
        let t = table(16);
        let a = ClientKey::id("a");
        let (x, y) = (a.with_route("/x"), a.with_route("/y"));
        let ax = t.admit(&x).unwrap();
        let ay = t.admit(&y).unwrap();
        assert_eq!(ax.client, ay.client);
        assert_ne!(ax.route, ay.route);
        // And again, now from the cache.
        assert_eq!(t.admit(&x).unwrap(), ax);
        assert_eq!(t.admit(&y).unwrap(), ay);
        assert_eq!(t.admit(&a).unwrap().route, NO_CLIENT);
    }

    #[test]
    fn two_tables_do_not_share_resolutions() {
        let (t1, t2) = (table(16), table(16));
        let (a, b) = (ClientKey::id("a"), ClientKey::id("b"));
        // `b` takes t2's first slot, so `a` gets different slots in each.
        t2.admit(&b).unwrap();
        let a1 = t1.admit(&a).unwrap().client;
        let a2 = t2.admit(&a).unwrap().client;
        assert_ne!(a1, a2);
        assert_eq!(t1.admit(&a).unwrap().client, a1);
        assert_eq!(t2.admit(&a).unwrap().client, a2);
    }

    /// A writer holding the table's lock (a new client's admission, on a
    /// thread the watchdog may have moved to the idle class) does not hold
    /// up the timeouts: the overrun is answered at once, and its strike is
    /// recorded at a later tick, once the lock is free. Here the task that
    /// overruns holds the lock itself for the whole of its poll.
    #[test]
    fn a_strike_waits_for_a_later_tick_not_the_watchdog_for_the_tables_lock() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;

        let rt = crate::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(100))
            .client_policy(crate::policy::ClientPolicy::new(1, Duration::from_secs(60)))
            .build()
            .unwrap();
        let key = ClientKey::id("mallory");
        let clients = rt.handle().shared.clients.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let spin_stop = stop.clone();
        let h =
            crate::task::Builder::new()
                .client(key.clone())
                .spawn_on(&rt.handle(), async move {
                    let _held = clients.map.write().unwrap();
                    // Runs past its budget, the lock held, until told to stop
                    // (20 s at most).
                    let t = std::time::Instant::now();
                    while !spin_stop.load(Relaxed) && t.elapsed() < Duration::from_secs(20) {
                        std::hint::spin_loop();
                    }
                });
        // Answered while the task holds the lock: the watchdog did not wait.
        let (tx, answered) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(futures::executor::block_on(h));
        });
        let res = answered.recv_timeout(Duration::from_secs(10));
        stop.store(true, Relaxed);
        let err = res
            .expect("the overrun was not answered while the table's lock was held")
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        // And the strike lands once the task has let the lock go.
        let start = std::time::Instant::now();
        while rt.handle().cooling_off(&key).is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            rt.handle().cooling_off(&key).is_some(),
            "the strike kept for later was never recorded"
        );
    }
}
