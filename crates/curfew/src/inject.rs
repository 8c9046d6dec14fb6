//! The injector: the queue through which tasks reach a group from outside
//! its threads (spawns from other threads, wake-ups from the I/O driver and
//! from other runtimes, the watchdog's re-queues).
//!
//! It is intrusive: an item is linked through a [`Link`] that lives inside
//! the item itself (a task's [`Header`](crate::task::Header)), so pushing
//! allocates nothing and taking frees nothing. A block-based queue such as
//! crossbeam's `Injector` allocates its blocks on the pushing thread and
//! frees them on the taking one; in a burst of spawns from outside the
//! runtime, those frees contend with the spawner's own task allocations on
//! the allocator's arena lock.
//!
//! Pushers and takers meet at one word. A push links its item in front of
//! `pushed`, a stack of items newest first, with one compare-exchange (no
//! lock; it retries only when another push got in between). The take side
//! belongs to one thread at a time, the holder of `taking`, a small spin
//! lock held for one batch. Event threads wait a few hundred nanoseconds
//! for it and then turn to other work; every other caller (the pool's
//! threads, the watchdog, shutdown) waits until it is free. A taker works
//! through a private list, oldest first; when that runs out, it swaps the
//! whole stack out of `pushed` in one step and reverses it onto the list.
//! So items come out in the order they were pushed, and a push touches a
//! line that takers write once per grab, not once per item: when takers
//! keep up with a pusher, as event threads do with a burst of spawns, the
//! pusher does not wait on a cache miss for each item it queues.
//!
//! An item leaves the stack only in a grab, whole, so the stack has no ABA
//! problem; once handed out, an item is in neither list, and its owner may
//! push it again at once (a task woken while it runs). The model checks at
//! the bottom exercise the protocol with loom.

use std::marker::PhantomData;
use std::ptr::{self, NonNull};

#[cfg(curfew_loom)]
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
#[cfg(not(curfew_loom))]
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// The part of an item that links it into an [`Inject`] queue.
#[derive(Debug)]
pub(crate) struct Link {
    next: AtomicPtr<Link>,
}

impl Link {
    pub(crate) fn new() -> Self {
        Self {
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

/// An owned item that can be linked into an [`Inject`] queue.
///
/// # Safety
///
/// `into_link` gives up ownership of the item and returns a link that stays
/// valid, and is not used by anything else, until `from_link` takes the
/// item back from it; `from_link` returns the very item given up.
pub(crate) unsafe trait Linked: Sized {
    fn into_link(self) -> NonNull<Link>;

    /// # Safety
    ///
    /// `link` came from `into_link`, and its item has not been taken back.
    unsafe fn from_link(link: NonNull<Link>) -> Self;
}

/// How long [`Inject::take_batch`] waits for another taker, in spins. (Two
/// under loom, where every spin is a branch of the search.)
const BUSY_SPINS: u32 = if cfg!(curfew_loom) { 2 } else { 256 };

/// What [`Inject::take_batch`] found.
#[derive(Debug)]
pub(crate) enum Take<T> {
    Item(T),
    /// Nothing queued.
    Empty,
    /// Another thread is taking, and went on longer than a batch take
    /// waits. A thread about to park looks again: see [`Inject::is_empty`].
    Busy,
}

/// A multi-producer queue with one taker at a time; see the module docs.
pub(crate) struct Inject<T: Linked> {
    /// Items pushed and not yet grabbed, newest first.
    pushed: CachePadded<AtomicPtr<Link>>,
    /// The takers' side, on a cache line of its own.
    take: CachePadded<TakeSide>,
    /// Items pushed and not yet taken. Raised before an item is linked and
    /// lowered after it is taken (once per batch), so it is never below the
    /// linked count. For the metrics and the size of a batch.
    len: CachePadded<AtomicUsize>,
    _items: PhantomData<T>,
}

struct TakeSide {
    /// Held by the one thread taking.
    taking: AtomicBool,
    /// Grabbed items, oldest first. Read and written under `taking` only.
    front: AtomicPtr<Link>,
    /// How many items `front` holds: written under `taking`, read by
    /// [`Inject::is_empty`].
    grabbed: AtomicUsize,
}

// SAFETY: the queue owns the items linked into it, and hands each one to
// exactly one taker; it is as `Send` and `Sync` as moving `T` between
// threads is.
unsafe impl<T: Linked + Send> Send for Inject<T> {}
// SAFETY: as above; every shared field is atomic, and `front` is touched
// only under `taking`.
unsafe impl<T: Linked + Send> Sync for Inject<T> {}

impl<T: Linked> std::fmt::Debug for Inject<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inject").field("len", &self.len()).finish()
    }
}

impl<T: Linked> Inject<T> {
    pub(crate) fn new() -> Self {
        Self {
            pushed: CachePadded::new(AtomicPtr::new(ptr::null_mut())),
            take: CachePadded::new(TakeSide {
                taking: AtomicBool::new(false),
                front: AtomicPtr::new(ptr::null_mut()),
                grabbed: AtomicUsize::new(0),
            }),
            len: CachePadded::new(AtomicUsize::new(0)),
            _items: PhantomData,
        }
    }

    /// Items queued (an upper bound while pushes and takes are under way).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is queued. A push ordered before this call by a
    /// `SeqCst` fence on both sides (the park protocol) is always seen,
    /// unless a taker has grabbed it already, and that taker goes on taking
    /// until its list is empty. Reads the pushers' line, not the counter
    /// they raise, so that threads looking for work do not pull that line
    /// away from a pusher at every look.
    pub(crate) fn is_empty(&self) -> bool {
        self.pushed.load(Ordering::Relaxed).is_null()
            && self.take.grabbed.load(Ordering::Relaxed) == 0
    }

    pub(crate) fn push(&self, item: T) {
        self.len.fetch_add(1, Ordering::Relaxed);
        let n = item.into_link().as_ptr();
        let mut top = self.pushed.load(Ordering::Relaxed);
        loop {
            // SAFETY: `n` was given up by `into_link` and is not linked yet,
            // so nothing else reads or writes it.
            unsafe { (*n).next.store(top, Ordering::Relaxed) };
            match self
                .pushed
                .compare_exchange_weak(top, n, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => top = now,
            }
        }
    }

    /// Takes the oldest item, waiting while another thread is taking, so
    /// `None` means nothing is queued. (It takes the lock even when the
    /// queue looks empty: a taker may be half-way through a grab, and
    /// shutdown's drain must not miss that.)
    pub(crate) fn pop(&self) -> Option<T> {
        let _g = self.lock();
        let t = self.pop_locked();
        if t.is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        t
    }

    /// Takes the oldest item and moves up to `max(len) - 1` more into
    /// `sink`, in order, if no other thread is taking. `max` sizes the batch
    /// from the queue's length, read only once the queue is known not to be
    /// empty: a thread looking for work in an empty queue reads nothing the
    /// pushers write.
    pub(crate) fn take_batch(
        &self,
        max: impl FnOnce(usize) -> usize,
        mut sink: impl FnMut(T),
    ) -> Take<T> {
        // Loads only, while empty: a thread looking for work comes here
        // between polls, and must not write lines others use.
        if self.is_empty() {
            return Take::Empty;
        }
        // Another taker holds the lock for one batch: wait that long for
        // it, a few hundred nanoseconds, rather than turn to other work
        // (a yielded task, say) while tasks wait here.
        let Some(_g) = self.try_lock().or_else(|| {
            for _ in 0..BUSY_SPINS {
                std::hint::spin_loop();
                if !self.take.taking.load(Ordering::Relaxed) {
                    return self.try_lock();
                }
            }
            None
        }) else {
            return Take::Busy;
        };
        let Some(first) = self.pop_locked() else {
            return Take::Empty;
        };
        let max = max(self.len());
        let mut n = 1;
        while n < max {
            let Some(t) = self.pop_locked() else { break };
            sink(t);
            n += 1;
        }
        self.len.fetch_sub(n, Ordering::Relaxed);
        Take::Item(first)
    }

    fn lock(&self) -> TakeGuard<'_> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            while self.take.taking.load(Ordering::Relaxed) {
                spin_wait();
            }
        }
    }

    fn try_lock(&self) -> Option<TakeGuard<'_>> {
        self.take
            .taking
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            // Not `then_some`: a guard built on failure would unlock on drop.
            .then(|| TakeGuard(&self.take.taking))
    }

    /// One take; the caller holds `taking`, and lowers `len` for it.
    fn pop_locked(&self) -> Option<T> {
        let mut front = self.take.front.load(Ordering::Relaxed);
        if front.is_null() {
            if self.pushed.load(Ordering::Relaxed).is_null() {
                return None;
            }
            // Grab every pushed item; the acquire pairs with each push's
            // release, so their links are complete. Not empty: only a taker
            // empties the stack, and we are the taker.
            let mut top = self.pushed.swap(ptr::null_mut(), Ordering::Acquire);
            debug_assert!(!top.is_null());
            let mut n = 0;
            while !top.is_null() {
                // SAFETY: grabbed links are ours alone until handed out.
                let below = unsafe { (*top).next.load(Ordering::Relaxed) };
                // SAFETY: as above.
                unsafe { (*top).next.store(front, Ordering::Relaxed) };
                front = top;
                top = below;
                n += 1;
            }
            self.take.grabbed.store(n, Ordering::Relaxed);
        }
        // SAFETY: `front` is a grabbed link, ours until handed out.
        let next = unsafe { (*front).next.load(Ordering::Relaxed) };
        self.take.front.store(next, Ordering::Relaxed);
        // Only the holder of `taking` writes it.
        let left = self.take.grabbed.load(Ordering::Relaxed) - 1;
        self.take.grabbed.store(left, Ordering::Relaxed);
        // SAFETY: `front` came from `into_link` and is in neither list now.
        Some(unsafe { T::from_link(NonNull::new_unchecked(front)) })
    }
}

impl<T: Linked> Drop for Inject<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

struct TakeGuard<'a>(&'a AtomicBool);

impl Drop for TakeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(not(curfew_loom))]
fn spin_wait() {
    std::hint::spin_loop();
    std::thread::yield_now();
}

#[cfg(curfew_loom)]
fn spin_wait() {
    loom::thread::yield_now();
}

/// An item for the tests: a boxed value with its link in front.
#[cfg(test)]
mod test_node {
    use super::*;

    #[repr(C)]
    pub(super) struct Node<V> {
        link: Link,
        pub(super) val: V,
    }

    // SAFETY: the link is the first field of a `repr(C)` box, so the box's
    // pointer and the link's are the same; `from_link` rebuilds that box.
    unsafe impl<V> Linked for Box<Node<V>> {
        fn into_link(self) -> NonNull<Link> {
            NonNull::from(Box::leak(self)).cast()
        }

        unsafe fn from_link(link: NonNull<Link>) -> Self {
            // SAFETY: see the impl.
            unsafe { Box::from_raw(link.cast::<Node<V>>().as_ptr()) }
        }
    }

    pub(super) fn node<V>(val: V) -> Box<Node<V>> {
        Box::new(Node {
            link: Link::new(),
            val,
        })
    }
}

#[cfg(all(test, not(curfew_loom)))]
mod tests {
    use super::*;

    use super::test_node::{Node, node};

    fn val(t: Take<Box<Node<usize>>>) -> Option<usize> {
        match t {
            Take::Item(n) => Some(n.val),
            Take::Empty => None,
            Take::Busy => panic!("busy with no other thread"),
        }
    }

    fn popped(n: Option<Box<Node<usize>>>) -> Option<usize> {
        n.map(|n| n.val)
    }

    #[test]
    fn items_come_out_in_order_and_the_length_follows() {
        let q = Inject::new();
        assert!(q.is_empty());
        assert_eq!(popped(q.pop()), None);
        for i in 0..5 {
            q.push(node(i));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(popped(q.pop()), Some(0));
        q.push(node(5));
        let got: Vec<_> = std::iter::from_fn(|| popped(q.pop())).collect();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert!(q.is_empty());
        // Empty again, after a grab: it still works.
        q.push(node(6));
        assert_eq!(popped(q.pop()), Some(6));
        assert_eq!(popped(q.pop()), None);
    }

    #[test]
    fn a_batch_takes_at_most_max_in_order() {
        let q = Inject::new();
        for i in 0..10 {
            q.push(node(i));
        }
        let mut rest = Vec::new();
        // The batch is sized from the queue's length.
        let sized = |len: usize| {
            assert_eq!(len, 10);
            4
        };
        assert_eq!(val(q.take_batch(sized, |n| rest.push(n.val))), Some(0));
        assert_eq!(rest, [1, 2, 3]);
        assert_eq!(q.len(), 6);
        rest.clear();
        assert_eq!(val(q.take_batch(|_| 100, |n| rest.push(n.val))), Some(4));
        assert_eq!(rest, [5, 6, 7, 8, 9]);
        assert!(q.is_empty());
        // An empty queue does not even ask for a size.
        let unasked = |_: usize| -> usize { unreachable!("sized an empty queue") };
        assert_eq!(val(q.take_batch(unasked, |_| unreachable!())), None);
    }

    #[test]
    fn a_batch_is_refused_while_another_thread_takes() {
        let q = Inject::new();
        q.push(node(1));
        let g = q.try_lock().unwrap();
        assert!(matches!(q.take_batch(|_| 4, |_| {}), Take::Busy));
        drop(g);
        assert_eq!(val(q.take_batch(|_| 4, |_| {})), Some(1));
    }

    #[test]
    fn a_taken_item_can_be_pushed_again_at_once() {
        let q = Inject::new();
        q.push(node(1));
        let n = q.pop().expect("an item was pushed");
        q.push(n);
        q.push(node(2));
        assert_eq!(popped(q.pop()), Some(1));
        assert_eq!(popped(q.pop()), Some(2));
    }

    #[test]
    fn dropping_the_queue_drops_what_is_queued() {
        let rc = std::sync::Arc::new(());
        let q = Inject::new();
        for _ in 0..3 {
            q.push(node(rc.clone()));
        }
        assert_eq!(std::sync::Arc::strong_count(&rc), 4);
        drop(q);
        assert_eq!(std::sync::Arc::strong_count(&rc), 1);
    }

    #[test]
    fn many_pushers_and_takers_lose_nothing_and_keep_each_pushers_order() {
        const PUSHERS: usize = 4;
        const EACH: usize = if cfg!(miri) { 200 } else { 20_000 };
        let q = std::sync::Arc::new(Inject::<Box<Node<usize>>>::new());
        let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let (q, taken, done) = (q.clone(), taken.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let mut batch = Vec::new();
                        match q.take_batch(|_| 8, |n| batch.push(n.val)) {
                            Take::Item(n) => {
                                mine.push(n.val);
                                mine.append(&mut batch);
                            }
                            Take::Busy => std::hint::spin_loop(),
                            Take::Empty if done.load(Ordering::Acquire) && q.is_empty() => break,
                            Take::Empty => std::thread::yield_now(),
                        }
                    }
                    taken.lock().unwrap().push(mine);
                })
            })
            .collect();
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        q.push(node(p * EACH + i));
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        done.store(true, Ordering::Release);
        for t in takers {
            t.join().unwrap();
        }
        let taken = taken.lock().unwrap();
        let mut all: Vec<usize> = taken.iter().flatten().copied().collect();
        // Within one taker's sequence, each pusher's items are in order.
        for mine in taken.iter() {
            for p in 0..PUSHERS {
                let of_p: Vec<_> = mine.iter().filter(|v| **v / EACH == p).collect();
                assert!(of_p.windows(2).all(|w| w[0] < w[1]));
            }
        }
        all.sort_unstable();
        assert_eq!(all, (0..PUSHERS * EACH).collect::<Vec<_>>());
        assert!(q.is_empty());
    }
}

/// Model checks of the protocol: `RUSTFLAGS="--cfg curfew_loom" cargo test
/// -p curfew --lib --release loom`.
#[cfg(all(test, curfew_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    use super::test_node::{Node, node};

    /// Takes until `n` items are out, looking again while busy.
    fn take_all(q: &Inject<Box<Node<usize>>>, n: usize) -> Vec<usize> {
        let mut got = Vec::new();
        while got.len() < n {
            match q.pop() {
                Some(b) => got.push(b.val),
                None => thread::yield_now(),
            }
        }
        got
    }

    #[test]
    fn loom_two_pushers_one_taker_lose_nothing() {
        // Bounded, or the taker's looking again makes the search run for
        // minutes; three preemptions cover every order of the two pushes
        // and a grab.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let q = Arc::new(Inject::new());
            let ps: Vec<_> = (0..2)
                .map(|p| {
                    let q = q.clone();
                    thread::spawn(move || q.push(node(p)))
                })
                .collect();
            let mut got = take_all(&q, 2);
            for p in ps {
                p.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, [0, 1]);
            assert!(q.is_empty());
            assert!(q.pop().is_none());
        });
    }

    #[test]
    fn loom_a_taker_racing_a_push_keeps_the_order() {
        loom::model(|| {
            let q = Arc::new(Inject::new());
            q.push(node(0));
            let p = {
                let q = q.clone();
                thread::spawn(move || q.push(node(1)))
            };
            // Racing the push: item 1 lands in the taker's grab, or in
            // the stack after it; it comes out second either way.
            let got = take_all(&q, 2);
            p.join().unwrap();
            assert_eq!(got, [0, 1]);
            assert!(q.pop().is_none());
        });
    }

    #[test]
    fn loom_two_takers_share_items_and_may_push_them_again() {
        loom::model(|| {
            let q = Arc::new(Inject::new());
            q.push(node(0));
            q.push(node(1));
            let t = {
                let q = q.clone();
                thread::spawn(move || {
                    // Takes one item, if it can, and pushes it straight
                    // back (a task woken while it runs).
                    if let Take::Item(n) = q.take_batch(|_| 1, |_| unreachable!()) {
                        q.push(n);
                    }
                })
            };
            let first = take_all(&q, 1);
            t.join().unwrap();
            let mut got = first;
            got.extend(take_all(&q, 1));
            got.sort_unstable();
            assert_eq!(got, [0, 1]);
            assert!(q.pop().is_none());
        });
    }
}
