//! Errors at build time: a bad URL, a server that cannot be reached, a
//! wrong password.

use std::fmt;

/// Why a store or a limiter could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a Redis URL.
    Url {
        /// The URL as given, with any password hidden.
        url: String,
        /// What is wrong with it.
        source: redis::RedisError,
    },
    /// The server could not be reached, refused the credentials, or did not
    /// answer within the connect timeout.
    Connect {
        /// The URL, with any password hidden.
        url: String,
        /// What the server or the network said.
        source: redis::RedisError,
    },
    /// The store's background thread could not start.
    Thread(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url { url, source } => write!(f, "invalid Redis URL {url:?}: {source}"),
            Error::Connect { url, source } => {
                let why = if is_auth(source) {
                    "authentication failed (wrong password or user?)"
                } else if source.is_timeout() {
                    "no answer within the connect timeout"
                } else if source.is_io_error() || source.is_connection_refusal() {
                    "cannot connect"
                } else {
                    "the server refused the connection"
                };
                write!(f, "Redis at {url}: {why}: {source}")
            }
            Error::Thread(e) => write!(f, "cannot start the Redis store's thread: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Url { source, .. } | Error::Connect { source, .. } => Some(source),
            Error::Thread(e) => Some(e),
        }
    }
}

impl Error {
    /// Whether the server refused the credentials.
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Connect { source, .. } if is_auth(source))
    }
}

fn is_auth(e: &redis::RedisError) -> bool {
    let s = e.to_string();
    s.contains("WRONGPASS")
        || s.contains("NOAUTH")
        || s.contains("invalid password")
        || s.contains("Authentication")
        || matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
}

/// `url` with the password (between `:` and `@` after the scheme) hidden.
pub(crate) fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.rsplit_once('@') {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}
