//! Tests only the file-system store can have: restart, corruption, paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use super::super::fs::{
    BATCHES, DB_FILE, LEGACY_BATCHES, LEGACY_BATCHES_BY_TRANSFER, SEGMENTS, SEGMENTS_DIR,
    TRANSFERS, encode_batch, encode_transfer,
};
use super::super::records::owned_key;
use super::*;

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

/// A store written before namespaces (batches keyed by id alone) has its batches
/// moved into their senders' namespaces, with every index, when opened.
#[tokio::test]
async fn fs_moves_the_batches_of_a_store_from_before_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (batch_record(b"old", 7), batch_record(b"new", 8));
    drop(FsStore::open(tmp.path()).unwrap());
    // Write them as the older store did: batch id → record, transfer → batch id.
    {
        let db = Database::create(tmp.path().join(DB_FILE)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut batches = tx.open_table(LEGACY_BATCHES).unwrap();
            let mut index = tx.open_table(LEGACY_BATCHES_BY_TRANSFER).unwrap();
            for b in [&old, &new] {
                let value = encode_batch(b).unwrap();
                batches
                    .insert(b.batch_id.as_slice(), value.as_slice())
                    .unwrap();
                index
                    .insert(b.transfer.0.as_slice(), b.batch_id.as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    for _ in 0..2 {
        // Opening twice: the second finds nothing left to move.
        let store = FsStore::open(tmp.path()).unwrap();
        for b in [&old, &new] {
            assert_eq!(
                store.batch(&b.sender, &b.batch_id).await.unwrap().as_ref(),
                Some(b)
            );
            assert_eq!(
                store.batch_of_transfer(b.transfer).await.unwrap().as_ref(),
                Some(b)
            );
            assert_eq!(
                store.owners_of(&b.batch_id, 10).await.unwrap(),
                vec![b.sender]
            );
        }
        assert_eq!(store.batches().await.unwrap().len(), 2);
    }
    let db = Database::create(tmp.path().join(DB_FILE)).unwrap();
    let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
    assert!(
        tx.open_table(LEGACY_BATCHES).is_err(),
        "the old table is gone"
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
    version[0] = 9;
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
        poke(tmp.path(), BATCHES, &owned_key(&b.sender, b"batch"), &bad);
        let store = FsStore::open(tmp.path()).unwrap();
        assert_corrupt(store.batch(&b.sender, b"batch").await);
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

/// Durability a killed process cannot show (it keeps the page cache): every
/// segment's bytes are written, then its file fsync'd (and, the first time, the
/// directory holding the file), and only then is its record committed and the
/// put allowed to return, which is when the server acknowledges it.
#[tokio::test]
async fn fs_syncs_each_segment_before_recording_it() {
    use super::super::fs::Step;
    let tmp = tempfile::tempdir().unwrap();
    let store = FsStore::open(tmp.path()).unwrap();
    let (a, b) = (tid(71), tid(72));
    for (transfer, index) in [(a, 0), (a, 1), (b, 0), (a, 2)] {
        let (info, data) = segment(index, index as u8 + 1);
        store
            .put_segment(transfer, info, offset(index), data)
            .await
            .unwrap();
        let journal = store.journal();
        // The put returned: its record is the last step, after its write and sync.
        assert_eq!(journal.last(), Some(&Step::Recorded(transfer, index)));
        let at = |step: Step| journal.iter().rposition(|s| *s == step);
        let write = at(Step::Write(transfer, index)).expect("written");
        let sync = at(Step::SyncFile(transfer)).expect("synced");
        assert!(write < sync, "{journal:?}");
    }
    // The directory is synced once per transfer, after its file first exists
    // and before its first record.
    let journal = store.journal();
    let dir_syncs: Vec<usize> = journal
        .iter()
        .enumerate()
        .filter(|(_, s)| **s == Step::SyncDir)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(dir_syncs.len(), 2, "{journal:?}");
    let first = |step: Step| journal.iter().position(|s| *s == step).unwrap();
    assert!(first(Step::Write(a, 0)) < dir_syncs[0] && dir_syncs[0] < first(Step::Recorded(a, 0)));
    assert!(first(Step::Write(b, 0)) < dir_syncs[1] && dir_syncs[1] < first(Step::Recorded(b, 0)));
}
