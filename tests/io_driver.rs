//! The runtime's own I/O driver: event threads drive tokio's sockets and
//! timers while idle, I/O and timers still advance when every event thread is
//! busy, `tokio::spawn` inside a curfew task works, and shutting down drops
//! what is left on the driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use curfew_suite::{DropCounter, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LONG: Duration = Duration::from_secs(20);

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(2)
        .thread_name("drv")
        .build()
        .unwrap()
}

/// Keeps an event thread busy with short polls until released: the thread
/// always has work, so it never parks in the driver.
async fn busy(release: Arc<AtomicBool>) {
    while !release.load(Ordering::Relaxed) {
        curfew::task::yield_now().await;
    }
}

#[test]
fn io_and_timers_advance_while_every_event_thread_is_busy() {
    let rt = runtime();
    let release = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2).map(|_| rt.spawn(busy(release.clone()))).collect();

    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = curfew::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            sock.read_exact(&mut buf).await.unwrap();
            sock.write_all(&buf).await.unwrap();
        });
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        sock.read_exact(&mut buf).await.unwrap();
        server.await.unwrap();
        tx.send(buf).unwrap();
    });
    let echoed = rx.recv_timeout(LONG);
    release.store(true, Ordering::Relaxed);
    assert_eq!(
        echoed.expect("timer and socket never became ready while the threads were busy"),
        *b"ping"
    );
    for h in busy {
        rt.block_on(h).unwrap();
    }
}

#[test]
fn the_driver_runs_on_event_threads() {
    let rt = runtime();
    let names = rt.block_on(async {
        curfew::spawn(async {
            // A task spawned with tokio::spawn runs inside the driver.
            let tokio_task =
                tokio::spawn(async { std::thread::current().name().unwrap_or("").to_owned() });
            // A timer's wake-up comes from the driver too.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let after_timer = std::thread::current().name().unwrap_or("").to_owned();
            (tokio_task.await.unwrap(), after_timer)
        })
        .await
        .unwrap()
    });
    for name in [names.0, names.1] {
        // Event threads are named drv-0, drv-1, ...; no other thread is.
        let id = name.strip_prefix("drv-").unwrap_or_default();
        assert!(
            id.parse::<usize>().is_ok(),
            "ran on {name:?}, not an event thread"
        );
    }
}

#[test]
fn shutdown_drops_tasks_left_on_the_driver() {
    let rt = runtime();
    let drops = DropCounter::new();
    let guard = drops.guard();
    rt.block_on(async move {
        curfew::spawn(async move {
            drop(tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }));
        })
        .await
        .unwrap();
    });
    assert_eq!(drops.dropped(), 0);
    drop(rt);
    assert!(wait_until(LONG, || drops.dropped() == 1));
}

#[tokio::test]
async fn a_runtime_can_be_dropped_inside_an_async_context() {
    let rt = runtime();
    let h = rt.spawn(async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        7
    });
    assert_eq!(h.await.unwrap(), 7);
    drop(rt);
}
