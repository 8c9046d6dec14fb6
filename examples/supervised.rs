//! An axum server whose `main` runs under the supervisor: two worker
//! processes and a warm spare sharing one socket, and a route that spins
//! for ever.
//!
//! ```text
//! cargo run --release --example supervised            # listens on 127.0.0.1:3000
//! curl localhost:3000/hello
//! curl localhost:3000/spin     # 503 at the 100 ms budget; its worker is recycled
//! curl localhost:3000/pid      # another worker answers; no core is left spinning
//! ```
//!
//! Ctrl-C drains the workers and prints what the supervisor did. The
//! handler on `/spin` never returns and never reaches a checkpoint, so no
//! thread-level defence can take its core back; the supervisor replaces
//! the worker (the warm spare serves at once), lets it finish its other
//! requests, and ends it.
//!
//! Each worker serves with `curfew_http::serve`, whose graceful shutdown is
//! the drain: it stops accepting (the connections still queued on the
//! shared socket go to the other workers), answers keep-alive clients once
//! more with `Connection: close`, and exits when its requests in flight are
//! answered.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use curfew_http::CurfewLayer;

fn main() -> Result<(), curfew_supervisor::Error> {
    tracing_subscriber::fmt()
        .with_env_filter("curfew_supervisor=info,curfew=warn")
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let addr = addr.parse().map_err(|_| curfew_supervisor::Error::Config {
        setting: "addr",
        reason: format!("`{addr}` is not a socket address"),
    })?;
    let config = curfew_supervisor::Config::new(addr)
        .processes(2)
        .drain_deadline(Duration::from_secs(5))
        // The default worker runtime's hand-off, kept with our own budget:
        // a poll past 10 ms gets a thread started in its place and runs in
        // the idle class until its timeout and its worker's recycle.
        .runtime(
            curfew::Runtime::builder()
                .poll_budget(Duration::from_millis(100))
                .hand_off_long_polls(Some(curfew_supervisor::DEFAULT_HAND_OFF))
                .hand_off_to_idle_class(true),
        );

    // The supervisor returns here after Ctrl-C; a worker never does.
    let summary = curfew_supervisor::run(config, |worker| async move {
        let listener = worker.tokio_listener()?;
        let app = Router::new()
            .route("/hello", get(|| async { "hello\n" }))
            .route(
                "/pid",
                get(|| async { format!("{}\n", std::process::id()) }),
            )
            .route("/spin", get(spin))
            .layer(CurfewLayer::new());
        curfew_http::serve(listener, app)
            .with_graceful_shutdown(worker.drain())
            .await
    })?;
    println!("{summary:?}");
    Ok(())
}

/// A handler that never returns. `CurfewLayer` runs it as a curfew task, so
/// its caller gets a 503 at the poll budget; its thread spins on until the
/// supervisor recycles the worker.
async fn spin() -> &'static str {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
