//! Claims: one reservation per user, serialized per user.
//!
//! Seed 002's double-spend: a user fires two reservation requests at once;
//! both read "no reservation yet" before either writes, and both succeed.
//! The check ("does this user hold a reservation?") and the record ("this
//! user holds item X") are separate steps on the [`ClaimBook`], as they are
//! on any real store (two queries, two round trips), so the handler holds
//! the user's lock across both. Locks are striped: a fixed array of async
//! mutexes indexed by a hash of the user id, so memory stays fixed however
//! many users come; two users may share a stripe and then wait for each
//! other, never for anyone's regex (claims run no user code).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use crate::protocol::ErrorCode;

const STRIPES: usize = 256;

/// Who holds which reservation.
#[derive(Debug, Default)]
pub struct ClaimBook {
    held: Mutex<HashMap<Arc<str>, Arc<str>>>,
}

impl ClaimBook {
    /// The item `user` holds, if any.
    pub async fn holding(&self, user: &str) -> Option<Arc<str>> {
        self.held.lock().expect("claim book").get(user).cloned()
    }

    /// Records that `user` holds `item`.
    pub async fn record(&self, user: Arc<str>, item: Arc<str>) {
        self.held.lock().expect("claim book").insert(user, item);
    }
}

/// Claims with per-user serialization.
#[derive(Debug)]
pub struct Claims {
    book: ClaimBook,
    stripes: Box<[AsyncMutex<()>]>,
    hasher: RandomState,
}

impl Default for Claims {
    fn default() -> Self {
        Self {
            book: ClaimBook::default(),
            stripes: (0..STRIPES).map(|_| AsyncMutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Claims {
    /// Reserves `item` for `user` unless it already holds a reservation.
    pub async fn claim(&self, user: &Arc<str>, item: &str) -> Result<(), ErrorCode> {
        let stripe = self.hasher.hash_one(&**user) as usize % STRIPES;
        let _serialized = self.stripes[stripe].lock().await;
        if self.book.holding(user).await.is_some() {
            return Err(ErrorCode::AlreadyClaimed);
        }
        self.book.record(user.clone(), item.into()).await;
        Ok(())
    }

    /// The item `user` holds, if any.
    pub async fn holding(&self, user: &str) -> Option<Arc<str>> {
        self.book.holding(user).await
    }
}
