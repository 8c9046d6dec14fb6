//! A 1 MiB frame is answered `too_large` and the connection stays usable; a
//! frame over the hard frame limit is not buffered: the connection closes
//! with 1009.

mod common;

use common::{Client, Event, server};
use curfew_chat::protocol::{ErrorCode, ServerFrame};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_frame_is_too_large_and_the_connection_stays_open() {
    let server = server(|_| {});
    let mut mallory = Client::connect(&server, "mallory").await;
    let huge = format!(
        r#"{{"type":"message","room":"lobby","text":"{}"}}"#,
        "A".repeat(1 << 20)
    );
    mallory.send_text(huge).await;
    assert_eq!(
        mallory.frame().await,
        ServerFrame::error(ErrorCode::TooLarge)
    );
    // Still open and served.
    mallory.say("lobby", "still here").await;
    match mallory.frame().await {
        ServerFrame::Message { text, .. } => assert_eq!(text, "still here"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.stats().too_large, 1);
    assert_eq!(
        server.stats().messages,
        1,
        "the oversized text was never broadcast"
    );

    // Over the hard limit (2 MiB by default): closed with 1009. The server
    // closes as soon as it has read past the limit, so the client may still
    // be writing the rest of the frame then, and its write can fail with a
    // reset (seen when tests run as threads of one process); what the server
    // must do is close the connection for the oversized frame, with 1009
    // whenever the client is still there to read it.
    let sent = mallory.ws.send(Message::text("B".repeat(3 << 20))).await;
    let closed = mallory.until_closed().await;
    match sent {
        Ok(()) => assert_eq!(closed, Some(1009)),
        Err(e) => assert!(
            matches!(closed, None | Some(1009)),
            "write failed ({e}) and the close was {closed:?}"
        ),
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.stats().oversize_closes == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats().oversize_closes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_limit_is_exact() {
    let server = server(|c| c.max_message_bytes = 100);
    let mut c = Client::connect(&server, "carol").await;
    let frame = |n: usize| {
        let head = r#"{"type":"message","room":"lobby","text":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(n - head.len() - tail.len()))
    };
    c.send_text(frame(100)).await;
    assert!(
        matches!(c.frame().await, ServerFrame::Message { .. }),
        "exactly at the limit is served"
    );
    c.send_text(frame(101)).await;
    assert_eq!(
        c.next().await,
        Event::Frame(ServerFrame::error(ErrorCode::TooLarge))
    );
}
