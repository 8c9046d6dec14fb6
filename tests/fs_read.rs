//! `curfew::fs::read`: normal files read correctly; an endless file or a
//! FIFO that never gets data ends in a timeout, and the pool thread is handed
//! back rather than abandoned.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

fn runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .job_budget(Duration::from_millis(50))
        // Long enough that only a cooperative read keeps its thread.
        .hijack_grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A runtime whose job budget is far from the point, for reads (and
/// refusals, which are jobs too) that must succeed: a loaded machine can
/// keep the pool's thread from picking a job up for a while.
fn roomy_runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .job_budget(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("curfew-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn make_fifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn assert_timed_out(err: std::io::Error) {
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<curfew::TimeoutError>());
    let t = inner.expect("the TimeoutError inside");
    assert_eq!(t.location(), curfew::Location::WorkerPool);
    assert_eq!(t.budget(), Duration::from_millis(50));
}

#[test]
fn normal_files_read_correctly() {
    let rt = roomy_runtime();
    let dir = temp_dir("fs-normal");
    // Several chunks and a ragged end.
    let data: Vec<u8> = (0..(3 * 65536 + 123))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(dir.join("big"), &data).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    rt.block_on(async {
        assert_eq!(curfew::fs::read(dir.join("big")).await.unwrap(), data);
        assert!(
            curfew::fs::read(dir.join("empty"))
                .await
                .unwrap()
                .is_empty()
        );
        let err = curfew::fs::read(dir.join("missing")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = curfew::fs::read_limited(dir.join("big"), 1000)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FileTooLarge);
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn endless_file_times_out_and_keeps_the_thread() {
    let rt = runtime();
    let err = rt.block_on(curfew::fs::read("/dev/zero")).unwrap_err();
    assert_timed_out(err);
    let m = rt.metrics().blocking;
    assert_eq!(
        m.hijacked_total, 0,
        "the chunked read gave its thread back: {m:?}"
    );
    assert_eq!(m.timeouts, 1);
}

#[cfg(unix)]
#[test]
fn fifo_without_data_times_out_and_keeps_the_thread() {
    let rt = runtime();
    let dir = temp_dir("fs-fifo");
    let fifo = dir.join("never");
    make_fifo(&fifo);
    // Twice as many reads as pool threads: none may be left stuck.
    let reads: Vec<_> = (0..4)
        .map(|_| rt.spawn(curfew::fs::read(fifo.clone())))
        .collect();
    for r in reads {
        assert_timed_out(rt.block_on(r).unwrap().unwrap_err());
    }
    let m = rt.metrics().blocking;
    assert_eq!(m.hijacked_total, 0, "{m:?}");
    assert_eq!(m.healthy_threads, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(unix)]
#[test]
fn fifo_with_a_writer_reads_what_was_written() {
    // Not a timeout test: a budget that a loaded machine's scheduling of the
    // writer thread (and of the pool thread, since a job's budget counts
    // from its spawn) cannot use up.
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .job_budget(Duration::from_secs(10))
        .build()
        .unwrap();
    let dir = temp_dir("fs-fifo-data");
    let fifo = dir.join("pipe");
    make_fifo(&fifo);
    let reader = rt.spawn(curfew::fs::read(fifo.clone()));
    // Open the write end (blocks until the reader has opened), write, close.
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::write(&fifo, b"through the pipe").unwrap()
    });
    let got = rt.block_on(reader).unwrap().unwrap();
    writer.join().unwrap();
    assert_eq!(got, b"through the pipe");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A sparse file that claims a terabyte: the read must not reserve what the
/// file claims (that aborted the process with "memory allocation of
/// 1099511627776 bytes failed"); it grows with what arrives and ends in a
/// timeout at the job budget.
#[test]
fn a_huge_sparse_file_times_out_without_reserving_its_size() {
    let budget = Duration::from_millis(20);
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .job_budget(budget)
        .hijack_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    let dir = temp_dir("fs-sparse");
    let path = dir.join("terabyte");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let timed_out = |err: std::io::Error| {
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        let t = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<curfew::TimeoutError>())
            .expect("the TimeoutError inside");
        assert_eq!(t.budget(), budget);
    };
    // A limit below the file's size is refused before anything is read. On
    // a roomy runtime: the refusal is still a job, and within 20 ms it could
    // meet a queue timeout instead.
    let err = roomy_runtime()
        .block_on(curfew::fs::read_limited(&path, 1 << 20))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FileTooLarge, "{err}");
    rt.block_on(async {
        timed_out(curfew::fs::read(&path).await.unwrap_err());
        // A limit above the file's size does not make its size trusted.
        timed_out(
            curfew::fs::read_limited(&path, usize::MAX / 2)
                .await
                .unwrap_err(),
        );
    });
    assert_eq!(rt.metrics().blocking.hijacked_total, 0);
    std::fs::remove_dir_all(dir).unwrap();
}
