//! The server's unit tests: rules that need a server but no network.

use std::sync::Arc;

use bytes::Bytes;
use flow::Identity;

use super::Server;
use crate::store::{
    BatchRecord, BatchStore, MemoryStore, SecretStore, SegmentInfo, SegmentStore, TransferId,
    TransferRecord, TransferStore,
};

fn record(id: u8, batch: &[u8], deadline_unix: u64) -> TransferRecord {
    TransferRecord {
        transfer: TransferId([id; 16]),
        batch_id: batch.to_vec(),
        sender: [9; 32],
        chunk_size: 4096,
        created_unix: 0,
        deadline_unix,
        compression: crate::wire::Compression::None,
    }
}

#[tokio::test]
async fn expired_transfers_are_reclaimed_and_completed_batches_kept() {
    let store = Arc::new(MemoryStore::new());
    let server = Server::builder(Identity::generate(), store.clone()).build();
    let info = SegmentInfo {
        index: 0,
        len: 20,
        tag: crate::wire::Tag([0; 16]),
    };
    let (expired, live, done) = (
        record(1, b"old", 1),
        record(2, b"new", u64::MAX),
        record(3, b"done", 1),
    );
    for r in [&expired, &live, &done] {
        store.put_transfer(r.clone()).await.unwrap();
        store.put_secret(r.transfer, vec![1, 2, 3]).await.unwrap();
        store
            .put_segment(r.transfer, info, 0, Bytes::from(vec![0; 20]))
            .await
            .unwrap();
    }
    store
        .put_batch(BatchRecord {
            batch_id: b"done".to_vec(),
            transfer: done.transfer,
            sender: [9; 32],
            chunk_size: 4096,
            segment_count: 1,
            size: 4,
            sealed_metadata: vec![],
            chain: crate::wire::ChainHash([0; 64]),
            completed_unix: 1,
            receipt: vec![],
            compression: crate::wire::Compression::None,
            content_digest: [0; 32],
        })
        .await
        .unwrap();

    assert_eq!(server.reclaim_expired().await.unwrap(), 2);
    assert!(store.transfer(expired.transfer).await.unwrap().is_none());
    assert!(store.segments(expired.transfer).await.unwrap().is_empty());
    assert!(store.secret(expired.transfer).await.unwrap().is_none());
    assert!(store.transfer(live.transfer).await.unwrap().is_some());
    assert_eq!(store.segments(live.transfer).await.unwrap().len(), 1);
    // The completed batch keeps its data and key; only the open record goes.
    assert!(store.transfer(done.transfer).await.unwrap().is_none());
    assert_eq!(store.segments(done.transfer).await.unwrap().len(), 1);
    assert!(store.secret(done.transfer).await.unwrap().is_some());
}

/// A key that lost its access loses its open transfers at once, deadline or not;
/// other keys' transfers stay.
#[tokio::test]
async fn aborting_a_keys_transfers_deletes_them_and_only_them() {
    let store = Arc::new(MemoryStore::new());
    let server = Server::builder(Identity::generate(), store.clone()).build();
    let gone = Identity::generate().public_key();
    let mut theirs = record(1, b"theirs", u64::MAX);
    theirs.sender = *gone.as_bytes();
    let ours = record(2, b"ours", u64::MAX);
    let info = SegmentInfo {
        index: 0,
        len: 20,
        tag: crate::wire::Tag([0; 16]),
    };
    for r in [&theirs, &ours] {
        store.put_transfer(r.clone()).await.unwrap();
        store.put_secret(r.transfer, vec![1]).await.unwrap();
        store
            .put_segment(r.transfer, info, 0, Bytes::from(vec![0; 20]))
            .await
            .unwrap();
    }
    assert_eq!(server.abort_transfers_of(&gone).await.unwrap(), 1);
    assert!(store.transfer(theirs.transfer).await.unwrap().is_none());
    assert!(store.segments(theirs.transfer).await.unwrap().is_empty());
    assert!(store.secret(theirs.transfer).await.unwrap().is_none());
    assert!(store.transfer(ours.transfer).await.unwrap().is_some());
    assert_eq!(store.segments(ours.transfer).await.unwrap().len(), 1);
    assert_eq!(server.abort_transfers_of(&gone).await.unwrap(), 0);
}
