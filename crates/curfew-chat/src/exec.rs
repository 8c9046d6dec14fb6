//! Where a message's handler runs: a curfew task under the poll budget, or
//! (`--no-budgets`, for comparison only) inline on tokio.
//!
//! Under curfew each handler is spawned with
//! `curfew::task::Builder::new().name("chat.message").client(user).poll_budget(budget)`,
//! and a CPU-bound one (the search) runs on the worker pool with
//! `.job_budget(budget).spawn_blocking_on(..)`. A poll or job that overruns
//! the budget is answered at once with a timeout while it is still
//! running, its thread is written off and replaced, and the
//! user collects a strike; with `--strikes` of them the runtime's client
//! policy refuses the user's handlers for `--cool-off`. Inline on tokio, the
//! same poll holds a tokio worker until it returns, and with as many
//! poisoned searches as workers every room stops.

use std::future::Future;
use std::time::Duration;

use curfew::{ClientKey, Refusal};

/// How a handler did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It overran its poll budget.
    Timeout,
    /// The user is cooling off; how long is left, if known.
    Refused(Option<Duration>),
    /// It panicked.
    Panic,
}

/// Runs handlers.
#[derive(Debug, Clone)]
pub enum Exec {
    /// As curfew tasks on this runtime, each poll under `budget`.
    Curfew {
        /// The runtime.
        handle: curfew::Handle,
        /// The poll budget.
        budget: Duration,
    },
    /// Inline in the connection's tokio task, with no budget.
    Inline,
}

impl Exec {
    /// Runs `fut` as handler `name` (e.g. `chat.search`) for `client`.
    pub async fn run<F>(
        &self,
        name: &'static str,
        client: &ClientKey,
        fut: F,
    ) -> Result<F::Output, Failure>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Exec::Inline => Ok(fut.await),
            Exec::Curfew { handle, budget } => {
                let task = curfew::task::Builder::new()
                    .name(name)
                    .client(client.clone())
                    .poll_budget(*budget)
                    .spawn_on(handle, fut);
                task.await.map_err(failure)
            }
        }
    }

    /// Runs the blocking closure `f` as handler `name` for `client`: on
    /// curfew's worker pool under a job budget equal to the poll budget
    /// (counted from this call), or inline with no budget.
    ///
    /// CPU-bound work such as a search belongs here rather than in
    /// [`run`](Self::run): a poisoned job overruns on a pool thread, so the
    /// event threads that carry every room's messages never stall for its
    /// budget, and the job's caller is answered at the budget all the same.
    pub async fn run_blocking<F, R>(
        &self,
        name: &'static str,
        client: &ClientKey,
        f: F,
    ) -> Result<R, Failure>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Exec::Inline => Ok(f()),
            Exec::Curfew { handle, budget } => curfew::task::Builder::new()
                .name(name)
                .client(client.clone())
                .job_budget(*budget)
                .spawn_blocking_on(handle, f)
                .await
                .map_err(failure),
        }
    }

    /// How long `client` is still refused, under curfew's client policy.
    pub fn cooling_off(&self, client: &ClientKey) -> Option<Duration> {
        match self {
            Exec::Curfew { handle, .. } => handle.cooling_off(client),
            Exec::Inline => None,
        }
    }
}

/// What a handler's `JoinError` means to the client.
fn failure(e: curfew::JoinError) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_refused() {
        Failure::Refused(match e.refusal() {
            Some(Refusal::ClientCoolingOff { remaining, .. }) => Some(*remaining),
            _ => None,
        })
    } else {
        Failure::Panic
    }
}
