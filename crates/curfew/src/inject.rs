//! The injector: a group's FIFO of tasks queued from outside its threads
//! (spawns from `block_on` and from other runtimes, wakes from I/O and
//! timers on foreign threads, tasks handed back by an exiting thread or the
//! watchdog).
//!
//! The queue is a list linked through the tasks' own headers
//! ([`Header::queue_next`]), under a mutex, as tokio's inject queue is, so
//! queuing a task allocates nothing. A queue of blocks (crossbeam's
//! `Injector`) allocates a block per 63 tasks on the thread that queues and
//! frees it on the thread that takes the last task out. With glibc's
//! allocator every one of those frees goes back to the queuing thread's
//! arena under that arena's lock, which the queuing thread takes for each of
//! its own allocations (the tasks themselves): a burst of spawns from
//! `block_on` and the event threads taking them convoyed on that lock, and
//! some processes ran every burst at twice the time of others
//! (`benches/RESULTS.md`, "spawn bursts").
//!
//! The lock is held for a few pointer moves: a push links one task; a
//! consumer unlinks a whole batch (as crossbeam's `steal_batch_and_pop`,
//! half the queue up to 32 tasks) and hands it to its own deque after
//! letting go. `len` is written under the lock and read without it, so an
//! empty queue costs a consumer one load.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_deque::Worker;

use crate::executor::Runnable;
use crate::task::Header;

/// Most tasks a consumer moves to its own deque in one batch, besides the
/// one it runs (crossbeam's `MAX_BATCH`).
const MAX_BATCH: usize = 32;

pub(crate) struct Injector {
    /// Tasks in `list`. Written only under its lock.
    len: AtomicUsize,
    list: Mutex<List>,
}

/// Raw pointers from [`Runnable::into_raw`]; each is a `Runnable` the queue
/// owns. Null when the list is empty.
struct List {
    head: *mut (),
    tail: *mut (),
}

// SAFETY: the list owns the `Runnable`s its pointers stand for, and a
// `Runnable<Header>` is `Send` (`Header` is `Send + Sync`); the pointers are
// only followed under the mutex, or by the one consumer that unlinked them.
unsafe impl Send for List {}

/// The header of a task the caller owns as a raw `Runnable` pointer.
///
/// # Safety
/// `raw` must come from [`Runnable::into_raw`] and not have been turned back
/// into a `Runnable` since; the task (and so its header) stays alive for as
/// long as that pointer is owned, which the caller ensures for `'a`.
unsafe fn header<'a>(raw: NonNull<()>) -> &'a Header {
    // SAFETY: per the contract, `raw` is a live `Runnable<Header>` owned by
    // the caller; `ManuallyDrop` keeps this temporary from dropping it (which
    // would cancel the task).
    let r = ManuallyDrop::new(unsafe { Runnable::from_raw(raw) });
    let h: *const Header = r.metadata();
    // SAFETY: the metadata lives in the task's allocation, which outlives
    // `'a` per the contract; `r` only borrowed it.
    unsafe { &*h }
}

impl Injector {
    pub(crate) fn new() -> Self {
        Self {
            len: AtomicUsize::new(0),
            list: Mutex::new(List {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, List> {
        // Nothing panics under the lock; a poisoned lock is still consistent.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `r` at the back.
    pub(crate) fn push(&self, r: Runnable) {
        let raw = r.into_raw();
        // SAFETY: we own `raw` until it is linked below, and the list owns
        // it after; either keeps the task alive while its header is used.
        let h = unsafe { header(raw) };
        h.queue_next.store(ptr::null_mut(), Ordering::Relaxed);
        let mut list = self.lock();
        match NonNull::new(list.tail) {
            // SAFETY: `tail` is a task the list owns, alive under the lock.
            Some(tail) => unsafe { header(tail) }
                .queue_next
                .store(raw.as_ptr(), Ordering::Relaxed),
            None => list.head = raw.as_ptr(),
        }
        list.tail = raw.as_ptr();
        self.len
            .store(self.len.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Unlinks up to `max` tasks from the front, returning the first and the
    /// number taken; the caller owns the chain from the first through
    /// `queue_next` links.
    fn unlink(&self, max: impl FnOnce(usize) -> usize) -> Option<(NonNull<()>, usize)> {
        if self.is_empty() {
            return None;
        }
        let mut list = self.lock();
        let len = self.len.load(Ordering::Relaxed);
        let first = NonNull::new(list.head)?;
        let n = max(len).clamp(1, len);
        let mut last = first;
        for _ in 1..n {
            // SAFETY: `last` is a task the list owns; the list has `n` or
            // more tasks, so its link is set.
            last = NonNull::new(unsafe { header(last) }.queue_next.load(Ordering::Relaxed))
                .expect("injector: a link is missing");
        }
        // SAFETY: as above.
        list.head = unsafe { header(last) }.queue_next.load(Ordering::Relaxed);
        if list.head.is_null() {
            list.tail = ptr::null_mut();
        }
        self.len.store(len - n, Ordering::Release);
        Some((first, n))
    }

    /// Takes the task at the front.
    pub(crate) fn pop(&self) -> Option<Runnable> {
        let (first, _) = self.unlink(|_| 1)?;
        // SAFETY: unlinked, so ours alone.
        Some(unsafe { Runnable::from_raw(first) })
    }

    /// Takes a batch from the front (half the queue, at most
    /// `1 + MAX_BATCH`): returns its first task and pushes the rest onto
    /// `dest`, in order.
    pub(crate) fn pop_batch(&self, dest: &Worker<Runnable>) -> Option<Runnable> {
        let (first, n) = self.unlink(|len| len.div_ceil(2).min(1 + MAX_BATCH))?;
        // SAFETY: the chain of `n` tasks from `first` is unlinked and ours.
        // Each link is read before its task is turned back into a
        // `Runnable`: once on `dest`, another thread may steal, run and
        // queue that task again, rewriting its link.
        let mut next = unsafe { header(first) }.queue_next.load(Ordering::Relaxed);
        // SAFETY: `first` is ours (above), turned back exactly once.
        let r = unsafe { Runnable::from_raw(first) };
        for _ in 1..n {
            let raw = NonNull::new(next).expect("injector: a link is missing");
            // SAFETY: `raw` is in the chain we unlinked, still a raw pointer.
            next = unsafe { header(raw) }.queue_next.load(Ordering::Relaxed);
            // SAFETY: as above; turned back exactly once, after its link
            // was read.
            dest.push(unsafe { Runnable::from_raw(raw) });
        }
        Some(r)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // Dropping a `Runnable` cancels its task, as crossbeam's queue did.
        while let Some(r) = self.pop() {
            drop(r);
        }
    }
}

impl fmt::Debug for Injector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Injector")
            .field("len", &self.len())
            .finish()
    }
}

/// Tests of the list alone, with real tasks and no runtime threads, small
/// enough for Miri (`cargo +nightly miri test -p curfew --lib inject::tests`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;
    use crate::policy::Admitted;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn task(id: usize, ran: &Arc<Vec<AtomicUsize>>) -> Runnable {
        let header = Header::new(
            None,
            Admitted::NONE,
            Location::EventThread,
            None,
            None,
            None,
            tracing::Span::none(),
        );
        let ran = ran.clone();
        let (r, t) = async_task::Builder::new().metadata(header).spawn(
            move |_: &Header| async move { ran[id].fetch_add(1, Ordering::Relaxed) },
            |_| {},
        );
        t.detach();
        r
    }

    fn counters(n: usize) -> Arc<Vec<AtomicUsize>> {
        Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect())
    }

    #[test]
    fn pop_is_fifo_and_len_follows() {
        let ran = counters(3);
        let q = Injector::new();
        assert!(q.is_empty() && q.pop().is_none());
        for i in 0..3 {
            q.push(task(i, &ran));
        }
        assert_eq!(q.len(), 3);
        for i in 0..3 {
            q.pop().expect("queued").run();
            assert_eq!(ran[i].load(Ordering::Relaxed), 1, "task {i} ran in turn");
            assert_eq!(q.len(), 2 - i);
        }
        assert!(q.pop().is_none());
        // The list is usable again once emptied (head and tail reset).
        q.push(task(0, &ran));
        q.pop().expect("queued").run();
        assert_eq!(ran[0].load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_batch_is_half_the_queue_in_order_and_at_most_33() {
        let ran = counters(100);
        let q = Injector::new();
        for i in 0..100 {
            q.push(task(i, &ran));
        }
        let dest = Worker::new_fifo();
        q.pop_batch(&dest).expect("queued").run();
        assert_eq!(dest.len(), MAX_BATCH, "1 + 32 taken of 100");
        assert_eq!(q.len(), 100 - 1 - MAX_BATCH);
        while let Some(r) = dest.pop() {
            r.run();
        }
        for (i, c) in ran.iter().enumerate() {
            let want = usize::from(i <= MAX_BATCH);
            assert_eq!(c.load(Ordering::Relaxed), want, "task {i}");
        }
        // Small queues: half, rounded up; the last task alone.
        let q = Injector::new();
        let ran = counters(3);
        for i in 0..3 {
            q.push(task(i, &ran));
        }
        q.pop_batch(&dest).expect("queued").run();
        assert_eq!((dest.len(), q.len()), (1, 1));
        q.pop_batch(&dest).expect("queued").run();
        assert!(q.pop_batch(&dest).is_none() && q.is_empty());
        dest.pop().expect("batched").run();
        assert!(ran.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn dropping_the_queue_cancels_what_it_holds() {
        let ran = counters(2);
        let q = Injector::new();
        let header = || {
            Header::new(
                None,
                Admitted::NONE,
                Location::EventThread,
                None,
                None,
                None,
                tracing::Span::none(),
            )
        };
        let (r, t) = async_task::Builder::new()
            .metadata(header())
            .spawn(|_: &Header| async { 7 }, |_| {});
        q.push(r);
        q.push(task(1, &ran));
        drop(q);
        assert!(
            futures::executor::block_on(t.fallible()).is_none(),
            "cancelled"
        );
        assert_eq!(ran[1].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn producers_and_consumers_on_threads_lose_nothing() {
        const PER: usize = if cfg!(miri) { 25 } else { 2_000 };
        let ran = counters(4 * PER);
        let q = Arc::new(Injector::new());
        let done = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for p in 0..2 {
                let (q, ran) = (q.clone(), ran.clone());
                s.spawn(move || {
                    for i in 0..2 * PER {
                        q.push(task(p * 2 * PER + i, &ran));
                    }
                });
            }
            for _ in 0..2 {
                let (q, done) = (q.clone(), done.clone());
                s.spawn(move || {
                    let dest = Worker::new_fifo();
                    while done.load(Ordering::Relaxed) < 4 * PER {
                        let Some(r) = q.pop_batch(&dest) else {
                            std::thread::yield_now();
                            continue;
                        };
                        r.run();
                        done.fetch_add(1, Ordering::Relaxed);
                        while let Some(r) = dest.pop() {
                            r.run();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert!(q.is_empty());
        assert!(
            ran.iter().all(|c| c.load(Ordering::Relaxed) == 1),
            "each task ran once"
        );
    }
}
