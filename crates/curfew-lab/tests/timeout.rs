//! In the curfew modes an attack is answered 503 with Retry-After within a
//! generous bound, while benign requests go on being served.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use curfew_lab::server::{Fifo, Mode, ServerConfig};
use hyper::Method;

/// Generous: the budget is 100 ms (1 s for the pool); debug builds on a
/// loaded machine are slow.
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// Attacks `path` while a benign client keeps asking for `/hello`; `release`
/// lets the handler go before the server stops.
fn attack_under_benign_load(mode: Mode, path: &'static str, body: Vec<u8>, release: impl FnOnce()) {
    let server = common::server(mode, &ServerConfig::default());
    let addr = server.addr();
    let rt = common::client_rt();
    rt.block_on(async {
        let done = Arc::new(AtomicBool::new(false));
        let benign = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut answered = 0;
                while !done.load(Ordering::Relaxed) {
                    let a = common::get(addr, "/hello").await;
                    assert_eq!(
                        a.status, 200,
                        "benign request during the attack: {}",
                        a.body
                    );
                    answered += 1;
                }
                answered
            })
        };
        let start = Instant::now();
        let a = common::request(addr, Method::POST, path, "attacker", body, ANSWER_BOUND).await;
        let took = start.elapsed();
        assert_eq!(a.status, 503, "{path}: {}", a.body);
        assert_eq!(a.outcome, "timeout", "{path}: {}", a.body);
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert!(a.body.contains("timed out"), "{}", a.body);
        // A few more benign answers after the timeout, then stop.
        tokio::time::sleep(Duration::from_millis(200)).await;
        done.store(true, Ordering::Relaxed);
        let answered = benign.await.expect("the benign client");
        assert!(answered > 0, "no benign request answered during {took:?}");
    });
    server.stop_spinning();
    release();
    let s = server.shutdown(Duration::from_secs(5));
    assert_eq!(s.handlers_left, 0);
}

#[test]
fn infinite_loop_gets_503_and_benign_clients_are_served() {
    attack_under_benign_load(
        Mode::Curfew,
        "/attack/infinite-loop",
        usize::MAX.to_string().into_bytes(),
        || {},
    );
}

#[test]
fn blocking_read_in_async_gets_503() {
    let fifo = Fifo::new(&std::env::temp_dir()).expect("a FIFO");
    let path = fifo.path().as_os_str().as_encoded_bytes().to_vec();
    // The read blocks until the FIFO is released; dropping the FIFO (also
    // on a failed assertion) releases it, so no thread stays blocked.
    attack_under_benign_load(Mode::Curfew, "/attack/read-path?form=inline", path, || {
        fifo.release()
    });
}

#[test]
fn blocking_read_on_the_pool_gets_503() {
    let fifo = Fifo::new(&std::env::temp_dir()).expect("a FIFO");
    let path = fifo.path().as_os_str().as_encoded_bytes().to_vec();
    let server = common::server(Mode::Curfew, &ServerConfig::default());
    let addr = server.addr();
    common::client_rt().block_on(async {
        let a = common::request(
            addr,
            Method::POST,
            "/attack/read-path?form=pool",
            "attacker",
            path,
            ANSWER_BOUND,
        )
        .await;
        assert_eq!(
            (a.status, a.outcome.as_str()),
            (503, "timeout"),
            "{}",
            a.body
        );
        assert!(a.body.contains("worker pool"), "{}", a.body);
        assert!(a.retry_after.is_some());
        assert_eq!(common::get(addr, "/file").await.status, 200);
    });
    fifo.release();
    assert_eq!(server.shutdown(Duration::from_secs(5)).handlers_left, 0);
}
