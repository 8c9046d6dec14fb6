//! [`CurfewLayer`]: every request's handler watched under its own budget.
//!
//! The layer runs the inner service's future named after the route, for
//! the request's client, under the layer's poll budget. A handler that
//! never yields cannot hold the response back: the watchdog answers it when
//! the budget runs out, and the layer turns that answer into a response.
//! The details are on [`CurfewLayer`], where users read them.

use std::any::TypeId;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::MatchedPath;
use bytes::Bytes;
use curfew::policy::Namespace;
use curfew::{ClientKey, JoinError, JoinHandle, Refusal};
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::key::{KeyExtractor, PeerIp, peer_addr};
use crate::recent::{Recent, cached};

/// A response body type that can also carry the layer's own answers.
///
/// A [`Curfew`] service answers with the inner service's body type, so
/// that the inner responses pass through as they are: axum does not box
/// them a second time, and nothing wraps every body in an enum for the
/// rare failure. The layer's own responses (a `503` for a timeout, a `429`
/// for a refused client, and those of [`CurfewLayer::on_failure`]) are
/// built as [`Full<Bytes>`] and converted with [`from_full`](Self::from_full).
///
/// Implemented for axum's body (what every axum handler and `Router`
/// returns), for [`Full<Bytes>`], for http-body-util's boxed bodies, and
/// for [`Either`] with a right side that implements it. A service with
/// another body type, such as a proxy that returns hyper's `Incoming`,
/// can map its responses into one of these first
/// (`tower::ServiceBuilder::map_response`), or implement the trait for a
/// body type of its own.
///
/// ```
/// use bytes::Bytes;
/// use curfew_http::FailureBody;
/// use http_body_util::Full;
///
/// /// A body type of the application's own.
/// struct Page(Full<Bytes>);
///
/// impl FailureBody for Page {
///     fn from_full(body: Full<Bytes>) -> Self {
///         Page(body)
///     }
/// }
/// ```
pub trait FailureBody: Sized {
    /// The body of one of the layer's own responses, as this type.
    fn from_full(body: Full<Bytes>) -> Self;
}

impl FailureBody for axum::body::Body {
    fn from_full(body: Full<Bytes>) -> Self {
        axum::body::Body::new(body)
    }
}

impl FailureBody for Full<Bytes> {
    fn from_full(body: Full<Bytes>) -> Self {
        body
    }
}

impl<E: 'static> FailureBody for BoxBody<Bytes, E> {
    fn from_full(body: Full<Bytes>) -> Self {
        BoxBody::new(body.map_err(|never| match never {}))
    }
}

impl<E: 'static> FailureBody for UnsyncBoxBody<Bytes, E> {
    fn from_full(body: Full<Bytes>) -> Self {
        UnsyncBoxBody::new(body.map_err(|never| match never {}))
    }
}

/// The layer's answers go to the right side.
impl<L, R: FailureBody> FailureBody for Either<L, R> {
    fn from_full(body: Full<Bytes>) -> Self {
        Either::Right(R::from_full(body))
    }
}

type Responder = dyn Fn(&Failure<'_>) -> Response<Full<Bytes>> + Send + Sync;

/// What the layer gives its services, held by value: axum clones a route's
/// service for every request, and the defaults (`None`s) clone without
/// touching a reference count that every thread would share.
#[derive(Clone)]
struct Config {
    poll_budget: Option<Duration>,
    handle: Option<curfew::Handle>,
    respond: Option<Arc<Responder>>,
}

/// A tower [`Layer`] that runs each request's handler as a curfew task, so
/// that a handler that never yields is answered `503` within its budget
/// while the other requests go on.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use curfew_http::CurfewLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = curfew::Runtime::builder().event_threads(2).build()?;
/// rt.block_on(async {
///     let app = Router::new()
///         .route("/", get(|| async { "hello" }))
///         .layer(CurfewLayer::new());
///     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///     curfew_http::serve(listener, app).await
/// })?;
/// # Ok(()) }
/// ```
///
/// # Where the handler runs
///
/// It runs on the runtime given to [`handle`](Self::handle), else on the
/// curfew runtime the request is served on, else on curfew's default runtime,
/// polled with the caller's tokio runtime entered. How depends on the
/// connection:
///
/// * **An HTTP/1 request under [`serve`](crate::serve)** runs in place, in
///   the connection's own task, as a watched scope
///   ([`curfew::task::Builder::inline`]): HTTP/1 answers one request at a
///   time, so the connection has nothing else to do meanwhile, and a
///   request costs no task, no queueing and no second poll of the
///   connection. The connection's requests share one scope
///   ([`curfew::task::InlineScope`]): its header is made once, and its
///   client's admission remembered while nothing it rests on changes. A handler that overruns holds the connection's task, so
///   the watchdog writes the `503` (with `Connection: close`) to the socket
///   itself and shuts the socket down; the connection ends there. If
///   hyper's earlier output on the connection is not all flushed (a
///   pipelining client that does not read), the connection is reset
///   instead of answered, so that no response is cut into another.
/// * **Anything else** (HTTP/2, whose streams share a connection; another
///   server; a layer given a [`handle`](Self::handle)) spawns the
///   future as a curfew task and awaits its
///   [`JoinHandle`](curfew::JoinHandle); the connection stays open after a
///   `503`.
///
/// | outcome | default response |
/// | --- | --- |
/// | the handler overran its budget | `503 Service Unavailable`, `Retry-After: 1` |
/// | the client is cooling off | `429 Too Many Requests`, `Retry-After` = the cool-off left |
/// | the handler panicked | `500 Internal Server Error` |
/// | the route is refused: too many of its handlers stuck, or its breaker open | `503 Service Unavailable`, `Retry-After` |
/// | the runtime refused or dropped the task (full, shutting down) | `503 Service Unavailable`, `Retry-After: 1` |
///
/// Each is a short plain-text body and a `tracing` event naming the route,
/// the client and the budget. [`CurfewLayer::on_failure`] replaces the
/// responses.
///
/// # Routes, and a flood of handlers that never return
///
/// The client key of every handler carries the request's route
/// ([`ClientKey::with_route`]): axum's [`MatchedPath`] when the layer sits
/// on a `Router` (`Router::layer` or `route_layer`), else the URI's path.
/// Rust cannot stop a poll that never returns, so each such handler writes
/// off the event thread it runs on, and the runtime replaces it, up to its
/// cap on hijacked threads. Left alone, fifty requests to a handler that
/// loops for good would reach that cap and then hold every remaining
/// thread. The route stops that: once
/// [`max_overdue_per_route`](curfew::Builder::max_overdue_per_route) of a
/// route's handlers are stuck past their budget (by default half the cap),
/// the route's next requests are answered `503` at once, including those
/// already queued when the limit was reached (the runtime looks again when
/// a queued handler is first polled), until one of the stuck handlers
/// returns. The other routes keep their threads: with the defaults, a
/// flood of any size on one route leaves healthy event threads serving
/// the rest. A [`ClientPolicy`](curfew::policy::ClientPolicy) with a route
/// level (`.route(LevelPolicy::new(..))`) adds a breaker by count: a
/// route that has timed out that many times is refused for a cool-off.
pub struct CurfewLayer<K = PeerIp> {
    config: Config,
    key: K,
}

impl CurfewLayer {
    /// A layer with the runtime's poll budget, the peer's IP as the client
    /// key, and the default responses.
    pub fn new() -> Self {
        Self {
            config: Config {
                poll_budget: None,
                handle: None,
                respond: None,
            },
            key: PeerIp,
        }
    }
}

impl Default for CurfewLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> CurfewLayer<K> {
    /// The budget for each poll of the handlers behind this layer, instead
    /// of the runtime's. Layers on different route groups can differ.
    ///
    /// # Panics
    ///
    /// Panics if `budget` is zero.
    pub fn poll_budget(mut self, budget: Duration) -> Self {
        assert!(!budget.is_zero(), "a poll budget must be greater than zero");
        self.config.poll_budget = Some(budget);
        self
    }

    /// Spawns handlers on this runtime, whatever runtime serves the
    /// connection: for a tokio-hosted server that hands its handlers to
    /// curfew.
    pub fn handle(mut self, handle: curfew::Handle) -> Self {
        self.config.handle = Some(handle);
        self
    }

    /// How to find the client behind a request: [`PeerIp`] by default,
    /// [`TrustedProxies`](crate::TrustedProxies) behind reverse proxies.
    pub fn key_extractor<K2: KeyExtractor>(self, key: K2) -> CurfewLayer<K2> {
        CurfewLayer {
            config: self.config,
            key,
        }
    }

    /// Builds the responses to timeouts, refusals and panics. `f` may call
    /// [`Failure::default_response`] for the kinds it does not change.
    ///
    /// For a handler run in place (HTTP/1 under [`serve`](crate::serve)),
    /// `f` builds the timeout's response on the watchdog's thread, while
    /// the handler still runs: keep it short and non-blocking, and log
    /// through [`curfew::task::defer_log`] rather than with a `tracing`
    /// event of its own (the layer's own event already goes that way). The response
    /// is written to the socket as it is, with its body (which must be
    /// ready at once, as `Full` is), its length and `Connection: close`.
    ///
    /// ```
    /// use curfew_http::{CurfewLayer, FailureKind};
    /// use http::StatusCode;
    ///
    /// let layer = CurfewLayer::new().on_failure(|f| {
    ///     let mut r = f.default_response();
    ///     if f.kind == FailureKind::Timeout {
    ///         *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    ///     }
    ///     r
    /// });
    /// # let _ = layer;
    /// ```
    pub fn on_failure<F>(mut self, f: F) -> Self
    where
        F: Fn(&Failure<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        self.config.respond = Some(Arc::new(f));
        self
    }
}

impl<K: Clone> Clone for CurfewLayer<K> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for CurfewLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurfewLayer")
            .field("poll_budget", &self.config.poll_budget)
            .field("handle", &self.config.handle.is_some())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone> Layer<S> for CurfewLayer<K> {
    type Service = Curfew<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Curfew {
            inner,
            config: self.config.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service [`CurfewLayer`] wraps around an inner service.
///
/// Its `call` calls the inner service's `call` on the caller's task and
/// runs the future that returns under the watchdog (in place, or as a
/// curfew task: see [`CurfewLayer`]): that future is where
/// a tower service does its work (axum's handlers, extractors and
/// `from_fn` middleware all run in it), and taking it so costs no clone of
/// the inner service per request. Under [`serve`](crate::serve) the
/// caller's task is the connection's, itself a curfew task under the
/// runtime's poll budget.
///
/// It answers with the inner service's response body type, which must
/// implement [`FailureBody`] so that the layer's own answers (`503`,
/// `429`, `500`) can take that type too.
pub struct Curfew<S, K = PeerIp> {
    inner: S,
    config: Config,
    key: K,
}

impl<S: Clone, K: Clone> Clone for Curfew<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
            key: self.key.clone(),
        }
    }
}

/// Routes' keys and task names in a small cache per thread: a server has
/// few routes, and axum clones the layer's service for every request, so a
/// cache in the service would start empty each time.
const ROUTES_PER_THREAD: usize = 16;

/// A route's key, and its name for the handler's task.
#[derive(Clone)]
struct RouteInfo {
    key: ClientKey,
    name: Arc<str>,
}

thread_local! {
    static ROUTES: std::cell::RefCell<Recent<RouteInfo, ROUTES_PER_THREAD>> =
        const { std::cell::RefCell::new(Recent::new()) };
}

/// The key and task name of `route`: from this thread's cache, or made and
/// cached (a client sending many paths to a layer outside the router costs
/// misses, not memory).
fn route_info(route: &str) -> RouteInfo {
    cached(
        &ROUTES,
        |r| &*r.name == route,
        || RouteInfo {
            key: ClientKey::route(route),
            name: Arc::from(route),
        },
        RouteInfo::clone,
    )
}

/// Clients' keys with their routes, kept per thread like the routes: a
/// connection's requests to one route share one key, found with one look
/// at the cache.
const CLIENT_ROUTES_PER_THREAD: usize = 16;

struct ClientRoute {
    route: Arc<str>,
    client: ClientKey,
    /// The peer's address (canonical), for an entry [`PeerIp`]'s key made.
    peer: Option<IpAddr>,
    key: ClientKey,
}

thread_local! {
    static CLIENT_ROUTES: std::cell::RefCell<Recent<ClientRoute, CLIENT_ROUTES_PER_THREAD>> =
        const { std::cell::RefCell::new(Recent::new()) };
}

/// The task name of `route` and `client`'s key on it
/// (`client.with_route_key` of the route's key), from this thread's cache
/// or made (with the route's own cache) and cached. Without a client, the
/// route's name alone.
fn keys_on_route(route: &str, client: Option<ClientKey>) -> (Arc<str>, Option<ClientKey>) {
    let Some(client) = client else {
        return (route_info(route).name, None);
    };
    cached(
        &CLIENT_ROUTES,
        |e| *e.route == *route && e.client == client,
        || client_route(route, client.clone(), None),
        |e| (e.route.clone(), Some(e.key.clone())),
    )
}

/// As [`keys_on_route`] for the key [`PeerIp`] takes from `peer`, found by
/// the address: the key is not made, nor looked up in the cache of peers'
/// keys, when the thread has the pair already.
fn peer_keys_on_route(route: &str, peer: Option<IpAddr>) -> (Arc<str>, Option<ClientKey>) {
    let Some(peer) = peer else {
        return (route_info(route).name, None);
    };
    let peer = peer.to_canonical();
    cached(
        &CLIENT_ROUTES,
        |e| e.peer == Some(peer) && *e.route == *route,
        || client_route(route, crate::key::cached_ip_key(peer), Some(peer)),
        |e| (e.route.clone(), Some(e.key.clone())),
    )
}

fn client_route(route: &str, client: ClientKey, peer: Option<IpAddr>) -> ClientRoute {
    let (route, key) = named_key_on_route(route, &client);
    ClientRoute {
        key,
        client,
        peer,
        route,
    }
}

/// The task name of `route` (this thread's copy) and `client`'s key on it.
fn named_key_on_route(route: &str, client: &ClientKey) -> (Arc<str>, ClientKey) {
    let info = route_info(route);
    (info.name, client.with_route_key(&info.key))
}

impl<S, K: std::fmt::Debug> std::fmt::Debug for Curfew<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Curfew")
            .field("poll_budget", &self.config.poll_budget)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<S, K, B, RB> Service<Request<B>> for Curfew<S, K>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: FailureBody + Send + 'static,
    B: Send + 'static,
    K: KeyExtractor,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The route rides on the key: the runtime counts the route's stuck
        // handlers (and its timeouts, for a route breaker) in its entry.
        let route = route_of(&req);
        // The default extractor's key comes from the peer's address, looked
        // up once here.
        let peer = if TypeId::of::<K>() == TypeId::of::<PeerIp>() {
            Some(peer_addr(&req).map(|a| a.ip().to_canonical()))
        } else {
            None
        };
        // An HTTP/1 request on a connection `serve` polls on this thread is
        // run in place, in the connection's task (see `crate::line`): the
        // connection has nothing else to do until it is answered. The usual
        // case, the default key for the connection's own peer, runs in the
        // connection's scope: its header kept, and its client's admission
        // remembered, from one request to the next, with the route's name
        // and the peer's key lent from the connection's cache.
        let in_line = self.config.handle.is_none() && req.version() <= http::Version::HTTP_11;
        let config = &self.config;
        let on_conn = in_line
            .then(|| {
                crate::line::with_current(|conn| {
                    if peer != Some(Some(conn.peer_ip)) {
                        return OnConn::Line(conn.line.clone());
                    }
                    OnConn::Scoped(conn.with_keys_on_route(
                        route,
                        |key| named_key_on_route(route, key),
                        |name, key| {
                            // The last request's hook stands if it is for
                            // this layer: no count on the line, no clone
                            // of the config.
                            conn.scope
                                .prepare_with(
                                    name,
                                    Some(key),
                                    config.poll_budget,
                                    |last| match last {
                                        Some(a) if a.config.same_as(config) => None,
                                        _ => Some(Answer {
                                            line: conn.line.clone(),
                                            config: config.clone(),
                                        }),
                                    },
                                )
                        },
                    ))
                })
            })
            .flatten();
        let line = match on_conn {
            Some(OnConn::Scoped(prepared)) => {
                let inner = &mut self.inner;
                return ResponseFuture {
                    kind: Kind::Inline {
                        inline: prepared.inline_with(|| inner.call(req)),
                    },
                };
            }
            Some(OnConn::Line(line)) => Some(line),
            None => None,
        };
        let (name, client) = match peer {
            Some(peer) => peer_keys_on_route(route, peer),
            None => keys_on_route(route, self.key.client_key(&req)),
        };

        // The name is this thread's copy (`keys_on_route`), so that taking
        // it writes no count that another thread writes too, as cloning
        // axum's `MatchedPath` would.
        let mut task = curfew::task::Builder::new();
        if let Some(budget) = self.config.poll_budget {
            task = task.poll_budget(budget);
        }
        // A client cooling off (or a refused route) is refused by the scope
        // or the spawn below, which look the key up once in the runtime's
        // client table. The scope then never calls the inner service; the
        // spawn drops its future, and with it the request, unpolled. Either
        // way the body is never read, and the answer comes from the headers
        // alone.
        if let Some(line) = line {
            // The scope's header keeps the route and the client, for the
            // answer to a failure: one count on each per request.
            let mut task = task.shared_name(name);
            if let Some(key) = client {
                task = task.client(key);
            }
            let inner = &mut self.inner;
            let config = self.config.clone();
            return ResponseFuture {
                kind: Kind::Inline {
                    inline: task.inline_with(|| inner.call(req), Answer { line, config }),
                },
            };
        }
        let mut task = task.shared_name(name.clone());
        if let Some(key) = &client {
            task = task.client(key.clone());
        }
        let info = Info {
            route: name,
            client,
            config: self.config.clone(),
        };
        let fut = self.inner.call(req);
        let join = match &self.config.handle {
            Some(h) => task.spawn_on(h, fut),
            None => task.spawn(fut),
        };
        ResponseFuture {
            kind: Kind::Spawned {
                join,
                info: Some(info),
            },
        }
    }
}

/// What the connection being served on this thread has for a request
/// ([`Curfew::call`]): its scope, ready, for its own peer; else its line,
/// for a scope of the request's own.
enum OnConn {
    Scoped(curfew::task::Prepared<Answer>),
    Line(Arc<crate::line::Line>),
}

/// The watchdog's hook for a handler run in place: answers the request on
/// the socket, since the connection's task is held by the handler.
pub(crate) struct Answer {
    line: Arc<crate::line::Line>,
    config: Config,
}

impl curfew::task::OnTimeout for Answer {
    fn on_timeout(&self, error: &curfew::TimeoutError) {
        // The error carries the scope's name (the route) and client.
        let join = JoinError::from(error.clone());
        let response = self.config.build(&Failure::from_join(
            &join,
            error.name().unwrap_or(""),
            error.client(),
            self.config.poll_budget,
        ));
        let answered = self.line.answer(response);
        // This runs on the watchdog's thread, which must not wait on a log
        // sink: the events go to curfew's log thread.
        let budget = self.config.poll_budget;
        curfew::task::defer_log(move || {
            let error = join.timeout().expect("made from a timeout");
            let route = error.name().unwrap_or("");
            Failure::from_join(&join, route, error.client(), budget).record();
            if answered != crate::line::Answered::Written {
                tracing::debug!(
                    route,
                    ?answered,
                    "a timed-out handler's connection could not be answered; shut down"
                );
            }
        });
    }
}

/// The route a request is for: axum's matched path when the layer sits
/// inside the router (`route_layer`), the URI's path otherwise.
fn route_of<B>(req: &Request<B>) -> &str {
    match req.extensions().get::<MatchedPath>() {
        Some(m) => m.as_str(),
        None => req.uri().path(),
    }
}

/// What the layer remembers about a request while its handler runs, to
/// describe a failure.
#[derive(Clone)]
struct Info {
    route: Arc<str>,
    client: Option<ClientKey>,
    config: Config,
}

impl Config {
    /// Whether `self` and `other` surely answer alike: the same budget, no
    /// runtime of their own (as on the in-place path), and the very same
    /// response builder.
    fn same_as(&self, other: &Config) -> bool {
        self.poll_budget == other.poll_budget
            && self.handle.is_none()
            && other.handle.is_none()
            && match (&self.respond, &other.respond) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Records `failure` and builds its response.
    fn respond(&self, failure: &Failure<'_>) -> Response<Full<Bytes>> {
        failure.record();
        self.build(failure)
    }

    /// Builds `failure`'s response, with the user's builder if there is one.
    fn build(&self, failure: &Failure<'_>) -> Response<Full<Bytes>> {
        match &self.respond {
            Some(f) => f(failure),
            None => failure.default_response(),
        }
    }
}

/// The future of a [`Curfew`] service's response: the handler's task, or
/// the handler itself, run in place under its own budget (an HTTP/1
/// request under [`serve`](crate::serve)).
#[pin_project::pin_project]
pub struct ResponseFuture<F: Future> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project::pin_project(project = KindProj)]
enum Kind<F: Future> {
    Spawned {
        #[pin]
        join: JoinHandle<F::Output>,
        info: Option<Info>,
    },
    Inline {
        #[pin]
        inline: curfew::task::Inline<F, Answer>,
    },
}

impl<F: Future> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: FailureBody,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Spawned { join, info } => match ready!(join.poll(cx)) {
                Ok(out) => Poll::Ready(out),
                Err(error) => {
                    let info = info
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    let failure = Failure::from_join(
                        &error,
                        &info.route,
                        info.client.as_ref(),
                        info.config.poll_budget,
                    );
                    Poll::Ready(Ok(info.config.respond(&failure).map(B::from_full)))
                }
            },
            KindProj::Inline { mut inline } => match ready!(inline.as_mut().poll(cx)) {
                Ok(out) => Poll::Ready(out),
                Err(error) if error.is_timeout() => {
                    // The hook answered on the socket and shut it down
                    // (`Answer`); hyper's write of this one fails, and the
                    // connection ends.
                    let mut r = text_response(StatusCode::SERVICE_UNAVAILABLE, "");
                    r.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    Poll::Ready(Ok(r.map(B::from_full)))
                }
                Err(error) => {
                    let config = &inline.hook().config;
                    let failure = Failure::from_join(
                        &error,
                        inline.name().unwrap_or(""),
                        inline.client(),
                        config.poll_budget,
                    );
                    Poll::Ready(Ok(config.respond(&failure).map(B::from_full)))
                }
            },
        }
    }
}

/// What went wrong with a request's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler overran its poll budget.
    Timeout,
    /// The client is cooling off after repeated timeouts.
    Refused,
    /// The handler panicked.
    Panic,
    /// The runtime did not run the handler to the end: its queue was full,
    /// it is shutting down, the task was aborted, or the route was refused
    /// (too many of its handlers stuck past their budget, or its breaker
    /// open).
    Unavailable,
}

/// A request whose handler did not produce a response, as the response
/// builder of [`CurfewLayer::on_failure`] sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure<'a> {
    /// What happened.
    pub kind: FailureKind,
    /// The route: axum's matched path if the layer sits inside the router,
    /// else the request's path.
    pub route: &'a str,
    /// The client the handler ran for.
    pub client: Option<&'a ClientKey>,
    /// The layer's poll budget (`None`: the runtime's default).
    pub budget: Option<Duration>,
    /// When the client may try again, in whole seconds (at least 1).
    pub retry_after: u64,
    /// The runtime's answer: the timeout, the panic or the refusal. The
    /// layer always sets it; a response builder called by other code may
    /// see `None`.
    pub error: Option<&'a JoinError>,
}

fn retry_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().clamp(1.0, u64::MAX as f64) as u64
}

impl<'a> Failure<'a> {
    /// The failure `error` of the handler for `route` and `client`, run
    /// under the layer's `poll_budget`.
    fn from_join(
        error: &'a JoinError,
        route: &'a str,
        client: Option<&'a ClientKey>,
        poll_budget: Option<Duration>,
    ) -> Self {
        let (kind, retry_after) = if error.is_timeout() {
            (FailureKind::Timeout, 1)
        } else if error.is_panic() {
            (FailureKind::Panic, 1)
        } else {
            match error.refusal() {
                // A route breaker: the route, not the client, is refused.
                Some(Refusal::ClientCoolingOff { client, remaining })
                    if client.namespace() == Namespace::Route =>
                {
                    (FailureKind::Unavailable, retry_secs(*remaining))
                }
                Some(Refusal::ClientCoolingOff { remaining, .. }) => {
                    (FailureKind::Refused, retry_secs(*remaining))
                }
                _ => (FailureKind::Unavailable, 1),
            }
        };
        Failure {
            kind,
            route,
            client,
            budget: error.timeout().map(|t| t.budget()).or(poll_budget),
            retry_after,
            error: Some(error),
        }
    }

    /// The budget as logged: the layer's, or the one the watchdog applied.
    fn budget_text(&self) -> String {
        match self.budget {
            Some(b) => format!("{b:?}"),
            None => "runtime default".to_owned(),
        }
    }

    /// Records the failure as a `tracing` event.
    fn record(&self) {
        let client = self.client.map(ClientKey::as_str).unwrap_or("-");
        let budget = self.budget_text();
        let elapsed = self
            .error
            .and_then(JoinError::timeout)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        match self.kind {
            FailureKind::Timeout => tracing::warn!(
                route = self.route,
                client,
                budget,
                ?elapsed,
                "handler timed out: answered 503"
            ),
            FailureKind::Refused => tracing::info!(
                route = self.route,
                client,
                budget,
                retry_after = self.retry_after,
                "client cooling off: answered 429"
            ),
            FailureKind::Panic => tracing::error!(
                route = self.route, client, budget, error = %self.error.map(ToString::to_string).unwrap_or_default(),
                "handler panicked: answered 500"
            ),
            FailureKind::Unavailable => tracing::warn!(
                route = self.route, client, budget, error = %self.error.map(ToString::to_string).unwrap_or_default(),
                "handler not run to the end: answered 503"
            ),
        }
    }

    /// The layer's default response for this failure.
    pub fn default_response(&self) -> Response<Full<Bytes>> {
        let (status, body) = match self.kind {
            FailureKind::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service unavailable: the handler timed out (budget {})\n",
                    self.budget_text()
                ),
            ),
            FailureKind::Refused => (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests: refused for {} s after repeated timeouts\n",
                    self.retry_after
                ),
            ),
            FailureKind::Panic => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error\n".to_owned(),
            ),
            FailureKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service unavailable\n".to_owned(),
            ),
        };
        let mut r = text_response(status, body);
        if self.kind != FailureKind::Panic {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(self.retry_after));
        }
        r
    }
}

/// A short plain-text response.
pub(crate) fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Instant;

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn runtime() -> curfew::Runtime {
        curfew::Runtime::builder()
            .event_threads(1)
            .poll_budget(Duration::from_millis(20))
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_peers_key_on_a_route_is_peer_ips_key_with_the_route() {
        use axum::extract::ConnectInfo;
        let mut seen = Vec::new();
        for ip in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "192.0.2.2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(ConnectInfo(std::net::SocketAddr::new(ip, 1)));
            for route in ["/a", "/b"] {
                let want = PeerIp
                    .client_key(&req)
                    .unwrap()
                    .with_route_key(&ClientKey::route(route));
                // A miss, then a hit.
                for _ in 0..2 {
                    let (name, key) = peer_keys_on_route(route, Some(ip));
                    assert_eq!(&*name, route);
                    let key = key.expect("a peer's key");
                    // (Keys compare by client; the route rides along.)
                    assert_eq!(key, want, "{ip} on {route}");
                    assert_eq!(key.route_key(), Some(ClientKey::route(route)));
                    let (name2, key2) = keys_on_route(route, PeerIp.client_key(&req));
                    let key2 = key2.expect("a peer's key");
                    assert_eq!(&*name2, route);
                    assert_eq!(key2, key);
                    assert_eq!(key2.route_key(), key.route_key());
                }
                seen.push((want.as_str().to_owned(), route));
            }
        }
        // The mapped IPv4 address is its IPv4 client; the rest differ.
        assert_eq!(seen[0], seen[2]);
        assert_eq!(seen[1], seen[3]);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert_eq!(
            peer_keys_on_route("/a", None),
            (route_info("/a").name, None)
        );
    }

    /// A service of hyper's own shape: `Full` bodies, no axum.
    async fn full_service(req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.uri().path() == "/spin" {
            // Never yields; ends once answered (or after 10 s).
            let t = Instant::now();
            while curfew::checkpoint().is_ok() && t.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
        }
        Ok(Response::new(Full::new(Bytes::from_static(b"inner"))))
    }

    #[test]
    fn the_inner_body_type_passes_through_and_the_layers_answer_is_converted_into_it() {
        let rt = runtime();
        let svc = CurfewLayer::new().layer(tower::service_fn(full_service));
        let (ok, timed_out) = rt.block_on(async move {
            let get = |path: &str| Request::get(path).body(()).unwrap();
            // The response type is the inner service's: `Full<Bytes>`.
            let ok: Response<Full<Bytes>> = svc.clone().oneshot(get("/")).await.unwrap();
            let timed_out: Response<Full<Bytes>> = svc.oneshot(get("/spin")).await.unwrap();
            let text = |r: Response<Full<Bytes>>| async move {
                let (parts, body) = r.into_parts();
                let bytes = body.collect().await.unwrap().to_bytes();
                (parts.status, parts.headers, bytes)
            };
            (text(ok).await, text(timed_out).await)
        });
        assert_eq!(ok.0, StatusCode::OK);
        assert_eq!(ok.2, "inner");
        assert_eq!(timed_out.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(timed_out.1.get(RETRY_AFTER).unwrap(), "1");
        let body = String::from_utf8_lossy(&timed_out.2).into_owned();
        assert!(body.contains("timed out"), "{body}");
    }

    #[test]
    fn an_axum_router_under_the_layer_answers_with_axums_own_body() {
        fn body_of<S, B>(_: &S)
        where
            S: Service<Request<B>, Response = Response<axum::body::Body>>,
        {
        }
        let layered = CurfewLayer::new().layer(axum::Router::new());
        // A compile-time check: axum's `Body`, not a wrapper that axum
        // would box again for every response.
        body_of::<_, axum::body::Body>(&layered);
    }

    #[test]
    fn either_and_boxed_bodies_take_the_layers_answer() {
        let text = || Full::new(Bytes::from_static(b"answer"));
        let collect = |b: UnsyncBoxBody<Bytes, Infallible>| {
            futures::executor::block_on(b.collect()).unwrap().to_bytes()
        };
        let e = <Either<(), Full<Bytes>>>::from_full(text());
        assert!(matches!(e, Either::Right(_)));
        assert_eq!(collect(UnsyncBoxBody::from_full(text())), "answer");
        let b =
            futures::executor::block_on(<BoxBody<Bytes, Infallible>>::from_full(text()).collect());
        assert_eq!(b.unwrap().to_bytes(), "answer");
    }
}
