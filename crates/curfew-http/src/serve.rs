//! [`serve`]: an `axum::serve`-shaped server whose connections are curfew
//! tasks, with the limits a server facing the internet needs.
//!
//! Every connection is a curfew task on the runtime `serve` runs in, so its
//! reads and writes are driven by that runtime's I/O driver and the
//! handlers that [`CurfewLayer`](crate::CurfewLayer) spawns from it are
//! local spawns. Each request gets `ConnectInfo<SocketAddr>`. HTTP/1 and
//! HTTP/2 are both served (hyper-util's auto builder), with upgrades.
//!
//! Defaults, each a method on [`Serve`]:
//!
//! | limit | default | on a hostile client |
//! | --- | --- | --- |
//! | [`header_read_timeout`](Serve::header_read_timeout) | 10 s | HTTP/1 connection closed |
//! | [`body_timeout`](Serve::body_timeout) | 10 s without a byte | body read fails ([`BodyError::Stalled`](crate::BodyError::Stalled)), `400` from axum's extractors |
//! | [`idle_timeout`](Serve::idle_timeout) | 60 s with nothing in flight | connection closed (HTTP/2: `GOAWAY`) |
//! | [`max_connections`](Serve::max_connections) | 10,000 and below the descriptor limit | accepted and closed at once |
//! | [`max_connections_per_ip`](Serve::max_connections_per_ip) | 256 | accepted and closed at once |
//! | [`descriptor_headroom`](Serve::descriptor_headroom) | 256 descriptors kept free | accepted and closed at once, with a log line |
//! | [`max_body_bytes_in_flight`](Serve::max_body_bytes_in_flight) | 256 MiB | `503` + `Retry-After` before the body is read |
//! | [`lingering_close_time`](Serve::lingering_close_time) | 5 s | a closing connection stops discarding what the client still sends, and closes |
//! | [`lingering_close_timeout`](Serve::lingering_close_timeout) | 1 s without a byte | same |
//! | [`lingering_close_bytes`](Serve::lingering_close_bytes) | 16 MiB discarded | same |
//!
//! A connection closes with a *lingering close*, as nginx and Apache do:
//! the server sends its FIN once the last response is written, then reads
//! and discards what the client still sends, within the bounds above,
//! before it closes the socket. A socket closed with unread bytes in its
//! receive buffer sends a reset instead of a FIN, and a client still
//! sending a body it was refused (a `429` or `503` answered before the
//! body is read) would see "connection reset" instead of the answer. A
//! lingering connection still counts against the connection caps: it
//! holds a descriptor.
//!
//! Shedding is logged at most once a second per reason, with a count.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;
use tower_service::Service;

use crate::body::{Body, BodyBudget, Reservation};
use crate::executor::Executor;
use crate::head::{HeadDeadline, periods, sweep_period};
use crate::key::prime_peer;
use crate::layer::text_response;
use crate::line::{self, Line};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limits and timeouts of a [`Serve`].
#[derive(Debug, Clone)]
struct Limits {
    header_read_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: usize,
    max_connections_per_ip: usize,
    descriptor_headroom: usize,
    descriptor_limit: Option<usize>,
    max_body_bytes_in_flight: Option<usize>,
    http1_only: bool,
    drain_linger: Duration,
    linger: LingerLimits,
}

/// The bounds of a lingering close: see [`Serve::lingering_close_time`].
#[derive(Debug, Clone, Copy)]
struct LingerLimits {
    time: Duration,
    idle: Duration,
    bytes: usize,
}

impl LingerLimits {
    /// Whether a close lingers at all (every bound non-zero).
    fn enabled(&self) -> bool {
        !self.time.is_zero() && !self.idle.is_zero() && self.bytes > 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Some(Duration::from_secs(10)),
            body_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            descriptor_headroom: 256,
            descriptor_limit: None,
            max_body_bytes_in_flight: Some(256 << 20),
            http1_only: false,
            drain_linger: Duration::from_millis(100),
            linger: LingerLimits {
                time: Duration::from_secs(5),
                idle: Duration::from_secs(1),
                bytes: 16 << 20,
            },
        }
    }
}

/// Serves `app` on `listener`, every connection a curfew task: the shape
/// of `axum::serve`.
///
/// `app` is an axum `Router` or any `tower::Service` of
/// `Request<`[`Body`]`>` that is `Clone + Send`. Await the returned
/// [`Serve`] inside a curfew runtime; outside one, connections run on
/// curfew's default runtime.
///
/// A `Router` has its handlers made into services once, before the first
/// connection (`Router::with_state(())`, as `axum::serve` does). A router
/// wrapped in another service is not recognised: call `with_state(())` on
/// it before wrapping it, or axum makes every handler into a service again
/// on each request.
///
/// Await it in `Runtime::block_on`, as below, or spawn it as a task with
/// no budget (`curfew::task::Builder::new().unlimited()`): the accept loop
/// holds the listener, and a budgeted task is dropped when it overruns or
/// when it waits in the queue past its budget while every thread is stuck,
/// and the server would stop listening. The loop hands its thread back
/// every 64 accepts, so a flood of connections does not keep it in one
/// poll.
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
///     curfew_http::serve(listener, app)
///         .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///         .await
/// })?;
/// # Ok(()) }
/// ```
pub fn serve<S>(listener: TcpListener, app: S) -> Serve<S> {
    Serve {
        listener,
        app,
        limits: Limits::default(),
    }
}

/// A server being set up; await it (it is [`IntoFuture`]) to serve.
#[must_use = "a `Serve` does nothing until awaited"]
pub struct Serve<S> {
    listener: TcpListener,
    app: S,
    limits: Limits,
}

impl<S> std::fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// How long an HTTP/1 client may take to send a request's headers,
    /// from the moment the server waits for them: when the connection is
    /// idle, its last response body written (`None`: no limit). Enforced by
    /// a sweep of the connections every quarter of the timeout, with no
    /// timer and no clock read per request: a client is cut off, without
    /// an answer, between the timeout and 1.25 times it. It also bounds how long an
    /// HTTP/1 connection may sit idle between requests, and how long a new
    /// connection of either protocol may go without starting its first
    /// request (a client that sends nothing, or only part of the HTTP/2
    /// preface; this one is timed exactly). Default: 10 s.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.limits.header_read_timeout = timeout.into();
        self
    }

    /// How long a request body may go without a byte arriving while the
    /// handler waits for it (`None`: no limit). Default: 10 s.
    pub fn body_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.limits.body_timeout = timeout.into();
        self
    }

    /// How long a connection may go without a byte read or written while
    /// no request is in flight before it is closed (`None`: no limit). It is
    /// checked once per period, so a connection is closed after between one
    /// and two periods of silence. Default: 60 s.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.limits.idle_timeout = timeout.into();
        self
    }

    /// The most connections open at once; more are accepted and closed at
    /// once. Default: 10,000 (and never more than the descriptor limit
    /// allows, see [`descriptor_headroom`](Self::descriptor_headroom)).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// The most connections open at once from one IP address; more are
    /// accepted and closed at once. Default: 256.
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.limits.max_connections_per_ip = n;
        self
    }

    /// How many file descriptors to keep free for everything but
    /// connections (files, the listener, the runtime's own): connections
    /// past the process's descriptor limit (`RLIMIT_NOFILE`) minus this are
    /// accepted and closed at once, with a log line. Default: 256.
    ///
    /// If the process runs out of descriptors anyway (`EMFILE` on accept),
    /// the server sheds the waiting connection with a spare descriptor it
    /// keeps for that purpose, logs it, and goes on serving.
    pub fn descriptor_headroom(mut self, n: usize) -> Self {
        self.limits.descriptor_headroom = n;
        self
    }

    /// Use `n` as the descriptor limit instead of the process's
    /// `RLIMIT_NOFILE`.
    pub fn descriptor_limit(mut self, n: usize) -> Self {
        self.limits.descriptor_limit = Some(n);
        self
    }

    /// The most request body bytes in flight across all connections
    /// (`None`: no limit). A request that declares a `Content-Length` that
    /// does not fit is answered `503` with `Retry-After` before its body is
    /// read; a body of undeclared length that outgrows it fails with
    /// [`BodyError::OverBudget`](crate::BodyError::OverBudget). A request's
    /// bytes count until both its body and its response are gone.
    /// Default: 256 MiB.
    pub fn max_body_bytes_in_flight(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.limits.max_body_bytes_in_flight = bytes.into();
        self
    }

    /// Serve HTTP/1 only (default: HTTP/1 and HTTP/2, told apart by the
    /// HTTP/2 preface).
    pub fn http1_only(mut self) -> Self {
        self.limits.http1_only = true;
        self
    }

    /// How long a graceful shutdown keeps keep-alive connections open
    /// after it stops accepting, so that their clients can send one more
    /// request; each response in that time carries `Connection: close`
    /// (HTTP/1; HTTP/2 clients get a `GOAWAY` at once). Default: 100 ms.
    ///
    /// Closing an idle keep-alive connection races with the client's next
    /// request on it: the request can be on the wire when the close is,
    /// and the client sees a reset it cannot safely retry (a `POST` may
    /// have run). A connection whose client was told `Connection: close`
    /// is closed by the client, after a complete answer. The linger ends
    /// early once every connection has closed. `Duration::ZERO` closes
    /// idle connections at once.
    pub fn drain_linger(mut self, linger: Duration) -> Self {
        self.limits.drain_linger = linger;
        self
    }

    /// How long a connection that the server closes may take at most to
    /// close once its last response is written: the *lingering close*.
    /// Default: 5 s (nginx's `lingering_time` is 30 s).
    ///
    /// When it closes a connection (after a response to a request whose
    /// body it did not read, a `Connection: close`, a graceful shutdown, an
    /// idle timeout), the server first shuts down its sending side, so the
    /// client reads the whole response and then end-of-file; then it reads
    /// and throws away whatever the client still sends (the rest of a
    /// refused body), and closes the socket when the client closes its own
    /// side, when [`lingering_close_timeout`](Self::lingering_close_timeout)
    /// passes without a byte, when
    /// [`lingering_close_bytes`](Self::lingering_close_bytes) have been
    /// thrown away, or when this time has passed since the server's
    /// shutdown, whichever comes first. A socket closed while bytes wait
    /// unread in it sends a reset instead of a FIN, and a client that is
    /// still sending and has not read the response yet loses it ("connection
    /// reset" instead of the `429`); that is what lingering prevents, for
    /// bodies up to these bounds. A client that sends more is cut off at the
    /// first bound it reaches, possibly with a reset.
    ///
    /// A lingering connection keeps its descriptor and its place in
    /// [`max_connections`](Self::max_connections) and
    /// [`max_connections_per_ip`](Self::max_connections_per_ip) until it
    /// closes, and a graceful shutdown waits for it, so this bounds how long
    /// a hostile client can hold a slot, and a shutdown, past its last
    /// answer. Connections cut off for a hostile reason (no request within
    /// the header-read timeout, silent after a graceful shutdown asked them
    /// to close) close at once, without lingering. `Duration::ZERO`
    /// disables lingering: the connection is shut down and closed at once,
    /// as before.
    pub fn lingering_close_time(mut self, time: Duration) -> Self {
        self.limits.linger.time = time;
        self
    }

    /// How long a lingering close (see
    /// [`lingering_close_time`](Self::lingering_close_time)) waits for the
    /// client's next byte: after this long without one, the connection is
    /// closed. A client that read its answer and closes its side ends the
    /// linger at once; this bounds the wait on one that neither sends nor
    /// closes. Default: 1 s (nginx's `lingering_timeout` is 5 s).
    /// `Duration::ZERO` disables lingering.
    pub fn lingering_close_timeout(mut self, idle: Duration) -> Self {
        self.limits.linger.idle = idle;
        self
    }

    /// The most bytes a lingering close (see
    /// [`lingering_close_time`](Self::lingering_close_time)) reads and
    /// throws away: once that many have come, the connection is closed,
    /// even if the client is still sending (its rest of the body is then
    /// lost and it may see a reset). This bounds the work a client that
    /// streams as fast as it can costs, under the time bound. Default:
    /// 16 MiB. `0` disables lingering.
    pub fn lingering_close_bytes(mut self, bytes: usize) -> Self {
        self.limits.linger.bytes = bytes;
        self
    }

    /// Stops accepting when `signal` completes, lingers for
    /// [`drain_linger`](Self::drain_linger) answering with
    /// `Connection: close`, then asks every connection to close once its
    /// requests in flight are answered, and resolves when they all have.
    ///
    /// This is what a worker of `curfew-supervisor` does when it is
    /// drained: connections still queued on the shared listener go to the
    /// other workers, and clients on keep-alive connections reconnect to
    /// them after one last answer, so a recycle costs no request.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            serve: self,
            signal,
        }
    }
}

/// A [`Serve`] that shuts down gracefully when a signal completes; await
/// it to serve.
#[must_use = "a `WithGracefulShutdown` does nothing until awaited"]
pub struct WithGracefulShutdown<S, F> {
    serve: Serve<S>,
    signal: F,
}

impl<S, F> std::fmt::Debug for WithGracefulShutdown<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("serve", &self.serve)
            .finish_non_exhaustive()
    }
}

impl<S, F> WithGracefulShutdown<S, F> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.serve.local_addr()
    }
}

/// What [`serve`] needs of an app: a `Clone + Send` tower service of
/// `Request<`[`Body`]`>` whose future is `Send` and whose response body
/// hyper can send. Implemented for every such service, axum's `Router`
/// among them; there is nothing to implement by hand.
pub trait App:
    Service<
        Request<Body>,
        Response = Response<Self::ResBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type ResBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static;
}

impl<S, RB> App for S
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type ResBody = RB;
}

impl<S: App> IntoFuture for Serve<S> {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self, std::future::pending()))
    }
}

impl<S, F> IntoFuture for WithGracefulShutdown<S, F>
where
    S: App,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self.serve, self.signal))
    }
}

/// What the accept loop and every connection share.
struct Shared {
    limits: Limits,
    builder: auto::Builder<Executor>,
    handle: Option<curfew::Handle>,
    budget: Option<Arc<BodyBudget>>,
    /// Sweeps for passed header-read deadlines done so far, and how many
    /// sweep periods cover the timeout (see the `head` module).
    head_sweeps: AtomicU64,
    head_periods: u64,
    connections: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Every open connection's control block, for the reaper and for
    /// graceful shutdown.
    registry: Mutex<HashMap<u64, Arc<Control>>>,
    next_id: AtomicU64,
    /// Notified when the last connection closes.
    drained: tokio::sync::Notify,
    /// The effective cap: `max_connections`, lowered to fit the
    /// descriptor limit.
    cap: usize,
    fd_cap: usize,
    shed_log: ShedLog,
}

/// Logs shed connections at most once a second per reason, with counts.
#[derive(Default)]
struct ShedLog {
    start: Option<Instant>,
    next_ms: [AtomicU64; 4],
    count: [AtomicU64; 4],
}

#[derive(Clone, Copy, Debug)]
enum Shed {
    Connections = 0,
    PerIp = 1,
    Descriptors = 2,
    OutOfDescriptors = 3,
}

impl ShedLog {
    fn record(&self, why: Shed, peer: Option<SocketAddr>, open: usize, limit: usize) {
        let i = why as usize;
        let n = self.count[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.start.map_or(0, |s| s.elapsed().as_millis() as u64);
        let next = self.next_ms[i].load(Ordering::Relaxed);
        if now >= next
            && self.next_ms[i]
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let reason = match why {
                Shed::Connections => "connection cap reached",
                Shed::PerIp => "per-IP connection cap reached",
                Shed::Descriptors => "near the file descriptor limit",
                Shed::OutOfDescriptors => "out of file descriptors (EMFILE)",
            };
            tracing::warn!(
                peer = ?peer, open, limit, shed_total = n,
                "shedding connection: {reason}"
            );
        }
    }
}

fn descriptor_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as usize)
}

async fn run<S: App>(
    serve: Serve<S>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let Serve {
        listener,
        mut app,
        limits,
    } = serve;
    prepare_router(&mut app);
    let handle = curfew::Handle::try_current();
    let executor = match &handle {
        Some(h) => Executor::with_handle(h.clone()),
        None => Executor::new(),
    };
    let mut builder = auto::Builder::new(executor);
    // `serve` times HTTP/1 heads itself (the `head` module): hyper's own
    // timer would cost every keep-alive request a turn of its loop.
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    if let Some(idle) = limits.idle_timeout {
        builder.http2().keep_alive_interval(idle);
    }
    if limits.http1_only {
        builder = builder.http1_only();
    }
    let fd_limit = limits.descriptor_limit.or_else(descriptor_limit);
    let fd_cap = fd_limit.map_or(usize::MAX, |l| l.saturating_sub(limits.descriptor_headroom));
    let shared = Arc::new(Shared {
        cap: limits.max_connections,
        fd_cap,
        budget: limits
            .max_body_bytes_in_flight
            .map(|b| Arc::new(BodyBudget::new(b))),
        head_periods: limits.header_read_timeout.map_or(1, periods),
        limits,
        builder,
        handle,
        head_sweeps: AtomicU64::new(0),
        connections: AtomicUsize::new(0),
        per_ip: Mutex::new(HashMap::new()),
        registry: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        drained: tokio::sync::Notify::new(),
        shed_log: ShedLog {
            start: Some(Instant::now()),
            ..ShedLog::default()
        },
    });
    let mut spare = Spare::open();
    let mut signal = pin!(signal);
    let idle = shared.limits.idle_timeout;
    let mut reaper = idle.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
    let mut heads = shared.limits.header_read_timeout.map(|t| {
        let mut i = tokio::time::interval(sweep_period(t));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut accepted_in_a_row = 0u32;
    loop {
        // A flood of waiting connections must not keep this loop in one
        // poll (it may be a curfew task under a budget, whose overrun would
        // drop the listener): hand the thread back now and then.
        accepted_in_a_row += 1;
        if accepted_in_a_row % ACCEPTS_PER_POLL == 0 {
            curfew::task::yield_now().await;
        }
        let accepted = tokio::select! {
            biased;
            () = &mut signal => break,
            _ = tick(&mut reaper) => {
                shared.reap();
                continue;
            }
            _ = tick(&mut heads) => {
                shared.sweep_heads();
                continue;
            }
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                if is_out_of_descriptors(&e) {
                    shared.shed_log.record(
                        Shed::OutOfDescriptors,
                        None,
                        shared.connections.load(Ordering::Relaxed),
                        fd_cap,
                    );
                    if !spare.shed_one(&listener) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } else if !is_connection_error(&e) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let Some(guard) = ConnGuard::admit(&shared, peer) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(stream, peer, app.clone(), guard);
        let task = curfew::task::Builder::new().name("http-connection");
        drop(match &shared.handle {
            Some(h) => task.spawn_on(h, conn),
            None => task.spawn(conn),
        });
    }
    drop(listener);
    // Graceful shutdown. First the linger: every response is marked
    // `Connection: close`, so keep-alive clients leave after one more
    // answer instead of racing a close with their next request.
    let linger = shared.limits.drain_linger;
    if !linger.is_zero() && shared.connections.load(Ordering::Acquire) > 0 {
        shared.signal_all(LINGER);
        let until = tokio::time::Instant::now() + linger;
        while shared.connections.load(Ordering::Acquire) > 0 {
            tokio::select! {
                () = shared.drained.notified() => {}
                () = tokio::time::sleep_until(until) => break,
                _ = tick(&mut heads) => shared.sweep_heads(),
            }
        }
    }
    // Then every connection closes once its requests in flight are
    // answered; the reaper drops those that go silent.
    shared.signal_all(CLOSE);
    while shared.connections.load(Ordering::Acquire) > 0 {
        tokio::select! {
            () = shared.drained.notified() => {}
            _ = tick(&mut reaper) => shared.reap(),
            _ = tick(&mut heads) => shared.sweep_heads(),
        }
    }
    Ok(())
}

/// Turns an axum `Router`'s handlers into services once, before the first
/// connection, as `axum::serve` does for each connection
/// (`Router::with_state`). A router that never had its state applied makes
/// each handler into a service again on every request: a clone of the
/// handler and three allocations per request. Other services are left as
/// they are.
fn prepare_router<S: 'static>(app: &mut S) {
    if let Some(router) = (app as &mut dyn std::any::Any).downcast_mut::<axum::Router>() {
        *router = std::mem::take(router).with_state(());
    }
}

/// Connections the accept loop takes in one poll at most.
const ACCEPTS_PER_POLL: u32 = 64;

/// The reaper's next tick, or never without an idle timeout.
async fn tick(reaper: &mut Option<tokio::time::Interval>) {
    match reaper {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Shared {
    /// Once per idle period: asks connections that moved no byte since the
    /// last tick, with nothing in flight, to close; drops those that were
    /// asked and stayed silent for two more ticks.
    fn reap(&self) {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for c in registry.values() {
            let progress = c.progress.load(Ordering::Relaxed);
            let last = c.last_seen.swap(progress, Ordering::Relaxed);
            if progress != last || c.in_flight.load(Ordering::Relaxed) > 0 {
                continue;
            }
            match c.state.load(Ordering::Acquire) {
                OPEN => {
                    tracing::debug!(peer = %c.peer, "closing an idle connection");
                    c.signal(CLOSE);
                }
                CLOSE if c.silent_ticks.fetch_add(1, Ordering::Relaxed) + 1 >= 2 => {
                    c.signal(DROP);
                }
                _ => {}
            }
        }
    }

    /// Every quarter of the header-read timeout: wakes the connections whose
    /// head has been awaited past the timeout, so that they close (see the
    /// `head` module).
    fn sweep_heads(&self) {
        let sweep = self.head_sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for c in registry.values() {
            if c.head.fire_if_due(sweep, self.head_periods) {
                c.waker.wake();
            }
        }
    }

    /// Moves every connection that is open (or lingering) on to `state`:
    /// `LINGER` or `CLOSE`.
    fn signal_all(&self, state: u8) {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for c in registry.values() {
            if c.state.load(Ordering::Acquire) < state {
                c.signal(state);
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// A descriptor kept open so that, out of descriptors, the server can
/// still accept one waiting connection and close it (instead of leaving
/// it, and every later one, in the backlog to time out).
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Self {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// Closes the spare, accepts and closes one connection, reopens the
    /// spare. False if there was nothing to shed.
    fn shed_one(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            *self = Spare::open();
            return false;
        }
        let shed = matches!(listener_accept_now(listener), Some(Ok(_)));
        *self = Spare::open();
        shed
    }
}

/// Accepts a waiting connection without waiting, and drops it.
fn listener_accept_now(listener: &TcpListener) -> Option<io::Result<()>> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match listener.poll_accept(&mut cx) {
        Poll::Ready(r) => Some(r.map(drop)),
        Poll::Pending => None,
    }
}

/// A connection's place in the counts and the registry, given back on
/// drop.
struct ConnGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
    id: u64,
    control: Arc<Control>,
}

impl ConnGuard {
    fn admit(shared: &Arc<Shared>, peer: SocketAddr) -> Option<ConnGuard> {
        let open = shared.connections.fetch_add(1, Ordering::AcqRel);
        let ip = peer.ip().to_canonical();
        let shed = if open >= shared.cap {
            Some((Shed::Connections, shared.cap))
        } else if open >= shared.fd_cap {
            Some((Shed::Descriptors, shared.fd_cap))
        } else {
            let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= shared.limits.max_connections_per_ip {
                Some((Shed::PerIp, shared.limits.max_connections_per_ip))
            } else {
                *n += 1;
                None
            }
        };
        match shed {
            None => {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let control = Arc::new(Control::new(peer));
                shared
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, control.clone());
                Some(ConnGuard {
                    shared: shared.clone(),
                    ip,
                    id,
                    control,
                })
            }
            Some((why, limit)) => {
                shared.connections.fetch_sub(1, Ordering::AcqRel);
                shared.shed_log.record(why, Some(peer), open, limit);
                None
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if self.shared.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit if no one waits yet; harmless when not
            // shutting down (the waiter re-checks the count).
            self.shared.drained.notify_one();
        }
    }
}

// A connection's states, in the only order it moves through them.
const OPEN: u8 = 0;
/// Draining: answer with `Connection: close`, but do not close yet.
const LINGER: u8 = 1;
const CLOSE: u8 = 2;
const DROP: u8 = 3;

/// One connection as the reaper and a graceful shutdown see it. The hot
/// path touches it with relaxed atomics only: no clock read, no lock, no
/// timer per connection.
struct Control {
    peer: SocketAddr,
    /// Bumped on every read or write that moved bytes.
    progress: AtomicU64,
    /// Requests whose responses are not complete yet: counted from the
    /// head until the response's body is written (or dropped).
    in_flight: AtomicUsize,
    /// Whether a request has started on this connection.
    started: std::sync::atomic::AtomicBool,
    /// Whether its requests are HTTP/1 (known from the first).
    http1: std::sync::atomic::AtomicBool,
    /// `progress` at the reaper's last tick.
    last_seen: AtomicU64,
    /// Ticks without progress since the connection was asked to close.
    silent_ticks: std::sync::atomic::AtomicU32,
    /// `OPEN`, `LINGER` (mark responses `Connection: close`), `CLOSE`
    /// (close once idle) or `DROP` (drop it now).
    state: std::sync::atomic::AtomicU8,
    /// The header-read deadline of the HTTP/1 head hyper is waiting for.
    head: HeadDeadline,
    waker: futures::task::AtomicWaker,
}

impl Control {
    fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            progress: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            http1: std::sync::atomic::AtomicBool::new(false),
            last_seen: AtomicU64::new(0),
            silent_ticks: std::sync::atomic::AtomicU32::new(0),
            state: std::sync::atomic::AtomicU8::new(OPEN),
            head: HeadDeadline::default(),
            waker: futures::task::AtomicWaker::new(),
        }
    }

    fn signal(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.waker.wake();
    }
}

/// The socket, counting its reads and writes for the idle watcher, and
/// closing with a lingering close (see [`Serve::lingering_close_time`]).
#[pin_project::pin_project(PinnedDrop)]
struct Tracked {
    #[pin]
    stream: TcpStream,
    control: Arc<Control>,
    /// The socket as the layer's timeout answers reach it.
    line: Arc<Line>,
    linger: Linger,
}

#[pin_project::pinned_drop]
impl PinnedDrop for Tracked {
    fn drop(self: Pin<&mut Self>) {
        // Before the stream's own drop closes the descriptor.
        self.line.close();
    }
}

/// Where a [`Tracked`] socket is in its lingering close.
enum Linger {
    /// Not shut down yet; lingers within these bounds (`None`: does not).
    Open(Option<LingerLimits>),
    /// Shut down for writing; reading and throwing away what the client
    /// still sends.
    Draining {
        /// The time bound, from the shutdown.
        until: Pin<Box<tokio::time::Sleep>>,
        /// The idle bound, from the last byte read.
        gap: Pin<Box<tokio::time::Sleep>>,
        idle: Duration,
        /// Bytes that may still be thrown away.
        left: usize,
    },
    /// Shut down, and lingered if it was to.
    Done,
}

/// Reads a lingering close makes in one poll at most, before it hands the
/// thread back (a client streaming over a fast link is always readable).
const LINGER_READS_PER_POLL: usize = 16;

/// Why a lingering close ended.
#[derive(Debug, Clone, Copy)]
enum LingerEnd {
    /// The client closed its side (or the socket failed): nothing unread.
    ClientClosed,
    Idle,
    Bytes,
    Time,
}

impl Linger {
    fn new(limits: LingerLimits) -> Self {
        Linger::Open(limits.enabled().then_some(limits))
    }

    /// Reads and throws away what the client sends until it closes or a
    /// bound is reached.
    fn poll_drain(
        &mut self,
        mut stream: Pin<&mut TcpStream>,
        cx: &mut Context<'_>,
    ) -> Poll<LingerEnd> {
        let Linger::Draining {
            until,
            gap,
            idle,
            left,
        } = self
        else {
            return Poll::Ready(LingerEnd::ClientClosed);
        };
        // The clock as well as the timer: a client that keeps the socket
        // readable is cut off at its next poll past the bound even if the
        // timer's wake-up comes late on a busy runtime.
        if until.as_mut().poll(cx).is_ready() || tokio::time::Instant::now() >= until.deadline() {
            return Poll::Ready(LingerEnd::Time);
        }
        let mut buf = [0u8; 8192];
        for _ in 0..LINGER_READS_PER_POLL {
            let want = buf.len().min(*left);
            let mut rb = ReadBuf::new(&mut buf[..want]);
            match stream.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Poll::Ready(LingerEnd::ClientClosed);
                }
                Poll::Ready(Ok(())) => {
                    *left -= rb.filled().len();
                    if *left == 0 {
                        return Poll::Ready(LingerEnd::Bytes);
                    }
                    let next = tokio::time::Instant::now() + *idle;
                    gap.as_mut().reset(next);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(LingerEnd::ClientClosed),
                Poll::Pending => {
                    if gap.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(LingerEnd::Idle);
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.stream.poll_read(cx, buf);
        if buf.filled().len() != before {
            this.control.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.line.wrote();
        let r = this.stream.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.control.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.line.wrote();
        let r = this.stream.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.control.progress.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.stream.poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            // hyper flushes its own buffer into the socket first.
            this.line.flushed();
        }
        r
    }

    /// Hyper calls this when it closes a connection (HTTP/1 once its last
    /// response is flushed, HTTP/2 after its `GOAWAY`): shuts down the
    /// sending side, then lingers, reading and throwing away what the
    /// client still sends within the bounds, so that the socket is closed
    /// with nothing unread in it and the client gets a FIN, not a reset.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            match this.linger {
                Linger::Open(limits) => {
                    let limits = *limits;
                    if let Err(e) = ready!(this.stream.as_mut().poll_shutdown(cx)) {
                        *this.linger = Linger::Done;
                        return Poll::Ready(Err(e));
                    }
                    let Some(limits) = limits else {
                        *this.linger = Linger::Done;
                        return Poll::Ready(Ok(()));
                    };
                    let now = tokio::time::Instant::now();
                    *this.linger = Linger::Draining {
                        until: Box::pin(tokio::time::sleep_until(now + limits.time)),
                        gap: Box::pin(tokio::time::sleep_until(now + limits.idle)),
                        idle: limits.idle,
                        left: limits.bytes,
                    };
                }
                Linger::Draining { .. } => {
                    let end = ready!(this.linger.poll_drain(this.stream.as_mut(), cx));
                    match end {
                        LingerEnd::ClientClosed => {}
                        _ => tracing::debug!(
                            peer = %this.control.peer, ?end,
                            "lingering close cut off: the client was still sending or silent"
                        ),
                    }
                    *this.linger = Linger::Done;
                }
                Linger::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

async fn serve_connection<S: App>(stream: TcpStream, peer: SocketAddr, app: S, guard: ConnGuard) {
    let shared = guard.shared.clone();
    let control = guard.control.clone();
    let line = Arc::new(Line::new(std::os::fd::AsRawFd::as_raw_fd(&stream)));
    let io = TokioIo::new(Tracked {
        stream,
        control: control.clone(),
        line: line.clone(),
        linger: Linger::new(shared.limits.linger),
    });
    let svc = ConnService {
        app,
        peer,
        shared: shared.clone(),
        control: control.clone(),
    };
    let conn = shared.builder.serve_connection_with_upgrades(io, svc);
    // The heads after the first are timed here (the `head` module).
    let time_heads = shared.limits.header_read_timeout.is_some();
    let mut conn = pin!(conn);
    let mut closing = false;
    // What the layer finds of the connection (its socket, and the peer's
    // key, made once) while it is polled. An HTTP/2 connection's requests
    // run as tasks of their own, which find the peer's key in the cache of
    // the thread that polls the connection (where each poll puts it), if
    // they run there.
    let conn_state = line::Conn::new(line.clone(), peer.ip());
    // Until its first request starts, a connection gets the header-read
    // timeout as a whole: hyper times HTTP/1 headers only once it has told
    // the protocol from the first bytes, so a client that sends nothing, or
    // only part of the HTTP/2 preface, would otherwise wait for the idle
    // reaper.
    let mut first_request = shared
        .limits
        .header_read_timeout
        .map(|t| Box::pin(tokio::time::sleep(t)));
    // The closure owns `conn_state`, so the future holds no reference to it
    // across polls (`Conn` is not `Sync`); it keeps it in place meanwhile.
    let shared = &shared;
    std::future::poll_fn(move |cx| {
        // Two atomics per poll: the waker is the task's own, so `register`
        // only compares it.
        control.waker.register(cx.waker());
        if !control.http1.load(Ordering::Relaxed) {
            prime_peer(conn_state.peer_ip, &conn_state.peer_key);
        }
        if let Some(deadline) = &mut first_request {
            if control.started.load(Ordering::Relaxed) {
                first_request = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = %control.peer, "no request within the header-read timeout: closed");
                return Poll::Ready(());
            }
        }
        match control.state.load(Ordering::Acquire) {
            DROP => return Poll::Ready(()),
            CLOSE if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        if time_heads && control.head.fired() {
            tracing::debug!(peer = %control.peer, "no whole head within the header-read timeout: closed");
            return Poll::Ready(());
        }
        // The layer finds the socket here, for a handler it runs in place.
        let line_entered = line::enter(&conn_state);
        let polled = conn.as_mut().poll(cx).map(drop);
        drop(line_entered);
        // Idle between HTTP/1 requests: hyper waits for the next head.
        if polled.is_pending()
            && time_heads
            && control.http1.load(Ordering::Relaxed)
            && control.in_flight.load(Ordering::Relaxed) == 0
        {
            control
                .head
                .arm(shared.head_sweeps.load(Ordering::Relaxed));
        }
        polled
    })
    .await;
    drop(guard);
}

/// The hyper service of one connection: gives each request its
/// `ConnectInfo`, its body limits and its share of the byte budget, and
/// counts it in flight.
struct ConnService<S> {
    app: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    control: Arc<Control>,
}

/// Counts a request in flight until its response's body is written, or
/// its response future or body is dropped.
struct InFlight(Arc<Control>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: App> hyper::service::Service<Request<Incoming>> for ConnService<S> {
    type Response = Response<Counted<Either<S::ResBody, Full<Bytes>>>>;
    type Error = S::Error;
    type Future = ConnFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.control.in_flight.fetch_add(1, Ordering::Relaxed);
        self.control.started.store(true, Ordering::Relaxed);
        // A head arrived whole.
        self.control.head.disarm();
        let in_flight = InFlight(self.control.clone());
        let (mut parts, incoming) = req.into_parts();
        let http1 = parts.version <= http::Version::HTTP_11;
        if http1 && !self.control.http1.load(Ordering::Relaxed) {
            self.control.http1.store(true, Ordering::Relaxed);
        }
        parts.extensions.insert(ConnectInfo(self.peer));
        let mut reservation = None;
        let mut count_frames = false;
        if let Some(budget) = &self.shared.budget {
            if !http_body::Body::is_end_stream(&incoming) {
                let hint = http_body::Body::size_hint(&incoming);
                let declared = hint.exact();
                let want = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
                match budget.reserve(want) {
                    Some(r) => reservation = Some(r),
                    None => {
                        tracing::warn!(
                            peer = %self.peer, declared = want, budget = budget.limit,
                            in_flight = budget.in_flight(),
                            "request body does not fit the budget of bytes in flight: answered 503"
                        );
                        let mut r = text_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "service unavailable: too many request body bytes in flight\n",
                        );
                        r.headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        return ConnFuture {
                            state: ConnState::Ready(Some(r)),
                            in_flight: Some(in_flight),
                            http1,
                            _reservation: None,
                        };
                    }
                }
                count_frames = declared.is_none();
            }
        }
        let body = Body::new(
            incoming,
            self.shared.limits.body_timeout,
            reservation.clone(),
            count_frames,
        );
        let req = Request::from_parts(parts, body);
        // Called at once when the app is ready at once, as a router always
        // is: no `Oneshot` to carry the request to its first poll.
        let mut app = self.app.clone();
        let state = match app.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(())) => ConnState::Called(app.call(req)),
            // Its first poll asks again, with the connection's waker.
            Poll::Pending => ConnState::Waiting(Box::pin(app.oneshot(req))),
            // Asked again of a fresh clone, whose error the response takes
            // (this one is dropped: it need not be `Send`).
            Poll::Ready(Err(_)) => ConnState::Waiting(Box::pin(self.app.clone().oneshot(req))),
        };
        ConnFuture {
            state,
            in_flight: Some(in_flight),
            http1,
            _reservation: reservation,
        }
    }
}

/// A response's body, holding its request in flight until it is written
/// (hyper drops it then) or dropped with the connection: the connection is
/// not idle, for the header-read timeout, while a body is still going out.
#[pin_project::pin_project]
pub(crate) struct Counted<B> {
    #[pin]
    body: B,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The future of one request on a connection.
#[pin_project::pin_project]
struct ConnFuture<S: App> {
    #[pin]
    state: ConnState<S>,
    /// Handed on to the response's body.
    in_flight: Option<InFlight>,
    /// An HTTP/1 request, whose response may say `Connection: close`.
    http1: bool,
    _reservation: Option<Arc<Reservation>>,
}

#[pin_project::pin_project(project = ConnStateProj)]
enum ConnState<S: App> {
    Called(#[pin] S::Future),
    /// The app was not ready when the request came (rare): boxed, so that
    /// the common case's future does not carry the request's room.
    Waiting(Pin<Box<tower::util::Oneshot<S, Request<Body>>>>),
    Ready(Option<Response<Full<Bytes>>>),
}

impl<S: App> Future for ConnFuture<S> {
    type Output = Result<Response<Counted<Either<S::ResBody, Full<Bytes>>>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.state.project() {
            ConnStateProj::Called(f) => ready!(f.poll(cx)).map(|r| r.map(Either::Left)),
            ConnStateProj::Waiting(f) => ready!(f.as_mut().poll(cx)).map(|r| r.map(Either::Left)),
            ConnStateProj::Ready(r) => Ok(r
                .take()
                .expect("polled after completion")
                .map(Either::Right)),
        };
        let in_flight = this.in_flight.take();
        // A draining server tells HTTP/1 clients to leave after this answer.
        if let (true, Some(f), Ok(r)) = (*this.http1, &in_flight, &mut res) {
            if f.0.state.load(Ordering::Acquire) >= LINGER {
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(res.map(|r| {
            r.map(|body| Counted {
                body,
                _in_flight: in_flight,
            })
        }))
    }
}
