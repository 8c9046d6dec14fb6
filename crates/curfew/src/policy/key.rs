//! Client keys: who a task works for, in namespaces that cannot collide.

use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use crate::seqcell::SeqCell;

/// The namespace of a [`ClientKey`]. Keys in different namespaces never
/// compare equal, whatever their text: an id header that reads `127.0.0.1`
/// is not the peer address `127.0.0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// A peer IP address ([`ClientKey::ip`]).
    Ip,
    /// An application-level identity: a user id, an API key, a header
    /// ([`ClientKey::id`]).
    Id,
    /// A network prefix: /24 for IPv4, /64 for IPv6 ([`ClientKey::network`]).
    Net,
    /// A route ([`ClientKey::route`]), for the route-level breaker.
    Route,
}

impl Namespace {
    /// The prefix of the namespace in [`ClientKey::qualified`]: `ip`, `id`,
    /// `net` or `route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Ip => "ip",
            Namespace::Id => "id",
            Namespace::Net => "net",
            Namespace::Route => "route",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ip" => Namespace::Ip,
            "id" => Namespace::Id,
            "net" => Namespace::Net,
            "route" => Namespace::Route,
            _ => return None,
        })
    }
}

/// Identifies the client a task works for: a peer IP address, a user id,
/// an API key. Cheap to clone.
///
/// Keys are typed: [`ClientKey::ip`] and [`ClientKey::id`] build keys in
/// different [namespaces](Namespace), so an identity taken from a request
/// header can never name a peer address (and so can never get every
/// header-less client behind that address refused). `From<IpAddr>` and
/// `From<SocketAddr>` build IP keys; `From<&str>`, `From<String>` and
/// `From<u64>` build id keys.
///
/// A key may also carry the route its task serves
/// ([`with_route`](ClientKey::with_route)). The route is not part of the
/// client's identity in the client table; it lets a
/// [`ClientPolicy`](crate::policy::ClientPolicy) with a route level count
/// timeouts per route, so that a route that keeps timing out for many
/// clients trips a breaker.
///
/// ```
/// use std::net::IpAddr;
/// use curfew::policy::{ClientKey, Namespace};
///
/// let peer: IpAddr = "127.0.0.1".parse().unwrap();
/// let by_ip = ClientKey::ip(peer);
/// let by_header = ClientKey::id("127.0.0.1");
/// assert_ne!(by_ip, by_header);
/// assert_eq!(by_ip.qualified(), "ip:127.0.0.1");
/// assert_eq!(by_header.qualified(), "id:127.0.0.1");
/// assert_eq!(by_ip.network().unwrap().qualified(), "net:127.0.0.0/24");
/// assert_eq!(by_header.namespace(), Namespace::Id);
/// ```
///
/// Equality, hashing and ordering look at the namespace and the text only:
/// a key with a route is the same client as the key without it. A key
/// hashes as a keyed hash of the two, under a key chosen at random for the
/// process, so the same key hashes differently in another process.
///
/// ```
/// use curfew::policy::ClientKey;
///
/// let alice = ClientKey::id("alice");
/// assert_eq!(alice.with_route("/search"), alice);
/// ```
#[derive(Clone)]
pub struct ClientKey(Arc<Inner>);

struct Inner {
    ns: Namespace,
    text: Arc<str>,
    /// The address of an IP key, for its network prefix.
    ip: Option<IpAddr>,
    /// The route the task serves, as a route key.
    route: Option<ClientKey>,
    /// This key's (and its clones') last resolution in a client table: a
    /// server that keeps a connection's key finds its entries without the
    /// table's map, however many clients it serves (see
    /// [`ClientKey::resolution`]).
    /// As a `Resolution`'s three words (see [`ClientKey::resolution`]).
    resolved: SeqCell,
    /// [`ClientKey::fingerprint`], once worked out; 0 before.
    fingerprint: AtomicU64,
}

impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.ns == other.0.ns && self.0.text == other.0.text)
    }
}

impl Eq for ClientKey {}

/// Hashes the key's fingerprint: its namespace and text, hashed once per
/// key object under the process's random hash key (so hash values differ
/// between processes).
impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint());
    }
}

impl PartialOrd for ClientKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ClientKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.ns, &*self.0.text).cmp(&(other.0.ns, &*other.0.text))
    }
}

impl ClientKey {
    fn new(ns: Namespace, text: Arc<str>, ip: Option<IpAddr>) -> Self {
        ClientKey(Arc::new(Inner {
            ns,
            text,
            ip,
            route: None,
            resolved: SeqCell::new(),
            fingerprint: AtomicU64::new(0),
        }))
    }

    /// The key of a peer address. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) is the IPv4 client `a.b.c.d`.
    pub fn ip(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        Self::new(Namespace::Ip, ip.to_string().into(), Some(ip))
    }

    /// The key of an application-level identity (a user id, an API key, a
    /// header's value). It never equals an [`ip`](ClientKey::ip) key.
    pub fn id(id: impl AsRef<str>) -> Self {
        Self::new(Namespace::Id, id.as_ref().into(), None)
    }

    /// The key of the network an address belongs to: the first `bits` bits
    /// of `ip` (capped at 32 for IPv4 and 128 for IPv6).
    pub fn net(ip: IpAddr, bits: u8) -> Self {
        let ip = ip.to_canonical();
        let (masked, bits) = match ip {
            IpAddr::V4(v4) => {
                let bits = bits.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                (IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), bits)
            }
            IpAddr::V6(v6) => {
                let bits = bits.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                (IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), bits)
            }
        };
        Self::new(Namespace::Net, format!("{masked}/{bits}").into(), None)
    }

    /// The key of a route, for the route-level breaker.
    pub fn route(route: impl AsRef<str>) -> Self {
        Self::new(Namespace::Route, route.as_ref().into(), None)
    }

    /// This client, serving `route`. The route's entry in the client table
    /// counts the route's polls that are stuck past their budget (see
    /// [`Builder::max_overdue_per_route`](crate::Builder::max_overdue_per_route)),
    /// and its timeouts when the policy has a route level. The client's
    /// identity (and so its entry in the client table) does not change.
    pub fn with_route(&self, route: impl AsRef<str>) -> Self {
        self.with_route_key(&Self::route(route))
    }

    /// As [`with_route`](Self::with_route), with the route's key built
    /// once: a server that keeps its routes' keys pays one small allocation
    /// per request for this. A key of another namespace names the route by
    /// its text.
    pub fn with_route_key(&self, route: &ClientKey) -> Self {
        let route = match route.0.ns {
            Namespace::Route => route.without_route(),
            _ => Self::route(route.as_str()),
        };
        ClientKey(Arc::new(Inner {
            ns: self.0.ns,
            text: self.0.text.clone(),
            ip: self.0.ip,
            route: Some(route),
            resolved: SeqCell::new(),
            fingerprint: AtomicU64::new(self.0.fingerprint.load(Relaxed)),
        }))
    }

    /// Whether `a` and `b` are clones of one key (not only equal keys).
    #[inline]
    pub(crate) fn ptr_eq(a: &ClientKey, b: &ClientKey) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The entries the client table `table` last found for this key (or a
    /// clone of it), with the table's count of evictions then, if it was
    /// the last table to find it. The table uses them as they are while it
    /// has evicted nothing since, and checks that they are still this
    /// key's after that. Loads only (a sequence lock); a key being
    /// remembered on another thread at this moment just misses.
    #[inline]
    pub(crate) fn resolution(&self, table: u64) -> Option<((u32, u32), u64)> {
        let [t, evictions, found] = self.0.resolved.read()?;
        (t == table).then_some((((found >> 32) as u32, found as u32), evictions))
    }

    /// Remembers where `table` found this key, after `evictions` evictions
    /// (unless another thread is remembering it at this moment).
    #[inline]
    pub(crate) fn remember_resolution(&self, table: u64, evictions: u64, found: (u32, u32)) {
        let found = (u64::from(found.0) << 32) | u64::from(found.1);
        self.0.resolved.try_write([table, evictions, found]);
    }

    /// A 64-bit hash of the key's namespace and text (the client's
    /// identity, without its route) under a key chosen at random for the
    /// process, never 0: a client table's entry keeps its key's, so that
    /// an index cached with a key can be checked to still name that key's
    /// entry without the table's map, and the map hashes it as it is.
    /// Worked out when first needed, and kept by the key and its clones
    /// (two threads needing it at once may both work it out).
    #[inline]
    pub(crate) fn fingerprint(&self) -> u64 {
        match self.0.fingerprint.load(Relaxed) {
            0 => self.work_out_fingerprint(),
            f => f,
        }
    }

    /// Takes `equal`'s fingerprint, if this key has not worked out its own:
    /// a key made anew for each spawn, found in a thread's cache under an
    /// equal key made before, hashes nothing. `equal` must be the same
    /// identity (and route, if any); the caller has compared them.
    #[inline]
    pub(crate) fn adopt_fingerprint(&self, equal: &ClientKey) {
        debug_assert!(self == equal);
        if self.0.fingerprint.load(Relaxed) == 0 {
            self.0.fingerprint.store(equal.fingerprint(), Relaxed);
        }
        if let (Some(mine), Some(theirs)) = (&self.0.route, &equal.0.route) {
            mine.adopt_fingerprint(theirs);
        }
    }

    #[cold]
    fn work_out_fingerprint(&self) -> u64 {
        static HASHER: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let f = match HASHER
            .get_or_init(Default::default)
            .hash_one((self.0.ns, &*self.0.text))
        {
            0 => 1,
            f => f,
        };
        self.0.fingerprint.store(f, Relaxed);
        f
    }

    /// The network prefix of an IP key: /24 for IPv4, /64 for IPv6. `None`
    /// for other keys.
    pub fn network(&self) -> Option<ClientKey> {
        match self.0.ip? {
            ip @ IpAddr::V4(_) => Some(Self::net(ip, 24)),
            ip @ IpAddr::V6(_) => Some(Self::net(ip, 64)),
        }
    }

    /// The route this key's task serves, as a route key, if it was given
    /// one with [`with_route`](ClientKey::with_route).
    pub fn route_key(&self) -> Option<ClientKey> {
        self.0.route.clone()
    }

    /// The route key, borrowed.
    pub(crate) fn route_ref(&self) -> Option<&ClientKey> {
        self.0.route.as_ref()
    }

    /// The route name given with [`with_route`](ClientKey::with_route).
    pub fn route_name(&self) -> Option<&str> {
        self.0.route.as_ref().map(ClientKey::as_str)
    }

    /// The same client without its route: the key of its entry in the
    /// client table. A clone when the key carries no route.
    pub fn without_route(&self) -> ClientKey {
        if self.0.route.is_none() {
            self.clone()
        } else {
            let key = Self::new(self.0.ns, self.0.text.clone(), self.0.ip);
            // The same identity: the same fingerprint.
            let f = self.0.fingerprint.load(Relaxed);
            key.0.fingerprint.store(f, Relaxed);
            key
        }
    }

    /// The key's namespace.
    pub fn namespace(&self) -> Namespace {
        self.0.ns
    }

    /// The key's text within its namespace: the address, the id, the
    /// prefix (`10.0.0.0/24`) or the route.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The key with its namespace, as a shared store names it:
    /// `ip:203.0.113.7`, `id:alice`, `net:203.0.113.0/24`, `route:/search`.
    /// The route a key carries is not part of it.
    pub fn qualified(&self) -> String {
        format!("{}:{}", self.0.ns.as_str(), self.0.text)
    }

    /// Parses [`qualified`](ClientKey::qualified) text back into a key.
    pub fn from_qualified(s: &str) -> Option<ClientKey> {
        let (ns, text) = s.split_once(':')?;
        Some(match Namespace::parse(ns)? {
            Namespace::Ip => Self::ip(text.parse().ok()?),
            Namespace::Id => Self::id(text),
            Namespace::Route => Self::route(text),
            Namespace::Net => {
                let (ip, bits) = text.split_once('/')?;
                let key = Self::net(ip.parse().ok()?, bits.parse().ok()?);
                // Only canonical prefixes: no host bits, no excess length.
                if key.as_str() != text {
                    return None;
                }
                key
            }
        })
    }
}

/// The key's text within its namespace, as [`ClientKey::as_str`].
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

/// The qualified key, with its route if it has one.
impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}:{}\"",
            self.0.ns.as_str(),
            self.0.text.escape_debug()
        )?;
        if let Some(r) = &self.0.route {
            write!(f, " on {:?}", r.as_str())?;
        }
        Ok(())
    }
}

/// An id key ([`ClientKey::id`]).
impl From<&str> for ClientKey {
    fn from(s: &str) -> Self {
        ClientKey::id(s)
    }
}

/// An id key ([`ClientKey::id`]).
impl From<String> for ClientKey {
    fn from(s: String) -> Self {
        ClientKey::new(Namespace::Id, s.into(), None)
    }
}

/// An IP key ([`ClientKey::ip`]).
impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        ClientKey::ip(ip)
    }
}

/// A socket address identifies its client by IP alone: one client may open
/// many connections from different ports.
impl From<SocketAddr> for ClientKey {
    fn from(addr: SocketAddr) -> Self {
        ClientKey::ip(addr.ip())
    }
}

/// An id key ([`ClientKey::id`]) of the number.
impl From<u64> for ClientKey {
    fn from(id: u64) -> Self {
        ClientKey::new(Namespace::Id, id.to_string().into(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_names_the_identity_whatever_the_route_or_the_making() {
        let a = ClientKey::id("10.0.0.1");
        let on_route = a.with_route("/x");
        let made_apart = ClientKey::id("10.0.0.1").with_route("/y");
        assert_eq!(a.fingerprint(), on_route.fingerprint());
        assert_eq!(a.fingerprint(), made_apart.fingerprint());
        assert_eq!(a.fingerprint(), on_route.without_route().fingerprint());
        // Another namespace with the same text, another text: others.
        let ip = ClientKey::ip("10.0.0.1".parse().unwrap());
        assert_ne!(a.fingerprint(), ip.fingerprint());
        assert_ne!(a.fingerprint(), ClientKey::id("10.0.0.2").fingerprint());
        assert_ne!(a.fingerprint(), 0);
        // Adopted from an equal key (and its route from the equal route),
        // as worked out.
        let (x, y) = (
            ClientKey::id("b").with_route("/r"),
            ClientKey::id("b").with_route("/r"),
        );
        y.adopt_fingerprint(&x);
        assert_eq!(y.0.fingerprint.load(Relaxed), x.fingerprint());
        let route = y.route_ref().unwrap();
        assert_eq!(
            route.0.fingerprint.load(Relaxed),
            ClientKey::route("/r").fingerprint()
        );
    }
}
