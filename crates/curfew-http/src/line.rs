//! A connection's socket as seen from outside its task, so that a handler
//! run in place on an HTTP/1 connection can be answered while it spins.
//!
//! Under [`serve`](crate::serve), [`CurfewLayer`](crate::CurfewLayer) runs an
//! HTTP/1 request's handler inside the connection's own task (a watched
//! scope, [`curfew::task::Builder::inline`]) rather than as a task of its
//! own: HTTP/1 serves one request at a time, so the connection has nothing
//! else to do meanwhile, and the handler's task, its queueing and the
//! connection's second poll are saved. The price is that a handler that
//! overruns holds the connection's task too, so hyper cannot write the
//! `503`. The watchdog's hook writes it here instead, straight to the
//! socket, and shuts the socket down: the client reads the `503` with
//! `Connection: close`, then the end of the stream.
//!
//! The socket is written only if everything hyper wrote before has been
//! flushed ([`Line::flushed`]); otherwise a `503` would land in the middle
//! of an earlier response (a pipelining client that does not read), and
//! the connection is reset instead. The descriptor is reached by number,
//! under a lock that its closing takes too ([`Line::close`]), so an answer
//! never reaches a reused descriptor.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http_body_util::{BodyExt, Full};

use curfew::ClientKey;

use crate::recent::Recent;

/// One connection's socket, shared by its task and the watchdog's hook.
#[derive(Debug)]
pub(crate) struct Line {
    fd: RawFd,
    /// Everything hyper wrote has been flushed: an answer written now
    /// starts a response of its own.
    clean: AtomicBool,
    /// False once the socket is closing. Held while an answer is written.
    open: Mutex<bool>,
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Written whole, then the sending side shut down.
    Written,
    /// Not written (hyper's own output was not all flushed, or the socket
    /// would not take it): the connection was shut down both ways.
    Reset,
    /// The socket had closed already.
    Closed,
}

/// What a handler's layer finds of the connection [`serve`](crate::serve)
/// is polling on its thread: the socket, the peer's key, made once for the
/// connection, and the peer's keys on the routes of the connection's recent
/// requests.
pub(crate) struct Conn {
    pub(crate) line: Arc<Line>,
    /// The peer's address, canonical (`IpAddr::to_canonical`).
    pub(crate) peer_ip: IpAddr,
    /// [`crate::key::ip_key`] of `peer_ip`.
    pub(crate) peer_key: ClientKey,
    /// Task names and the peer's keys on them, by route: bounded (the
    /// oldest goes), and reached only from the connection's own polls.
    routes: RefCell<Recent<(Arc<str>, ClientKey), ROUTES_PER_CONNECTION>>,
    /// The watched scope the connection's requests run in, one at a time
    /// (`CurfewLayer`'s in-place path): its header is made, and its
    /// client admitted, once while nothing changes.
    pub(crate) scope: curfew::task::InlineScope<crate::layer::Answer>,
}

/// A connection's requests go to a few routes at a time.
const ROUTES_PER_CONNECTION: usize = 4;

impl Conn {
    pub(crate) fn new(line: Arc<Line>, peer_ip: IpAddr) -> Self {
        let peer_ip = peer_ip.to_canonical();
        Self {
            line,
            peer_ip,
            peer_key: crate::key::ip_key(peer_ip),
            routes: RefCell::new(Recent::new()),
            scope: curfew::task::InlineScope::new(),
        }
    }

    /// The task name of `route`, and the peer's key on it (its key with
    /// the route's, `ClientKey::with_route_key`), made with `make` the first
    /// time the connection's requests go there, lent to `f`. `f` must not
    /// reach this connection's routes again (it runs while they are
    /// borrowed): no user code.
    pub(crate) fn with_keys_on_route<R>(
        &self,
        route: &str,
        make: impl Fn(&ClientKey) -> (Arc<str>, ClientKey),
        f: impl FnOnce(&Arc<str>, &ClientKey) -> R,
    ) -> R {
        let mut routes = self.routes.borrow_mut();
        let (name, key) =
            routes.get_or_insert_with(|(name, _)| **name == *route, || make(&self.peer_key));
        f(name, key)
    }
}

thread_local! {
    /// The connection whose task is being polled on this thread, while
    /// [`serve`](crate::serve) polls it.
    static CURRENT: Cell<*const Conn> = const { Cell::new(std::ptr::null()) };
}

/// Puts the previous connection back when a poll ends.
pub(crate) struct Entered(*const Conn);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Makes `conn` the current connection on this thread until the guard
/// drops. The caller keeps `conn` in place and alive meanwhile.
pub(crate) fn enter(conn: &Conn) -> Entered {
    Entered(CURRENT.with(|c| c.replace(conn)))
}

/// `f` of the connection being polled on this thread, if
/// [`serve`](crate::serve) is polling one.
pub(crate) fn with_current<R>(f: impl FnOnce(&Conn) -> R) -> Option<R> {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        return None;
    }
    // SAFETY: `enter` stored a pointer to a `Conn` that the connection's
    // future keeps in place and alive for the whole poll, during which the
    // guard keeps it here; only this thread reads it, and `f` borrows it no
    // longer than this call, which is inside that poll.
    Some(f(unsafe { &*p }))
}

impl Line {
    pub(crate) fn new(fd: RawFd) -> Self {
        Self {
            fd,
            clean: AtomicBool::new(true),
            open: Mutex::new(true),
        }
    }

    /// hyper handed the socket bytes to write.
    #[inline]
    pub(crate) fn wrote(&self) {
        self.clean.store(false, Ordering::Relaxed);
    }

    /// hyper's flush of the socket completed: it holds nothing unwritten.
    #[inline]
    pub(crate) fn flushed(&self) {
        self.clean.store(true, Ordering::Relaxed);
    }

    /// The socket is about to close: no answer may reach its descriptor
    /// from now on. Waits for one being written.
    pub(crate) fn close(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Answers the connection's request with `response` from outside its
    /// task (see the module docs), then shuts the socket down.
    pub(crate) fn answer(&self, response: Response<Full<Bytes>>) -> Answered {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if !*open {
            return Answered::Closed;
        }
        // Read under the lock: the task's writes and flushes happened before
        // the watchdog claimed its poll, which this runs inside.
        if !self.clean.load(Ordering::Relaxed) {
            self.shutdown(libc::SHUT_RDWR);
            return Answered::Reset;
        }
        let bytes = encode(response);
        if self.send_all(&bytes) {
            self.shutdown(libc::SHUT_WR);
            Answered::Written
        } else {
            self.shutdown(libc::SHUT_RDWR);
            Answered::Reset
        }
    }

    /// Sends without blocking; false if the socket did not take it all.
    fn send_all(&self, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            // SAFETY: the descriptor is open (`open` is held, and closing
            // takes it first) and `buf` is valid for its length.
            let n = unsafe {
                libc::send(
                    self.fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                buf = &buf[n as usize..];
            } else if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            } else {
                return false;
            }
        }
        true
    }

    fn shutdown(&self, how: libc::c_int) {
        // SAFETY: as in `send_all`; shutting a socket down does not close
        // its descriptor, which stays the connection's to close.
        unsafe { libc::shutdown(self.fd, how) };
    }
}

/// `response` as HTTP/1.1 bytes, with its length and `Connection: close`.
fn encode(response: Response<Full<Bytes>>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = futures::FutureExt::now_or_never(body.collect())
        .map(|r| match r {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http::header::RETRY_AFTER;

    #[test]
    fn a_connection_makes_its_peers_keys_once_per_route_and_keeps_a_few() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let line = Arc::new(Line::new(std::os::fd::AsRawFd::as_raw_fd(&a)));
        let conn = Conn::new(line, "::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(conn.peer_ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(conn.peer_key, crate::key::ip_key(conn.peer_ip));
        let made = Cell::new(0);
        let keys = |route: &str| {
            conn.with_keys_on_route(
                route,
                |peer| {
                    made.set(made.get() + 1);
                    let key = peer.with_route_key(&ClientKey::route(route));
                    (Arc::from(route), key)
                },
                |name, key| (name.clone(), key.clone()),
            )
        };
        let (name, key) = keys("/a");
        assert_eq!((&*name, &key), ("/a", &conn.peer_key));
        assert_eq!(key.route_key(), Some(ClientKey::route("/a")));
        keys("/a");
        assert_eq!(made.get(), 1, "made again while kept");
        for r in ["/b", "/c", "/d"] {
            assert_eq!(&*keys(r).0, r);
        }
        keys("/a");
        assert_eq!(made.get(), 4, "four routes are kept");
        // A fifth takes the oldest's place: bounded whatever the client asks.
        keys("/e");
        keys("/a");
        assert_eq!(made.get(), 6);
        assert_eq!(conn.routes.borrow().len(), ROUTES_PER_CONNECTION);
    }

    #[test]
    fn an_answer_is_encoded_with_its_length_and_a_close() {
        let mut r = Response::new(Full::new(Bytes::from_static(b"busy\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(RETRY_AFTER, "1".parse().unwrap());
        r.headers_mut()
            .insert(CONNECTION, "keep-alive".parse().unwrap());
        r.headers_mut()
            .insert(CONTENT_LENGTH, "99".parse().unwrap());
        let text = String::from_utf8(encode(r)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 5\r\n\
             connection: close\r\n\r\nbusy\n"
        );
    }

    #[test]
    fn a_closed_line_is_not_written() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let line = Line::new(std::os::fd::AsRawFd::as_raw_fd(&a));
        line.close();
        assert_eq!(
            line.answer(Response::new(Full::default())),
            Answered::Closed
        );
    }

    #[test]
    fn unflushed_output_resets_instead_of_answering() {
        use std::io::Read;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let line = Line::new(std::os::fd::AsRawFd::as_raw_fd(&a));
        line.wrote();
        assert_eq!(line.answer(Response::new(Full::default())), Answered::Reset);
        let mut buf = Vec::new();
        b.read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty(), "nothing was written");
        line.flushed();
        drop(a);
    }

    #[test]
    fn a_clean_line_gets_the_answer_then_its_end() {
        use std::io::Read;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let line = Line::new(std::os::fd::AsRawFd::as_raw_fd(&a));
        line.wrote();
        line.flushed();
        let r = Response::new(Full::new(Bytes::from_static(b"x")));
        assert_eq!(line.answer(r), Answered::Written);
        let mut buf = String::new();
        b.read_to_string(&mut buf).unwrap();
        assert!(buf.starts_with("HTTP/1.1 200 OK\r\n"), "{buf}");
        assert!(buf.ends_with("\r\n\r\nx"), "{buf}");
    }
}
