//! The blocking pool: many no-op `spawn_blocking` calls from several tasks,
//! curfew's worker pool against tokio's blocking pool, each with 4 threads
//! (curfew's default pool size; tokio's is capped to match).
//!
//! * `blocking_burst`: 4 tasks each spawn 250 no-op jobs, then await them
//!   all (throughput of the queue and the pool).
//! * `blocking_roundtrip`: 4 tasks each run 100 no-op jobs one after the
//!   other, awaiting each (latency of a round trip through the pool).
//!
//! ```text
//! cargo bench --bench blocking
//! ```

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

const POOL_THREADS: usize = 4;
const CALLERS: usize = 4;

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common::threads())
        .max_blocking_threads(POOL_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn curfew_rt() -> curfew::Runtime {
    common::curfew_builder()
        .blocking_threads(POOL_THREADS)
        .build()
        .expect("curfew runtime")
}

fn blocking_burst(c: &mut Criterion) {
    const JOBS: usize = 250;
    let mut g = c.benchmark_group("blocking_burst");
    {
        let rt = tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            tokio::spawn(async {
                                let jobs: Vec<_> = (0..JOBS)
                                    .map(|_| tokio::task::spawn_blocking(|| {}))
                                    .collect();
                                for j in jobs {
                                    j.await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                })
            })
        });
    }
    {
        let rt = curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            curfew::spawn(async {
                                let jobs: Vec<_> =
                                    (0..JOBS).map(|_| curfew::spawn_blocking(|| {})).collect();
                                for j in jobs {
                                    j.await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

fn blocking_roundtrip(c: &mut Criterion) {
    const JOBS: usize = 100;
    let mut g = c.benchmark_group("blocking_roundtrip");
    {
        let rt = tokio_rt();
        g.bench_function("tokio", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            tokio::spawn(async {
                                for _ in 0..JOBS {
                                    tokio::task::spawn_blocking(|| {}).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                })
            })
        });
    }
    {
        let rt = curfew_rt();
        g.bench_function("curfew", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let callers: Vec<_> = (0..CALLERS)
                        .map(|_| {
                            curfew::spawn(async {
                                for _ in 0..JOBS {
                                    curfew::spawn_blocking(|| {}).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for c in callers {
                        c.await.unwrap();
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = blocking;
    config = common::criterion();
    targets = blocking_burst, blocking_roundtrip
}
criterion_main!(blocking);
