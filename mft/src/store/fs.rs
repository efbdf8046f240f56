//! [`FsStore`]: the embedded default store, one directory on a local file system.
//!
//! Layout of the directory:
//!
//! - `mftq.redb`: a [redb] database with every record (secrets, segment records,
//!   open transfers and their (sender, batch id) index, completed batches).
//! - `segments/<transfer id in hex>.seg`: one file per transfer with its segment
//!   ciphertext, each segment at the offset the caller gives.
//!
//! File names come only from [`TransferId::to_hex`] (32 hex digits), never from a batch
//! id, so an untrusted batch id cannot name a path. Everything that returns `Ok` from a
//! `put_*` or `delete_*` has been fsync'd: segment data and its file's directory entry
//! before its record, and records by redb's (fsync'd) commit.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::commit::Committer;
use super::memory::{check_len, printable};
pub(crate) use super::records::{
    decode_batch, decode_transfer, encode_batch, encode_transfer, owned_key,
};
use super::records::{decode_segment, encode_segment, segment_key};
use super::{
    BatchRecord, BatchStore, Holdings, SecretStore, SegmentInfo, SegmentStore, Store, StoreError,
    StoreResult, TransferId, TransferRecord, TransferStore,
};
use crate::wire::Codec;

/// The database file's name inside the store directory.
pub(super) const DB_FILE: &str = "mftq.redb";
/// The segment directory's name inside the store directory.
pub(super) const SEGMENTS_DIR: &str = "segments";

/// Transfer id (16 bytes) → sealed secret (opaque bytes).
pub(super) const SECRETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("secrets");
/// Transfer id (16 bytes) ++ index (u64 BE) → len (u32 BE) ++ tag (16 bytes). Big-endian
/// indexes make the table's byte order the index order, so a prefix scan is sorted.
pub(super) const SEGMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("segments");
/// Transfer id (16 bytes) → encoded [`TransferRecord`].
pub(super) const TRANSFERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("transfers");
/// Sender (32 bytes) ++ batch id → transfer id (16 bytes), for `find_transfer`. The
/// sender has a fixed width, so the key splits back unambiguously.
pub(super) const TRANSFERS_BY_BATCH: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("transfers_by_batch");
/// Sender (32 bytes) ++ batch id → encoded [`BatchRecord`]: each sender's
/// namespace, in order, so a listing page is a range read.
pub(super) const BATCHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("owned_batches");
/// Transfer id (16 bytes) → sender ++ batch id of the batch it delivered, for
/// `batch_of_transfer`.
pub(super) const BATCHES_BY_TRANSFER: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("batch_keys_by_transfer");
/// Batch id length (u16 BE) ++ batch id ++ sender → nothing: who holds a batch of
/// an id, as one range read (the length keeps one id's range from reaching into
/// longer ids that start with it).
pub(super) const OWNERS_BY_BATCH: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("owners_by_batch");
/// Sender → how many batches it holds and their plaintext bytes (u64 BE each):
/// the namespaces, for listings, and what each holds, for quotas.
pub(super) const BATCH_OWNERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("batch_owners");
/// Transfer id (16 bytes) → nothing: transfers of removed or replaced batches
/// whose segments and secret are still to be deleted.
pub(super) const RETIRED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retired");
/// Before namespaces: batch id → record, and transfer id → batch id. A store
/// that still has them is moved into the tables above when opened.
pub(super) const LEGACY_BATCHES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("batches");
pub(super) const LEGACY_BATCHES_BY_TRANSFER: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("batches_by_transfer");

/// The store on a local file system: segment files plus a redb database.
///
/// Cloning is cheap and every clone is the same store. Methods run their file and
/// database work on tokio's blocking pool, so they must be called within a tokio
/// runtime. redb locks the database file, so a directory can be open in only one
/// `FsStore` (and its clones) at a time.
#[derive(Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segments_dir: PathBuf,
    db: Arc<Database>,
    /// Every write goes through it: one transaction and one commit per group of
    /// writes waiting together (see `commit.rs`).
    committer: Committer,
    /// (transfer, index) pairs being stored right now. `put_segment` checks for a
    /// stored record and then writes the file; without this, two concurrent puts of
    /// one index could both pass the check and the second would overwrite the first
    /// copy's data. Holding redb's single write transaction across the file write and
    /// fsync would also serialise them, but would serialise every transfer's writes.
    writing: Mutex<HashSet<(TransferId, u64)>>,
    /// Signalled whenever an entry leaves `writing`.
    written: Condvar,
    /// Transfers whose segment file's directory entry is known to be durable (the
    /// `segments` directory was fsync'd after the file existed), so the directory is
    /// fsync'd once per transfer (and once more after a restart), not per segment.
    dir_synced: Mutex<HashSet<TransferId>>,
    /// What reached the disk, in order, for the tests that check each write is
    /// synced before it is recorded and acknowledged.
    #[cfg(test)]
    journal: Mutex<Vec<Step>>,
}

/// One step of a segment's way to the disk (journaled by tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Its bytes were written to the transfer's file.
    Write(TransferId, u64),
    /// The transfer's file was fsync'd.
    SyncFile(TransferId),
    /// The `segments` directory was fsync'd (the file's entry is durable).
    SyncDir,
    /// Its record was committed: from here on the store says it exists.
    Recorded(TransferId, u64),
}

impl fmt::Debug for FsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl FsStore {
    /// Opens the store in `dir`, creating the directory, its database and its
    /// `segments` directory if missing (new directories are private to the owner).
    ///
    /// This blocks on file I/O and fsync: call it at startup or from
    /// [`tokio::task::spawn_blocking`], not from async code on a runtime worker.
    pub fn open(dir: impl AsRef<Path>) -> StoreResult<FsStore> {
        let dir = dir.as_ref().to_path_buf();
        let created = create_dir(&dir)?;
        if created {
            // The new directory's own entry lives in its parent.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let segments_dir = dir.join(SEGMENTS_DIR);
        create_dir(&segments_dir)?;

        let db = Database::create(dir.join(DB_FILE)).or_db()?;
        // Create every table now, so readers never meet a missing table.
        let tx = db.begin_write().or_db()?;
        for table in [
            SECRETS,
            SEGMENTS,
            TRANSFERS,
            TRANSFERS_BY_BATCH,
            BATCHES,
            BATCHES_BY_TRANSFER,
            OWNERS_BY_BATCH,
            RETIRED,
        ] {
            tx.open_table(table).or_db()?;
        }
        tx.open_table(BATCH_OWNERS).or_db()?;
        move_legacy_batches(&tx)?;
        tx.commit().or_db()?;
        // Makes the entries of `segments` and the database file durable.
        sync_dir(&dir)?;
        let db = Arc::new(db);
        let committer = Committer::start(Arc::clone(&db))?;

        Ok(FsStore {
            inner: Arc::new(Inner {
                dir,
                segments_dir,
                db,
                committer,
                writing: Mutex::new(HashSet::new()),
                written: Condvar::new(),
                dir_synced: Mutex::new(HashSet::new()),
                #[cfg(test)]
                journal: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Applies a write through the commit thread, durably (see `commit.rs`).
    async fn write<F>(&self, apply: F) -> StoreResult<()>
    where
        F: FnOnce(&WriteTransaction) -> StoreResult<()> + Send + 'static,
    {
        self.inner.committer.write(Box::new(apply)).await
    }

    /// Runs blocking work on tokio's blocking pool: redb and file calls block, and
    /// fsync can take long enough to stall every task sharing a runtime worker.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
    }
}

/// Moves the batches of a store written before namespaces into their senders'
/// namespaces, with every index, in the opening transaction; nothing to do (two
/// empty-table checks) once done.
fn move_legacy_batches(tx: &WriteTransaction) -> StoreResult<()> {
    let mut records = Vec::new();
    {
        let legacy = tx.open_table(LEGACY_BATCHES).or_db()?;
        for entry in legacy.iter().or_db()? {
            let (k, v) = entry.or_db()?;
            let record = BatchRecord::from_bytes(bytes::Bytes::copy_from_slice(v.value()))
                .map_err(|e| {
                    StoreError::Corrupt(format!(
                        "batch record {} of an older store: {e}",
                        printable(k.value())
                    ))
                })?;
            records.push(record);
        }
    }
    for record in &records {
        let value = encode_batch(record)?;
        insert_batch(tx, record, &value)?;
    }
    tx.delete_table(LEGACY_BATCHES).or_db()?;
    tx.delete_table(LEGACY_BATCHES_BY_TRANSFER).or_db()?;
    Ok(())
}

/// Creates `dir` (mode 0700) if missing; reports whether it was created.
fn create_dir(dir: &Path) -> StoreResult<bool> {
    match DirBuilder::new().recursive(false).mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A missing parent: create the ancestors too, as `create_dir_all` would.
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

/// fsyncs a directory, making the entries created or removed in it durable.
fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Locks `m`, ignoring poisoning: the guarded sets are changed by single insert and
/// remove calls, so a panic elsewhere cannot leave them half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Maps redb's many error types to [`StoreError::Database`].
trait OrDb<T> {
    fn or_db(self) -> StoreResult<T>;
}

impl<T, E: fmt::Display> OrDb<T> for Result<T, E> {
    fn or_db(self) -> StoreResult<T> {
        self.map_err(|e| StoreError::Database(e.to_string()))
    }
}

/// The right to store one (transfer, index) pair; see [`Inner::writing`].
struct Claim<'a> {
    inner: &'a Inner,
    key: (TransferId, u64),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.inner.writing).remove(&self.key);
        self.inner.written.notify_all();
    }
}

impl Inner {
    fn segment_path(&self, transfer: TransferId) -> PathBuf {
        self.segments_dir.join(format!("{}.seg", transfer.to_hex()))
    }

    /// Waits until no other put of this (transfer, index) is in progress, then claims it.
    fn claim(&self, transfer: TransferId, index: u64) -> Claim<'_> {
        let key = (transfer, index);
        let mut writing = lock(&self.writing);
        while writing.contains(&key) {
            writing = self
                .written
                .wait(writing)
                .unwrap_or_else(PoisonError::into_inner);
        }
        writing.insert(key);
        Claim { inner: self, key }
    }

    /// fsyncs `segments` unless this transfer's file entry is known durable already.
    /// Checked per transfer rather than "did I create the file": a put that finds the
    /// file just created by a concurrent put must not return before its entry is synced.
    fn sync_segment_entry(&self, transfer: TransferId) -> StoreResult<()> {
        if lock(&self.dir_synced).contains(&transfer) {
            return Ok(());
        }
        sync_dir(&self.segments_dir)?;
        self.note(|| Step::SyncDir);
        lock(&self.dir_synced).insert(transfer);
        Ok(())
    }

    /// Writes a segment's bytes at `offset` of its transfer's file.
    fn write_segment_bytes(
        &self,
        file: &File,
        data: &[u8],
        offset: u64,
        transfer: TransferId,
        index: u64,
    ) -> StoreResult<()> {
        file.write_all_at(data, offset)?;
        self.note(|| Step::Write(transfer, index));
        Ok(())
    }

    /// Makes a transfer's file's data durable.
    fn sync_segment_file(&self, file: &File, transfer: TransferId) -> StoreResult<()> {
        file.sync_data()?;
        self.note(|| Step::SyncFile(transfer));
        Ok(())
    }

    /// Adds a step to the journal (tests only; nothing otherwise).
    #[cfg(test)]
    fn note(&self, step: impl FnOnce() -> Step) {
        lock(&self.journal).push(step());
    }

    #[cfg(not(test))]
    fn note(&self, _step: impl FnOnce() -> Step) {}

    fn put_segment(
        &self,
        transfer: TransferId,
        info: SegmentInfo,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<()> {
        let key = segment_key(transfer, info.index);
        let index = info.index;
        let exists =
            move || StoreError::AlreadyExists(format!("segment {index} of transfer {transfer}"));
        let _claim = self.claim(transfer, info.index);
        // Checked before the file is touched, so a duplicate never overwrites the
        // stored copy; the claim keeps the answer true until our record is committed.
        {
            let tx = self.db.begin_read().or_db()?;
            let table = tx.open_table(SEGMENTS).or_db()?;
            if table.get(key.as_slice()).or_db()?.is_some() {
                return Err(exists());
            }
        }

        let file = OpenOptions::new()
            .write(true)
            .create(true)
            // Other segments of the transfer are in this file already.
            .truncate(false)
            .mode(0o600)
            .open(self.segment_path(transfer))?;
        self.write_segment_bytes(&file, data, offset, transfer, index)?;
        self.sync_segment_file(&file, transfer)?;
        self.sync_segment_entry(transfer)?;

        // Only now, with the data durable, does the record say the segment exists.
        self.committer.write_blocking(Box::new(move |tx| {
            let mut table = tx.open_table(SEGMENTS).or_db()?;
            if table.get(key.as_slice()).or_db()?.is_some() {
                // Unreachable while the claim holds; refused rather than replaced anyway.
                return Err(exists());
            }
            table
                .insert(key.as_slice(), encode_segment(&info).as_slice())
                .or_db()?;
            Ok(())
        }))?;
        self.note(|| Step::Recorded(transfer, index));
        Ok(())
    }

    fn segments(&self, transfer: TransferId) -> StoreResult<Vec<SegmentInfo>> {
        let (lo, hi) = (segment_key(transfer, 0), segment_key(transfer, u64::MAX));
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(SEGMENTS).or_db()?;
        let mut out = Vec::new();
        for entry in table.range(lo.as_slice()..=hi.as_slice()).or_db()? {
            let (k, v) = entry.or_db()?;
            out.push(decode_segment(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn read_segment(&self, transfer: TransferId, offset: u64, len: u32) -> StoreResult<Bytes> {
        let file = match File::open(self.segment_path(transfer)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!(
                    "segments of transfer {transfer}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; len as usize];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Bytes::from(buf)),
            // A segment we acknowledged is shorter on disk than it was.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StoreError::Corrupt(
                format!("segment file of transfer {transfer} ends before {offset} + {len}"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn delete_segments(&self, transfer: TransferId) -> StoreResult<()> {
        // Records first: a crash between the two steps leaves an unreferenced file,
        // which a repeated delete removes, never a record pointing at missing data.
        let (lo, hi) = (segment_key(transfer, 0), segment_key(transfer, u64::MAX));
        self.committer.write_blocking(Box::new(move |tx| {
            let mut table = tx.open_table(SEGMENTS).or_db()?;
            table
                .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                .or_db()
        }))?;

        lock(&self.dir_synced).remove(&transfer);
        match fs::remove_file(self.segment_path(transfer)) {
            Ok(()) => sync_dir(&self.segments_dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn transfer(&self, transfer: TransferId) -> StoreResult<Option<TransferRecord>> {
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(TRANSFERS).or_db()?;
        match table.get(transfer.0.as_slice()).or_db()? {
            Some(v) => decode_transfer(v.value(), &transfer.0).map(Some),
            None => Ok(None),
        }
    }

    fn find_transfer(
        &self,
        sender: &[u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<TransferRecord>> {
        let tx = self.db.begin_read().or_db()?;
        let index = tx.open_table(TRANSFERS_BY_BATCH).or_db()?;
        let Some(id) = index.get(owned_key(sender, batch_id).as_slice()).or_db()? else {
            return Ok(None);
        };
        let id_bytes = id.value();
        let transfers = tx.open_table(TRANSFERS).or_db()?;
        // Index and record are written and removed together, so a dangling or
        // mismatched entry means the database is damaged.
        let Some(v) = transfers.get(id_bytes).or_db()? else {
            return Err(StoreError::Corrupt(format!(
                "the batch index names a missing transfer for batch {}",
                printable(batch_id)
            )));
        };
        let record = decode_transfer(v.value(), id_bytes)?;
        if record.sender != *sender || record.batch_id != batch_id {
            return Err(StoreError::Corrupt(format!(
                "the batch index entry for batch {} names transfer {} of another batch",
                printable(batch_id),
                record.transfer
            )));
        }
        Ok(Some(record))
    }

    fn transfers(&self) -> StoreResult<Vec<TransferRecord>> {
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(TRANSFERS).or_db()?;
        let mut out = Vec::new();
        for entry in table.iter().or_db()? {
            let (k, v) = entry.or_db()?;
            out.push(decode_transfer(v.value(), k.value())?);
        }
        Ok(out)
    }

    fn open_transfer_count(&self, sender: &[u8; 32]) -> StoreResult<u64> {
        // The batch index's keys start with the sender: count its range, without
        // reading or decoding a single record.
        let tx = self.db.begin_read().or_db()?;
        let index = tx.open_table(TRANSFERS_BY_BATCH).or_db()?;
        let mut count = 0;
        for entry in index.range(sender.as_slice()..).or_db()? {
            let (key, _) = entry.or_db()?;
            if !key.value().starts_with(sender) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    fn transfers_of(&self, sender: &[u8; 32]) -> StoreResult<Vec<TransferRecord>> {
        // The sender's range of the batch index, in batch-id order.
        let tx = self.db.begin_read().or_db()?;
        let index = tx.open_table(TRANSFERS_BY_BATCH).or_db()?;
        let transfers = tx.open_table(TRANSFERS).or_db()?;
        let mut out = Vec::new();
        for entry in index.range(sender.as_slice()..).or_db()? {
            let (key, id) = entry.or_db()?;
            if !key.value().starts_with(sender) {
                break;
            }
            let id = id.value();
            let Some(v) = transfers.get(id).or_db()? else {
                return Err(StoreError::Corrupt(
                    "the batch index names a missing transfer".into(),
                ));
            };
            out.push(decode_transfer(v.value(), id)?);
        }
        Ok(out)
    }

    /// A transfer no longer open takes no more segments: its entry in `dir_synced`
    /// goes, so the set holds open transfers only instead of growing with every batch
    /// ever stored. (Forgetting one too early only costs a directory fsync.)
    fn forget_dir_synced(&self, transfer: TransferId) {
        lock(&self.dir_synced).remove(&transfer);
    }

    /// How many transfers `dir_synced` holds (tests check it stays bounded).
    #[cfg(test)]
    fn dir_synced_len(&self) -> usize {
        lock(&self.dir_synced).len()
    }

    fn batch(&self, owner: &[u8; 32], batch_id: &[u8]) -> StoreResult<Option<BatchRecord>> {
        let key = owned_key(owner, batch_id);
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(BATCHES).or_db()?;
        match table.get(key.as_slice()).or_db()? {
            Some(v) => decode_batch(v.value(), &key).map(Some),
            None => Ok(None),
        }
    }

    fn batch_of_transfer(&self, transfer: TransferId) -> StoreResult<Option<BatchRecord>> {
        let tx = self.db.begin_read().or_db()?;
        let index = tx.open_table(BATCHES_BY_TRANSFER).or_db()?;
        let Some(key) = index.get(transfer.0.as_slice()).or_db()? else {
            return Ok(None);
        };
        let key = key.value();
        let batches = tx.open_table(BATCHES).or_db()?;
        // Written together, so a dangling or mismatched entry is damage.
        let record = match batches.get(key).or_db()? {
            Some(v) => decode_batch(v.value(), key)?,
            None => {
                return Err(StoreError::Corrupt(format!(
                    "the transfer index names a missing batch for transfer {transfer}"
                )));
            }
        };
        if record.transfer != transfer {
            return Err(StoreError::Corrupt(format!(
                "the transfer index names batch {} of another transfer for transfer {transfer}",
                printable(&record.batch_id)
            )));
        }
        Ok(Some(record))
    }

    fn owners_of(&self, batch_id: &[u8], limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        let prefix = owners_key(batch_id, &[0; 32]);
        let end = owners_key(batch_id, &[0xff; 32]);
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(OWNERS_BY_BATCH).or_db()?;
        let mut owners = Vec::new();
        for entry in table.range(prefix.as_slice()..=end.as_slice()).or_db()? {
            if owners.len() == limit {
                break;
            }
            let (k, _) = entry.or_db()?;
            let k = k.value();
            let owner = k
                .get(k.len().saturating_sub(32)..)
                .and_then(|o| <[u8; 32]>::try_from(o).ok())
                .ok_or_else(|| StoreError::Corrupt("a short owner index key".into()))?;
            owners.push(owner);
        }
        Ok(owners)
    }

    fn holdings(&self, owner: &[u8; 32]) -> StoreResult<Holdings> {
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(BATCH_OWNERS).or_db()?;
        match table.get(owner.as_slice()).or_db()? {
            Some(v) => decode_holdings(v.value()),
            None => Ok(Holdings::default()),
        }
    }

    fn batch_owners(&self, after: Option<[u8; 32]>, limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(BATCH_OWNERS).or_db()?;
        let range = match &after {
            Some(after) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(after.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<&[u8]>(..),
        }
        .or_db()?;
        let mut owners = Vec::new();
        for entry in range {
            if owners.len() == limit {
                break;
            }
            let (k, _) = entry.or_db()?;
            let owner = <[u8; 32]>::try_from(k.value())
                .map_err(|_| StoreError::Corrupt("an owner key that is not 32 bytes".into()))?;
            owners.push(owner);
        }
        Ok(owners)
    }

    fn batches_of(
        &self,
        owner: &[u8; 32],
        after: &[u8],
        limit: usize,
    ) -> StoreResult<Vec<BatchRecord>> {
        let start = owned_key(owner, after);
        let mut end = owner.to_vec();
        // The first key past every id of this owner: the owner plus one, as a
        // 32-byte big-endian number (an owner of all 0xff takes the rest).
        let past_owner = increment(&mut end);
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(BATCHES).or_db()?;
        let lower = std::ops::Bound::Excluded(start.as_slice());
        let upper = if past_owner {
            std::ops::Bound::Excluded(end.as_slice())
        } else {
            std::ops::Bound::Unbounded
        };
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>((lower, upper)).or_db()? {
            if out.len() == limit {
                break;
            }
            let (k, v) = entry.or_db()?;
            out.push(decode_batch(v.value(), k.value())?);
        }
        Ok(out)
    }

    fn batches(&self) -> StoreResult<Vec<BatchRecord>> {
        let tx = self.db.begin_read().or_db()?;
        let table = tx.open_table(BATCHES).or_db()?;
        let mut out = Vec::new();
        // redb orders `&[u8]` keys bytewise: by sender, then batch id, as promised.
        for entry in table.iter().or_db()? {
            let (k, v) = entry.or_db()?;
            out.push(decode_batch(v.value(), k.value())?);
        }
        Ok(out)
    }
}

/// Each step in one redb write transaction: atomic, and one commit instead of two.
#[async_trait]
impl Store for FsStore {
    async fn put_transfer_with_secret(
        &self,
        record: TransferRecord,
        sealed_secret: Vec<u8>,
    ) -> StoreResult<()> {
        // Encoded here, and the record inserted first: whatever refuses the write
        // must do so before anything is written (see `commit.rs`).
        let value = encode_transfer(&record)?;
        self.write(move |tx| {
            insert_transfer(tx, &record, &value)?;
            tx.open_table(SECRETS)
                .or_db()?
                .insert(record.transfer.0.as_slice(), sealed_secret.as_slice())
                .or_db()?;
            Ok(())
        })
        .await
    }

    async fn complete_transfer(&self, batch: BatchRecord) -> StoreResult<()> {
        let transfer = batch.transfer;
        let value = encode_batch(&batch)?;
        self.write(move |tx| {
            insert_batch(tx, &batch, &value)?;
            remove_transfer(tx, transfer)
        })
        .await?;
        self.inner.forget_dir_synced(transfer);
        Ok(())
    }

    async fn complete_replacing(&self, batch: BatchRecord) -> StoreResult<Option<BatchRecord>> {
        let transfer = batch.transfer;
        let value = encode_batch(&batch)?;
        let replaced = Arc::new(Mutex::new(None));
        let slot = replaced.clone();
        self.write(move |tx| {
            // Refused before anything is written: a second batch of one transfer.
            if tx
                .open_table(BATCHES_BY_TRANSFER)
                .or_db()?
                .get(transfer.0.as_slice())
                .or_db()?
                .is_some()
            {
                return Err(StoreError::AlreadyExists(format!(
                    "a batch of transfer {transfer}"
                )));
            }
            *lock(&slot) = retire_batch(tx, &batch.sender, &batch.batch_id)?;
            insert_batch(tx, &batch, &value)?;
            remove_transfer(tx, transfer)
        })
        .await?;
        self.inner.forget_dir_synced(transfer);
        Ok(lock(&replaced).take())
    }
}

#[async_trait]
impl SecretStore for FsStore {
    async fn put_secret(&self, transfer: TransferId, sealed: Vec<u8>) -> StoreResult<()> {
        self.write(move |tx| {
            tx.open_table(SECRETS)
                .or_db()?
                .insert(transfer.0.as_slice(), sealed.as_slice())
                .or_db()?;
            Ok(())
        })
        .await
    }

    async fn secret(&self, transfer: TransferId) -> StoreResult<Option<Vec<u8>>> {
        self.run(move |inner| {
            let tx = inner.db.begin_read().or_db()?;
            let table = tx.open_table(SECRETS).or_db()?;
            Ok(table
                .get(transfer.0.as_slice())
                .or_db()?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn delete_secret(&self, transfer: TransferId) -> StoreResult<()> {
        self.write(move |tx| {
            tx.open_table(SECRETS)
                .or_db()?
                .remove(transfer.0.as_slice())
                .or_db()?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl SegmentStore for FsStore {
    async fn put_segment(
        &self,
        transfer: TransferId,
        info: SegmentInfo,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<()> {
        check_len(&info, &data)?;
        if offset.checked_add(u64::from(info.len)).is_none() {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("segment offset {offset} + {} bytes overflows", info.len),
            )));
        }
        self.run(move |inner| inner.put_segment(transfer, info, offset, &data))
            .await
    }

    async fn segments(&self, transfer: TransferId) -> StoreResult<Vec<SegmentInfo>> {
        self.run(move |inner| inner.segments(transfer)).await
    }

    async fn read_segment(
        &self,
        transfer: TransferId,
        offset: u64,
        len: u32,
    ) -> StoreResult<Bytes> {
        self.run(move |inner| inner.read_segment(transfer, offset, len))
            .await
    }

    async fn delete_segments(&self, transfer: TransferId) -> StoreResult<()> {
        self.run(move |inner| inner.delete_segments(transfer)).await
    }
}

#[cfg(test)]
impl FsStore {
    /// How many transfers the store remembers as having a durable segment file entry.
    pub(super) fn dir_synced_len(&self) -> usize {
        self.inner.dir_synced_len()
    }

    /// The steps segments took to the disk so far, in order.
    pub(super) fn journal(&self) -> Vec<Step> {
        lock(&self.inner.journal).clone()
    }
}

#[async_trait]
impl TransferStore for FsStore {
    async fn put_transfer(&self, record: TransferRecord) -> StoreResult<()> {
        let value = encode_transfer(&record)?;
        self.write(move |tx| insert_transfer(tx, &record, &value))
            .await
    }

    async fn transfer(&self, transfer: TransferId) -> StoreResult<Option<TransferRecord>> {
        self.run(move |inner| inner.transfer(transfer)).await
    }

    async fn find_transfer(
        &self,
        sender: [u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<TransferRecord>> {
        let batch_id = batch_id.to_vec();
        self.run(move |inner| inner.find_transfer(&sender, &batch_id))
            .await
    }

    async fn transfers(&self) -> StoreResult<Vec<TransferRecord>> {
        self.run(|inner| inner.transfers()).await
    }

    async fn open_transfer_count(&self, sender: [u8; 32]) -> StoreResult<u64> {
        self.run(move |inner| inner.open_transfer_count(&sender))
            .await
    }

    async fn transfers_of(&self, sender: [u8; 32]) -> StoreResult<Vec<TransferRecord>> {
        self.run(move |inner| inner.transfers_of(&sender)).await
    }

    async fn delete_transfer(&self, transfer: TransferId) -> StoreResult<()> {
        self.write(move |tx| remove_transfer(tx, transfer)).await?;
        self.inner.forget_dir_synced(transfer);
        Ok(())
    }
}

#[async_trait]
impl BatchStore for FsStore {
    async fn put_batch(&self, record: BatchRecord) -> StoreResult<()> {
        let value = encode_batch(&record)?;
        self.write(move |tx| insert_batch(tx, &record, &value))
            .await
    }

    async fn batch(&self, owner: &[u8; 32], batch_id: &[u8]) -> StoreResult<Option<BatchRecord>> {
        let (owner, batch_id) = (*owner, batch_id.to_vec());
        self.run(move |inner| inner.batch(&owner, &batch_id)).await
    }

    async fn batch_of_transfer(&self, transfer: TransferId) -> StoreResult<Option<BatchRecord>> {
        self.run(move |inner| inner.batch_of_transfer(transfer))
            .await
    }

    async fn owners_of(&self, batch_id: &[u8], limit: usize) -> StoreResult<Vec<[u8; 32]>> {
        let batch_id = batch_id.to_vec();
        self.run(move |inner| inner.owners_of(&batch_id, limit))
            .await
    }

    async fn batch_owners(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> StoreResult<Vec<[u8; 32]>> {
        self.run(move |inner| inner.batch_owners(after, limit))
            .await
    }

    async fn batches_of(
        &self,
        owner: &[u8; 32],
        after: &[u8],
        limit: usize,
    ) -> StoreResult<Vec<BatchRecord>> {
        let (owner, after) = (*owner, after.to_vec());
        self.run(move |inner| inner.batches_of(&owner, &after, limit))
            .await
    }

    async fn holdings(&self, owner: &[u8; 32]) -> StoreResult<Holdings> {
        let owner = *owner;
        self.run(move |inner| inner.holdings(&owner)).await
    }

    async fn batches(&self) -> StoreResult<Vec<BatchRecord>> {
        self.run(|inner| inner.batches()).await
    }

    async fn remove_batch(
        &self,
        owner: &[u8; 32],
        batch_id: &[u8],
    ) -> StoreResult<Option<BatchRecord>> {
        let (owner, batch_id) = (*owner, batch_id.to_vec());
        let removed = Arc::new(Mutex::new(None));
        let slot = removed.clone();
        self.write(move |tx| {
            *lock(&slot) = retire_batch(tx, &owner, &batch_id)?;
            Ok(())
        })
        .await?;
        Ok(lock(&removed).take())
    }

    async fn retired(&self) -> StoreResult<Vec<TransferId>> {
        self.run(|inner| {
            let tx = inner.db.begin_read().or_db()?;
            let table = tx.open_table(RETIRED).or_db()?;
            let mut out = Vec::new();
            for entry in table.iter().or_db()? {
                let (k, _) = entry.or_db()?;
                let id = <[u8; 16]>::try_from(k.value()).map_err(|_| {
                    StoreError::Corrupt("a retired transfer id that is not 16 bytes".into())
                })?;
                out.push(TransferId(id));
            }
            Ok(out)
        })
        .await
    }

    async fn forget_retired(&self, transfer: TransferId) -> StoreResult<()> {
        self.write(move |tx| {
            tx.open_table(RETIRED)
                .or_db()?
                .remove(transfer.0.as_slice())
                .or_db()?;
            Ok(())
        })
        .await
    }
}

/// Inserts an open transfer's record and its batch-index entry into `tx`, refusing
/// a duplicate id or a second open transfer of one sender for one batch id.
///
/// Both checks and both inserts happen in one write transaction, which redb runs
/// one at a time, so a concurrent duplicate cannot slip between check and insert;
/// and both checks come before either insert, so a refusal writes nothing and the
/// rest of its commit group goes ahead (see `commit.rs`).
fn insert_transfer(
    tx: &WriteTransaction,
    record: &TransferRecord,
    value: &[u8],
) -> StoreResult<()> {
    let index_key = owned_key(&record.sender, &record.batch_id);
    let mut transfers = tx.open_table(TRANSFERS).or_db()?;
    let mut index = tx.open_table(TRANSFERS_BY_BATCH).or_db()?;
    if transfers
        .get(record.transfer.0.as_slice())
        .or_db()?
        .is_some()
    {
        return Err(StoreError::AlreadyExists(format!(
            "transfer {}",
            record.transfer
        )));
    }
    // The index holds one transfer per (sender, batch id); a second would make
    // `find_transfer` ambiguous.
    if index.get(index_key.as_slice()).or_db()?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "an open transfer of this sender for batch {}",
            printable(&record.batch_id)
        )));
    }
    transfers
        .insert(record.transfer.0.as_slice(), value)
        .or_db()?;
    index
        .insert(index_key.as_slice(), record.transfer.0.as_slice())
        .or_db()?;
    Ok(())
}

/// Removes an open transfer's record and its batch-index entry from `tx` (missing
/// is not an error).
fn remove_transfer(tx: &WriteTransaction, transfer: TransferId) -> StoreResult<()> {
    let id = transfer.0;
    let mut transfers = tx.open_table(TRANSFERS).or_db()?;
    let mut index = tx.open_table(TRANSFERS_BY_BATCH).or_db()?;
    let old = transfers
        .remove(id.as_slice())
        .or_db()?
        .map(|v| decode_transfer(v.value(), &id));
    match old {
        None => {}
        Some(Ok(record)) => {
            let key = owned_key(&record.sender, &record.batch_id);
            // Remove the index entry only if it is ours.
            let ours = index
                .get(key.as_slice())
                .or_db()?
                .is_some_and(|v| v.value() == id.as_slice());
            if ours {
                index.remove(key.as_slice()).or_db()?;
            }
        }
        // A record too damaged to name its index key: find the entry by value, so
        // deleting is still a way out of the damage.
        Some(Err(_)) => index.retain(|_, v| v != id.as_slice()).or_db()?,
    }
    Ok(())
}

/// Inserts a completed batch into its sender's namespace, with its transfer and
/// owner index entries; a batch id the sender holds, or a second batch from one
/// transfer, is refused before anything is written, so a stored batch is never
/// replaced.
fn insert_batch(tx: &WriteTransaction, record: &BatchRecord, value: &[u8]) -> StoreResult<()> {
    let key = owned_key(&record.sender, &record.batch_id);
    let mut table = tx.open_table(BATCHES).or_db()?;
    let mut by_transfer = tx.open_table(BATCHES_BY_TRANSFER).or_db()?;
    if table.get(key.as_slice()).or_db()?.is_some() {
        return Err(StoreError::AlreadyExists(format!(
            "batch {} of this sender",
            printable(&record.batch_id)
        )));
    }
    if by_transfer
        .get(record.transfer.0.as_slice())
        .or_db()?
        .is_some()
    {
        return Err(StoreError::AlreadyExists(format!(
            "a batch of transfer {}",
            record.transfer
        )));
    }
    table.insert(key.as_slice(), value).or_db()?;
    by_transfer
        .insert(record.transfer.0.as_slice(), key.as_slice())
        .or_db()?;
    tx.open_table(OWNERS_BY_BATCH)
        .or_db()?
        .insert(
            owners_key(&record.batch_id, &record.sender).as_slice(),
            &[][..],
        )
        .or_db()?;
    let mut owners = tx.open_table(BATCH_OWNERS).or_db()?;
    let held = match owners.get(record.sender.as_slice()).or_db()? {
        Some(v) => decode_holdings(v.value())?,
        None => Holdings::default(),
    };
    let held = Holdings {
        batches: held.batches.saturating_add(1),
        bytes: held.bytes.saturating_add(record.size),
    };
    owners
        .insert(record.sender.as_slice(), encode_holdings(&held).as_slice())
        .or_db()?;
    Ok(())
}

/// Removes `owner`'s batch `batch_id` with its index entries from `tx`, takes it
/// off the owner's holdings (the owner leaves the namespaces when it holds none)
/// and records its transfer as retired; returns it, or `None` if there is none.
/// Nothing it can refuse comes after a write.
fn retire_batch(
    tx: &WriteTransaction,
    owner: &[u8; 32],
    batch_id: &[u8],
) -> StoreResult<Option<BatchRecord>> {
    let key = owned_key(owner, batch_id);
    let mut table = tx.open_table(BATCHES).or_db()?;
    let record = match table.get(key.as_slice()).or_db()? {
        Some(v) => decode_batch(v.value(), &key)?,
        None => return Ok(None),
    };
    let mut owners = tx.open_table(BATCH_OWNERS).or_db()?;
    let held = match owners.get(owner.as_slice()).or_db()? {
        Some(v) => decode_holdings(v.value())?,
        None => Holdings::default(),
    };
    table.remove(key.as_slice()).or_db()?;
    tx.open_table(BATCHES_BY_TRANSFER)
        .or_db()?
        .remove(record.transfer.0.as_slice())
        .or_db()?;
    tx.open_table(OWNERS_BY_BATCH)
        .or_db()?
        .remove(owners_key(batch_id, owner).as_slice())
        .or_db()?;
    let held = Holdings {
        batches: held.batches.saturating_sub(1),
        bytes: held.bytes.saturating_sub(record.size),
    };
    if held.batches == 0 {
        owners.remove(owner.as_slice()).or_db()?;
    } else {
        owners
            .insert(owner.as_slice(), encode_holdings(&held).as_slice())
            .or_db()?;
    }
    tx.open_table(RETIRED)
        .or_db()?
        .insert(record.transfer.0.as_slice(), &[][..])
        .or_db()?;
    Ok(Some(record))
}

/// A [`BATCH_OWNERS`] value.
fn encode_holdings(h: &Holdings) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&h.batches.to_be_bytes());
    v[8..].copy_from_slice(&h.bytes.to_be_bytes());
    v
}

fn decode_holdings(v: &[u8]) -> StoreResult<Holdings> {
    let v: [u8; 16] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt("a holdings record that is not 16 bytes".into()))?;
    let (batches, bytes) = v.split_at(8);
    Ok(Holdings {
        batches: u64::from_be_bytes(batches.try_into().unwrap_or_default()),
        bytes: u64::from_be_bytes(bytes.try_into().unwrap_or_default()),
    })
}

// ---- Keys ----

/// The key of the owner index: the batch id's length, the batch id, the owner.
fn owners_key(batch_id: &[u8], owner: &[u8; 32]) -> Vec<u8> {
    // Batch ids are at most 256 bytes (the wire bounds them before they get here).
    let len = u16::try_from(batch_id.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + batch_id.len() + 32);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(batch_id);
    key.extend_from_slice(owner);
    key
}

/// Adds one to `bytes` as a big-endian number; false if it overflowed (was all
/// 0xff).
fn increment(bytes: &mut [u8]) -> bool {
    for b in bytes.iter_mut().rev() {
        let (next, carry) = b.overflowing_add(1);
        *b = next;
        if !carry {
            return true;
        }
    }
    false
}
