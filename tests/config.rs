//! Configuration: each invalid setting returns its error, never a panic.

use std::time::Duration;

use curfew::Runtime;

fn setting_of(b: curfew::Builder) -> &'static str {
    match b.build() {
        Ok(_) => panic!("built with an invalid setting"),
        Err(e) => {
            // The message names the setting and says what is wrong.
            assert!(e.to_string().contains(e.setting()), "{e}");
            e.setting()
        }
    }
}

#[test]
fn each_invalid_setting_is_an_error() {
    let b = Runtime::builder;
    assert_eq!(setting_of(b().event_threads(0)), "event_threads");
    assert_eq!(setting_of(b().event_threads(100_000)), "event_threads");
    assert_eq!(setting_of(b().blocking_threads(0)), "blocking_threads");
    assert_eq!(setting_of(b().poll_budget(Duration::ZERO)), "poll_budget");
    assert_eq!(setting_of(b().job_budget(Duration::ZERO)), "job_budget");
    assert_eq!(
        setting_of(b().poll_budget(Duration::from_micros(50))),
        "poll_budget",
        "a budget below the watchdog's resolution"
    );
    assert_eq!(
        setting_of(b().max_hijacked_threads(0)),
        "max_hijacked_threads"
    );
    assert_eq!(
        setting_of(b().max_abandoned_threads(0)),
        "max_abandoned_threads"
    );
    assert_eq!(setting_of(b().max_blocking_queue(0)), "max_blocking_queue");
    assert_eq!(
        setting_of(b().watchdog_interval(Duration::from_micros(10))),
        "watchdog_interval"
    );
    assert_eq!(
        setting_of(b().watchdog_interval(Duration::from_secs(1))),
        "watchdog_interval"
    );
    assert_eq!(setting_of(b().time_slice(Duration::ZERO)), "time_slice");
    assert_eq!(
        setting_of(b().hijack_grace(Duration::from_secs(3600))),
        "hijack_grace"
    );
    assert_eq!(setting_of(b().thread_name("")), "thread_name");
    assert_eq!(setting_of(b().thread_name("a\0b")), "thread_name");
    assert_eq!(setting_of(b().thread_stack_size(1024)), "thread_stack_size");
    assert_eq!(
        setting_of(b().max_tracked_clients(0)),
        "max_tracked_clients"
    );
    let p = curfew::policy::ClientPolicy::new;
    assert_eq!(
        setting_of(b().client_policy(p(0, Duration::from_secs(1)))),
        "client_policy"
    );
    assert_eq!(
        setting_of(b().client_policy(p(3, Duration::ZERO))),
        "client_policy"
    );
}

#[test]
fn hijack_cap_error_explains_itself() {
    let e = Runtime::builder()
        .max_hijacked_threads(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("replacement"), "{e}");
}

#[test]
fn valid_settings_build() {
    let rt = Runtime::builder()
        .event_threads(1)
        .blocking_threads(1)
        .poll_budget(Duration::from_millis(1))
        .job_budget(Duration::from_secs(30))
        .max_hijacked_threads(1)
        .max_abandoned_threads(1)
        .max_blocking_queue(1)
        .watchdog_interval(Duration::from_micros(100))
        .hijack_grace(Duration::ZERO)
        .thread_name("cfg")
        .build()
        .unwrap();
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
    let m = rt.metrics();
    assert_eq!(m.event.healthy_threads, 1);
    assert_eq!(m.blocking.healthy_threads, 1);
}

#[test]
fn settings_come_from_the_environment() {
    // SAFETY: this test binary's tests run one per process under nextest;
    // under `cargo test` no other test here reads or writes these variables.
    unsafe {
        std::env::set_var("CURFEW_POLL_BUDGET_MS", "soon");
    }
    let e = Runtime::builder().from_env().build().unwrap_err();
    assert_eq!(e.setting(), "CURFEW_POLL_BUDGET_MS");
    assert!(e.to_string().contains("soon"));
    // SAFETY: as above.
    unsafe {
        std::env::set_var("CURFEW_POLL_BUDGET_MS", "0");
    }
    assert_eq!(
        Runtime::builder().from_env().build().unwrap_err().setting(),
        "poll_budget"
    );
    // SAFETY: as above.
    unsafe {
        std::env::set_var("CURFEW_POLL_BUDGET_MS", "7");
        std::env::set_var("CURFEW_EVENT_THREADS", "1");
    }
    let rt = Runtime::builder().from_env().build().unwrap();
    let h = rt.spawn(async { curfew_suite::spin_until_timed_out(Duration::from_secs(20)) });
    let err = rt.block_on(h).unwrap_err();
    assert_eq!(err.timeout().unwrap().budget(), Duration::from_millis(7));
    assert_eq!(rt.metrics().event.healthy_threads, 1);
    // SAFETY: as above.
    unsafe {
        std::env::remove_var("CURFEW_POLL_BUDGET_MS");
        std::env::remove_var("CURFEW_EVENT_THREADS");
    }
}

/// Budgets past the longest the watchdog can time are an error, not a
/// silent "unlimited"; every budget up to it builds.
#[test]
fn budgets_up_to_the_longest_build_and_longer_ones_are_errors() {
    let b = Runtime::builder;
    let over = curfew::MAX_BUDGET + Duration::from_secs(1);
    assert_eq!(setting_of(b().poll_budget(over)), "poll_budget");
    assert_eq!(setting_of(b().job_budget(over)), "job_budget");
    assert_eq!(setting_of(b().job_budget(Duration::MAX)), "job_budget");
    for d in [Duration::from_secs(600), curfew::MAX_BUDGET] {
        let rt = b()
            .event_threads(1)
            .blocking_threads(1)
            .poll_budget(d)
            .job_budget(d)
            .build()
            .unwrap();
        drop(rt);
    }
}

/// A per-spawn budget past the longest is capped at it (documented), not
/// refused and not a panic.
#[test]
fn per_spawn_budgets_past_the_longest_are_capped() {
    let rt = Runtime::builder().event_threads(1).build().unwrap();
    let h = rt.handle();
    let long = curfew::task::Builder::new()
        .poll_budget(Duration::MAX)
        .spawn_on(&h, async { curfew::checkpoint() });
    assert!(rt.block_on(long).unwrap().is_ok());
    let job = curfew::task::Builder::new()
        .job_budget(Duration::MAX)
        .spawn_blocking_on(&h, curfew::checkpoint);
    assert!(rt.block_on(job).unwrap().is_ok());
}
