//! [`MemoryStore`]: every store in process memory, for tests and experiments.
//!
//! It follows the trait contracts exactly (the same errors, the same orderings) as
//! [`FsStore`](super::FsStore), so a test that passes against it says something about
//! the real store too; only durability is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BatchRecord, BatchStore, Holdings, SecretStore, SegmentInfo, SegmentStore, Store, StoreError,
    StoreResult, TransferId, TransferRecord, TransferStore,
};

/// All four stores in memory: nothing survives the process.
///
/// Each map sits behind its own `std::sync::Mutex`; no method awaits while holding
/// one, so a blocking lock is correct here and cheaper than an async one.
#[derive(Debug, Default)]
pub struct MemoryStore {
    secrets: Mutex<HashMap<TransferId, Vec<u8>>>,
    segments: Mutex<HashMap<TransferId, SegmentData>>,
    transfers: Mutex<BTreeMap<TransferId, TransferRecord>>,
    /// By (sender, batch id), which orders them as the trait promises.
    batches: Mutex<BTreeMap<OwnedId, BatchRecord>>,
    /// Transfers of removed or replaced batches whose data is still held.
    retired: Mutex<BTreeSet<TransferId>>,
}

/// A batch's full name: its sender, then its id.
type OwnedId = ([u8; 32], Vec<u8>);

/// One transfer's segments: the records, and the data as one flat buffer addressed
/// by offset, the way [`FsStore`](super::FsStore) keeps it in one file.
#[derive(Debug, Default)]
struct SegmentData {
    infos: BTreeMap<u64, SegmentInfo>,
    data: Vec<u8>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Locks `m`, ignoring poisoning: every update below is a single map operation, so a
/// panic elsewhere cannot leave a map half-changed, and refusing all later calls
/// would only turn one failure into many.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `offset..offset + len` as buffer indexes, refused if it does not fit in memory.
fn span(offset: u64, len: usize) -> StoreResult<(usize, usize)> {
    let start = usize::try_from(offset).ok();
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(s), Some(e)) => Ok((s, e)),
        _ => Err(StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("segment offset {offset} + {len} bytes is out of range"),
        ))),
    }
}

/// The defaults, but for a replacement: every other operation here is atomic on
/// its own.
#[async_trait]
impl Store for MemoryStore {
    async fn complete_replacing(&self, batch: BatchRecord) -> StoreResult<Option<BatchRecord>> {
        let transfer = batch.transfer;
        let old = {
            // One lock over the swap: no reader sees the id missing between.
            let mut batches = lock(&self.batches);
            let key = (batch.sender, batch.batch_id.clone());
            if batches
                .iter()
                .any(|(k, b)| b.transfer == transfer && *k != key)
            {
                return Err(StoreError::AlreadyExists(format!(
                    "a batch of transfer {transfer}"
                )));
            }
            let old = batches.insert(key, batch);
            if let Some(old) = &old {
                lock(&self.retired).insert(old.transfer);
            }
            old
        };
        self.delete_transfer(transfer).await?;
        Ok(old)
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn put_secret(&self, transfer: TransferId, sealed: Vec<u8>) -> StoreResult<()> {
        lock(&self.secrets).insert(transfer, sealed);
        Ok(())
    }

    async fn secret(&self, transfer: TransferId) -> StoreResult<Option<Vec<u8>>> {
        Ok(lock(&self.secrets).get(&transfer).cloned())
    }

    async fn delete_secret(&self, transfer: TransferId) -> StoreResult<()> {
        lock(&self.secrets).remove(&transfer);
        Ok(())
    }
}

#[async_trait]
impl SegmentStore for MemoryStore {
    async fn put_segment(
        &self,
        transfer: TransferId,
        info: SegmentInfo,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<()> {
        check_len(&info, &data)?;
        let (start, end) = span(offset, data.len())?;
        let mut segments = lock(&self.segments);
        let entry = segments.entry(transfer).or_default();
        // Checked before any byte is copied, so a duplicate never touches the first copy.
        if entry.infos.contains_key(&info.index) {
            return Err(StoreError::AlreadyExists(format!(
                "segment {} of transfer {transfer}",
                info.index
            )));
        }
        if entry.data.len() < end {
            // try_reserve turns an absurd offset into an error instead of an abort.
            entry
                .data
                .try_reserve(end - entry.data.len())
                .map_err(|e| StoreError::Io(io::Error::new(io::ErrorKind::OutOfMemory, e)))?;
            entry.data.resize(end, 0);
        }
        entry.data[start..end].copy_from_slice(&data);
        entry.infos.insert(info.index, info);
        Ok(())
    }

    async fn segments(&self, transfer: TransferId) -> StoreResult<Vec<SegmentInfo>> {
        // BTreeMap iteration is by index: the sorted order the trait promises.
        Ok(lock(&self.segments)
            .get(&transfer)
            .map(|s| s.infos.values().copied().collect())
            .unwrap_or_default())
    }

    async fn read_segment(
        &self,
        transfer: TransferId,
        offset: u64,
        len: u32,
    ) -> StoreResult<Bytes> {
        let (start, end) = span(offset, len as usize)?;
        let segments = lock(&self.segments);
        let Some(entry) = segments.get(&transfer) else {
            return Err(StoreError::NotFound(format!(
                "segments of transfer {transfer}"
            )));
        };
        // Past the end of the data is what a short segment file is to FsStore.
        match entry.data.get(start..end) {
            Some(bytes) => Ok(Bytes::copy_from_slice(bytes)),
            None => Err(StoreError::Corrupt(format!(
                "transfer {transfer} has {} bytes of data, wanted {len} at {offset}",
                entry.data.len()
            ))),
        }
    }

    async fn delete_segments(&self, transfer: TransferId) -> StoreResult<()> {
        lock(&self.segments).remove(&transfer);
        Ok(())
    }
}

/// Refuses a segment whose data does not have the length its record claims: storing
/// it would make the record lie about what `read_segment` returns.
pub(super) fn check_len(info: &SegmentInfo, data: &Bytes) -> StoreResult<()> {
    if data.len() == info.len as usize {
        Ok(())
    } else {
        Err(StoreError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "segment {} has {} bytes of data but its record says {}",
                info.index,
                data.len(),
                info.len
            ),
        )))
    }
}

#[async_trait]
impl TransferStore for MemoryStore {
    async fn put_transfer(&self, record: TransferRecord) -> StoreResult<()> {
        let mut transfers = lock(&self.transfers);
        if transfers.contains_key(&record.transfer) {
            return Err(StoreError::AlreadyExists(format!(
                "transfer {}",
                record.transfer
            )));
        }
        // One open transfer per (sender, batch id): `find_transfer` must have a single
        // answer, and FsStore's index can hold only one.
        if transfers
            .values()
            .any(|t| t.sender == record.sender && t.batch_id == record.batch_id)
        {
            return Err(StoreError::AlreadyExists(
                "an open transfer of this sender for this batch id".into(),
            ));
        }
        transfers.insert(record.transfer, record);
        Ok(())
    }

    async fn transfer(&self, transfer: TransferId) -> StoreResult<Option<TransferRecord>> {
        Ok(lock(&self.transfers).get(&transfer).cloned())
    }

    async fn find_transfer(
        &self,
        sender: [u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<TransferRecord>> {
        Ok(lock(&self.transfers)
            .values()
            .find(|t| t.sender == sender && t.batch_id == batch_id)
            .cloned())
    }

    async fn transfers(&self) -> StoreResult<Vec<TransferRecord>> {
        // Sorted by transfer id, as FsStore's table is.
        Ok(lock(&self.transfers).values().cloned().collect())
    }

    async fn open_transfer_count(&self, sender: [u8; 32]) -> StoreResult<u64> {
        Ok(lock(&self.transfers)
            .values()
            .filter(|t| t.sender == sender)
            .count() as u64)
    }

    async fn transfers_of(&self, sender: [u8; 32]) -> StoreResult<Vec<TransferRecord>> {
        let mut of: Vec<TransferRecord> = lock(&self.transfers)
            .values()
            .filter(|t| t.sender == sender)
            .cloned()
            .collect();
        of.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
        Ok(of)
    }

    async fn delete_transfer(&self, transfer: TransferId) -> StoreResult<()> {
        lock(&self.transfers).remove(&transfer);
        Ok(())
    }
}

#[async_trait]
impl BatchStore for MemoryStore {
    async fn put_batch(&self, record: BatchRecord) -> StoreResult<()> {
        let mut batches = lock(&self.batches);
        let key = (record.sender, record.batch_id.clone());
        if batches.contains_key(&key) {
            return Err(StoreError::AlreadyExists(format!(
                "batch {} of this sender",
                printable(&record.batch_id)
            )));
        }
        if batches.values().any(|b| b.transfer == record.transfer) {
            return Err(StoreError::AlreadyExists(format!(
                "a batch of transfer {}",
                record.transfer
            )));
        }
        batches.insert(key, record);
        Ok(())
    }

    async fn batch(&self, owner: &[u8; 32], batch_id: &[u8]) -> StoreResult<Option<BatchRecord>> {
        Ok(lock(&self.batches)
            .get(&(*owner, batch_id.to_vec()))
            .cloned())
    }

    async fn batch_of_transfer(&self, transfer: TransferId) -> StoreResult<Option<BatchRecord>> {
        // Scans here: the memory store holds test-sized data.
        Ok(lock(&self.batches)
            .values()
            .find(|b| b.transfer == transfer)
            .cloned())
    }

    async fn owners_of(&self, batch_id: &[u8], limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        Ok(lock(&self.batches)
            .keys()
            .filter(|(_, id)| id.as_slice() == batch_id)
            .map(|(owner, _)| *owner)
            .take(limit)
            .collect())
    }

    async fn batch_owners(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> StoreResult<Vec<[u8; 32]>> {
        let mut owners: Vec<[u8; 32]> = lock(&self.batches)
            .keys()
            .map(|(owner, _)| *owner)
            .filter(|owner| after.is_none_or(|a| *owner > a))
            .collect();
        owners.dedup();
        owners.truncate(limit);
        Ok(owners)
    }

    async fn batches_of(
        &self,
        owner: &[u8; 32],
        after: &[u8],
        limit: usize,
    ) -> StoreResult<Vec<BatchRecord>> {
        Ok(lock(&self.batches)
            .range((*owner, after.to_vec())..)
            .take_while(|((o, _), _)| o == owner)
            .filter(|((_, id), _)| id.as_slice() > after)
            .take(limit)
            .map(|(_, b)| b.clone())
            .collect())
    }

    async fn holdings(&self, owner: &[u8; 32]) -> StoreResult<Holdings> {
        Ok(lock(&self.batches)
            .values()
            .filter(|b| b.sender == *owner)
            .fold(Holdings::default(), |h, b| Holdings {
                batches: h.batches + 1,
                bytes: h.bytes.saturating_add(b.size),
            }))
    }

    async fn batches(&self) -> StoreResult<Vec<BatchRecord>> {
        Ok(lock(&self.batches).values().cloned().collect())
    }

    async fn remove_batch(
        &self,
        owner: &[u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<BatchRecord>> {
        let mut batches = lock(&self.batches);
        let old = batches.remove(&(*owner, batch_id.to_vec()));
        if let Some(old) = &old {
            lock(&self.retired).insert(old.transfer);
        }
        Ok(old)
    }

    async fn retired(&self) -> StoreResult<Vec<TransferId>> {
        Ok(lock(&self.retired).iter().copied().collect())
    }

    async fn forget_retired(&self, transfer: TransferId) -> StoreResult<()> {
        lock(&self.retired).remove(&transfer);
        Ok(())
    }
}

/// A batch id for an error message: batch ids are untrusted bytes, so they are
/// escaped (and cut short) rather than printed raw into logs.
pub(super) fn printable(batch_id: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = &batch_id[..batch_id.len().min(MAX)];
    let mut s: String = shown.escape_ascii().to_string();
    if batch_id.len() > MAX {
        s.push('…');
    }
    format!("\"{s}\"")
}
