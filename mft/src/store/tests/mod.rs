//! The store conformance suite, written once against `&dyn Store` and run against
//! [`MemoryStore`] and [`FsStore`]; `fs.rs` has the tests only the file-system
//! store can have (restart, corruption, paths), `records.rs` the record encoding's.

use bytes::Bytes;

use super::*;
use crate::wire::{ChainHash, Tag};

mod fs;
mod records;

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
        compression: Compression::None,
    }
}

/// The sender of `batch_record(_, n)`.
fn owner(n: u8) -> [u8; 32] {
    [n ^ 0x5a; 32]
}

fn batch_record(batch_id: &[u8], n: u8) -> BatchRecord {
    BatchRecord {
        batch_id: batch_id.to_vec(),
        transfer: tid(n),
        sender: owner(n),
        chunk_size: 4096,
        segment_count: u64::from(n) + 1,
        size: 4096 * u64::from(n) + 17,
        sealed_metadata: vec![n; usize::from(n) + 3],
        chain: ChainHash([n.wrapping_add(1); 64]),
        completed_unix: 1_800_000_000 + u64::from(n),
        receipt: vec![0xee, n, 0, 0xff],
        compression: Compression::None,
        content_digest: [0; 32],
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
    // The sender's own transfers, in batch-id order, and nobody else's.
    let batches = |records: Vec<TransferRecord>| -> Vec<Vec<u8>> {
        records.into_iter().map(|t| t.batch_id).collect()
    };
    assert_eq!(
        batches(s.transfers_of([1; 32]).await.unwrap()),
        vec![HOSTILE.to_vec(), b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(
        s.transfers_of(neighbour.sender).await.unwrap(),
        vec![neighbour]
    );
    assert!(s.transfers_of([9; 32]).await.unwrap().is_empty());
    s.delete_transfer(tid(52)).await.unwrap();
    assert_eq!(s.open_transfer_count([1; 32]).await.unwrap(), 2);
    assert_eq!(s.transfers_of([1; 32]).await.unwrap().len(), 2);
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
        sender: owner(62),
        ..batch_record(b"taken", 63)
    };
    assert_already_exists(s.complete_transfer(clash).await);
    assert_eq!(
        s.batch(&owner(62), b"taken").await.unwrap(),
        Some(batch_record(b"taken", 62))
    );
    assert_eq!(s.transfer(t.transfer).await.unwrap().as_ref(), Some(&t));

    let done = BatchRecord {
        transfer: t.transfer,
        ..batch_record(b"life", 64)
    };
    s.complete_transfer(done.clone()).await.unwrap();
    assert_eq!(
        s.batch(&owner(64), b"life").await.unwrap(),
        Some(done.clone())
    );
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
    assert_eq!(s.batch(&owner(65), b"life again").await.unwrap(), None);
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
        assert_eq!(
            s.batch(&owner(n), id).await.unwrap(),
            Some(batch_record(id, n))
        );
        assert_eq!(s.owners_of(id, 10).await.unwrap(), vec![owner(n)]);
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
    assert_eq!(
        s.batch(&owner(40), b"../../etc/passwd\0").await.unwrap(),
        None
    );
    assert_eq!(s.batches().await.unwrap().len(), ids.len());
}

/// `batch_record(id, n)` in `owner`'s namespace.
fn owned(owner: [u8; 32], id: &[u8], n: u8) -> BatchRecord {
    BatchRecord {
        sender: owner,
        ..batch_record(id, n)
    }
}

async fn batches_round_trip(s: &dyn Store) {
    let a = owner(1);
    assert_eq!(s.batch(&a, b"a").await.unwrap(), None);
    assert_eq!(s.batches().await.unwrap(), Vec::new());
    assert_eq!(
        s.batch_owners(None, 10).await.unwrap(),
        Vec::<[u8; 32]>::new()
    );
    // Inserted out of order; bytewise order puts "a" < "a\0" < "b" < "\xff".
    let ids: [&[u8]; 4] = [b"b", b"\xff", b"a\0", b"a"];
    for (n, id) in ids.iter().enumerate() {
        s.put_batch(owned(a, id, n as u8)).await.unwrap();
    }
    assert_eq!(
        s.batch(&a, b"a\0").await.unwrap(),
        Some(owned(a, b"a\0", 2))
    );
    let ids_of = |records: Vec<BatchRecord>| -> Vec<Vec<u8>> {
        records.into_iter().map(|b| b.batch_id).collect()
    };
    let sorted = vec![
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"b".to_vec(),
        b"\xff".to_vec(),
    ];
    assert_eq!(ids_of(s.batches().await.unwrap()), sorted);
    // Pages of the namespace, from the index.
    assert_eq!(ids_of(s.batches_of(&a, b"", 10).await.unwrap()), sorted);
    assert_eq!(ids_of(s.batches_of(&a, b"", 2).await.unwrap()), sorted[..2]);
    assert_eq!(
        ids_of(s.batches_of(&a, b"a", 2).await.unwrap()),
        sorted[1..3]
    );
    assert_eq!(
        ids_of(s.batches_of(&a, b"a\0\0", 10).await.unwrap()),
        sorted[2..]
    );
    assert!(s.batches_of(&a, b"\xff", 10).await.unwrap().is_empty());
    // A duplicate is refused and the first record stays as it was.
    let mut dup = owned(a, b"b", 200);
    dup.receipt = b"forged".to_vec();
    assert_already_exists(s.put_batch(dup).await);
    assert_eq!(s.batch(&a, b"b").await.unwrap(), Some(owned(a, b"b", 0)));
    assert_eq!(s.batches().await.unwrap().len(), 4);
}

async fn batch_ids_are_per_sender(s: &dyn Store) {
    // Three senders; the outer two share an id with the middle one.
    let (low, mid, high) = ([0x10; 32], [0x20; 32], [0xff; 32]);
    s.put_batch(owned(mid, b"report", 1)).await.unwrap();
    s.put_batch(owned(high, b"report", 2)).await.unwrap();
    s.put_batch(owned(low, b"report", 3)).await.unwrap();
    s.put_batch(owned(mid, b"other", 4)).await.unwrap();
    s.put_batch(owned(high, b"z", 5)).await.unwrap();
    // Each sender's batch is its own.
    assert_eq!(
        s.batch(&mid, b"report").await.unwrap(),
        Some(owned(mid, b"report", 1))
    );
    assert_eq!(
        s.batch(&high, b"report").await.unwrap(),
        Some(owned(high, b"report", 2))
    );
    assert_eq!(s.batch(&low, b"other").await.unwrap(), None);
    // Who holds an id, sorted, bounded, and nobody for an id that is a prefix of
    // one stored or has one as its prefix.
    assert_eq!(
        s.owners_of(b"report", 10).await.unwrap(),
        vec![low, mid, high]
    );
    assert_eq!(s.owners_of(b"report", 2).await.unwrap(), vec![low, mid]);
    assert!(s.owners_of(b"repor", 10).await.unwrap().is_empty());
    assert!(s.owners_of(b"reports", 10).await.unwrap().is_empty());
    // The namespaces, in order and in pages.
    assert_eq!(
        s.batch_owners(None, 10).await.unwrap(),
        vec![low, mid, high]
    );
    assert_eq!(s.batch_owners(None, 1).await.unwrap(), vec![low]);
    assert_eq!(
        s.batch_owners(Some(low), 10).await.unwrap(),
        vec![mid, high]
    );
    assert!(s.batch_owners(Some(high), 10).await.unwrap().is_empty());
    // A namespace's pages stay inside it, the last one (all 0xff) included.
    let ids = |records: Vec<BatchRecord>| -> Vec<Vec<u8>> {
        records.into_iter().map(|b| b.batch_id).collect()
    };
    assert_eq!(
        ids(s.batches_of(&mid, b"", 10).await.unwrap()),
        vec![b"other".to_vec(), b"report".to_vec()]
    );
    assert_eq!(
        ids(s.batches_of(&high, b"", 10).await.unwrap()),
        vec![b"report".to_vec(), b"z".to_vec()]
    );
    assert_eq!(
        ids(s.batches_of(&low, b"", 10).await.unwrap()),
        vec![b"report".to_vec()]
    );
    assert!(s.batches_of(&[0x30; 32], b"", 10).await.unwrap().is_empty());
    // The same id again in one namespace is refused; in another it is not.
    assert_already_exists(s.put_batch(owned(mid, b"report", 6)).await);
    s.put_batch(owned([0x30; 32], b"report", 7)).await.unwrap();
    assert_eq!(s.owners_of(b"report", 10).await.unwrap().len(), 4);
    // What each holds, a refused duplicate not counted.
    let size = |n: u8| batch_record(b"", n).size;
    assert_eq!(
        s.holdings(&mid).await.unwrap(),
        Holdings {
            batches: 2,
            bytes: size(1) + size(4)
        }
    );
    assert_eq!(s.holdings(&[0x31; 32]).await.unwrap(), Holdings::default());
}

async fn a_removed_batch_leaves_every_index_and_is_retired(s: &dyn Store) {
    let a = owner(1);
    let kept = owned(a, b"kept", 1);
    let gone = owned(a, b"gone", 2);
    s.put_batch(kept.clone()).await.unwrap();
    s.put_batch(gone.clone()).await.unwrap();
    assert_eq!(s.remove_batch(&a, b"missing").await.unwrap(), None);
    assert_eq!(
        s.remove_batch(&owner(9), b"gone").await.unwrap(),
        None,
        "another owner"
    );
    assert_eq!(
        s.remove_batch(&a, b"gone").await.unwrap(),
        Some(gone.clone())
    );
    assert_eq!(s.batch(&a, b"gone").await.unwrap(), None);
    assert_eq!(s.batch_of_transfer(gone.transfer).await.unwrap(), None);
    assert_eq!(
        s.owners_of(b"gone", 10).await.unwrap(),
        Vec::<[u8; 32]>::new()
    );
    assert_eq!(s.batches_of(&a, b"", 10).await.unwrap(), vec![kept.clone()]);
    assert_eq!(
        s.holdings(&a).await.unwrap(),
        Holdings {
            batches: 1,
            bytes: kept.size
        }
    );
    assert_eq!(s.retired().await.unwrap(), vec![gone.transfer]);
    // The last batch gone, the owner leaves the namespaces.
    s.remove_batch(&a, b"kept").await.unwrap();
    assert_eq!(
        s.batch_owners(None, 10).await.unwrap(),
        Vec::<[u8; 32]>::new()
    );
    assert_eq!(s.holdings(&a).await.unwrap(), Holdings::default());
    let mut retired = s.retired().await.unwrap();
    retired.sort();
    assert_eq!(retired, vec![kept.transfer, gone.transfer]);
    s.forget_retired(gone.transfer).await.unwrap();
    s.forget_retired(tid(200)).await.unwrap();
    assert_eq!(s.retired().await.unwrap(), vec![kept.transfer]);
    // The id is free again.
    s.put_batch(owned(a, b"gone", 3)).await.unwrap();
}

async fn a_replacement_swaps_batches_in_one_step(s: &dyn Store) {
    let a = owner(1);
    let old = owned(a, b"report", 1);
    s.put_batch(old.clone()).await.unwrap();
    let t = TransferRecord {
        sender: a,
        ..transfer_record(2, b"report", 0)
    };
    s.put_transfer_with_secret(t.clone(), b"sealed".to_vec())
        .await
        .unwrap();
    let new = BatchRecord {
        transfer: t.transfer,
        ..owned(a, b"report", 2)
    };
    // A batch naming a transfer that delivered another is refused, and nothing moves.
    let clash = BatchRecord {
        transfer: old.transfer,
        ..owned(a, b"other", 3)
    };
    s.put_batch(owned(a, b"other", 4)).await.unwrap();
    assert_already_exists(s.complete_replacing(clash).await);
    assert_eq!(s.batch(&a, b"report").await.unwrap(), Some(old.clone()));
    assert_eq!(s.retired().await.unwrap(), Vec::new());

    assert_eq!(
        s.complete_replacing(new.clone()).await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(s.batch(&a, b"report").await.unwrap(), Some(new.clone()));
    assert_eq!(
        s.batch_of_transfer(new.transfer).await.unwrap(),
        Some(new.clone())
    );
    assert_eq!(s.batch_of_transfer(old.transfer).await.unwrap(), None);
    assert_eq!(
        s.transfer(t.transfer).await.unwrap(),
        None,
        "the open transfer closed"
    );
    assert_eq!(s.retired().await.unwrap(), vec![old.transfer]);
    assert_eq!(s.holdings(&a).await.unwrap().batches, 2);
    // Replacing what is not there just completes.
    let t2 = TransferRecord {
        sender: a,
        ..transfer_record(5, b"fresh", 0)
    };
    s.put_transfer(t2.clone()).await.unwrap();
    let fresh = BatchRecord {
        transfer: t2.transfer,
        ..owned(a, b"fresh", 5)
    };
    assert_eq!(s.complete_replacing(fresh.clone()).await.unwrap(), None);
    assert_eq!(s.batch(&a, b"fresh").await.unwrap(), Some(fresh));
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
    batch_ids_are_per_sender,
    a_removed_batch_leaves_every_index_and_is_retired,
    a_replacement_swaps_batches_in_one_step,
);
