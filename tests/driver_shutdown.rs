//! Shutting a runtime down while its event threads are inside the I/O driver,
//! with sockets, timers and `tokio::spawn`ed tasks in flight, in every way a
//! runtime can end: no thread panics (tokio panics if its runtime is dropped
//! while a thread still holds the driver) and nothing hangs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Loopback echo round trips and short sleeps, until shutdown drops it (or
/// a socket fails as the runtime goes away: not a panic, since the test
/// counts panics).
async fn churn() {
    // Binding fails once the runtime has begun to shut down.
    let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    drop(curfew::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            drop(tokio::spawn(async move {
                let mut buf = [0u8; 4];
                while sock.read_exact(&mut buf).await.is_ok() {
                    if sock.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }));
    let Ok(mut sock) = TcpStream::connect(addr).await else {
        return;
    };
    let mut buf = [0u8; 4];
    while sock.write_all(b"ping").await.is_ok() && sock.read_exact(&mut buf).await.is_ok() {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[test]
fn runtimes_shut_down_cleanly_with_io_in_flight() {
    let panics = Arc::new(AtomicUsize::new(0));
    let default_hook = std::panic::take_hook();
    {
        let panics = panics.clone();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
    }
    for round in 0..24 {
        let rt = curfew::Runtime::builder().event_threads(2).build().unwrap();
        for _ in 0..3 {
            drop(rt.spawn(churn()));
        }
        // Let the threads park in (and hand over) the driver a few times.
        std::thread::sleep(Duration::from_millis(round % 4));
        match round % 3 {
            0 => drop(rt),
            1 => rt.shutdown_background(),
            _ => rt.shutdown_timeout(Duration::from_millis(500)),
        }
    }
    // Threads that outlive a background shutdown finish on their own.
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::panic::take_hook();
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a thread panicked");
}
