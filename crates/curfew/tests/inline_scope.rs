//! `task::InlineScope`: one watched scope reused by a caller's successive
//! inline futures, with each run's own name, client, budget and hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use curfew::policy::ClientPolicy;
use curfew::task::{Builder, InlineScope, OnTimeout};
use curfew::{ClientKey, TimeoutError};

/// Counts its calls and keeps what the last error named.
#[derive(Clone, Default)]
struct Hook(Arc<HookState>);

/// What a timeout named: the name, the client and the budget.
type Named = (Option<String>, Option<String>, Duration);

#[derive(Default)]
struct HookState {
    calls: AtomicUsize,
    last: std::sync::Mutex<Option<Named>>,
}

impl OnTimeout for Hook {
    fn on_timeout(&self, error: &TimeoutError) {
        *self.0.last.lock().unwrap() = Some((
            error.name().map(str::to_owned),
            error.client().map(|c| c.as_str().to_owned()),
            error.budget(),
        ));
        self.0.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl Hook {
    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Option<Named> {
        self.0.last.lock().unwrap().clone()
    }
}

/// How long a poll answered by the watchdog may take to give its thread
/// back, on a loaded machine (as in `inline.rs`).
const GRACE: Duration = Duration::from_secs(5);

fn spin_until_answered() {
    let start = Instant::now();
    while curfew::checkpoint().is_ok() && start.elapsed() < Duration::from_secs(5) {
        std::hint::spin_loop();
    }
}

fn name(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn runtime(policy: Option<ClientPolicy>) -> curfew::Runtime {
    let mut b = curfew::Runtime::builder()
        .event_threads(1)
        .hijack_grace(GRACE)
        .poll_budget(Duration::from_secs(10));
    if let Some(p) = policy {
        b = b.client_policy(p);
    }
    b.build().unwrap()
}

#[test]
fn successive_runs_give_their_outputs_under_their_own_names_and_clients() {
    let rt = runtime(None);
    let hook = Hook::default();
    let h = hook.clone();
    let seen = rt
        .block_on(rt.spawn(async move {
            let scope = InlineScope::new();
            let (a, b) = (name("/a"), name("/b"));
            let (x, y) = (
                ClientKey::from("198.51.100.1"),
                ClientKey::from("198.51.100.2"),
            );
            let mut seen = Vec::new();
            // The same name and client twice (the header is reset in
            // place), then a new name, then a new client, then no client.
            for (i, (n, c)) in [
                (&a, Some(&x)),
                (&a, Some(&x)),
                (&b, Some(&x)),
                (&b, Some(&y)),
                (&a, None),
            ]
            .into_iter()
            .enumerate()
            {
                let mut run = std::pin::pin!(scope.inline_with(
                    n,
                    c,
                    None,
                    move || async move {
                        curfew::task::yield_now().await;
                        i
                    },
                    h.clone(),
                ));
                let out = run.as_mut().await.unwrap();
                seen.push((
                    out,
                    run.name().map(str::to_owned),
                    run.client().map(|c| c.as_str().to_owned()),
                ));
            }
            seen
        }))
        .unwrap();
    let x = Some("198.51.100.1".to_owned());
    let y = Some("198.51.100.2".to_owned());
    let a = Some("/a".to_owned());
    let b = Some("/b".to_owned());
    assert_eq!(
        seen,
        vec![
            (0, a.clone(), x.clone()),
            (1, a.clone(), x.clone()),
            (2, b.clone(), x),
            (3, b, y),
            (4, a, None),
        ]
    );
    assert_eq!(hook.calls(), 0);
}

#[test]
fn each_run_keeps_its_own_budget_and_hook() {
    let rt = runtime(None);
    let (first, second) = (Hook::default(), Hook::default());
    let (f, s) = (first.clone(), second.clone());
    let (slow_but_in_time, overran) = rt
        .block_on(rt.spawn(async move {
            let scope = InlineScope::new();
            let n = name("/search");
            let key = ClientKey::from("198.51.100.3");
            // 60 ms of work under a 10 s budget, then the same scope (its
            // header reset in place) under 20 ms.
            let slow = scope
                .inline_with(
                    &n,
                    Some(&key),
                    Some(Duration::from_secs(10)),
                    || async {
                        let start = Instant::now();
                        while start.elapsed() < Duration::from_millis(60) {
                            std::hint::spin_loop();
                        }
                        1
                    },
                    f,
                )
                .await;
            let overran = scope
                .inline_with(
                    &n,
                    Some(&key),
                    Some(Duration::from_millis(20)),
                    || async { spin_until_answered() },
                    s,
                )
                .await;
            (slow, overran)
        }))
        .unwrap();
    assert_eq!(slow_but_in_time.unwrap(), 1);
    let err = overran.unwrap_err();
    assert_eq!(err.timeout().unwrap().budget(), Duration::from_millis(20));
    assert_eq!(first.calls(), 0, "the first run's hook is not the second's");
    assert_eq!(second.calls(), 1);
    assert_eq!(
        second.last(),
        Some((
            Some("/search".to_owned()),
            Some("198.51.100.3".to_owned()),
            Duration::from_millis(20)
        ))
    );
}

#[test]
fn after_a_timeout_the_scope_makes_fresh_scopes_that_are_still_watched() {
    let rt = runtime(None);
    let hooks = [Hook::default(), Hook::default(), Hook::default()];
    let hs = hooks.clone();
    let (outs, debug) = rt
        .block_on(rt.spawn(async move {
            let scope = InlineScope::new();
            let n = name("/spin");
            let mut outs = Vec::new();
            for (i, h) in hs.into_iter().enumerate() {
                let spin = i != 1;
                let r = scope
                    .inline_with(
                        &n,
                        None,
                        Some(Duration::from_millis(20)),
                        move || async move {
                            if spin {
                                spin_until_answered();
                            }
                        },
                        h,
                    )
                    .await;
                outs.push(r.map_err(|e| e.is_timeout()));
            }
            (outs, format!("{scope:?}"))
        }))
        .unwrap();
    assert_eq!(outs, vec![Err(true), Ok(()), Err(true)]);
    assert_eq!(
        hooks.iter().map(Hook::calls).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
    assert!(debug.contains("spent: true"), "{debug}");
}

#[test]
fn a_second_run_while_the_first_exists_is_a_scope_of_its_own() {
    let rt = runtime(None);
    let (a, b, debug) = rt
        .block_on(rt.spawn(async {
            let scope = InlineScope::new();
            let n = name("/twice");
            let first = scope.inline_with(&n, None, None, || async { 1 }, Hook::default());
            let busy = format!("{scope:?}");
            let second = scope.inline_with(&n, None, None, || async { 2 }, Hook::default());
            let (a, b) = futures::join!(first, second);
            (a, b, busy)
        }))
        .unwrap();
    assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    assert!(debug.contains("busy: true"), "{debug}");
}

#[test]
fn a_run_dropped_before_it_resolves_leaves_the_scope_spent_not_stuck() {
    let rt = runtime(None);
    let (debug, after) = rt
        .block_on(rt.spawn(async {
            let scope = InlineScope::new();
            let n = name("/dropped");
            {
                let mut run = Box::pin(scope.inline_with(
                    &n,
                    None,
                    None,
                    curfew::task::yield_now,
                    Hook::default(),
                ));
                // One poll (the future yields), then dropped.
                let pending = futures::poll!(run.as_mut());
                assert!(pending.is_pending());
            }
            let debug = format!("{scope:?}");
            let after = scope
                .inline_with(&n, None, None, || async { 5 }, Hook::default())
                .await;
            (debug, after)
        }))
        .unwrap();
    assert!(
        debug.contains("busy: false") && debug.contains("spent: true"),
        "{debug}"
    );
    assert_eq!(after.unwrap(), 5);
}

#[test]
fn a_remembered_admission_does_not_outlast_a_cool_off() {
    // A client admitted through the scope, then struck by one of its own
    // tasks elsewhere: the scope's next run for it is refused, and its
    // future never made.
    let rt = runtime(Some(ClientPolicy::new(1, Duration::from_secs(60))));
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let (first, struck, refused, other) = rt
        .block_on(rt.spawn(async move {
            let scope = InlineScope::new();
            let n = name("/lookup");
            let key = ClientKey::from("198.51.100.9");
            let first = scope
                .inline_with(&n, Some(&key), None, || async { 1 }, Hook::default())
                .await;
            let struck = Builder::new()
                .client(key.clone())
                .poll_budget(Duration::from_millis(20))
                .inline(async { spin_until_answered() }, Hook::default())
                .await;
            let refused = scope
                .inline_with(
                    &n,
                    Some(&key),
                    None,
                    || {
                        m.fetch_add(1, Ordering::SeqCst);
                        async { 2 }
                    },
                    Hook::default(),
                )
                .await;
            // A refusal does not spend the scope: another client's run
            // reuses it.
            let other_key = ClientKey::from("198.51.100.10");
            let other = scope
                .inline_with(&n, Some(&other_key), None, || async { 3 }, Hook::default())
                .await;
            (first, struck, refused, other)
        }))
        .unwrap();
    assert_eq!(first.unwrap(), 1);
    assert!(struck.unwrap_err().is_timeout());
    let refused = refused.unwrap_err();
    assert!(refused.is_refused(), "{refused}");
    assert_eq!(made.load(Ordering::SeqCst), 0, "made for a refused run");
    assert_eq!(other.unwrap(), 3);
}

#[test]
fn a_scope_and_its_futures_are_send_and_sync_as_their_parts_are() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Sync>(_: &T) {}
    let scope = InlineScope::<Hook>::new();
    send(&scope);
    sync(&scope);
    let n = name("/send");
    let f = scope.inline_with(&n, None, None, || async { 1 }, Hook::default());
    send(&f);
}

#[test]
fn off_a_curfew_thread_the_scope_runs_its_futures_unwatched() {
    let scope = InlineScope::new();
    let n = name("/outside");
    let out = futures::executor::block_on(scope.inline_with(
        &n,
        None,
        None,
        || async { 9 },
        Hook::default(),
    ));
    assert_eq!(out.unwrap(), 9);
    assert!(format!("{scope:?}").contains("busy: false"));
}

#[test]
fn a_hook_kept_from_run_to_run_answers_a_later_runs_timeout() {
    let rt = runtime(None);
    let hook = Hook::default();
    let h = hook.clone();
    let (made, out) = rt
        .block_on(rt.spawn(async move {
            let scope = InlineScope::new();
            let n = name("/kept");
            let mut made = 0;
            let mut out = Vec::new();
            for i in 0..3 {
                // Made on the first run only; kept after that.
                let prepared =
                    scope.prepare_with(&n, None, Some(Duration::from_millis(20)), |last| {
                        last.is_none().then(|| {
                            made += 1;
                            h.clone()
                        })
                    });
                let r = prepared
                    .inline_with(move || async move {
                        if i == 2 {
                            spin_until_answered();
                        }
                        i
                    })
                    .await;
                out.push(r.map_err(|e| e.is_timeout()));
            }
            (made, out)
        }))
        .unwrap();
    assert_eq!(made, 1);
    assert_eq!(out, vec![Ok(0), Ok(1), Err(true)]);
    assert_eq!(hook.calls(), 1, "the kept hook answered the third run");
}

#[test]
#[should_panic(expected = "a hook made when there was none to keep")]
fn a_hook_must_be_made_when_there_is_none_to_keep() {
    let rt = runtime(None);
    let scope = InlineScope::<Hook>::new();
    let n = name("/none");
    rt.block_on(async move {
        let _ = scope.prepare_with(&n, None, None, |_| None);
    });
}
