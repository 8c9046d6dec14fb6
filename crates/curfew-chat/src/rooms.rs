//! Rooms: their members' outboxes and a bounded history for search.
//!
//! Each room has its own lock, held only to append a message and hand the
//! frame to each member's bounded queue (`try_send`, never a wait), or to
//! copy the history's handles out for a search. No user code and no regex
//! runs under a room's lock, so a handler that is written off by the
//! watchdog while it runs never holds one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;

use crate::conn::Outbox;
use crate::protocol::{ErrorCode, LOBBY};

/// A message kept in a room's history.
#[derive(Debug)]
pub struct Entry {
    /// Its id.
    pub id: u64,
    /// Its sender.
    pub from: Arc<str>,
    /// Its text, as sent (escaped only on the way out).
    pub text: Arc<str>,
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<u64, Outbox>,
    history: VecDeque<Arc<Entry>>,
}

/// Every room on the server.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<Room>>>>,
    history_len: usize,
    max_rooms: usize,
}

impl Rooms {
    /// No rooms but the lobby; each keeps `history_len` messages, and at
    /// most `max_rooms` exist at once.
    pub fn new(history_len: usize, max_rooms: usize) -> Self {
        let mut rooms = HashMap::new();
        rooms.insert(Arc::from(LOBBY), Arc::default());
        Self {
            rooms: Mutex::new(rooms),
            history_len,
            max_rooms,
        }
    }

    fn get(&self, room: &str) -> Option<Arc<Mutex<Room>>> {
        self.rooms.lock().expect("rooms lock").get(room).cloned()
    }

    /// Adds `outbox` to `room`, creating it if there is room for one more.
    pub fn join(&self, room: &str, outbox: &Outbox) -> Result<Arc<str>, ErrorCode> {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let (name, r) = match rooms.get_key_value(room) {
            Some((k, v)) => (k.clone(), v.clone()),
            None => {
                if rooms.len() >= self.max_rooms {
                    return Err(ErrorCode::Invalid);
                }
                let name: Arc<str> = room.into();
                let r: Arc<Mutex<Room>> = Arc::default();
                rooms.insert(name.clone(), r.clone());
                (name, r)
            }
        };
        r.lock()
            .expect("room lock")
            .members
            .insert(outbox.id(), outbox.clone());
        Ok(name)
    }

    /// Removes connection `id` from `room`; an empty room other than the
    /// lobby goes away with its history.
    pub fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        let Some(r) = rooms.get(room).cloned() else {
            return;
        };
        let mut r = r.lock().expect("room lock");
        r.members.remove(&id);
        if r.members.is_empty() && room != LOBBY {
            rooms.remove(room);
        }
    }

    /// Appends `entry` to `room`'s history and queues `frame` to every
    /// member. A member whose queue is full is closed as too slow and
    /// removed. Returns how many members it was queued to, or `None` if the
    /// room does not exist.
    pub fn broadcast(&self, room: &str, entry: Entry, frame: &Utf8Bytes) -> Option<usize> {
        let r = self.get(room)?;
        let mut r = r.lock().expect("room lock");
        if r.history.len() == self.history_len {
            r.history.pop_front();
        }
        r.history.push_back(Arc::new(entry));
        let mut sent = 0;
        r.members.retain(|_, outbox| {
            let ok = outbox.push(frame.clone());
            sent += usize::from(ok);
            ok
        });
        Some(sent)
    }

    /// The handles of `room`'s history, oldest first.
    pub fn history(&self, room: &str) -> Option<Vec<Arc<Entry>>> {
        let r = self.get(room)?;
        let r = r.lock().expect("room lock");
        Some(r.history.iter().cloned().collect())
    }

    /// How many rooms exist.
    pub fn len(&self) -> usize {
        self.rooms.lock().expect("rooms lock").len()
    }

    /// Whether no room exists (never: the lobby always does).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
