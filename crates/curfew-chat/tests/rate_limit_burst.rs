//! Seed 000: a user limited to 1 message a second reconnects and flushes
//! 500 buffered messages at once. The check and the record are one atomic
//! step, so at most the burst allowance (plus what the rate refills while
//! the burst is handled) gets through.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Event, server};
use curfew_chat::protocol::{ErrorCode, ServerFrame};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const BURST: u32 = 5;
const FLOOD: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_message_burst_after_reconnecting_passes_at_most_the_burst() {
    let server = server(|c| c.burst = std::num::NonZeroU32::new(BURST).unwrap());
    let mut watcher = Client::connect(&server, "watcher").await;

    // Connect, chat a little, drop the connection.
    let mut first = Client::connect(&server, "mallory").await;
    first.say("lobby", "before").await;
    assert!(matches!(first.frame().await, ServerFrame::Message { .. }));
    drop(first);

    // Reconnect and flush the buffer: 500 frames written at once.
    let mut mallory = Client::connect(&server, "mallory").await;
    let started = Instant::now();
    for i in 0..FLOOD {
        let text = format!(r#"{{"type":"message","room":"lobby","text":"buffered {i}"}}"#);
        mallory.ws.feed(Message::text(text)).await.unwrap();
    }
    mallory.ws.flush().await.unwrap();

    // Every frame gets an answer: its own echo or rate_limited.
    let (mut echoed, mut limited) = (0usize, 0usize);
    while echoed + limited < FLOOD {
        match mallory.next().await {
            Event::Frame(ServerFrame::Message { from, .. }) if from == "mallory" => echoed += 1,
            Event::Frame(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                retry_after_ms,
            }) => {
                assert!(
                    retry_after_ms.is_some_and(|ms| ms <= 1000),
                    "{retry_after_ms:?}"
                );
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let elapsed = started.elapsed();
    // What the limit allows: the burst, minus the message sent before, plus
    // one per second that the burst took to handle.
    let allowance = BURST as usize - 1 + elapsed.as_secs_f64().ceil() as usize;
    println!(
        "burst of {FLOOD}: {echoed} admitted, {limited} rate_limited in {elapsed:?} (allowance {allowance})"
    );
    assert!(
        echoed <= allowance,
        "{echoed} admitted, over the allowance of {allowance}"
    );
    assert!(echoed >= 1, "the limit admits something");
    assert_eq!(server.stats().rate_limited, limited as u64);

    // The watcher saw exactly the admitted ones (and the one before).
    let mut seen = 0;
    while let Some(Event::Frame(ServerFrame::Message { from, .. })) =
        watcher.next_within(Duration::from_millis(500)).await
    {
        assert_eq!(from, "mallory");
        seen += 1;
    }
    assert_eq!(seen, echoed + 1);
}
