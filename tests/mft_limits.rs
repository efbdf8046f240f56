//! What a stalled or greedy client costs the mft server (RELIABILITY.md promise
//! 5): a flow is judged from its length prefix before its payload is read, memory
//! for a segment is reserved before its body is buffered, and only the start of a
//! first message is timed, so honest senders on slow links are not cut off.

#[macro_use]
mod common;

use std::time::Duration;

use common::mft_harness::*;
use common::{Transport, bounded, init_tracing};
use flow::FlowWriter;
use mft::ServerConfig;
use mft::wire::{Codec, Message, RefuseCode, Segment};
use tokio::io::AsyncWriteExt;

on_every_transport!(
    a_slow_first_segment_is_not_cut_off,
    a_busy_refusal_comes_from_the_length_prefix_alone,
    quotas_bound_what_a_key_holds,
    the_door_refuses_keys_the_policy_does_not_admit,
);

/// A segment as it goes on the wire: its length prefix, then its message.
fn framed(segment: &Segment) -> Vec<u8> {
    let message = Message::Segment(segment.clone()).to_bytes().unwrap();
    let mut frame = (message.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    frame
}

/// Writes `bytes` and pushes them out.
async fn write_now(writer: &mut FlowWriter, bytes: &[u8]) {
    writer.write_all(bytes).await.unwrap();
    writer.flush().await.unwrap();
}

/// Regression (issue 10): the first-message timeout covered the whole first
/// message, so a big first segment on a slow link was cut off. It now covers only
/// the length prefix; the body is read under the flow's idle timeout.
async fn a_slow_first_segment_is_not_cut_off(t: Transport) {
    let mut config = ServerConfig::default();
    config.first_message_timeout(Duration::from_millis(300));
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    let tr = raw.open(b"slow-link", CHUNK).await;
    let frame = framed(&tr.segment(0, &data(7, CHUNK as usize)));
    let (mut reader, mut writer) = raw.flow().await;
    // A steady trickle that takes twice the first-message timeout in all.
    let pieces = frame.chunks(frame.len() / 6 + 1).collect::<Vec<_>>();
    for piece in pieces {
        write_now(&mut writer, piece).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match recv(&mut reader).await {
        Some(Message::SegmentAck(ack)) => assert_eq!(ack.index, 0),
        other => panic!("expected SegmentAck, got {other:?}"),
    }
}

/// Regression (issue 10): a flow refused as busy was read up to one whole
/// segment first. The refusal now comes from the length prefix alone.
async fn a_busy_refusal_comes_from_the_length_prefix_alone(t: Transport) {
    let mut config = ServerConfig::default();
    config.max_flows_per_peer(1);
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    let tr = raw.open(b"busy-prefix", CHUNK).await;
    let frame = framed(&tr.segment(0, &data(8, CHUNK as usize)));
    // Take the key's one flow: announce a segment and send part of it.
    let (_held_reader, mut held) = bounded("a held flow", async {
        loop {
            let (mut reader, mut writer) = raw.flow().await;
            write_now(&mut writer, &frame[..100]).await;
            // The handshake's flow may still hold the slot: then this one is busy.
            match tokio::time::timeout(Duration::from_millis(300), recv(&mut reader)).await {
                Err(_) => break (reader, writer),
                Ok(Some(Message::Refuse(r))) if r.code == RefuseCode::Busy => continue,
                Ok(other) => panic!("expected silence or Busy, got {other:?}"),
            }
        }
    })
    .await;
    // Another flow sends only a length prefix: the refusal must not wait for the
    // body (nor for the first-message timeout).
    let (mut reader, mut writer) = raw.flow().await;
    write_now(&mut writer, &frame[..4]).await;
    let answer = tokio::time::timeout(Duration::from_secs(3), recv(&mut reader))
        .await
        .expect("refused from the length prefix, without waiting for the body");
    match answer {
        Some(Message::Refuse(r)) => assert_eq!(r.code, RefuseCode::Busy, "{r:?}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    let _ = held.shutdown().await;
}

/// The pending-bytes budget is taken from a segment's length prefix, before its
/// body is read: with the budget held by a stalled flow, the next segment's
/// bytes stay with the sender (its write cannot finish through the `mem`
/// protocol's 256 KiB of buffering) until the stalled flow ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bytes_are_reserved_before_a_body_is_read() {
    init_tracing();
    const BIG: u32 = 1 << 20;
    let mut config = ServerConfig::default();
    config
        .max_chunk_size(BIG)
        .unwrap()
        .max_pending_bytes(BIG as usize + 4096);
    let h = Harness::new(Transport::mem(), config).await;
    let raw = h.raw();
    let tr = raw.open(b"budget", BIG).await;
    let first = framed(&tr.segment(0, &data(9, BIG as usize)));
    let second = framed(&tr.segment(1, &data(10, BIG as usize)));

    // Flow A announces a whole segment, sends a little of it, and stalls: it
    // holds the whole budget.
    let (_a_reader, mut a) = raw.flow().await;
    write_now(&mut a, &first[..100]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Flow B sends a whole segment: its body is not read while A holds the budget.
    let (mut b_reader, mut b) = raw.flow().await;
    let written = tokio::spawn(async move {
        write_now(&mut b, &second).await;
        b
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !written.is_finished(),
        "the server read a segment's body without holding memory for it"
    );
    // A goes away: its share comes back, and B is read, stored and acknowledged.
    a.shutdown().await.unwrap();
    drop(a);
    let _b = bounded("B's write", written).await.unwrap();
    match bounded("B's ack", recv(&mut b_reader)).await {
        Some(Message::SegmentAck(ack)) => assert_eq!(ack.index, 1),
        other => panic!("expected SegmentAck, got {other:?}"),
    }
}

/// A flow that stalls inside a message is dropped after the flow idle timeout,
/// and its slot comes back: the key's next flow is served, not refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_flow_is_dropped_and_its_slot_freed() {
    init_tracing();
    let mut config = ServerConfig::default();
    config
        .max_flows_per_peer(1)
        .flow_idle_timeout(Duration::from_millis(300));
    let h = Harness::new(Transport::quic(), config).await;
    let raw = h.raw();
    let tr = raw.open(b"stalled", CHUNK).await;
    let frame = framed(&tr.segment(0, &data(11, CHUNK as usize)));
    // The handshake's flow may hold the slot for a moment after its answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut stalled_reader, mut stalled) = raw.flow().await;
    write_now(&mut stalled, &frame[..100]).await;
    assert_flow_ended(&mut stalled_reader).await;
    // The slot is free again: a whole segment on a new flow is acknowledged.
    raw.send_ok(&[tr.segment(0, &data(11, CHUNK as usize))])
        .await;
    drop(stalled);
}

/// A retriever that stops reading is cut off after the flow idle timeout: the
/// server's writes do not wait for ever, holding the batch's buffers. (A
/// retriever allowed to retry then pulls the rest on a new flow.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriever_that_stops_reading_is_cut_off() {
    init_tracing();
    let mut config = ServerConfig::default();
    config.flow_idle_timeout(Duration::from_millis(300));
    let h = Harness::new(Transport::mem(), config).await;
    let size = 16 << 20;
    bounded(
        "send",
        h.sender().send(PrngReader::new(12, size), b"unread", b""),
    )
    .await
    .unwrap();
    let stall = |retries: u32| {
        let mut client = h.config();
        client.retries(retries);
        let retriever = mft::Retriever::new(h.client.clone(), client).unwrap();
        async move {
            let (mut data, _info) = bounded("get", retriever.get(b"unread")).await.unwrap();
            // Read nothing for longer than the idle timeout.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut sink = Vec::new();
            let read = bounded(
                "reading what is left",
                tokio::io::AsyncReadExt::read_to_end(&mut data, &mut sink),
            )
            .await;
            (read, sink)
        }
    };
    let (read, sink) = stall(0).await;
    assert!(
        read.is_err(),
        "a stalled retrieval must be cut off, not completed ({} bytes read)",
        sink.len()
    );
    let (read, sink) = stall(3).await;
    assert!(read.is_ok(), "{read:?}");
    assert_content(&sink[..], 12, size).await;
}

/// Regression (issue 10): a key could hold 16 open transfers of 2²⁴ segments
/// each for 24 h. Its open transfers, and all it holds, are now bounded in bytes;
/// the refusal leaves what is stored as it was, and other keys are unaffected.
async fn quotas_bound_what_a_key_holds(t: Transport) {
    // One chunk's ciphertext is CHUNK + 16 bytes: room for two open, three in all.
    let segment = u64::from(CHUNK) + 16;
    let mut config = ServerConfig::default();
    config
        .max_open_bytes_per_peer(2 * segment)
        .max_bytes_per_peer(3 * segment);
    let h = Harness::new(t, config).await;
    let raw = h.raw();
    let a = raw.open(b"quota-a", CHUNK).await;
    let b = raw.open(b"quota-b", CHUNK).await;
    let chunk = |n: u64| data(20 + n, CHUNK as usize);
    raw.send_ok(&[a.segment(0, &chunk(0))]).await;
    raw.send_ok(&[b.segment(0, &chunk(1))]).await;
    let over = raw
        .send_refused(&[a.segment(1, &chunk(2))], RefuseCode::QuotaExceeded)
        .await;
    assert!(over.message.contains("open transfers"), "{over:?}");
    assert_eq!(h.store.segments(a.id()).await.unwrap().len(), 1);
    // Another key is not affected.
    let other = mft::Sender::new(h.t.manager(flow::ManagerConfig::default()), h.config()).unwrap();
    bounded(
        "other key's send",
        other.send(&b"elsewhere"[..], b"other", b""),
    )
    .await
    .unwrap();

    // Aborting one frees its share; a completed batch counts against the total.
    h.sender().abort(b.id()).await.unwrap();
    raw.send_ok(&[a.segment(1, &chunk(2))]).await;
    let sent = [a.segment(0, &chunk(0)), a.segment(1, &chunk(2))];
    let receipt = raw
        .complete(&a.honest_completion(&sent, 2 * CHUNK as usize, b""))
        .await
        .unwrap();
    assert_eq!(receipt.segment_count, 2);
    let c = raw.open(b"quota-c", CHUNK).await;
    raw.send_ok(&[c.segment(0, &chunk(3))]).await;
    let full = raw
        .send_refused(&[c.segment(1, &chunk(4))], RefuseCode::QuotaExceeded)
        .await;
    assert!(full.message.contains("holds"), "{full:?}");
    // An honest sender gives up at once: retrying cannot help.
    let err = bounded(
        "a send over quota",
        h.sender()
            .send(PrngReader::new(5, 3 * u64::from(CHUNK)), b"too-much", b""),
    )
    .await
    .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::QuotaExceeded), "{err}");
}

/// A policy that admits one key at the door and lets it do anything.
struct OnlyAlice(flow::PeerKey);

impl mft::Authorize for OnlyAlice {
    fn authorize(&self, request: &mft::Request<'_>) -> bool {
        *request.key == self.0
    }

    fn admits(&self, key: &flow::PeerKey) -> bool {
        *key == self.0
    }
}

/// Trust at the door for library users: with `Server::door` as the manager's
/// accept authoriser, a key the policy does not admit is refused in the TLS
/// handshake (an authentication failure, not a protocol refusal).
async fn the_door_refuses_keys_the_policy_does_not_admit(t: Transport) {
    let alice = t.manager(flow::ManagerConfig::default());
    let bob = t.manager(flow::ManagerConfig::default());
    let identity = flow::Identity::generate();
    let server = mft::Server::builder(
        identity.clone(),
        std::sync::Arc::new(mft::store::MemoryStore::new()),
    )
    .authorize(OnlyAlice(alice.identity().public_key()))
    .build();
    let mut config = flow::ManagerConfig::default();
    config.accept_authorizer(server.door());
    let manager = t.manager_as(identity, config);
    let endpoint = manager
        .listen(t.name(), &t.listen_address())
        .await
        .unwrap()
        .endpoint()
        .clone();
    tokio::spawn({
        let (server, manager) = (server.clone(), manager.clone());
        async move { server.serve(manager).await }
    });
    let mut client = mft::ClientConfig::new(endpoint, server.identity().public_key());
    client.retries(0);
    let send = |who: flow::Manager| {
        let sender = mft::Sender::new(who, client.clone()).unwrap();
        async move { sender.send(&b"at the door"[..], b"door", b"").await }
    };
    let refused = bounded("bob's send", send(bob)).await.unwrap_err();
    assert_eq!(refused.kind(), mft::ErrorKind::Auth, "{refused}");
    assert_eq!(
        refused.refuse_code(),
        None,
        "refused before the protocol: {refused}"
    );
    bounded("alice's send", send(alice)).await.unwrap();
}
