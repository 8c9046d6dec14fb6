//! ReadDoS contained: requests that name a FIFO nobody writes to.
//!
//! A handler that reads a client-named path is the paper's ReadDoS vector:
//! the client names a FIFO (or `/dev/zero`, or a huge file) and the read
//! holds a thread for as long as the client likes. This example sends the
//! same 16 poisoned requests and 200 benign ones to two handlers:
//!
//! * tokio: `tokio::fs::read`, under `tokio::time::timeout`, the usual advice.
//!   The caller gets its timeout, but each read stays blocked in `open` on a
//!   blocking-pool thread, and those threads pile up.
//! * curfew: `curfew::fs::read`, which reads on the worker pool in chunks with
//!   checkpoints and waits on FIFOs in short slices. The caller gets a
//!   `TimeoutError` at the job budget, and no thread is left behind.
//!
//! ```text
//! cargo run --release --example readdos
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ATTACKS: usize = 16;
const BENIGN: usize = 200;
const BUDGET: Duration = Duration::from_millis(200);

/// Threads of this process blocked opening a FIFO (waiting for a writer),
/// from /proc; 0 where there is no /proc.
fn threads_stuck_in_fifo_open() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner")
        })
        .count()
}

struct Outcome {
    attacks_answered: usize,
    slowest_attack_answer: Duration,
    benign_ok: usize,
    threads_stuck: usize,
}

async fn run<F, Fut>(read: F, fifo: &Path, page: &Path) -> Outcome
where
    F: Fn(PathBuf) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<u8>>> + Send + 'static,
{
    let start = Instant::now();
    let attacks: Vec<_> = (0..ATTACKS)
        .map(|_| tokio::spawn(read(fifo.to_path_buf())))
        .collect();
    let benign: Vec<_> = (0..BENIGN)
        .map(|_| tokio::spawn(read(page.to_path_buf())))
        .collect();
    let mut benign_ok = 0;
    for b in benign {
        benign_ok += usize::from(matches!(b.await, Ok(Ok(ref d)) if d == b"<h1>hello</h1>"));
    }
    let mut attacks_answered = 0;
    let mut slowest_attack_answer = Duration::ZERO;
    for a in attacks {
        if let Ok(Err(e)) = a.await {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            attacks_answered += 1;
            slowest_attack_answer = slowest_attack_answer.max(start.elapsed());
        }
    }
    // Let threads that are done wind down before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Outcome {
        attacks_answered,
        slowest_attack_answer,
        benign_ok,
        threads_stuck: threads_stuck_in_fifo_open(),
    }
}

/// Opens and closes the FIFO's write end until no reader waits in `open`.
fn release(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..1000 {
        if threads_stuck_in_fifo_open() == 0 {
            return;
        }
        // Non-blocking: fails at once when no reader is waiting.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("curfew-readdos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("upload.fifo");
    let page = dir.join("index.html");
    std::fs::write(&page, "<h1>hello</h1>").unwrap();
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("this example needs `mkfifo` (a Unix system)");
        return;
    }

    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt = curfew::Runtime::builder()
        .event_threads(2)
        .blocking_threads(4)
        .job_budget(BUDGET)
        .tokio_handle(tokio_rt.handle().clone())
        .build()
        .unwrap();
    let handle = rt.handle();

    let tokio_outcome = tokio_rt.block_on(run(
        |p| async move {
            tokio::time::timeout(BUDGET, tokio::fs::read(p))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e)))
        },
        &fifo,
        &page,
    ));
    // Release tokio's stuck readers first, so that they are not counted
    // against curfew: a writer that closes at once gives each blocked
    // `open` its end-of-file.
    release(&fifo);
    let curfew_outcome = tokio_rt.block_on(run(
        move |p| {
            let handle = handle.clone();
            async move { handle.spawn(curfew::fs::read(p)).await? }
        },
        &fifo,
        &page,
    ));

    println!(
        "{ATTACKS} requests read a FIFO nobody writes to, beside {BENIGN} benign reads; \
         budget {BUDGET:?}\n"
    );
    println!(
        "{:<34} {:>16} {:>14} {:>12} {:>20}",
        "handler", "attacks answered", "slowest answer", "benign ok", "threads stuck after"
    );
    for (name, o) in [
        ("tokio::fs::read + tokio timeout", &tokio_outcome),
        ("curfew::fs::read", &curfew_outcome),
    ] {
        println!(
            "{name:<34} {:>16} {:>14.2?} {:>12} {:>20}",
            format!("{}/{ATTACKS}", o.attacks_answered),
            o.slowest_attack_answer,
            format!("{}/{BENIGN}", o.benign_ok),
            o.threads_stuck
        );
    }
    println!("\ncurfew metrics: {:?}", rt.metrics().blocking);

    release(&fifo);
    rt.shutdown_timeout(Duration::from_secs(1));
    tokio_rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
