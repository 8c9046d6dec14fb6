//! A server on 127.0.0.1 in a thread of its own, and raw clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use curfew_http::{App, Serve};

/// A running server; dropping it shuts it down gracefully.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: curfew::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Set to end the tests' spinning handlers.
    pub spin_stop: Arc<AtomicBool>,
}

impl TestServer {
    /// Starts `app` under `serve`, configured by `cfg`, on a runtime built
    /// by `rt`.
    pub fn start<S, F>(rt: curfew::Builder, app: S, cfg: F) -> TestServer
    where
        S: App,
        F: FnOnce(Serve<S>) -> Serve<S> + Send + 'static,
    {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = rt.build().expect("curfew runtime");
            let res = rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx
                    .send((listener.local_addr()?, curfew::Handle::current()))
                    .unwrap();
                cfg(curfew_http::serve(listener, app))
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await
            });
            rt.shutdown_timeout(Duration::from_secs(2));
            res
        });
        let (addr, handle) = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server started");
        TestServer {
            addr,
            handle,
            stop: Some(stop),
            thread: Some(thread),
            spin_stop: Arc::default(),
        }
    }

    /// Asks for a graceful shutdown and waits up to `wait` for it; true if
    /// the server finished.
    pub fn shutdown(&mut self, wait: Duration) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let start = Instant::now();
        while start.elapsed() < wait {
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                if let Some(t) = self.thread.take() {
                    t.join().expect("server thread").expect("serve");
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.spin_stop.store(true, Ordering::SeqCst);
        // Detached if it does not finish: the test process ends anyway.
        let _ = self.shutdown(Duration::from_secs(5));
    }
}

/// A runtime for tests: 2 event threads and a poll budget of 1 s, so that
/// a server thread that the loaded test machine preempts in the middle of
/// a connection's poll is not written off (and its connection dropped) by
/// the watchdog. Routes that must overrun set a shorter budget on their
/// layer ([`SPIN_BUDGET`]), or spin for longer.
pub fn runtime() -> curfew::Builder {
    curfew::Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(1))
}

/// The layer's budget in the tests whose handlers never yield: short, so
/// that their timeouts come soon. A handler's own poll is a small window
/// for the machine to preempt, next to a connection's.
pub const SPIN_BUDGET: Duration = Duration::from_millis(50);

/// Spins without yielding until `stop` is set or `max` has passed.
pub fn spin(stop: &AtomicBool, max: Duration) {
    let t = Instant::now();
    while t.elapsed() < max && !stop.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
}

/// A GET route whose handler never yields: it spins until `stop` is set
/// or `max` has passed.
pub fn spinning(stop: Arc<AtomicBool>, max: Duration) -> axum::routing::MethodRouter {
    axum::routing::get(move || {
        let stop = stop.clone();
        async move {
            spin(&stop, max);
            "spun"
        }
    })
}

/// `/hello`, a never-yielding `/spin` (until `stop`, at most 10 s, far
/// past the runtime's 1 s budget that the layer takes) and
/// `POST /upload`, which counts the bodies it reads in `body_reads`, behind
/// the layer: for the tests that must tell whether a body was read.
pub fn upload_app(
    body_reads: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> axum::Router {
    axum::Router::new()
        .route("/hello", axum::routing::get(|| async { "hello" }))
        .route("/spin", spinning(stop, Duration::from_secs(10)))
        .route(
            "/upload",
            axum::routing::post(move |body: axum::body::Bytes| {
                body_reads.fetch_add(1, Ordering::SeqCst);
                async move { format!("{} bytes", body.len()) }
            }),
        )
        .layer(curfew_http::CurfewLayer::new())
}

/// Whether `GET path` from `local` answers 200 within about 2.5 s of
/// retries (a closed connection's slot comes back asynchronously).
pub fn served_soon(local: [u8; 4], addr: SocketAddr, path: &str) -> bool {
    (0..50).any(|_| {
        let ok = get_from(local, addr, path).is_ok_and(|r| r.status == 200);
        if !ok {
            std::thread::sleep(Duration::from_millis(50));
        }
        ok
    })
}

/// Connects from a chosen loopback address (all of 127/8 reaches the
/// server), so that tests can be different clients.
pub fn connect_from(local: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((local, 0)).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A parsed response head and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response with a Content-Length body (or up to EOF).
pub fn read_reply(s: &mut TcpStream) -> std::io::Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {} bytes", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends a GET on `s` and reads the reply.
pub fn get(s: &mut TcpStream, path: &str) -> std::io::Result<Reply> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    read_reply(s)
}

/// One GET on a fresh connection from `local`.
pub fn get_from(local: [u8; 4], addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    get(&mut connect_from(local, addr), path)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}
