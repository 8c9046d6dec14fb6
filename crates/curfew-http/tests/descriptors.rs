//! Out of file descriptors, the server sheds waiting connections (with a
//! descriptor it keeps spare for the purpose) instead of leaving them in
//! the backlog, and serves again once descriptors are free.
//!
//! The only test in its binary: it lowers the process's descriptor limit.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{TestServer, runtime};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn set_soft_limit(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one valid `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

#[test]
fn connections_past_the_descriptor_limit_are_shed() {
    let server = TestServer::start(
        runtime(),
        Router::new().route("/hello", get(|| async { "hello" })),
        |s| s,
    );
    let addr = server.addr;
    // Served once: the server has read the descriptor limit it starts with
    // (the test lowers it only below).
    assert!(common::served_soon([127, 0, 0, 1], addr, "/hello"));
    // Each connection costs two descriptors here (client and server side).
    // Should the client side run out first, giving back this one lets one
    // more client in, and the server's accept then runs out.
    let mut reserve = Some(std::fs::File::open("/dev/null").unwrap());
    let old = set_soft_limit((open_fds() + 30) as u64);
    let mut clients = Vec::new();
    let mut shed = false;
    for _ in 0..60 {
        let Ok(mut s) = TcpStream::connect(addr) else {
            if reserve.take().is_some() {
                continue;
            }
            break;
        };
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        // A connection the server accepted stays open and silent; a shed
        // one is closed at once.
        if matches!(s.read(&mut b), Ok(0)) {
            shed = true;
            break;
        }
        clients.push(s);
    }
    drop(clients);
    set_soft_limit(old);
    assert!(shed, "no connection was shed at the descriptor limit");
    assert!(
        common::served_soon([127, 0, 0, 1], addr, "/hello"),
        "served again once descriptors are free"
    );
}
