//! Cross-site WebSocket hijacking: a page on a foreign origin opening the
//! socket with the victim's credentials is refused with 403 before the
//! upgrade; so is a missing Origin once an allow-list is set.

mod common;

use common::{handshake, server, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_get_403_before_the_upgrade() {
    let listed = server(|c| c.allowed_origins = vec!["https://chat.example".into()]);
    let q = format!("?token={}", token(&listed, "alice"));
    assert_eq!(
        handshake(&listed, &q, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403),
        "foreign"
    );
    assert_eq!(
        handshake(
            &listed,
            &q,
            &[("origin", "https://chat.example.evil.example")]
        )
        .await
        .err(),
        Some(403),
        "suffix"
    );
    assert_eq!(
        handshake(&listed, &q, &[("origin", "http://chat.example")])
            .await
            .err(),
        Some(403),
        "other scheme"
    );
    assert_eq!(
        handshake(&listed, &q, &[]).await.err(),
        Some(403),
        "missing origin with an allow-list"
    );
    assert_eq!(
        handshake(&listed, "", &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403),
        "origin is checked first"
    );
    assert_eq!(listed.stats().refused_origin, 5);
    assert_eq!(listed.stats().connections_accepted, 0);
    assert!(
        handshake(&listed, &q, &[("origin", "https://chat.example")])
            .await
            .is_ok(),
        "listed origin"
    );

    // No allow-list: same-origin pages and clients without Origin only.
    let open = server(|_| {});
    let q = format!("?token={}", token(&open, "alice"));
    let same = format!("http://{}", open.local_addr());
    assert!(
        handshake(&open, &q, &[("origin", &same)]).await.is_ok(),
        "same origin"
    );
    assert!(
        handshake(&open, &q, &[]).await.is_ok(),
        "no origin (not a browser)"
    );
    assert_eq!(
        handshake(&open, &q, &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403),
        "foreign"
    );
}
