//! A missing, forged, expired or malformed token is refused with 401 before
//! the upgrade; a good one in the query or the Authorization header is
//! admitted.

mod common;

use std::time::Duration;

use common::{Client, handshake, server, token};
use curfew_chat::protocol::ServerFrame;
use jsonwebtoken::{EncodingKey, Header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_tokens_get_401_before_the_upgrade() {
    let server = server(|_| {});
    let forged = curfew_chat::auth::Tokens::new(b"another secret of thirty-two bytes or more")
        .sign("alice", Duration::from_secs(600))
        .unwrap();
    let expired = jsonwebtoken::encode(
        &Header::default(),
        &curfew_chat::auth::TokenClaims {
            sub: "alice".into(),
            exp: curfew_chat::auth::unix_now() - 3600,
        },
        &EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    let bad_sub = jsonwebtoken::encode(
        &Header::default(),
        &curfew_chat::auth::TokenClaims {
            sub: "<script>".into(),
            exp: curfew_chat::auth::unix_now() + 3600,
        },
        &EncodingKey::from_secret(common::SECRET),
    )
    .unwrap();
    let cases = [
        ("missing".to_string(), String::new()),
        ("garbage".into(), "?token=not.a.jwt".into()),
        ("forged".into(), format!("?token={forged}")),
        ("expired".into(), format!("?token={expired}")),
        ("bad sub".into(), format!("?token={bad_sub}")),
    ];
    for (what, query) in &cases {
        assert_eq!(
            handshake(&server, query, &[]).await.err(),
            Some(401),
            "{what} token"
        );
    }
    let bearer = format!("Bearer {forged}");
    assert_eq!(
        handshake(&server, "", &[("authorization", &bearer)])
            .await
            .err(),
        Some(401),
        "forged bearer"
    );
    assert_eq!(server.stats().refused_unauthorized, cases.len() as u64 + 1);
    assert_eq!(
        server.stats().connections_accepted,
        0,
        "no refused handshake was upgraded"
    );

    // The good paths.
    let bearer = format!("Bearer {}", token(&server, "bob"));
    let mut bob = common::Client {
        ws: handshake(&server, "", &[("authorization", &bearer)])
            .await
            .unwrap(),
        user: "bob".into(),
    };
    let mut alice = Client::connect(&server, "alice").await;
    alice.say("lobby", "hi").await;
    for c in [&mut alice, &mut bob] {
        match c.frame().await {
            ServerFrame::Message { from, text, .. } => {
                assert_eq!((from.as_str(), text.as_str()), ("alice", "hi"))
            }
            other => panic!("{other:?}"),
        }
    }
}
