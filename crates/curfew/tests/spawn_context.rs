//! Where `curfew::spawn` puts a task when it is called outside a curfew
//! runtime: a panic outside any runtime (`rt.block_on(curfew::spawn(f))`
//! would otherwise run `f` on the default runtime, unseen), the default
//! runtime inside a tokio runtime.

use std::panic::{AssertUnwindSafe, catch_unwind};

fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("it must panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_names_the_fix(msg: &str, what: &str) {
    assert!(msg.contains(what), "{msg}");
    assert!(msg.contains("Runtime::spawn"), "{msg}");
    assert!(msg.contains("Handle::spawn"), "{msg}");
}

#[test]
fn spawning_outside_any_runtime_panics_and_names_the_fix() {
    let rt = curfew::Runtime::builder().event_threads(1).build().unwrap();
    // The mistake of the issue: the argument is evaluated before `block_on`
    // enters `rt`.
    let msg = panic_message(|| {
        let _ = rt.block_on(curfew::spawn(async { 1 }));
    });
    assert_names_the_fix(&msg, "curfew::spawn");
    assert!(msg.contains("rt.block_on(rt.spawn(f))"), "{msg}");

    let msg = panic_message(|| drop(curfew::spawn_blocking(|| 1)));
    assert_names_the_fix(&msg, "curfew::spawn_blocking");
    let msg = panic_message(|| drop(curfew::task::Builder::new().spawn(async {})));
    assert_names_the_fix(&msg, "curfew::task::Builder::spawn");
    let msg = panic_message(|| drop(curfew::task::Builder::new().spawn_blocking(|| ())));
    assert_names_the_fix(&msg, "curfew::task::Builder::spawn_blocking");

    // What the message recommends works, and so does `curfew::spawn`
    // inside the future given to `block_on`.
    assert_eq!(rt.block_on(rt.spawn(async { 1 })).unwrap(), 1);
    assert_eq!(rt.block_on(rt.handle().spawn_blocking(|| 2)).unwrap(), 2);
    let on = rt.block_on(async {
        curfew::spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap()
    });
    assert!(on.unwrap().starts_with("curfew"));
    // None of this started a runtime other than `rt`: every task ran there.
    assert_eq!(rt.metrics().event.spawned, 2);
}

/// Inside a tokio runtime (unpaused), `curfew::spawn` is the drop-in: the
/// task runs on the default runtime's threads, not the caller's.
#[test]
fn inside_a_tokio_runtime_spawn_uses_the_default_runtime() {
    for rt in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ] {
        let name = rt.block_on(async {
            curfew::spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap()
        });
        assert!(name.unwrap().starts_with("curfew"));
    }
}
