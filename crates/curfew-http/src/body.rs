//! The request body under [`serve`](crate::serve): hyper's body, with a
//! progress timeout and a share of the server's budget of body bytes in
//! flight.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request body as [`serve`](crate::serve) hands it to the service.
///
/// It fails with a [`BodyError`] when the client sends nothing for the
/// server's body timeout, or when a body of unknown length grows past the
/// server's budget of body bytes in flight. Extractors that buffer a body,
/// such as axum's `Bytes` or `Json`, turn such a failure into `400 Bad
/// Request`.
#[pin_project::pin_project]
pub struct Body {
    #[pin]
    inner: Incoming,
    timeout: Option<Duration>,
    /// The stall timer, made on the first stall and reset on later ones.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
    /// This request's share of the byte budget; `None` without a budget.
    reservation: Option<Arc<Reservation>>,
    /// Whether bytes are reserved as they arrive (no declared length).
    count_frames: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Body {
    pub(crate) fn new(
        inner: Incoming,
        timeout: Option<Duration>,
        reservation: Option<Arc<Reservation>>,
        count_frames: bool,
    ) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
            reservation,
            count_frames,
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyError {
    /// The connection failed, or the body was malformed (a bad chunk size,
    /// a truncated chunk).
    Hyper(hyper::Error),
    /// The client sent nothing for the server's body timeout.
    Stalled {
        /// The body timeout.
        timeout: Duration,
    },
    /// The body (of undeclared length) grew past the server's budget of
    /// body bytes in flight.
    OverBudget {
        /// The server's budget in bytes.
        budget: usize,
    },
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Hyper(e) => write!(f, "cannot read the request body: {e}"),
            BodyError::Stalled { timeout } => {
                write!(f, "the request body made no progress for {timeout:?}")
            }
            BodyError::OverBudget { budget } => write!(
                f,
                "the server's budget of {budget} request body bytes in flight is spent"
            ),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Hyper(e) => Some(e),
            _ => None,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                if *this.count_frames {
                    if let (Some(data), Some(r)) = (frame.data_ref(), this.reservation.as_ref()) {
                        if !r.grow(data.len()) {
                            return Poll::Ready(Some(Err(BodyError::OverBudget {
                                budget: r.budget.limit,
                            })));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some(timeout) = *this.timeout else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::now() + timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !*this.armed {
                    sleep.as_mut().reset(deadline);
                    *this.armed = true;
                }
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Stalled { timeout })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;

/// The server's budget of request body bytes in flight.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    in_flight: AtomicUsize,
    pub(crate) limit: usize,
}

impl BodyBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            limit,
        }
    }

    fn try_take(&self, n: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Reserves `n` bytes for a request, or `None` if they do not fit.
    pub(crate) fn reserve(self: &Arc<Self>, n: usize) -> Option<Arc<Reservation>> {
        self.try_take(n).then(|| {
            Arc::new(Reservation {
                budget: self.clone(),
                bytes: AtomicUsize::new(n),
            })
        })
    }

    /// Bytes reserved now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request's bytes of the budget, given back when both its body and
/// its response future are gone (a handler may hold the bytes it read until
/// it answers).
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: AtomicUsize,
}

impl Reservation {
    fn grow(&self, n: usize) -> bool {
        let ok = self.budget.try_take(n);
        if ok {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        ok
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .in_flight
            .fetch_sub(*self.bytes.get_mut(), Ordering::AcqRel);
    }
}
