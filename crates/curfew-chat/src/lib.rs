//! A WebSocket chat served on curfew, with the defences a realtime service
//! needs against hostile clients, each one tested with a real client.
//!
//! Every message a client sends is handled as a curfew task under a poll
//! budget, so a search with a crafted regex that backtracks for minutes is
//! answered `{"type":"error","code":"timeout"}` while every other client's
//! messages keep flowing. Around that sit the defences of the realtime
//! services this chat is modelled on:
//!
//! | threat | defence | where |
//! | --- | --- | --- |
//! | cross-site WebSocket hijacking | `Origin` allow-list, checked before the upgrade (`403`) | [`server`] |
//! | anonymous clients | HS256 JWT on the handshake, `sub` is the user (`401`) | [`auth`] |
//! | connection floods | per-IP connection cap before the upgrade (`429`) | [`server`] |
//! | huge or malformed frames | size limit and strict JSON; 3 protocol errors a minute close with `1008` | [`conn`] |
//! | stored XSS | every user string is HTML-escaped on the way out | [`protocol`] |
//! | reconnect bursts racing a rate limit | one atomic GCRA step per message, in memory or in Redis | [`limit`] |
//! | double-spending races | claims serialized per user | [`claims`] |
//! | slow readers | a bounded outbound queue per connection; overflow closes with `1013` | [`conn`] |
//! | event handler poisoning | each message handled under a curfew poll budget; repeated offenders refused | [`exec`] |
//!
//! # Running it
//!
//! ```text
//! cargo run --release -p curfew-chat -- --addr 127.0.0.1:8080 --dev
//! ```
//!
//! opens the page at `/`, where a user name logs in through the dev-only
//! token endpoint. Without `--dev` a token must come from elsewhere, signed
//! with `--jwt-secret`.
//!
//! # Embedding
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use curfew_chat::{ChatConfig, Server};
//!
//! let mut config = ChatConfig::new(b"a secret of at least thirty-two bytes!".to_vec());
//! config.allowed_origins = vec!["https://chat.example".into()];
//! let server = Server::start(config, "127.0.0.1:0".parse()?)?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown();
//! # Ok(()) }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]

pub mod auth;
pub mod claims;
pub mod config;
pub mod conn;
pub mod exec;
pub mod isolate;
pub mod limit;
pub mod protocol;
pub mod rooms;
pub mod search;
pub mod server;
pub mod stats;

pub use config::{ChatConfig, ConfigError, Options, Rate};
pub use server::{Server, StartError};
pub use stats::Stats;
