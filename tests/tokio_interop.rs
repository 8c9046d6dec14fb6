//! tokio interop: curfew tasks use tokio TCP, timers and channels, both under
//! a curfew `Runtime` and when spawned from `#[tokio::test]`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo round trip over loopback TCP, a timer and channels, all inside
/// curfew tasks spawned with `curfew::spawn`.
async fn exercise_tokio() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = curfew::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        sock.read_exact(&mut buf).await.unwrap();
        sock.write_all(&buf).await.unwrap();
    });

    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    let client = curfew::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        sock.read_exact(&mut buf).await.unwrap();
        tx.send(String::from_utf8(buf.to_vec()).unwrap())
            .await
            .unwrap();
    });

    let (otx, orx) = tokio::sync::oneshot::channel();
    let relay = curfew::spawn(async move {
        let got = rx.recv().await.unwrap();
        otx.send(got).unwrap();
    });
    let echoed = tokio::time::timeout(Duration::from_secs(20), orx)
        .await
        .expect("round trip in time")
        .unwrap();
    server.await.unwrap();
    client.await.unwrap();
    relay.await.unwrap();
    echoed
}

#[test]
fn under_a_curfew_runtime() {
    let rt = curfew::Runtime::builder().event_threads(2).build().unwrap();
    assert_eq!(rt.block_on(exercise_tokio()), "hello");
    // The same from inside a curfew task rather than block_on.
    let inner = rt.spawn(exercise_tokio());
    assert_eq!(rt.block_on(inner).unwrap(), "hello");
}

#[tokio::test]
async fn from_a_current_thread_tokio_test() {
    assert_eq!(exercise_tokio().await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_multi_thread_tokio_test() {
    let h = curfew::spawn(exercise_tokio());
    assert_eq!(h.await.unwrap(), "hello");
}

#[tokio::test]
async fn spawned_task_is_guarded_in_a_tokio_test() {
    // The default runtime's budget is 100 ms unless the environment says
    // otherwise; spin well past it.
    let h = curfew::task::Builder::new()
        .poll_budget(Duration::from_millis(20))
        .spawn(async { curfew_suite::spin_until_timed_out(Duration::from_secs(20)) });
    let err = h.await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // tokio's own timer still works in the caller meanwhile.
    tokio::time::sleep(Duration::from_millis(1)).await;
}
