//! Server storage: four narrow traits, as in the Go `mft` package, so each can live
//! where it fits (one embedded database today, an object store for segments later).
//!
//! - [`SecretStore`]: per-transfer secrets, sealed by the server before they get here.
//! - [`SegmentStore`]: segment ciphertext, written durably before it is acknowledged.
//! - [`TransferStore`]: open transfers: transfer id → batch id, sender, deadline.
//! - [`BatchStore`]: completed batches, visible only once complete and verified.
//!
//! Every key that reaches a store is either a random [`TransferId`] or an opaque
//! batch id that stores must treat as bytes: never a path component, never a query
//! string. A batch id has at most [`MAX_BATCH_ID`](crate::wire::MAX_BATCH_ID) bytes,
//! as on the wire; stores that encode records (with the protocol's codec, the same
//! for every store) refuse longer ones. Implementations: [`MemoryStore`] (tests) and [`FsStore`] (the embedded
//! default: segment files plus a redb database, fsync'd before returning).

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::wire::{ChainHash, Compression, Tag};

mod commit;
pub(crate) mod fs;
mod memory;
mod records;
#[cfg(test)]
mod tests;

pub use fs::FsStore;
pub use memory::MemoryStore;

pub use crate::wire::TransferId;

/// What a store records about one stored segment (its data is kept separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's index in the batch, from 0.
    pub index: u64,
    /// Ciphertext length in bytes, including the 16-byte AES-GCM tag.
    pub len: u32,
    /// The AES-GCM tag (the last 16 ciphertext bytes), for the chain hash.
    pub tag: Tag,
}

/// An open (incomplete) transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// The transfer's id.
    pub transfer: TransferId,
    /// The batch it will become (opaque bytes).
    pub batch_id: Vec<u8>,
    /// The sender's Ed25519 public key.
    pub sender: [u8; 32],
    /// Plaintext bytes per segment (the last may be shorter).
    pub chunk_size: u32,
    /// When it was opened, seconds since the Unix epoch.
    pub created_unix: u64,
    /// After this (seconds since the Unix epoch) an incomplete transfer is reclaimed.
    pub deadline_unix: u64,
    /// How its segments are encoded before they are sealed, as its handshake
    /// settled.
    pub compression: Compression,
}

/// A completed, verified batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// The batch id (opaque bytes).
    pub batch_id: Vec<u8>,
    /// The transfer whose segments hold its data.
    pub transfer: TransferId,
    /// The sender's Ed25519 public key.
    pub sender: [u8; 32],
    /// Plaintext bytes per segment.
    pub chunk_size: u32,
    /// Number of segments.
    pub segment_count: u64,
    /// Plaintext size in bytes.
    pub size: u64,
    /// The metadata as sent, still encrypted under the transfer's data key.
    pub sealed_metadata: Vec<u8>,
    /// The final chain hash over all segments.
    pub chain: ChainHash,
    /// When it completed, seconds since the Unix epoch.
    pub completed_unix: u64,
    /// The SHA-256 of the plaintext as its sender declared it (all zeros: not
    /// declared): a re-send of the same content is recognised by it.
    pub content_digest: [u8; 32],
    /// The server-signed receipt, as returned to the sender.
    pub receipt: Vec<u8>,
    /// How its segments are encoded before they are sealed.
    pub compression: Compression,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record exists already (a batch id taken, a segment index stored twice).
    #[error("already stored: {0}")]
    AlreadyExists(String),
    /// The record does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Stored data failed a consistency check.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The disk or file system failed (full, read-only, …).
    #[error("storage i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded database failed.
    #[error("database failed: {0}")]
    Database(String),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Per-transfer secrets, sealed by the server (stores see only opaque bytes).
/// Kept for completed batches too: retrieval needs them.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// Stores (or replaces) the sealed secret of `transfer`, durably.
    async fn put_secret(&self, transfer: TransferId, sealed: Vec<u8>) -> StoreResult<()>;
    /// The sealed secret of `transfer`, if any.
    async fn secret(&self, transfer: TransferId) -> StoreResult<Option<Vec<u8>>>;
    /// Forgets the secret of `transfer` (missing is not an error).
    async fn delete_secret(&self, transfer: TransferId) -> StoreResult<()>;
}

/// Segment ciphertext.
#[async_trait]
pub trait SegmentStore: Send + Sync + fmt::Debug {
    /// Stores one segment's ciphertext `data` (whose length is `info.len`) at byte
    /// `offset` of the transfer's data (the server uses `index × (chunk size + 16)`,
    /// so segments never overlap), durably: when this returns, the data and its
    /// record survive a crash. Storing an index twice is [`StoreError::AlreadyExists`]
    /// and leaves the first copy untouched.
    async fn put_segment(
        &self,
        transfer: TransferId,
        info: SegmentInfo,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<()>;
    /// The stored segments of `transfer`, sorted by index.
    async fn segments(&self, transfer: TransferId) -> StoreResult<Vec<SegmentInfo>>;
    /// Reads `len` bytes at `offset` of the transfer's data (one stored segment).
    async fn read_segment(&self, transfer: TransferId, offset: u64, len: u32)
    -> StoreResult<Bytes>;
    /// Deletes every segment of `transfer` (missing is not an error).
    async fn delete_segments(&self, transfer: TransferId) -> StoreResult<()>;
}

/// Open transfers.
#[async_trait]
pub trait TransferStore: Send + Sync + fmt::Debug {
    /// Records an open transfer, durably. An existing record with the same id, or an
    /// open transfer of the same sender for the same batch id, is
    /// [`StoreError::AlreadyExists`] (the server resumes that one instead).
    async fn put_transfer(&self, record: TransferRecord) -> StoreResult<()>;
    /// The open transfer with this id.
    async fn transfer(&self, transfer: TransferId) -> StoreResult<Option<TransferRecord>>;
    /// The open transfer of `sender` for `batch_id`, if any (for resuming).
    async fn find_transfer(
        &self,
        sender: [u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<TransferRecord>>;
    /// Every open transfer (for reclaiming expired ones).
    async fn transfers(&self) -> StoreResult<Vec<TransferRecord>>;
    /// How many transfers `sender` has open: the server checks this on every
    /// hello, so it must not cost a read of every open transfer.
    async fn open_transfer_count(&self, sender: [u8; 32]) -> StoreResult<u64>;
    /// The open transfers of `sender`, sorted by batch id: for an owner managing
    /// what it left open, so it must not cost a read of every open transfer.
    async fn transfers_of(&self, sender: [u8; 32]) -> StoreResult<Vec<TransferRecord>>;
    /// Forgets an open transfer (missing is not an error).
    async fn delete_transfer(&self, transfer: TransferId) -> StoreResult<()>;
}

/// Completed batches, each in its sender's namespace: two senders may each hold
/// a batch of the same id, and neither can claim or learn about the other's.
#[async_trait]
pub trait BatchStore: Send + Sync + fmt::Debug {
    /// Records a completed batch in its sender's namespace, durably. A batch id
    /// that sender already holds, or a second batch from one transfer, is
    /// [`StoreError::AlreadyExists`] and the stored batch is untouched.
    async fn put_batch(&self, record: BatchRecord) -> StoreResult<()>;
    /// The completed batch `batch_id` of `owner`.
    async fn batch(&self, owner: &[u8; 32], batch_id: &[u8]) -> StoreResult<Option<BatchRecord>>;
    /// The completed batch that `transfer` delivered, if any: a sender that lost
    /// its receipt and completes again gets the stored one back.
    async fn batch_of_transfer(&self, transfer: TransferId) -> StoreResult<Option<BatchRecord>>;
    /// Up to `limit` senders that hold a batch `batch_id`, sorted: from an index,
    /// to resolve a retrieval that names no sender.
    async fn owners_of(&self, batch_id: &[u8], limit: usize) -> StoreResult<Vec<[u8; 32]>>;
    /// Up to `limit` senders that hold at least one batch, sorted, all after
    /// `after` (from the first if `None`): the namespaces a listing walks.
    async fn batch_owners(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> StoreResult<Vec<[u8; 32]>>;
    /// Up to `limit` batches of `owner` whose ids sort after `after` (bytewise;
    /// empty for the first), sorted by id: one page of a listing, read from the
    /// index, so its cost does not grow with the number of batches stored.
    async fn batches_of(
        &self,
        owner: &[u8; 32],
        after: &[u8],
        limit: usize,
    ) -> StoreResult<Vec<BatchRecord>>;
    /// How many completed batches `owner` holds and their plaintext bytes, kept
    /// with the batches (not summed on each call): for per-key quotas.
    async fn holdings(&self, owner: &[u8; 32]) -> StoreResult<Holdings>;
    /// Every completed batch, sorted by sender, then batch id. A full scan, for
    /// tools and tests: the server never calls it.
    async fn batches(&self) -> StoreResult<Vec<BatchRecord>>;
    /// Removes `owner`'s batch `batch_id` from its namespace and every index
    /// (its holdings shrink by it) and returns it, durably; `None` if there is no
    /// such batch. In the same step its transfer is recorded as retired: its
    /// segments and secret stay until the server, once no retrieval reads them,
    /// deletes them and calls [`BatchStore::forget_retired`]. So a crash between
    /// the two leaks nothing: [`BatchStore::retired`] still names it.
    async fn remove_batch(
        &self,
        owner: &[u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<BatchRecord>>;
    /// The transfers of removed or replaced batches whose data is still held.
    async fn retired(&self) -> StoreResult<Vec<TransferId>>;
    /// Forgets a retired transfer, once its segments and secret are deleted
    /// (missing is not an error).
    async fn forget_retired(&self, transfer: TransferId) -> StoreResult<()>;
}

/// What one sender's namespace holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Completed batches.
    pub batches: u64,
    /// Their plaintext bytes, summed.
    pub bytes: u64,
}

/// All four stores, as the server uses them, with the two steps of a transfer's
/// life that touch more than one of them.
///
/// The defaults compose the single operations in a crash-safe order. A store that
/// keeps several of the four in one database overrides them to make each step one
/// atomic write (as [`FsStore`] does, which also saves a commit per step: small
/// batches are bound by commits).
#[async_trait]
pub trait Store: SecretStore + SegmentStore + TransferStore + BatchStore {
    /// Opens a transfer: stores its sealed secret, then its record, as
    /// [`SecretStore::put_secret`] and [`TransferStore::put_transfer`] do, with the
    /// same refusals. A refused record takes its secret with it, so two hellos
    /// racing to open one batch leave one transfer and one secret; only a crash
    /// between the steps can leave a secret that no record names. (Transfer ids
    /// are random 128-bit values, so the refusal is the sender-and-batch one, never
    /// a taken id whose secret this would replace.)
    async fn put_transfer_with_secret(
        &self,
        record: TransferRecord,
        sealed_secret: Vec<u8>,
    ) -> StoreResult<()> {
        let transfer = record.transfer;
        self.put_secret(transfer, sealed_secret).await?;
        match self.put_transfer(record).await {
            Err(refused @ StoreError::AlreadyExists(_)) => {
                self.delete_secret(transfer).await?;
                Err(refused)
            }
            outcome => outcome,
        }
    }

    /// Completes a transfer: records its batch, then forgets the open transfer, as
    /// [`BatchStore::put_batch`] and [`TransferStore::delete_transfer`] do. A batch id
    /// that exists is [`StoreError::AlreadyExists`], and then the open transfer
    /// stays. A crash between the two leaves an open record whose batch exists,
    /// which reclaiming recognises.
    async fn complete_transfer(&self, batch: BatchRecord) -> StoreResult<()> {
        let transfer = batch.transfer;
        self.put_batch(batch).await?;
        self.delete_transfer(transfer).await
    }

    /// Completes a transfer that replaces its sender's batch of the same id, if
    /// there is one: that batch is removed and retired (as
    /// [`BatchStore::remove_batch`] does) and returned, and the new one recorded,
    /// as [`Store::complete_transfer`] does. Readers must see the old batch or
    /// the new one, never neither: the default runs the steps one after the
    /// other, so a store whose steps are not one atomic write should override
    /// it (both stores here do).
    async fn complete_replacing(&self, batch: BatchRecord) -> StoreResult<Option<BatchRecord>> {
        let old = self.remove_batch(&batch.sender, &batch.batch_id).await?;
        self.complete_transfer(batch).await?;
        Ok(old)
    }
}
