//! Workers' stdout and stderr, relayed line by line to the supervisor's.
//!
//! A worker does not inherit the supervisor's stdout or stderr: it writes
//! to pipes of its own, and a thread per pipe copies whole lines from it to
//! the supervisor's stream of the same name (`tracing_subscriber::fmt()`
//! logs to stdout unless told otherwise). Inherited, a descriptor would be
//! one open file
//! shared by every process, and a write to a file holds locks that every
//! other writer to it waits for (the file's position lock, the inode's
//! lock). A worker thread that stalls inside a write (one the watchdog
//! demoted to the idle class, on a busy machine) would then stall the
//! supervisor's next log line, and with it every decision of its loop. With
//! a pipe per worker, a stalled worker stalls only its own pipe.
//!
//! Lines keep their bytes and their order within a worker; lines of
//! different workers interleave whole. The relay ends when every copy of
//! the pipe's write end is closed: the worker and whatever it started.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which of the supervisor's streams a relay writes to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The relay threads, counted so that the supervisor can let them finish
/// before it returns.
#[derive(Default)]
pub(crate) struct Relays {
    live: Arc<(Mutex<usize>, Condvar)>,
}

impl Relays {
    /// Starts a thread that copies `from` to the supervisor's `to` until
    /// its end.
    pub(crate) fn start(&self, worker: u64, from: OwnedFd, to: Stream) -> std::io::Result<()> {
        let from = std::fs::File::from(from);
        let live = self.live.clone();
        *live.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let spawned = std::thread::Builder::new()
            .name(format!("curfew-relay-{worker}"))
            .spawn(move || {
                match to {
                    Stream::Stdout => copy_lines(from, &mut std::io::stdout()),
                    Stream::Stderr => copy_lines(from, &mut std::io::stderr()),
                }
                let (n, ended) = &*live;
                *n.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                ended.notify_all();
            });
        if let Err(e) = spawned {
            *self.live.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// Waits up to `limit` for every relay to reach its end (the workers
    /// have exited), so that their last lines are out. Returns how many are
    /// still running (a worker's child may hold a pipe open).
    pub(crate) fn finish(&self, limit: Duration) -> usize {
        let until = Instant::now() + limit;
        let (n, ended) = &*self.live;
        let mut live = n.lock().unwrap_or_else(|e| e.into_inner());
        while *live > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            live = ended
                .wait_timeout(live, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *live
    }
}

/// Copies whole lines from `from` to `to` until the end of `from` (a last
/// line without its newline included), each line in one write. Stops at a
/// read error; a write error drops the line (the supervisor's stream is
/// gone) but keeps reading, so the worker never blocks on a full pipe.
fn copy_lines(from: impl std::io::Read, to: &mut impl Write) {
    let mut from = BufReader::with_capacity(16 * 1024, from);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let _ = to.write_all(&line);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_whole_and_in_order_and_a_last_partial_line_is_kept() {
        let input: &[u8] = b"one\ntwo two\n\nthree without a newline";
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Writes(Vec::new());
        copy_lines(input, &mut out);
        let got: Vec<&[u8]> = out.0.iter().map(Vec::as_slice).collect();
        assert_eq!(
            got,
            [
                &b"one\n"[..],
                b"two two\n",
                b"\n",
                b"three without a newline"
            ],
            "one write per line"
        );
    }

    #[test]
    fn finish_waits_for_the_writers_to_close_and_no_longer() {
        let relays = Relays::default();
        let (r, w) = crate::sys::pipe().expect("pipe");
        relays.start(1, r, Stream::Stderr).expect("relay thread");
        assert_eq!(
            relays.finish(Duration::from_millis(50)),
            1,
            "the write end is open"
        );
        drop(w);
        assert_eq!(
            relays.finish(Duration::from_secs(10)),
            0,
            "ended once it closed"
        );
    }
}
