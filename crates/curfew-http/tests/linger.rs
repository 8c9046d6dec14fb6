//! The lingering close: a connection closed after a response sends its
//! FIN first, then reads and throws away what the client still sends,
//! within a time, an idle and a byte bound, so that a client refused before
//! its body was read gets its answer instead of a reset, and a client that
//! never stops sending is cut off.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use common::{TestServer, connect_from, get_from, read_reply, runtime};
use curfew::policy::ClientPolicy;

const MIB: usize = 1 << 20;
/// The size of one write of body bytes.
const CHUNK: usize = 64 << 10;

/// Sends the head of a `POST /upload` declaring `len` bytes of body.
fn send_upload_head(s: &mut TcpStream, len: usize) -> std::io::Result<()> {
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Sends `total` bytes of body in chunks; the error of the first write
/// that fails, with how many bytes went before it.
fn send_body(s: &mut TcpStream, total: usize) -> Result<(), (usize, std::io::Error)> {
    let chunk = [b'x'; CHUNK];
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        s.write_all(&chunk[..n]).map_err(|e| (sent, e))?;
        sent += n;
    }
    Ok(())
}

/// Sends body bytes, a chunk every `pause`, until a write fails (the
/// server closed the connection) or `max` has passed since `start`; the
/// time since `start` and the bytes it took, `None` for the time if no
/// write failed.
fn stream_until_cut_off(
    s: &mut TcpStream,
    start: Instant,
    pause: Duration,
    max: Duration,
) -> (Option<Duration>, usize) {
    let chunk = [b'x'; CHUNK];
    let mut sent = 0;
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    while start.elapsed() < max {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eprintln!("cut off after {:?}, {sent} bytes: {e}", start.elapsed());
                return (Some(start.elapsed()), sent);
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    (None, sent)
}

/// Makes `client` cool off: one strike from a handler that never yields.
fn cool_off(server: &TestServer, stop: &AtomicBool, client: [u8; 4]) {
    let r = get_from(client, server.addr, "/spin").unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    stop.store(true, Ordering::SeqCst);
    let ip = std::net::Ipv4Addr::from(client);
    let key = curfew::ClientKey::ip(ip.into());
    assert!(server.handle.cooling_off(&key).is_some(), "cooling off");
}

/// How the server of [`refused_upload`] lingers.
#[derive(Clone, Copy)]
enum Lingering {
    /// `t` for the time and idle bounds, 64 MiB: the test machine may be
    /// loaded, and a client descheduled past the idle bound would be cut
    /// off.
    Generous(Duration),
    /// No lingering: the close as it was before.
    Off,
}

/// What a client cooling off sees when it sends a POST declaring `body`
/// bytes, sends all of them, and only then reads: the response, or what
/// went wrong (the writes or the read failed).
fn refused_upload(linger: Lingering, body: usize) -> Result<common::Reply, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let rt = runtime().client_policy(ClientPolicy::new(1, Duration::from_secs(60)));
    let server = TestServer::start(
        rt,
        common::upload_app(reads.clone(), stop.clone()),
        move |s| match linger {
            Lingering::Generous(t) => s
                .lingering_close_time(t)
                .lingering_close_timeout(t)
                .lingering_close_bytes(64 * MIB),
            Lingering::Off => s.lingering_close_time(Duration::ZERO),
        },
    );
    let mallory = [127, 0, 9, 1];
    cool_off(&server, &stop, mallory);

    let mut s = connect_from(mallory, server.addr);
    send_upload_head(&mut s, body).map_err(|e| format!("head: {e}"))?;
    if let Err((sent, e)) = send_body(&mut s, body) {
        // What a client that reads after a failed write still gets.
        let then = read_reply(&mut s).map(|r| r.status);
        return Err(format!(
            "writing the body failed after {sent} bytes: {e}; reading then: {then:?}"
        ));
    }
    let r = read_reply(&mut s).map_err(|e| format!("reading the answer: {e}"))?;
    // Then the server's FIN, not a reset.
    let mut rest = [0u8; 16];
    match s.read(&mut rest) {
        Ok(0) => {}
        other => return Err(format!("after the answer: {other:?}, not end-of-file")),
    }
    assert_eq!(reads.load(Ordering::SeqCst), 0, "the handler never ran");
    Ok(r)
}

#[test]
fn a_refused_client_still_sending_its_body_gets_the_whole_answer() {
    // 8 MiB of body sent after the refusal, before reading: without the
    // lingering close the server closes with the body unread, and the
    // client's writes fail with a reset.
    let r = refused_upload(Lingering::Generous(Duration::from_secs(20)), 8 * MIB)
        .expect("the whole body is sent and the answer read, no reset");
    assert_eq!(r.status, 429, "{r:?}");
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(r.body.len(), len, "the whole answer: {r:?}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

/// The defect the lingering close fixes, with lingering disabled: the
/// client loses its answer to a reset. Ignored by default: it shows the
/// kernel's behaviour, and passes only while that behaviour holds.
#[test]
#[ignore = "shows the reset with lingering disabled; run with --ignored"]
fn without_lingering_the_refused_client_sees_a_reset() {
    let mut resets = 0;
    for _ in 0..5 {
        match refused_upload(Lingering::Off, 8 * MIB) {
            Ok(r) => eprintln!("answered: {}", r.status),
            Err(e) => {
                eprintln!("{e}");
                resets += 1;
            }
        }
    }
    assert!(resets >= 3, "{resets} of 5 lost their answer");
}

/// A server whose byte budget refuses any body over 1 KiB with a `503`
/// before reading it, with lingering set by `cfg`.
fn budget_server(
    cfg: impl FnOnce(curfew_http::Serve<Router>) -> curfew_http::Serve<Router> + Send + 'static,
) -> TestServer {
    let app = common::upload_app(Arc::default(), Arc::default());
    TestServer::start(runtime(), app, |s| cfg(s.max_body_bytes_in_flight(1024)))
}

/// Connects from `local`, declares a body of 1 GB and reads the `503`.
fn refused(local: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut s = connect_from(local, addr);
    send_upload_head(&mut s, 1 << 30).unwrap();
    let r = read_reply(&mut s).expect("the refusal");
    assert_eq!(r.status, 503, "{r:?}");
    s
}

#[test]
fn a_client_streaming_forever_is_cut_off_at_the_linger_time() {
    let linger = Duration::from_secs(3);
    let mut server = budget_server(move |s| {
        s.lingering_close_time(linger)
            .lingering_close_timeout(Duration::from_secs(30))
            .lingering_close_bytes(usize::MAX)
            .max_connections(2)
    });
    let addr = server.addr;
    // Two clients refused, streaming body bytes from then on, a chunk
    // every 10 ms, for up to 30 s: they hold both connection slots.
    let streamers: Vec<_> = (0..2u8)
        .map(|i| {
            // Before the refusal, so before the server's linger starts.
            let start = Instant::now();
            let mut s = refused([127, 0, 9, 10 + i], addr);
            std::thread::spawn(move || {
                let (pause, max) = (Duration::from_millis(10), Duration::from_secs(30));
                stream_until_cut_off(&mut s, start, pause, max)
            })
        })
        .collect();
    // While they linger they count against the cap: a third client is shed.
    let mut third = connect_from([127, 0, 9, 20], addr);
    assert!(
        common::get(&mut third, "/hello").is_err(),
        "a lingering connection holds its slot"
    );
    for t in streamers {
        let (cut, sent) = t.join().unwrap();
        let cut = cut.unwrap_or_else(|| {
            let m = server.handle.metrics().event;
            panic!("never cut off ({sent} bytes sent in 30 s): {m:?}")
        });
        // The client's clock started before the server's; it notices the
        // close at its next write.
        assert!(
            cut >= linger,
            "cut off after {cut:?}, before the linger time"
        );
        assert!(cut < Duration::from_secs(15), "cut off after {cut:?}");
    }
    // The slots are back.
    assert!(
        common::served_soon([127, 0, 9, 21], addr, "/hello"),
        "served once the lingering connections are cut off"
    );
    // And a graceful shutdown waits for a lingering connection no longer
    // than the linger time.
    let start = Instant::now();
    let mut s = refused([127, 0, 9, 12], addr);
    let streamer = std::thread::spawn(move || {
        let (pause, max) = (Duration::from_millis(10), Duration::from_secs(30));
        stream_until_cut_off(&mut s, start, pause, max)
    });
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    let handle = server.handle.clone();
    assert!(
        server.shutdown(Duration::from_secs(15)),
        "shut down while a client lingers: {:?}",
        handle.metrics().event
    );
    let took = asked.elapsed();
    let (cut, _) = streamer.join().unwrap();
    assert!(cut.is_some(), "the lingering client was cut off");
    eprintln!("graceful shutdown with a lingering client: {took:?}");
}

#[test]
fn a_client_streaming_fast_is_cut_off_at_the_byte_bound() {
    let server = budget_server(|s| {
        s.lingering_close_time(Duration::from_secs(60))
            .lingering_close_timeout(Duration::from_secs(60))
            .lingering_close_bytes(MIB)
    });
    let start = Instant::now();
    let mut s = refused([127, 0, 9, 30], server.addr);
    let (cut, sent) = stream_until_cut_off(
        &mut s,
        start,
        Duration::from_millis(1),
        Duration::from_secs(20),
    );
    let cut = cut.unwrap_or_else(|| panic!("never cut off ({sent} bytes sent in 20 s)"));
    assert!(
        sent >= MIB,
        "cut off after {sent} bytes, before the byte bound"
    );
    assert!(cut < Duration::from_secs(20), "cut off after {cut:?}");
}

#[test]
fn a_silent_client_is_closed_at_the_idle_bound() {
    let server = budget_server(|s| {
        s.lingering_close_time(Duration::from_secs(60))
            .lingering_close_timeout(Duration::from_millis(300))
            .max_connections(1)
    });
    let addr = server.addr;
    // Refused, then silent, its socket left open: only the idle bound
    // ends the linger, long before the time bound.
    let mut s = refused([127, 0, 9, 40], addr);
    s.write_all(&[b'x'; 1000]).unwrap();
    let start = Instant::now();
    assert!(
        common::served_soon([127, 0, 9, 41], addr, "/hello"),
        "the slot comes back"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    drop(s);
}

#[test]
fn keep_alive_connections_are_unaffected() {
    // Bounds so long that a needless linger would show.
    let server = budget_server(|s| {
        s.lingering_close_time(Duration::from_secs(60))
            .lingering_close_timeout(Duration::from_secs(60))
            .max_connections(1)
    });
    let addr = server.addr;
    let mut s = connect_from([127, 0, 9, 50], addr);
    let start = Instant::now();
    for _ in 0..3 {
        let r = common::get(&mut s, "/hello").expect("answered on the same connection");
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    }
    // An upload on the same connection, read in full, is answered too.
    send_upload_head(&mut s, 100).unwrap();
    s.write_all(&[b'y'; 100]).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "100 bytes"));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // `Connection: close`: the answer and end-of-file come at once (the
    // FIN goes before the linger), and the linger ends when the client
    // closes, not at a bound.
    write!(
        s,
        "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(r.status, 200);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(s.read(&mut b).unwrap(), 0, "end-of-file after the answer");
    drop(s);
    assert!(
        common::served_soon([127, 0, 9, 51], addr, "/hello"),
        "the slot is back once the client closed"
    );
}
