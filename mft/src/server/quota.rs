//! The server's side of per-key byte quotas (`proto::quota` decides): what each
//! key holds, counted once from the store when first needed, then kept up to
//! date as segments are stored; counted again after a transfer of the key
//! completes or is deleted. Segments being stored while a count runs may be
//! missed by it, so a quota holds to within the segments in flight.

use std::collections::HashMap;

use super::{Refusal, Server, refusal};
use crate::proto::quota::{self, Held, Quota};
use crate::store::StoreError;
use crate::wire::RefuseCode;

/// What each key holds, for the keys seen since it was last counted.
#[derive(Debug, Default)]
pub(super) struct Usage {
    by_key: tokio::sync::Mutex<HashMap<[u8; 32], Held>>,
}

impl Server {
    fn quota(&self) -> Quota {
        let config = &self.inner.config;
        Quota {
            open: config.max_open_bytes_per_peer,
            total: config.max_bytes_per_peer,
        }
    }

    /// Counts `len` more bytes in an open transfer of `key`, or refuses them as
    /// over its quota.
    pub(super) async fn reserve_quota(&self, key: &[u8; 32], len: u64) -> Result<(), Refusal> {
        let mut usage = self.inner.usage.by_key.lock().await;
        let held = match usage.get(key) {
            Some(held) => *held,
            None => self.count_held(key).await?,
        };
        quota::admit(held, len, self.quota())
            .map_err(|exceeded| refusal(RefuseCode::QuotaExceeded, exceeded.message()))?;
        usage.insert(
            *key,
            Held {
                open: held.open.saturating_add(len),
                ..held
            },
        );
        Ok(())
    }

    /// Gives back what [`Server::reserve_quota`] counted for a segment that was
    /// not stored after all.
    pub(super) async fn release_quota(&self, key: &[u8; 32], len: u64) {
        if let Some(held) = self.inner.usage.by_key.lock().await.get_mut(key) {
            held.open = held.open.saturating_sub(len);
        }
    }

    /// What `key` holds changed wholesale (a transfer completed or was deleted):
    /// it is counted again from the store when next needed.
    pub(super) async fn recount_quota(&self, key: &[u8; 32]) {
        self.inner.usage.by_key.lock().await.remove(key);
    }

    /// How many segments the store holds for `transfer`, and their ciphertext
    /// bytes: what an open transfer counts against its key's quota, and what
    /// `ListOpen` reports.
    pub(super) async fn held_by_transfer(
        &self,
        transfer: crate::wire::TransferId,
    ) -> Result<(u64, u64), StoreError> {
        let segments = self.inner.store.segments(transfer).await?;
        let bytes = segments.iter().map(|s| u64::from(s.len)).sum();
        Ok((segments.len() as u64, bytes))
    }

    /// What `key` holds, from the store: the segments of its open transfers and
    /// the holdings of its namespace.
    async fn count_held(&self, key: &[u8; 32]) -> Result<Held, StoreError> {
        let store = &self.inner.store;
        let mut open = 0u64;
        for record in store.transfers_of(*key).await? {
            let (_, bytes) = self.held_by_transfer(record.transfer).await?;
            open = open.saturating_add(bytes);
        }
        let stored = store.holdings(key).await?.bytes;
        Ok(Held { open, stored })
    }
}
