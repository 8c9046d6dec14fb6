//! `task::Builder::inline`: a future run in place, inside a task's polls,
//! under a budget and client of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use curfew::TimeoutError;
use curfew::policy::ClientPolicy;
use curfew::task::{Builder, OnTimeout};

/// Counts its calls and keeps the last error's budget.
#[derive(Clone, Default)]
struct Count(Arc<(AtomicUsize, std::sync::Mutex<Option<Duration>>)>);

impl OnTimeout for Count {
    fn on_timeout(&self, error: &TimeoutError) {
        *self.0.1.lock().unwrap() = Some(error.budget());
        self.0.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Count {
    fn calls(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }
}

/// How long a poll answered by the watchdog may take to give its thread
/// back. A loaded machine can keep the thread off its core for longer than
/// the default 5 ms after the answer; written off, the thread would take
/// the enclosing task with it.
const GRACE: Duration = Duration::from_secs(5);

/// Spins until the watchdog answers the current poll (as a handler with
/// checkpoints does), or for 5 s at most.
fn spin_until_answered() {
    let start = Instant::now();
    while curfew::checkpoint().is_ok() && start.elapsed() < Duration::from_secs(5) {
        std::hint::spin_loop();
    }
}

/// One event thread, a client cooling off for a minute after one timeout.
fn one_strike_runtime() -> curfew::Runtime {
    curfew::Runtime::builder()
        .event_threads(1)
        .hijack_grace(GRACE)
        .client_policy(ClientPolicy::new(1, Duration::from_secs(60)))
        .build()
        .unwrap()
}

fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[test]
fn an_inline_future_gives_its_output_and_its_hook_is_never_called() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    let hook = Count::default();
    let h = hook.clone();
    let out = rt
        .block_on(rt.spawn(async move {
            let mut sum = 0;
            for i in 0..100u32 {
                sum += Builder::new()
                    .poll_budget(Duration::from_secs(5))
                    .inline(
                        async move {
                            curfew::task::yield_now().await;
                            i
                        },
                        h.clone(),
                    )
                    .await
                    .unwrap();
            }
            sum
        }))
        .unwrap();
    assert_eq!(out, (0..100).sum::<u32>());
    assert_eq!(hook.calls(), 0);
}

#[test]
fn an_overrunning_inline_poll_is_answered_and_its_task_goes_on() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .hijack_grace(GRACE)
        .poll_budget(Duration::from_secs(10))
        .build()
        .unwrap();
    let hook = Count::default();
    let h = hook.clone();
    // The scope overruns its own 20 ms budget (the task's is 10 s); the
    // hook is called while it still runs, and the task goes on after it.
    let (err, after) = rt
        .block_on(rt.spawn(async move {
            let r = Builder::new()
                .name("spinner")
                .poll_budget(Duration::from_millis(20))
                .inline(
                    async {
                        spin_until_answered();
                    },
                    h.clone(),
                )
                .await;
            let calls_at_return = h.calls();
            // The task's own polls are watched under its budget again.
            curfew::task::yield_now().await;
            (r.unwrap_err(), calls_at_return)
        }))
        .unwrap();
    assert!(err.is_timeout(), "{err}");
    let t = err.timeout().unwrap();
    assert_eq!(t.budget(), Duration::from_millis(20));
    assert_eq!(t.name(), Some("spinner"));
    assert_eq!(after, 1, "the hook ran before the poll returned");
    assert_eq!(*hook.0.1.lock().unwrap(), Some(Duration::from_millis(20)));
    // The thread stayed healthy: the poll returned within the grace.
    assert_eq!(rt.block_on(rt.spawn(async { 7 })).unwrap(), 7);
}

#[test]
fn the_enclosing_task_keeps_its_own_budget_around_a_scope() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_millis(30))
        .build()
        .unwrap();
    let hook = Count::default();
    let h = hook.clone();
    // A long-budget scope inside a short-budget task: the scope is not
    // answered, and the task's own overrun after it is.
    let r = rt.block_on(rt.spawn(async move {
        let inner = Builder::new()
            .poll_budget(Duration::from_secs(10))
            .inline(
                async {
                    spin_for(Duration::from_millis(100));
                    1
                },
                h,
            )
            .await;
        assert_eq!(inner.unwrap(), 1);
        spin_until_answered();
    }));
    assert_eq!(hook.calls(), 0, "the scope was within its budget");
    assert!(r.unwrap_err().is_timeout(), "the task's own poll overran");
}

#[test]
fn a_client_cooling_off_is_refused_before_its_future_is_polled() {
    let rt = one_strike_runtime();
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let (first, second) = rt
        .block_on(rt.spawn(async move {
            let first = Builder::new()
                .client("198.51.100.7")
                .poll_budget(Duration::from_millis(20))
                .inline(async { spin_until_answered() }, Count::default())
                .await;
            let second = Builder::new()
                .client("198.51.100.7")
                .inline(
                    async move {
                        p.fetch_add(1, Ordering::SeqCst);
                    },
                    Count::default(),
                )
                .await;
            (first, second)
        }))
        .unwrap();
    assert!(first.unwrap_err().is_timeout());
    let refused = second.unwrap_err();
    assert!(refused.is_refused(), "{refused}");
    assert_eq!(polled.load(Ordering::SeqCst), 0);
}

#[test]
fn inline_with_makes_its_future_only_once_admitted() {
    let rt = one_strike_runtime();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let (first, second, third) = rt
        .block_on(rt.spawn(async move {
            let make = || {
                m.fetch_add(1, Ordering::SeqCst);
                async { spin_until_answered() }
            };
            let first = Builder::new()
                .client("198.51.100.8")
                .poll_budget(Duration::from_millis(20))
                .inline_with(make, Count::default())
                .await;
            let second = Builder::new()
                .client("198.51.100.8")
                .inline_with(make, Count::default())
                .await;
            let third = Builder::new()
                .client("198.51.100.9")
                .inline_with(|| async { 3 }, Count::default())
                .await;
            (first, second, third)
        }))
        .unwrap();
    assert!(first.unwrap_err().is_timeout());
    assert!(second.unwrap_err().is_refused());
    assert_eq!(made.load(Ordering::SeqCst), 1, "made for a refused scope");
    assert_eq!(third.unwrap(), 3);
}

#[test]
fn a_panic_inside_a_scope_is_caught() {
    // Generous budgets: the panic hook may capture a backtrace.
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .poll_budget(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = rt
        .block_on(rt.spawn(async {
            let r = Builder::new()
                .poll_budget(Duration::from_secs(10))
                .inline(async { panic!("boom") }, Count::default())
                .await;
            (r.unwrap_err().is_panic(), 3)
        }))
        .unwrap();
    assert_eq!(r, (true, 3));
}

#[test]
fn nested_scopes_hand_the_slot_back_in_order() {
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .hijack_grace(GRACE)
        .poll_budget(Duration::from_secs(10))
        .build()
        .unwrap();
    let outer_hook = Count::default();
    let inner_hook = Count::default();
    let (o, i) = (outer_hook.clone(), inner_hook.clone());
    let r = rt
        .block_on(rt.spawn(async move {
            Builder::new()
                .poll_budget(Duration::from_secs(5))
                .inline(
                    async move {
                        let inner = Builder::new()
                            .poll_budget(Duration::from_millis(20))
                            .inline(async { spin_until_answered() }, i)
                            .await;
                        inner.unwrap_err().is_timeout()
                    },
                    o,
                )
                .await
        }))
        .unwrap();
    assert!(r.unwrap(), "the inner scope timed out");
    assert_eq!((outer_hook.calls(), inner_hook.calls()), (0, 1));
}

#[test]
fn outside_a_runtime_an_inline_future_runs_unwatched() {
    let hook = Count::default();
    let out = futures::executor::block_on(Builder::new().inline(async { 5 }, hook.clone()));
    assert_eq!(out.unwrap(), 5);
    assert_eq!(hook.calls(), 0);
}

#[test]
fn an_inline_future_is_send_when_its_parts_are() {
    fn send<T: Send>(_: &T) {}
    let f = Builder::new().inline(async { 1 }, Count::default());
    send(&f);
}

#[test]
fn a_scope_keeps_its_name_and_client_refused_or_not_and_after_it_resolves() {
    let rt = one_strike_runtime();
    let seen = rt
        .block_on(rt.spawn(async {
            let mut seen = Vec::new();
            for (budget, make_spin) in [(Some(Duration::from_millis(20)), true), (None, false)] {
                let mut b = Builder::new().name("/search").client("198.51.100.8");
                if let Some(budget) = budget {
                    b = b.poll_budget(budget);
                }
                let mut scope = std::pin::pin!(b.inline_with(
                    move || async move {
                        if make_spin {
                            spin_until_answered();
                        }
                    },
                    Count::default()
                ));
                let before = (scope.name().map(str::to_owned), scope.client().cloned());
                let out = scope.as_mut().await;
                let after = (scope.name().map(str::to_owned), scope.client().cloned());
                seen.push((out.map_err(|e| e.is_refused()), before, after));
            }
            seen
        }))
        .unwrap();
    let key = Some(curfew::ClientKey::from("198.51.100.8"));
    let named = (Some("/search".to_owned()), key);
    // The first overruns and strikes the client; the second is refused.
    assert_eq!(seen[0].0, Err(false), "the first scope times out");
    assert_eq!(seen[1].0, Err(true), "the second scope is refused");
    for (_, before, after) in &seen {
        assert_eq!(before, &named);
        assert_eq!(after, &named);
    }
}
