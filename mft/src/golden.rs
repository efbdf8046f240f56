//! Golden vectors: the exact bytes of every message, handshake secret and store
//! record, made from fixed keys and nonces and compared with `golden_vectors.txt`.
//!
//! The vectors are one whole push and pull, built the way the client and server
//! build them, so a change to any encoding, label, key schedule or signed body shows
//! up here as a named difference. A change that is meant (a new protocol version)
//! rewrites the file with `MFTQ_BLESS=1 cargo test -p mftq-mft golden`, and
//! `docs/PROTOCOL.md` says what changed. Another implementation can check itself
//! against the same file.

use bytes::Bytes;
use flow::Identity;

use crate::crypto::{self, Chain, Cipher, Ephemeral};
use crate::handshake::{self, ClientHandshake, PullSecret, PushSecret};
use crate::store::fs::{encode_batch, encode_transfer};
use crate::store::{BatchRecord, TransferId, TransferRecord};
use crate::wire::{
    Abort, Aborted, BatchId, ByteRange, Codec, Complete, Compression, Confirm, DataKey, Delete,
    Deleted, List, ListOpen, Listing, ListingEntry, Message, OpenEntry, OpenTransfers, Pause,
    PauseNoted, Position, PullSegment, Receipt, Refuse, RefuseCode, Resume, Segment, SegmentAck,
    Signature, Signed, Stored,
};

const FILE: &str = "golden_vectors.txt";

/// A named run of bytes.
struct Vectors(Vec<(&'static str, Vec<u8>)>);

impl Vectors {
    fn add(&mut self, name: &'static str, bytes: impl AsRef<[u8]>) {
        self.0.push((name, bytes.as_ref().to_vec()));
    }

    fn render(&self) -> String {
        let mut out = format!(
            "# mftq protocol version {}: golden vectors (see mft/src/golden.rs for the inputs)\n",
            crate::wire::VERSION
        );
        for (name, bytes) in &self.0 {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("{name} {hex}\n"));
        }
        out
    }
}

fn identity(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32]).expect("a fixed seed is a valid key")
}

/// Every vector, from fixed inputs.
fn vectors() -> Vectors {
    let mut v = Vectors(Vec::new());
    let sender = identity(1);
    let server = identity(2);
    let batch_id: &[u8] = b"reports/2026-12.csv";
    let batch = BatchId::new(batch_id).expect("a batch id");
    let chunk_size = 4096;

    // The push handshake.
    let (client, hello) = ClientHandshake::push_with(
        &sender,
        &batch,
        chunk_size,
        b"voucher",
        Compression::Zstd,
        Ephemeral::from_secret([3; 32]),
    )
    .expect("the hello encodes");
    v.add(
        "hello",
        Message::Hello(hello.clone())
            .to_bytes()
            .expect("a vector encodes"),
    );
    let push = PushSecret {
        transfer_id: TransferId([0x11; 16]),
        completion_id: [0x22; 32],
        data_key: DataKey::from_bytes([0x33; 32]),
        chunk_size,
        max_metadata: 64 << 10,
        new_transfer: true,
        compression: Compression::Zstd,
    };
    let hello_hash =
        handshake::check_hello(&hello, &sender.public_key()).expect("the hello checks");
    let accept = handshake::accept_push_with(
        &server,
        &hello,
        &hello_hash,
        &push,
        Ephemeral::from_secret([4; 32]),
    )
    .expect("a fixed key agrees");
    v.add(
        "accept",
        Message::Accept(accept.clone())
            .to_bytes()
            .expect("a vector encodes"),
    );
    let opened = client
        .finish_push(&accept, &server.public_key())
        .expect("the client opens its own accept");
    assert_eq!(
        opened, push,
        "the push secret round-trips through the accept"
    );

    // Two segments: a full chunk and a short last one.
    let cipher = Cipher::new(push.data_key.expose());
    let mut chain = Chain::new(&push.transfer_id, batch_id);
    let mut size = 0u64;
    for (index, len) in [(0u64, chunk_size as usize), (1, 10)] {
        let mut buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        size += len as u64;
        let tag = crypto::seal_segment(&cipher, &push.transfer_id, index, &mut buf);
        let wire_len = buf.len() as u32;
        chain.push(wire_len, &tag);
        let signature = Segment::sign_parts(&sender, &push.transfer_id, index, wire_len, &tag);
        let segment = Segment {
            transfer_id: push.transfer_id,
            index,
            ciphertext: Bytes::from(buf),
            signature,
        };
        v.add(
            if index == 0 { "segment-0" } else { "segment-1" },
            Message::Segment(segment)
                .to_bytes()
                .expect("a vector encodes"),
        );
    }
    v.add(
        "segment-ack",
        Message::SegmentAck(SegmentAck { index: 1 })
            .to_bytes()
            .expect("a vector encodes"),
    );
    v.add(
        "resume",
        Message::Resume(Resume {
            transfer_id: push.transfer_id,
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "stored",
        Message::Stored(Stored::from_indices([0, 1, 2, 7]))
            .to_bytes()
            .expect("a vector encodes"),
    );

    // Completion and receipt.
    let sealed_metadata = crypto::seal(
        &cipher,
        &crypto::METADATA_NONCE,
        &crypto::metadata_aad(&push.transfer_id),
        br#"{"name":"2026-12.csv"}"#,
    );
    let mut complete = Complete {
        transfer_id: push.transfer_id,
        segment_count: 2,
        size,
        completion_id: push.completion_id,
        chain: chain.value(),
        sealed_metadata: Bytes::from(sealed_metadata.clone()),
        content_digest: [0x55; 32],
        replace: false,
        signature: Signature([0; 64]),
    };
    complete.sign(&sender).expect("the completion encodes");
    v.add(
        "complete",
        Message::Complete(complete)
            .to_bytes()
            .expect("a vector encodes"),
    );
    let mut receipt = Receipt {
        batch_id: batch.clone(),
        transfer_id: push.transfer_id,
        sender: *sender.public_key().as_bytes(),
        segment_count: 2,
        size,
        chain: chain.value(),
        content_digest: [0x55; 32],
        completed_unix: 1_796_083_200,
        server: *server.public_key().as_bytes(),
        signature: Signature([0; 64]),
    };
    receipt.sign(&server).expect("the receipt encodes");
    let receipt_bytes = Message::Receipt(receipt)
        .to_bytes()
        .expect("a vector encodes");
    v.add("receipt", &receipt_bytes);

    // The pull handshake of the second segment's bytes, and that segment.
    let retriever = identity(5);
    let (client, pull_hello) = ClientHandshake::pull_with(
        &retriever,
        None,
        &batch,
        b"",
        ByteRange::new(u64::from(chunk_size), size),
        Ephemeral::from_secret([6; 32]),
    )
    .expect("the pull hello encodes");
    v.add(
        "pull-hello",
        Message::PullHello(pull_hello.clone())
            .to_bytes()
            .expect("a vector encodes"),
    );
    let pull = PullSecret {
        transfer_id: push.transfer_id,
        data_key: push.data_key.clone(),
        chunk_size,
        segment_count: 2,
        size,
        chain: chain.value(),
        sender: *sender.public_key().as_bytes(),
        compression: Compression::Zstd,
        sealed_metadata: sealed_metadata.clone(),
    };
    let pull_hash = handshake::check_pull_hello(&pull_hello, &retriever.public_key())
        .expect("the pull hello checks");
    let pull_accept = handshake::accept_pull_with(
        &server,
        &pull_hello,
        &pull_hash,
        &pull,
        Ephemeral::from_secret([7; 32]),
    )
    .expect("a fixed key agrees");
    v.add(
        "pull-accept",
        Message::PullAccept(pull_accept.clone())
            .to_bytes()
            .expect("a vector encodes"),
    );
    assert_eq!(
        client
            .finish_pull(&pull_accept, &server.public_key())
            .expect("the client opens its own pull accept"),
        pull
    );
    v.add(
        "pull-segment",
        Message::PullSegment(PullSegment {
            index: 1,
            ciphertext: Bytes::from_static(&[0xab; 26]),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );

    // Listing and refusal.
    v.add(
        "list",
        Message::List(List {
            owner: None,
            after: Some(Position {
                owner: [0x5e; 32],
                batch_id: BatchId::new(b"reports/".to_vec()).expect("a valid batch id"),
            }),
            limit: 100,
            voucher: Bytes::from_static(b"voucher"),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "listing",
        Message::Listing(Listing {
            entries: vec![ListingEntry {
                batch_id: batch.clone(),
                size,
                segment_count: 2,
                sender: *sender.public_key().as_bytes(),
                completed_unix: 1_796_083_200,
                metadata: Bytes::from_static(br#"{"name":"2026-12.csv"}"#),
            }],
            more: true,
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    // Managing open transfers.
    v.add(
        "list-open",
        Message::ListOpen(ListOpen)
            .to_bytes()
            .expect("a vector encodes"),
    );
    v.add(
        "open-transfers",
        Message::OpenTransfers(OpenTransfers {
            entries: vec![OpenEntry {
                transfer_id: TransferId([0x11; 16]),
                batch_id: BatchId::new(b"reports/2026-12.csv".to_vec()).expect("a valid batch id"),
                created_unix: 1_800_000_000,
                deadline_unix: 1_800_086_400,
                stored_segments: 1,
                stored_bytes: 4106,
            }],
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "abort",
        Message::Abort(Abort {
            transfer_id: TransferId([0x11; 16]),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "aborted",
        Message::Aborted(Aborted {
            transfer_id: TransferId([0x11; 16]),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "pause",
        Message::Pause(Pause {
            transfer_id: TransferId([0x11; 16]),
            paused: true,
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "pause-noted",
        Message::PauseNoted(PauseNoted {
            transfer_id: TransferId([0x11; 16]),
            paused: true,
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    // Managing stored batches.
    v.add(
        "confirm",
        Message::Confirm(Confirm {
            batch_id: batch.clone(),
            size,
            content_digest: [0x55; 32],
            voucher: Bytes::from_static(b"voucher"),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "delete",
        Message::Delete(Delete {
            owner: Some(*sender.public_key().as_bytes()),
            batch_id: batch.clone(),
            voucher: Bytes::new(),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "deleted",
        Message::Deleted(Deleted {
            owner: *sender.public_key().as_bytes(),
            batch_id: batch.clone(),
            size,
        })
        .to_bytes()
        .expect("a vector encodes"),
    );
    v.add(
        "refuse",
        Message::Refuse(Refuse {
            code: RefuseCode::Busy,
            retry_after_ms: 1000,
            message: "too many open transfers for this key".into(),
        })
        .to_bytes()
        .expect("a vector encodes"),
    );

    // What the store keeps.
    let transfer = push.transfer_id;
    v.add(
        "secret-at-rest",
        crate::server::seal_secret_at_rest(
            &Cipher::new(&crypto::at_rest_key(&server)),
            &transfer,
            &push,
            &[0x44; 12],
        ),
    );
    v.add(
        "transfer-record",
        encode_transfer(&TransferRecord {
            transfer,
            batch_id: batch_id.to_vec(),
            sender: *sender.public_key().as_bytes(),
            chunk_size,
            created_unix: 1_796_000_000,
            deadline_unix: 1_796_086_400,
            compression: Compression::Zstd,
        })
        .expect("a record within its limits encodes"),
    );
    v.add(
        "batch-record",
        encode_batch(&BatchRecord {
            batch_id: batch_id.to_vec(),
            transfer,
            sender: *sender.public_key().as_bytes(),
            chunk_size,
            segment_count: 2,
            size,
            sealed_metadata,
            chain: chain.value(),
            completed_unix: 1_796_083_200,
            content_digest: [0x55; 32],
            receipt: receipt_bytes,
            compression: Compression::Zstd,
        })
        .expect("a record within its limits encodes"),
    );
    v
}

#[test]
fn every_message_and_record_keeps_its_exact_bytes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(FILE);
    let rendered = vectors().render();
    if std::env::var_os("MFTQ_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("write the golden vectors");
        return;
    }
    let pinned = include_str!("golden_vectors.txt");
    let lines = |s: &str| -> Vec<(String, String)> {
        s.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, hex) = l.split_once(' ').unwrap_or((l, ""));
                (name.to_string(), hex.to_string())
            })
            .collect()
    };
    let (want, got) = (lines(pinned), lines(&rendered));
    for ((wname, whex), (gname, ghex)) in want.iter().zip(&got) {
        assert_eq!(wname, gname, "the vectors are in a different order");
        assert!(
            whex == ghex,
            "the bytes of `{wname}` changed:\n pinned {whex}\n now    {ghex}\n\
             A deliberate change is a new protocol version: rewrite {FILE} with \
             MFTQ_BLESS=1 and say what changed in docs/PROTOCOL.md."
        );
    }
    assert_eq!(want.len(), got.len(), "vectors were added or removed");
}
