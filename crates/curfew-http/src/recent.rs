//! A small cache of recently used values, kept per thread by the layer and
//! the key extractor so that a request's keys are clones of keys made once.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Up to `N` values; once full, a new value takes the place of the oldest
/// one inserted. Bounded whatever a client sends: a client that makes every
/// request a miss costs the miss, never more memory.
pub(crate) struct Recent<T, const N: usize> {
    items: Vec<T>,
    /// Where the next value goes once the cache is full.
    next: usize,
}

impl<T, const N: usize> Recent<T, N> {
    pub(crate) const fn new() -> Self {
        Self {
            items: Vec::new(),
            next: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The first value that `matches`, or `make()`, kept in place of the
    /// oldest value once the cache is full.
    pub(crate) fn get_or_insert_with(
        &mut self,
        matches: impl Fn(&T) -> bool,
        make: impl Fn() -> T,
    ) -> &T {
        let i = match self.items.iter().position(matches) {
            Some(i) => i,
            None if self.items.len() < N => {
                self.items.push(make());
                self.items.len() - 1
            }
            None => {
                let i = self.next;
                self.items[i] = make();
                self.next = (i + 1) % N;
                i
            }
        };
        &self.items[i]
    }
}

/// `pick` of the value in this thread's `cache` that `matches`, made with
/// `make` and kept if there is none. While the thread's locals are being
/// destroyed, `pick` of a value made for the occasion.
pub(crate) fn cached<T: 'static, R, const N: usize>(
    cache: &'static LocalKey<RefCell<Recent<T, N>>>,
    matches: impl Fn(&T) -> bool,
    make: impl Fn() -> T,
    pick: impl Fn(&T) -> R,
) -> R {
    cache
        .try_with(|c| pick(c.borrow_mut().get_or_insert_with(&matches, &make)))
        .unwrap_or_else(|_| pick(&make()))
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn replaces_the_oldest_once_full() {
        let mut r = Recent::<u32, 3>::new();
        for v in 1..=3 {
            assert_eq!(*r.get_or_insert_with(|&x| x == v, || v), v);
        }
        // Full: 4 replaces 1, then 5 replaces 2.
        r.get_or_insert_with(|&x| x == 4, || 4);
        r.get_or_insert_with(|&x| x == 5, || 5);
        assert_eq!(r.items, [4, 5, 3]);
        // A hit makes nothing.
        assert_eq!(*r.get_or_insert_with(|&x| x == 3, || unreachable!()), 3);
    }
}
