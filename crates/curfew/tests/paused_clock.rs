//! A `#[tokio::test]` that pauses time keeps tokio's ordering when it spawns
//! with `curfew::spawn`: the tasks run on the test's own current-thread
//! runtime, and are still held to their budgets on the real clock.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;

type Log = Arc<Mutex<Vec<&'static str>>>;

fn entries(log: &Log) -> Vec<&'static str> {
    log.lock().unwrap().clone()
}

/// The scenario of an application's server test: a per-connection handler
/// (spawned where it used `tokio::spawn`) accepts, then drops an idle client
/// after five seconds of paused time. The test checks each step as the
/// current-thread runtime orders it. Before, the handler ran on another
/// thread and raced the test (2 runs in 20 passed); 100 rounds in one test
/// now pass every time.
#[tokio::test]
async fn a_paused_test_sees_the_order_it_saw_with_tokio_spawn() {
    tokio::time::pause();
    let test_thread = std::thread::current().id();
    for round in 0..100 {
        let log: Log = Arc::default();
        let start = TokioInstant::now();
        let handler = curfew::spawn({
            let log = log.clone();
            async move {
                log.lock().unwrap().push("accepted");
                tokio::time::sleep(Duration::from_secs(5)).await;
                log.lock().unwrap().push("dropped the idle client");
                (std::thread::current().id(), start.elapsed())
            }
        });
        assert!(
            entries(&log).is_empty(),
            "round {round}: ran before the test yielded"
        );
        tokio::task::yield_now().await;
        assert_eq!(entries(&log), ["accepted"], "round {round}");
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(entries(&log), ["accepted"], "round {round}: woke early");
        // The test's own timer is due after the handler's: auto-advance
        // fires them in that order.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            entries(&log),
            ["accepted", "dropped the idle client"],
            "round {round}"
        );
        let (ran_on, woke_at): (ThreadId, Duration) = handler.await.unwrap();
        assert_eq!(ran_on, test_thread, "round {round}");
        // Paused time: the handler woke at its deadline (tokio rounds
        // deadlines up to the millisecond), not a tick of real time later.
        assert!(
            woke_at >= Duration::from_secs(5) && woke_at <= Duration::from_millis(5_001),
            "round {round}: {woke_at:?}"
        );
    }
}

/// A blocking job keeps the paused clock from auto-advancing while it runs,
/// as `tokio::task::spawn_blocking` does: a timeout around it does not fire
/// in paused time while the job works in real time. Before, the job ran on
/// curfew's pool, the test's runtime went idle, and the clock jumped to the
/// timeout at once.
#[tokio::test(start_paused = true)]
async fn a_blocking_job_holds_the_paused_clock() {
    for round in 0..20 {
        let start = TokioInstant::now();
        let job = curfew::spawn_blocking(|| {
            std::thread::sleep(Duration::from_millis(5));
            7
        });
        let out = tokio::time::timeout(Duration::from_secs(1), job).await;
        assert_eq!(
            out.expect("the clock auto-advanced past the timeout while the job ran")
                .unwrap(),
            7,
            "round {round}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "round {round}");
    }
}

/// Budgets still hold, on the real clock: a poll that returns past its
/// budget resolves its handle with the timeout (its output dropped), and a
/// checkpoint past the budget stops a loop.
#[tokio::test(start_paused = true)]
async fn hosted_tasks_are_held_to_their_budgets() {
    let budget = Duration::from_millis(20);
    let spin = curfew::task::Builder::new()
        .name("spin")
        .poll_budget(budget)
        .spawn(async move {
            let t = Instant::now();
            while t.elapsed() < budget * 3 {
                std::hint::spin_loop();
            }
            "finished late"
        });
    let err = spin.await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let t = err.timeout().unwrap();
    assert_eq!(t.budget(), budget);
    assert!(t.elapsed() >= budget, "{t}");
    assert_eq!(t.location(), curfew::Location::EventThread);

    let cooperative = curfew::task::Builder::new()
        .poll_budget(budget)
        .spawn(async {
            let mut n = 0u64;
            loop {
                n += 1;
                if let Err(e) = curfew::checkpoint() {
                    return (n, e);
                }
            }
        });
    // The loop returned on its own: the handle holds the timeout.
    let err = cooperative.await.unwrap_err();
    assert!(err.is_timeout(), "{err}");

    let job = curfew::task::Builder::new()
        .job_budget(budget)
        .spawn_blocking(move || {
            let t = Instant::now();
            while t.elapsed() < budget * 100 {
                curfew::checkpoint()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok::<_, curfew::TimeoutError>(())
        });
    let err = job.await.unwrap_err();
    assert_eq!(
        err.timeout().map(|t| t.location()),
        Some(curfew::Location::WorkerPool),
        "{err}"
    );

    // A task within its budget is answered normally.
    assert_eq!(curfew::spawn(async { 5 }).await.unwrap(), 5);
}

/// An unpaused current-thread test is not hosted: its tasks run on curfew's
/// event threads under the watchdog, as in production.
#[tokio::test]
async fn an_unpaused_test_runs_tasks_on_curfew_threads() {
    let name = curfew::spawn(async { std::thread::current().name().map(str::to_owned) })
        .await
        .unwrap();
    assert!(name.unwrap().starts_with("curfew"));
}
