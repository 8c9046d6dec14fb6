//! Seed 000 across instances: two chat servers share one Redis, and one
//! user floods both at once, 250 messages on each. The limit is one atomic
//! Lua step in Redis, so together they admit at most the burst allowance.
//! Needs a real `redis-server` on PATH (Debian: `apt-get install
//! redis-server`); fails, never skips, without one.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Event};
use curfew_chat::protocol::{ErrorCode, ServerFrame};
use futures::SinkExt;
use futures::future::join_all;
use tokio_tungstenite::tungstenite::Message;

const BURST: u32 = 5;
const PER_SERVER: usize = 250;

struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("curfew-chat-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): this test needs a real Redis. \
                     Install it (Debian: apt-get install redis-server) and put redis-server on PATH."
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port, dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_two_instances_passes_at_most_the_burst() {
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let servers: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            common::server(move |c| {
                c.redis = Some(url);
                c.burst = std::num::NonZeroU32::new(BURST).unwrap();
            })
        })
        .collect();
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(Client::connect(s, "mallory").await);
    }
    let started = Instant::now();
    let counts = join_all(clients.iter_mut().map(|c| async move {
        for i in 0..PER_SERVER {
            let text = format!(r#"{{"type":"message","room":"lobby","text":"buffered {i}"}}"#);
            c.ws.feed(Message::text(text)).await.unwrap();
        }
        c.ws.flush().await.unwrap();
        let (mut echoed, mut limited) = (0usize, 0usize);
        while echoed + limited < PER_SERVER {
            match c.next().await {
                Event::Frame(ServerFrame::Message { .. }) => echoed += 1,
                Event::Frame(ServerFrame::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }) => limited += 1,
                other => panic!("{other:?}"),
            }
        }
        echoed
    }))
    .await;
    let elapsed = started.elapsed();
    let admitted: usize = counts.iter().sum();
    let allowance = BURST as usize + elapsed.as_secs_f64().ceil() as usize;
    println!(
        "{} messages over two instances sharing Redis: {admitted} admitted ({counts:?}) in {elapsed:?}; allowance {allowance}",
        2 * PER_SERVER
    );
    assert!(admitted >= 1);
    assert!(
        admitted <= allowance,
        "{admitted} admitted over the allowance of {allowance}"
    );
}

#[test]
fn an_unreachable_redis_is_a_start_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = curfew_chat::ChatConfig::new(common::SECRET.to_vec());
    config.redis = Some(format!("redis://127.0.0.1:{port}/"));
    let err = curfew_chat::Server::start(config, "127.0.0.1:0".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("--redis"), "{err}");
    let mut config = curfew_chat::ChatConfig::new(common::SECRET.to_vec());
    config.redis = Some("http://127.0.0.1/".into());
    let err = curfew_chat::Server::start(config, "127.0.0.1:0".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("--redis"), "{err}");
}
