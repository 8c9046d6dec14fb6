//! Load generation: benign keep-alive clients and an attacker, over hyper's
//! client connection API.
//!
//! Benign clients are closed-loop, like `ab -k -c N`: each keeps one
//! connection and sends its next request when the previous one is answered.
//! A request unanswered after the benign timeout counts as timed out, and
//! the client reconnects. The attacker is open-loop: it sends a payload at a
//! fixed rate, each on a new connection, whether or not earlier ones were
//! answered.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::server::{CLIENT_HEADER, OUTCOME_HEADER};

/// The error of a client request.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The benign routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /hello`: an async handler.
    Hello,
    /// `GET /file`: a small read on the blocking pool.
    File,
}

impl Route {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Route::Hello => "/hello",
            Route::File => "/file",
        }
    }
}

/// How a benign request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BenignOutcome {
    /// `200 OK`.
    Ok,
    /// Another status, or a transport error.
    Failed,
    /// No answer within the benign timeout.
    TimedOut,
}

/// One benign request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenignSample {
    /// When it was sent, in seconds from the start of the phase.
    pub sent: f64,
    /// How long it took, in seconds (the timeout, if it timed out).
    pub latency: f64,
    /// How it ended.
    pub outcome: BenignOutcome,
    /// Which route it asked for.
    pub route: Route,
}

impl BenignSample {
    /// When it ended, in seconds from the start of the phase.
    pub fn done(&self) -> f64 {
        self.sent + self.latency
    }
}

/// One attack request.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackSample {
    /// When it was sent, in seconds from the start of the phase.
    pub sent: f64,
    /// How long until the answer (or until the attacker stopped waiting).
    pub latency: f64,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The server's `x-lab-outcome` header, `no answer`, or `connection error`.
    pub outcome: String,
    /// Whether a `Retry-After` header came with the answer.
    pub retry_after: bool,
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    connect_from(None, addr).await
}

/// Connects to `addr`, from the local address `local` if given (on Linux
/// every `127.x.y.z` is local, so a client can appear as many peers of
/// one network).
async fn connect_from(
    local: Option<IpAddr>,
    addr: SocketAddr,
) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = match local {
        None => tokio::net::TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn get(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    route: Route,
    client: &str,
) -> Result<u16, BoxError> {
    let reused = sender.is_some();
    if sender.is_none() {
        *sender = Some(connect(addr).await?);
    }
    let s = sender.as_mut().expect("connected above");
    if let Err(e) = s.ready().await {
        if !reused {
            return Err(e.into());
        }
        // The server closed the kept-alive connection while it was idle
        // (a graceful shutdown, an idle timeout): nothing was sent, so open
        // a new one, as any HTTP client does.
        *sender = Some(connect(addr).await?);
        sender.as_mut().expect("connected above").ready().await?;
    }
    let s = sender.as_mut().expect("connected above");
    let req = Request::get(route.path())
        .header(HOST, "127.0.0.1")
        .header(CLIENT_HEADER, client)
        .body(Full::new(Bytes::new()))?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    // `Connection: close`: the server ends the connection after this answer.
    let close = resp
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    resp.into_body().collect().await?;
    if close {
        *sender = None;
    }
    Ok(status)
}

/// One benign client: requests `route` over a keep-alive connection from
/// now until `end`, each with `timeout`. Times are relative to `t0`. A
/// request still in flight at `end` is not recorded.
pub async fn benign_client(
    addr: SocketAddr,
    id: usize,
    route: Route,
    t0: Instant,
    end: Instant,
    timeout: Duration,
) -> Vec<BenignSample> {
    let client = format!("benign-{id}");
    let mut out = Vec::new();
    let mut sender = None;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let give_up = start + timeout;
        let res = tokio::time::timeout_at(
            give_up.min(end).into(),
            get(&mut sender, addr, route, &client),
        )
        .await;
        let now = Instant::now();
        let outcome = match res {
            Ok(Ok(200)) => BenignOutcome::Ok,
            Ok(Ok(_)) => BenignOutcome::Failed,
            Ok(Err(_)) => {
                sender = None;
                // A refused connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                BenignOutcome::Failed
            }
            Err(_) if now >= give_up => {
                sender = None;
                BenignOutcome::TimedOut
            }
            Err(_) => break, // cut off by `end`
        };
        out.push(BenignSample {
            sent: (start - t0).as_secs_f64(),
            latency: (now - start).as_secs_f64(),
            outcome,
            route,
        });
    }
    out
}

/// An answer to [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `x-lab-outcome` header, or `?`.
    pub outcome: String,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// Sends one request on a new connection (closed after it) as `client`.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    client: &str,
    body: Bytes,
) -> Result<Answer, BoxError> {
    send_from(None, addr, method, path, client, body).await
}

/// As [`send`], from the local address `local` if given.
pub async fn send_from(
    local: Option<IpAddr>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    client: &str,
    body: Bytes,
) -> Result<Answer, BoxError> {
    let mut s = connect_from(local, addr).await?;
    s.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "127.0.0.1")
        .header(CONNECTION, "close")
        .header(CLIENT_HEADER, client)
        .body(Full::new(body))?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let outcome = header(OUTCOME_HEADER).unwrap_or_else(|| "?".to_owned());
    let retry_after = header(hyper::header::RETRY_AFTER.as_str());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        outcome,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// What the attacker does in one phase.
#[derive(Debug, Clone)]
pub struct AttackPlan {
    /// The server.
    pub addr: SocketAddr,
    /// The request path, e.g. `/attack/fancy-regex?form=inline`.
    pub path: String,
    /// The payload.
    pub body: Bytes,
    /// Requests per second.
    pub rate: f64,
    /// When to send the first request.
    pub start: Instant,
    /// When to stop sending.
    pub stop: Instant,
    /// How long to wait for answers at the latest.
    pub end: Instant,
}

/// The attacker: sends the plan's payload at its rate, each request on a
/// new connection, and waits for the answers. Times are relative to `t0`.
pub async fn attacker(plan: AttackPlan, t0: Instant) -> Vec<AttackSample> {
    let AttackPlan {
        addr,
        path,
        body,
        rate,
        start,
        stop,
        end,
    } = plan;
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut shots = Vec::new();
    let mut next = start;
    while next < stop {
        tokio::time::sleep_until(next.into()).await;
        let (path, body) = (path.clone(), body.clone());
        shots.push(tokio::spawn(async move {
            let sent = Instant::now();
            let res = tokio::time::timeout_at(
                end.into(),
                send(addr, Method::POST, &path, "attacker", body),
            )
            .await;
            let latency = sent.elapsed().as_secs_f64();
            let (status, outcome, retry_after) = match res {
                Ok(Ok(a)) => (Some(a.status), a.outcome, a.retry_after.is_some()),
                Ok(Err(_)) => (None, "connection error".to_owned(), false),
                Err(_) => (None, "no answer".to_owned(), false),
            };
            AttackSample {
                sent: (sent - t0).as_secs_f64(),
                latency,
                status,
                outcome,
                retry_after,
            }
        }));
        next += period;
    }
    let mut out = Vec::with_capacity(shots.len());
    for s in shots {
        if let Ok(sample) = s.await {
            out.push(sample);
        }
    }
    out
}
