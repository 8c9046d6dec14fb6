//! The in-memory rate limiter (GCRA on governor): atomic under contention,
//! exact for a burst, and a block list that answers without a store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use curfew::policy::{BlockList, ClientKey, Rate, RateLimiter};

#[test]
fn a_burst_from_many_threads_admits_exactly_the_limit() {
    let limiter = Arc::new(RateLimiter::new(
        Rate::new(Duration::from_secs(60), 10).unwrap(),
    ));
    let admitted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            std::thread::spawn(move || {
                let key = ClientKey::id("chatty");
                for _ in 0..125 {
                    if limiter.check(&key).is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 10);
    let limited = limiter.check(&ClientKey::id("chatty")).unwrap_err();
    assert!(limited.retry_after > Duration::from_secs(1), "{limited}");
    assert!(limiter.check(&ClientKey::id("quiet")).is_ok());
}

#[test]
fn rates_reject_nonsense() {
    assert!(Rate::per_second(0).is_none());
    assert!(Rate::new(Duration::ZERO, 1).is_none());
    assert!(Rate::new(Duration::from_secs(1), 0).is_none());
    // A burst whose refill time overflows the limiter's clock arithmetic
    // (found by tests/policy_props.rs).
    assert!(Rate::new(Duration::from_millis(4453), 4_142_543_023).is_none());
    assert!(Rate::new(Duration::from_secs(3600), 1000).is_some());
    assert_eq!(
        Rate::per_second(4).unwrap().period(),
        Duration::from_millis(250)
    );
}

#[test]
fn a_blocked_key_stays_blocked_until_its_time() {
    let list = BlockList::new();
    let key = ClientKey::id("flood");
    assert_eq!(list.blocked(&key), None);
    // Long enough that a loaded machine's stall between these lines
    // cannot end it.
    list.block(&key, Duration::from_secs(2));
    list.block(&key, Duration::from_millis(10)); // a shorter block does not shorten it
    let left = list.blocked(&key).unwrap();
    assert!(left > Duration::from_secs(1), "{left:?}");
    assert_eq!(list.blocked(&ClientKey::ip([10, 0, 0, 1].into())), None);
    assert!(curfew_suite::wait_until(Duration::from_secs(5), || list
        .blocked(&key)
        .is_none()));
    list.block(&key, Duration::MAX); // saturates instead of panicking
}
