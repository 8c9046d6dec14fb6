//! Helpers shared by the tests: a client runtime and one-shot requests, all
//! on 127.0.0.1 and all bounded in time.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use curfew_lab::load::{self, Answer};
use curfew_lab::server::{Mode, Server, ServerConfig};
use hyper::Method;

/// A server on an ephemeral port of 127.0.0.1.
pub fn server(mode: Mode, cfg: &ServerConfig) -> Server {
    Server::start(mode, cfg, SocketAddr::from(([127, 0, 0, 1], 0))).expect("start the server")
}

/// A runtime for the client side.
pub fn client_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a client runtime")
}

/// One request, failing the test if it takes longer than `limit`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    client: &str,
    body: impl Into<Bytes>,
    limit: Duration,
) -> Answer {
    tokio::time::timeout(limit, load::send(addr, method, path, client, body.into()))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within {limit:?}"))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `GET path` as a benign client.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(
        addr,
        Method::GET,
        path,
        "benign",
        Bytes::new(),
        Duration::from_secs(5),
    )
    .await
}
