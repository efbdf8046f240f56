//! Completed batches after their completion: deleting one, confirming that one
//! holds what its sender would send again, and freeing the data of removed or
//! replaced batches once no retrieval reads it.
//!
//! A removed batch leaves its namespace at once; its transfer is *retired* in the
//! same store write, so its segments and secret survive a crash until they are
//! deleted. Retrievals that found the batch before it went keep reading it: each
//! holds a [`Reading`] for the transfer, and a retired transfer is deleted only
//! when none does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use flow::PeerKey;

use super::{Direction, Inner, Refusal, Server, ServerEvent, refusal};
use crate::error::Result;
use crate::proto::completion;
use crate::store::{BatchRecord, StoreError, TransferId};
use crate::wire::{Codec, Confirm, Delete, Deleted, Message, RefuseCode};

/// Which transfers retrievals are reading, and which retired ones wait for them.
#[derive(Debug, Default)]
pub(super) struct Readers {
    counts: Mutex<HashMap<TransferId, usize>>,
    /// Retired transfers a reclaim skipped because they were being read.
    waiting: Mutex<HashSet<TransferId>>,
}

impl Readers {
    fn counts(&self) -> MutexGuard<'_, HashMap<TransferId, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self) -> MutexGuard<'_, HashSet<TransferId>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A retrieval reading a transfer's segments: while one lives, a retired
/// transfer's data stays.
pub(super) struct Reading {
    inner: Arc<Inner>,
    transfer: TransferId,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let last = {
            let mut counts = self.inner.readers.counts();
            match counts.get_mut(&self.transfer) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    counts.remove(&self.transfer);
                    true
                }
            }
        };
        // The last reader of a retired transfer frees it.
        if last
            && self.inner.readers.waiting().remove(&self.transfer)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let server = Server {
                inner: self.inner.clone(),
            };
            runtime.spawn(async move { server.reclaim_retired_now().await });
        }
    }
}

impl Server {
    /// `batch` for a retrieval, held against reclaiming while the [`Reading`]
    /// lives. Registered first and checked after: a batch removed in between is
    /// not found, and one removed later keeps its data for this retrieval.
    pub(super) async fn start_reading(
        &self,
        batch: BatchRecord,
    ) -> Result<(BatchRecord, Reading), Refusal> {
        *self
            .inner
            .readers
            .counts()
            .entry(batch.transfer)
            .or_insert(0) += 1;
        let reading = Reading {
            inner: self.inner.clone(),
            transfer: batch.transfer,
        };
        let still = self
            .inner
            .store
            .batch(&batch.sender, &batch.batch_id)
            .await?
            .is_some_and(|b| b.transfer == batch.transfer);
        if !still {
            return Err(refusal(RefuseCode::NotFound, "no such batch for this key"));
        }
        Ok((batch, reading))
    }

    /// Deletes the data of every retired transfer no retrieval is reading, and
    /// returns how many; those being read are freed when their last reader ends.
    pub async fn reclaim_retired(&self) -> Result<usize> {
        let store = &self.inner.store;
        let mut freed = 0;
        for transfer in store.retired().await? {
            let read = {
                let counts = self.inner.readers.counts();
                let read = counts.contains_key(&transfer);
                if read {
                    self.inner.readers.waiting().insert(transfer);
                }
                read
            };
            if read {
                continue;
            }
            store.delete_segments(transfer).await?;
            store.delete_secret(transfer).await?;
            store.forget_retired(transfer).await?;
            tracing::debug!(%transfer, "freed the data of a removed batch");
            freed += 1;
        }
        Ok(freed)
    }

    /// [`Server::reclaim_retired`], logging a failure (the minute's reclaim and
    /// the next start try again).
    pub(super) async fn reclaim_retired_now(&self) {
        if let Err(e) = self.reclaim_retired().await {
            tracing::warn!(error = %e, "freeing removed batches failed; retried later");
        }
    }

    /// Deletes a batch: the owner's own, or another's if the policy lets `peer`
    /// delete it. Another's batch that `peer` may not delete is not found, as
    /// one that does not exist.
    pub(super) async fn handle_delete(
        &self,
        peer: PeerKey,
        delete: &Delete,
    ) -> Result<Option<Message>, Refusal> {
        let owner = delete.owner.unwrap_or(*peer.as_bytes());
        let own = owner == *peer.as_bytes();
        let not_found = || refusal(RefuseCode::NotFound, "no such batch for this key");
        let may = self.allowed(
            &peer,
            &delete.voucher,
            &owner,
            &delete.batch_id,
            Direction::Delete,
        );
        match (may, own) {
            (true, _) => {}
            (false, true) => {
                return Err(refusal(
                    RefuseCode::NotAuthorized,
                    format!("key {peer} may not delete batches"),
                ));
            }
            (false, false) => return Err(not_found()),
        }
        let removed = self
            .inner
            .store
            .remove_batch(&owner, &delete.batch_id)
            .await?
            .ok_or_else(not_found)?;
        self.recount_quota(&owner).await;
        self.reclaim_retired_now().await;
        self.emit(ServerEvent::Deleted {
            peer,
            owner,
            transfer: removed.transfer,
            batch_id: delete.batch_id.clone(),
            bytes: removed.size,
        });
        Ok(Some(Message::Deleted(Deleted {
            owner,
            batch_id: delete.batch_id.clone(),
            size: removed.size,
        })))
    }

    /// The stored receipt of `peer`'s batch if it holds what `confirm` declares
    /// (`completion::confirms`): a sender sending the same content again gets
    /// its receipt instead of a refusal.
    pub(super) async fn handle_confirm(
        &self,
        peer: PeerKey,
        confirm: &Confirm,
    ) -> Result<Option<Message>, Refusal> {
        let owner = *peer.as_bytes();
        if !self.allowed(
            &peer,
            &confirm.voucher,
            &owner,
            &confirm.batch_id,
            Direction::Send,
        ) {
            return Err(refusal(
                RefuseCode::NotAuthorized,
                format!("key {peer} may not send this batch"),
            ));
        }
        let batch = self
            .inner
            .store
            .batch(&owner, &confirm.batch_id)
            .await?
            .ok_or_else(|| refusal(RefuseCode::NotFound, "no such batch for this key"))?;
        if !completion::confirms(&batch, confirm.size, &confirm.content_digest) {
            return Err(refusal(
                RefuseCode::BatchExists,
                "this key holds a batch with this id and other content; \
                 replace it to send this one",
            ));
        }
        let receipt = stored_receipt(&batch)?;
        self.emit(ServerEvent::AlreadyStored {
            peer,
            transfer: batch.transfer,
        });
        Ok(Some(receipt))
    }
}

/// A batch's stored receipt, as the message it was first sent as.
pub(super) fn stored_receipt(batch: &BatchRecord) -> Result<Message, Refusal> {
    match Message::from_bytes(bytes::Bytes::from(batch.receipt.clone())) {
        Ok(receipt @ Message::Receipt(_)) => Ok(receipt),
        _ => {
            Err(StoreError::Corrupt(format!("receipt of batch transfer {}", batch.transfer)).into())
        }
    }
}
