//! Log events the watchdog hands to a thread of their own.
//!
//! A `tracing` event is written by the subscriber on the thread that emits
//! it, and a subscriber's writer can block: a full pipe to a log shipper
//! that has stalled, a terminal paused with Ctrl-S. On the watchdog's
//! thread that would stop every timeout in the process while the sink is
//! stuck, and a flood of poisoned requests makes the events that fill it.
//! So the watchdog never emits an event itself: it queues a closure that
//! does ([`emit`]), and one process-wide thread, `curfew-log`, runs them in
//! order. On any other thread [`emit`] runs the closure at once, with that
//! thread's span and subscriber.
//!
//! The queue is bounded; when it is full an event is dropped and counted,
//! and the count is logged once the thread catches up. The thread is
//! started by [`start`], from the thread that builds a runtime (so that it
//! takes that thread's scheduling settings, not the watchdog's short slice
//! or an idle-class thread's); a runtime's shutdown waits a little for it
//! to write what its watchdog queued ([`flush`]).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

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

thread_local! {
    /// Set on a watchdog's thread: its events are queued, never emitted.
    static ON_WATCHDOG: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a watchdog's: from now on [`emit`] queues
/// its events.
pub(crate) fn mark_watchdog_thread() {
    ON_WATCHDOG.with(|w| w.set(true));
}

/// Emits an event: on a watchdog's thread, by queueing `f` for the log
/// thread (dropped and counted if [`CAPACITY`] events are waiting);
/// anywhere else, by running `f` now. Never blocks a watchdog on the log
/// sink.
pub(crate) fn emit(f: impl FnOnce() + Send + 'static) {
    if ON_WATCHDOG.with(Cell::get) {
        queue().push(Box::new(f));
    } else {
        f();
    }
}

/// Starts the log thread if it is not running yet. Called where a runtime
/// is built, before its watchdog starts.
pub(crate) fn start() {
    queue();
}

fn queue() -> &'static Queue {
    QUEUE.get_or_init(|| {
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
            // Said once, by the thread building a runtime.
            eprintln!(
                "curfew: cannot start the log thread ({e}); the watchdog's events are dropped"
            );
            q.tx = None;
        }
        q
    })
}

/// Waits up to `bound` for the log thread to run what was queued before
/// this call. True if it did.
pub(crate) fn flush(bound: Duration) -> bool {
    let Some(q) = QUEUE.get() else {
        return true;
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let Some(sender) = &q.tx else {
        return false;
    };
    // A marker after everything queued so far; a full queue is not waited
    // for (the marker would be dropped).
    if sender
        .try_send(Box::new(move || {
            let _ = tx.send(());
        }))
        .is_err()
    {
        return false;
    }
    rx.recv_timeout(bound).is_ok()
}

/// How often at most the log thread reports drops, and how soon after it
/// has caught up it reports the last ones.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long the idle log thread sleeps before it looks at the drop count
/// unprompted.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// The log thread: runs the queued jobs in order, and says how many were
/// dropped, at most once a [`DROP_REPORT_EVERY`]. Returns once every sender
/// is gone.
fn run(rx: &Receiver<Job>, dropped: impl Fn() -> u64) {
    let mut reported = 0;
    let mut last_report: Option<std::time::Instant> = None;
    loop {
        // With a drop still to report, wake within the period to report
        // it. Otherwise wait long: drops happen while the queue is full,
        // when this thread is busy and looks at the count after each job,
        // but a sender preempted between its failed send and its count
        // can make one after the queue has drained; an idle process wakes
        // this thread once a minute for that.
        let wait = if dropped() == reported {
            IDLE_WAIT
        } else {
            DROP_REPORT_EVERY
        };
        let next = rx.recv_timeout(wait);
        let gone = matches!(next, Err(RecvTimeoutError::Disconnected));
        if let Ok(job) = next {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
        let now = dropped();
        let due = last_report.is_none_or(|t| t.elapsed() >= DROP_REPORT_EVERY);
        if now != reported && (due || gone) {
            // A subscriber that panics loses its event, not the thread.
            let _ = std::panic::catch_unwind(|| {
                tracing::warn!(
                    target: "curfew",
                    dropped = now - reported,
                    "log events dropped: the watchdog's events came faster than the subscriber \
                     wrote them"
                );
            });
            reported = now;
            last_report = Some(std::time::Instant::now());
        }
        if gone {
            return;
        }
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

    #[test]
    fn off_the_watchdog_an_event_is_emitted_at_once_and_on_it_queued() {
        // This test's thread is no watchdog's: run in place.
        let ran = Arc::new(Mutex::new(0));
        let r = ran.clone();
        emit(move || *r.lock().unwrap() += 1);
        assert_eq!(*ran.lock().unwrap(), 1);
        // A thread marked as a watchdog's queues it for the log thread.
        let r = ran.clone();
        std::thread::spawn(move || {
            mark_watchdog_thread();
            emit(move || *r.lock().unwrap() += 1);
        })
        .join()
        .unwrap();
        assert!(
            flush(Duration::from_secs(20)),
            "the log thread ran the queue"
        );
        assert_eq!(*ran.lock().unwrap(), 2);
    }
}
