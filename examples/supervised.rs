//! A hyper server whose `main` runs under the supervisor: two worker
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

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

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
        .runtime(curfew::Runtime::builder().poll_budget(Duration::from_millis(100)));

    // The supervisor returns here after Ctrl-C; a worker never does.
    let summary = curfew_supervisor::run(config, |worker| async move {
        let listener = worker.tokio_listener()?;
        let graceful = GracefulShutdown::new();
        let mut drain = std::pin::pin!(worker.drain());
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let Ok((stream, _)) = conn else { continue };
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(route));
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = &mut drain => break,
            }
        }
        // Stop accepting; finish what is in flight, then the worker exits.
        drop(listener);
        graceful.shutdown().await;
        Ok::<_, std::io::Error>(())
    })?;
    println!("{summary:?}");
    Ok(())
}

async fn route(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/hello" => (StatusCode::OK, "hello\n".to_string()),
        "/pid" => (StatusCode::OK, format!("{}\n", std::process::id())),
        "/spin" => {
            // A handler that never returns, run under the poll budget.
            let stuck = curfew::spawn(async {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                #[allow(unreachable_code)]
                ()
            });
            match stuck.await {
                Ok(()) => (StatusCode::OK, "done\n".to_string()),
                Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    Ok(resp)
}
