//! A throw-away `redis-server` for tests, examples and benchmarks: on a
//! free port of 127.0.0.1, in a temporary directory, with no persistence,
//! killed when dropped.
//!
//! ```no_run
//! let server = curfew_redis::testing::RedisServer::start();
//! let store = curfew_redis::RedisStore::builder(server.url()).build().unwrap();
//! # drop(store);
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    password: Option<String>,
}

fn free_port_io() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH` (with a message saying how to
    /// install it) or does not answer within 20 s: a test that needs Redis
    /// fails rather than skips.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that requires `password`.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    /// Starts a server and waits until it answers, or says why it could
    /// not: for a caller that goes on without Redis (the lab's study skips
    /// its multi-instance phase) rather than fail.
    ///
    /// # Errors
    ///
    /// If `redis-server` cannot be started (not installed: the message says
    /// how to install it), or does not answer within 20 s.
    pub fn try_start() -> std::io::Result<Self> {
        Self::try_start_with(None)
    }

    fn start_with(password: Option<String>) -> Self {
        Self::try_start_with(password).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(password: Option<String>) -> std::io::Result<Self> {
        let port = free_port_io()?;
        let dir = std::env::temp_dir().join(format!("curfew-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            password,
        };
        server.try_spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot start redis-server ({e}): a real Redis is needed here. \
                     Install it (Debian: apt-get install redis-server) and put redis-server on PATH."
                ),
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            if Instant::now() >= deadline {
                self.kill();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer on 127.0.0.1:{} within 20 s",
                        self.port
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL, with its password if it has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
