//! `Builder::blocking_nice`: worker-pool threads run that much below the
//! event threads, which keep the process's own priority.
#![cfg(target_os = "linux")]

/// The calling thread's nice value, from `/proc/thread-self/stat`.
fn nice_of_this_thread() -> i32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Field 19 is the nice value; fields 3.. follow the `)` that ends the
    // command name.
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn pool_threads_run_at_the_nice_value_asked_for() {
    let base = nice_of_this_thread();
    let rt = curfew::Runtime::builder()
        .event_threads(1)
        .blocking_threads(2)
        .blocking_nice(7)
        .build()
        .unwrap();
    let in_job = rt.block_on(rt.spawn_blocking(nice_of_this_thread)).unwrap();
    let in_task = rt
        .block_on(rt.spawn(async { nice_of_this_thread() }))
        .unwrap();
    // Lowering priority needs no privilege, so this holds for any user.
    assert_eq!(in_job, (base + 7).min(19), "pool thread's nice");
    assert_eq!(in_task, base, "event thread's nice");
}

#[test]
fn a_nice_value_outside_0_to_19_is_a_build_error() {
    for bad in [-1, 20, i32::MIN] {
        let err = curfew::Runtime::builder()
            .blocking_nice(bad)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "blocking_nice");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
    }
}
