//! [`Executor`]: hyper's executor on curfew, for HTTP/2 streams and for
//! programs that drive hyper-util themselves.

use std::future::Future;

/// A [`hyper::rt::Executor`] that spawns on curfew, so that the tasks hyper
/// starts (one per HTTP/2 stream) run under the poll budget like the
/// connections that start them.
///
/// [`Executor::new`] spawns on the curfew runtime current at each spawn
/// (else curfew's default runtime); [`Executor::with_handle`] on a given
/// one.
///
/// ```no_run
/// use hyper_util::server::conn::auto;
///
/// # async fn f(stream: tokio::net::TcpStream) {
/// let svc = hyper::service::service_fn(|_req| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("hello")))
/// });
/// let builder = auto::Builder::new(curfew_http::Executor::new());
/// let _ = builder
///     .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
///     .await;
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Executor {
    handle: Option<curfew::Handle>,
}

impl Executor {
    /// Spawns on the current curfew runtime, or curfew's default one.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns on the runtime behind `handle`.
    pub fn with_handle(handle: curfew::Handle) -> Self {
        Self {
            handle: Some(handle),
        }
    }
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let task = curfew::task::Builder::new().name("hyper");
        // Detached: hyper's tasks report through their own channels.
        drop(match &self.handle {
            Some(h) => task.spawn_on(h, fut),
            None => task.spawn(fut),
        });
    }
}
