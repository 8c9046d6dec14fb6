//! `curfew-supervisor-demo`: a small hyper server under the supervisor,
//! with routes that misbehave on purpose. The crate's tests run it as a real
//! supervisor with real workers.
//!
//! ```text
//! curfew-supervisor-demo [--addr 127.0.0.1:3000] [--processes 1] [--spares 1]
//!     [--drain-deadline-ms 10000] [--max-draining N] [--rss-limit-mb N] [--poll-budget-ms 100]
//!     [--written-off N] [--cpu-share 0.5|off]
//! ```
//!
//! Routes: `GET /hello`; `GET /pid` (the worker's process id); `GET /spin`
//! (a loop that never ends and never reaches a checkpoint: answered 503 at
//! the poll budget, and its thread spins on until the worker is recycled);
//! `GET /sleep?ms=N` (a slow benign request, logged at debug level when
//! it starts); `GET /alloc?mb=N` (keeps N MiB
//! for good); `GET /zero` (reads /dev/zero into memory on the worker pool, up
//! to 2 GiB); `GET /exit` (the worker exits with status 3).
//!
//! The supervisor prints `listening on <addr>` once bound and a summary
//! line when it stops; everything else is `tracing` on stderr
//! (`RUST_LOG=curfew_supervisor=debug` for more).

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use curfew_supervisor::{Config, Role, Worker};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

/// How long a draining worker keeps its keep-alive connections open for
/// one more request (answered with `Connection: close`) before it closes
/// the idle ones.
const LINGER: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "curfew_supervisor=info,curfew=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("curfew-supervisor-demo: {e}");
            return ExitCode::from(2);
        }
    };
    match curfew_supervisor::role(config) {
        Ok(Role::Worker(w)) => w.run(serve),
        Ok(Role::Supervisor(s)) => {
            println!("listening on {}", s.local_addr());
            match s.run() {
                Ok(sum) => {
                    println!(
                        "stopped: started={} recycled={} killed_while_draining={} restarts={}",
                        sum.started, sum.recycled, sum.killed_while_draining, sum.restarts
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("curfew-supervisor-demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("curfew-supervisor-demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config::new("127.0.0.1:3000".parse().unwrap());
    let mut runtime = curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_millis(100));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} `{value}` is not a whole number"))
        };
        config = match flag.as_str() {
            "--addr" => config.addr(
                value
                    .parse()
                    .map_err(|_| format!("--addr `{value}` is not an address"))?,
            ),
            "--processes" => config.processes(num()? as usize),
            "--spares" => config.spares(num()? as usize),
            "--max-draining" => config.max_draining(num()? as usize),
            "--written-off" => config.recycle_at_written_off(num()? as usize),
            "--drain-deadline-ms" => config.drain_deadline(Duration::from_millis(num()?)),
            "--cpu-share" if value == "off" => config.recycle_at_cpu_share(None),
            "--cpu-share" => config.recycle_at_cpu_share(
                value
                    .parse::<f64>()
                    .map_err(|_| format!("--cpu-share `{value}` is not a number or `off`"))?,
            ),
            "--rss-limit-mb" => config.recycle_at_rss(num()? << 20),
            "--poll-budget-ms" => {
                runtime = runtime.poll_budget(Duration::from_millis(num()?));
                config
            }
            _ => return Err(format!("unknown flag {flag}")),
        };
    }
    Ok(config.runtime(runtime))
}

async fn serve(worker: Worker) -> std::io::Result<()> {
    let listener = worker.tokio_listener()?;
    let graceful = GracefulShutdown::new();
    let draining = Arc::new(AtomicBool::new(false));
    let mut drain = std::pin::pin!(worker.drain());
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let draining = draining.clone();
                let svc = service_fn(move |req| {
                    let draining = draining.clone();
                    async move {
                        let mut resp = route(req).await;
                        if draining.load(Ordering::Relaxed) {
                            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut drain => break,
        }
    }
    // Stop accepting: the connections still queued go to the other workers.
    drop(listener);
    draining.store(true, Ordering::Relaxed);
    // Clients on keep-alive connections get one more answer, marked
    // `Connection: close`, and reconnect to another worker.
    let linger = tokio::time::Instant::now() + LINGER;
    while graceful.count() > 0 && tokio::time::Instant::now() < linger {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Idle connections close now; busy ones after their current response.
    graceful.shutdown().await;
    Ok(())
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn route(req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/hello" => text(StatusCode::OK, "hello\n"),
        "/pid" => text(StatusCode::OK, format!("{}\n", std::process::id())),
        "/sleep" => {
            let ms = query_num(&req, "ms").unwrap_or(100).min(60_000);
            tracing::debug!(target: "curfew_supervisor::demo", ms, "slow request started");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms} ms\n"))
        }
        "/spin" => {
            // Never returns and never reaches a checkpoint: only a process
            // boundary can take this thread's CPU back.
            let stuck = curfew::spawn(async {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                #[allow(unreachable_code)]
                ()
            });
            match stuck.await {
                Ok(()) => text(StatusCode::OK, "done\n"),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        "/alloc" => {
            let mb = query_num(&req, "mb").unwrap_or(1).min(4096) as usize;
            let mut held = vec![0u8; mb << 20];
            // Touch every page so that it is resident.
            for i in (0..held.len()).step_by(4096) {
                held[i] = 1;
            }
            std::mem::forget(held);
            text(StatusCode::OK, format!("holding {mb} MiB more\n"))
        }
        "/zero" => {
            // A read of /dev/zero that never ends (the ReadDoS of issue 14):
            // on the pool, answered at the job budget, and then the
            // abandoned thread keeps allocating (capped at 2 GiB here).
            let job = curfew::spawn_blocking(|| -> std::io::Result<usize> {
                use std::io::Read as _;
                let mut f = std::fs::File::open("/dev/zero")?;
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut chunk = vec![0u8; 1 << 20];
                while held.len() < 2048 {
                    f.read_exact(&mut chunk)?;
                    chunk[0] = 1;
                    held.push(chunk.clone());
                }
                Ok(held.len())
            });
            match job.await {
                Ok(_) => text(StatusCode::OK, "read\n"),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        "/exit" => std::process::exit(3),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
