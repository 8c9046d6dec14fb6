//! An axum hello-world router served two ways, driven by wrk over
//! 127.0.0.1, alternating in one run:
//!
//! * `tokio`: `axum::serve` on a multi-thread tokio runtime;
//! * `curfew`: `curfew_http::serve` with `CurfewLayer` on a curfew runtime
//!   (every connection a curfew task, every request a child task under the
//!   poll budget);
//! * `curfew-bare`: `curfew_http::serve` without the layer;
//! * `tokio-spawn`: `axum::serve` on tokio with a layer that runs each
//!   request's handler as a `tokio::spawn`ed task and awaits it (a panic
//!   answered `500`), the peer for what a task per request costs;
//! * `curfew-spawn`: `curfew_http::serve` with the same layer, spawning
//!   with `curfew::spawn` (what the task costs without the rest of
//!   `CurfewLayer`'s work);
//! * `curfew-outer`: `curfew_http::serve` with `CurfewLayer` around the
//!   whole router instead of inside it (`CurfewLayer::new().layer(app)`):
//!   no route box of axum's per request, and the URI's path as the route;
//! * `tokio-timeout`: `axum::serve` on tokio with tower-http's
//!   `TimeoutLayer` in the router (`Router::layer`), the stack that
//!   `CurfewLayer` replaces;
//! * `tokio-identity`: `axum::serve` on tokio with a layer that adds
//!   nothing (`layer_fn(|s| s)`) in the router: what `Router::layer` alone
//!   costs a request;
//! * `curfew-identity`: `curfew_http::serve` with that same layer in the
//!   router, the base that `CurfewLayer`'s own work adds to.
//!
//! Both use the same thread count (2, or `CURFEW_BENCH_THREADS`). For each
//! mode and round it reports wrk's requests/s and p99 latency, and the
//! server threads' CPU time per request (from
//! `/proc/self/task/*/schedstat`, so the load generator's share of the
//! cores does not count), then the ratios curfew/tokio over the rounds:
//! the ratio of the sums, and the median of the rounds' own ratios. A
//! curfew run in which the watchdog timed out, hijacked, handed off or
//! demoted anything says so.
//!
//! A second part measures how fast a handler that never yields is answered:
//! a route whose handler spins for 60 ms behind a layer with a 20 ms poll
//! budget, requested one at a time on fresh connections by an in-process
//! client, which times each request from its write to the first bytes of
//! the `503`. The peer, alternating request by request: tokio with
//! tower-http's `TimeoutLayer` (20 ms, answered `503`) around a handler
//! that waits for good; tokio cannot answer a handler that never yields at
//! all, so this is the delivery its stack gives a handler that does. It
//! reports each one's lateness over the budget (p50, p99, max), the ratio,
//! and when curfew's watchdog found each overrun. Both parts report the
//! hypervisor's steal time meanwhile: on a virtual machine, a round with
//! much of it measures the host's other guests.
//!
//! ```text
//! sudo apt-get install wrk
//! cargo bench --bench axum_server
//! benches/run-prio.sh cargo bench --bench axum_server   # on a shared machine
//! ```
//!
//! Settings: `AXUM_BENCH_SECS` (window per run, default 5),
//! `AXUM_BENCH_ROUNDS` (default 3; 0 runs the second part alone),
//! `AXUM_BENCH_CONNECTIONS` (default 64),
//! `AXUM_BENCH_NO_HEAD_TIMEOUT=1` (`serve` without its header-read
//! timeout, for an A/B of what hyper's head timer costs a request),
//! `AXUM_BENCH_WARMUP=0` (no 1 s wrk run before each measured one),
//! `AXUM_BENCH_QUIET_STEAL_MS` (the most steal a run of a round counted as
//! quiet may have, default 1% of the two cores' time),
//! `AXUM_BENCH_SPIN_REQUESTS` (requests to the never-yielding handler,
//! default 200), `AXUM_BENCH_SKIP_SPIN=1` (the first part alone),
//! `AXUM_BENCH_SOURCES=N` (an in-process load generator instead of wrk,
//! its connections spread over N client addresses 127.0.1.1, 127.0.1.2,
//! ...: the server sees N clients where wrk is one; it shares the cores
//! with the servers as wrk does, and its latencies include its own
//! scheduling),
//! `AXUM_BENCH_VERBOSE=1` (print wrk's report of each run, and every
//! delivery time),
//! `AXUM_BENCH_DEMOTE=0` (curfew's `demote_overrunning_polls` off, for an
//! A/B of the never-yielding handler's delivery),
//! `CURFEW_BENCH_INTERVAL_US` (curfew's watchdog interval, default 500),
//! the `CURFEW_*` settings of `curfew::Builder::from_env` for the curfew
//! runtimes (`CURFEW_POLL_BUDGET_MS=60000` under valgrind, where every poll
//! takes some 50 times as long),
//! `AXUM_BENCH_MODES` (a comma-separated subset of `tokio`, `curfew`,
//! `curfew-bare`, `tokio-spawn`, `curfew-spawn`, `curfew-outer`,
//! `tokio-timeout`, `tokio-identity` and `curfew-identity`; default
//! `tokio,curfew`).
//! Without `--bench` (as under `cargo test --benches`) it runs each mode
//! once for 1 s, and skips the wrk part if wrk is not installed.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use curfew_http::CurfewLayer;

fn router() -> Router {
    Router::new().route("/", get(|| async { "Hello, World!" }))
}

/// A running server; dropping it stops it.
struct Server {
    addr: SocketAddr,
    prefix: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    keep: Option<Box<dyn std::any::Any>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(self.keep.take());
    }
}

/// What `tokio-spawn` and `curfew-spawn` put around each route: the
/// handler runs as a task of its own, as `CurfewLayer` runs it, with
/// nothing else of the layer's (no client key, route or admission, and no
/// budget on tokio).
#[derive(Clone)]
struct SpawnEach<S, P>(S, P);

/// How `SpawnEach` spawns: `tokio::spawn` or `curfew::spawn`.
trait Spawner: Clone {
    type Join<T: Send + 'static>: std::future::Future<Output = Result<T, ()>> + Send + Unpin;
    fn spawn<F>(&self, f: F) -> Self::Join<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static;
}

#[derive(Clone, Copy)]
struct OnTokio;
#[derive(Clone, Copy)]
struct OnCurfew;

impl Spawner for OnTokio {
    type Join<T: Send + 'static> =
        futures::future::MapErr<tokio::task::JoinHandle<T>, fn(tokio::task::JoinError)>;
    fn spawn<F>(&self, f: F) -> Self::Join<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        futures::TryFutureExt::map_err(tokio::spawn(f), drop as fn(_))
    }
}

impl Spawner for OnCurfew {
    type Join<T: Send + 'static> =
        futures::future::MapErr<curfew::JoinHandle<T>, fn(curfew::JoinError)>;
    fn spawn<F>(&self, f: F) -> Self::Join<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        futures::TryFutureExt::map_err(curfew::spawn(f), drop as fn(_))
    }
}

impl<S, P, B> tower::Service<axum::http::Request<B>> for SpawnEach<S, P>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::response::Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    P: Spawner,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = Spawned<P::Join<Result<axum::response::Response, S::Error>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        Spawned(self.1.spawn(self.0.call(req)))
    }
}

/// A spawned handler's response; a panic is answered `500`.
struct Spawned<J>(J);

impl<J, E> std::future::Future for Spawned<J>
where
    J: std::future::Future<Output = Result<Result<axum::response::Response, E>, ()>> + Unpin,
{
    type Output = Result<axum::response::Response, E>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|()| {
                Ok(axum::response::IntoResponse::into_response(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                ))
            })
        })
    }
}

fn tokio_server(app: Router, name: &'static str) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::threads())
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .into_future(),
    );
    Server {
        addr,
        prefix: name,
        stop: Some(stop),
        keep: Some(Box::new(rt)),
    }
}

fn curfew_server<S: curfew_http::App>(app: S, name: &'static str) -> Server {
    let rt = common::curfew_builder()
        .thread_name(name)
        .demote_overrunning_polls(std::env::var("AXUM_BENCH_DEMOTE").map_or(true, |v| v != "0"))
        .from_env()
        .build()
        .expect("curfew runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    drop(
        rt.spawn(
            curfew_http::serve(listener, app)
                .header_read_timeout(
                    std::env::var_os("AXUM_BENCH_NO_HEAD_TIMEOUT")
                        .is_none()
                        .then_some(Duration::from_secs(10)),
                )
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .into_future(),
        ),
    );
    Server {
        addr,
        prefix: name,
        stop: Some(stop),
        keep: Some(Box::new(rt)),
    }
}

/// For a curfew server, what its watchdog did to the event threads, if
/// anything: a run of short requests should see no timeout, hijack,
/// hand-off or demotion, and one that does is not measuring the server.
fn report_watchdog(server: &Server) {
    let Some(rt) = server
        .keep
        .as_ref()
        .and_then(|k| k.downcast_ref::<curfew::Runtime>())
    else {
        return;
    };
    let e = rt.metrics().event;
    if e.timeouts + e.hijacked_total + e.handed_off_total + e.demoted_total + e.deferred_total > 0 {
        println!(
            "  {}: the watchdog acted: {} timeouts ({} queued), {} hijacked, {} handed off, {} demoted, {} deferred",
            server.prefix,
            e.timeouts,
            e.queue_timeouts,
            e.hijacked_total,
            e.handed_off_total,
            e.demoted_total,
            e.deferred_total
        );
    }
}

/// Each run's (round, mode, req/s, p99, CPU/req, steal).
type RunRow = (u64, usize, f64, f64, f64, f64);

/// What one wrk run measured.
struct WrkRun {
    requests: u64,
    rps: f64,
    p99_us: f64,
    errors: u64,
    cpu_us_per_req: f64,
}

fn parse_latency_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

fn wrk(server: &Server, secs: u64, connections: u64) -> Option<WrkRun> {
    let url = format!("http://{}/", server.addr);
    let cpu0 = common::total_cpu_ns(server.prefix);
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            &url,
        ])
        .output()
        .ok()?;
    let cpu_ns = common::total_cpu_ns(server.prefix).saturating_sub(cpu0);
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("AXUM_BENCH_VERBOSE").is_some() {
        println!("{text}");
    }
    let mut run = WrkRun {
        requests: 0,
        rps: 0.0,
        p99_us: 0.0,
        errors: 0,
        cpu_us_per_req: 0.0,
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_us = parse_latency_us(v).unwrap_or(0.0);
        } else if t.contains("requests in") {
            run.requests = t.split_whitespace().next()?.parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            run.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    run.cpu_us_per_req = cpu_ns as f64 / 1e3 / run.requests.max(1) as f64;
    Some(run)
}

/// The in-process load generator (`AXUM_BENCH_SOURCES=N`): as wrk's run,
/// with `connections` keep-alive connections spread over `sources` client
/// addresses (127.0.1.1, 127.0.1.2, ...), so that the server sees that many
/// clients where wrk is one. Runs on a thread of its own (`load_client`).
fn spread_load(server: &Server, secs: u64, connections: u64, sources: u64) -> Option<WrkRun> {
    let addr = server.addr;
    let cpu0 = common::total_cpu_ns(server.prefix);
    let start = Instant::now();
    let (mut latencies_us, errors) = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || load_client(addr, Duration::from_secs(secs), connections, sources))
        .ok()?
        .join()
        .ok()?;
    let elapsed = start.elapsed();
    let cpu_ns = common::total_cpu_ns(server.prefix).saturating_sub(cpu0);
    let requests = latencies_us.len() as u64;
    latencies_us.sort_unstable();
    let p99_us = latencies_us
        .get((latencies_us.len() * 99 / 100).min(latencies_us.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    Some(WrkRun {
        requests,
        rps: requests as f64 / elapsed.as_secs_f64(),
        p99_us: p99_us as f64,
        errors,
        cpu_us_per_req: cpu_ns as f64 / 1e3 / requests.max(1) as f64,
    })
}

/// The load generator's thread: each connection a task on one
/// current-thread tokio runtime, sending `GET /` and reading the answer
/// until `window` has passed. Returns every request's latency (µs) and the
/// connections that failed. Not inlined, so that a profile can leave it
/// out (its inclusive cost).
#[inline(never)]
fn load_client(
    addr: SocketAddr,
    window: Duration,
    connections: u64,
    sources: u64,
) -> (Vec<u32>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("load generator runtime");
    rt.block_on(async move {
        let deadline = tokio::time::Instant::now() + window;
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let k = i % sources.max(1);
                let source =
                    std::net::Ipv4Addr::new(127, 0, 1 + (k / 250) as u8, 1 + (k % 250) as u8);
                tokio::spawn(one_connection(addr, source, deadline))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(l)) => latencies.extend(l),
                Ok(Err(l)) => {
                    errors += 1;
                    latencies.extend(l);
                }
                Err(_) => errors += 1,
            }
        }
        (latencies, errors)
    })
}

/// One keep-alive connection from `source`, one request at a time until
/// `deadline`: the latencies, in `Err` if the connection failed.
async fn one_connection(
    addr: SocketAddr,
    source: std::net::Ipv4Addr,
    deadline: tokio::time::Instant,
) -> Result<Vec<u32>, Vec<u32>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut latencies = Vec::new();
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        socket.connect(addr).await
    };
    let Ok(mut stream) = connect.await else {
        return Err(latencies);
    };
    let _ = stream.set_nodelay(true);
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    while tokio::time::Instant::now() < deadline {
        let sent = Instant::now();
        if stream.write_all(request.as_bytes()).await.is_err() {
            return Err(latencies);
        }
        // One response: its head, then Content-Length bytes of body.
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    break;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(latencies),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    Ok(latencies)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU time the hypervisor took from this (virtual) machine so far, in ms
/// summed over the cores: the `steal` column of `/proc/stat`, in clock
/// ticks of 10 ms (`USER_HZ`, 100 on Linux). Rounds with much of it
/// measure the host's other guests, not the servers.
fn steal_ms() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?;
            cpu.split_whitespace().nth(8)?.parse::<f64>().ok()
        })
        .map_or(0.0, |ticks| ticks * 10.0)
}

fn throughput(bench_mode: bool) {
    // Zero rounds skips this part (for the delivery runs alone).
    let rounds = if bench_mode {
        common::env_u64("AXUM_BENCH_ROUNDS").unwrap_or(3)
    } else {
        1
    };
    if rounds == 0 {
        println!("AXUM_BENCH_ROUNDS=0: skipping the throughput part");
        return;
    }
    // `AXUM_BENCH_SOURCES=N`: the in-process generator from N addresses
    // instead of wrk.
    let sources = common::env_u64("AXUM_BENCH_SOURCES").unwrap_or(0);
    let wrk_found = Command::new("wrk").arg("--version").output().is_ok();
    if sources == 0 && !wrk_found {
        println!("wrk not found: skipping the throughput part (apt-get install wrk)");
        if bench_mode {
            std::process::exit(1);
        }
        return;
    }
    let secs = if bench_mode {
        common::env_or("AXUM_BENCH_SECS", 5)
    } else {
        1
    };
    let connections = common::env_or("AXUM_BENCH_CONNECTIONS", 64);
    let generator = if sources > 0 {
        format!(
            "the in-process generator from {sources} addresses, {connections} connections, {secs} s"
        )
    } else {
        format!("wrk -t1 -c{connections} -d{secs}s")
    };
    println!(
        "axum hello world, {} server threads, {generator}, {rounds} round(s), \
         alternating; load average before: {}",
        common::threads(),
        loadavg()
    );
    let load = |server: &Server, secs: u64| {
        if sources > 0 {
            spread_load(server, secs, connections, sources)
        } else {
            wrk(server, secs, connections)
        }
    };
    println!(
        "| round | mode | requests | errors | req/s | p99 (µs) | server CPU µs/req | steal (ms) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    const NAMES: [&str; 9] = [
        "tokio",
        "curfew",
        "curfew-bare",
        "tokio-spawn",
        "curfew-spawn",
        "curfew-outer",
        "tokio-timeout",
        "tokio-identity",
        "curfew-identity",
    ];
    let wanted = std::env::var("AXUM_BENCH_MODES").unwrap_or_else(|_| "tokio,curfew".into());
    let modes: Vec<usize> = (0..NAMES.len())
        .filter(|&i| wanted.split(',').any(|w| w.trim() == NAMES[i]))
        .collect();
    let mut runs: Vec<RunRow> = Vec::new();
    for round in 1..=rounds {
        let mut order = modes.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for mode in order {
            let server = match mode {
                0 => tokio_server(router(), "axtk"),
                1 => curfew_server(router().layer(CurfewLayer::new()), "axcf"),
                2 => curfew_server(router(), "axcb"),
                3 => tokio_server(
                    router().layer(tower::layer::layer_fn(|s| SpawnEach(s, OnTokio))),
                    "axts",
                ),
                4 => curfew_server(
                    router().layer(tower::layer::layer_fn(|s| SpawnEach(s, OnCurfew))),
                    "axcs",
                ),
                5 => curfew_server(tower::Layer::layer(&CurfewLayer::new(), router()), "axco"),
                6 => tokio_server(
                    router().layer(tower_http::timeout::TimeoutLayer::with_status_code(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        Duration::from_secs(30),
                    )),
                    "axtt",
                ),
                7 => tokio_server(router().layer(tower::layer::layer_fn(|s| s)), "axti"),
                _ => curfew_server(router().layer(tower::layer::layer_fn(|s| s)), "axci"),
            };
            // Warm-up (`AXUM_BENCH_WARMUP=0` skips it, so that a whole
            // process's counts, under valgrind say, divide by the requests).
            if std::env::var("AXUM_BENCH_WARMUP").map_or(true, |v| v != "0") {
                let _ = load(&server, 1);
            }
            let steal = steal_ms();
            let r = load(&server, secs);
            let steal = steal_ms() - steal;
            let Some(r) = r else {
                println!("the load generator failed");
                return;
            };
            report_watchdog(&server);
            drop(server);
            let name = NAMES[mode];
            println!(
                "| {round} | {name} | {} | {} | {:.0} | {:.0} | {:.2} | {steal:.0} |",
                r.requests, r.errors, r.rps, r.p99_us, r.cpu_us_per_req
            );
            runs.push((round, mode, r.rps, r.p99_us, r.cpu_us_per_req, steal));
        }
    }
    // The ratios of the sums over all rounds, then over the quiet rounds
    // alone: those in which no mode's run lost more than
    // `AXUM_BENCH_QUIET_STEAL_MS` (default 1% of the cores' time) to the
    // hypervisor.
    let quiet_ms =
        common::env_u64("AXUM_BENCH_QUIET_STEAL_MS").map_or(secs as f64 * 2.0 * 10.0, |v| v as f64);
    let ratios = |label: &str, rounds_in: &[u64]| {
        let mut sums = [(0.0f64, 0.0f64, 0.0f64); NAMES.len()];
        for r in runs.iter().filter(|r| rounds_in.contains(&r.0)) {
            sums[r.1].0 += r.2;
            sums[r.1].1 += r.3;
            sums[r.1].2 += r.4;
        }
        let t = sums[0];
        for &mode in modes.iter().filter(|&&m| m != 0 && modes.contains(&0)) {
            let c = sums[mode];
            println!(
                "{} / tokio over {} {label} round(s): req/s {:.3}x, p99 {:.3}x, CPU per request {:.3}x",
                NAMES[mode],
                rounds_in.len(),
                c.0 / t.0,
                c.1 / t.1,
                c.2 / t.2,
            );
            // The ratio of sums lets one round's p99 outweigh the rest: a
            // round in which the host held a vCPU for tens of ms (which its
            // steal count need not show) reads 20-50x. The median of the
            // rounds' own ratios does not.
            let per_round = |f: fn(&RunRow) -> f64| {
                let mut v: Vec<f64> = rounds_in
                    .iter()
                    .filter_map(|&round| {
                        let of = |m: usize| runs.iter().find(|r| r.0 == round && r.1 == m);
                        Some(f(of(mode)?) / f(of(0)?))
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                match v.len() {
                    0 => f64::NAN,
                    n if n % 2 == 1 => v[n / 2],
                    n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
                }
            };
            println!(
                "{} / tokio, median of the {} {label} rounds' ratios: req/s {:.3}x, p99 {:.3}x, CPU per request {:.3}x",
                NAMES[mode],
                rounds_in.len(),
                per_round(|r| r.2),
                per_round(|r| r.3),
                per_round(|r| r.4),
            );
        }
    };
    let all: Vec<u64> = (1..=rounds).collect();
    ratios("all", &all);
    let quiet: Vec<u64> = all
        .into_iter()
        .filter(|&round| {
            runs.iter()
                .filter(|r| r.0 == round)
                .all(|r| r.5 <= quiet_ms)
        })
        .collect();
    println!("\nquiet rounds (no run with more than {quiet_ms:.0} ms of steal): {quiet:?}");
    if !quiet.is_empty() {
        ratios("quiet", &quiet);
    }
    println!("load average after: {}", loadavg());
}

/// A handler that never yields, behind a 20 ms budget: how long after the
/// budget its caller gets the 503. The peer, in the same run and
/// alternating request by request: tokio with tower-http's `TimeoutLayer`
/// (20 ms, answered 503) around a handler that waits for good, the best
/// that tokio's stack can do, for a handler that yields (it cannot answer
/// one that does not at all).
fn timeout_delivery(bench_mode: bool) {
    const BUDGET: Duration = Duration::from_millis(20);
    const SPIN: Duration = Duration::from_millis(60);
    let claims = std::sync::Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let claims_in_layer = claims.clone();
    let requests = if bench_mode {
        common::env_or("AXUM_BENCH_SPIN_REQUESTS", 200) as usize
    } else {
        5
    };
    let spinning = Router::new()
        .route(
            "/spin",
            get(|| async {
                let t = Instant::now();
                while t.elapsed() < SPIN {
                    std::hint::spin_loop();
                }
                "spun"
            }),
        )
        .layer(CurfewLayer::new().poll_budget(BUDGET).on_failure(move |f| {
            // When the watchdog found the overrun: splits each
            // delivery into the watchdog's lateness and the rest.
            if let Some(t) = f.error.and_then(curfew::JoinError::timeout) {
                let late = t.elapsed().saturating_sub(BUDGET);
                claims_in_layer
                    .lock()
                    .unwrap()
                    .push(late.as_secs_f64() * 1e6);
            }
            f.default_response()
        }));
    let waiting = Router::new()
        .route("/spin", get(std::future::pending::<&'static str>))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::SERVICE_UNAVAILABLE,
            BUDGET,
        ));
    let servers = [
        curfew_server(spinning, "axsp"),
        tokio_server(waiting, "axto"),
    ];
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    // Each request on a connection of its own, opened before the clock
    // starts: curfew's timeout closes the connection, and what is timed is
    // the answer, not the server's accept.
    let steal = steal_ms();
    let over_us: [Vec<f64>; 2] = client_rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = [Vec::new(), Vec::new()];
        for i in 0..requests * 2 {
            let which = i % 2;
            let mut stream = tokio::net::TcpStream::connect(servers[which].addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let t = Instant::now();
            stream
                .write_all(b"GET /spin HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
                .await
                .expect("send");
            let mut first = [0u8; 12];
            stream.read_exact(&mut first).await.expect("answer");
            let took = t.elapsed();
            assert_eq!(&first[9..12], b"503", "the handler is answered 503");
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            out[which].push((took.as_secs_f64() - BUDGET.as_secs_f64()) * 1e6);
            // Let the written-off thread finish its spin before the next.
            tokio::time::sleep(SPIN).await;
        }
        out
    });
    let steal = steal_ms() - steal;
    drop(servers);
    let mut claims = std::mem::take(&mut *claims.lock().unwrap());
    let verbose = std::env::var_os("AXUM_BENCH_VERBOSE").is_some();
    if verbose && claims.len() == over_us[0].len() {
        let pairs: Vec<_> = over_us[0]
            .iter()
            .zip(&claims)
            .enumerate()
            .filter(|(_, (o, _))| **o > 2000.0)
            .map(|(i, (o, c))| format!("#{i}: 503 +{o:.0} µs, found +{c:.0} µs"))
            .collect();
        println!("late 503s: {pairs:?}");
    }
    let pct = |v: &[f64], p: f64| v[((p / 100.0) * v.len() as f64).ceil() as usize - 1];
    println!(
        "\na handler past a {BUDGET:?} budget, {requests} requests each, one at a time, \
         alternating; hypervisor steal meanwhile {steal:.0} ms; load average: {}",
        loadavg()
    );
    let mut summary = Vec::new();
    let names = ["curfew (never yields)", "tokio + TimeoutLayer (waits)"];
    for (name, mut v) in names.into_iter().zip(over_us) {
        v.sort_by(f64::total_cmp);
        let late = v.iter().filter(|&&us| us > 2000.0).count();
        let (p50, p99) = (pct(&v, 50.0), pct(&v, 99.0));
        println!(
            "{name}: 503 at budget + {:.2} ms (p50), + {:.2} ms (p99), + {:.2} ms (max), \
             {late} over + 2 ms",
            p50 / 1e3,
            p99 / 1e3,
            v.last().copied().unwrap_or(0.0) / 1e3,
        );
        if verbose {
            println!("  over budget (µs, sorted): {v:.0?}");
        }
        summary.push((p50, p99));
    }
    println!(
        "curfew / tokio: p50 over budget {:.3}x, p99 {:.3}x",
        summary[0].0 / summary[1].0,
        summary[0].1 / summary[1].1
    );
    claims.sort_by(f64::total_cmp);
    if !claims.is_empty() {
        println!(
            "curfew's watchdog found the overrun at budget + {:.2} ms (p50), + {:.2} ms (p99) \
             (counted from when it saw the poll start)",
            pct(&claims, 50.0) / 1e3,
            pct(&claims, 99.0) / 1e3,
        );
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    throughput(bench_mode);
    if std::env::var_os("AXUM_BENCH_SKIP_SPIN").is_none() {
        timeout_delivery(bench_mode);
    }
}
