//! The HTTP side: routes, the handshake's checks, and the runtimes.
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET /` | the chat page (plain HTML and JS) |
//! | `GET /ws` | the WebSocket handshake (`?token=` or `Authorization: Bearer`) |
//! | `POST /dev/token` | `--dev` only: `{"user":"alice"}` → `{"token":"…"}` |
//!
//! The handshake is refused before the upgrade, in this order: a foreign
//! `Origin` gets `403`; a missing or bad token `401`; a user cooling off
//! after repeated timeouts, an IP at its connection cap, or a server at its
//! total cap `429` with `Retry-After`.
//!
//! Connections are served by a tokio runtime (`--io-threads`); every
//! message handler runs on a curfew runtime (`--event-threads`) under the
//! poll budget.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Tokens;
use crate::claims::Claims;
use crate::config::ChatConfig;
use crate::exec::Exec;
use crate::limit::RateLimit;
use crate::rooms::Rooms;
use crate::stats::{Counters, Stats};

/// The page at `/`.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// How long a dev token lives.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) cfg: ChatConfig,
    pub(crate) tokens: Tokens,
    pub(crate) limiter: RateLimit,
    pub(crate) rooms: Rooms,
    pub(crate) claims: Claims,
    pub(crate) exec: Exec,
    pub(crate) counters: Arc<Counters>,
    pub(crate) shutdown: CancellationToken,
    next_message: AtomicU64,
    next_conn: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl State {
    pub(crate) fn next_message_id(&self) -> u64 {
        self.next_message.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A connection's place under the per-IP and total caps; given back when
/// dropped.
#[derive(Debug)]
struct Slot {
    state: Arc<State>,
    ip: IpAddr,
}

impl Slot {
    fn take(state: &Arc<State>, ip: IpAddr) -> Option<Slot> {
        let mut per_ip = state.per_ip.lock().expect("per-ip table");
        let total = state.counters.connections_open.load(Ordering::Relaxed) as usize;
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= state.cfg.max_connections_per_ip || total >= state.cfg.max_connections {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        state
            .counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.state.per_ip.lock().expect("per-ip table");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.state
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn refuse(status: StatusCode, why: &'static str, retry_after: Option<Duration>) -> Response {
    let mut resp = (status, why).into_response();
    if let Some(after) = retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn origin_allowed(cfg: &ChatConfig, headers: &HeaderMap) -> bool {
    let origin = match headers.get(header::ORIGIN) {
        None => return cfg.allowed_origins.is_empty(),
        Some(o) => match o.to_str() {
            Ok(o) => o,
            Err(_) => return false,
        },
    };
    if cfg.allowed_origins.is_empty() {
        // No allow-list: same origin only (the page at `/`).
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        return host.is_some_and(|host| {
            origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host)
            })
        });
    }
    cfg.allowed_origins
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn ws_handshake(
    AxumState(state): AxumState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let c = &state.counters;
    if !origin_allowed(&state.cfg, &headers) {
        Counters::bump(&c.refused_origin);
        return refuse(StatusCode::FORBIDDEN, "origin not allowed\n", None);
    }
    let token = query
        .ok()
        .and_then(|Query(q)| q.token)
        .or_else(|| bearer(&headers).map(str::to_owned));
    let claims = match token.map(|t| state.tokens.verify(&t)) {
        Some(Ok(claims)) => claims,
        Some(Err(_)) | None => {
            Counters::bump(&c.refused_unauthorized);
            return refuse(StatusCode::UNAUTHORIZED, "missing or bad token\n", None);
        }
    };
    let client = curfew::ClientKey::id(claims.sub.as_str());
    if let Some(left) = state.exec.cooling_off(&client) {
        Counters::bump(&c.refused_busy);
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "cooling off after repeated timeouts\n",
            Some(left),
        );
    }
    let Some(slot) = Slot::take(&state, peer.ip()) else {
        Counters::bump(&c.refused_busy);
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections\n",
            Some(Duration::from_secs(1)),
        );
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    Counters::bump(&c.connections_accepted);
    let user: Arc<str> = claims.sub.into();
    let exp = claims.exp;
    let st = state.clone();
    upgrade
        .max_message_size(state.cfg.max_frame_bytes)
        .max_frame_size(state.cfg.max_frame_bytes)
        .on_upgrade(move |socket| crate::conn::serve(st, socket, user, exp, slot))
}

#[derive(Debug, Deserialize)]
struct DevTokenRequest {
    user: String,
}

async fn dev_token(
    AxumState(state): AxumState<Arc<State>>,
    axum::Json(req): axum::Json<DevTokenRequest>,
) -> Response {
    match state.tokens.sign(&req.user, DEV_TOKEN_TTL) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

fn router(state: Arc<State>) -> Router {
    let mut app = Router::new()
        .route("/", get(index))
        .route("/ws", get(ws_handshake));
    if state.cfg.dev {
        app = app.route("/dev/token", post(dev_token));
    }
    app.with_state(state)
}

/// Serves `app` on `listener` with axum on tokio until `shutdown`, with the
/// peer address available to handlers.
async fn serve_on_tokio(
    listener: TcpListener,
    app: Router,
    shutdown: tokio_util::sync::WaitForCancellationFutureOwned,
) -> io::Result<()> {
    use axum::serve::ListenerExt;
    // Chat frames are small and latency-bound: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting is bad.
    Config(crate::ConfigError),
    /// A runtime could not be built.
    Runtime(String),
    /// The address could not be bound.
    Bind(SocketAddr, io::Error),
    /// Redis could not be reached or used.
    Redis(curfew_redis::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Runtime(e) => write!(f, "cannot start a runtime: {e}"),
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Redis(e) => write!(f, "--redis: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running chat server, on threads of its own. Dropping it shuts it down.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Validates `config`, binds `addr` and serves on background threads.
    pub fn start(config: ChatConfig, addr: SocketAddr) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("curfew-chat".into())
            .spawn(move || run(config, addr, ready_tx))
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok((addr, state))) => Ok(Server {
                addr,
                state,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(StartError::Runtime(
                "the server thread exited during start-up".into(),
            )),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of its counters.
    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// Signs a token for `user` with the server's secret (for tests and
    /// tools that share the secret).
    pub fn token(&self, user: &str, ttl: Duration) -> Result<String, crate::auth::TokenError> {
        self.state.tokens.sign(user, ttl)
    }

    /// Stops accepting, closes every connection with `1001` and waits for
    /// the threads (a few seconds at most).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Waits until the server stops by itself (it does not, unless a
    /// runtime fails) or `shutdown` is called from elsewhere.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop(&mut self) {
        self.state.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

type Ready = Result<(SocketAddr, Arc<State>), StartError>;

/// Builds the shared state, binds, reports readiness and serves until
/// shutdown. Runs inside whichever runtime serves the connections.
async fn run_server(
    config: ChatConfig,
    addr: SocketAddr,
    exec: Exec,
    ready: std::sync::mpsc::Sender<Ready>,
) {
    let fail = |e: StartError| {
        let _ = ready.send(Err(e));
    };
    let limiter = match &config.redis {
        None => RateLimit::memory(config.rate, config.burst),
        Some(url) => match RateLimit::redis(url, config.rate, config.burst).await {
            Ok(l) => l,
            Err(e) => return fail(StartError::Redis(e)),
        },
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => return fail(StartError::Bind(addr, e)),
    };
    let local = listener.local_addr().unwrap_or(addr);
    let state = Arc::new(State {
        tokens: Tokens::new(&config.jwt_secret),
        rooms: Rooms::new(config.history, config.max_rooms),
        claims: Claims::default(),
        limiter,
        exec,
        counters: Arc::default(),
        shutdown: CancellationToken::new(),
        next_message: AtomicU64::new(0),
        next_conn: AtomicU64::new(0),
        per_ip: Mutex::new(HashMap::new()),
        cfg: config,
    });
    let housekeeping = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                state.limiter.forget_idle();
            }
        })
    };
    let _ = ready.send(Ok((local, state.clone())));
    drop(ready);
    tracing::info!(addr = %local, "curfew-chat listening");
    let app = router(state.clone());
    let shutdown = state.shutdown.clone().cancelled_owned();
    let served = match (&state.exec, state.cfg.poll_budget) {
        (Exec::Curfew { .. }, Some(_)) => {
            // Connections are curfew tasks; each HTTP handler (the page, the
            // token, the handshake) runs under the layer's budget.
            let app =
                app.layer(curfew_http::CurfewLayer::new().poll_budget(state.cfg.http_poll_budget));
            curfew_http::serve(listener, app)
                .max_connections(state.cfg.max_connections)
                .with_graceful_shutdown(shutdown)
                .await
        }
        _ => serve_on_tokio(listener, app, shutdown).await,
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "server stopped");
    }
    // Connections close with 1001 once shutdown is cancelled; give them a
    // moment to say so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while state.counters.connections_open.load(Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    housekeeping.abort();
}

fn run(config: ChatConfig, addr: SocketAddr, ready: std::sync::mpsc::Sender<Ready>) {
    let fail = |e: StartError| {
        let _ = ready.send(Err(e));
    };
    match config.poll_budget {
        Some(budget) => {
            // Everything on curfew: connections on its I/O driver, handlers
            // as budgeted tasks.
            let rt = match curfew::Runtime::builder()
                .event_threads(config.event_threads)
                .poll_budget(budget)
                .client_policy(curfew::policy::ClientPolicy::new(
                    config.strikes,
                    config.cool_off,
                ))
                .max_hijacked_threads(config.max_hijacked_threads)
                .max_abandoned_threads(config.max_hijacked_threads)
                .demote_hijacked_threads(config.demote_hijacked_threads)
                .blocking_nice(config.pool_nice)
                .thread_name("chat")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(StartError::Runtime(e.to_string())),
            };
            let exec = Exec::Curfew {
                handle: rt.handle(),
                budget,
            };
            rt.block_on(run_server(config, addr, exec, ready));
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        None => {
            // `--no-budgets`: plain tokio, handlers inline, for comparison.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.io_threads)
                .thread_name("chat-io")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(StartError::Runtime(e.to_string())),
            };
            rt.block_on(run_server(config, addr, Exec::Inline, ready));
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
