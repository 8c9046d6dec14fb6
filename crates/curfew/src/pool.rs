//! The worker pool: blocking jobs under a budget.
//!
//! [`spawn_blocking`](crate::spawn_blocking) sends a closure to a fixed pool
//! of threads (Node's worker pool; 4 threads by default, as in Node). Each
//! job runs under the job budget, which the watchdog enforces exactly as it
//! enforces the poll budget on event threads: past the budget the job's
//! [`JoinHandle`] resolves with a [`TimeoutError`](crate::TimeoutError) while
//! the job is still running, and after the hijack grace the thread is
//! abandoned and a replacement starts. A job's budget counts from its spawn,
//! so time spent waiting in the queue counts: a job that is still queued
//! when its budget runs out, with no pool thread free to run it, is answered
//! with a queue timeout ([`JoinError::is_queue_timeout`](crate::JoinError::is_queue_timeout))
//! and never runs. The queue in front of the pool is
//! bounded ([`Builder::max_blocking_queue`](crate::Builder::max_blocking_queue));
//! a job past the bound is refused at once with
//! [`JoinError::is_refused`](crate::JoinError::is_refused), never queued
//! without limit.
//!
//! # The dangling-worker problem
//!
//! Rust cannot stop a thread in the middle of a job. An abandoned job keeps
//! running until it returns on its own, *after* its caller has been told it
//! timed out. If the job writes to shared state (a `Mutex`-guarded cache, a
//! file, a database connection), that write may land after the caller has
//! moved on, retried, or answered its client. Node.cure met the same problem
//! and patched it API by API; curfew states it as a rule instead.
//!
//! What curfew guarantees:
//!
//! * the caller gets the timeout on time, and a late result is dropped,
//!   never delivered;
//! * abandoned threads are capped
//!   ([`Builder::max_abandoned_threads`](crate::Builder::max_abandoned_threads)),
//!   and each exits as soon as its job returns;
//! * a job that calls [`checkpoint`](crate::checkpoint) can notice it is
//!   over budget and stop early, within the grace, so its thread is not
//!   abandoned at all.
//!
//! How to write jobs that stay safe:
//!
//! * **Move owned data in and out.** Give the job its input by value and take
//!   its output from the handle. A timed-out job's output is simply
//!   dropped; no one else can observe it.
//! * **Publish only through the handle.** Don't let a job write into shared
//!   structures; apply its result in the async caller, after `.await`
//!   returned `Ok`.
//! * **Make side effects idempotent** when a job must have them (a temp file
//!   renamed into place, a keyed upsert), so a late write is harmless.
//! * **Call [`checkpoint`](crate::checkpoint)** between chunks of work.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let rt = curfew::Runtime::builder()
//!     .event_threads(1)
//!     .blocking_threads(2)
//!     .job_budget(Duration::from_secs(1))
//!     .build()?;
//! // Owned data in, owned data out.
//! let input: Vec<u64> = (0..100_000).collect();
//! let sum = rt.block_on(rt.spawn_blocking(move || input.iter().sum::<u64>()))?;
//! assert_eq!(sum, 4_999_950_000);
//!
//! // A job stuck past its budget is answered with a timeout, on time.
//! let stuck = rt.spawn_blocking(|| std::thread::sleep(Duration::from_secs(5)));
//! assert!(rt.block_on(stuck).unwrap_err().is_timeout());
//! # rt.shutdown_timeout(Duration::from_millis(10));
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;

use crate::error::Refusal;
use crate::executor::GroupId;
use crate::runtime::Handle;
use crate::task::{self, JoinHandle};

impl Handle {
    pub(crate) fn spawn_blocking_with<F, R>(&self, opts: task::Builder, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let shared = &self.shared;
        let group = &shared.blocking;
        // Reserve a place in the queue first: a load then an increment
        // would let concurrent spawners past the bound. The place is given
        // back when a pool thread takes the job (`WorkerCtx::find_task`).
        let reserved = group
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < group.capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return shared.refuse(Refusal::QueueFull {
                capacity: group.capacity,
            });
        }
        let header = match shared.header(opts, GroupId::Blocking) {
            Ok(h) => h,
            Err(r) => {
                group.queued.fetch_sub(1, Ordering::AcqRel);
                return shared.refuse(r);
            }
        };
        // The job's budget counts from now, queueing included.
        let spawned = shared.epoch.elapsed().as_nanos() as u64;
        header.queued.store(spawned, Ordering::Relaxed);
        let sched = shared.clone();
        let schedule = move |r| sched.schedule_blocking(r);
        group.spawned.fetch_add(1, Ordering::Relaxed);
        let job = async move { f() };
        task::spawn_raw(header, job, schedule, None, |r| shared.schedule_blocking(r))
    }
}
