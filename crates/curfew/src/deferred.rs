//! Log events the watchdog hands to a thread of their own.
//!
//! A `tracing` event is written by the subscriber on the thread that emits
//! it, and a subscriber's writer can block: a full pipe to a log shipper
//! that has stalled, a terminal paused with Ctrl-S. On the watchdog's
//! thread that would stop every timeout in the process while the sink is
//! stuck, and a flood of poisoned requests makes the events that fill it.
//! So the watchdog never emits an event itself: it queues a closure that
//! does ([`defer`]), and one process-wide thread, `curfew-log`, runs them
//! in order. The queue is bounded; when it is full an event is dropped and
//! counted, and the count is logged once the thread catches up. The
//! watchdog's other outside calls already queue and never wait (a shared
//! policy store's strikes, an `OnTimeout` hook's contract).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

/// Events waiting for the log thread at most; past this they are dropped.
pub(crate) const CAPACITY: usize = 4096;

type Job = Box<dyn FnOnce() + Send>;

/// The sending end, and the count of what it could not send.
struct Queue {
    tx: Option<SyncSender<Job>>,
    dropped: AtomicU64,
}

impl Queue {
    fn new(capacity: usize) -> (Queue, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let q = Queue {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        };
        (q, rx)
    }

    /// Queues `job`, or drops and counts it; never blocks.
    fn push(&self, job: Job) {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.try_send(job).is_ok());
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Runs `f` on the log thread, after the events queued before it; drops it
/// (and counts it) if [`CAPACITY`] events are waiting or the thread could
/// not be started. Never blocks on the log sink.
pub(crate) fn defer(f: impl FnOnce() + Send + 'static) {
    QUEUE.get_or_init(start).push(Box::new(f));
}

fn start() -> Queue {
    let (mut q, rx) = Queue::new(CAPACITY);
    let spawned = std::thread::Builder::new()
        .name("curfew-log".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            run(&rx, || {
                QUEUE.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
            });
        });
    if let Err(e) = spawned {
        // Said once, from the caller: there is no other thread to say it.
        eprintln!("curfew: cannot start the log thread ({e}); the watchdog's events are dropped");
        q.tx = None;
    }
    q
}

/// The log thread: runs the queued jobs in order, and whenever it has
/// caught up after some were dropped, says how many. Returns once every
/// sender is gone.
fn run(rx: &Receiver<Job>, dropped: impl Fn() -> u64) {
    let mut reported = 0;
    loop {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(empty) => {
                let now = dropped();
                if now != reported {
                    // A subscriber that panics loses its event, not the
                    // thread.
                    let _ = std::panic::catch_unwind(|| {
                        tracing::warn!(
                            target: "curfew",
                            dropped = now - reported,
                            "log events dropped: the watchdog's events came faster than the \
                             subscriber wrote them"
                        );
                    });
                    reported = now;
                }
                if empty == TryRecvError::Disconnected {
                    return;
                }
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_full_queue_drops_and_counts_and_never_blocks() {
        let (q, rx) = Queue::new(2);
        let ran = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5 {
            let ran = ran.clone();
            q.push(Box::new(move || ran.lock().unwrap().push(i)));
        }
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        // The ones queued run in order once the thread gets to them.
        drop(q);
        run(&rx, || 3);
        assert_eq!(*ran.lock().unwrap(), [0, 1]);
    }

    #[test]
    fn a_panicking_job_does_not_end_the_log_thread() {
        let (q, rx) = Queue::new(4);
        let ran = Arc::new(Mutex::new(Vec::new()));
        q.push(Box::new(|| panic!("a subscriber panicked")));
        let r = ran.clone();
        q.push(Box::new(move || r.lock().unwrap().push("after")));
        drop(q);
        run(&rx, || 0);
        assert_eq!(*ran.lock().unwrap(), ["after"]);
    }

    #[test]
    fn without_a_thread_every_event_is_counted_as_dropped() {
        let (mut q, _rx) = Queue::new(4);
        q.tx = None;
        q.push(Box::new(|| {}));
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
    }
}
