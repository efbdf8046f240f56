//! The store conformance suite, written once against `&dyn Store` and run against
//! [`MemoryStore`] and [`FsStore`], plus tests only the file-system store can have
//! (restart, corruption, paths).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use redb::{Database, TableDefinition};

use super::fs::{
    BATCHES, DB_FILE, SEGMENTS, SEGMENTS_DIR, TRANSFERS, decode_batch, decode_transfer,
    encode_batch, encode_transfer,
};
use super::*;
use crate::wire::{ChainHash, Tag};

// ---- Fixtures ----

fn tid(n: u8) -> TransferId {
    TransferId([n; 16])
}

/// A batch id made to break any store that used it as a path.
const HOSTILE: &[u8] = b"../../etc/passwd\0\xff";

fn transfer_record(id: u8, batch_id: &[u8], sender: u8) -> TransferRecord {
    TransferRecord {
        transfer: tid(id),
        batch_id: batch_id.to_vec(),
        sender: [sender; 32],
        chunk_size: 1 << 16,
        created_unix: 1_700_000_000 + u64::from(id),
        deadline_unix: 1_700_086_400 + u64::from(id),
    }
}

fn batch_record(batch_id: &[u8], n: u8) -> BatchRecord {
    BatchRecord {
        batch_id: batch_id.to_vec(),
        transfer: tid(n),
        sender: [n ^ 0x5a; 32],
        chunk_size: 4096,
        segment_count: u64::from(n) + 1,
        size: 4096 * u64::from(n) + 17,
        sealed_metadata: vec![n; usize::from(n) + 3],
        chain: ChainHash([n.wrapping_add(1); 64]),
        completed_unix: 1_800_000_000 + u64::from(n),
        receipt: vec![0xee, n, 0, 0xff],
    }
}

/// Segment length used by the suite: 32 ciphertext bytes (16 of them the tag).
const SEG: u32 = 32;

/// A segment with recognisable data, and its record (tag = the last 16 bytes).
fn segment(index: u64, fill: u8) -> (SegmentInfo, Bytes) {
    let data: Vec<u8> = (0..SEG)
        .map(|i| fill.wrapping_add(i as u8).wrapping_mul(index as u8 | 1))
        .collect();
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&data[data.len() - 16..]);
    (
        SegmentInfo {
            index,
            len: SEG,
            tag: Tag(tag),
        },
        Bytes::from(data),
    )
}

fn offset(index: u64) -> u64 {
    index * u64::from(SEG)
}

#[track_caller]
fn assert_already_exists<T: std::fmt::Debug>(r: StoreResult<T>) {
    assert!(matches!(r, Err(StoreError::AlreadyExists(_))), "{r:?}");
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(r: StoreResult<T>) {
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
}

// ---- The conformance suite ----

async fn secrets_round_trip(s: &dyn Store) {
    assert_eq!(s.secret(tid(1)).await.unwrap(), None);
    s.put_secret(tid(1), b"sealed one".to_vec()).await.unwrap();
    s.put_secret(tid(2), Vec::new()).await.unwrap();
    assert_eq!(
        s.secret(tid(1)).await.unwrap().as_deref(),
        Some(&b"sealed one"[..])
    );
    assert_eq!(s.secret(tid(2)).await.unwrap(), Some(Vec::new()));
    // Put replaces.
    s.put_secret(tid(1), b"sealed again".to_vec())
        .await
        .unwrap();
    assert_eq!(
        s.secret(tid(1)).await.unwrap().as_deref(),
        Some(&b"sealed again"[..])
    );
    s.delete_secret(tid(1)).await.unwrap();
    assert_eq!(s.secret(tid(1)).await.unwrap(), None);
    s.delete_secret(tid(1)).await.unwrap();
    s.delete_secret(tid(9)).await.unwrap();
    assert_eq!(s.secret(tid(2)).await.unwrap(), Some(Vec::new()));
}

async fn segments_sorted_and_read_back(s: &dyn Store) {
    let t = tid(3);
    assert_eq!(s.segments(t).await.unwrap(), Vec::new());
    assert!(matches!(
        s.read_segment(t, 0, SEG).await,
        Err(StoreError::NotFound(_))
    ));
    // Out of order, with a gap, and an index whose big-endian bytes differ in the
    // high byte (a little-endian key would sort it first).
    let indexes = [5u64, 0, 2, 1, 256, 3];
    for &i in &indexes {
        let (info, data) = segment(i, 7);
        s.put_segment(t, info, offset(i), data).await.unwrap();
    }
    // Another transfer's segments stay out of this one's listing.
    let (info, data) = segment(4, 9);
    s.put_segment(tid(4), info, offset(4), data).await.unwrap();

    let got = s.segments(t).await.unwrap();
    let mut sorted = indexes.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        got,
        sorted.iter().map(|&i| segment(i, 7).0).collect::<Vec<_>>()
    );
    for &i in &indexes {
        assert_eq!(
            s.read_segment(t, offset(i), SEG).await.unwrap(),
            segment(i, 7).1
        );
    }
    assert_eq!(s.segments(tid(4)).await.unwrap(), vec![segment(4, 9).0]);
    // Reading past the end of the stored data is a short segment.
    assert_corrupt(s.read_segment(t, offset(257), SEG).await);
}

async fn duplicate_segment_keeps_first(s: &dyn Store) {
    let t = tid(5);
    let (first, first_data) = segment(0, 1);
    s.put_segment(t, first, 0, first_data.clone())
        .await
        .unwrap();
    let (second, second_data) = segment(0, 200);
    assert_ne!(first_data, second_data);
    assert_already_exists(s.put_segment(t, second, 0, second_data).await);
    assert_eq!(s.read_segment(t, 0, SEG).await.unwrap(), first_data);
    assert_eq!(s.segments(t).await.unwrap(), vec![first]);
}

async fn segment_length_must_match_record(s: &dyn Store) {
    let t = tid(6);
    let (mut info, data) = segment(0, 1);
    info.len = SEG + 1;
    assert!(s.put_segment(t, info, 0, data).await.is_err());
    assert_eq!(s.segments(t).await.unwrap(), Vec::new());
}

async fn delete_segments_semantics(s: &dyn Store) {
    let (keep, gone) = (tid(7), tid(8));
    s.delete_segments(gone).await.unwrap(); // missing is fine
    for t in [keep, gone] {
        for i in 0..3 {
            let (info, data) = segment(i, 3);
            s.put_segment(t, info, offset(i), data).await.unwrap();
        }
    }
    s.delete_segments(gone).await.unwrap();
    assert_eq!(s.segments(gone).await.unwrap(), Vec::new());
    assert!(matches!(
        s.read_segment(gone, 0, SEG).await,
        Err(StoreError::NotFound(_))
    ));
    s.delete_segments(gone).await.unwrap();
    assert_eq!(s.segments(keep).await.unwrap().len(), 3);
    assert_eq!(
        s.read_segment(keep, offset(2), SEG).await.unwrap(),
        segment(2, 3).1
    );
    // Deleted indexes can be stored again.
    let (info, data) = segment(0, 99);
    s.put_segment(gone, info, 0, data.clone()).await.unwrap();
    assert_eq!(s.read_segment(gone, 0, SEG).await.unwrap(), data);
    assert_eq!(s.segments(gone).await.unwrap(), vec![info]);
}

async fn transfers_round_trip(s: &dyn Store) {
    assert_eq!(s.transfer(tid(1)).await.unwrap(), None);
    assert_eq!(s.transfers().await.unwrap(), Vec::new());
    let a = transfer_record(20, b"batch-a", 1);
    let b = transfer_record(10, b"batch-b", 1);
    let c = transfer_record(30, b"batch-a", 2); // same batch id, other sender
    for r in [&a, &b, &c] {
        s.put_transfer(r.clone()).await.unwrap();
    }
    assert_eq!(s.transfer(a.transfer).await.unwrap().as_ref(), Some(&a));
    // Sorted by transfer id.
    assert_eq!(
        s.transfers().await.unwrap(),
        vec![b.clone(), a.clone(), c.clone()]
    );
    assert_eq!(
        s.find_transfer([1; 32], b"batch-a").await.unwrap().as_ref(),
        Some(&a)
    );
    assert_eq!(
        s.find_transfer([2; 32], b"batch-a").await.unwrap().as_ref(),
        Some(&c)
    );
    assert_eq!(s.find_transfer([3; 32], b"batch-a").await.unwrap(), None);
    assert_eq!(s.find_transfer([1; 32], b"batch-").await.unwrap(), None);
    assert_eq!(s.find_transfer([1; 32], b"batch-aa").await.unwrap(), None);

    // The same id again is refused and changes nothing.
    let mut dup = transfer_record(20, b"batch-z", 9);
    dup.chunk_size = 1;
    assert_already_exists(s.put_transfer(dup).await);
    assert_eq!(s.transfer(a.transfer).await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.find_transfer([9; 32], b"batch-z").await.unwrap(), None);
    // So is a second open transfer of one sender for one batch id.
    assert_already_exists(s.put_transfer(transfer_record(21, b"batch-a", 1)).await);
    assert_eq!(s.transfer(tid(21)).await.unwrap(), None);
    assert_eq!(
        s.find_transfer([1; 32], b"batch-a").await.unwrap().as_ref(),
        Some(&a)
    );

    s.delete_transfer(a.transfer).await.unwrap();
    s.delete_transfer(a.transfer).await.unwrap();
    s.delete_transfer(tid(99)).await.unwrap();
    assert_eq!(s.transfer(a.transfer).await.unwrap(), None);
    assert_eq!(s.find_transfer([1; 32], b"batch-a").await.unwrap(), None);
    assert_eq!(s.transfers().await.unwrap(), vec![b.clone(), c.clone()]);
    // After the delete, the sender may open the batch again under a new id.
    let again = transfer_record(21, b"batch-a", 1);
    s.put_transfer(again.clone()).await.unwrap();
    assert_eq!(
        s.find_transfer([1; 32], b"batch-a").await.unwrap(),
        Some(again)
    );
}

async fn open_transfer_count_is_per_sender(s: &dyn Store) {
    let mut neighbour = TransferRecord {
        sender: [1; 32],
        ..transfer_record(50, b"batch", 1)
    };
    // A key that differs only in its last byte sorts right after [1; 32]'s entries.
    neighbour.sender[31] = 2;
    assert_eq!(s.open_transfer_count([1; 32]).await.unwrap(), 0);
    for r in [
        transfer_record(51, b"a", 1),
        transfer_record(52, b"b", 1),
        transfer_record(53, HOSTILE, 1),
        transfer_record(54, b"a", 0),
        neighbour.clone(),
    ] {
        s.put_transfer(r).await.unwrap();
    }
    assert_eq!(s.open_transfer_count([1; 32]).await.unwrap(), 3);
    assert_eq!(s.open_transfer_count(neighbour.sender).await.unwrap(), 1);
    assert_eq!(s.open_transfer_count([0; 32]).await.unwrap(), 1);
    assert_eq!(s.open_transfer_count([9; 32]).await.unwrap(), 0);
    s.delete_transfer(tid(52)).await.unwrap();
    assert_eq!(s.open_transfer_count([1; 32]).await.unwrap(), 2);
}

async fn a_transfer_opens_with_its_secret_and_completes_into_its_batch(s: &dyn Store) {
    let t = transfer_record(60, b"life", 6);
    s.put_transfer_with_secret(t.clone(), b"sealed".to_vec())
        .await
        .unwrap();
    assert_eq!(s.transfer(t.transfer).await.unwrap().as_ref(), Some(&t));
    assert_eq!(
        s.secret(t.transfer).await.unwrap(),
        Some(b"sealed".to_vec())
    );
    // A second open transfer of the sender for the batch is refused.
    let twin = transfer_record(61, b"life", 6);
    assert_already_exists(s.put_transfer_with_secret(twin, b"other".to_vec()).await);
    assert_eq!(s.transfer(tid(61)).await.unwrap(), None);
    assert_eq!(
        s.secret(tid(61)).await.unwrap(),
        None,
        "no secret left behind"
    );
    assert_eq!(
        s.find_transfer([6; 32], b"life").await.unwrap(),
        Some(t.clone())
    );

    // Completing into a batch id that exists is refused, and the transfer stays.
    s.put_batch(batch_record(b"taken", 62)).await.unwrap();
    let clash = BatchRecord {
        transfer: t.transfer,
        ..batch_record(b"taken", 63)
    };
    assert_already_exists(s.complete_transfer(clash).await);
    assert_eq!(
        s.batch(b"taken").await.unwrap(),
        Some(batch_record(b"taken", 62))
    );
    assert_eq!(s.transfer(t.transfer).await.unwrap().as_ref(), Some(&t));

    let done = BatchRecord {
        transfer: t.transfer,
        ..batch_record(b"life", 64)
    };
    s.complete_transfer(done.clone()).await.unwrap();
    assert_eq!(s.batch(b"life").await.unwrap(), Some(done.clone()));
    // The batch is found by the transfer that delivered it, and only by that one.
    assert_eq!(
        s.batch_of_transfer(t.transfer).await.unwrap(),
        Some(done.clone())
    );
    assert_eq!(s.batch_of_transfer(tid(61)).await.unwrap(), None);
    // One transfer delivers one batch: a second batch naming it is refused.
    let again = BatchRecord {
        transfer: t.transfer,
        ..batch_record(b"life again", 65)
    };
    assert_already_exists(s.put_batch(again).await);
    assert_eq!(s.batch(b"life again").await.unwrap(), None);
    assert_eq!(s.transfer(t.transfer).await.unwrap(), None);
    assert_eq!(s.find_transfer([6; 32], b"life").await.unwrap(), None);
    assert_eq!(s.open_transfer_count([6; 32]).await.unwrap(), 0);
    // Retrieval needs the secret after completion.
    assert_eq!(
        s.secret(t.transfer).await.unwrap(),
        Some(b"sealed".to_vec())
    );
}

/// Batch ids that are not file names, nor even UTF-8.
fn hostile_batch_ids() -> Vec<Vec<u8>> {
    vec![
        HOSTILE.to_vec(),
        b"".to_vec(),
        b"/".to_vec(),
        b"..".to_vec(),
        b"/etc/passwd".to_vec(),
        b"a/../../b\\c:d".to_vec(),
        vec![0u8; 3],
        vec![0xffu8; crate::wire::MAX_BATCH_ID],
    ]
}

async fn hostile_batch_ids_are_just_bytes(s: &dyn Store) {
    let ids = hostile_batch_ids();
    for (n, id) in ids.iter().enumerate() {
        let n = n as u8 + 40;
        let t = transfer_record(n, id, 0x77);
        s.put_transfer(t.clone()).await.unwrap();
        let (info, data) = segment(0, n);
        s.put_segment(t.transfer, info, 0, data).await.unwrap();
        s.put_batch(batch_record(id, n)).await.unwrap();
    }
    for (n, id) in ids.iter().enumerate() {
        let n = n as u8 + 40;
        assert_eq!(
            s.find_transfer([0x77; 32], id).await.unwrap(),
            Some(transfer_record(n, id, 0x77)),
        );
        assert_eq!(s.batch(id).await.unwrap(), Some(batch_record(id, n)));
        assert_eq!(
            s.read_segment(tid(n), 0, SEG).await.unwrap(),
            segment(0, n).1
        );
    }
    assert_eq!(
        s.find_transfer([0x77; 32], b"../../etc/passwd")
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.batch(b"../../etc/passwd\0").await.unwrap(), None);
    assert_eq!(s.batches().await.unwrap().len(), ids.len());
}

async fn batches_round_trip(s: &dyn Store) {
    assert_eq!(s.batch(b"a").await.unwrap(), None);
    assert_eq!(s.batches().await.unwrap(), Vec::new());
    // Inserted out of order; bytewise order puts "a" < "a\0" < "b" < "\xff".
    let ids: [&[u8]; 4] = [b"b", b"\xff", b"a\0", b"a"];
    for (n, id) in ids.iter().enumerate() {
        s.put_batch(batch_record(id, n as u8)).await.unwrap();
    }
    assert_eq!(
        s.batch(b"a\0").await.unwrap(),
        Some(batch_record(b"a\0", 2))
    );
    let sorted: Vec<Vec<u8>> = s
        .batches()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.batch_id)
        .collect();
    assert_eq!(
        sorted,
        vec![
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"b".to_vec(),
            b"\xff".to_vec()
        ]
    );
    // A duplicate is refused and the first record stays as it was.
    let mut dup = batch_record(b"b", 200);
    dup.receipt = b"forged".to_vec();
    assert_already_exists(s.put_batch(dup).await);
    assert_eq!(s.batch(b"b").await.unwrap(), Some(batch_record(b"b", 0)));
    assert_eq!(s.batches().await.unwrap().len(), 4);
}

/// Runs each suite function against a fresh MemoryStore and a fresh FsStore.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&MemoryStore::new()).await;
                }
            )*
        }

        mod fs_store {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = FsStore::open(dir.path()).unwrap();
                    super::$name(&store).await;
                }
            )*
        }
    };
}

conformance!(
    secrets_round_trip,
    segments_sorted_and_read_back,
    duplicate_segment_keeps_first,
    segment_length_must_match_record,
    delete_segments_semantics,
    transfers_round_trip,
    open_transfer_count_is_per_sender,
    a_transfer_opens_with_its_secret_and_completes_into_its_batch,
    hostile_batch_ids_are_just_bytes,
    batches_round_trip,
);

// ---- FsStore only ----

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

#[tokio::test]
async fn fs_batch_ids_never_name_paths() {
    let tmp = tempfile::tempdir().unwrap();
    // Nested, so a `../../` that escaped `segments` would still land inside `tmp`,
    // where the listing below sees it.
    let dir = tmp.path().join("a").join("b").join("store");
    let store = FsStore::open(&dir).unwrap();
    assert_eq!(store.dir(), dir);
    hostile_batch_ids_are_just_bytes(&store).await;
    drop(store);

    let mut expected: BTreeSet<PathBuf> = ["a", "a/b", "a/b/store"].map(PathBuf::from).into();
    let store_rel = Path::new("a/b/store");
    expected.insert(store_rel.join(DB_FILE));
    expected.insert(store_rel.join(SEGMENTS_DIR));
    for n in 0..hostile_batch_ids().len() {
        let name = format!("{}.seg", tid(n as u8 + 40).to_hex());
        assert_eq!(name.len(), 36);
        expected.insert(store_rel.join(SEGMENTS_DIR).join(name));
    }
    let got = tree(tmp.path());
    assert_eq!(got, expected);
    for path in &got {
        let s = path.to_string_lossy();
        assert!(!s.contains("passwd") && !s.contains("etc"), "{s}");
    }
}

#[tokio::test]
async fn fs_data_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let t = transfer_record(1, HOSTILE, 2);
    let b = batch_record(b"done", 3);
    {
        let store = FsStore::open(tmp.path()).unwrap();
        store
            .put_secret(t.transfer, b"sealed".to_vec())
            .await
            .unwrap();
        store.put_transfer(t.clone()).await.unwrap();
        store.put_batch(b.clone()).await.unwrap();
        for i in [1, 0] {
            let (info, data) = segment(i, 5);
            store
                .put_segment(t.transfer, info, offset(i), data)
                .await
                .unwrap();
        }
        // A clone is the same store; dropping both closes the database.
        let clone = store.clone();
        assert_eq!(clone.transfers().await.unwrap(), vec![t.clone()]);
        assert!(format!("{clone:?}").contains("FsStore"));
    }

    let store = FsStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.secret(t.transfer).await.unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    assert_eq!(store.transfer(t.transfer).await.unwrap().as_ref(), Some(&t));
    assert_eq!(
        store
            .find_transfer(t.sender, HOSTILE)
            .await
            .unwrap()
            .as_ref(),
        Some(&t)
    );
    assert_eq!(store.batches().await.unwrap(), vec![b.clone()]);
    assert_eq!(
        store.batch_of_transfer(b.transfer).await.unwrap().as_ref(),
        Some(&b)
    );
    assert_eq!(
        store.segments(t.transfer).await.unwrap(),
        vec![segment(0, 5).0, segment(1, 5).0]
    );
    for i in [0, 1] {
        assert_eq!(
            store
                .read_segment(t.transfer, offset(i), SEG)
                .await
                .unwrap(),
            segment(i, 5).1
        );
    }
    // The duplicate check survives the restart too, and adding to the file works.
    let (info, data) = segment(0, 77);
    assert_already_exists(store.put_segment(t.transfer, info, 0, data).await);
    let (info, data) = segment(2, 5);
    store
        .put_segment(t.transfer, info, offset(2), data.clone())
        .await
        .unwrap();
    assert_eq!(
        store
            .read_segment(t.transfer, offset(2), SEG)
            .await
            .unwrap(),
        data
    );
    assert_eq!(
        store
            .read_segment(t.transfer, offset(0), SEG)
            .await
            .unwrap(),
        segment(0, 5).1
    );
}

/// A store written before the transfer → batch index existed is indexed when
/// opened, so a batch completed then still answers a repeated completion.
#[tokio::test]
async fn fs_indexes_batches_of_an_older_store_by_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (batch_record(b"old", 7), batch_record(b"new", 8));
    {
        let store = FsStore::open(tmp.path()).unwrap();
        store.put_batch(old.clone()).await.unwrap();
        store.put_batch(new.clone()).await.unwrap();
    }
    // Make it look like a store from before the index: entries gone.
    {
        let db = Database::create(tmp.path().join(DB_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(super::fs::BATCHES_BY_TRANSFER).unwrap();
        tx.commit().unwrap();
    }
    let store = FsStore::open(tmp.path()).unwrap();
    assert_eq!(
        store.batch_of_transfer(old.transfer).await.unwrap(),
        Some(old)
    );
    assert_eq!(
        store.batch_of_transfer(new.transfer).await.unwrap(),
        Some(new)
    );
}

/// Opens the closed store's database directly and overwrites one value.
fn poke(dir: &Path, table: TableDefinition<&[u8], &[u8]>, key: &[u8], value: &[u8]) {
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(table).unwrap().insert(key, value).unwrap();
    tx.commit().unwrap();
}

#[tokio::test]
async fn fs_corrupt_records_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let t = transfer_record(1, b"batch", 2);
    let b = batch_record(b"batch", 3);
    {
        let store = FsStore::open(tmp.path()).unwrap();
        store.put_transfer(t.clone()).await.unwrap();
        store.put_batch(b.clone()).await.unwrap();
        let (info, data) = segment(0, 1);
        store.put_segment(t.transfer, info, 0, data).await.unwrap();
    }
    let good_transfer = encode_transfer(&t).unwrap();
    let good_batch = encode_batch(&b).unwrap();

    // Each kind of damage, then every read that meets it.
    let mut trailing = good_transfer.clone();
    trailing.push(0);
    let mut version = good_transfer.clone();
    version[0] = 2;
    let other_id = encode_transfer(&transfer_record(9, b"batch", 2)).unwrap();
    for bad in [
        b"garbage".to_vec(),
        Vec::new(),
        trailing,
        version,
        good_transfer[..good_transfer.len() - 1].to_vec(),
        other_id,
    ] {
        poke(tmp.path(), TRANSFERS, &t.transfer.0, &bad);
        let store = FsStore::open(tmp.path()).unwrap();
        assert_corrupt(store.transfer(t.transfer).await);
        assert_corrupt(store.transfers().await);
        assert_corrupt(store.find_transfer(t.sender, b"batch").await);
    }
    poke(tmp.path(), TRANSFERS, &t.transfer.0, &good_transfer);
    {
        let store = FsStore::open(tmp.path()).unwrap();
        assert_eq!(store.transfer(t.transfer).await.unwrap(), Some(t.clone()));
    }

    // A length prefix pointing past the end, and a batch under the wrong key.
    let mut long_prefix = good_batch.clone();
    long_prefix[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    for bad in [
        long_prefix,
        b"\x01".to_vec(),
        encode_batch(&batch_record(b"other", 3)).unwrap(),
    ] {
        poke(tmp.path(), BATCHES, b"batch", &bad);
        let store = FsStore::open(tmp.path()).unwrap();
        assert_corrupt(store.batch(b"batch").await);
        assert_corrupt(store.batches().await);
    }

    // A segment record of the wrong size.
    let mut key = t.transfer.0.to_vec();
    key.extend_from_slice(&0u64.to_be_bytes());
    poke(tmp.path(), SEGMENTS, &key, b"short");
    {
        let store = FsStore::open(tmp.path()).unwrap();
        assert_corrupt(store.segments(t.transfer).await);
    }
    // A segment file cut short.
    let file = tmp
        .path()
        .join(SEGMENTS_DIR)
        .join(format!("{}.seg", t.transfer.to_hex()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(u64::from(SEG) - 1)
        .unwrap();
    let store = FsStore::open(tmp.path()).unwrap();
    assert_corrupt(store.read_segment(t.transfer, 0, SEG).await);

    // Damaged records can still be deleted, index entry included.
    drop(store);
    poke(tmp.path(), TRANSFERS, &t.transfer.0, b"garbage");
    let store = FsStore::open(tmp.path()).unwrap();
    store.delete_transfer(t.transfer).await.unwrap();
    assert_eq!(store.find_transfer(t.sender, b"batch").await.unwrap(), None);
    assert_eq!(store.transfers().await.unwrap(), Vec::new());
    store.delete_segments(t.transfer).await.unwrap();
    assert_eq!(store.segments(t.transfer).await.unwrap(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_concurrent_duplicate_puts_store_one_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsStore::open(tmp.path()).unwrap();
    let t = tid(1);
    let tasks: Vec<_> = (0..16u8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let (info, data) = segment(0, n);
                (data.clone(), store.put_segment(t, info, 0, data).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (data, result) = task.await.unwrap();
        match result {
            Ok(()) => winners.push(data),
            Err(e) => assert!(matches!(e, StoreError::AlreadyExists(_)), "{e:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(store.read_segment(t, 0, SEG).await.unwrap(), winners[0]);
    assert_eq!(store.segments(t).await.unwrap().len(), 1);
}

#[tokio::test]
async fn fs_remembers_synced_segment_files_only_for_open_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    for n in 0..3u8 {
        let t = transfer_record(80 + n, &[b'c', n], 8);
        store.put_transfer(t.clone()).await.unwrap();
        let (info, data) = segment(0, n);
        store.put_segment(t.transfer, info, 0, data).await.unwrap();
        assert_eq!(store.dir_synced_len(), 1);
        let batch = BatchRecord {
            transfer: t.transfer,
            ..batch_record(&[b'c', n], 80 + n)
        };
        store.complete_transfer(batch).await.unwrap();
        assert_eq!(store.dir_synced_len(), 0, "batch {n}");
    }
    // Deleting an open transfer forgets it too.
    let t = transfer_record(90, b"d", 9);
    store.put_transfer(t.clone()).await.unwrap();
    let (info, data) = segment(0, 1);
    store.put_segment(t.transfer, info, 0, data).await.unwrap();
    store.delete_transfer(t.transfer).await.unwrap();
    assert_eq!(store.dir_synced_len(), 0);
}

#[tokio::test]
async fn fs_a_refused_transfer_leaves_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let t = transfer_record(70, b"once", 7);
    store.put_transfer(t).await.unwrap();
    let twin = transfer_record(71, b"once", 7);
    assert_already_exists(store.put_transfer_with_secret(twin, b"x".to_vec()).await);
    // One transaction: the refusal wrote nothing at all.
    assert_eq!(store.secret(tid(71)).await.unwrap(), None);
}

#[test]
fn fs_open_refuses_a_file_as_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(FsStore::open(&file).is_err());
}

// ---- The record encoding ----

fn arb_transfer() -> impl Strategy<Value = TransferRecord> {
    (
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, batch_id, sender, chunk_size, created_unix, deadline_unix)| TransferRecord {
                transfer: TransferId(id),
                batch_id,
                sender,
                chunk_size,
                created_unix,
                deadline_unix,
            },
        )
}

fn arb_batch() -> impl Strategy<Value = BatchRecord> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 64),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(
                batch_id,
                id,
                sender,
                (chunk_size, segment_count, size, completed_unix),
                meta,
                chain,
                receipt,
            )| {
                let mut c = [0u8; 64];
                c.copy_from_slice(&chain);
                BatchRecord {
                    batch_id,
                    transfer: TransferId(id),
                    sender,
                    chunk_size,
                    segment_count,
                    size,
                    sealed_metadata: meta,
                    chain: ChainHash(c),
                    completed_unix,
                    receipt,
                }
            },
        )
}

proptest! {
    #[test]
    fn transfer_encoding_round_trips(r in arb_transfer()) {
        let bytes = encode_transfer(&r).unwrap();
        prop_assert_eq!(decode_transfer(&bytes, &r.transfer.0).unwrap(), r.clone());
        // Every strict prefix is refused, as is any extra byte.
        for cut in 0..bytes.len() {
            prop_assert!(decode_transfer(&bytes[..cut], &r.transfer.0).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode_transfer(&longer, &r.transfer.0).is_err());
    }

    #[test]
    fn batch_encoding_round_trips(r in arb_batch()) {
        let bytes = encode_batch(&r).unwrap();
        prop_assert_eq!(decode_batch(&bytes, &r.batch_id).unwrap(), r.clone());
        for cut in 0..bytes.len() {
            prop_assert!(decode_batch(&bytes[..cut], &r.batch_id).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode_batch(&longer, &r.batch_id).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Errors are fine; a panic fails the test.
        let _ = decode_transfer(&bytes, &[0; 16]);
        let _ = decode_batch(&bytes, b"");
        // And past the version byte, where the length checks are.
        let versioned = [&[1u8][..], &bytes].concat();
        let _ = decode_transfer(&versioned, &[0; 16]);
        let _ = decode_batch(&versioned, b"");
    }
}
