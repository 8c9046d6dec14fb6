//! Shared by the tests: a server on 127.0.0.1 and a real WebSocket client.
#![allow(dead_code)]

use std::time::Duration;

use curfew_chat::protocol::{ClientFrame, ServerFrame};
use curfew_chat::{ChatConfig, Server};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The secret every test server signs with.
pub const SECRET: &[u8] = b"test secret that is at least 32 bytes long";

/// How long a test waits for any one frame before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A server on an ephemeral port, with `tweak` applied to the defaults.
pub fn server(tweak: impl FnOnce(&mut ChatConfig)) -> Server {
    let mut config = ChatConfig::new(SECRET.to_vec());
    // Generous budgets, so that a loaded test machine never times out a
    // benign handler; the poisoned-search test sets its own.
    config.poll_budget = Some(Duration::from_secs(1));
    config.http_poll_budget = Duration::from_secs(5);
    tweak(&mut config);
    Server::start(config, "127.0.0.1:0".parse().unwrap()).expect("server starts")
}

pub fn token(server: &Server, user: &str) -> String {
    server.token(user, Duration::from_secs(600)).unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/ws` with `query` and extra `headers`; the HTTP status if the
/// handshake is refused.
pub async fn handshake(server: &Server, query: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let url = format!("ws://{}/ws{query}", server.local_addr());
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    {
        Err(_) => panic!("no handshake answer within {WAIT:?}"),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// What a client saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Frame(ServerFrame),
    /// The server closed, with this code (`None`: no close frame).
    Closed(Option<u16>),
}

pub struct Client {
    pub ws: Ws,
    pub user: String,
}

impl Client {
    pub async fn connect(server: &Server, user: &str) -> Client {
        let ws = handshake(server, &format!("?token={}", token(server, user)), &[])
            .await
            .unwrap_or_else(|status| panic!("{user} refused with {status}"));
        Client {
            ws,
            user: user.into(),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(serde_json::to_string(frame).unwrap()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn say(&mut self, room: &str, text: &str) {
        self.send(&ClientFrame::Message {
            room: room.into(),
            text: text.into(),
        })
        .await;
    }

    /// The next frame or close, within [`WAIT`].
    pub async fn next(&mut self) -> Event {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: nothing within {WAIT:?}", self.user))
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                None => return Some(Event::Closed(None)),
                Some(Ok(Message::Text(t))) => {
                    let frame: ServerFrame = serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("server sent a frame outside the protocol: {t}: {e}")
                    });
                    return Some(Event::Frame(frame));
                }
                Some(Ok(Message::Close(c))) => {
                    return Some(Event::Closed(c.map(|c| u16::from(c.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) => return Some(Event::Closed(None)),
            }
        }
    }

    pub async fn frame(&mut self) -> ServerFrame {
        match self.next().await {
            Event::Frame(f) => f,
            Event::Closed(code) => panic!(
                "{}: closed ({code:?}) while a frame was expected",
                self.user
            ),
        }
    }

    /// Reads until the connection closes; the close code.
    pub async fn until_closed(&mut self) -> Option<u16> {
        loop {
            if let Event::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    pub async fn join(&mut self, room: &str) {
        self.send(&ClientFrame::Join { room: room.into() }).await;
        loop {
            match self.frame().await {
                ServerFrame::Joined { room: r } if r == room => return,
                ServerFrame::Message { .. } => continue,
                other => panic!("{}: join {room}: {other:?}", self.user),
            }
        }
    }
}

/// The p-th percentile (0-100) of `samples`, by nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty());
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}
