//! axum, tower and hyper on curfew: one layer and one `serve` call.
//!
//! [`CurfewLayer`] runs each request's handler under the watchdog, so that a
//! handler stuck in a poll that never returns (a backtracking regex, a
//! quadratic parse, a blocking read) is answered `503` within its budget
//! while every other request goes on. `tower::timeout` and tower-http's
//! `TimeoutLayer` cannot do this: they fire only when the handler reaches
//! an `.await`. A client whose requests keep timing out is answered `429`
//! before its body is read.
//!
//! [`serve`] is `axum::serve` on curfew: every connection is a curfew task
//! driven by the runtime's own I/O driver, where the layer runs an HTTP/1
//! request's handler in place, in the connection's task, and it comes with the timeouts and caps a server facing hostile
//! clients needs (header-read, body-progress and idle timeouts, connection
//! caps in total and per IP, shedding near the descriptor limit, a budget
//! of request body bytes in flight).
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use curfew_http::CurfewLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = curfew::Runtime::builder()
//!     .event_threads(2)
//!     .poll_budget(Duration::from_millis(100))
//!     .build()?;
//! rt.block_on(async {
//!     let app = Router::new()
//!         .route("/", get(|| async { "hello" }))
//!         .layer(CurfewLayer::new());
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     curfew_http::serve(listener, app).await
//! })?;
//! # Ok(()) }
//! ```
//!
//! For programs that drive hyper-util themselves, [`Executor`] is a
//! `hyper::rt::Executor` that spawns on curfew.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]

mod body;
mod executor;
mod head;
pub mod key;
mod layer;
mod line;
mod recent;
mod serve;

pub use body::{Body, BodyError};
pub use executor::Executor;
pub use key::{ForwardedHeader, KeyExtractor, KeyFn, PeerIp, RequestHead, TrustedProxies};
pub use layer::{Curfew, CurfewLayer, Failure, FailureBody, FailureKind, ResponseFuture};
pub use serve::{App, Serve, WithGracefulShutdown, serve};
