//! The supervisor with real processes and real sockets: the crate's demo
//! binary runs as the supervisor and, re-executed, as its workers, on a
//! free port of 127.0.0.1. Every wait is bounded.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_curfew-supervisor-demo");

/// A generous bound for anything the tests wait for, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

struct Sup {
    child: Child,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn capture(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
}

impl Sup {
    fn start(args: &[&str]) -> Sup {
        let mut child = Command::new(DEMO)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "curfew_supervisor=debug,curfew=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo supervisor");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().unwrap(), stdout.clone());
        capture(child.stderr.take().unwrap(), stderr.clone());
        let mut sup = Sup {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            stdout,
            stderr,
        };
        let line = sup.wait_for(|s| {
            s.stdout()
                .lines()
                .find_map(|l| l.strip_prefix("listening on ").map(str::to_owned))
        });
        sup.addr = line.parse().unwrap();
        // Wait until a worker serves.
        sup.wait_for(|s| get(s.addr, "/pid").ok().filter(|(st, _)| *st == 200));
        sup
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls `f` until it gives a value, for at most [`PATIENCE`].
    #[track_caller]
    fn wait_for<T>(&self, mut f: impl FnMut(&Self) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "gave up waiting after {PATIENCE:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker processes alive now.
    fn workers(&self) -> Vec<u32> {
        children(self.pid())
    }

    /// The pid of the worker that answers.
    fn serving_pid(&self) -> u32 {
        let (status, body) = get(self.addr, "/pid").expect("GET /pid");
        assert_eq!(status, 200, "{body}");
        body.trim().parse().unwrap()
    }

    /// Makes the serving worker exit in the middle of a request (which
    /// fails), and waits until another worker answers.
    fn exit_serving_worker(&self) {
        let first = self.serving_pid();
        assert!(get(self.addr, "/exit").is_err());
        self.wait_for(|s| {
            get(s.addr, "/pid")
                .ok()
                .filter(|(st, b)| *st == 200 && b.trim() != first.to_string())
        });
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory effects; the child is ours and not
        // yet waited for.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }

    /// Waits for the supervisor to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the capture threads read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            assert!(
                start.elapsed() < PATIENCE,
                "supervisor did not exit\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        // The workers die with it (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live (not zombie) child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                s.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.retain(|&p| alive(p));
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `pid` is a running process (a zombie holds no socket and burns
/// no CPU).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_ascii_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// CPU time (user + system) of process `pid`, all threads, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = s.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// Cores used by the supervisor and its workers over `window`.
fn tree_cpu(sup: u32, window: Duration) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let tree = || {
        let mut pids = children(sup);
        pids.push(sup);
        pids
    };
    let before: Vec<(u32, u64)> = tree().into_iter().map(|p| (p, cpu_ticks(p))).collect();
    std::thread::sleep(window);
    let mut used = 0u64;
    for p in tree() {
        let then = before.iter().find(|(q, _)| *q == p).map_or(0, |(_, t)| *t);
        used += cpu_ticks(p).saturating_sub(then);
    }
    used as f64 / hz / window.as_secs_f64()
}

/// One HTTP/1.1 request on a fresh connection; `(status, body)`.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {buf:?}")))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Starts a request that sleeps `ms` in its handler, on a thread of its
/// own, and returns once a worker has logged its start (the handler is
/// running).
fn slow_request(sup: &Sup, ms: u64) -> std::thread::JoinHandle<std::io::Result<(u16, String)>> {
    const STARTED: &str = "slow request started";
    let before = sup.stderr().matches(STARTED).count();
    let addr = sup.addr;
    let slow = std::thread::spawn(move || get(addr, &format!("/sleep?ms={ms}")));
    sup.wait_for(|s| (s.stderr().matches(STARTED).count() > before).then_some(()));
    slow
}

fn summary(sup: &Sup, key: &str) -> u64 {
    let out = sup.stdout();
    let line = out
        .lines()
        .find(|l| l.starts_with("stopped:"))
        .unwrap_or_else(|| panic!("no summary in {out:?}"));
    line.split_ascii_whitespace()
        .find_map(|kv| {
            kv.strip_prefix(&format!("{key}="))
                .map(|v| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn a_spinning_worker_is_recycled_and_the_cpu_falls_back_to_idle() {
    let mut sup = Sup::start(&[]);
    let first = sup.serving_pid();
    let (status, body) = get(sup.addr, "/spin").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("timed out"), "{body}");
    // The poisoned worker is replaced, drained and gone.
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    let next = sup.serving_pid();
    assert_ne!(next, first);
    // Its spinning thread went with it: the whole tree is idle again.
    let cores = tree_cpu(sup.pid(), Duration::from_secs(1));
    assert!(
        cores < 0.3,
        "process tree still uses {cores:.2} cores\n{}",
        sup.stderr()
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 1);
    assert_eq!(summary(&sup, "killed_while_draining"), 0);
    assert_eq!(summary(&sup, "restarts"), 0);
    let log = sup.stderr();
    for event in [
        "worker poisoned; recycling",
        "worker draining",
        "drained worker exited",
    ] {
        assert!(log.contains(event), "no `{event}` event in\n{log}");
    }
}

#[test]
fn the_cpu_rule_alone_recycles_a_spinning_worker() {
    // Not by count: only because its written-off thread burns a core.
    let mut sup = Sup::start(&["--written-off", "0", "--cpu-share", "0.5"]);
    let first = sup.serving_pid();
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 1);
    assert!(sup.stderr().contains("of a core"), "{}", sup.stderr());
}

#[test]
fn without_recycling_the_spinning_thread_keeps_its_core() {
    // The control for the test above and the first one: with both rules
    // off the worker stays, and so does the CPU its thread burns.
    let sup = Sup::start(&["--written-off", "0", "--cpu-share", "off"]);
    let first = sup.serving_pid();
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    // Its thread keeps burning CPU, however loaded the machine is: the
    // worker goes on accumulating CPU time (a whole second of it, within
    // the patience), and stays.
    let start = cpu_ticks(first);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    sup.wait_for(|_| (cpu_ticks(first) >= start + hz).then_some(()));
    assert_eq!(sup.serving_pid(), first);
    assert!(sup.workers().contains(&first));
}

/// A keep-alive client as a browser or a proxy is: one connection reused
/// while the server keeps it open, a new one when the server answers
/// `Connection: close` or closed it before the next request. Any failure
/// counts; nothing is retried.
async fn keep_alive_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    use http_body_util::{BodyExt, Empty};
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let stream = match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    errors.lock().unwrap().push(format!("connect: {e}"));
                    continue;
                }
            };
            let (send, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(driver);
            conn = Some(send);
        }
        let send = conn.as_mut().unwrap();
        if send.ready().await.is_err() {
            // Closed by the server while idle, before we sent anything:
            // open a new connection (nothing was lost).
            conn = None;
            continue;
        }
        let req = hyper::Request::get("/hello")
            .header("host", "test")
            .body(Empty::new())
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), send.send_request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                let close = resp
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close");
                let _ = resp.into_body().collect().await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.lock().unwrap().push(format!("status {status}"));
                }
                if close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                errors.lock().unwrap().push(format!("request: {e}"));
                conn = None;
            }
            Err(_) => {
                errors.lock().unwrap().push("no answer in 10 s".into());
                conn = None;
            }
        }
    }
}

#[test]
fn clients_see_no_error_during_a_recycle() {
    let sup = Sup::start(&["--processes", "1"]);
    let first = sup.serving_pid();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    // Two keep-alive clients in a loop.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            rt.spawn(keep_alive_loop(
                sup.addr,
                stop.clone(),
                ok.clone(),
                errors.clone(),
            ))
        })
        .collect();
    // A client that opens a new connection for every request.
    let fresh = {
        let (addr, stop, ok, errors) = (sup.addr, stop.clone(), ok.clone(), errors.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get(addr, "/hello") {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((st, body)) => errors.lock().unwrap().push(format!("status {st}: {body}")),
                    Err(e) => errors
                        .lock()
                        .unwrap()
                        .push(format!("fresh connection: {e}")),
                }
            }
        })
    };
    // A slow benign request in flight in the worker about to be poisoned.
    let slow = slow_request(&sup, 1500);
    let before = ok.load(Ordering::Relaxed);
    let (status, _) = get(sup.addr, "/spin").unwrap();
    assert_eq!(status, 503);
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    // Keep going for a while on the new worker.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        rt.block_on(l).unwrap();
    }
    fresh.join().unwrap();
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the slow request in flight during the drain");
    assert_eq!(status, 200, "{body}");
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed requests: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(10)],
        sup.stderr()
    );
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "no request served after the recycle began"
    );
    assert_ne!(sup.serving_pid(), first);
}

#[test]
fn sigterm_drains_the_workers_and_exits() {
    let mut sup = Sup::start(&[]);
    let workers = sup.workers();
    assert_eq!(workers.len(), 2, "one worker and one warm spare");
    let slow = slow_request(&sup, 1000);
    sup.signal(libc::SIGTERM);
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the request in flight at SIGTERM");
    assert_eq!(status, 200, "{body}");
    assert_eq!(sup.wait_exit(), Some(0));
    for w in workers {
        assert!(!alive(w), "worker {w} outlived the supervisor");
    }
    assert_eq!(summary(&sup, "killed_while_draining"), 0);
    assert!(sup.stderr().contains("draining every worker"));
    // The port is free again.
    std::net::TcpListener::bind(sup.addr).expect("port released");
}

#[test]
fn workers_write_to_pipes_of_their_own_relayed_to_the_supervisors_output() {
    let mut sup = Sup::start(&[]);
    let serving = sup.serving_pid();
    let spare = sup.wait_for(|s| s.workers().into_iter().find(|&w| w != serving));
    for fd in [1, 2] {
        let link = |pid: u32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("read fd");
        let (ours, a, b) = (link(sup.pid()), link(serving), link(spare));
        assert!(
            a.to_string_lossy().starts_with("pipe:"),
            "worker's fd {fd}: {a:?}"
        );
        assert!(
            b.to_string_lossy().starts_with("pipe:"),
            "spare's fd {fd}: {b:?}"
        );
        assert!(
            ours != a && ours != b && a != b,
            "fd {fd} shared: {ours:?} {a:?} {b:?}"
        );
    }
    // A worker's own line (not the supervisor's "worker serving") arrives
    // whole, and its last line is out before the supervisor exits. Either
    // worker may have been ready first and serve: its id is in its line.
    let id = sup.wait_for(|s| {
        s.stderr().lines().find_map(|l| {
            let rest = l.split("curfew_supervisor: serving worker=").nth(1)?;
            let (id, pid) = rest.split_once(" pid=")?;
            (pid == serving.to_string()).then(|| id.parse::<u64>().unwrap())
        })
    });
    let spare_id = 3 - id; // workers 1 and 2
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    let log = sup.stderr();
    let stopped = log.find("supervisor stopped");
    for last in [
        format!("drained; exiting worker={id}\n"),
        format!("spare retired before serving; exiting worker={spare_id}\n"),
    ] {
        let at = log.find(&last);
        assert!(
            at.is_some() && at < stopped,
            "{last:?} before the end:\n{log}"
        );
    }
}

#[test]
fn killing_the_supervisor_leaves_no_worker_behind() {
    let mut sup = Sup::start(&["--processes", "2"]);
    let workers = sup.wait_for(|s| {
        let w = s.workers();
        (w.len() == 3).then_some(w)
    });
    sup.signal(libc::SIGKILL);
    let _ = sup.wait_exit();
    let start = Instant::now();
    while workers.iter().any(|&w| alive(w)) {
        assert!(
            start.elapsed() < PATIENCE,
            "workers left behind: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::net::TcpListener::bind(sup.addr).expect("no orphan keeps the port");
}

#[test]
fn a_worker_that_dies_is_replaced_and_counted() {
    let mut sup = Sup::start(&[]);
    // The worker exits in the middle of the request: that one is lost.
    sup.exit_serving_worker();
    // A new spare is started after the backoff.
    sup.wait_for(|s| (s.workers().len() == 2).then_some(()));
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "restarts"), 1);
    assert!(sup.stderr().contains("worker died; restarting"));
}

/// The supervisor's threads named `name`, with their nice values.
fn threads_named(pid: u32, name: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Field 19 (nice), counted after the `)` that ends the name.
        let nice: Option<i64> = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(16))
            .and_then(|n| n.parse().ok());
        if comm.trim() == name {
            out.extend(nice);
        }
    }
    out
}

#[test]
fn workers_are_reaped_by_threads_at_the_lowest_priority() {
    let mut sup = Sup::start(&[]);
    // A worker and its warm spare: a reaping thread each, at nice 19 (a
    // slow reap spins in the kernel, and must not take a core from the
    // workers).
    let nices = sup.wait_for(|s| {
        let n = threads_named(s.pid(), "supervisor-reap");
        (n.len() == 2 && n.iter().all(|&x| x == 19)).then_some(n)
    });
    assert_eq!(nices, [19, 19]);
    // A dead worker's reaping thread ends with it; its replacement's starts.
    sup.exit_serving_worker();
    sup.wait_for(|s| {
        (s.workers().len() == 2 && threads_named(s.pid(), "supervisor-reap").len() == 2)
            .then_some(())
    });
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
}

#[test]
fn a_worker_past_its_memory_limit_is_recycled() {
    let mut sup = Sup::start(&["--rss-limit-mb", "64"]);
    let first = sup.serving_pid();
    let (status, _) = get(sup.addr, "/alloc?mb=96").unwrap();
    assert_eq!(status, 200);
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    assert_ne!(sup.serving_pid(), first);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 1);
    assert!(sup.stderr().contains("resident memory"), "{}", sup.stderr());
}

/// Resident memory of `pid` in bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_ascii_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

#[test]
fn a_read_of_dev_zero_is_contained_by_the_memory_limit() {
    // Only the memory rule: the worker is recycled past 64 MiB while the
    // read is still within its job budget, and killed at twice that while
    // it drains (the allocating request is the one in flight).
    let mut sup = Sup::start(&[
        "--written-off",
        "0",
        "--cpu-share",
        "off",
        "--rss-limit-mb",
        "64",
    ]);
    let first = sup.serving_pid();
    let zero = {
        let addr = sup.addr;
        std::thread::spawn(move || get(addr, "/zero"))
    };
    let mut peak = 0;
    sup.wait_for(|s| {
        peak = peak.max(rss(first));
        (!s.workers().contains(&first)).then_some(())
    });
    // Up to 2 GiB without the limit; sampled every 20 ms here, so allow
    // for what a fast machine allocates between two samples.
    assert!(peak < 768 << 20, "the worker reached {} MiB", peak >> 20);
    let _ = zero.join().unwrap();
    assert_ne!(sup.serving_pid(), first);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 1);
    let log = sup.stderr();
    assert!(log.contains("resident memory"), "{log}");
}

#[test]
fn a_draining_worker_is_killed_at_the_drain_deadline() {
    let mut sup = Sup::start(&["--drain-deadline-ms", "500"]);
    let first = sup.serving_pid();
    // Longer than the drain deadline: lost with the worker, and counted.
    let slow = slow_request(&sup, 20000);
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    assert!(
        slow.join().unwrap().is_err(),
        "the request past the deadline cannot have been answered"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 1);
    assert_eq!(summary(&sup, "killed_while_draining"), 1);
    // The kill's log line says what the worker's threads were doing: the
    // spinning one among them, running.
    let log = sup.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("drain deadline passed; worker killed"))
        .expect("the kill is logged");
    assert!(
        line.contains(" threads (") && line.contains(" R "),
        "{line}"
    );
}

fn bad_config(args: &[&str]) -> String {
    let out = Command::new(DEMO)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let e = bad_config(&["--addr", "127.0.0.1:0", "--processes", "0"]);
    assert!(e.contains("`processes`") && e.contains("at least 1"), "{e}");
    let e = bad_config(&["--addr", "127.0.0.1:0", "--drain-deadline-ms", "0"]);
    assert!(e.contains("`drain_deadline`"), "{e}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let e = bad_config(&["--addr", &addr]);
    assert!(e.contains(&format!("cannot listen on {addr}")), "{e}");
    assert!(e.contains("in use"), "{e}");
}

/// A poisoned worker that waits for the cap on draining workers is replaced
/// at once by the spare; when the cap frees and it drains, no second spare
/// is activated for it: one worker serves, as configured.
#[test]
fn a_worker_waiting_for_the_drain_cap_is_replaced_once() {
    let mut sup = Sup::start(&["--drain-deadline-ms", "20000", "--max-draining", "1"]);
    let ready = |s: &Sup, n: usize| (s.stderr().matches("worker ready").count() >= n).then_some(());
    let first = sup.serving_pid();
    // Keeps the first worker draining for a while once it is recycled.
    let slow = slow_request(&sup, 3000);
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    let second = sup.wait_for(|s| Some(s.serving_pid()).filter(|&p| p != first));
    // A new spare is ready: the first worker, the second, and it.
    sup.wait_for(|s| ready(s, 3));
    // The second worker is poisoned while the first still drains (the cap
    // is one draining worker): the spare serves in its place meanwhile.
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    let third = sup.wait_for(|s| Some(s.serving_pid()).filter(|&p| p != second && p != first));
    assert_eq!(
        slow.join().unwrap().unwrap().0,
        200,
        "the first worker's request"
    );
    sup.wait_for(|s| (!s.workers().contains(&second)).then_some(()));
    // The next spare was ready before the cap freed.
    sup.wait_for(|s| ready(s, 4));
    for _ in 0..20 {
        assert_eq!(sup.serving_pid(), third, "only one worker serves");
    }
    let log = sup.stderr();
    assert_eq!(
        log.matches("worker serving").count(),
        3,
        "activated: the first worker and two replacements\n{log}"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 2);
}

/// With one process the cap on draining workers is 2 by default, so a
/// drain that does not end (here a request still in flight) does not hold
/// back the next recycle: the second poisoned worker drains, and goes,
/// while the first is still draining.
#[test]
fn a_drain_that_does_not_end_does_not_hold_back_the_next_recycle() {
    let mut sup = Sup::start(&["--drain-deadline-ms", "20000"]);
    let first = sup.serving_pid();
    // Keeps the first worker draining through the rest of the test.
    let slow = slow_request(&sup, 8000);
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    let second = sup.wait_for(|s| Some(s.serving_pid()).filter(|&p| p != first));
    assert_eq!(get(sup.addr, "/spin").unwrap().0, 503);
    // Nothing in flight: the second worker goes at once.
    sup.wait_for(|s| (!s.workers().contains(&second)).then_some(()));
    assert!(
        sup.workers().contains(&first) && !slow.is_finished(),
        "the second recycle waited for the first drain to end\n{}",
        sup.stderr()
    );
    assert_eq!(
        slow.join().unwrap().unwrap().0,
        200,
        "the first worker's request"
    );
    sup.wait_for(|s| (!s.workers().contains(&first)).then_some(()));
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(), Some(0));
    assert_eq!(summary(&sup, "recycled"), 2);
    assert_eq!(summary(&sup, "killed_while_draining"), 0);
}
