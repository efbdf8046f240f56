//! The sans-IO protocol steps: a whole push handshake (both sides' key agreement,
//! signatures and key schedule) and the wire codec of the messages a transfer
//! sends most. `cargo bench --bench protocol`.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow::Identity;
use mft::handshake::{self, ClientHandshake, PushSecret};
use mft::wire::{
    BatchId, ChainHash, Codec, Complete, DataKey, Message, Segment, SegmentAck, Signature,
    TransferId,
};
use std::hint::black_box;

fn push_handshake(c: &mut Criterion) {
    let client = Identity::generate();
    let server = Identity::generate();
    let client_key = client.public_key();
    let server_key = server.public_key();
    let secret = PushSecret {
        transfer_id: TransferId([1; 16]),
        completion_id: [2; 32],
        data_key: DataKey::from_bytes([3; 32]),
        chunk_size: 1 << 20,
        max_metadata: 64 << 10,
        new_transfer: true,
        compression: mft::wire::Compression::None,
    };
    c.bench_function("push handshake (both sides)", |b| {
        b.iter(|| {
            let (pending, hello) = ClientHandshake::push(
                &client,
                &BatchId::new(&b"batch"[..]).expect("id"),
                1 << 20,
                b"",
            )
            .expect("hello");
            let hello_hash = handshake::check_hello(&hello, &client_key).expect("valid hello");
            let accept =
                handshake::accept_push(&server, &hello, &hello_hash, &secret).expect("accepts");
            black_box(pending.finish_push(&accept, &server_key).expect("finishes"))
        })
    });
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [64usize << 10, 1 << 20] {
        let segment = Message::Segment(Segment {
            transfer_id: TransferId([4; 16]),
            index: 42,
            ciphertext: Bytes::from(vec![0u8; size + 16]),
            signature: Signature([5; 64]),
        });
        let encoded = Bytes::from(segment.to_bytes().expect("encodes"));
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::new("decode segment", size), &size, |b, _| {
            b.iter(|| black_box(Message::from_bytes(encoded.clone()).expect("decodes")))
        });
        group.bench_with_input(BenchmarkId::new("encode segment", size), &size, |b, _| {
            b.iter(|| black_box(segment.to_bytes().expect("encodes")))
        });
    }
    group.throughput(Throughput::Elements(1));
    let ack = Message::SegmentAck(SegmentAck { index: 7 });
    let ack_bytes = Bytes::from(ack.to_bytes().expect("encodes"));
    group.bench_function("segment ack round trip", |b| {
        b.iter(|| {
            black_box(
                Message::from_bytes(Bytes::from(ack.to_bytes().expect("encodes")))
                    .expect("decodes"),
            )
        })
    });
    group.bench_function("decode segment ack", |b| {
        b.iter(|| black_box(Message::from_bytes(ack_bytes.clone()).expect("decodes")))
    });
    let complete = Message::Complete(Complete {
        transfer_id: TransferId([4; 16]),
        segment_count: 1024,
        size: 1 << 30,
        completion_id: [6; 32],
        chain: ChainHash([7; 64]),
        sealed_metadata: Bytes::from(vec![0u8; 256]),
        content_digest: [9; 32],
        replace: false,
        signature: Signature([8; 64]),
    });
    let complete_bytes = Bytes::from(complete.to_bytes().expect("encodes"));
    group.bench_function("decode complete", |b| {
        b.iter(|| black_box(Message::from_bytes(complete_bytes.clone()).expect("decodes")))
    });
    group.finish();
}

criterion_group!(benches, push_handshake, codec);
criterion_main!(benches);
