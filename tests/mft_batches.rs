//! A stored batch's life after its completion, through the library: deleting it,
//! sending the same content again, replacing it atomically, restarting a send
//! whose input changed since it was interrupted, and cancelling sends.

#[macro_use]
mod common;

use std::io::Cursor;
use std::time::Duration;

use common::mft_harness::*;
use common::{Transport, bounded, init_tracing};
use flow::ManagerConfig;
use mft::wire::RefuseCode;
use mft::{Event, Sender, ServerConfig};
use tokio::io::AsyncReadExt;

on_every_transport!(
    a_deleted_batch_is_gone_and_its_storage_freed,
    a_retrieval_under_way_finishes_a_batch_deleted_meanwhile,
    the_same_content_sent_again_returns_the_stored_receipt,
    a_replacement_is_atomic_for_readers,
    a_changed_input_restarts_its_interrupted_transfer,
    cancelled_sends_free_their_slots,
);

const SIZE: usize = 5 * CHUNK as usize + 123;

/// Long enough that a retrieval's read-ahead (a few segments) cannot hold all of
/// it: a reader partway through still needs the store.
const LONG: usize = 32 * CHUNK as usize + 7;

async fn send(sender: &Sender, id: &[u8], seed: u64) -> mft::Receipt {
    send_len(sender, id, seed, SIZE).await
}

async fn send_len(sender: &Sender, id: &[u8], seed: u64, len: usize) -> mft::Receipt {
    bounded("send", sender.send(Cursor::new(data(seed, len)), id, b"{}"))
        .await
        .unwrap()
}

async fn get_all(h: &Harness, id: &[u8]) -> mft::Result<Vec<u8>> {
    let (mut reader, _) = bounded("get", h.retriever().get(id)).await?;
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await?;
    Ok(got)
}

/// Waits (bounded) until the store holds no data of `transfer` and nothing retired.
async fn assert_freed(h: &Harness, transfer: mft::store::TransferId) {
    bounded("freeing the batch's data", async {
        loop {
            let segments = h.store.segments(transfer).await.unwrap();
            let secret = h.store.secret(transfer).await.unwrap();
            let retired = h.store.retired().await.unwrap();
            if segments.is_empty() && secret.is_none() && retired.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn a_deleted_batch_is_gone_and_its_storage_freed(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let owner = h.sender();
    let receipt = send(&owner, b"old-report", 1).await;
    send(&owner, b"kept", 2).await;

    // A stranger cannot delete it, and learns nothing: not found.
    let stranger = Sender::new(h.t.manager(ManagerConfig::default()), h.config()).unwrap();
    let err = stranger
        .delete_from(&h.client_key(), b"old-report")
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    let err = stranger.delete(b"old-report").await.unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    assert!(h.stored(b"old-report").await.is_some());

    assert_eq!(owner.delete(b"old-report").await.unwrap(), SIZE as u64);
    assert!(h.stored(b"old-report").await.is_none());
    let err = get_all(&h, b"old-report").await.unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    let listed = h.retriever().list().await.unwrap();
    let ids: Vec<&[u8]> = listed.iter().map(|b| &b.batch_id[..]).collect();
    assert_eq!(ids, vec![&b"kept"[..]]);
    assert_freed(&h, receipt.transfer_id).await;
    let held = h.store.holdings(h.client_key().as_bytes()).await.unwrap();
    assert_eq!((held.batches, held.bytes), (1, SIZE as u64));

    // Deleting again is not found; the id is free to send again.
    let err = owner.delete(b"old-report").await.unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    send(&owner, b"old-report", 3).await;
    assert_eq!(get_all(&h, b"old-report").await.unwrap(), data(3, SIZE));
}

async fn a_retrieval_under_way_finishes_a_batch_deleted_meanwhile(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let owner = h.sender();
    let receipt = send_len(&owner, b"busy", 4, LONG).await;
    // A retrieval reads the first segment, then the batch is deleted.
    let (mut reading, _) = h
        .server
        .retrieve(&h.client_key(), None, b"busy")
        .await
        .unwrap();
    let mut got = vec![0u8; CHUNK as usize];
    reading.read_exact(&mut got).await.unwrap();
    owner.delete(b"busy").await.unwrap();
    // Its data stays for the retrieval, which gets all of it.
    assert!(
        !h.store
            .segments(receipt.transfer_id)
            .await
            .unwrap()
            .is_empty()
    );
    reading.read_to_end(&mut got).await.unwrap();
    assert!(got == data(4, LONG), "the retrieval came back different");
    drop(reading);
    assert_freed(&h, receipt.transfer_id).await;
}

async fn the_same_content_sent_again_returns_the_stored_receipt(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let first = send(&sender, b"daily.csv", 5).await;
    assert_eq!(first.content_digest, sha256(&data(5, SIZE)));

    let mut events = sender.subscribe();
    let again = send(&sender, b"daily.csv", 5).await;
    assert_eq!(again, first, "the stored receipt, signature and all");
    let mut saw = false;
    while let Ok(event) = events.try_recv() {
        saw |= event == Event::AlreadyStored { size: SIZE as u64 };
        assert!(
            !matches!(event, Event::Accepted { .. } | Event::Progress { .. }),
            "nothing is sent again: {event:?}"
        );
    }
    assert!(saw, "the sender reports the batch as stored already");
    assert!(h.store.transfers().await.unwrap().is_empty());
    assert_eq!(h.store.batches().await.unwrap().len(), 1);

    // Other content under the taken id is refused, and the batch stays.
    let err = sender
        .send(Cursor::new(data(6, SIZE)), b"daily.csv", b"{}")
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::BatchExists), "{err}");
    assert_eq!(
        h.stored(b"daily.csv").await.unwrap().transfer,
        first.transfer_id
    );
    // Nothing is confirmed across namespaces: another key sending the same
    // content under the same id stores a batch of its own.
    let other = Sender::new(h.t.manager(ManagerConfig::default()), h.config()).unwrap();
    let theirs = send(&other, b"daily.csv", 5).await;
    assert_ne!(theirs.transfer_id, first.transfer_id);
}

async fn a_replacement_is_atomic_for_readers(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let old = send_len(&sender, b"price-list", 7, LONG).await;

    // A reader is partway through the old batch when the replacement completes.
    let (mut reading, _) = h
        .server
        .retrieve(&h.client_key(), None, b"price-list")
        .await
        .unwrap();
    let mut got = vec![0u8; CHUNK as usize];
    reading.read_exact(&mut got).await.unwrap();

    let mut config = h.config();
    config.replace(true);
    let replacing = Sender::new(h.client.clone(), config).unwrap();
    // Until the replacement completes, the old batch is what is retrieved.
    let new = send(&replacing, b"price-list", 8).await;
    assert_ne!(new.transfer_id, old.transfer_id);
    assert_eq!(new.content_digest, sha256(&data(8, SIZE)));
    // New readers get the new batch, whole.
    assert!(get_all(&h, b"price-list").await.unwrap() == data(8, SIZE));
    // The reader of the old one still gets the old one, whole.
    reading.read_to_end(&mut got).await.unwrap();
    assert!(got == data(7, LONG), "the old batch came back different");
    drop(reading);
    assert_freed(&h, old.transfer_id).await;
    let held = h.store.holdings(h.client_key().as_bytes()).await.unwrap();
    assert_eq!((held.batches, held.bytes), (1, SIZE as u64));
    // Replacing what does not exist just sends it.
    send(&replacing, b"new-list", 9).await;
    assert!(get_all(&h, b"new-list").await.unwrap() == data(9, SIZE));
}

async fn a_changed_input_restarts_its_interrupted_transfer(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    // An interrupted send of one content left two segments on the server.
    let raw = h.raw();
    let stale = raw.open(b"ledger", CHUNK).await;
    // (Seeds that differ only in their lowest bit make the same data.)
    let before = data(20, SIZE);
    raw.send_ok(&stale.segments(&before)[..2]).await;

    // The file changed; the same batch id resumes, finds other content, and
    // aborts that transfer rather than sticking on it.
    let sender = h.sender();
    let mut events = sender.subscribe();
    let err = sender
        .send(Cursor::new(data(22, SIZE)), b"ledger", b"{}")
        .await
        .unwrap_err();
    assert!(matches!(err, mft::Error::ContentChanged(_)), "{err}");
    assert!(h.store.transfer(stale.id()).await.unwrap().is_none());
    assert!(h.store.segments(stale.id()).await.unwrap().is_empty());
    let mut restarted = false;
    while let Ok(event) = events.try_recv() {
        restarted |= event == Event::Restarted;
    }
    assert!(restarted);
    // Sent again, it starts afresh and completes with the new content.
    send(&sender, b"ledger", 22).await;
    assert!(get_all(&h, b"ledger").await.unwrap() == data(22, SIZE));

    // The same content, resumed, is no change: it completes.
    let partial = raw.open(b"journal", CHUNK).await;
    raw.send_ok(&partial.segments(&data(12, SIZE))[..2]).await;
    let receipt = send(&sender, b"journal", 12).await;
    assert_eq!(
        receipt.transfer_id,
        partial.id(),
        "the interrupted transfer resumed"
    );
}

async fn cancelled_sends_free_their_slots(t: Transport) {
    // The default limit of open transfers per key.
    let limit = 16;
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let sender = h.sender();
    // As many interrupted sends as the key may hold open, each cancelled.
    for n in 0..limit {
        let id = format!("cancelled-{n}");
        let open = raw.open(id.as_bytes(), CHUNK).await;
        raw.send_ok(&open.segments(&data(n as u64, 2 * CHUNK as usize))[..1])
            .await;
        sender.abort(open.id()).await.unwrap();
        assert!(h.store.segments(open.id()).await.unwrap().is_empty());
    }
    assert!(h.store.transfers().await.unwrap().is_empty());
    // The next send still gets a slot.
    send(&sender, b"after-cancels", 13).await;
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}
