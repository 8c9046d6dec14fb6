//! The client table under a flood of identities: it evicts idle clients
//! first, so the policy keeps refusing the clients that earned it, and a
//! task that outlives its client's entry charges nothing to the entry's next
//! owner.

use std::time::Duration;

use curfew::policy::ClientPolicy;
use curfew::{ClientKey, Runtime};

/// A task that overruns a 10 ms budget (the runtimes' own budget
/// is far from the point, so that no benign task of a flood times out on a
/// loaded machine).
fn attack(h: &curfew::Handle, who: impl Into<ClientKey>) -> curfew::JoinHandle<bool> {
    attack_for(h, who, Duration::from_millis(10))
}

fn attack_for(
    h: &curfew::Handle,
    who: impl Into<ClientKey>,
    budget: Duration,
) -> curfew::JoinHandle<bool> {
    curfew::task::Builder::new()
        .client(who)
        .poll_budget(budget)
        .spawn_on(h, async {
            curfew_suite::spin_until_timed_out(Duration::from_secs(20))
        })
}

fn refused(rt: &Runtime, who: &str) -> bool {
    let t = curfew::task::Builder::new()
        .client(who)
        .spawn_on(&rt.handle(), async {});
    match rt.block_on(t) {
        Ok(()) => false,
        Err(e) => e.is_refused(),
    }
}

#[test]
fn the_policy_still_refuses_after_100_000_distinct_ids() {
    let rt = Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(30))
        .client_policy(ClientPolicy::new(2, Duration::from_secs(600)))
        .build()
        .unwrap();
    let h = rt.handle();
    // mallory is cooling off; trudy has one strike of two.
    for _ in 0..2 {
        assert!(rt.block_on(attack(&h, "mallory")).unwrap_err().is_timeout());
    }
    assert!(rt.block_on(attack(&h, "trudy")).unwrap_err().is_timeout());
    assert!(refused(&rt, "mallory"));

    // 100,000 distinct ids pass through a table of 1,024 entries.
    for batch in 0..100 {
        let handles: Vec<_> = (0..1000u64)
            .map(|i| {
                curfew::task::Builder::new()
                    .client(format!("flood-{batch}-{i}"))
                    .spawn_on(&h, async {})
            })
            .collect();
        for t in handles {
            rt.block_on(t).unwrap();
        }
    }
    let m = rt.metrics();
    assert!(m.evicted_clients >= 100_000 - 1024, "{}", m.evicted_clients);
    assert!(m.clients.len() <= 1024);

    // Both strikers were kept: mallory is still refused, and trudy's next
    // timeout is her second strike.
    assert!(refused(&rt, "mallory"), "mallory must still be refused");
    assert!(rt.block_on(attack(&h, "trudy")).unwrap_err().is_timeout());
    assert!(
        refused(&rt, "trudy"),
        "trudy's first strike must have been kept"
    );
    // And a fresh id is still tracked and refused after its strikes.
    for _ in 0..2 {
        assert!(rt.block_on(attack(&h, "fresh")).unwrap_err().is_timeout());
    }
    assert!(refused(&rt, "fresh"));
    assert!(!refused(&rt, "alice"));
}

#[test]
fn a_task_that_outlives_its_entry_charges_nothing_to_the_next_owner() {
    // No policy: the table is pure LRU, so the spinning client is evicted
    // deterministically by the flood that follows it.
    let rt = Runtime::builder()
        .event_threads(2)
        .poll_budget(Duration::from_secs(30))
        .max_tracked_clients(8)
        .build()
        .unwrap();
    let h = rt.handle();
    let old = attack_for(&h, "old", Duration::from_millis(300));
    for i in 0..100u64 {
        let t = curfew::task::Builder::new()
            .client(i)
            .spawn_on(&h, async {});
        rt.block_on(t).unwrap();
    }
    assert!(rt.block_on(old).unwrap_err().is_timeout());
    let m = rt.metrics();
    assert!(m.client("old").is_none(), "old was evicted: {m:?}");
    // The spin lasted 300 ms and timed out; none of that went to the
    // clients that now hold the slots.
    let charged: Duration = m.clients.iter().map(|c| c.poll_time).sum();
    let timeouts: u64 = m.clients.iter().map(|c| c.timeouts).sum();
    assert_eq!(timeouts, 0, "{m:?}");
    assert!(
        charged < Duration::from_millis(50),
        "{charged:?} charged to {m:?}"
    );
}
