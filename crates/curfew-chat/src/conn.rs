//! One WebSocket connection: a reader that handles the client's frames in
//! order, and a writer that drains the connection's bounded outbound queue.
//!
//! * **Size and validation.** A text frame over `--max-message-bytes` is
//!   answered `too_large` without being parsed; bad JSON, an unknown type or
//!   field, a bad name, a binary frame or a room not joined is `invalid`.
//!   The connection stays open, but the third such protocol error within a
//!   minute closes it with `1008`. A frame over `--max-frame-bytes` is never
//!   buffered: the connection closes with `1009`.
//! * **Rate.** Each frame that parses costs one admission from the user's
//!   rate limit ([`limit`](crate::limit)) before its handler runs.
//! * **Budgets.** Each handler runs through [`Exec`](crate::exec::Exec),
//!   under the poll budget; the reader awaits it, so one connection's frames
//!   are handled in order while other connections' run in parallel.
//! * **Slow readers.** Every frame for a connection goes through one
//!   bounded queue. A reply to the connection's own request waits for room,
//!   so a client that sends faster than it reads is slowed to its reading
//!   pace. A broadcast from another connection never waits (`try_send`):
//!   when the queue is full the connection is closed with `1013` ("try
//!   again later") and its queue is dropped, so a client that does not read
//!   costs at most the queue, never an unbounded buffer (Etherpad's bounded
//!   `pendingEdits`), and never slows the sender.

use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use curfew::ClientKey;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::exec::Failure;
use crate::isolate::{SearchError, SearchProcess};
use crate::protocol::{ClientFrame, ErrorCode, LOBBY, ServerFrame, escape};
use crate::rooms::Entry;
use crate::search;
use crate::server::State;
use crate::stats::Counters;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the server is going away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: policy violation (3 protocol errors a minute, expired token).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a frame over the hard frame limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: an internal error.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: try again later; the client did not read fast enough.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Protocol errors allowed in [`PROTOCOL_WINDOW`]; the next one closes.
pub const MAX_PROTOCOL_ERRORS: usize = 3;
/// The window protocol errors are counted in.
pub const PROTOCOL_WINDOW: Duration = Duration::from_secs(60);

/// Tells a connection's reader and writer to stop, with the close code
/// chosen by whoever asked first.
#[derive(Debug)]
pub(crate) struct Closer {
    token: CancellationToken,
    code: AtomicU16,
}

impl Closer {
    fn new(token: CancellationToken) -> Self {
        Self {
            token,
            code: AtomicU16::new(0),
        }
    }

    /// Asks the connection to close with `code`; true if this call chose
    /// the code.
    fn close(&self, code: u16) -> bool {
        let first = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.token.cancel();
        first
    }

    /// The code to close with; a server shutdown sets none and gets 1001.
    fn code(&self) -> u16 {
        match self.code.load(Ordering::Acquire) {
            0 => CLOSE_GOING_AWAY,
            c => c,
        }
    }
}

/// The sending end of a connection's bounded outbound queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    closer: Arc<Closer>,
    counters: Arc<Counters>,
}

impl Outbox {
    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `frame` without waiting. If the queue is full the connection
    /// is closed with `1013`. False if the frame was not queued.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => {
                Counters::bump(&self.counters.frames_queued);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.closer.close(CLOSE_TRY_AGAIN_LATER) {
                    Counters::bump(&self.counters.slow_closes);
                    tracing::info!(
                        conn = self.id,
                        "closing a connection that does not read: outbound queue full"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a reply to the connection's own request, waiting for room:
    /// a client that sends faster than it reads is slowed down to its own
    /// reading pace (its reader stops, and TCP pushes back). False if the
    /// connection is closing.
    async fn reply(&self, frame: &ServerFrame) -> bool {
        let frame: Utf8Bytes = frame.to_json().into();
        tokio::select! {
            biased;
            _ = self.closer.token.cancelled() => false,
            sent = self.tx.send(frame) => {
                Counters::bump(&self.counters.frames_queued);
                sent.is_ok()
            }
        }
    }
}

/// Serves one upgraded connection for `user` until it closes. `_guard` is
/// the connection's place under the connection caps, given back on return.
pub(crate) async fn serve<G: Send + 'static>(
    state: Arc<State>,
    socket: WebSocket,
    user: Arc<str>,
    exp: u64,
    _guard: G,
) {
    let id = state.next_conn_id();
    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(state.cfg.outbound_queue);
    let closer = Arc::new(Closer::new(state.shutdown.child_token()));
    let outbox = Outbox {
        id,
        tx,
        closer: closer.clone(),
        counters: state.counters.clone(),
    };
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        closer.clone(),
        state.cfg.close_timeout,
        state.counters.clone(),
    ));
    let mut conn = Conn {
        client: ClientKey::id(&*user),
        user,
        exp,
        outbox,
        closer,
        rooms: HashSet::new(),
        protocol_errors: VecDeque::new(),
        state,
    };
    if let Ok(lobby) = conn.state.rooms.join(LOBBY, &conn.outbox) {
        conn.rooms.insert(lobby);
    }
    conn.read_loop(stream).await;
    for room in conn.rooms.drain() {
        conn.state.rooms.leave(&room, id);
    }
    conn.closer.close(CLOSE_NORMAL);
    drop(conn);
    let _ = writer.await;
}

struct Conn {
    state: Arc<State>,
    user: Arc<str>,
    client: ClientKey,
    exp: u64,
    outbox: Outbox,
    closer: Arc<Closer>,
    rooms: HashSet<Arc<str>>,
    protocol_errors: VecDeque<Instant>,
}

type HandlerResult = Result<Option<ServerFrame>, ErrorCode>;

impl Conn {
    async fn read_loop(&mut self, mut stream: futures::stream::SplitStream<WebSocket>) {
        loop {
            let next = tokio::select! {
                biased;
                _ = self.closer.token.cancelled() => return,
                next = stream.next() => next,
            };
            let flow = match next {
                None => return,
                Some(Ok(Message::Text(text))) => self.on_text(text).await,
                Some(Ok(Message::Binary(_))) => self.protocol_error(ErrorCode::Invalid).await,
                Some(Ok(Message::Close(_))) => {
                    self.closer.close(CLOSE_NORMAL);
                    return;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => ControlFlow::Continue(()),
                Some(Err(e)) => {
                    if is_capacity_error(e) && self.closer.close(CLOSE_TOO_BIG) {
                        Counters::bump(&self.state.counters.oversize_closes);
                    }
                    return;
                }
            };
            if flow.is_break() {
                return;
            }
        }
    }

    async fn reply(&self, frame: ServerFrame) -> ControlFlow<()> {
        if self.outbox.reply(&frame).await {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    /// Answers a protocol error; the third within a minute closes with 1008.
    async fn protocol_error(&mut self, code: ErrorCode) -> ControlFlow<()> {
        let counter = match code {
            ErrorCode::TooLarge => &self.state.counters.too_large,
            _ => &self.state.counters.invalid,
        };
        Counters::bump(counter);
        self.reply(ServerFrame::error(code)).await?;
        let now = Instant::now();
        while self
            .protocol_errors
            .front()
            .is_some_and(|t| now.duration_since(*t) >= PROTOCOL_WINDOW)
        {
            self.protocol_errors.pop_front();
        }
        self.protocol_errors.push_back(now);
        if self.protocol_errors.len() >= MAX_PROTOCOL_ERRORS {
            if self.closer.close(CLOSE_POLICY) {
                Counters::bump(&self.state.counters.protocol_closes);
            }
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> ControlFlow<()> {
        if text.len() > self.state.cfg.max_message_bytes {
            return self.protocol_error(ErrorCode::TooLarge).await;
        }
        let frame: ClientFrame = match serde_json::from_str(text.as_str()) {
            Ok(f) => f,
            Err(_) => return self.protocol_error(ErrorCode::Invalid).await,
        };
        if let Err(code) = frame.validate() {
            return self.protocol_error(code).await;
        }
        if auth::unix_now() > self.exp {
            self.reply(ServerFrame::error(ErrorCode::Unauthorized))
                .await?;
            self.closer.close(CLOSE_POLICY);
            return ControlFlow::Break(());
        }
        if let ClientFrame::Message { room, .. } | ClientFrame::Search { room, .. } = &frame {
            if !self.rooms.contains(room.as_str()) {
                return self.protocol_error(ErrorCode::Invalid).await;
            }
        }
        if let Err(wait) = self.state.limiter.check(&self.client).await {
            Counters::bump(&self.state.counters.rate_limited);
            return self
                .reply(ServerFrame::error_retry(ErrorCode::RateLimited, wait))
                .await;
        }
        match self.dispatch(frame).await {
            Ok(Ok(Some(reply))) => self.reply(reply).await,
            Ok(Ok(None)) => ControlFlow::Continue(()),
            Ok(Err(code)) if code.is_protocol_error() => self.protocol_error(code).await,
            Ok(Err(code)) => self.reply(ServerFrame::error(code)).await,
            Err(Failure::Timeout) => {
                Counters::bump(&self.state.counters.timeouts);
                self.reply(ServerFrame::error(ErrorCode::Timeout)).await
            }
            Err(Failure::Refused(left)) => {
                Counters::bump(&self.state.counters.refused);
                self.reply(match left {
                    Some(left) => ServerFrame::error_retry(ErrorCode::Refused, left),
                    None => ServerFrame::error(ErrorCode::Refused),
                })
                .await
            }
            Err(Failure::Panic) => {
                tracing::error!(user = %self.user, "a chat handler panicked; closing the connection");
                self.closer.close(CLOSE_INTERNAL);
                ControlFlow::Break(())
            }
        }
    }

    async fn dispatch(&mut self, frame: ClientFrame) -> Result<HandlerResult, Failure> {
        let state = self.state.clone();
        let exec = &self.state.exec;
        match frame {
            ClientFrame::Join { room } => {
                if let Some(name) = self.rooms.get(room.as_str()) {
                    return Ok(Ok(Some(ServerFrame::Joined {
                        room: name.to_string(),
                    })));
                }
                if self.rooms.len() >= self.state.cfg.max_rooms_per_connection {
                    return Ok(Err(ErrorCode::Invalid));
                }
                let outbox = self.outbox.clone();
                let joined = exec
                    .run("chat.join", &self.client, async move {
                        state.rooms.join(&room, &outbox)
                    })
                    .await?;
                Ok(joined.map(|name| {
                    self.rooms.insert(name.clone());
                    Some(ServerFrame::Joined {
                        room: name.to_string(),
                    })
                }))
            }
            ClientFrame::Message { room, text } => {
                let from = self.user.clone();
                exec.run("chat.message", &self.client, async move {
                    let id = state.next_message_id();
                    let frame = ServerFrame::Message {
                        room: room.clone(),
                        from: from.to_string(),
                        text: escape(&text),
                        id,
                    };
                    let entry = Entry {
                        id,
                        from,
                        text: text.into(),
                    };
                    Counters::bump(&state.counters.messages);
                    state.rooms.broadcast(&room, entry, &frame.to_json().into());
                    Ok(None)
                })
                .await
            }
            ClientFrame::Search { room, pattern } => {
                // CPU-bound, and poisonable: on the worker pool, so that a
                // poisoned search never holds an event thread; and, when so
                // configured, in a worker process that is killed once the
                // search has overrun, so that it leaves no thread spinning.
                let history = state.rooms.history(&room).unwrap_or_default();
                let escaped = escape(&pattern);
                let reply = move |found: Option<Vec<_>>| match found {
                    Some(matches) => Ok(Some(ServerFrame::SearchResult {
                        room,
                        pattern: escaped,
                        matches,
                    })),
                    None => Err(ErrorCode::Invalid),
                };
                let Some(exe) = &self.state.cfg.search_process else {
                    return exec
                        .run_blocking("chat.search", &self.client, move || {
                            reply(search::search(&history, &pattern))
                        })
                        .await;
                };
                let worker = SearchProcess::new(exe);
                let job = worker.clone();
                let res = exec
                    .run_blocking("chat.search", &self.client, move || {
                        match job.run(&history, &pattern) {
                            Err(SearchError::Start(e)) => {
                                tracing::warn!(error = %e, "searching in process");
                                Ok(search::search(&history, &pattern))
                            }
                            other => other,
                        }
                    })
                    .await;
                if res.is_err() {
                    // Over budget (or refused before it ran): the worker
                    // goes, and its CPU with it.
                    worker.kill();
                }
                match res? {
                    Ok(found) => Ok(reply(found)),
                    // The worker died without an answer (its memory, a
                    // crash): the search did not finish, as with a timeout.
                    Err(e) => {
                        tracing::warn!(error = %e, "search worker failed");
                        Err(Failure::Timeout)
                    }
                }
            }
            ClientFrame::Claim { item } => {
                let user = self.user.clone();
                exec.run("chat.claim", &self.client, async move {
                    state
                        .claims
                        .claim(&user, &item)
                        .await
                        .map(|()| Some(ServerFrame::Claimed { item }))
                })
                .await
            }
        }
    }
}

fn is_capacity_error(e: axum::Error) -> bool {
    e.into_inner()
        .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

fn close_reason(code: u16) -> &'static str {
    match code {
        CLOSE_POLICY => "policy violation",
        CLOSE_TOO_BIG => "frame too large",
        CLOSE_TRY_AGAIN_LATER => "too slow: outbound queue full",
        CLOSE_GOING_AWAY => "server shutting down",
        CLOSE_INTERNAL => "internal error",
        _ => "",
    }
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    closer: Arc<Closer>,
    close_timeout: Duration,
    counters: Arc<Counters>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = closer.token.cancelled() => break,
            frame = rx.recv() => match frame {
                Some(f) => f,
                None => break,
            },
        };
        tokio::select! {
            biased;
            _ = closer.token.cancelled() => break,
            sent = sink.send(Message::Text(frame)) => match sent {
                Ok(()) => Counters::bump(&counters.frames_sent),
                Err(_) => {
                    closer.close(CLOSE_NORMAL);
                    return;
                }
            },
        }
    }
    let code = closer.code();
    let _ = tokio::time::timeout(close_timeout, async {
        // After a policy violation the client gets the error frames queued
        // before the close; a slow reader's queue is dropped.
        if code == CLOSE_POLICY {
            while let Ok(frame) = rx.try_recv() {
                sink.feed(Message::Text(frame)).await?;
            }
        }
        drop(rx);
        let close = CloseFrame {
            code,
            reason: close_reason(code).into(),
        };
        sink.send(Message::Close(Some(close))).await?;
        sink.close().await
    })
    .await;
}
