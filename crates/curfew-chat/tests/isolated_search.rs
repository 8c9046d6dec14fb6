//! Searches in worker processes (`ChatConfig::search_process`): a benign
//! search is answered through the worker; a poisoned one is answered
//! `timeout` at its budget, and its worker process, which would otherwise
//! spin until the regex returns, is killed, so no CPU stays poisoned.

mod common;

use std::time::{Duration, Instant};

use common::{Client, server};
use curfew_chat::protocol::{ClientFrame, ErrorCode, SearchMatch, ServerFrame};

/// The chat binary's search workers that are children of this process.
fn search_workers() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        // Fields after the command name: state, then the parent's pid.
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        // A reaped-but-listed or zombie worker counts only while it exists.
        let state = stat[close + 1..].split_whitespace().next();
        if comm.starts_with("curfew-chat") && ppid == Some(&me.to_string()) && state != Some("Z") {
            found.push(pid);
        }
    }
    found
}

async fn answer_to_search(client: &mut Client, pattern: &str) -> ServerFrame {
    client
        .send(&ClientFrame::Search {
            room: "lobby".into(),
            pattern: pattern.into(),
        })
        .await;
    loop {
        match client.frame().await {
            ServerFrame::Message { .. } => continue,
            f => return f,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_search_in_a_worker_process_is_killed_at_its_budget() {
    let server = server(|c| {
        // Every search here starts a process (of a debug build, at the
        // worker pool's lowered priority): on a loaded 2-core machine that
        // alone has taken over 300 ms, which turned a benign search into a
        // timeout. The poisoned search never ends, so a longer budget only
        // makes the test wait longer for it.
        c.poll_budget = Some(Duration::from_secs(2));
        c.search_process = Some(env!("CARGO_BIN_EXE_curfew-chat").into());
        c.strikes = 3;
        c.rate = "100/s".parse().unwrap();
        c.burst = std::num::NonZeroU32::new(100).unwrap();
    });
    let mut alice = Client::connect(&server, "alice").await;
    alice.say("lobby", "hello <world>").await;
    alice.say("lobby", "goodbye").await;

    // A benign search, answered by a worker process, escaped as usual.
    match answer_to_search(&mut alice, "hel+o").await {
        ServerFrame::SearchResult { matches, .. } => assert_eq!(
            matches,
            [SearchMatch {
                id: matches[0].id,
                from: "alice".into(),
                text: "hello &lt;world&gt;".into(),
            }]
        ),
        f => panic!("expected search results, got {f:?}"),
    }
    // A pattern that does not compile is `invalid`, from the worker too.
    assert_eq!(
        answer_to_search(&mut alice, "(unclosed").await,
        ServerFrame::error(ErrorCode::Invalid)
    );

    // A search that never ends (2^40 ways to split the text).
    alice.say("lobby", &"ab".repeat(40)).await;
    let search = ClientFrame::Search {
        room: "lobby".into(),
        pattern: r"(a|b|ab)*(?=c)".into(),
    };
    let t = Instant::now();
    alice.send(&search).await;
    // While it runs, its worker process exists.
    let mut seen = false;
    while !seen && t.elapsed() < Duration::from_secs(10) {
        seen = !search_workers().is_empty();
        if !seen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let answer = loop {
        match alice.frame().await {
            ServerFrame::Message { .. } => continue,
            f => break f,
        }
    };
    assert_eq!(answer, ServerFrame::error(ErrorCode::Timeout));
    assert!(seen, "no search worker process ran the search");
    // Then the worker is gone: no process (and no thread) spins on.
    let gone = Instant::now();
    while !search_workers().is_empty() && gone.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        search_workers(),
        Vec::<u32>::new(),
        "the poisoned worker lives on"
    );
    assert_eq!(server.stats().timeouts, 1);

    // The chat goes on.
    match answer_to_search(&mut alice, "good").await {
        ServerFrame::SearchResult { matches, .. } => assert_eq!(matches.len(), 1),
        f => panic!("expected search results, got {f:?}"),
    }
}
