//! Malformed frames get `invalid` and the connection stays open; the third
//! protocol error within a minute closes it with 1008, after its error frame.

mod common;

use common::{Client, server};
use curfew_chat::protocol::{ErrorCode, ServerFrame};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_invalid_and_the_third_closes_1008() {
    let server = server(|_| {});
    let mut mallory = Client::connect(&server, "mallory").await;
    let invalid = ServerFrame::error(ErrorCode::Invalid);

    mallory
        .send_text(r#"{"type":"message","room":"lobby","text":"#.into())
        .await;
    assert_eq!(mallory.frame().await, invalid, "truncated JSON");
    mallory.say("lobby", "ok after one").await;
    assert!(
        matches!(mallory.frame().await, ServerFrame::Message { .. }),
        "still served"
    );

    mallory
        .ws
        .send(Message::binary(vec![0xff, 0x00, 0x13]))
        .await
        .unwrap();
    assert_eq!(mallory.frame().await, invalid, "binary frame");

    mallory
        .send_text(r#"{"type":"message","room":"lobby","text":"hi","is_admin":true}"#.into())
        .await;
    assert_eq!(mallory.frame().await, invalid, "unknown field");
    assert_eq!(mallory.until_closed().await, Some(1008));
    assert_eq!(server.stats().invalid, 3);
    assert_eq!(server.stats().protocol_closes, 1);

    // Each kind of bad input, one per fresh connection (two errors stay
    // under the limit).
    let bad = [
        r#"not json"#,
        r#"{"type":"shout","room":"lobby","text":"hi"}"#,
        r#"{"type":"message","room":"lobby"}"#,
        r#"{"type":"message","room":"lobby","text":42}"#,
        r#"{"type":"message","room":"../../etc","text":"hi"}"#,
        r#"{"type":"message","room":"lobby","text":"\u0007bell"}"#,
        r#"{"type":"message","room":"never-joined","text":"hi"}"#,
        r#"{"type":"search","room":"lobby","pattern":"(unclosed"}"#,
        r#"{"type":"claim","item":""}"#,
    ];
    for (i, b) in bad.iter().enumerate() {
        let mut c = Client::connect(&server, &format!("fuzz{i}")).await;
        c.send_text((*b).into()).await;
        assert_eq!(c.frame().await, invalid, "{b}");
    }
}
