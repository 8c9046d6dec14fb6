//! A client that stops reading while its room is busy is closed with 1013
//! once its bounded outbound queue is full; the server does not buffer for
//! it, so its memory stays flat while the room goes on at full speed.

mod common;

use std::time::{Duration, Instant};

use common::{server, token};
use curfew_chat::stats::rss_bytes;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const TEXT_BYTES: usize = 4000;
/// Messages the flooders send in all: 8,000 × 4 kB = 32 MB aimed at the
/// slow reader.
const FLOOD: usize = 8_000;
/// A generous bound for each phase on a loaded machine.
const PHASE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_1013_with_bounded_memory() {
    let server = server(|c| {
        c.rate = "100000/s".parse().unwrap();
        c.burst = std::num::NonZeroU32::new(100_000).unwrap();
        c.outbound_queue = 64;
        // The close frame waits in the server until the slow reader reads,
        // which it does only after the flood: on a loaded machine the flood
        // outlasts the default 10 s, and the server would give up on the
        // close (dropping the connection without a close frame).
        c.close_timeout = PHASE;
    });
    let addr = server.local_addr();

    // The slow reader: a small receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws?token={}", token(&server, "sloth"));
    let (mut sloth, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();

    // Two flooders that read everything they are sent.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for user in ["flood-a", "flood-b"] {
        let mut c = common::Client::connect(&server, user).await;
        // In the lobby before the flood starts (its connection's task puts
        // it there after the upgrade), so that it gets every message.
        c.join("lobby").await;
        let (tx, mut rx) = c.ws.split();
        senders.push(tx);
        readers.push(tokio::spawn(async move {
            let mut close = None;
            let mut frames = 0usize;
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Close(c) => {
                        close = c.map(|c| u16::from(c.code));
                        break;
                    }
                    Message::Text(_) => {
                        frames += 1;
                        if frames == FLOOD {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            (frames, close)
        }));
    }

    let rss_before = rss_bytes();
    let started = Instant::now();
    let text = format!(
        r#"{{"type":"message","room":"lobby","text":"{}"}}"#,
        "x".repeat(TEXT_BYTES)
    );
    let mut closed_after = None;
    for i in 0..FLOOD {
        senders[i % 2]
            .send(Message::text(text.clone()))
            .await
            .unwrap();
        if closed_after.is_none() && server.stats().slow_closes > 0 {
            closed_after = Some(i);
        }
        assert!(started.elapsed() < PHASE, "flood took over {PHASE:?}");
    }
    let rss_after = rss_bytes();
    let closed_after = closed_after.expect("the slow reader was never closed");
    let growth = rss_after.saturating_sub(rss_before);
    println!(
        "slow reader closed after {closed_after} of {FLOOD} messages ({} MB sent its way); \
         test process RSS {} -> {} MiB (+{} KiB) in {:?}",
        FLOOD * TEXT_BYTES / 1_000_000,
        rss_before >> 20,
        rss_after >> 20,
        growth >> 10,
        started.elapsed()
    );
    assert!(
        growth < 16 << 20,
        "RSS grew by {} MiB while flooding a reader that does not read",
        growth >> 20
    );

    // The slow reader now reads: what the kernel buffered, then the close.
    let mut frames = 0usize;
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = sloth.next().await {
            match m {
                Message::Close(c) => return c.map(|c| u16::from(c.code)),
                _ => frames += 1,
            }
        }
        None
    })
    .await
    .expect("the slow reader's connection did not end within 30 s");
    println!("the slow reader got {frames} frames, then close {code:?}");
    assert_eq!(code, Some(1013));
    assert!(frames < FLOOD, "it was not sent everything");

    // The readers that kept up were never closed, and got everything.
    for r in readers {
        let (frames, close) = tokio::time::timeout(PHASE, r)
            .await
            .expect("a flooder did not get every frame in time")
            .unwrap();
        assert_ne!(
            close,
            Some(1013),
            "a reader that keeps up was closed as slow"
        );
        assert!(frames >= FLOOD, "a flooder got {frames} of {FLOOD} frames");
    }
    assert_eq!(server.stats().slow_closes, 1);
}
