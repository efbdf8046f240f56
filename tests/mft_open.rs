//! What a sender left open: it can list and abort its open transfers, and a key
//! at its limit of open transfers is never locked out by sends it interrupted.

#[macro_use]
mod common;

use std::time::Duration;

use common::mft_harness::*;
use common::{Transport, init_tracing};
use flow::ManagerConfig;
use mft::wire::{BatchId, RefuseCode};
use mft::{Sender, ServerConfig, ServerEvent};

on_every_transport!(
    a_pause_notice_is_taken_from_the_owner_of_an_open_transfer_only,
    an_owner_lists_and_aborts_its_open_transfers,
    a_key_at_its_limit_gives_up_its_transfer_idle_longest,
);

/// The server reports a sender's pause and resume of its open transfer, and
/// refuses a notice from another key (as for a transfer that never existed)
/// or for a transfer that is not open.
async fn a_pause_notice_is_taken_from_the_owner_of_an_open_transfer_only(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let mut events = h.server.subscribe();
    let raw = h.raw();
    let tr = raw.open(b"noticed", CHUNK).await;
    let noted = raw.pause(tr.id(), true).await.unwrap();
    assert_eq!((noted.transfer_id, noted.paused), (tr.id(), true));
    raw.pause(tr.id(), false).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = common::bounded("an event", events.recv()).await.unwrap();
        if matches!(
            event,
            ServerEvent::Paused { .. } | ServerEvent::Continued { .. }
        ) {
            seen.push(event);
        }
    }
    let me = h.client.identity().public_key();
    assert_eq!(
        seen,
        [
            ServerEvent::Paused {
                peer: me,
                transfer: tr.id(),
                batch_id: BatchId::new(b"noticed".to_vec()).unwrap(),
            },
            ServerEvent::Continued {
                peer: me,
                transfer: tr.id(),
                batch_id: BatchId::new(b"noticed".to_vec()).unwrap(),
            },
        ]
    );

    let stranger = Raw {
        manager: h.t.manager(ManagerConfig::default()),
        endpoint: h.endpoint.clone(),
        server_key: h.server_key(),
    };
    let refused = stranger.pause(tr.id(), true).await.unwrap_err();
    assert_eq!(refused.code, RefuseCode::UnknownTransfer, "{refused:?}");

    h.sender().abort(tr.id()).await.unwrap();
    let refused = raw.pause(tr.id(), true).await.unwrap_err();
    assert_eq!(refused.code, RefuseCode::UnknownTransfer, "{refused:?}");
}

async fn an_owner_lists_and_aborts_its_open_transfers(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let a = raw.open(b"open-a", CHUNK).await;
    let b = raw.open(b"open-b", CHUNK).await;
    let first = a.segment(0, &data(1, CHUNK as usize));
    let held = first.ciphertext.len() as u64;
    raw.send_ok(&[first]).await;

    let owner = h.sender();
    let open = owner.open_transfers().await.unwrap();
    let ids: Vec<&[u8]> = open.iter().map(|o| &o.batch_id[..]).collect();
    assert_eq!(ids, vec![&b"open-a"[..], b"open-b"]);
    assert_eq!((open[0].transfer_id, open[1].transfer_id), (a.id(), b.id()));
    assert_eq!((open[0].stored_segments, open[0].stored_bytes), (1, held));
    assert_eq!((open[1].stored_segments, open[1].stored_bytes), (0, 0));
    assert!(open[0].deadline_unix > open[0].created_unix);

    // Another key sees none of them and cannot abort them.
    let stranger = Sender::new(h.t.manager(ManagerConfig::default()), h.config()).unwrap();
    assert!(stranger.open_transfers().await.unwrap().is_empty());
    let err = stranger.abort(a.id()).await.unwrap_err();
    assert_eq!(
        err.refuse_code(),
        Some(RefuseCode::UnknownTransfer),
        "{err}"
    );
    assert!(h.store.transfer(a.id()).await.unwrap().is_some());

    // The owner aborts one: all of it goes at once, and the other stays.
    owner.abort(a.id()).await.unwrap();
    assert!(h.store.transfer(a.id()).await.unwrap().is_none());
    assert!(h.store.segments(a.id()).await.unwrap().is_empty());
    assert!(h.store.secret(a.id()).await.unwrap().is_none());
    assert!(h.store.transfer(b.id()).await.unwrap().is_some());
    let open = owner.open_transfers().await.unwrap();
    assert_eq!(open.len(), 1);
    let again = owner.abort(a.id()).await.unwrap_err();
    assert_eq!(
        again.refuse_code(),
        Some(RefuseCode::UnknownTransfer),
        "{again}"
    );
    // An aborted transfer takes no segment.
    raw.send_refused(&[a.segment(1, &data(2, 100))], RefuseCode::UnknownTransfer)
        .await;
}

/// Regression (issue 10): after 16 interrupted sends every further send of a key
/// was `Busy` for 24 h. At its limit, a hello now gives up the key's transfer
/// idle longest, once idle for the abandon time; ones in use are kept.
async fn a_key_at_its_limit_gives_up_its_transfer_idle_longest(t: Transport) {
    let mut config = ServerConfig::default();
    config
        .max_open_transfers_per_peer(2)
        .abandoned_after(Duration::from_secs(3));
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    // b is opened first, so without its later use it would be the one idle
    // longest (activity counts in whole seconds).
    let b = raw.open(b"left-b", CHUNK).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = raw.open(b"left-a", CHUNK).await;
    // At the limit, and nothing idle long enough: busy.
    let busy = raw.try_open(b"third", CHUNK).await.err().expect("busy");
    assert_eq!(busy.code, RefuseCode::Busy, "{busy:?}");
    // Both idle beyond the abandon time, then b is used again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    raw.send_ok(&[b.segment(0, &data(3, CHUNK as usize))]).await;
    let c = raw
        .try_open(b"third", CHUNK)
        .await
        .expect("the abandoned transfer makes room");
    assert!(
        h.store.transfer(a.id()).await.unwrap().is_none(),
        "a was given up"
    );
    assert!(h.store.secret(a.id()).await.unwrap().is_none());
    assert!(
        h.store.transfer(b.id()).await.unwrap().is_some(),
        "b is in use"
    );
    assert!(h.store.transfer(c.id()).await.unwrap().is_some());
}
