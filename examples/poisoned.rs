//! One poisoned request against a plain tokio server and a curfew server,
//! side by side.
//!
//! Both servers speak the same line protocol on 127.0.0.1 and use two
//! threads. Benign clients send `hello` over keep-alive connections; after one
//! second an attacker sends `poison` requests whose handler spins for three
//! seconds without yielding, like a super-linear regex or parse. The only
//! difference between the servers is one line: `tokio::spawn` for the request
//! handler, or `curfew::spawn`.
//!
//! ```text
//! cargo run --release --example poisoned
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const THREADS: usize = 2;
const CLIENTS: usize = 16;
const RUN: Duration = Duration::from_secs(5);
const ATTACK_AT: Duration = Duration::from_secs(1);
const ATTACKS: usize = 2;
const POISON_SPIN: Duration = Duration::from_secs(3);
const BUDGET: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Tokio,
    Curfew,
}

/// The handler: cheap for `hello`, three seconds of CPU for `poison`.
fn handle(line: &str) -> String {
    match line {
        "poison" => {
            let n = curfew_suite::spin_for(POISON_SPIN);
            format!("poisoned {n}")
        }
        _ => "hi".to_string(),
    }
}

async fn serve_conn(mode: Mode, sock: TcpStream) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match mode {
            Mode::Tokio => tokio::spawn(async move { handle(&line) })
                .await
                .unwrap_or_else(|e| format!("error {e}")),
            Mode::Curfew => match curfew::spawn(async move { handle(&line) }).await {
                Ok(reply) => reply,
                Err(e) if e.is_timeout() => "503 timed out".to_string(),
                Err(e) => format!("500 {e}"),
            },
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct ClientStats {
    /// (when the answer came, relative to the start; how long it took)
    answers: Vec<(Duration, Duration)>,
    errors: usize,
}

async fn benign_client(addr: SocketAddr, start: Instant, stop: Arc<AtomicBool>) -> ClientStats {
    let mut stats = ClientStats::default();
    let Ok(sock) = TcpStream::connect(addr).await else {
        stats.errors += 1;
        return stats;
    };
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < RUN {
        let t = Instant::now();
        let ok = w.write_all(b"hello\n").await.is_ok()
            && tokio::time::timeout(RUN, lines.next_line())
                .await
                .is_ok_and(|l| matches!(l, Ok(Some(ref s)) if s == "hi"));
        if ok {
            stats.answers.push((start.elapsed(), t.elapsed()));
        } else {
            stats.errors += 1;
            break;
        }
    }
    stats
}

async fn attacker(addr: SocketAddr) -> (String, Duration) {
    let t = Instant::now();
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        return ("connect failed".into(), t.elapsed());
    };
    let _ = sock.write_all(b"poison\n").await;
    let mut lines = BufReader::new(sock).lines();
    let reply = match tokio::time::timeout(RUN * 2, lines.next_line()).await {
        Ok(Ok(Some(l))) => l,
        _ => "no answer".into(),
    };
    (reply, t.elapsed())
}

struct Report {
    mode: Mode,
    requests: usize,
    during_attack: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: usize,
    attacker: Vec<(String, Duration)>,
}

fn run(mode: Mode) -> Report {
    // Each server gets its own two threads; the load runs on a separate
    // client runtime so that it is never stalled by the server under test.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .enable_all()
        .build()
        .unwrap();
    let curfew_rt = curfew::Runtime::builder()
        .event_threads(THREADS)
        .poll_budget(BUDGET)
        .tokio_handle(server_rt.handle().clone())
        .thread_name("server")
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let curfew_handle = curfew_rt.handle();
    server_rt.spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            match mode {
                Mode::Tokio => {
                    tokio::spawn(serve_conn(mode, sock));
                }
                Mode::Curfew => {
                    // Connections run on curfew too, so `curfew::spawn`
                    // inside them targets this runtime.
                    curfew_handle.spawn(serve_conn(mode, sock));
                }
            }
        }
    });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, attacker) = client_rt.block_on(async {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| tokio::spawn(benign_client(addr, start, stop.clone())))
            .collect();
        tokio::time::sleep(ATTACK_AT).await;
        let attacks: Vec<_> = (0..ATTACKS).map(|_| tokio::spawn(attacker(addr))).collect();
        let mut stats = Vec::new();
        for c in clients {
            stats.push(c.await.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let mut att = Vec::new();
        for a in attacks {
            att.push(a.await.unwrap());
        }
        (stats, att)
    });

    let mut lat: Vec<Duration> = Vec::new();
    let mut during_attack = 0;
    let window = ATTACK_AT..ATTACK_AT + POISON_SPIN;
    let mut errors = 0;
    for s in stats {
        during_attack += s
            .answers
            .iter()
            .filter(|(at, _)| window.contains(at))
            .count();
        lat.extend(s.answers.into_iter().map(|(_, l)| l));
        errors += s.errors;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let requests = lat.len();
    let report = Report {
        mode,
        requests,
        during_attack,
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or_default(),
        errors,
        attacker,
    };
    drop(client_rt);
    curfew_rt.shutdown_timeout(Duration::from_millis(100));
    server_rt.shutdown_timeout(Duration::from_millis(100));
    report
}

fn main() {
    println!(
        "{CLIENTS} benign keep-alive clients for {RUN:?}; at {ATTACK_AT:?}, {ATTACKS} requests that \
         spin {POISON_SPIN:?} each; {THREADS} server threads; curfew poll budget {BUDGET:?}\n"
    );
    let reports = [run(Mode::Tokio), run(Mode::Curfew)];
    println!(
        "{:<8} {:>9} {:>9} {:>13} {:>10} {:>10} {:>10} {:>7}  attacker got",
        "server", "requests", "req/s", "during attack", "p50", "p99", "max", "errors"
    );
    for r in &reports {
        let answers: Vec<String> = r
            .attacker
            .iter()
            .map(|(reply, t)| {
                let reply: String = reply.chars().take(16).collect();
                format!("{reply:?} after {t:.2?}")
            })
            .collect();
        println!(
            "{:<8} {:>9} {:>9.0} {:>13} {:>10.2?} {:>10.2?} {:>10.2?} {:>7}  {}",
            format!("{:?}", r.mode).to_lowercase(),
            r.requests,
            r.requests as f64 / RUN.as_secs_f64(),
            r.during_attack,
            r.p50,
            r.p99,
            r.max,
            r.errors,
            answers.join(", ")
        );
    }
    let (t, c) = (&reports[0], &reports[1]);
    println!(
        "\nWhile the attack ran ({:?} from {:?}), curfew answered {} benign requests and tokio {}; \
         worst-case latency {:.2?} against {:.2?}.",
        POISON_SPIN, ATTACK_AT, c.during_attack, t.during_attack, c.max, t.max
    );
}
