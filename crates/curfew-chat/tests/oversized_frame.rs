//! A 1 MiB frame is answered `too_large` and the connection stays usable; a
//! frame over the hard frame limit is not buffered: the connection closes
//! with 1009.

mod common;

use common::{Client, Event, server};
use curfew_chat::protocol::{ErrorCode, ServerFrame};

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

    // Over the hard limit (2 MiB by default): closed with 1009.
    mallory.send_text("B".repeat(3 << 20)).await;
    assert_eq!(mallory.until_closed().await, Some(1009));
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
