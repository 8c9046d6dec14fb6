//! A few words read without a write: a sequence lock whose writer gives up
//! rather than wait.
//!
//! [`ClientKey`](crate::ClientKey) remembers where a client table found it,
//! and every admission of a server's long-lived keys reads that memory. A
//! mutex there cost every request two read-modify-writes (its lock and its
//! unlock) for a value that almost never changes. Here a read is four loads
//! and a fence, which is free on x86; a write that meets another write (or
//! a reader that meets a write) gives up, which a cache may do: the caller
//! goes to the table instead.
//!
//! The protocol is the usual one (crossbeam's `SeqLock`): the writer makes
//! the sequence odd with an Acquire compare-exchange, fences (Release),
//! stores the words, and makes the sequence even again with a Release
//! store; the reader loads the sequence (Acquire), the words, fences
//! (Acquire), and accepts the words only if the sequence is the same even
//! number. The words are atomics, so a torn read is caught, never undefined.
//! The loom checks at the bottom run it:
//! `RUSTFLAGS="--cfg curfew_loom" cargo test -p curfew --lib --release loom`.

#[cfg(curfew_loom)]
use loom::sync::atomic::{AtomicU64, Ordering, fence};
#[cfg(not(curfew_loom))]
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Three words, empty until first written.
pub(crate) struct SeqCell {
    /// 0: never written; odd: a write is under way; else the count of
    /// writes, doubled.
    seq: AtomicU64,
    words: [AtomicU64; 3],
}

impl SeqCell {
    pub(crate) fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// The words last written, or `None` if none were, or if a write was
    /// under way meanwhile.
    #[inline]
    pub(crate) fn read(&self) -> Option<[u64; 3]> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq == 0 || seq & 1 == 1 {
            return None;
        }
        let words = [
            self.words[0].load(Ordering::Relaxed),
            self.words[1].load(Ordering::Relaxed),
            self.words[2].load(Ordering::Relaxed),
        ];
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(words)
    }

    /// Writes `words`, unless another write is under way (then the other
    /// one stands).
    #[inline]
    pub(crate) fn try_write(&self, words: [u64; 3]) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1
            || self
                .seq
                .compare_exchange(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(words) {
            word.store(value, Ordering::Relaxed);
        }
        // Even again, and never 0 (which reads as "never written"): the
        // sequence wraps after 2^63 writes.
        let next = match seq.wrapping_add(2) {
            0 => 2,
            n => n,
        };
        self.seq.store(next, Ordering::Release);
    }
}

impl std::fmt::Debug for SeqCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SeqCell").field(&self.read()).finish()
    }
}

#[cfg(all(test, not(curfew_loom)))]
mod tests {
    use super::SeqCell;

    #[test]
    fn empty_until_written_then_the_last_write() {
        let c = SeqCell::new();
        assert_eq!(c.read(), None);
        c.try_write([1, 2, 3]);
        assert_eq!(c.read(), Some([1, 2, 3]));
        c.try_write([4, 5, 6]);
        assert_eq!(c.read(), Some([4, 5, 6]));
    }

    #[test]
    fn readers_never_see_a_mix_of_two_writes() {
        let c = std::sync::Arc::new(SeqCell::new());
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 1..=100_000u64 {
                    c.try_write([i, i, i]);
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() || seen == 0 {
            if let Some([a, b, c]) = c.read() {
                assert!(a == b && b == c, "a torn read: {a} {b} {c}");
                seen += 1;
            }
        }
        writer.join().unwrap();
        assert_eq!(c.read(), Some([100_000; 3]));
    }
}

/// Model checks: `RUSTFLAGS="--cfg curfew_loom" cargo test -p curfew --lib
/// --release loom`.
#[cfg(all(test, curfew_loom))]
mod loom_tests {
    use super::SeqCell;
    use loom::sync::Arc;

    /// A reader racing a writer sees the old words, the new ones, or
    /// nothing; never a mix.
    #[test]
    fn loom_a_read_racing_a_write_is_whole_or_nothing() {
        loom::model(|| {
            let c = Arc::new(SeqCell::new());
            c.try_write([1, 1, 1]);
            let writer = {
                let c = c.clone();
                loom::thread::spawn(move || c.try_write([2, 2, 2]))
            };
            match c.read() {
                None | Some([1, 1, 1]) | Some([2, 2, 2]) => {}
                Some(torn) => panic!("a torn read: {torn:?}"),
            }
            writer.join().unwrap();
            assert_eq!(c.read(), Some([2, 2, 2]));
        });
    }

    /// Two writers at once: one of them stands, whole.
    #[test]
    fn loom_two_writers_leave_one_whole_write() {
        loom::model(|| {
            let c = Arc::new(SeqCell::new());
            let other = {
                let c = c.clone();
                loom::thread::spawn(move || c.try_write([2, 2, 2]))
            };
            c.try_write([1, 1, 1]);
            other.join().unwrap();
            match c.read() {
                Some([1, 1, 1]) | Some([2, 2, 2]) => {}
                other => panic!("after two writes: {other:?}"),
            }
        });
    }
}
