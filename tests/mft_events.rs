//! The server's events: every step of a transfer's life on the server (opened,
//! resumed, segments stored, completed, already stored, cancelled, retrieved,
//! deleted, refused) reaches its subscribers, in order, with the ids that tie
//! them together.

#[macro_use]
mod common;

use std::time::Duration;

use common::mft_harness::*;
use common::{Transport, init_tracing};
use mft::wire::{BatchId, RefuseCode};
use mft::{CancelReason, ServerConfig, ServerEvent};
use tokio::sync::broadcast;

on_every_transport!(
    the_server_reports_each_step_of_a_transfer,
    the_server_says_why_an_open_transfer_ended,
);

/// The next event, skipping none, within a bound.
async fn next(events: &mut broadcast::Receiver<ServerEvent>) -> ServerEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an event within 20 s")
        .expect("no event missed")
}

/// A batch id from its bytes.
fn id(bytes: &[u8]) -> BatchId {
    BatchId::new(bytes.to_vec()).unwrap()
}

async fn the_server_reports_each_step_of_a_transfer(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let me = h.client_key();
    let mut events = h.server.subscribe();

    // A raw sender opens a transfer, stores a segment, comes back to it, and
    // aborts it.
    let raw = h.raw();
    let open = raw.open(b"ev-left", CHUNK).await;
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Opened {
            peer: me,
            batch_id: BatchId::new(b"ev-left".to_vec()).unwrap(),
            transfer: open.id(),
            replace: false,
        }
    );
    let first = open.segment(0, &data(1, CHUNK as usize));
    let held = first.ciphertext.len() as u64;
    raw.send_ok(&[first]).await;
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Progress {
            peer: me,
            transfer: open.id(),
            index: 0,
            bytes: held,
        }
    );
    let again = raw.open(b"ev-left", CHUNK).await;
    assert_eq!(again.id(), open.id());
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Resumed {
            peer: me,
            transfer: open.id(),
            batch_id: id(b"ev-left"),
        }
    );
    h.sender().abort(open.id()).await.unwrap();
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Cancelled {
            owner: *me.as_bytes(),
            transfer: open.id(),
            batch_id: id(b"ev-left"),
            why: CancelReason::Aborted,
        }
    );

    // A whole send: opened, one event per stored segment, completed.
    let size = 3 * u64::from(CHUNK) + 5;
    let sender = h.sender();
    let receipt = sender
        .send(PrngReader::new(2, size), b"ev-sent", b"meta")
        .await
        .unwrap();
    let ServerEvent::Opened { transfer, .. } = next(&mut events).await else {
        panic!("a send starts with Opened");
    };
    assert_eq!(transfer, receipt.transfer_id);
    let mut stored = Vec::new();
    let completed = loop {
        match next(&mut events).await {
            ServerEvent::Progress {
                transfer: t, index, ..
            } => {
                assert_eq!(t, transfer);
                stored.push(index);
            }
            other => break other,
        }
    };
    stored.sort_unstable();
    assert_eq!(stored, vec![0, 1, 2, 3], "one event per segment");
    assert_eq!(
        completed,
        ServerEvent::Completed {
            peer: me,
            batch_id: BatchId::new(b"ev-sent".to_vec()).unwrap(),
            transfer,
            segments: 4,
            bytes: size,
            replaced: None,
        }
    );

    // The same content again stores nothing: its hello is refused as existing,
    // and the sender then confirms that the stored batch is what it would send.
    sender
        .send(PrngReader::new(2, size), b"ev-sent", b"meta")
        .await
        .unwrap();
    let ServerEvent::Failed { code, .. } = next(&mut events).await else {
        panic!("the hello of a stored batch is refused");
    };
    assert_eq!(code, RefuseCode::BatchExists);
    assert_eq!(
        next(&mut events).await,
        ServerEvent::AlreadyStored { peer: me, transfer }
    );

    // Retrieved, whole; then a refusal; then deleted.
    let (reader, _) = h.retriever().get(b"ev-sent").await.unwrap();
    assert_content(reader, 2, size).await;
    let ServerEvent::Retrieved {
        peer,
        transfer: t,
        batch_id,
        segments,
        ranged,
        ..
    } = next(&mut events).await
    else {
        panic!("a retrieval is reported");
    };
    assert_eq!((peer, t, segments, ranged), (me, transfer, 4, false));
    assert_eq!(batch_id, id(b"ev-sent"));
    let missing = h.retriever().get(b"ev-missing").await.unwrap_err();
    assert_eq!(
        missing.refuse_code(),
        Some(RefuseCode::NotFound),
        "{missing}"
    );
    let ServerEvent::Failed { peer, code, .. } = next(&mut events).await else {
        panic!("a refusal is reported");
    };
    assert_eq!((peer, code), (me, RefuseCode::NotFound));
    assert_eq!(sender.delete(b"ev-sent").await.unwrap(), size);
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Deleted {
            peer: me,
            owner: *me.as_bytes(),
            transfer,
            batch_id: id(b"ev-sent"),
            bytes: size,
        }
    );
    assert!(events.try_recv().is_err(), "nothing more happened");
}

/// Transfers the sender did not abort say why they ended: past their deadline,
/// or because their sender lost its access.
async fn the_server_says_why_an_open_transfer_ended(t: Transport) {
    let mut config = ServerConfig::default();
    config.transfer_deadline(Duration::from_secs(1));
    let h = Harness::new(t, config).await;
    let me = h.client_key();
    let raw = h.raw();
    let mut events = h.server.subscribe();
    let overdue = raw.open(b"ev-overdue", CHUNK).await;
    assert!(matches!(
        next(&mut events).await,
        ServerEvent::Opened { .. }
    ));
    // Deadlines count whole seconds: past a 1 s deadline in at most 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revoked = raw.open(b"ev-revoked", CHUNK).await;
    assert!(matches!(
        next(&mut events).await,
        ServerEvent::Opened { .. }
    ));
    assert_eq!(h.server.reclaim_expired().await.unwrap(), 1);
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Cancelled {
            owner: *me.as_bytes(),
            transfer: overdue.id(),
            batch_id: id(b"ev-overdue"),
            why: CancelReason::Expired,
        }
    );
    assert_eq!(h.server.abort_transfers_of(&me).await.unwrap(), 1);
    assert_eq!(
        next(&mut events).await,
        ServerEvent::Cancelled {
            owner: *me.as_bytes(),
            transfer: revoked.id(),
            batch_id: id(b"ev-revoked"),
            why: CancelReason::AccessRevoked,
        }
    );
    assert!(events.try_recv().is_err(), "nothing more happened");
}
