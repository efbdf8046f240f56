//! The transfer protocol end to end: real QUIC on loopback (and the in-process `mem`
//! protocol where it applies), real keys, real stores.
//!
//! Honest clients are [`mft::Sender`] and [`mft::Retriever`]. Dishonest ones are built
//! here from the sans-IO `wire`, `handshake` and `crypto` modules: they complete a
//! genuine handshake, then send segments and completions that are wrong in exactly
//! one way, and every test checks both the refusal and what the store holds after it.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    TempDir, Transport, allow_all, allow_only, bounded, bounded_for, init_tracing, mft_server,
};
use flow::{Authorizer, FlowReader, FlowWriter, Identity, Manager, ManagerConfig};
use mft::crypto::Chain;
use mft::handshake::ClientHandshake;
use mft::store::{
    BatchRecord, BatchStore, FsStore, MemoryStore, Store, StoreError, TransferId, TransferRecord,
};
use mft::wire::{BatchId, Codec, Message, Receipt, RefuseCode, Segment};
use mft::{ClientConfig, ErrorKind, Event, Retriever, Sender, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, oneshot};

on_every_transport!(
    round_trip_of_an_empty_batch,
    round_trip_of_one_byte,
    round_trip_of_whole_chunks,
    round_trip_of_whole_chunks_and_one_byte,
    a_send_reports_its_events,
    unauthorised_sender_is_refused,
    wrong_server_key_is_refused,
    tampered_segment_is_refused,
    segment_replayed_from_another_transfer_is_refused,
    duplicate_segment_is_refused_and_the_first_copy_kept,
    missing_segment_fails_the_completion,
    wrong_completion_id_is_refused,
    wrong_segment_count_is_refused,
    wrong_chain_is_refused,
    metadata_over_the_limit_is_refused,
    segment_over_the_limit_is_refused,
    unauthorised_retriever_is_refused,
    batch_survives_a_server_restart,
    busy_server_refuses_extra_flows,
    send_resumes_after_the_connection_is_lost,
    deferred_metadata_carries_the_digest_of_the_data_sent,
    deferred_metadata_that_fails_abandons_the_batch,
    one_flow_with_many_segments_in_flight_round_trips,
    a_reopened_transfer_is_not_new_and_only_the_rest_is_sent,
    a_segment_after_completion_is_refused_and_the_batch_still_retrieves,
    a_transfer_past_its_deadline_takes_no_segment_and_no_completion,
    a_repeated_completion_gets_the_stored_receipt,
    a_send_whose_receipt_is_lost_completes_again_and_succeeds,
    two_racing_hellos_open_one_transfer_and_leave_one_secret,
    a_reclaim_during_a_completion_keeps_the_batch_it_completes,
    a_shutdown_lets_a_flow_in_progress_finish_then_closes,
    a_shutdown_closes_flows_still_open_when_the_grace_period_ends,
    a_segment_is_acknowledged_only_once_the_store_has_it,
);

// The harness and the dishonest client live in tests/common/mft_harness.rs.
use common::mft_harness::*;

// ---------------------------------------------------------------------------------
// 1. Round trips.

async fn round_trip(t: Transport, size: u64) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let batch_id = format!("round-trip-{size}").into_bytes();
    let metadata = br#"{"name":"data.bin","type":"application/octet-stream"}"#;
    let seed = 1000 + size;
    let receipt = bounded(
        "send",
        h.sender()
            .send(PrngReader::new(seed, size), &batch_id, metadata),
    )
    .await
    .unwrap();
    h.check_receipt(&receipt, &batch_id, size).await;
    h.check_retrieval(&batch_id, seed, size, metadata).await;
}

async fn round_trip_of_an_empty_batch(t: Transport) {
    round_trip(t, 0).await;
}

async fn round_trip_of_one_byte(t: Transport) {
    round_trip(t, 1).await;
}

async fn round_trip_of_whole_chunks(t: Transport) {
    round_trip(t, 5 * u64::from(CHUNK)).await;
}

async fn round_trip_of_whole_chunks_and_one_byte(t: Transport) {
    round_trip(t, 5 * u64::from(CHUNK) + 1).await;
}

/// 200 MiB of pseudo-random data in 1 MiB chunks over 8 streams, never held whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_200_mib_over_quic() {
    init_tracing();
    const SIZE: u64 = 200 << 20;
    const CHUNK_1M: u32 = 1 << 20;
    const LIMIT: Duration = Duration::from_secs(120);
    let h = Harness::new(Transport::quic(), ServerConfig::default()).await;
    let mut config = h.config();
    config.chunk_size(CHUNK_1M).streams(8);
    let sender = Sender::new(h.client.clone(), config.clone()).unwrap();
    let seed = 200;
    let receipt = bounded_for(
        LIMIT,
        "sending 200 MiB",
        sender.send(PrngReader::new(seed, SIZE), b"big", b"big"),
    )
    .await
    .unwrap();
    assert_eq!(&receipt.batch_id[..], b"big");
    assert_eq!(receipt.size, SIZE);
    assert_eq!(receipt.segment_count, 200);
    assert_eq!(receipt.sender, *h.client_key().as_bytes());
    assert_eq!(receipt.server, *h.server_key().as_bytes());
    let record = h.stored(b"big").await.unwrap();
    assert_eq!((record.size, record.segment_count), (SIZE, 200));
    assert_eq!(record.chunk_size, CHUNK_1M);

    let (local, info) = h
        .server
        .retrieve(&h.client_key(), None, b"big")
        .await
        .unwrap();
    check_info(&info, b"big", SIZE, 200, h.client_key(), b"big");
    bounded_for(LIMIT, "reading locally", assert_content(local, seed, SIZE)).await;

    let retriever = Retriever::new(h.client.clone(), config).unwrap();
    let (remote, info) = bounded("get", retriever.get(b"big")).await.unwrap();
    check_info(&info, b"big", SIZE, 200, h.client_key(), b"big");
    bounded_for(
        LIMIT,
        "reading remotely",
        assert_content(remote, seed, SIZE),
    )
    .await;
}

// ---------------------------------------------------------------------------------
// 7. Events.

/// Every event still queued for `rx`.
fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => events.push(e),
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("{n} events lost"),
            Err(_) => return events,
        }
    }
}

async fn a_send_reports_its_events(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let sender = h.sender();
    let mut rx = sender.subscribe();
    let size = 3 * u64::from(CHUNK) + 10;
    let receipt = bounded(
        "send",
        sender.send(PrngReader::new(7, size), b"events", b""),
    )
    .await
    .unwrap();
    let events = drain(&mut rx);
    assert_eq!(
        events.first(),
        Some(&Event::Opened {
            batch_id: b"events".to_vec()
        })
    );
    assert_eq!(
        events.get(1),
        Some(&Event::Accepted {
            transfer_id: receipt.transfer_id,
            chunk_size: CHUNK,
            protocol: h.t.name().to_string(),
        })
    );
    assert_eq!(events.last(), Some(&Event::Completed { size, segments: 4 }));
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                bytes, segments, ..
            } => Some((*bytes, *segments)),
            _ => None,
        })
        .collect();
    // One per segment acknowledged. Workers report concurrently, so two events may
    // arrive out of order; their counts are still 1..=4 and the largest is the total.
    let mut sorted = progress.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{events:?}"
    );
    assert_eq!(sorted.last(), Some(&(size, 4)), "{events:?}");
    for w in sorted.windows(2) {
        assert!(w[0].0 < w[1].0, "{progress:?}");
    }
    // Nothing but these: no retries, no failure.
    assert_eq!(events.len(), 2 + 4 + 1, "{events:?}");
}

// ---------------------------------------------------------------------------------
// 2. Refusals that leave nothing stored.

async fn unauthorised_sender_is_refused(t: Transport) {
    // Only some other key may send.
    let other = Identity::generate().public_key();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let h = Harness::with(
        t,
        store,
        ServerConfig::default(),
        allow_only(other),
        allow_all(),
    )
    .await;
    let sender = h.sender();
    let mut rx = sender.subscribe();
    let err = bounded("send", sender.send(PrngReader::new(1, 1000), b"nope", b""))
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotAuthorized), "{err}");
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(!err.is_retryable());
    h.assert_no_batch(b"nope").await;
    assert!(h.store.transfers().await.unwrap().is_empty());
    let events = drain(&mut rx);
    assert!(
        matches!(&events[..], [Event::Opened { .. }, Event::Failed { .. }]),
        "{events:?}"
    );
}

async fn wrong_server_key_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let impostor = Identity::generate().public_key();
    let config = ClientConfig::new(h.endpoint.clone(), impostor);

    // The flow layer refuses the server's key before any transfer message is sent.
    let sender = Sender::new(h.client.clone(), config.clone()).unwrap();
    let err = bounded(
        "send",
        sender.send(PrngReader::new(2, 1000), b"misdirected", b""),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(matches!(err, mft::Error::Flow(_)), "{err:?}");
    assert_eq!(err.refuse_code(), None);
    let retriever = Retriever::new(h.client.clone(), config).unwrap();
    let err = bounded("get", retriever.get(b"misdirected"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    h.assert_no_batch(b"misdirected").await;
    assert!(h.store.transfers().await.unwrap().is_empty());

    // Past the flow layer, the handshake checks the key the server signs with.
    let raw = h.raw();
    let identity = h.client.identity().clone();
    let id = BatchId::new(&b"misdirected"[..]).unwrap();
    let (handshake, hello) = ClientHandshake::push(&identity, &id, CHUNK, b"").unwrap();
    let (mut reader, mut writer) = raw.flow().await;
    writer
        .write_msg(&[&Message::Hello(hello).to_bytes().unwrap()])
        .await
        .unwrap();
    let Some(Message::Accept(accept)) = recv(&mut reader).await else {
        panic!("expected Accept");
    };
    let err = handshake.finish_push(&accept, &impostor).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    h.assert_no_batch(b"misdirected").await;
}

async fn tampered_segment_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"tampered", CHUNK).await;
    let plain = raw_data(10);
    let segments = tr.segments(&plain);

    // One ciphertext bit flipped; the signature (over the tag) still verifies.
    let mut tampered = segments[0].clone();
    let mut ct = tampered.ciphertext.to_vec();
    ct[100] ^= 0x01;
    tampered.ciphertext = ct.into();
    raw.send_refused(&[tampered], RefuseCode::BadSegment).await;
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());

    // A flipped tag byte, re-signed: AES-GCM still catches it.
    let mut bad_tag = segments[1].clone();
    let mut ct = bad_tag.ciphertext.to_vec();
    let last = ct.len() - 1;
    ct[last] ^= 0x80;
    bad_tag.ciphertext = ct.into();
    let tag = bad_tag.tag();
    resign(&mut bad_tag, &tr.identity, tag);
    raw.send_refused(&[segments[0].clone(), bad_tag], RefuseCode::BadSegment)
        .await;
    let stored = h.store.segments(tr.id()).await.unwrap();
    assert_eq!(stored.iter().map(|s| s.index).collect::<Vec<_>>(), [0]);

    let complete = tr.honest_completion(&segments, plain.len(), b"");
    raw.complete_refused(&complete, RefuseCode::WrongSegmentCount)
        .await;
    h.assert_no_batch(b"tampered").await;

    // The genuine segments still complete the transfer.
    raw.send_ok(&segments[1..]).await;
    raw.complete(&complete).await.unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"tampered").await,
        plain
    );
}

async fn segment_replayed_from_another_transfer_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let a = raw.open(b"replay-a", CHUNK).await;
    let b = raw.open(b"replay-b", CHUNK).await;
    assert_ne!(a.secret.transfer_id, b.secret.transfer_id);
    let plain = raw_data(11);
    let from_a = a.segments(&plain);
    raw.send_ok(&from_a).await;

    // A's segment 0 as it was sent, relabelled for B: its signature names A.
    let mut replayed = from_a[0].clone();
    replayed.transfer_id = b.secret.transfer_id;
    raw.send_refused(std::slice::from_ref(&replayed), RefuseCode::BadSignature)
        .await;
    // Re-signed for B by the sender itself: the data key and AAD still say A.
    let tag = replayed.tag();
    resign(&mut replayed, &b.identity, tag);
    raw.send_refused(&[replayed], RefuseCode::BadSegment).await;
    assert!(h.store.segments(b.id()).await.unwrap().is_empty());
    assert_eq!(h.store.segments(a.id()).await.unwrap().len(), 3);

    // B completed with A's chain and counts: nothing of A's counts for B.
    let complete = b.completion(
        3,
        plain.len() as u64,
        b.secret.completion_id,
        b.chain(&from_a),
        b"",
    );
    raw.complete_refused(&complete, RefuseCode::WrongSegmentCount)
        .await;
    h.assert_no_batch(b"replay-b").await;

    // A itself is intact.
    raw.complete(&a.honest_completion(&from_a, plain.len(), b""))
        .await
        .unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"replay-a").await,
        plain
    );
    assert!(h.stored(b"replay-b").await.is_none());
    h.assert_others_unaffected(b"after-replay").await;
}

async fn duplicate_segment_is_refused_and_the_first_copy_kept(t: Transport) {
    let dir = TempDir::new();
    let fs_store = tokio::task::spawn_blocking({
        let path = dir.path().join("store");
        move || FsStore::open(path).unwrap()
    })
    .await
    .unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("memory", Arc::new(MemoryStore::new())),
        ("fs", Arc::new(fs_store)),
    ];
    for (name, store) in stores {
        tracing::info!(store = name, "duplicate segments");
        let h = Harness::over(t.clone(), store).await;
        let raw = h.raw();
        let tr = raw.open(b"dup", CHUNK).await;
        let plain = raw_data(12);
        let segments = tr.segments(&plain);

        // The same segment twice on one flow.
        raw.send_refused(
            &[segments[0].clone(), segments[0].clone()],
            RefuseCode::DuplicateSegment,
        )
        .await;
        // Another valid segment for a stored index, on a new flow.
        let impostor = tr.segment(0, &data(99, CHUNK as usize));
        raw.send_refused(&[impostor], RefuseCode::DuplicateSegment)
            .await;
        let stored = h.store.segments(tr.id()).await.unwrap();
        assert_eq!(stored.len(), 1, "{name}");
        assert_eq!(stored[0].tag, segments[0].tag(), "{name}");
        h.assert_no_batch(b"dup").await;

        // The rest, then an honest completion: the batch is the first copy.
        raw.send_ok(&segments[1..]).await;
        let receipt = raw
            .complete(&tr.honest_completion(&segments, plain.len(), b"m"))
            .await
            .unwrap();
        assert_eq!(receipt.segment_count, 3);
        assert_eq!(
            retrieve_all(&h.server, &h.client_key(), b"dup").await,
            plain,
            "{name}"
        );
        h.assert_others_unaffected(b"after-duplicates").await;
        h.server_manager.close();
    }
}

/// A sender process that died after storing some segments: a new one for the same
/// batch id reopens the transfer, and its accept says the transfer is not new, so
/// the sender asks what is stored and sends only the rest. (A new transfer is said
/// to be new, and its sender skips that round trip.)
async fn a_reopened_transfer_is_not_new_and_only_the_rest_is_sent(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let first = raw.open(b"reopened", CHUNK).await;
    assert!(first.secret.new_transfer, "a transfer opened now is new");
    let plain = raw_data(33);
    let segments = first.segments(&plain);
    assert_eq!(segments.len(), 3);
    raw.send_ok(&segments[..2]).await;

    let again = raw.open(b"reopened", CHUNK).await;
    assert_eq!(again.secret.transfer_id, first.secret.transfer_id);
    assert!(!again.secret.new_transfer, "a reopened transfer is not new");

    let sender = h.sender();
    let mut events = sender.subscribe();
    let receipt = bounded(
        "send",
        sender.send(std::io::Cursor::new(plain.clone()), b"reopened", b"m"),
    )
    .await
    .unwrap();
    assert_eq!(receipt.segment_count, 3);
    let mut resumed = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Resumed { stored } = event {
            resumed.push(stored);
        }
    }
    assert_eq!(resumed, vec![2], "the sender asked what was stored");
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"reopened").await,
        plain
    );
}

/// Regression (issue 9): a segment flow that had resolved its transfer kept storing
/// segments after the batch completed, and retrieval then streamed them too.
async fn a_segment_after_completion_is_refused_and_the_batch_still_retrieves(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"late", CHUNK).await;
    let plain = raw_data(41);
    let segments = tr.segments(&plain);

    // A flow that stays open after its first segment.
    let (mut reader, mut writer) = raw.flow().await;
    let write = |s: &Segment| {
        (
            Segment::header(&s.transfer_id, s.index, s.ciphertext.len() as u32),
            s.ciphertext.clone(),
            s.signature,
        )
    };
    let (header, body, sig) = write(&segments[0]);
    writer.write_msg(&[&header, &body, &sig.0]).await.unwrap();
    assert!(matches!(
        recv(&mut reader).await,
        Some(Message::SegmentAck(_))
    ));
    raw.send_ok(&segments[1..]).await;
    let receipt = raw
        .complete(&tr.honest_completion(&segments, plain.len(), b""))
        .await
        .unwrap();
    assert_eq!(receipt.segment_count, 3);

    // The held flow now offers a fourth, validly sealed and signed segment.
    let extra = tr.segment(3, b"appended after the receipt");
    let (header, body, sig) = write(&extra);
    let _ = writer.write_msg(&[&header, &body, &sig.0]).await;
    match recv(&mut reader).await {
        Some(Message::Refuse(refuse)) => {
            assert_eq!(refuse.code, RefuseCode::UnknownTransfer, "{refuse:?}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(h.store.segments(tr.id()).await.unwrap().len(), 3);
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"late").await,
        plain
    );
}

/// Regression (issue 9): the deadline was checked only when a transfer was loaded
/// from the store, so one held in memory took segments and a completion after it.
async fn a_transfer_past_its_deadline_takes_no_segment_and_no_completion(t: Transport) {
    let mut config = ServerConfig::default();
    config.transfer_deadline(Duration::from_secs(1));
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    let tr = raw.open(b"overdue", CHUNK).await;
    let plain = raw_data(42);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments[..1]).await;
    // A flow that resolved the transfer before its deadline, and stays open.
    let (mut held_reader, mut held_writer) = raw.flow().await;
    send_segment(&mut held_writer, &segments[1]).await;
    assert!(matches!(
        recv(&mut held_reader).await,
        Some(Message::SegmentAck(_))
    ));

    // Deadlines count whole seconds: past a 1 s deadline in at most 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refuse = raw
        .send_refused(&segments[2..], RefuseCode::UnknownTransfer)
        .await;
    assert!(refuse.message.contains("expired"), "{refuse:?}");
    raw.complete_refused(
        &tr.honest_completion(&segments, plain.len(), b""),
        RefuseCode::UnknownTransfer,
    )
    .await;
    h.assert_no_batch(b"overdue").await;
    assert_eq!(h.store.segments(tr.id()).await.unwrap().len(), 2);

    // Reclaimed, the transfer leaves nothing behind, and the held flow cannot put
    // a segment back (before, it stored one that stayed on disk forever).
    assert_eq!(h.server.reclaim_expired().await.unwrap(), 1);
    send_segment(&mut held_writer, &segments[2]).await;
    match recv(&mut held_reader).await {
        Some(Message::Refuse(refuse)) => assert_eq!(refuse.code, RefuseCode::UnknownTransfer),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(h.store.segments(tr.id()).await.unwrap().is_empty());
    assert!(h.store.secret(tr.id()).await.unwrap().is_none());
}

/// Regression (issue 9): a reclaim that ran while a completion was being checked
/// could delete the data of the batch whose signed receipt the completion then
/// returned. The reclaim now waits for the completion, and keeps what it stored.
async fn a_reclaim_during_a_completion_keeps_the_batch_it_completes(t: Transport) {
    let store = Arc::new(HeldCompletions::default());
    let mut config = ServerConfig::default();
    config.transfer_deadline(Duration::from_secs(1));
    let h = Harness::with(t, store.clone(), config, allow_all(), allow_all()).await;
    let raw = h.raw();
    let tr = raw.open(b"racing the reaper", CHUNK).await;
    let plain = raw_data(47);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    let complete = tr.honest_completion(&segments, plain.len(), b"");
    let completing = tokio::spawn(async move { raw.complete(&complete).await });
    bounded("the completion reaching the store", store.gate.reached()).await;

    // Past the deadline while the completion is held inside the store.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reclaiming = tokio::spawn({
        let server = h.server.clone();
        async move { server.reclaim_expired().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !reclaiming.is_finished(),
        "the reclaim waits for the completion"
    );
    store.gate.open_once();
    let receipt = bounded("the completion", completing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(receipt.segment_count, 3);
    bounded("the reclaim", reclaiming).await.unwrap().unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"racing the reaper").await,
        plain,
        "the receipted batch keeps its data"
    );
}

/// A memory store whose completions wait for a permit, telling the test when one
/// arrives.
#[derive(Debug, Default)]
struct HeldCompletions {
    inner: MemoryStore,
    gate: common::Gate,
}

#[async_trait::async_trait]
impl Store for HeldCompletions {
    async fn complete_transfer(&self, batch: BatchRecord) -> Result<(), StoreError> {
        self.gate.pass().await;
        self.inner.complete_transfer(batch).await
    }
}

delegate_store!(HeldCompletions, inner);

/// Regression (issue 9): a completion repeated after its receipt was lost got
/// `UnknownTransfer`, although the server held the batch and its receipt, so the
/// sender could not learn that it had succeeded.
async fn a_repeated_completion_gets_the_stored_receipt(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"again", CHUNK).await;
    let plain = raw_data(43);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    let complete = tr.honest_completion(&segments, plain.len(), b"meta");
    let first = raw.complete(&complete).await.unwrap();
    let again = raw.complete(&complete).await.unwrap();
    assert_eq!(again, first, "the stored receipt, byte for byte");
    let stored = h.stored(b"again").await.unwrap();
    assert_eq!(
        stored.receipt,
        Message::Receipt(first.clone()).to_bytes().unwrap()
    );

    // A repeat that claims other content, or lacks the secret completion id, is
    // refused, and the batch stays as it was.
    let (count, size) = (complete.segment_count, complete.size);
    let id = tr.secret.completion_id;
    let other_metadata = tr.completion(count, size, id, complete.chain, b"other");
    raw.complete_refused(&other_metadata, RefuseCode::BatchExists)
        .await;
    let guessed = tr.completion(count, size, [0; 32], complete.chain, b"meta");
    raw.complete_refused(&guessed, RefuseCode::BatchExists)
        .await;
    // Another key learns nothing about the transfer.
    let stranger = Raw {
        manager: h.t.manager(ManagerConfig::default()),
        ..h.raw()
    };
    stranger
        .complete_refused(&complete, RefuseCode::UnknownTransfer)
        .await;
    assert_eq!(h.stored(b"again").await, Some(stored));
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"again").await,
        plain
    );
}

/// The sender's side of a lost receipt: the connection dies just after the
/// server stored the batch, the sender completes again on a new one, and gets the
/// stored receipt: the send succeeds instead of failing on a batch it delivered.
async fn a_send_whose_receipt_is_lost_completes_again_and_succeeds(t: Transport) {
    let store = Arc::new(LosesFirstReceipt::default());
    let h = Harness::over(t, store.clone()).await;
    store.client.set(h.client.clone()).unwrap();
    let size = 3 * u64::from(CHUNK) + 5;
    let sender = h.sender();
    let mut events = sender.subscribe();
    let receipt = bounded("send", sender.send(PrngReader::new(44, size), b"lost", b""))
        .await
        .unwrap();
    h.check_receipt(&receipt, b"lost", size).await;
    assert!(
        store.lost.load(std::sync::atomic::Ordering::SeqCst),
        "the hook ran"
    );
    let mut retried = false;
    while let Ok(event) = events.try_recv() {
        retried |= matches!(event, Event::Retrying { .. });
    }
    assert!(retried, "the completion was retried");
    let stored = h.stored(b"lost").await.unwrap();
    assert_eq!(
        stored.receipt,
        Message::Receipt(receipt).to_bytes().unwrap()
    );
}

/// A memory store that, the first time a batch is stored, closes the client's
/// connections before the server can send the receipt.
#[derive(Debug, Default)]
struct LosesFirstReceipt {
    inner: MemoryStore,
    client: std::sync::OnceLock<Manager>,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for LosesFirstReceipt {
    async fn complete_transfer(&self, batch: BatchRecord) -> Result<(), StoreError> {
        self.inner.complete_transfer(batch).await?;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            for conn in self
                .client
                .get()
                .map(Manager::connections)
                .unwrap_or_default()
            {
                conn.close();
            }
        }
        Ok(())
    }
}

delegate_store!(LosesFirstReceipt, inner);

/// Regression (issue 9): two hellos of one sender for one batch id, both past the
/// lookup before either opened a transfer, left the loser's secret behind, named by
/// no transfer and never cleaned up. The store holds both at the step that opens
/// the transfer, so they race there every time.
async fn two_racing_hellos_open_one_transfer_and_leave_one_secret(t: Transport) {
    let store = Arc::new(RacingOpens::default());
    let h = Harness::over(t, store.clone()).await;
    let raw = h.raw();
    let (a, b) = tokio::join!(raw.open(b"race", CHUNK), raw.open(b"race", CHUNK));
    assert_eq!(a.id(), b.id(), "both hellos got the one transfer");
    assert!(a.secret.data_key == b.secret.data_key);
    assert_ne!(
        a.secret.new_transfer, b.secret.new_transfer,
        "one opened it, the other reopened it"
    );
    let tried = store.opened.lock().unwrap().clone();
    assert_eq!(tried.len(), 2, "both hellos tried to open a transfer");
    assert!(tried.contains(&a.id()));
    for id in tried.iter().filter(|id| **id != a.id()) {
        assert_eq!(h.store.secret(*id).await.unwrap(), None, "loser's secret");
    }
    assert_eq!(h.store.transfers().await.unwrap().len(), 1);

    // The transfer they share works as any other.
    let plain = raw_data(45);
    let segments = a.segments(&plain);
    raw.send_ok(&segments).await;
    raw.complete(&b.honest_completion(&segments, plain.len(), b""))
        .await
        .unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"race").await,
        plain
    );
}

/// A memory store that makes the first two transfer opens wait for each other, and
/// records which transfer ids were tried.
#[derive(Debug)]
struct RacingOpens {
    inner: MemoryStore,
    both_here: tokio::sync::Barrier,
    opened: std::sync::Mutex<Vec<TransferId>>,
}

impl Default for RacingOpens {
    fn default() -> Self {
        RacingOpens {
            inner: MemoryStore::new(),
            both_here: tokio::sync::Barrier::new(2),
            opened: std::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl Store for RacingOpens {
    async fn put_transfer_with_secret(
        &self,
        record: TransferRecord,
        sealed_secret: Vec<u8>,
    ) -> Result<(), StoreError> {
        let first_two = {
            let mut opened = self.opened.lock().unwrap();
            opened.push(record.transfer);
            opened.len() <= 2
        };
        if first_two {
            self.both_here.wait().await;
        }
        self.inner
            .put_transfer_with_secret(record, sealed_secret)
            .await
    }
}

delegate_store!(RacingOpens, inner);

/// A server whose segment writes wait until the test lets them through, serving on
/// `t` in a task the test holds: what a shutdown test needs to have a flow in
/// progress at the moment it stops the server.
struct Stoppable {
    /// Kept, as a program that serves keeps its manager: only the server's own
    /// close may end the connections.
    _manager: Manager,
    server: mft::Server,
    serving: tokio::task::JoinHandle<()>,
    store: Arc<HeldSegments>,
    raw: Raw,
}

impl Stoppable {
    async fn start(t: &Transport) -> Self {
        let store = Arc::new(HeldSegments::default());
        let (server, endpoint, manager, serving) = common::serving_mft_server(
            t,
            Identity::generate(),
            store.clone(),
            ServerConfig::default(),
            |_: &mft::Request<'_>| true,
        )
        .await;
        let raw = Raw {
            manager: t.manager(ManagerConfig::default()),
            endpoint,
            server_key: server.identity().public_key(),
        };
        Stoppable {
            _manager: manager,
            server,
            serving,
            store,
            raw,
        }
    }

    /// Opens a transfer and sends its first segment on a flow of its own, returning
    /// once the server is storing it (held by the store): the flow's halves.
    async fn segment_in_progress(&self) -> (FlowReader, FlowWriter) {
        let tr = self.raw.open(b"stopping", CHUNK).await;
        let segment = tr.segments(&raw_data(46)).remove(0);
        let (reader, mut writer) = self.raw.flow().await;
        send_segment(&mut writer, &segment).await;
        bounded("the segment reaching the store", self.store.gate.reached()).await;
        (reader, writer)
    }

    /// Whether the server still answers a request on a new flow.
    async fn answers(&self) -> bool {
        let ask = async {
            let flow = self
                .raw
                .manager
                .dial(
                    &self.raw.endpoint,
                    Authorizer::any(),
                    Duration::from_secs(2),
                )
                .await?;
            let (mut reader, mut writer) = flow.into_split();
            let resume = Message::Resume(mft::wire::Resume {
                transfer_id: TransferId([0; 16]),
            });
            writer.write_msg(&[&resume.to_bytes().unwrap()]).await?;
            Ok::<_, flow::Error>(reader.read_msg().await?.is_some())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(3), ask).await,
            Ok(Ok(true))
        )
    }
}

/// Graceful shutdown (issue 9: it lives in the library): a flow being served when
/// the server stops finishes and is answered; then the server closes and `serve`
/// returns.
async fn a_shutdown_lets_a_flow_in_progress_finish_then_closes(t: Transport) {
    let mut s = Stoppable::start(&t).await;
    assert!(s.answers().await, "the running server answers");
    let (mut reader, mut writer) = s.segment_in_progress().await;
    s.server.shutdown(Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !s.serving.is_finished(),
        "serve waits for the flow in progress"
    );
    s.store.gate.open_once();
    assert!(
        matches!(recv(&mut reader).await, Some(Message::SegmentAck(_))),
        "the flow in progress is answered"
    );
    // The sender has nothing more: its flow ends, and with it the last one served.
    writer.shutdown().await.unwrap();
    drop(reader);
    bounded("serve returning", &mut s.serving).await.unwrap();
    assert!(!s.answers().await, "a stopped server takes no new flows");
}

/// Durability, seen from the wire: while the store holds a segment's write, no
/// acknowledgement comes; it comes once the store returns (FsStore returns only
/// after the data and its record are synced: `fs_syncs_each_segment_before_recording_it`).
async fn a_segment_is_acknowledged_only_once_the_store_has_it(t: Transport) {
    let s = Stoppable::start(&t).await;
    let (mut reader, _writer) = s.segment_in_progress().await;
    let early = tokio::time::timeout(Duration::from_millis(300), recv(&mut reader)).await;
    assert!(
        early.is_err(),
        "acknowledged before it was stored: {early:?}"
    );
    s.store.gate.open_once();
    assert!(matches!(
        recv(&mut reader).await,
        Some(Message::SegmentAck(ack)) if ack.index == 0
    ));
    let open = mft::store::TransferStore::transfers(&s.store.inner)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    let stored = mft::store::SegmentStore::segments(&s.store.inner, open[0].transfer)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
}

/// A flow that does not finish within the grace period is closed, and `serve`
/// returns soon after the period, not when the flow would have ended.
async fn a_shutdown_closes_flows_still_open_when_the_grace_period_ends(t: Transport) {
    let mut s = Stoppable::start(&t).await;
    let (mut reader, _writer) = s.segment_in_progress().await;
    let stopped = std::time::Instant::now();
    s.server.shutdown(Duration::from_millis(300));
    bounded("serve returning", &mut s.serving).await.unwrap();
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "{took:?}: before the grace period"
    );
    let answer = bounded("the cut flow", reader.read_msg()).await;
    assert!(
        !matches!(answer, Ok(Some(_))),
        "no answer on a closed flow: {answer:?}"
    );
    s.store.gate.open_once();
}

/// A memory store whose segment writes wait for a permit, telling the test when
/// one arrives.
#[derive(Debug, Default)]
struct HeldSegments {
    inner: MemoryStore,
    gate: common::Gate,
}

#[async_trait::async_trait]
impl Store for HeldSegments {}

delegate_store!(HeldSegments, inner, without);

#[async_trait::async_trait]
impl mft::store::SegmentStore for HeldSegments {
    async fn put_segment(
        &self,
        t: TransferId,
        info: mft::store::SegmentInfo,
        offset: u64,
        data: bytes::Bytes,
    ) -> Result<(), StoreError> {
        self.gate.pass().await;
        self.inner.put_segment(t, info, offset, data).await
    }
    async fn segments(&self, t: TransferId) -> Result<Vec<mft::store::SegmentInfo>, StoreError> {
        self.inner.segments(t).await
    }
    async fn read_segment(
        &self,
        t: TransferId,
        offset: u64,
        len: u32,
    ) -> Result<bytes::Bytes, StoreError> {
        self.inner.read_segment(t, offset, len).await
    }
    async fn delete_segments(&self, t: TransferId) -> Result<(), StoreError> {
        self.inner.delete_segments(t).await
    }
}

async fn missing_segment_fails_the_completion(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"gap", CHUNK).await;
    let plain = raw_data(13);
    let segments = tr.segments(&plain);
    raw.send_ok(&[segments[0].clone(), segments[2].clone()])
        .await;

    // The right count, size and chain for the whole batch: segment 1 is missing.
    let complete = tr.honest_completion(&segments, plain.len(), b"");
    raw.complete_refused(&complete, RefuseCode::WrongSegmentCount)
        .await;
    // Claiming just the two stored segments: they are not contiguous.
    let two = [segments[0].clone(), segments[2].clone()];
    let size = CHUNK as usize + 1000;
    raw.complete_refused(
        &tr.honest_completion(&two, size, b""),
        RefuseCode::WrongSegmentCount,
    )
    .await;
    h.assert_no_batch(b"gap").await;

    raw.send_ok(&segments[1..2]).await;
    raw.complete(&complete).await.unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"gap").await,
        plain
    );
    h.assert_others_unaffected(b"after-gap").await;
}

async fn wrong_completion_id_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"completion-id", CHUNK).await;
    let plain = raw_data(14);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    let mut wrong_id = tr.secret.completion_id;
    wrong_id[31] ^= 1;
    let complete = tr.completion(3, plain.len() as u64, wrong_id, tr.chain(&segments), b"");
    raw.complete_refused(&complete, RefuseCode::WrongCompletionId)
        .await;
    h.assert_no_batch(b"completion-id").await;

    // The transfer's own completion id from another transfer does not do either.
    let other = raw.open(b"completion-id-2", CHUNK).await;
    let complete = tr.completion(
        3,
        plain.len() as u64,
        other.secret.completion_id,
        tr.chain(&segments),
        b"",
    );
    raw.complete_refused(&complete, RefuseCode::WrongCompletionId)
        .await;
    h.assert_no_batch(b"completion-id").await;

    raw.complete(&tr.honest_completion(&segments, plain.len(), b""))
        .await
        .unwrap();
}

async fn wrong_segment_count_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"count", CHUNK).await;
    let plain = raw_data(15);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    let size = plain.len() as u64;
    let chain = tr.chain(&segments);
    let id = tr.secret.completion_id;
    for (count, size) in [(2, size), (4, size), (3, size - 1), (3, size + 1), (0, 0)] {
        raw.complete_refused(
            &tr.completion(count, size, id, chain, b""),
            RefuseCode::WrongSegmentCount,
        )
        .await;
    }
    h.assert_no_batch(b"count").await;
    raw.complete(&tr.honest_completion(&segments, plain.len(), b""))
        .await
        .unwrap();
    assert_eq!(
        retrieve_all(&h.server, &h.client_key(), b"count").await,
        plain
    );
}

async fn wrong_chain_is_refused(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let raw = h.raw();
    let tr = raw.open(b"chain", CHUNK).await;
    let plain = raw_data(16);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    let size = plain.len() as u64;
    let id = tr.secret.completion_id;

    let mut flipped = tr.chain(&segments);
    flipped.0[0] ^= 1;
    // The segments' chain in another order, and one over another batch id.
    let reordered = tr.chain(&[
        segments[1].clone(),
        segments[0].clone(),
        segments[2].clone(),
    ]);
    let mut other_batch = Chain::new(&tr.secret.transfer_id, b"chain-2");
    for s in &segments {
        other_batch.push(s.ciphertext.len() as u32, &s.tag());
    }
    for chain in [flipped, reordered, other_batch.value()] {
        raw.complete_refused(
            &tr.completion(3, size, id, chain, b""),
            RefuseCode::ChainMismatch,
        )
        .await;
    }
    h.assert_no_batch(b"chain").await;
    raw.complete(&tr.honest_completion(&segments, plain.len(), b""))
        .await
        .unwrap();
}

async fn metadata_over_the_limit_is_refused(t: Transport) {
    let mut config = ServerConfig::default();
    config.max_metadata(1024);
    let h = Harness::new(t, config).await;

    // The sender learns the limit in the handshake and refuses before sending data.
    let err = bounded(
        "send",
        h.sender()
            .send(PrngReader::new(3, 1000), b"meta-big", &[b'x'; 2048]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg, "{err}");
    assert!(
        matches!(
            err,
            mft::Error::Config {
                field: "metadata",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("metadata"), "{err}");
    h.assert_no_batch(b"meta-big").await;
    // Exactly at the limit is fine.
    let receipt = bounded(
        "send",
        h.sender()
            .send(PrngReader::new(3, 1000), b"meta-max", &[b'y'; 1024]),
    )
    .await
    .unwrap();
    assert_eq!(receipt.size, 1000);
    let (_, info) = h
        .server
        .retrieve(&h.client_key(), None, b"meta-max")
        .await
        .unwrap();
    assert_eq!(&info.metadata[..], &[b'y'; 1024]);

    // A client that ignores the limit is refused at completion.
    let raw = h.raw();
    let tr = raw.open(b"meta-raw", CHUNK).await;
    assert_eq!(tr.secret.max_metadata, 1024);
    let plain = raw_data(17);
    let segments = tr.segments(&plain);
    raw.send_ok(&segments).await;
    raw.complete_refused(
        &tr.honest_completion(&segments, plain.len(), &[b'z'; 2048]),
        RefuseCode::MetadataTooLarge,
    )
    .await;
    raw.complete_refused(
        &tr.honest_completion(&segments, plain.len(), &[b'z'; 1025]),
        RefuseCode::MetadataTooLarge,
    )
    .await;
    assert!(h.stored(b"meta-raw").await.is_none());
    assert!(h.stored(b"meta-big").await.is_none());
    assert_eq!(h.store.batches().await.unwrap().len(), 1);
}

async fn segment_over_the_limit_is_refused(t: Transport) {
    let mut config = ServerConfig::default();
    config.max_chunk_size(64 << 10).unwrap();
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    // The client asks for 1 MiB chunks; the server lowers that to its maximum.
    let tr = raw.open(b"too-large", 1 << 20).await;
    assert_eq!(tr.secret.chunk_size, 64 << 10);
    let huge = tr.segment(0, &data(18, 1 << 20));

    // As the first message of a flow, and after a good segment: refused from the
    // length prefix, while the client is still sending the body.
    let good = tr.segment(0, &data(19, 64 << 10));
    for first in [None, Some(&good)] {
        let (mut reader, mut writer) = raw.flow().await;
        if let Some(s) = first {
            let header = Segment::header(&s.transfer_id, s.index, s.ciphertext.len() as u32);
            writer
                .write_msg(&[&header, &s.ciphertext, &s.signature.0])
                .await
                .unwrap();
            assert!(matches!(
                recv(&mut reader).await,
                Some(Message::SegmentAck(ack)) if ack.index == 0
            ));
        }
        let mut big = huge.clone();
        big.index = 1;
        let tag = big.tag();
        resign(&mut big, &tr.identity, tag);
        // The body may never be read: write it from a task, and read the answer here.
        let writing = tokio::spawn(async move {
            send_segment(&mut writer, &big).await;
            writer
        });
        match recv(&mut reader).await {
            Some(Message::Refuse(r)) => assert_eq!(r.code, RefuseCode::SegmentTooLarge, "{r:?}"),
            other => panic!("expected Refuse, got {other:?}"),
        }
        assert_flow_ended(&mut reader).await;
        writing.abort();
    }
    let stored = h.store.segments(tr.id()).await.unwrap();
    assert_eq!(stored.iter().map(|s| s.index).collect::<Vec<_>>(), [0]);

    // Under the server's maximum but over the chunk size negotiated for this
    // transfer: refused after reading, nothing stored.
    let small = raw.open(b"too-large-2", 16 << 10).await;
    assert_eq!(small.secret.chunk_size, 16 << 10);
    raw.send_refused(
        &[small.segment(0, &data(20, (16 << 10) + 1))],
        RefuseCode::SegmentTooLarge,
    )
    .await;
    assert!(h.store.segments(small.id()).await.unwrap().is_empty());
    h.assert_no_batch(b"too-large").await;
    h.assert_no_batch(b"too-large-2").await;
}

// ---------------------------------------------------------------------------------
// 3. Retrieval authorisation.

async fn unauthorised_retriever_is_refused(t: Transport) {
    let reader_manager = t.manager(ManagerConfig::default());
    let reader_key = reader_manager.identity().public_key();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let h = Harness::with(
        t,
        store,
        ServerConfig::default(),
        allow_all(),
        allow_only(reader_key),
    )
    .await;
    let size = 3 * u64::from(CHUNK) + 5;
    bounded(
        "send",
        h.sender().send(PrngReader::new(30, size), b"private", b"p"),
    )
    .await
    .unwrap();

    // The sender is not a retriever: refused as if the batch did not exist.
    let err = bounded("get", h.retriever().get(b"private"))
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    assert_eq!(err.kind(), ErrorKind::Refused);
    let err = h
        .server
        .retrieve(&h.client_key(), None, b"private")
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    assert_eq!(err.kind(), ErrorKind::Refused);
    // A missing batch looks the same to an authorised retriever.
    let reader_config = ClientConfig::new(h.endpoint.clone(), h.server_key());
    let retriever = Retriever::new(reader_manager, reader_config).unwrap();
    let err = bounded("get", retriever.get(b"absent")).await.unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    let err = h
        .server
        .retrieve(&reader_key, None, b"absent")
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");

    // The authorised key gets it, and the batch is still there.
    let (data, info) = bounded("get", retriever.get(b"private")).await.unwrap();
    check_info(&info, b"private", size, 4, h.client_key(), b"p");
    assert_content(data, 30, size).await;
    let (data, _) = h
        .server
        .retrieve(&reader_key, None, b"private")
        .await
        .unwrap();
    assert_content(data, 30, size).await;
}

// ---------------------------------------------------------------------------------
// 4. Restart with the embedded store.

async fn batch_survives_a_server_restart(t: Transport) {
    let dir = TempDir::new();
    let path = dir.path().join("store");
    // The last handle may be dropped on another thread, where the database's drop
    // (which releases its file lock) is still running when the count reaches zero:
    // like a new process after an old one, wait for the lock, and only for that.
    let open = |path: std::path::PathBuf| async move {
        bounded("opening the store", async {
            loop {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || FsStore::open(path))
                    .await
                    .unwrap()
                {
                    Ok(store) => return Arc::new(store),
                    Err(StoreError::Database(e)) if e.contains("already open") => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => panic!("opening the store failed: {e}"),
                }
            }
        })
        .await
    };
    let identity = Identity::generate();
    let size = 4 * u64::from(CHUNK) + 321;
    let metadata = b"survives";
    let client = t.manager(ManagerConfig::default());

    let store = open(path.clone()).await;
    let weak = Arc::downgrade(&store);
    let (server, endpoint, manager) = mft_server(
        &t,
        identity.clone(),
        store,
        ServerConfig::default(),
        allow_all(),
        allow_all(),
    )
    .await;
    let mut config = ClientConfig::new(endpoint, identity.public_key());
    config.chunk_size(CHUNK);
    let receipt = bounded(
        "send",
        Sender::new(client.clone(), config).unwrap().send(
            PrngReader::new(40, size),
            b"durable",
            metadata,
        ),
    )
    .await
    .unwrap();
    assert_eq!(receipt.size, size);

    // Stop everything holding the store, and wait until it is really closed.
    manager.close();
    for conn in client.connections() {
        conn.close();
    }
    drop(server);
    bounded("every handle on the store to be dropped", async {
        while weak.strong_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let store = open(path).await;
    let (server, endpoint, _manager) = mft_server(
        &t,
        identity.clone(),
        store.clone(),
        ServerConfig::default(),
        allow_all(),
        allow_all(),
    )
    .await;
    let record = store
        .batch(client.identity().public_key().as_bytes(), b"durable")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.receipt,
        Message::Receipt(receipt.clone()).to_bytes().unwrap()
    );
    let key = client.identity().public_key();
    let (data, info) = server.retrieve(&key, None, b"durable").await.unwrap();
    check_info(&info, b"durable", size, 5, key, metadata);
    assert_content(data, 40, size).await;
    let mut config = ClientConfig::new(endpoint, identity.public_key());
    config.chunk_size(CHUNK);
    // (The retriever, and with it the client manager, must outlive the reading.)
    let retriever = Retriever::new(client, config).unwrap();
    let (data, info) = bounded("get", retriever.get(b"durable")).await.unwrap();
    check_info(&info, b"durable", size, 5, key, metadata);
    assert_content(data, 40, size).await;
}

// ---------------------------------------------------------------------------------
// 6. Busy.

/// A server allowing one flow per key, answering extra ones busy (retry in 50 ms).
async fn busy_harness(t: Transport) -> Harness {
    let mut config = ServerConfig::default();
    config
        .max_flows_per_peer(1)
        .busy_retry_after(Duration::from_millis(50));
    Harness::new(t, config).await
}

/// Opens a transfer and a segment flow that stays open after its first segment,
/// taking the client key's one flow. The handshake flow's slot may not be free yet
/// when the segment flow starts: it tries again while the server says busy.
async fn hold_the_only_flow(raw: &Raw, batch_id: &[u8]) -> (RawTransfer, FlowReader, FlowWriter) {
    let tr = raw.open(batch_id, CHUNK).await;
    let segment = tr.segment(0, &data(50, CHUNK as usize));
    let (reader, writer) = bounded("a segment flow", async {
        loop {
            let (mut reader, mut writer) = raw.flow().await;
            send_segment(&mut writer, &segment).await;
            match recv(&mut reader).await {
                Some(Message::SegmentAck(_)) => break (reader, writer),
                Some(Message::Refuse(r)) if r.code == RefuseCode::Busy => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("expected SegmentAck or Busy, got {other:?}"),
            }
        }
    })
    .await;
    (tr, reader, writer)
}

async fn busy_server_refuses_extra_flows(t: Transport) {
    let h = busy_harness(t).await;
    let raw = h.raw();
    let (tr, mut held_reader, mut held_writer) = hold_the_only_flow(&raw, b"busy-1").await;

    // While it is open, any other flow of this key is refused as busy.
    let (mut reader, mut writer) = raw.flow().await;
    let resume = mft::wire::Resume {
        transfer_id: tr.secret.transfer_id,
    };
    let _ = writer
        .write_msg(&[&Message::Resume(resume).to_bytes().unwrap()])
        .await;
    match recv(&mut reader).await {
        Some(Message::Refuse(r)) => {
            assert_eq!(r.code, RefuseCode::Busy, "{r:?}");
            assert_eq!(r.retry_after_ms, 50);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_flow_ended(&mut reader).await;

    // Other keys are not affected.
    let other = h.t.manager(ManagerConfig::default());
    let mut other_config = h.config();
    other_config.retries(20).streams(1);
    bounded(
        "send",
        Sender::new(other.clone(), other_config).unwrap().send(
            PrngReader::new(52, 1000),
            b"busy-other",
            b"",
        ),
    )
    .await
    .unwrap();

    // Once the held flow ends, a sender that retries gets through (its own flows may
    // meet each other's slot still taken: busy, retried after 50 ms).
    held_writer.shutdown().await.unwrap();
    assert_flow_ended(&mut held_reader).await;
    drop((held_reader, held_writer));
    let mut config = h.config();
    config.retries(20).streams(1);
    let size = 3 * u64::from(CHUNK);
    let receipt = bounded(
        "send",
        Sender::new(h.client.clone(), config).unwrap().send(
            PrngReader::new(53, size),
            b"busy-2",
            b"",
        ),
    )
    .await
    .unwrap();
    assert_eq!(receipt.size, size);
    let (data, _) = h
        .server
        .retrieve(&h.client_key(), None, b"busy-2")
        .await
        .unwrap();
    assert_content(data, 53, size).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_refusal_reaches_the_client_over_quic() {
    init_tracing();
    busy_refusal_reaches_the_client(Transport::quic()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_refusal_reaches_the_client_over_mem() {
    init_tracing();
    busy_refusal_reaches_the_client(Transport::mem()).await;
}

/// A sender or retriever that may not retry reports the server's busy refusal, with
/// its delay, rather than whatever the refused flow did next. Tried repeatedly: the
/// server answers busy without reading, so the client's request races the answer.
async fn busy_refusal_reaches_the_client(t: Transport) {
    let h = busy_harness(t).await;
    let raw = h.raw();
    let (_tr, _held_reader, _held_writer) = hold_the_only_flow(&raw, b"busy-1").await;
    let mut config = h.config();
    config.retries(0);
    let sender = Sender::new(h.client.clone(), config.clone()).unwrap();
    let retriever = Retriever::new(h.client.clone(), config).unwrap();
    let mut wrong = Vec::new();
    for _ in 0..20 {
        let err = bounded(
            "send",
            sender.send(PrngReader::new(51, 1000), b"busy-2", b""),
        )
        .await
        .unwrap_err();
        if err.refuse_code() != Some(RefuseCode::Busy) {
            wrong.push(format!("send: {err}"));
        } else {
            assert_eq!(err.kind(), ErrorKind::Refused);
            assert!(err.is_retryable());
            assert!(matches!(
                err,
                mft::Error::Refused { retry_after: Some(d), .. } if d == Duration::from_millis(50)
            ));
        }
        let err = bounded("get", retriever.get(b"busy-1")).await.unwrap_err();
        if err.refuse_code() != Some(RefuseCode::Busy) {
            wrong.push(format!("get: {err}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 40 not busy: {wrong:#?}",
        wrong.len()
    );
    h.assert_no_batch(b"busy-2").await;
    assert!(
        h.store
            .find_transfer(*h.client_key().as_bytes(), b"busy-2")
            .await
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------
// 5. Resume after a connection loss.

/// 8 MiB in 256 KiB chunks; the input pauses after 8 chunks until the client's
/// connections have been closed, which happens once `close_after` segments are
/// acknowledged: the loss falls in the middle of the transfer however fast the
/// machine is. Returns the outcome and every event of the send.
async fn send_through_a_connection_loss(
    h: &Harness,
    config: ClientConfig,
    batch_id: &[u8],
    close_after: u64,
) -> (mft::Result<Receipt>, Vec<Event>) {
    let sender = Sender::new(h.client.clone(), config).unwrap();
    let mut rx = sender.subscribe();
    let (open_gate, gate) = oneshot::channel();
    let input = PrngReader::gated(60, RESUME_SIZE, 8 * u64::from(RESUME_CHUNK), gate);
    let client = h.client.clone();
    let watcher = tokio::spawn(async move {
        let mut open_gate = Some(open_gate);
        let mut events = Vec::new();
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if let Event::Progress { segments, .. } = event
                        && segments >= close_after
                        && let Some(gate) = open_gate.take()
                    {
                        let conns = client.connections();
                        assert!(!conns.is_empty());
                        for conn in conns {
                            conn.close();
                        }
                        let _ = gate.send(());
                    }
                    let end = matches!(event, Event::Completed { .. } | Event::Failed { .. });
                    events.push(event);
                    if end {
                        return events;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return events,
            }
        }
    });
    let outcome = bounded_for(
        Duration::from_secs(60),
        "send",
        sender.send(input, batch_id, b"r"),
    )
    .await;
    let events = bounded("events", watcher).await.unwrap();
    (outcome, events)
}

const RESUME_CHUNK: u32 = 256 << 10;
const RESUME_SIZE: u64 = 8 << 20;

async fn send_resumes_after_the_connection_is_lost(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let mut config = h.config();
    // Two streams: both have a flow on the connection when it is lost, and each
    // failure costs a retry attempt and a backoff (see the test below).
    config.chunk_size(RESUME_CHUNK).retries(10).streams(2);
    let (outcome, events) = send_through_a_connection_loss(&h, config, b"resumed", 4).await;
    let receipt = outcome.unwrap();
    assert_eq!(receipt.size, RESUME_SIZE);
    assert_eq!(receipt.segment_count, 32);
    // A worker that finds its connection closed before it writes opens a flow
    // on a new one without failing; one caught writing fails, retries and asks
    // what the server holds.
    let retried = events.iter().any(|e| matches!(e, Event::Retrying { .. }));
    let resumed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Resumed { stored } => Some(*stored),
            _ => None,
        })
        .collect();
    assert!(!retried || !resumed.is_empty(), "{events:?}");
    assert!(resumed.iter().all(|&s| s >= 4), "{resumed:?}");
    assert_eq!(
        events.last(),
        Some(&Event::Completed {
            size: RESUME_SIZE,
            segments: 32
        })
    );

    let (data, info) = h
        .server
        .retrieve(&h.client_key(), None, b"resumed")
        .await
        .unwrap();
    assert_eq!((info.size, info.segment_count), (RESUME_SIZE, 32));
    assert_content(data, 60, RESUME_SIZE).await;
    let (data, _) = bounded("get", h.retriever().get(b"resumed")).await.unwrap();
    assert_content(data, 60, RESUME_SIZE).await;
}

/// One lost connection under the default settings (8 streams, 5 retries), with every
/// stream holding a flow on it when it goes: the send must survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_loss_does_not_exhaust_the_default_retries() {
    init_tracing();
    let h = Harness::new(Transport::quic(), ServerConfig::default()).await;
    let mut config = h.config();
    config.chunk_size(RESUME_CHUNK);
    // Closed once all 8 gated segments are acknowledged: each of the 8 streams has
    // sent one of them (the queue is handed out in turn) over the lost connection.
    let (outcome, events) = send_through_a_connection_loss(&h, config, b"blip", 8).await;
    let retrying = events
        .iter()
        .filter(|e| matches!(e, Event::Retrying { .. }))
        .count();
    let receipt = outcome.unwrap_or_else(|e| {
        panic!("one connection loss failed the send after {retrying} retries: {e}")
    });
    assert_eq!(receipt.size, RESUME_SIZE);
    let (data, _) = h
        .server
        .retrieve(&h.client_key(), None, b"blip")
        .await
        .unwrap();
    assert_content(data, 60, RESUME_SIZE).await;
}

/// `send_with` hands the metadata function the size, segment count and SHA-256 of
/// exactly the bytes that streamed, and seals what it returns into the completion.
async fn deferred_metadata_carries_the_digest_of_the_data_sent(t: Transport) {
    use sha2::{Digest, Sha256};
    let h = Harness::new(t, ServerConfig::default()).await;
    let size = 5 * u64::from(CHUNK) + 777;
    let expected: [u8; 32] = Sha256::digest(data(31, size as usize)).into();
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen_by_fn = seen.clone();
    let receipt = bounded(
        "send",
        h.sender()
            .send_with(PrngReader::new(31, size), b"digest", move |content| {
                *seen_by_fn.lock().unwrap() = Some(content.clone());
                Ok(content.sha256.to_vec())
            }),
    )
    .await
    .unwrap();
    let content = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the metadata function ran");
    assert_eq!(
        (content.size, content.segments, content.sha256),
        (size, 6, expected)
    );
    h.check_receipt(&receipt, b"digest", size).await;
    h.check_retrieval(b"digest", 31, size, &expected).await;
}

/// A metadata function that fails (the input changed, say) stops the send before
/// completion: the error reaches the caller and no batch becomes visible.
async fn deferred_metadata_that_fails_abandons_the_batch(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let outcome = bounded(
        "send",
        h.sender().send_with(
            PrngReader::new(32, 3 * u64::from(CHUNK)),
            b"changed",
            |_| Err(mft::Error::InputChanged("test input".into())),
        ),
    )
    .await;
    let error = outcome.expect_err("the send must fail");
    assert_eq!(error.kind(), ErrorKind::Integrity, "{error}");
    assert!(error.to_string().contains("changed"), "{error}");
    assert!(h.stored(b"changed").await.is_none());
}

/// One segment flow keeping eight segments in flight, and one keeping a single
/// segment, both deliver every byte in order.
async fn one_flow_with_many_segments_in_flight_round_trips(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    for depth in [1, 8] {
        let mut config = h.config();
        config
            .chunk_size(CHUNK)
            .streams(1)
            .segments_in_flight(depth);
        let batch_id = format!("depth-{depth}").into_bytes();
        let size = 20 * u64::from(CHUNK) + 5;
        let sender = Sender::new(h.client.clone(), config).unwrap();
        let receipt = bounded(
            "send",
            sender.send(PrngReader::new(40 + depth as u64, size), &batch_id, b"m"),
        )
        .await
        .unwrap();
        h.check_receipt(&receipt, &batch_id, size).await;
        h.check_retrieval(&batch_id, 40 + depth as u64, size, b"m")
            .await;
    }
}
