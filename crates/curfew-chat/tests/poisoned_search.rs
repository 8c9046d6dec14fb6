//! Event handler poisoning: a search whose regex backtracks for ever is
//! answered `timeout` within its budget while the other clients' messages
//! keep arriving; after `--strikes` timeouts the attacker is refused, at
//! the handler and at the handshake.

mod common;

use std::time::{Duration, Instant};

use common::{Client, handshake, percentile, server, token};
use curfew_chat::protocol::{ClientFrame, ErrorCode, ServerFrame};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BENIGN: usize = 4;
const PER_CLIENT: usize = 60;
const EVERY: Duration = Duration::from_millis(40);
/// 2^40 ways to split the text: this search never ends.
const PAIRS: usize = 40;
/// The handlers' poll budget: short enough to show, long enough that a
/// benign handler on a loaded machine stays within it.
const BUDGET_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_search_times_out_while_other_clients_chat() {
    let server = server(|c| {
        c.poll_budget = Some(Duration::from_millis(BUDGET_MS));
        // Room for every message of the test, so that the poisoned one is
        // still in the history for the third search, after seconds of
        // benign chat.
        c.history = 10_000;
        c.strikes = 3;
        c.cool_off = Duration::from_secs(60);
        c.rate = "100/s".parse().unwrap();
        c.burst = std::num::NonZeroU32::new(100).unwrap();
    });
    let mut mallory = Client::connect(&server, "mallory").await;
    mallory.say("lobby", &"ab".repeat(PAIRS)).await;
    assert!(matches!(mallory.frame().await, ServerFrame::Message { .. }));

    // Benign clients chat in the same room, each timing its own broadcast.
    let mut clients = Vec::new();
    for b in 0..BENIGN {
        let mut c = Client::connect(&server, &format!("benign{b}")).await;
        // In the lobby before anyone chats (its connection's task puts it
        // there after the upgrade), so that it gets every message.
        c.join("lobby").await;
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(b, c)| tokio::spawn(benign(c, b)))
        .collect();

    // The attack, while they chat: three poisoned searches, one at a time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let poison = ClientFrame::Search {
        room: "lobby".into(),
        pattern: r"(a|b|ab)*(?=c)".into(),
    };
    let mut answered_in = Vec::new();
    for strike in 1..=3 {
        let t = Instant::now();
        mallory.send(&poison).await;
        loop {
            match mallory.frame().await {
                ServerFrame::Message { .. } => continue,
                f => {
                    assert_eq!(f, ServerFrame::error(ErrorCode::Timeout), "strike {strike}");
                    break;
                }
            }
        }
        answered_in.push(t.elapsed());
    }
    // Three strikes: refused, with the cool-off left.
    mallory.send(&poison).await;
    loop {
        match mallory.frame().await {
            ServerFrame::Message { .. } => continue,
            ServerFrame::Error {
                code: ErrorCode::Refused,
                retry_after_ms: Some(ms),
            } => {
                assert!(ms > 0 && ms <= 60_000, "{ms}");
                break;
            }
            f => panic!("expected refused, got {f:?}"),
        }
    }
    // And a new connection for the attacker is refused before the upgrade.
    let q = format!("?token={}", token(&server, "mallory"));
    assert_eq!(handshake(&server, &q, &[]).await.err(), Some(429));

    let mut all = Vec::new();
    for t in tasks {
        let (got, latencies) = t.await.unwrap();
        assert_eq!(
            got,
            BENIGN * PER_CLIENT,
            "a benign client lost messages during the attack"
        );
        all.extend(latencies);
    }
    let p50 = percentile(&mut all, 50.0);
    let p99 = percentile(&mut all, 99.0);
    let max = percentile(&mut all, 100.0);
    println!(
        "poisoned searches answered timeout in {answered_in:?} (budget {BUDGET_MS} ms); \
         benign broadcast latency over {} messages: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        all.len()
    );
    let s = server.stats();
    assert_eq!(s.timeouts, 3);
    assert_eq!(s.refused, 1);
    assert!(
        answered_in.iter().all(|d| *d < Duration::from_secs(10)),
        "{answered_in:?}"
    );
}

/// Sends [`PER_CLIENT`] messages, one every [`EVERY`], and reads (in a
/// task of its own) until it has every benign client's; returns how many it
/// got and the latency of its own.
async fn benign(c: Client, b: usize) -> (usize, Vec<Duration>) {
    let me = format!("benign{b}");
    let (mut tx, mut rx) = c.ws.split();
    let reader = tokio::spawn({
        let me = me.clone();
        async move {
            let mut got = 0usize;
            let mut latencies = Vec::new();
            while got < BENIGN * PER_CLIENT {
                let m = rx.next().await;
                let Some(Ok(Message::Text(t))) = m else {
                    panic!("{me}: connection ended: {m:?}")
                };
                if let Ok(ServerFrame::Message { from, text, .. }) =
                    serde_json::from_str(t.as_str())
                {
                    if from.starts_with("benign") {
                        got += 1;
                    }
                    if from == me {
                        let at: u128 = text.rsplit(' ').next().unwrap().parse().unwrap();
                        latencies.push(Duration::from_nanos(
                            (epoch_nanos() - at).try_into().unwrap(),
                        ));
                    }
                }
            }
            (got, latencies)
        }
    });
    for i in 0..PER_CLIENT {
        let text = format!("{me} message {i} sent at {}", epoch_nanos());
        let frame = ClientFrame::Message {
            room: "lobby".into(),
            text,
        };
        tx.send(Message::text(serde_json::to_string(&frame).unwrap()))
            .await
            .unwrap();
        tokio::time::sleep(EVERY).await;
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap_or_else(|_| panic!("{me}: did not get every benign message within 60 s"))
        .unwrap()
}

fn epoch_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
