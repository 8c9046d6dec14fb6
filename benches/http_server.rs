//! A hyper 1.x hello-world server on tokio alone and on curfew, driven by a
//! load client in the same program over 127.0.0.1 (the only address used).
//!
//! Modes, each with 2 server threads:
//!
//! * `tokio`: a 2-worker tokio runtime accepts and serves every connection
//!   (`tokio::spawn` per connection).
//! * `curfew`: a curfew runtime with 2 event threads; the accept loop and
//!   each connection's `serve_connection` future are curfew tasks
//!   (`curfew::spawn`), so every poll of every request is under the 100 ms
//!   poll budget. I/O is driven by curfew's private tokio runtime (one
//!   thread, which only runs the I/O driver).
//! * `curfew-handlers`: connections on a 2-worker tokio runtime, and each
//!   request's handler spawned on a curfew runtime (2 event threads, sharing
//!   that tokio runtime for I/O) and awaited: the drop-in pattern of
//!   wrapping handlers, at the cost of a hop per request.
//!
//! The client is one thread with a current-thread tokio runtime and 32
//! keep-alive HTTP/1.1 connections, each sending `GET /` and reading the
//! whole response before the next request. Each mode runs 1 s of warm-up,
//! then a fixed window of 5 s or 2,000,000 requests, whichever comes first;
//! the modes run twice, interleaved. It reports requests/s, latency
//! percentiles, and the server threads' CPU time per request (from
//! `/proc/self/task/*/schedstat`), which does not depend on the client
//! sharing the two cores.
//!
//! ```text
//! cargo bench --bench http_server
//! ```
//!
//! `cargo bench --bench http_server -- curfew` runs only the named mode(s).
//!
//! Without `--bench` (as under `cargo test --benches`) it runs each mode
//! for 0.3 s as a smoke test.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CONNECTIONS: usize = 32;
const MAX_REQUESTS: u64 = 2_000_000;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// Accepts connections on `listener` and serves each with `spawn`.
async fn accept_loop<S>(listener: TcpListener, spawn: S)
where
    S: Fn(tokio::net::TcpStream),
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn(stream);
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn serve(stream: tokio::net::TcpStream) {
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(hello))
        .await;
}

/// A running server: its address and whatever keeps it alive.
struct Server {
    addr: SocketAddr,
    prefix: &'static str,
    _keep: Box<dyn std::any::Any>,
}

fn bind(rt: &tokio::runtime::Handle) -> TcpListener {
    rt.block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1")
}

fn tokio_server() -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::threads())
        .thread_name("srvtk")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = bind(rt.handle());
    let addr = listener.local_addr().unwrap();
    rt.spawn(accept_loop(listener, |s| {
        tokio::spawn(serve(s));
    }));
    Server {
        addr,
        prefix: "srvtk",
        _keep: Box::new(rt),
    }
}

fn curfew_server() -> Server {
    let rt = common::curfew_builder()
        .thread_name("srvcf")
        .build()
        .expect("curfew runtime");
    let listener = rt.block_on(async { TcpListener::bind("127.0.0.1:0").await.expect("bind") });
    let addr = listener.local_addr().unwrap();
    rt.spawn(accept_loop(listener, |s| {
        curfew::spawn(serve(s));
    }));
    Server {
        addr,
        prefix: "srvcf",
        _keep: Box::new(rt),
    }
}

fn curfew_handlers_server() -> Server {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::threads())
        .thread_name("srvhx-tokio")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let curfew = common::curfew_builder()
        .thread_name("srvhx")
        .tokio_handle(tokio.handle().clone())
        .build()
        .expect("curfew runtime");
    let handle = curfew.handle();
    let listener = bind(tokio.handle());
    let addr = listener.local_addr().unwrap();
    tokio.spawn(accept_loop(listener, move |s| {
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let h = handle.spawn(hello(req));
                async move {
                    match h.await {
                        Ok(resp) => resp,
                        Err(e) => {
                            let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            Ok(r)
                        }
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }));
    // Drop curfew before tokio: curfew's threads use tokio's I/O driver.
    Server {
        addr,
        prefix: "srvhx",
        _keep: Box::new((curfew, tokio)),
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body from `stream`,
/// keeping any bytes past it in `buf`. Returns the status code.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Some(status);
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}

struct LoadResult {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    server_cpu_ns: u64,
    client_cpu_ns: u64,
}

/// Drives `server` with the load client for `warmup` then `window`.
fn drive(server: &Server, warmup: Duration, window: Duration) -> LoadResult {
    let addr = server.addr;
    let prefix = server.prefix;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let client = {
        let (measuring, stop, count, errors) = (
            measuring.clone(),
            stop.clone(),
            count.clone(),
            errors.clone(),
        );
        std::thread::Builder::new()
            .name("loadgen".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("client runtime");
                rt.block_on(async move {
                    let mut conns = Vec::new();
                    for _ in 0..CONNECTIONS {
                        let (measuring, stop, count, errors) = (
                            measuring.clone(),
                            stop.clone(),
                            count.clone(),
                            errors.clone(),
                        );
                        conns.push(tokio::spawn(async move {
                            let mut lat = Vec::new();
                            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                                errors.fetch_add(1, Ordering::Relaxed);
                                return lat;
                            };
                            let _ = s.set_nodelay(true);
                            let mut buf = Vec::with_capacity(8192);
                            while !stop.load(Ordering::Relaxed) {
                                let t0 = Instant::now();
                                if s.write_all(REQUEST).await.is_err() {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                match read_response(&mut s, &mut buf).await {
                                    Some(200) => {}
                                    Some(_) => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                    None => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                }
                                if measuring.load(Ordering::Relaxed) {
                                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                    if count.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS {
                                        stop.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                            lat
                        }));
                    }
                    let mut all = Vec::new();
                    for c in conns {
                        all.extend(c.await.unwrap_or_default());
                    }
                    all
                })
            })
            .expect("client thread")
    };
    std::thread::sleep(warmup);
    let server_cpu0 = common::total_cpu_ns(prefix);
    let client_cpu0 = common::total_cpu_ns("loadgen");
    errors.store(0, Ordering::Relaxed);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    while t0.elapsed() < window && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed();
    let server_cpu_ns = common::total_cpu_ns(prefix).saturating_sub(server_cpu0);
    let client_cpu_ns = common::total_cpu_ns("loadgen").saturating_sub(client_cpu0);
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = client.join().expect("client");
    latencies_us.sort_unstable();
    LoadResult {
        requests: count.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
        server_cpu_ns,
        client_cpu_ns,
    }
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (warmup, window, rounds) = if bench_mode {
        (Duration::from_secs(1), Duration::from_secs(5), 2)
    } else {
        (Duration::from_millis(100), Duration::from_millis(300), 1)
    };
    println!(
        "hyper hello world, {} server threads, {CONNECTIONS} keep-alive connections from one \
         client thread, {window:?} per run (after {warmup:?} warm-up), {rounds} round(s)",
        common::threads()
    );
    println!(
        "| round | mode | requests | errors | req/s | p50 (µs) | p99 (µs) | max (µs) | server CPU µs/req | server CPU (cores) | client CPU (cores) |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    type Make = fn() -> Server;
    let modes: [(&str, Make); 3] = [
        ("tokio", tokio_server),
        ("curfew", curfew_server),
        ("curfew-handlers", curfew_handlers_server),
    ];
    // Mode names given on the command line (exact match) select modes.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let mut sums: Vec<(f64, f64, f64)> = vec![(0.0, 0.0, 0.0); modes.len()];
    for round in 1..=rounds {
        for (i, (name, make)) in modes.iter().enumerate() {
            if !selected(name) {
                continue;
            }
            let server = make();
            let r = drive(&server, warmup, window);
            drop(server);
            let secs = r.elapsed.as_secs_f64();
            let rps = r.requests as f64 / secs;
            let p99 = pct(&r.latencies_us, 99.0);
            let cpu_per_req = r.server_cpu_ns as f64 / 1e3 / r.requests.max(1) as f64;
            sums[i].0 += rps;
            sums[i].1 += f64::from(p99);
            sums[i].2 += cpu_per_req;
            println!(
                "| {round} | {name} | {} | {} | {rps:.0} | {} | {p99} | {} | {cpu_per_req:.2} | {:.2} | {:.2} |",
                r.requests,
                r.errors,
                pct(&r.latencies_us, 50.0),
                r.latencies_us.last().copied().unwrap_or(0),
                r.server_cpu_ns as f64 / 1e9 / secs,
                r.client_cpu_ns as f64 / 1e9 / secs,
            );
        }
    }
    println!("\nmean over rounds (ratio to tokio):");
    println!("| mode | req/s | p99 (µs) | server CPU µs/req |");
    println!("| --- | ---: | ---: | ---: |");
    let n = rounds as f64;
    let base = sums[0];
    for (i, (name, _)) in modes.iter().enumerate() {
        if !selected(name) {
            continue;
        }
        let (rps, p99, cpu) = (sums[i].0 / n, sums[i].1 / n, sums[i].2 / n);
        println!(
            "| {name} | {rps:.0} ({:.3}x) | {p99:.0} ({:.3}x) | {cpu:.2} ({:.3}x) |",
            rps / (base.0 / n),
            p99 / (base.1 / n),
            cpu / (base.2 / n),
        );
    }
}
