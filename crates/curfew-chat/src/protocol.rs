//! The wire protocol: text frames of JSON.
//!
//! Client to server ([`ClientFrame`]):
//!
//! ```json
//! {"type":"message","room":"lobby","text":"hi"}
//! {"type":"search","room":"lobby","pattern":"h.*"}
//! {"type":"claim","item":"table-4"}
//! {"type":"join","room":"ops"}
//! ```
//!
//! Server to client ([`ServerFrame`]):
//!
//! ```json
//! {"type":"message","room":"lobby","from":"alice","text":"&lt;b&gt;hi","id":17}
//! {"type":"search_result","room":"lobby","pattern":"h.*","matches":[{"id":17,"from":"alice","text":"hi"}]}
//! {"type":"claimed","item":"table-4"}
//! {"type":"joined","room":"ops"}
//! {"type":"error","code":"rate_limited","retry_after_ms":830}
//! ```
//!
//! Every string that came from a user (`text`, `pattern`) is HTML-escaped
//! on the way out, so a page that puts it into `innerHTML` by mistake still
//! shows text. User ids, room names and items are restricted to
//! `[A-Za-z0-9_.-]` and need no escaping.

use serde::{Deserialize, Serialize};

/// The longest room name.
pub const MAX_ROOM_BYTES: usize = 32;
/// The longest claimable item name.
pub const MAX_ITEM_BYTES: usize = 64;
/// The longest search pattern.
pub const MAX_PATTERN_BYTES: usize = 256;
/// The room every connection starts in.
pub const LOBBY: &str = "lobby";

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Say `text` in `room`.
    Message {
        /// A room the connection has joined.
        room: String,
        /// The text, at most `--max-message-bytes`.
        text: String,
    },
    /// Search the recent history of `room` with a regex.
    Search {
        /// A room the connection has joined.
        room: String,
        /// The regex (fancy-regex syntax).
        pattern: String,
    },
    /// Reserve `item`; each user holds one reservation.
    Claim {
        /// The item.
        item: String,
    },
    /// Join `room`.
    Join {
        /// The room.
        room: String,
    },
}

impl ClientFrame {
    /// The frame's kind, as in its `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Message { .. } => "message",
            ClientFrame::Search { .. } => "search",
            ClientFrame::Claim { .. } => "claim",
            ClientFrame::Join { .. } => "join",
        }
    }

    /// Checks the fields a handler relies on.
    pub fn validate(&self) -> Result<(), ErrorCode> {
        let ok = match self {
            ClientFrame::Message { room, text } => {
                valid_name(room, MAX_ROOM_BYTES) && valid_text(text)
            }
            ClientFrame::Search { room, pattern } => {
                valid_name(room, MAX_ROOM_BYTES)
                    && !pattern.is_empty()
                    && pattern.len() <= MAX_PATTERN_BYTES
            }
            ClientFrame::Claim { item } => valid_name(item, MAX_ITEM_BYTES),
            ClientFrame::Join { room } => valid_name(room, MAX_ROOM_BYTES),
        };
        if ok { Ok(()) } else { Err(ErrorCode::Invalid) }
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A message said in a room, to every member (the sender too).
    Message {
        /// The room.
        room: String,
        /// The sender's user id.
        from: String,
        /// The text, HTML-escaped.
        text: String,
        /// A number that grows with every message on the server.
        id: u64,
    },
    /// The answer to a search.
    SearchResult {
        /// The room searched.
        room: String,
        /// The pattern, HTML-escaped.
        pattern: String,
        /// Matching messages, newest first, at most 20.
        matches: Vec<SearchMatch>,
    },
    /// The claim succeeded.
    Claimed {
        /// The item now reserved for the user.
        item: String,
    },
    /// The connection is now in `room`.
    Joined {
        /// The room.
        room: String,
    },
    /// A request was not carried out.
    Error {
        /// Why.
        code: ErrorCode,
        /// When to try again, where that is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// An error frame.
    pub fn error(code: ErrorCode) -> Self {
        ServerFrame::Error {
            code,
            retry_after_ms: None,
        }
    }

    /// An error frame with a retry time.
    pub fn error_retry(code: ErrorCode, retry_after: std::time::Duration) -> Self {
        ServerFrame::Error {
            code,
            retry_after_ms: Some(
                retry_after
                    .as_millis()
                    .max(1)
                    .try_into()
                    .unwrap_or(u64::MAX),
            ),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// One hit of a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchMatch {
    /// The message's id.
    pub id: u64,
    /// Its sender.
    pub from: String,
    /// Its text, HTML-escaped.
    pub text: String,
}

/// The `code` of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The user is over its message rate; `retry_after_ms` says when.
    RateLimited,
    /// The frame is over `--max-message-bytes`. A protocol error.
    TooLarge,
    /// Not a valid frame: bad JSON, an unknown type, a bad field, a binary
    /// frame, a room not joined, a pattern that does not compile. A
    /// protocol error.
    Invalid,
    /// The handler overran its poll budget and was answered for.
    Timeout,
    /// The user is cooling off after repeated timeouts; `retry_after_ms`
    /// says when it ends.
    Refused,
    /// The token expired; the connection closes.
    Unauthorized,
    /// The user already holds a reservation.
    AlreadyClaimed,
}

impl ErrorCode {
    /// Whether it counts towards the close after 3 protocol errors a minute.
    pub fn is_protocol_error(self) -> bool {
        matches!(self, ErrorCode::TooLarge | ErrorCode::Invalid)
    }
}

/// HTML-escapes user text: `& < > " ' /` become entities.
pub fn escape(text: &str) -> String {
    html_escape::encode_safe(text).into_owned()
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Text must be non-empty and free of control characters other than
/// newline and tab.
fn valid_text(text: &str) -> bool {
    !text.trim().is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_strictly() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"message","room":"lobby","text":"hi"}"#).unwrap();
        assert_eq!(f.kind(), "message");
        assert!(f.validate().is_ok());
        for bad in [
            r#"{"type":"message","room":"lobby"}"#,
            r#"{"type":"shout","room":"lobby","text":"hi"}"#,
            r#"{"type":"message","room":"lobby","text":"hi","admin":true}"#,
            r#"{"type":"join","room":7}"#,
            "[1,2]",
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
        let f: ClientFrame = serde_json::from_str(r#"{"type":"join","room":"<x>"}"#).unwrap();
        assert_eq!(f.validate(), Err(ErrorCode::Invalid));
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"message","room":"a","text":"\u0000"}"#).unwrap();
        assert_eq!(f.validate(), Err(ErrorCode::Invalid));
    }

    #[test]
    fn errors_serialize_as_documented() {
        assert_eq!(
            ServerFrame::error(ErrorCode::AlreadyClaimed).to_json(),
            r#"{"type":"error","code":"already_claimed"}"#
        );
        assert_eq!(
            ServerFrame::error_retry(
                ErrorCode::RateLimited,
                std::time::Duration::from_millis(830)
            )
            .to_json(),
            r#"{"type":"error","code":"rate_limited","retry_after_ms":830}"#
        );
        assert_eq!(
            escape("<img src=x onerror='a()'>&"),
            "&lt;img src=x onerror=&#x27;a()&#x27;&gt;&amp;"
        );
    }
}
