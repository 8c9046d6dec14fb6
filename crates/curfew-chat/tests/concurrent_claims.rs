//! Seed 002's double-spend: one user fires claims from many connections at
//! once. Claims are serialized per user, so exactly one succeeds.

mod common;

use common::{Client, server};
use curfew_chat::protocol::{ClientFrame, ErrorCode, ServerFrame};
use futures::future::join_all;

const CONNECTIONS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_by_one_user_give_exactly_one_success() {
    let server = server(|c| {
        c.rate = "1000/s".parse().unwrap();
        c.burst = std::num::NonZeroU32::new(100).unwrap();
    });
    for round in 0..5 {
        let user = format!("diner{round}");
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(Client::connect(&server, &user).await);
        }
        // Every connection sends its claim, each for a different item, at once.
        let outcomes = join_all(clients.iter_mut().enumerate().map(|(i, c)| async move {
            c.send(&ClientFrame::Claim {
                item: format!("meal-{i}"),
            })
            .await;
            c.frame().await
        }))
        .await;
        let won: Vec<_> = outcomes
            .iter()
            .filter(|f| matches!(f, ServerFrame::Claimed { .. }))
            .collect();
        let lost = outcomes
            .iter()
            .filter(|f| **f == ServerFrame::error(ErrorCode::AlreadyClaimed))
            .count();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        assert_eq!(lost, CONNECTIONS - 1, "round {round}: {outcomes:?}");
        // And it stays claimed.
        clients[0]
            .send(&ClientFrame::Claim {
                item: "dessert".into(),
            })
            .await;
        assert_eq!(
            clients[0].frame().await,
            ServerFrame::error(ErrorCode::AlreadyClaimed)
        );
    }
}
