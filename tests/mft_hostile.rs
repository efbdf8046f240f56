//! A hostile client (RELIABILITY.md promise 3), built from the wire module: it
//! replays, swaps, truncates and forges messages, within a batch, across batches
//! and across connections of other keys. Each attack asserts three things: the
//! refusal it gets; what the store holds afterwards (nothing new, or the batch
//! exactly once); and that an honest client of another key on the same server
//! still sends and retrieves a batch (`Harness::assert_others_unaffected`).
//! Duplication, omission and replay into another transfer are in
//! tests/mft_transfer.rs, with the same three checks.

#[macro_use]
mod common;

use common::mft_harness::*;
use common::{Transport, init_tracing};
use flow::{Identity, ManagerConfig};
use mft::ServerConfig;
use mft::handshake::ClientHandshake;
use mft::wire::{BatchId, Codec, Message, RefuseCode, Tag};

on_every_transport!(
    a_hello_replayed_by_another_key_is_refused,
    a_segment_replayed_by_another_key_is_refused,
    a_completion_replayed_by_another_key_is_refused,
    a_segment_moved_to_another_index_is_refused,
    a_segment_signed_by_another_key_is_refused,
    a_truncated_message_is_refused,
    a_pull_hello_replayed_by_another_key_is_refused,
);

/// A dishonest client of a fresh key of its own on the harness's server.
fn stranger(h: &Harness) -> Raw {
    Raw {
        manager: h.t.manager(ManagerConfig::default()),
        endpoint: h.endpoint.clone(),
        server_key: h.server_key(),
    }
}

/// Sends `message` as the first of a new flow of `raw`; the answer.
async fn ask(raw: &Raw, message: &[u8]) -> Option<Message> {
    let (mut reader, mut writer) = raw.flow().await;
    let _ = writer.write_msg(&[message]).await;
    recv(&mut reader).await
}

fn refused_with(answer: Option<Message>, code: RefuseCode) {
    match answer {
        Some(Message::Refuse(r)) => assert_eq!(r.code, code, "{r:?}"),
        other => panic!("expected Refuse({code:?}), got {other:?}"),
    }
}

/// Key A's hello, captured and sent by key B on B's own connection.
async fn a_hello_replayed_by_another_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let id = BatchId::new(b"captured".to_vec()).unwrap();
    let (_, hello) = ClientHandshake::push(h.client.identity(), &id, CHUNK, b"").unwrap();
    let answer = ask(&stranger(&h), &Message::Hello(hello).to_bytes().unwrap()).await;
    refused_with(answer, RefuseCode::IdentityMismatch);
    assert!(
        h.store.transfers().await.unwrap().is_empty(),
        "nothing opened"
    );
    h.assert_others_unaffected(b"after-hello-replay").await;
}

/// A's segment, sent by B into A's transfer.
async fn a_segment_replayed_by_another_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let tr = h.raw().open(b"a-batch", CHUNK).await;
    let segment = tr.segment(0, &data(1, CHUNK as usize));
    let refusal = stranger(&h)
        .send_refused(&[segment], RefuseCode::UnknownTransfer)
        .await;
    assert!(!refusal.message.contains(&tr.id().to_string()));
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());
    h.assert_others_unaffected(b"after-segment-replay").await;
}

/// A's completion, sent by B: the batch is not completed, not even for A.
async fn a_completion_replayed_by_another_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"a-complete", CHUNK).await;
    let segments = vec![tr.segment(0, &data(2, 100))];
    raw.send_ok(&segments).await;
    let complete = tr.honest_completion(&segments, 100, b"");
    stranger(&h)
        .complete_refused(&complete, RefuseCode::UnknownTransfer)
        .await;
    h.assert_no_batch(b"a-complete").await;
    // A can still complete it, once.
    raw.complete(&complete).await.unwrap();
    assert!(h.stored(b"a-complete").await.is_some());
    h.assert_others_unaffected(b"after-complete-replay").await;
}

/// The owner moves segment 0's ciphertext to index 1, signing it again: the
/// encryption binds the index, so it does not authenticate there.
async fn a_segment_moved_to_another_index_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"moved", CHUNK).await;
    let mut moved = tr.segment(0, &data(3, CHUNK as usize));
    moved.index = 1;
    let ct = &moved.ciphertext;
    let tag = Tag(ct[ct.len() - 16..].try_into().unwrap());
    resign(&mut moved, &tr.identity, tag);
    raw.send_refused(&[moved], RefuseCode::BadSegment).await;
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());
    h.assert_others_unaffected(b"after-move").await;
}

/// A segment of A's transfer that another key signed.
async fn a_segment_signed_by_another_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"forged", CHUNK).await;
    let mut forged = tr.segment(0, &data(4, CHUNK as usize));
    let ct = &forged.ciphertext;
    let tag = Tag(ct[ct.len() - 16..].try_into().unwrap());
    resign(&mut forged, &Identity::generate(), tag);
    raw.send_refused(&[forged], RefuseCode::BadSignature).await;
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());
    h.assert_others_unaffected(b"after-forgery").await;
}

/// A message cut short (its frame is whole, its fields are not): refused as
/// malformed, whichever message it was.
async fn a_truncated_message_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"truncated", CHUNK).await;
    let id = BatchId::new(b"cut".to_vec()).unwrap();
    let (_, hello) = ClientHandshake::push(h.client.identity(), &id, CHUNK, b"").unwrap();
    let segment = tr.segment(0, &data(5, 100));
    for whole in [
        Message::Hello(hello).to_bytes().unwrap(),
        Message::Segment(segment).to_bytes().unwrap(),
    ] {
        for cut in [1, 20, whole.len() / 2] {
            let answer = ask(&raw, &whole[..whole.len() - cut]).await;
            refused_with(answer, RefuseCode::BadMessage);
        }
    }
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());
    assert_eq!(
        h.store.transfers().await.unwrap().len(),
        1,
        "only the one opened"
    );
    h.assert_others_unaffected(b"after-truncation").await;
}

/// A's pull hello, sent by B: refused before anything of the batch is sent.
async fn a_pull_hello_replayed_by_another_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    h.sender()
        .send(&b"private"[..], b"pulled", b"")
        .await
        .unwrap();
    let id = BatchId::new(b"pulled".to_vec()).unwrap();
    let (_, hello) = ClientHandshake::pull(h.client.identity(), None, &id, b"", None).unwrap();
    let answer = ask(
        &stranger(&h),
        &Message::PullHello(hello).to_bytes().unwrap(),
    )
    .await;
    refused_with(answer, RefuseCode::IdentityMismatch);
    assert!(
        h.stored(b"pulled").await.is_some(),
        "the batch is as it was"
    );
    h.assert_others_unaffected(b"after-pull-replay").await;
}
