//! The per-segment work of a transfer, without any I/O: sealing and opening a
//! segment with each AES-256-GCM backend, signing and verifying it, chaining it,
//! and hashing the plaintext for the content digest; for 64 KiB, 1 MiB and 4 MiB
//! segments. `cargo bench --bench crypto`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow::Identity;
use mft::crypto::{self, AesGcm, Chain, RingAesGcm, SegmentCipher};
use mft::wire::{Segment, Signed, Tag, TransferId};
use std::hint::black_box;

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 4 << 20];
const TRANSFER: TransferId = TransferId([7; 16]);

fn seal_and_open(c: &mut Criterion) {
    let backends: [(&str, Box<dyn SegmentCipher>); 2] = [
        ("ring", Box::new(RingAesGcm::new(&[3; 32]))),
        ("aes-gcm", Box::new(AesGcm::new(&[3; 32]))),
    ];
    let mut seal = c.benchmark_group("seal segment");
    for size in SIZES {
        seal.throughput(Throughput::Bytes(size as u64));
        for (name, cipher) in &backends {
            let mut buf = vec![0x5au8; size];
            seal.bench_with_input(BenchmarkId::new(*name, size), &size, |b, _| {
                b.iter(|| {
                    let tag = cipher.seal_in_place(
                        &crypto::segment_nonce(1),
                        &crypto::segment_aad(&TRANSFER, 1),
                        &mut buf,
                    );
                    black_box(tag)
                })
            });
        }
    }
    seal.finish();

    let mut open = c.benchmark_group("open segment");
    for size in SIZES {
        open.throughput(Throughput::Bytes(size as u64));
        let mut sealed = vec![0x5au8; size];
        let tag = crypto::seal_segment(&RingAesGcm::new(&[3; 32]), &TRANSFER, 1, &mut sealed);
        for (name, cipher) in &backends {
            // Opening decrypts in place, so each iteration starts from a fresh copy,
            // as the server does with its scratch buffer.
            let mut scratch = Vec::with_capacity(sealed.len());
            open.bench_with_input(BenchmarkId::new(*name, size), &size, |b, _| {
                b.iter(|| {
                    scratch.clear();
                    scratch.extend_from_slice(&sealed[..size]);
                    let ok = cipher.open_in_place(
                        &crypto::segment_nonce(1),
                        &crypto::segment_aad(&TRANSFER, 1),
                        &mut scratch,
                        &tag.0,
                    );
                    black_box(ok.is_ok())
                })
            });
        }
    }
    open.finish();
}

fn sign_and_chain(c: &mut Criterion) {
    let identity = Identity::generate();
    let key = *identity.public_key().as_bytes();
    let tag = Tag([9u8; 16]);
    let signed = Segment::signed_parts(&TRANSFER, 1, 1 << 20, &tag);
    let context = <Segment as Signed>::CONTEXT;
    let signature = crypto::sign(&identity, context, &[&signed]);
    let mut group = c.benchmark_group("per segment");
    group.bench_function("sign", |b| {
        b.iter(|| black_box(crypto::sign(&identity, context, &[&signed])))
    });
    group.bench_function("verify", |b| {
        b.iter(|| black_box(crypto::verify(&key, context, &[&signed], &signature)))
    });
    let mut chain = Chain::new(&TRANSFER, b"batch");
    group.bench_function("chain", |b| b.iter(|| chain.push(black_box(1 << 20), &tag)));
    group.finish();
}

fn content_digest(c: &mut Criterion) {
    use sha2::Digest;
    let mut group = c.benchmark_group("sha256 of a segment");
    for size in SIZES {
        let data = vec![0x33u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            b.iter(|| black_box(ring::digest::digest(&ring::digest::SHA256, &data)))
        });
        group.bench_with_input(BenchmarkId::new("sha2", size), &size, |b, _| {
            b.iter(|| black_box(sha2::Sha256::digest(&data)))
        });
    }
    group.finish();
}

criterion_group!(benches, seal_and_open, sign_and_chain, content_digest);
criterion_main!(benches);
