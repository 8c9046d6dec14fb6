//! The server under study: one set of HTTP routes, served by plain tokio or
//! by curfew.
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET /hello` | benign and cheap: answers `hello` from an async handler |
//! | `GET /file` | benign: reads a 4 KiB file on the blocking pool |
//! | `POST /attack/{vector}[?form=inline\|pool]` | runs a [`curfew_attacks`] handler on the body |
//! | `GET /metrics` | the curfew runtime's counters, handlers running, RSS |
//! | `GET /` | this list, and the vectors |
//!
//! In [`Mode::Tokio`] the server is what a hyper or axum server usually is:
//! a multi-thread tokio runtime, one task per connection, and each handler
//! running inline in that task (`form=pool` runs it through
//! `tokio::task::spawn_blocking`, as `tokio::fs` does). The curfew modes
//! serve what a user of `curfew-http` deploys: [`curfew_http::serve`] (every
//! connection a curfew task, with its timeouts and connection caps) and a
//! [`curfew_http::CurfewLayer`] that runs every request as a curfew task
//! under the poll budget; `form=inline` handlers run in that task,
//! `form=pool` ones as curfew blocking jobs under the job budget. A handler
//! that overruns is answered `503 Service Unavailable` with `Retry-After`
//! while it is still running; a refused client gets `429 Too Many Requests`
//! with the cool-off left, before its body is read; a panic is a `500`.
//!
//! Every response carries an `x-lab-outcome` header (`ok`, `error`,
//! `timeout`, `refused`, `panic`, `cancelled`). The client behind a request
//! is `id:` and the `x-client-id` header when the server trusts that header
//! ([`ServerConfig::trust_client_header`]), else `ip:` and the peer's IP:
//! the prefixes keep a header id from ever naming an address. `/metrics`
//! lists clients only to loopback peers, unless
//! [`ServerConfig::public_metrics`] is set.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use curfew::ClientKey;
use curfew_attacks::{AttackError, CostKind, Vector};
use curfew_http::{CurfewLayer, Failure as LayerFailure, FailureKind, KeyFn, RequestHead};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::sys::ProcStatus;

/// The header that names the client behind a request.
pub const CLIENT_HEADER: &str = "x-client-id";
/// The header that says how the server's handler ended.
pub const OUTCOME_HEADER: &str = "x-lab-outcome";

/// How the server runs its handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mode {
    /// Plain tokio: handlers run inline in the connection's task.
    Tokio,
    /// Handlers run under curfew's budgets.
    Curfew,
    /// As `curfew`, plus a client policy that refuses a client after
    /// repeated timeouts (the paper's blacklist).
    CurfewPolicy,
    /// As `curfew`, in worker processes under `curfew-supervisor`, which
    /// recycles a worker whose written-off threads burn CPU (in the study,
    /// the server runs in a child process).
    CurfewSupervised,
}

impl Mode {
    /// Every mode, in the order the study runs them.
    pub const ALL: [Mode; 4] = [
        Mode::Tokio,
        Mode::Curfew,
        Mode::CurfewPolicy,
        Mode::CurfewSupervised,
    ];

    /// A short stable name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tokio => "tokio",
            Mode::Curfew => "curfew",
            Mode::CurfewPolicy => "curfew-policy",
            Mode::CurfewSupervised => "curfew-supervised",
        }
    }

    /// Whether handlers run under curfew.
    pub fn is_curfew(self) -> bool {
        self != Mode::Tokio
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Form {
    /// In the async handler itself: tokio's connection task, or a curfew
    /// task under the poll budget. For blocking I/O this is the
    /// "blocking-in-async" mistake.
    Inline,
    /// On the runtime's blocking pool: `tokio::task::spawn_blocking`, or a
    /// curfew blocking job under the job budget.
    Pool,
}

impl Form {
    /// Where a handler of this kind belongs: computation inline, blocking
    /// I/O on the pool.
    pub fn natural(kind: CostKind) -> Form {
        match kind {
            CostKind::Cpu => Form::Inline,
            CostKind::BlockingIo => Form::Pool,
        }
    }

    /// `inline` or `pool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Inline => "inline",
            Form::Pool => "pool",
        }
    }
}

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Tokio worker threads in tokio mode; curfew event threads in the
    /// curfew modes. Default: 2.
    pub threads: usize,
    /// Not used by the servers any more: the curfew modes serve their
    /// connections on curfew's own I/O driver. Kept so that configurations
    /// and command lines that set it still parse. Default: 1.
    pub io_threads: usize,
    /// Curfew's worker-pool threads. Default: 4, as Node's pool.
    pub blocking_threads: usize,
    /// Curfew's poll budget. Default: 100 ms, as the paper's Figure 3.
    pub poll_budget: Duration,
    /// Curfew's job budget. Default: 1 s, as the paper's Figure 3.
    pub job_budget: Duration,
    /// How long a poll runs before curfew hands its thread off (a thread
    /// in its place, the poll demoted; `None`: never, curfew's default).
    pub hand_off_long_polls: Option<Duration>,
    /// Whether a handed-off poll's thread also moves to the idle class
    /// (`Builder::hand_off_to_idle_class`; only with a hand-off).
    pub hand_off_idle: bool,
    /// Curfew's cap on hijacked event threads (its default if `None`).
    pub max_hijacked_threads: Option<usize>,
    /// Curfew's cap on abandoned pool threads (its default if `None`).
    pub max_abandoned_threads: Option<usize>,
    /// Timeouts after which the policy refuses a client (curfew-policy).
    pub strikes: u32,
    /// How long the policy refuses a client.
    pub cool_off: Duration,
    /// A CPU-time quota per client (curfew-policy), if any.
    pub cpu_quota: Option<curfew::policy::CpuQuota>,
    /// A Redis URL to share the policy with other instances (curfew-policy).
    pub policy_store: Option<String>,
    /// The largest request body accepted.
    pub max_body: usize,
    /// Whether the `x-client-id` header names the client. The study's load
    /// generator names its simulated clients with it, so the default is
    /// `true`; `curfew-lab serve` sets it only with `--trust-client-header`,
    /// since otherwise anyone could name any client (and get it refused).
    pub trust_client_header: bool,
    /// Whether `/metrics` lists per-client counters to every peer, not
    /// only to loopback ones. Default: false.
    pub public_metrics: bool,
    /// How long a client may take to send a request's headers (both modes).
    pub header_read_timeout: Option<Duration>,
    /// How long a request body may go without a byte (curfew modes).
    pub body_timeout: Option<Duration>,
    /// How long a connection may sit idle (curfew modes).
    pub idle_timeout: Option<Duration>,
    /// The most connections open at once (curfew modes).
    pub max_connections: usize,
    /// The most connections open at once from one IP (curfew modes).
    pub max_connections_per_ip: usize,
    /// The most request body bytes in flight (curfew modes; `None`: no
    /// limit).
    pub max_body_in_flight: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            io_threads: 1,
            blocking_threads: 4,
            poll_budget: curfew::DEFAULT_POLL_BUDGET,
            job_budget: curfew::DEFAULT_JOB_BUDGET,
            hand_off_long_polls: None,
            hand_off_idle: false,
            max_hijacked_threads: None,
            max_abandoned_threads: None,
            strikes: 2,
            cool_off: Duration::from_secs(60),
            cpu_quota: None,
            policy_store: None,
            max_body: 64 << 20,
            trust_client_header: true,
            public_metrics: false,
            header_read_timeout: Some(Duration::from_secs(10)),
            body_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_body_in_flight: Some(256 << 20),
        }
    }
}

/// What handlers share with the server's owner, outside both runtimes.
#[derive(Debug, Default)]
struct Gauge {
    /// Set to end the lab's "infinite" loop (see [`spin`]).
    stop: AtomicBool,
    /// Handler bodies running now, hijacked ones included.
    running: AtomicUsize,
}

/// Counts a running handler body until dropped.
struct Busy(Arc<Gauge>);

impl Busy {
    fn new(g: &Arc<Gauge>) -> Self {
        g.running.fetch_add(1, Ordering::SeqCst);
        Busy(g.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cheap view of a running server, for samplers on other threads.
#[derive(Debug, Clone)]
pub struct Probe {
    gauge: Arc<Gauge>,
    curfew: Option<curfew::Handle>,
}

impl Probe {
    /// Handler bodies running now, including those on hijacked threads.
    pub fn running(&self) -> usize {
        self.gauge.running.load(Ordering::SeqCst)
    }

    /// The curfew runtime (curfew modes only).
    pub fn runtime(&self) -> Option<curfew::Handle> {
        self.curfew.clone()
    }

    /// The curfew runtime's counters (curfew modes only).
    pub fn metrics(&self) -> Option<curfew::RuntimeMetrics> {
        self.curfew.as_ref().map(|h| h.metrics())
    }
}

/// A running server; [`shutdown`](Server::shutdown) it when done.
#[derive(Debug)]
pub struct Server {
    mode: Mode,
    addr: SocketAddr,
    io: Option<tokio::runtime::Runtime>,
    curfew: Option<curfew::Runtime>,
    probe: Probe,
}

/// How a server's shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// How long shutting down took.
    pub took: Duration,
    /// Handler bodies still running when the wait ran out (stuck threads
    /// left behind).
    pub handlers_left: usize,
}

impl Server {
    /// Starts a server on `addr` (port 0 picks a free one).
    pub fn start(mode: Mode, cfg: &ServerConfig, addr: SocketAddr) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind(addr)?;
        Ok(Self::start_on(mode, cfg, listener, async {}, std::future::pending())?.0)
    }

    /// Starts a server on a listener it is handed: a worker under
    /// `curfew-supervisor` serves on the socket it inherited. It accepts
    /// only once `turn` completes (a warm spare builds its runtimes first
    /// and waits for its turn). When `drain`
    /// completes the server stops accepting; in the curfew modes it also
    /// finishes its requests in flight and closes its connections (each
    /// after its current response), and then the returned receiver gets
    /// its message. In tokio mode the message comes once accepting stopped.
    pub fn start_on(
        mode: Mode,
        cfg: &ServerConfig,
        std_listener: std::net::TcpListener,
        turn: impl std::future::Future<Output = ()> + Send + 'static,
        drain: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<(Server, std::sync::mpsc::Receiver<()>)> {
        let (drained, on_drained) = std::sync::mpsc::channel();
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let file = benign_file()?;
        if !mode.is_curfew() {
            let io = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.threads)
                .thread_name(format!("lab-{}", mode.as_str()))
                .enable_all()
                .build()?;
            let listener = {
                let _enter = io.enter();
                tokio::net::TcpListener::from_std(std_listener)?
            };
            let probe = Probe {
                gauge: Arc::default(),
                curfew: None,
            };
            let app = Arc::new(App::new(mode, probe.clone(), file, cfg));
            let accept = accept_loop(listener, app, cfg.header_read_timeout);
            io.spawn(async move {
                turn.await;
                tokio::select! {
                    () = accept => {}
                    () = drain => {}
                }
                let _ = drained.send(());
            });
            let server = Server {
                mode,
                addr,
                io: Some(io),
                curfew: None,
                probe,
            };
            return Ok((server, on_drained));
        }

        let mut b = curfew::Runtime::builder()
            .event_threads(cfg.threads)
            .blocking_threads(cfg.blocking_threads)
            .poll_budget(cfg.poll_budget)
            .job_budget(cfg.job_budget)
            .hand_off_long_polls(cfg.hand_off_long_polls)
            .hand_off_to_idle_class(cfg.hand_off_idle && cfg.hand_off_long_polls.is_some())
            .thread_name("lab-curfew");
        if let Some(n) = cfg.max_hijacked_threads {
            b = b.max_hijacked_threads(n);
        }
        if let Some(n) = cfg.max_abandoned_threads {
            b = b.max_abandoned_threads(n);
        }
        if mode == Mode::CurfewPolicy {
            let mut policy = curfew::policy::ClientPolicy::new(cfg.strikes, cfg.cool_off);
            policy.cpu_quota = cfg.cpu_quota;
            b = b.client_policy(policy);
            if let Some(url) = &cfg.policy_store {
                let store = curfew_redis::RedisStore::builder(url.as_str())
                    .build()
                    .map_err(io::Error::other)?;
                b = b.policy_store(store);
            }
        }
        let rt = b.build().map_err(io::Error::other)?;
        let handle = rt.handle();
        let listener =
            handle.block_on(async { tokio::net::TcpListener::from_std(std_listener) })?;
        let probe = Probe {
            gauge: Arc::default(),
            curfew: Some(handle.clone()),
        };
        let app = Arc::new(App::new(mode, probe.clone(), file, cfg));
        let trust = cfg.trust_client_header;
        let layer = CurfewLayer::new()
            .key_extractor(KeyFn(move |head: &RequestHead<'_>| {
                Some(client_key(head.headers, head.peer_addr()?, trust))
            }))
            .on_failure(layer_failure);
        let svc = tower::ServiceBuilder::new()
            .layer(layer)
            .service(tower::service_fn(move |req: Request<curfew_http::Body>| {
                let app = app.clone();
                async move {
                    let peer = curfew_http::key::peer_addr(&req)
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    Ok::<_, Infallible>(route(&app, peer, req).await)
                }
            }));
        let serve = curfew_http::serve(listener, svc)
            .header_read_timeout(cfg.header_read_timeout)
            .body_timeout(cfg.body_timeout)
            .idle_timeout(cfg.idle_timeout)
            .max_connections(cfg.max_connections)
            .max_connections_per_ip(cfg.max_connections_per_ip)
            .max_body_bytes_in_flight(cfg.max_body_in_flight)
            .with_graceful_shutdown(drain);
        // The accept loop is a curfew task too: it runs on the runtime's
        // event threads, as the connections it starts. It is trusted code
        // that yields between accepts, and it holds the listener: under a
        // budget, a queue timeout while every thread is stuck (or one long
        // poll in a connection flood) would drop it, and the server would
        // stop listening. So it runs with no budget.
        drop(
            curfew::task::Builder::new()
                .name("lab-accept")
                .unlimited()
                .spawn_on(&handle, async move {
                    turn.await;
                    if let Err(e) = serve.await {
                        eprintln!("curfew-lab: the server stopped: {e}");
                    }
                    let _ = drained.send(());
                }),
        );
        let server = Server {
            mode,
            addr,
            io: None,
            curfew: Some(rt),
            probe,
        };
        Ok((server, on_drained))
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A view for samplers.
    pub fn probe(&self) -> Probe {
        self.probe.clone()
    }

    /// Ends every running and future "infinite" loop (see [`spin`]).
    pub fn stop_spinning(&self) {
        self.probe.gauge.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the server, waiting at most `wait` for its handlers to return.
    ///
    /// Tokio workers stuck in a handler are waited for until `wait` runs
    /// out and then left behind; curfew's hijacked threads likewise.
    /// [`Shutdown::handlers_left`] says how many handler bodies were still
    /// running at the end.
    pub fn shutdown(mut self, wait: Duration) -> Shutdown {
        let start = Instant::now();
        let deadline = start + wait;
        let left = || deadline.saturating_duration_since(Instant::now());
        if let Some(io) = self.io.take() {
            io.shutdown_timeout(left());
        }
        if let Some(rt) = self.curfew.take() {
            rt.shutdown_timeout(left());
        }
        while self.probe.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        Shutdown {
            took: start.elapsed(),
            handlers_left: self.probe.running(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
        if let Some(rt) = self.curfew.take() {
            rt.shutdown_background();
        }
    }
}

/// The path of a 4 KiB file for `GET /file`: `temp_dir()/curfew-lab/benign.txt`,
/// always the same bytes. A process that finds it in place uses it as it is;
/// otherwise it writes the file under a private name and renames it, so
/// concurrent processes never see half a file.
///
/// Rewriting it at every start cost more than it seems: each rename freed
/// the previous file's blocks, and on a file system that discards freed
/// blocks at once (ext4 mounted with `discard`) that is a synchronous
/// discard. A supervised worker's main thread waited on the disk in it
/// (uninterruptibly, so not even `SIGKILL` ended it) for hundreds of
/// milliseconds while its spare should have been getting ready.
fn benign_file() -> io::Result<PathBuf> {
    // Written once per process: the first caller writes and renames it while
    // every other server started in this process waits on the `OnceLock`,
    // so no two of them race on the temporary name.
    static FILE: OnceLock<Result<PathBuf, (io::ErrorKind, String)>> = OnceLock::new();
    FILE.get_or_init(|| {
        benign_file_in(&std::env::temp_dir().join("curfew-lab"))
            .map_err(|e| (e.kind(), e.to_string()))
    })
    .clone()
    .map_err(|(kind, msg)| io::Error::new(kind, msg))
}

/// [`benign_file`]'s work in `dir`, without the once-per-process guard.
fn benign_file_in(dir: &std::path::Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("benign.txt");
    let text = "curfew-lab benign file\n".repeat(200);
    let bytes = &text.as_bytes()[..4096];
    if std::fs::read(&path).is_ok_and(|b| b == bytes) {
        return Ok(path);
    }
    let tmp = dir.join(format!("benign.txt.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The state every request handler sees.
#[derive(Debug)]
struct App {
    mode: Mode,
    probe: Probe,
    file: PathBuf,
    max_body: usize,
    trust_client_header: bool,
    public_metrics: bool,
}

impl App {
    fn new(mode: Mode, probe: Probe, file: PathBuf, cfg: &ServerConfig) -> App {
        App {
            mode,
            probe,
            file,
            max_body: cfg.max_body,
            trust_client_header: cfg.trust_client_header,
            public_metrics: cfg.public_metrics,
        }
    }
}

/// The layer's answer, marked with the lab's outcome header.
fn layer_failure(f: &LayerFailure<'_>) -> Response<Full<Bytes>> {
    let mut r = f.default_response();
    let outcome = match f.kind {
        FailureKind::Timeout => "timeout",
        FailureKind::Refused => "refused",
        // The route refused (too many of its handlers stuck): a 503.
        _ if f.error.is_some_and(curfew::JoinError::is_refused) => "refused",
        FailureKind::Panic => "panic",
        _ => "cancelled",
    };
    r.headers_mut()
        .insert(OUTCOME_HEADER, HeaderValue::from_static(outcome));
    r
}

/// How a handler failed to produce its output.
#[derive(Debug)]
enum Failure {
    Timeout(String),
    Refused { message: String, retry_after: u64 },
    Panic(String),
    Cancelled(String),
}

impl Failure {
    fn from_join(e: curfew::JoinError) -> Self {
        if e.is_timeout() {
            Failure::Timeout(e.to_string())
        } else if e.is_refused() {
            let retry_after = match e.refusal() {
                Some(curfew::Refusal::ClientCoolingOff { remaining, .. }) => {
                    remaining.as_secs_f64().ceil().max(1.0) as u64
                }
                _ => 1,
            };
            Failure::Refused {
                message: e.to_string(),
                retry_after,
            }
        } else if e.is_panic() {
            Failure::Panic(e.to_string())
        } else {
            Failure::Cancelled(e.to_string())
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Failure::Timeout(m) => {
                let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "timeout", m + "\n");
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            Failure::Refused {
                message,
                retry_after,
            } => {
                let mut r = text(StatusCode::TOO_MANY_REQUESTS, "refused", message + "\n");
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after));
                r
            }
            Failure::Panic(m) => text(StatusCode::INTERNAL_SERVER_ERROR, "panic", m + "\n"),
            Failure::Cancelled(m) => text(StatusCode::SERVICE_UNAVAILABLE, "cancelled", m + "\n"),
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_owned()
    }
}

impl App {
    /// Runs a handler body where `form` says, under the mode's rules. In
    /// the curfew modes the request already runs as a curfew task for its
    /// client (the layer spawned it), so an inline body runs right here,
    /// under that task's poll budget.
    async fn run<R, W>(
        &self,
        form: Form,
        name: &str,
        client: ClientKey,
        work: W,
    ) -> Result<R, Failure>
    where
        W: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let gauge = self.probe.gauge.clone();
        let work = move || {
            let _busy = Busy::new(&gauge);
            work()
        };
        match (&self.probe.curfew, form) {
            (None, Form::Inline) => {
                catch_unwind(AssertUnwindSafe(work)).map_err(|p| Failure::Panic(panic_message(&*p)))
            }
            (None, Form::Pool) => tokio::task::spawn_blocking(work).await.map_err(|e| {
                if e.is_panic() {
                    Failure::Panic(panic_message(&*e.into_panic()))
                } else {
                    Failure::Cancelled(e.to_string())
                }
            }),
            (Some(_), Form::Inline) => Ok(work()),
            (Some(h), Form::Pool) => curfew::task::Builder::new()
                .name(name)
                .client(client)
                .spawn_blocking_on(h, work)
                .await
                .map_err(Failure::from_join),
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    header_read_timeout: Option<Duration>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                // Out of descriptors, most likely: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, peer, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    outcome: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(OUTCOME_HEADER, HeaderValue::from_static(outcome));
    r
}

/// The client behind a request: an id key ([`ClientKey::id`]) of the
/// `x-client-id` header if it is trusted, else an IP key
/// ([`ClientKey::ip`]) of the peer's address. The two namespaces never
/// collide, so a header id can never name an address; and a peer's IP key
/// has a network (/24, /64), which a policy with a network level limits.
pub fn client_key(headers: &HeaderMap, peer: SocketAddr, trust_header: bool) -> ClientKey {
    trust_header
        .then(|| headers.get(CLIENT_HEADER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map_or_else(|| ClientKey::ip(peer.ip()), ClientKey::id)
}

async fn route<B>(app: &App, peer: SocketAddr, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    // Blocking jobs count against the route too, as the layer's handler
    // tasks do: a route whose jobs are stuck is refused.
    let client = client_key(req.headers(), peer, app.trust_client_header).with_route(&path);
    let form = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| match kv {
            "form=inline" => Some(Form::Inline),
            "form=pool" => Some(Form::Pool),
            _ => None,
        })
    });
    match (req.method(), path.as_str()) {
        (&Method::GET, "/hello") => match app.run(Form::Inline, "hello", client, || ()).await {
            Ok(()) => text(StatusCode::OK, "ok", "hello\n"),
            Err(f) => f.into_response(),
        },
        (&Method::GET, "/file") => {
            let file = app.file.clone();
            match app
                .run(Form::Pool, "file", client, move || std::fs::read(file))
                .await
            {
                Ok(Ok(data)) => text(StatusCode::OK, "ok", format!("{} bytes\n", data.len())),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, "error", e.to_string()),
                Err(f) => f.into_response(),
            }
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "ok",
            metrics_text(app, app.public_metrics || peer.ip().is_loopback()),
        ),
        (&Method::GET, "/") => text(StatusCode::OK, "ok", index_text(app)),
        (&Method::POST, p) if p.starts_with("/attack/") => {
            let name = &p["/attack/".len()..];
            let Some(vector) = curfew_attacks::by_name(name) else {
                return text(
                    StatusCode::NOT_FOUND,
                    "error",
                    format!("no vector called `{name}`; GET / lists them\n"),
                );
            };
            let body = match Limited::new(req.into_body(), app.max_body).collect().await {
                Ok(b) => b.to_bytes(),
                // Too long is 413; a malformed or stalled body is 400.
                Err(e) if e.is::<LengthLimitError>() => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "error", e.to_string() + "\n");
                }
                Err(e) => return text(StatusCode::BAD_REQUEST, "error", e.to_string() + "\n"),
            };
            let form = form.unwrap_or(Form::natural(vector.kind));
            let stop = app.probe.gauge.clone();
            let work = move || run_vector(vector, &body, &stop.stop);
            match app.run(form, vector.name, client, work).await {
                Ok(Ok(summary)) => text(StatusCode::OK, "ok", summary + "\n"),
                // The error may quote the payload (`read-path` names the
                // path it could not read): never echo more than a line of it.
                Ok(Err(e)) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "error",
                    clip(&e.to_string(), MAX_ERROR_ECHO) + "\n",
                ),
                Err(f) => f.into_response(),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "error",
            "not found; GET / lists the routes\n",
        ),
    }
}

/// The most bytes of a handler's error message an answer carries.
const MAX_ERROR_ECHO: usize = 256;

/// `msg` cut to at most `max` bytes (at a character boundary), saying how
/// long it was when cut.
fn clip(msg: &str, max: usize) -> String {
    if msg.len() <= max {
        return msg.to_owned();
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &msg[..end], msg.len())
}

/// Runs a corpus handler, except that the lab's own [`spin`] stands in for
/// `infinite-loop` so that the lab can end it.
fn run_vector(
    vector: &'static Vector,
    body: &[u8],
    stop: &AtomicBool,
) -> Result<String, AttackError> {
    if vector.name == "infinite-loop" {
        spin(body, stop)
    } else {
        (vector.handler)(body)
    }
}

/// The `infinite-loop` vector as the lab runs it: the corpus's loop (a
/// client-chosen iteration count, up to "forever"), except that every 64 Ki
/// iterations it also looks at a stop flag that only the lab sets.
///
/// Neither runtime can see the flag: it is not a curfew
/// [`checkpoint`](curfew::checkpoint), so the loop is as hostile to curfew as
/// to tokio, and a curfew timeout leaves it spinning on its hijacked thread.
/// The flag exists only so that the study can end the loops of a mode once
/// that mode has been measured; without it a poisoned tokio worker would
/// spin until the process exits, and burn a core through every later
/// measurement.
pub fn spin(body: &[u8], stop: &AtomicBool) -> Result<String, AttackError> {
    let n: u64 = std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| AttackError::new("infinite-loop", "body is not a decimal count"))?;
    let mut acc: u64 = 0;
    for i in 0..n {
        acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
        if i & 0xffff == 0 && stop.load(Ordering::Relaxed) {
            return Err(AttackError::new(
                "infinite-loop",
                format!("stopped by the lab after {i} iterations"),
            ));
        }
    }
    Ok(format!("spun {n} iterations (checksum {acc:#x})"))
}

/// The server's counters; per-client ones only if `clients`.
fn metrics_text(app: &App, clients: bool) -> String {
    let p = ProcStatus::now();
    let mut s = format!(
        "mode: {}\nhandlers running: {}\nrss: {:.1} MiB\nthreads: {}\n",
        app.mode,
        app.probe.running(),
        p.rss_mib(),
        p.threads
    );
    match app.probe.metrics() {
        Some(mut m) => {
            if !clients {
                m.clients.clear();
                s += "clients: listed to loopback peers only\n";
            }
            s += &format!("{m:#?}\n");
        }
        None => s += "tokio mode: no watchdog, no metrics\n",
    }
    s
}

fn index_text(app: &App) -> String {
    let mut s = format!(
        "curfew-lab server, mode {}\n\n\
         GET  /hello                      benign, cheap (async handler)\n\
         GET  /file                       benign, reads a 4 KiB file on the blocking pool\n\
         POST /attack/{{vector}}[?form=inline|pool]  runs the vector's handler on the body\n\
         GET  /metrics                    runtime counters\n\nvectors:\n",
        app.mode
    );
    for v in curfew_attacks::all() {
        s += &format!(
            "  {:<22} {:<18} {:<10} default form {}\n",
            v.name,
            v.class.as_str(),
            v.kind.as_str(),
            Form::natural(v.kind).as_str()
        );
    }
    s
}

/// Makes a FIFO that the `read-path` vector blocks on, and releases it.
///
/// A reader opening a FIFO with no writer blocks in `open(2)` forever,
/// holding its thread without using any CPU: the ReadDoS of the paper's
/// Figure 3 without the CPU cost of `/dev/random`.
/// [`release`](Fifo::release) lets every blocked reader through to end of
/// file and removes the FIFO, so later readers fail at once.
#[derive(Debug)]
pub struct Fifo {
    path: PathBuf,
}

impl Fifo {
    /// A fresh FIFO in `dir`.
    pub fn new(dir: &Path) -> io::Result<Fifo> {
        Ok(Fifo {
            path: curfew_attacks::read::make_fifo(dir)?,
        })
    }

    /// The FIFO's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unblocks every reader and removes the FIFO.
    ///
    /// Opening it read-write never blocks on Linux and counts as a writer,
    /// so readers stuck in `open` get through; unlinking it makes later
    /// opens fail; closing the last writer gives every reader end of file.
    pub fn release(&self) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        let _ = std::fs::remove_file(&self.path);
        if writer.is_ok() {
            // Let readers that looked the path up just before the unlink
            // through as well, before they would block again.
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(writer);
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary_and_says_so() {
        assert_eq!(clip("short", 10), "short");
        // 'é' is two bytes: a cut at 3 would split the second one.
        let clipped = clip("éééé", 3);
        assert_eq!(clipped, "é... (8 bytes in all)");
    }

    /// Client lists on `/metrics` are for loopback peers (or a flag) only.
    #[test]
    fn metrics_hide_clients_unless_allowed() {
        let server = Server::start(
            Mode::CurfewPolicy,
            &ServerConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .unwrap();
        let handle = server.probe().curfew.clone().unwrap();
        let h = curfew::task::Builder::new()
            .client(ClientKey::id("someone"))
            .spawn_on(&handle, async {});
        handle.block_on(h).unwrap();
        let app = App::new(
            Mode::CurfewPolicy,
            server.probe(),
            benign_file().unwrap(),
            &ServerConfig::default(),
        );
        assert!(metrics_text(&app, true).contains("id:someone"));
        let hidden = metrics_text(&app, false);
        assert!(!hidden.contains("id:someone"), "{hidden}");
        assert!(hidden.contains("loopback peers only"));
    }

    /// Servers started concurrently in one process (as `cargo test` runs
    /// tests as threads) all get the benign file: none of them races another
    /// on the temporary name.
    #[test]
    fn benign_file_is_shared_by_concurrent_servers() {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    benign_file()
                })
            })
            .collect();
        for t in threads {
            let path = t.join().unwrap().expect("every server gets the file");
            assert_eq!(std::fs::read(&path).unwrap().len(), 4096);
        }
    }

    /// A file already in place with the right bytes is left alone: no
    /// rewrite and no rename at every start (see `benign_file`), which a
    /// changed inode would show; a file with other bytes is replaced.
    #[test]
    fn benign_file_in_place_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("curfew-lab-benign-{}", std::process::id()));
        let path = benign_file_in(&dir).expect("written");
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(benign_file_in(&dir).unwrap(), path);
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "left in place"
        );
        std::fs::write(&path, b"other bytes").unwrap();
        benign_file_in(&dir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 4096, "replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
