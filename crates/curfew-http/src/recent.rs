//! A small cache of recently used values, kept per thread by the layer and
//! the key extractor so that a request's keys are clones of keys made once.

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

    /// The first value that `matches`.
    pub(crate) fn position(&self, matches: impl Fn(&T) -> bool) -> Option<usize> {
        self.items.iter().position(matches)
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)
    }

    /// Keeps `value`, in place of the oldest value once the cache is full,
    /// and returns where it went.
    pub(crate) fn insert(&mut self, value: T) -> usize {
        if self.items.len() < N {
            self.items.push(value);
            self.items.len() - 1
        } else {
            let i = self.next;
            self.items[i] = value;
            self.next = (i + 1) % N;
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn replaces_the_oldest_once_full() {
        let mut r = Recent::<u32, 3>::new();
        assert_eq!([r.insert(1), r.insert(2), r.insert(3)], [0, 1, 2]);
        // Full: 4 replaces 1, then 5 replaces 2.
        assert_eq!(r.insert(4), 0);
        assert_eq!(r.insert(5), 1);
        assert_eq!(r.position(|&v| v == 1), None);
        assert_eq!(r.position(|&v| v == 3), Some(2));
        assert_eq!(r.get(0), Some(&4));
        assert_eq!(r.get(3), None);
    }
}
