//! `chat-load`: a bounded load run against `curfew-chat`, with and without
//! an attacker, with and without curfew's budgets.
//!
//! For each run it starts the server binary on a free port of 127.0.0.1,
//! connects `--clients` users spread over `--rooms` rooms, lets `--chatters`
//! of them say something at their rate limit (one message a second by
//! default) and, unless the run is quiet, lets `--attackers` accounts flood
//! messages, send oversized frames and send poisoned searches. It reports
//! the benign broadcast latency (each chatter times its own message's
//! broadcast), benign messages lost (deliveries to room members that never
//! arrived within the grace period), what the attackers got, and the
//! server's peak RSS. Every run stops by itself after `--duration` plus the
//! grace period.
//!
//! ```text
//! cargo build --release -p curfew-chat
//! target/release/chat-load --server target/release/curfew-chat
//! ```

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use curfew_chat::auth::Tokens;
use curfew_chat::protocol::{ClientFrame, ErrorCode, ServerFrame};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "chat-load secret: at least thirty-two bytes long";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-load",
    about = "Load and attack a curfew-chat server, with and without budgets"
)]
struct Args {
    /// The curfew-chat binary to start for each run.
    #[arg(long, default_value = "target/release/curfew-chat")]
    server: String,
    /// Runs to do, in order: curfew, curfew-quiet, tokio, tokio-quiet.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "curfew-quiet,curfew,tokio-quiet,tokio"
    )]
    runs: Vec<String>,
    /// Connected benign clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Of them, how many chat.
    #[arg(long, default_value_t = 50)]
    chatters: usize,
    /// Rooms the clients are spread over.
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Attacker accounts.
    #[arg(long, default_value_t = 8)]
    attackers: usize,
    /// How long the chatters chat.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to wait for late messages after the chat stops.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// A chatter's interval between messages (the server's default rate).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// `ab` pairs in the attacker's message: the search tries about 2^n ways.
    #[arg(long, default_value_t = 25)]
    pairs: usize,
    /// Extra arguments for the server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    rate_limited: AtomicU64,
    received: AtomicU64,
    attack_timeouts: AtomicU64,
    attack_refused: AtomicU64,
    attack_too_large: AtomicU64,
    attack_rate_limited: AtomicU64,
    attack_closes: AtomicU64,
    attack_handshake_refused: AtomicU64,
    attack_search_results: AtomicU64,
}

struct Run {
    name: String,
    sent: u64,
    expected: u64,
    received: u64,
    rate_limited: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    echoes: u64,
    counts: Arc<Counts>,
    rss_start_mib: f64,
    rss_max_mib: f64,
    load: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_mib(pid: u32) -> f64 {
    curfew_chat::stats::rss_of(&pid.to_string()) as f64 / (1 << 20) as f64
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(args: &Args, port: u16, budgets: bool) -> ServerProcess {
    let mut cmd = Command::new(&args.server);
    cmd.args([
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--jwt-secret",
        SECRET,
    ])
    .args(["--max-connections-per-ip", "100000"])
    .args(&args.server_args)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if !budgets {
        cmd.arg("--no-budgets");
    }
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {} ({e}); build it with cargo build --release -p curfew-chat",
            args.server
        )
    });
    let server = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not listen within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16, token: &str) -> Result<Ws, String> {
    let req = format!("ws://127.0.0.1:{port}/ws?token={token}")
        .into_client_request()
        .unwrap();
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

fn frame(f: &ClientFrame) -> Message {
    Message::text(serde_json::to_string(f).unwrap())
}

fn room_name(i: usize, rooms: usize) -> String {
    match i % rooms {
        0 => "lobby".into(),
        r => format!("room{r}"),
    }
}

async fn join(ws: &mut Ws, room: &str) {
    if room == "lobby" {
        return;
    }
    ws.send(frame(&ClientFrame::Join { room: room.into() }))
        .await
        .unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            if let Ok(ServerFrame::Joined { .. }) = serde_json::from_str(t.as_str()) {
                return;
            }
        }
    }
}

async fn one_run(args: &Args, name: &str) -> Run {
    let budgets = name.starts_with("curfew");
    let attack = !name.ends_with("quiet");
    let port = free_port();
    let server = start_server(args, port, budgets);
    let pid = server.0.id();
    let tokens = Tokens::new(SECRET.as_bytes());
    let counts = Arc::new(Counts::default());
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap(),
    ));
    let load_start = loadavg();
    let rss_start = rss_mib(pid);
    let start = Instant::now();

    // Connect everyone first, each in its room.
    let mut members: HashMap<String, u64> = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let user = format!("user{i}");
        let room = room_name(i, args.rooms);
        let token = tokens.sign(&user, Duration::from_secs(3600)).unwrap();
        let mut ws = connect(port, &token)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        join(&mut ws, &room).await;
        *members.entry(room.clone()).or_default() += 1;
        clients.push((user, room, ws));
    }
    let sent_by_room: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop_at = Instant::now() + args.duration;
    let end_at = stop_at + args.grace;

    // The attackers.
    let mut attackers = Vec::new();
    if attack {
        for a in 0..args.attackers {
            let counts = counts.clone();
            let token = tokens
                .sign(&format!("attacker{a}"), Duration::from_secs(3600))
                .unwrap();
            let room = room_name(a, args.rooms);
            let pairs = args.pairs;
            attackers.push(tokio::spawn(attacker(
                port, token, room, pairs, stop_at, counts,
            )));
        }
    }

    // The benign clients.
    let mut tasks = Vec::new();
    for (i, (user, room, ws)) in clients.into_iter().enumerate() {
        let chatter = i < args.chatters;
        let counts = counts.clone();
        let latencies = latencies.clone();
        let sent_by_room = sent_by_room.clone();
        let every = args.every;
        let offset = every.mul_f64(i as f64 / args.chatters.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let reader = async {
                while let Ok(Some(m)) = tokio::time::timeout_at(end_at.into(), rx.next()).await {
                    let Ok(Message::Text(t)) = m else { break };
                    match serde_json::from_str::<ServerFrame>(t.as_str()) {
                        Ok(ServerFrame::Message { from, text, .. }) if from.starts_with("user") => {
                            counts.received.fetch_add(1, Relaxed);
                            if from == user {
                                if let Some(us) =
                                    text.strip_prefix("t=").and_then(|s| s.parse::<u64>().ok())
                                {
                                    let now = start.elapsed().as_micros() as u64;
                                    let _ = latencies
                                        .lock()
                                        .unwrap()
                                        .record(now.saturating_sub(us).max(1));
                                }
                            }
                        }
                        Ok(ServerFrame::Error {
                            code: ErrorCode::RateLimited,
                            ..
                        }) => {
                            counts.rate_limited.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    }
                }
            };
            let writer = async {
                if !chatter {
                    return;
                }
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while Instant::now() < stop_at {
                    tick.tick().await;
                    let text = format!("t={}", start.elapsed().as_micros());
                    let msg = frame(&ClientFrame::Message {
                        room: room.clone(),
                        text,
                    });
                    if tokio::time::timeout(Duration::from_secs(5), tx.send(msg))
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    counts.sent.fetch_add(1, Relaxed);
                    *sent_by_room
                        .lock()
                        .unwrap()
                        .entry(room.clone())
                        .or_default() += 1;
                }
            };
            tokio::join!(reader, writer);
        }));
    }

    // Sample the server's RSS while the run goes on.
    let mut rss_max = rss_start;
    while Instant::now() < end_at {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_max = rss_max.max(rss_mib(pid));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for a in attackers {
        a.abort();
    }
    drop(server);
    let _ = start;

    let sent_by_room = sent_by_room.lock().unwrap().clone();
    let rate_limited = counts.rate_limited.load(Relaxed);
    // Every connection is in the lobby, and some in one more room.
    let expected: u64 = sent_by_room
        .iter()
        .map(|(room, n)| {
            let members = if room == "lobby" {
                args.clients as u64
            } else {
                members.get(room).copied().unwrap_or(0)
            };
            n * members
        })
        .sum();
    let h = latencies.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Run {
        name: name.into(),
        sent: counts.sent.load(Relaxed),
        expected,
        received: counts.received.load(Relaxed),
        rate_limited,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
        echoes: h.len(),
        counts: counts.clone(),
        rss_start_mib: rss_start,
        rss_max_mib: rss_max,
        load: format!("{load_start} -> {}", loadavg()),
    }
}

/// One attacker account: posts the poisonous text, then loops over a
/// poisoned search, a flood of messages and a 1 MiB frame, reconnecting
/// whenever it is closed and waiting when it is refused.
async fn attacker(
    port: u16,
    token: String,
    room: String,
    pairs: usize,
    stop_at: Instant,
    counts: Arc<Counts>,
) {
    let poison_text = "ab".repeat(pairs);
    let huge = format!(
        r#"{{"type":"message","room":"{room}","text":"{}"}}"#,
        "A".repeat(1 << 20)
    );
    while Instant::now() < stop_at {
        let mut ws = match connect(port, &token).await {
            Ok(ws) => ws,
            Err(_) => {
                counts.attack_handshake_refused.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        join(&mut ws, &room).await;
        let (mut tx, mut rx) = ws.split();
        let c = counts.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = rx.next().await {
                match m {
                    Message::Text(t) => match serde_json::from_str::<ServerFrame>(t.as_str()) {
                        Ok(ServerFrame::Error { code, .. }) => {
                            let counter = match code {
                                ErrorCode::Timeout => &c.attack_timeouts,
                                ErrorCode::Refused => &c.attack_refused,
                                ErrorCode::TooLarge => &c.attack_too_large,
                                ErrorCode::RateLimited => &c.attack_rate_limited,
                                _ => continue,
                            };
                            counter.fetch_add(1, Relaxed);
                        }
                        Ok(ServerFrame::SearchResult { .. }) => {
                            c.attack_search_results.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    },
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            c.attack_closes.fetch_add(1, Relaxed);
        });
        let mut round = 0u64;
        let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
            tx.send(frame(&ClientFrame::Message {
                room: room.clone(),
                text: poison_text.clone(),
            }))
            .await?;
            while Instant::now() < stop_at && !reader.is_finished() {
                tx.send(frame(&ClientFrame::Search {
                    room: room.clone(),
                    pattern: r"(a|b|ab)*(?=c)".into(),
                }))
                .await?;
                for i in 0..20 {
                    let text = format!("flood {round} {i}");
                    tx.feed(frame(&ClientFrame::Message {
                        room: room.clone(),
                        text,
                    }))
                    .await?;
                }
                tx.flush().await?;
                if round % 4 == 0 {
                    tx.send(Message::text(huge.clone())).await?;
                }
                round += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(())
        }
        .await;
        let _ = result;
        reader.abort();
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();
    for name in &args.runs {
        assert!(
            matches!(
                name.as_str(),
                "curfew" | "curfew-quiet" | "tokio" | "tokio-quiet"
            ),
            "unknown run `{name}` (curfew, curfew-quiet, tokio, tokio-quiet)"
        );
        eprintln!(
            "chat-load: run {name}: {} clients, {} chatting, {} attackers, {:?}",
            args.clients,
            args.chatters,
            if name.ends_with("quiet") {
                0
            } else {
                args.attackers
            },
            args.duration
        );
        let run = rt.block_on(one_run(&args, name));
        eprintln!(
            "chat-load: run {name} done: sent {}, lost {}",
            run.sent,
            run.expected.saturating_sub(run.received)
        );
        runs.push(run);
    }
    println!(
        "\n| run | benign sent | deliveries expected | delivered | lost | rate limited | echoes timed | echo p50 | echo p99 | echo max | attack: timeout / refused / too_large / rate_limited / search results / handshakes refused | server RSS start -> max | load avg (1/5/15 min) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &runs {
        let c = &r.counts;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} / {} / {} / {} / {} / {} | {:.0} -> {:.0} MiB | {} |",
            r.name,
            r.sent,
            r.expected,
            r.received,
            r.expected.saturating_sub(r.received),
            r.rate_limited,
            r.echoes,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            c.attack_timeouts.load(Relaxed),
            c.attack_refused.load(Relaxed),
            c.attack_too_large.load(Relaxed),
            c.attack_rate_limited.load(Relaxed),
            c.attack_search_results.load(Relaxed),
            c.attack_handshake_refused.load(Relaxed),
            r.rss_start_mib,
            r.rss_max_mib,
            r.load,
        );
    }
}
