//! What the watchdog costs per poll.
//!
//! * `watchdog_yield_many`: tokio's `yield_many` (200 tasks x 1,000
//!   yields) on tokio, on curfew with its default budgets, and on curfew
//!   with `no_default_budgets()`. The watchdog protocol runs on every poll
//!   in both curfew cases (budgets off only means no poll is ever over
//!   budget), so the two curfew rows should match; the gap to tokio is the
//!   scheduler plus the protocol.
//! * `poll_loop`: one thread, one task, 10,000 yields: the cost of one
//!   poll round trip (poll, wake, requeue, pop) with nothing else running.
//!   Per-poll time = time / 10,000.
//! * `slot_protocol_model`: the per-poll protocol alone, as curfew's
//!   `context::poll_under_watchdog` does it (a thread-local access, two
//!   relaxed stores and a release store before the poll, a compare-exchange
//!   and a counter bump after), against an empty loop. It is a model built
//!   from the same atomic operations on the same kind of data, not curfew's
//!   code, and so a lower bound on the real cost.
//!
//! ```text
//! cargo bench --bench watchdog_cost
//! ```

mod common;

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn yield_many(c: &mut Criterion) {
    let mut g = c.benchmark_group("watchdog_yield_many");
    let (tx, rx) = mpsc::sync_channel(common::YIELD_MANY_TASKS);
    {
        let rt = common::tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| common::yield_many_tokio(&rt, &tx, &rx))
        });
    }
    for (name, budgets) in [("curfew", true), ("curfew_no_budgets", false)] {
        let mut b = common::curfew_builder();
        if !budgets {
            b = b.no_default_budgets();
        }
        let rt = b.build().expect("curfew runtime");
        g.bench_function(name, |b| {
            b.iter(|| common::yield_many_curfew(&rt, &tx, &rx))
        });
    }
    g.finish();
}

fn poll_loop(c: &mut Criterion) {
    const POLLS: u64 = 10_000;
    let mut g = c.benchmark_group("poll_loop");
    g.throughput(Throughput::Elements(POLLS));
    let (tx, rx) = mpsc::sync_channel(1);
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        g.bench_function("tokio_1_worker", |b| {
            b.iter(|| {
                let tx = tx.clone();
                rt.spawn(async move {
                    for _ in 0..POLLS {
                        tokio::task::yield_now().await;
                    }
                    tx.send(()).unwrap();
                });
                rx.recv().unwrap();
            })
        });
    }
    for (name, budgets) in [
        ("curfew_1_thread", true),
        ("curfew_1_thread_no_budgets", false),
    ] {
        let mut b = common::curfew_builder().event_threads(1);
        if !budgets {
            b = b.no_default_budgets();
        }
        let rt = b.build().expect("curfew runtime");
        g.bench_function(name, |b| {
            b.iter(|| {
                let tx = tx.clone();
                rt.spawn(async move {
                    for _ in 0..POLLS {
                        curfew::task::yield_now().await;
                    }
                    tx.send(()).unwrap();
                });
                rx.recv().unwrap();
            })
        });
    }
    g.finish();
}

/// The slot of the model: the same fields curfew's slot has on its hot path.
struct ModelSlot {
    current: AtomicPtr<u64>,
    client: AtomicU32,
    word: AtomicU64,
    polls: AtomicU64,
}

thread_local! {
    static WORKER: Cell<*const ModelSlot> = const { Cell::new(std::ptr::null()) };
}

fn slot_protocol_model(c: &mut Criterion) {
    const POLLS: u64 = 1_000;
    let mut g = c.benchmark_group("slot_protocol_model");
    g.throughput(Throughput::Elements(POLLS));
    let slot = Box::new(ModelSlot {
        current: AtomicPtr::new(std::ptr::null_mut()),
        client: AtomicU32::new(0),
        word: AtomicU64::new(0),
        polls: AtomicU64::new(0),
    });
    WORKER.with(|w| w.set(&*slot));
    let mut header = 0u64;
    g.bench_function("empty_poll", |b| {
        b.iter(|| {
            for i in 0..POLLS {
                black_box(i);
            }
        })
    });
    g.bench_function("empty_poll_with_protocol", |b| {
        b.iter(|| {
            for i in 0..POLLS {
                WORKER.with(|w| {
                    // SAFETY: set above to a slot that outlives the bench.
                    let s = unsafe { &*w.get() };
                    let seq = i as u32;
                    let running = (u64::from(seq) << 32) | (100_000 << 3) | 1;
                    s.current.store(&mut header, Ordering::Relaxed);
                    s.client.store(0, Ordering::Relaxed);
                    s.word.store(running, Ordering::Release);
                    black_box(i);
                    let ok = s
                        .word
                        .compare_exchange(
                            running,
                            u64::from(seq) << 32,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok();
                    black_box(ok);
                    s.polls
                        .store(s.polls.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                })
            }
        })
    });
    g.finish();
    WORKER.with(|w| w.set(std::ptr::null()));
}

criterion_group! {
    name = watchdog_cost;
    config = common::criterion();
    targets = yield_many, poll_loop, slot_protocol_model
}
criterion_main!(watchdog_cost);
