//! The pending-bytes budget: memory held for messages between the network and
//! the store, reserved from each message's length prefix before its body is read.
//! The server has one budget in all, and each key a share of it, so one key's
//! stalled flows (each announcing a large segment, then sending nothing) cannot
//! hold the memory everyone else's segments wait for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flow::PeerKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budgets.
#[derive(Debug)]
pub(super) struct Pending {
    total: Arc<Semaphore>,
    total_bytes: usize,
    per_key_bytes: usize,
    /// Each key with bytes reserved or waiting; an entry goes once nobody uses it.
    by_key: Mutex<HashMap<PeerKey, Arc<Semaphore>>>,
}

/// Bytes held for one message, given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    // Dropped in this order: the server-wide share first, then the key's.
    _total: OwnedSemaphorePermit,
    key: Option<OwnedSemaphorePermit>,
    owner: PeerKey,
    pending: Arc<Pending>,
}

impl Pending {
    pub(super) fn new(total_bytes: usize, per_key_bytes: usize) -> Arc<Self> {
        Arc::new(Pending {
            total: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
            per_key_bytes: per_key_bytes.min(total_bytes),
            by_key: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, Arc<Semaphore>>> {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `len` bytes for a message of `key`: its key's share first, then the
    /// server's, waiting for either as needed. `None` once the server closes.
    pub(super) async fn reserve(self: &Arc<Self>, key: PeerKey, len: usize) -> Option<Reservation> {
        let of_key = self
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key_bytes)))
            .clone();
        let clamp = |budget: usize| u32::try_from(len.min(budget)).unwrap_or(u32::MAX);
        let key_permit = of_key
            .acquire_many_owned(clamp(self.per_key_bytes))
            .await
            .ok()?;
        let total = self
            .total
            .clone()
            .acquire_many_owned(clamp(self.total_bytes))
            .await
            .ok()?;
        Some(Reservation {
            _total: total,
            key: Some(key_permit),
            owner: key,
            pending: self.clone(),
        })
    }

    /// Keys with an entry (tests check they go once unused).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        drop(self.key.take());
        let mut by_key = self.pending.lock();
        // Only the map holds it: no reservation or waiter of this key is left.
        if by_key
            .get(&self.owner)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            by_key.remove(&self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_cannot_hold_more_than_its_share() {
        let pending = Pending::new(100, 40);
        let (a, b) = (
            flow::Identity::generate().public_key(),
            flow::Identity::generate().public_key(),
        );
        let a1 = pending.reserve(a, 30).await.unwrap();
        // a's next 30 must wait for its own share, though the server has room.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), pending.reserve(a, 30))
                .await;
        assert!(waiting.is_err(), "a key waits beyond its share");
        // Another key goes ahead.
        let b1 = pending.reserve(b, 40).await.unwrap();
        drop(a1);
        let a2 = pending.reserve(a, 30).await.unwrap();
        drop((a2, b1));
        assert_eq!(pending.keys(), 0, "unused keys are forgotten");
        // A message larger than a share takes the whole share, not forever.
        let big = pending.reserve(a, 1000).await.unwrap();
        drop(big);
    }
}
