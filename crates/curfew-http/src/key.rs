//! Who a request is from: the client key a handler is spawned for.
//!
//! The key decides whose poll time a handler is charged to, whose strikes a
//! timeout adds to, and who is refused during a cool-off. It must therefore
//! be something the client cannot choose. By default it is the peer's IP
//! address ([`PeerIp`]). Behind a reverse proxy every peer is the proxy, so
//! [`TrustedProxies`] reads the address the proxy forwarded, but only from
//! proxies it was told to trust, and only the hop the nearest untrusted
//! party wrote.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use curfew::ClientKey;
use http::Request;
use http::header::{FORWARDED, HeaderName};
pub use ipnet::IpNet;

use crate::recent::{Recent, cached};

/// Finds the client behind a request.
///
/// Implemented by [`PeerIp`] (the default), [`TrustedProxies`], and
/// closures over a [`RequestHead`] wrapped in [`KeyFn`].
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The client behind `req`, or `None` to run its handler without a
    /// client (it is then never refused, and its timeouts strike no one).
    fn client_key<B>(&self, req: &Request<B>) -> Option<ClientKey>;
}

/// The peer's address, from the `ConnectInfo<SocketAddr>` extension that
/// [`serve`](crate::serve) (or axum's
/// `into_make_service_with_connect_info`) puts on every request.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// The key of an IP address: its canonical form, so that an IPv4 client
/// reaching a dual-stack socket (`::ffff:192.0.2.1`) is the same client as
/// over IPv4.
pub fn ip_key(ip: IpAddr) -> ClientKey {
    ClientKey::from(ip.to_canonical())
}

/// The default extractor: the peer's IP address. A client that opens many
/// connections is still one client.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    fn client_key<B>(&self, req: &Request<B>) -> Option<ClientKey> {
        peer_addr(req).map(|a| cached_ip_key(a.ip()))
    }
}

/// Peers' keys kept per thread, so that a request's key is a clone of a
/// key made once instead of a newly formatted address.
/// [`serve`](crate::serve) puts an HTTP/2 connection's peer in the cache of
/// the thread that polls the connection ([`prime_peer`]), so its requests
/// find it however many clients the thread serves (an HTTP/1 connection's
/// requests take the key the connection made, `line::Conn`); other keys
/// take the place of the oldest once the cache is full.
const PEERS_PER_THREAD: usize = 16;

thread_local! {
    static PEERS: std::cell::RefCell<Recent<(IpAddr, ClientKey), PEERS_PER_THREAD>> =
        const { std::cell::RefCell::new(Recent::new()) };
}

/// [`ip_key`] from this thread's cache of peers' keys.
pub(crate) fn cached_ip_key(ip: IpAddr) -> ClientKey {
    let ip = ip.to_canonical();
    cached(
        &PEERS,
        |(p, _)| *p == ip,
        || (ip, ClientKey::from(ip)),
        |(_, key)| key.clone(),
    )
}

/// Makes sure this thread's cache holds `key`, the key of the peer at `ip`
/// (canonical), before the connection's requests are read.
pub(crate) fn prime_peer(ip: IpAddr, key: &ClientKey) {
    cached(&PEERS, |(p, _)| *p == ip, || (ip, key.clone()), |_| ());
}

/// A key extractor from a closure over the request's head, for keys such as
/// an authenticated user id that an earlier layer put in the extensions.
///
/// ```
/// use curfew_http::{CurfewLayer, KeyFn};
///
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// let layer = CurfewLayer::new().key_extractor(KeyFn(|head: &curfew_http::RequestHead<'_>| {
///     head.extensions.get::<UserId>().map(|u| curfew::ClientKey::from(format!("user:{}", u.0)))
/// }));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct KeyFn<F>(pub F);

/// The parts of a request a [`KeyFn`] sees.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The URI.
    pub uri: &'a http::Uri,
    /// The headers.
    pub headers: &'a http::HeaderMap,
    /// The extensions, including `ConnectInfo<SocketAddr>`.
    pub extensions: &'a http::Extensions,
}

impl RequestHead<'_> {
    /// The peer's address, from `ConnectInfo<SocketAddr>`.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
    }
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Option<ClientKey> + Clone + Send + Sync + 'static,
{
    fn client_key<B>(&self, req: &Request<B>) -> Option<ClientKey> {
        (self.0)(&RequestHead {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        })
    }
}

/// Which header the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => FORWARDED,
        }
    }
}

/// The client behind trusted reverse proxies: the right-most address in
/// the forwarding header that is not itself a trusted proxy.
///
/// A proxy appends the address of the peer it got the request from to
/// whatever the request already carried, so the header reads, from left to
/// right: what the client claimed, then what each proxy saw. Only the
/// entries appended by trusted proxies are facts. Walking from the right,
/// the first address outside the trusted networks is the last hop the
/// trusted chain saw with its own eyes: that is the client.
///
/// Compared with tower_governor's `SmartIpKeyExtractor`, which reads
/// `X-Forwarded-For`, `X-Real-IP` and `Forwarded` from every peer and takes
/// the left-most address:
/// - the headers are read only when the peer itself is a trusted proxy, so
///   a client connecting directly cannot name any key it likes;
/// - the left-most entries, which the client writes itself, are never used
///   while an entry written by a trusted proxy says otherwise, so a client
///   behind the proxy cannot name a victim (to get it refused) or rotate
///   keys (to dodge its own strikes);
/// - only the one header the proxies are configured to write is read, so a
///   client cannot smuggle a second one past a proxy that does not strip it;
/// - an entry that does not parse (`unknown`, an obfuscated identifier, a
///   typo) stops the walk at the last trusted hop instead of being skipped,
///   so garbage cannot let the walk run on into client-written addresses.
///
/// ```
/// use curfew_http::{CurfewLayer, TrustedProxies};
///
/// let proxies = TrustedProxies::x_forwarded_for(["10.0.0.0/8".parse().unwrap()]);
/// let layer = CurfewLayer::new().key_extractor(proxies);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    proxies: Arc<[IpNet]>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts `X-Forwarded-For` from peers in `proxies`.
    pub fn x_forwarded_for(proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self::new(proxies, ForwardedHeader::XForwardedFor)
    }

    /// Trusts RFC 7239 `Forwarded` (its `for=` parameters) from peers in
    /// `proxies`.
    pub fn forwarded(proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self::new(proxies, ForwardedHeader::Forwarded)
    }

    /// Trusts `header` from peers in `proxies`.
    pub fn new(proxies: impl IntoIterator<Item = IpNet>, header: ForwardedHeader) -> Self {
        Self {
            proxies: proxies.into_iter().collect(),
            header,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's IP address, or `None` if the request has no peer
    /// address.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = peer_addr(req)?.ip().to_canonical();
        Some(self.walk(peer, req.headers()))
    }

    fn walk(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(client) {
            return client;
        }
        // Entries in order, over every line of the header: a proxy may add
        // a line of its own rather than extend the last one.
        let mut hops: Vec<&str> = Vec::new();
        for line in headers.get_all(self.header.name()) {
            let Ok(line) = line.to_str() else {
                return client;
            };
            hops.extend(line.split(','));
        }
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ForwardedHeader::XForwardedFor => parse_node(hop),
                ForwardedHeader::Forwarded => forwarded_for(hop).and_then(parse_node),
            };
            match parsed {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        return client;
                    }
                }
                None => return client,
            }
        }
        client
    }
}

impl KeyExtractor for TrustedProxies {
    fn client_key<B>(&self, req: &Request<B>) -> Option<ClientKey> {
        self.client_ip(req).map(ip_key)
    }
}

/// The `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1`, `[2001:db8::1]:4711`, optionally in double quotes.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the cache's size, each peer still gets its own key, and a
    /// primed connection's key is the one its requests get.
    #[test]
    fn cached_peer_keys_are_each_peers_own() {
        let ips: Vec<IpAddr> = (0..PEERS_PER_THREAD as u8 * 2 + 3)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .collect();
        for round in 0..2 {
            for ip in &ips {
                assert_eq!(cached_ip_key(*ip), ip_key(*ip), "round {round}, {ip}");
            }
        }
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            cached_ip_key(mapped),
            ip_key(v4),
            "one client over IPv4 and IPv6"
        );
        let primed = ip_key(v4);
        prime_peer(v4, &primed);
        for ip in &ips {
            assert_ne!(cached_ip_key(*ip), primed);
        }
        assert_eq!(cached_ip_key(v4), primed);
    }

    fn req(peer: &str, header: &str, values: &[&str]) -> Request<()> {
        let mut b = Request::builder();
        for v in values {
            b = b.header(header, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        r
    }

    fn xff() -> TrustedProxies {
        TrustedProxies::x_forwarded_for(["10.0.0.0/8".parse().unwrap()])
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let r = req("203.0.113.9:5000", "x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(xff().client_ip(&r), ip("203.0.113.9"));
    }

    #[test]
    fn right_most_untrusted_hop_wins_over_what_the_client_wrote() {
        // The client wrote "198.51.100.1"; the trusted proxy saw 203.0.113.9.
        let r = req(
            "10.0.0.2:80",
            "x-forwarded-for",
            &["198.51.100.1, 203.0.113.9"],
        );
        assert_eq!(xff().client_ip(&r), ip("203.0.113.9"));
        // Two trusted proxies, over two header lines.
        let r = req(
            "10.0.0.3:80",
            "x-forwarded-for",
            &["198.51.100.1, 203.0.113.9", "10.0.0.2"],
        );
        assert_eq!(xff().client_ip(&r), ip("203.0.113.9"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let r = req("10.0.0.2:80", "x-forwarded-for", &["198.51.100.1, unknown"]);
        assert_eq!(xff().client_ip(&r), ip("10.0.0.2"));
        let r = req("10.0.0.2:80", "x-forwarded-for", &[]);
        assert_eq!(xff().client_ip(&r), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_reads_only_its_header() {
        let fwd = TrustedProxies::forwarded(["10.0.0.0/8".parse().unwrap()]);
        let mut r = req(
            "10.0.0.2:80",
            "forwarded",
            &["for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https"],
        );
        r.headers_mut()
            .insert("x-forwarded-for", "192.0.2.200".parse().unwrap());
        assert_eq!(fwd.client_ip(&r), ip("2001:db8::7"));
    }

    #[test]
    fn mapped_ipv4_is_the_same_client() {
        let r = req("[::ffff:192.0.2.1]:80", "x-forwarded-for", &[]);
        assert_eq!(PeerIp.client_key(&r).unwrap().as_str(), "192.0.2.1");
    }
}
