//! Entering a runtime on a thread curfew does not own.

use std::marker::PhantomData;

use crate::context::{self, RuntimeGuard};
use crate::runtime::Handle;

/// Keeps a runtime entered on the current thread; see [`Handle::enter`].
#[must_use = "the runtime is entered only while the guard lives"]
pub struct EnterGuard {
    _guard: RuntimeGuard,
    /// Entered per thread: the guard must be dropped where it was made.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for EnterGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnterGuard").finish_non_exhaustive()
    }
}

impl Handle {
    /// Makes this runtime the target of [`curfew::spawn`](crate::spawn) and
    /// [`curfew::spawn_blocking`](crate::spawn_blocking) on the current
    /// thread until the guard is dropped (the previous target comes back).
    ///
    /// For threads of another runtime that spawn handlers, such as a tokio
    /// runtime that serves connections: enter the curfew runtime in its
    /// `on_thread_start` hook and keep the guard for the thread's life.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let rt = curfew::Runtime::builder().event_threads(1).build()?;
    /// let handle = rt.handle();
    /// let io = tokio::runtime::Builder::new_multi_thread()
    ///     .worker_threads(1)
    ///     .on_thread_start(move || std::mem::forget(handle.enter()))
    ///     .build()?;
    /// let spawned = io.block_on(io.spawn(async { curfew::spawn(async { 7 }).await }))??;
    /// assert_eq!(spawned, 7);
    /// assert_eq!(rt.metrics().event.spawned, 1); // on `rt`, not the default runtime
    /// # Ok(()) }
    /// ```
    pub fn enter(&self) -> EnterGuard {
        EnterGuard {
            _guard: context::enter_runtime(self.clone()),
            _not_send: PhantomData,
        }
    }
}
