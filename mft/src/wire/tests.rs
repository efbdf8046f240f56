//! The codec's properties over every message.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A fixed-size value made of random bytes: a key, an id, a signature, a hash.
trait Fixed: Sized + std::fmt::Debug {
    const LEN: usize;
    fn from_slice(bytes: &[u8]) -> Self;
}

macro_rules! fixed {
    ($($t:ty = $len:literal, $make:expr;)*) => {
        $(impl Fixed for $t {
            const LEN: usize = $len;
            fn from_slice(bytes: &[u8]) -> Self {
                let mut a = [0u8; $len];
                a.copy_from_slice(bytes);
                ($make)(a)
            }
        })*
    };
}

fixed! {
    [u8; 32] = 32, |a| a;
    TransferId = 16, TransferId;
    Signature = 64, Signature;
    ChainHash = 64, ChainHash;
}

fn array<T: Fixed>() -> impl Strategy<Value = T> {
    proptest::collection::vec(any::<u8>(), T::LEN).prop_map(|v| T::from_slice(&v))
}

fn batch_id(max: usize) -> impl Strategy<Value = BatchId> {
    proptest::collection::vec(any::<u8>(), 1..=max).prop_map(|v| BatchId::new(v).unwrap())
}

/// Known codes and unknown ones, which must survive a round trip too.
fn code() -> impl Strategy<Value = RefuseCode> {
    any::<u16>().prop_map(RefuseCode::from_u16)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            batch_id(MAX_BATCH_ID),
            array(),
            array(),
            any::<u32>(),
            bytes(64),
            array(),
            any::<bool>()
        )
            .prop_map(
                |(batch_id, client_ephemeral, sender, chunk_size, voucher, signature, zstd)| {
                    Message::Hello(Hello {
                        batch_id,
                        client_ephemeral,
                        sender,
                        chunk_size,
                        voucher,
                        replace: false,
                        compression: if zstd {
                            Compression::Zstd
                        } else {
                            Compression::None
                        },
                        signature,
                    })
                }
            ),
        (array(), array(), bytes(200), array()).prop_map(
            |(server_ephemeral, server, sealed, signature)| {
                Message::Accept(Accept {
                    server_ephemeral,
                    server,
                    sealed,
                    signature,
                })
            }
        ),
        (array(), array(), bytes(200), array()).prop_map(
            |(server_ephemeral, server, sealed, signature)| {
                Message::PullAccept(Accept {
                    server_ephemeral,
                    server,
                    sealed,
                    signature,
                })
            }
        ),
        (
            array(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), TAG_LEN..300),
            array()
        )
            .prop_map(|(transfer_id, index, ct, signature)| {
                Message::Segment(Segment {
                    transfer_id,
                    index,
                    ciphertext: Bytes::from(ct),
                    signature,
                })
            }),
        any::<u64>().prop_map(|index| Message::SegmentAck(SegmentAck { index })),
        (
            array(),
            any::<u64>(),
            any::<u64>(),
            array(),
            array(),
            bytes(100),
            array()
        )
            .prop_map(
                |(
                    transfer_id,
                    segment_count,
                    size,
                    completion_id,
                    chain,
                    sealed_metadata,
                    signature,
                )| {
                    Message::Complete(Complete {
                        transfer_id,
                        segment_count,
                        size,
                        completion_id,
                        chain,
                        sealed_metadata,
                        content_digest: [0; 32],
                        replace: false,
                        signature,
                    })
                }
            ),
        (
            batch_id(MAX_BATCH_ID),
            array(),
            array(),
            any::<u64>(),
            any::<u64>(),
            array(),
            any::<u64>(),
            array(),
            array()
        )
            .prop_map(
                |(
                    batch_id,
                    transfer_id,
                    sender,
                    segment_count,
                    size,
                    chain,
                    completed_unix,
                    server,
                    signature,
                )| {
                    Message::Receipt(Receipt {
                        batch_id,
                        transfer_id,
                        sender,
                        segment_count,
                        size,
                        chain,
                        content_digest: [0; 32],
                        completed_unix,
                        server,
                        signature,
                    })
                }
            ),
        array().prop_map(|transfer_id| Message::Resume(Resume { transfer_id })),
        proptest::collection::btree_set(0u64..10_000, 0..50)
            .prop_map(|set| Message::Stored(Stored::from_indices(set))),
        (
            batch_id(MAX_BATCH_ID),
            proptest::option::of(array()),
            array(),
            array(),
            bytes(64),
            proptest::option::of((any::<u64>(), any::<u64>())),
            array()
        )
            .prop_map(
                |(batch_id, owner, client_ephemeral, retriever, voucher, range, signature)| {
                    Message::PullHello(PullHello {
                        batch_id,
                        owner,
                        client_ephemeral,
                        retriever,
                        voucher,
                        range: range.and_then(|(a, b)| ByteRange::new(a.min(b), a.max(b))),
                        signature,
                    })
                }
            ),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), TAG_LEN..300)
        )
            .prop_map(|(index, ct)| {
                Message::PullSegment(PullSegment {
                    index,
                    ciphertext: Bytes::from(ct),
                })
            }),
        (
            proptest::option::of(array()),
            proptest::option::of((array(), batch_id(MAX_BATCH_ID))),
            any::<u32>(),
            bytes(64)
        )
            .prop_map(|(owner, after, limit, voucher)| {
                Message::List(List {
                    owner,
                    after: after.map(|(owner, batch_id)| Position { owner, batch_id }),
                    limit,
                    voucher,
                })
            }),
        (
            proptest::collection::vec(
                (
                    batch_id(40),
                    any::<u64>(),
                    any::<u64>(),
                    array(),
                    any::<u64>(),
                    bytes(60)
                ),
                0..5,
            ),
            any::<bool>(),
        )
            .prop_map(|(entries, more)| {
                Message::Listing(Listing {
                    entries: entries
                        .into_iter()
                        .map(
                            |(batch_id, size, segment_count, sender, completed_unix, metadata)| {
                                ListingEntry {
                                    batch_id,
                                    size,
                                    segment_count,
                                    sender,
                                    completed_unix,
                                    metadata,
                                }
                            },
                        )
                        .collect(),
                    more,
                })
            }),
        (code(), any::<u32>(), "[a-z ]{0,40}").prop_map(|(code, retry_after_ms, message)| {
            Message::Refuse(Refuse {
                code,
                retry_after_ms,
                message,
            })
        }),
        Just(Message::ListOpen(ListOpen)),
        proptest::collection::vec(
            (
                array::<TransferId>(),
                batch_id(40),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            ),
            0..4
        )
        .prop_map(|entries| {
            Message::OpenTransfers(OpenTransfers {
                entries: entries
                    .into_iter()
                    .map(
                        |(
                            id,
                            batch_id,
                            created_unix,
                            deadline_unix,
                            stored_segments,
                            stored_bytes,
                        )| {
                            OpenEntry {
                                transfer_id: id,
                                batch_id,
                                created_unix,
                                deadline_unix,
                                stored_segments,
                                stored_bytes,
                            }
                        },
                    )
                    .collect(),
            })
        }),
        array().prop_map(|transfer_id| Message::Abort(Abort { transfer_id })),
        array().prop_map(|transfer_id| Message::Aborted(Aborted { transfer_id })),
        (array(), any::<bool>()).prop_map(|(transfer_id, paused)| Message::Pause(Pause {
            transfer_id,
            paused
        })),
        (array(), any::<bool>()).prop_map(|(transfer_id, paused)| Message::PauseNoted(
            PauseNoted {
                transfer_id,
                paused
            }
        )),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(m in message()) {
        let encoded = m.to_bytes().unwrap();
        prop_assert_eq!(Message::from_bytes(Bytes::from(encoded.clone())).unwrap(), m);
        // Any strict prefix is truncated, any extension has trailing bytes.
        for cut in [0, encoded.len() / 2, encoded.len() - 1] {
            prop_assert!(Message::from_bytes(Bytes::copy_from_slice(&encoded[..cut])).is_err());
        }
        let mut longer = encoded.clone();
        longer.push(0);
        prop_assert_eq!(Message::from_bytes(Bytes::from(longer)), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::from_bytes(Bytes::from(data));
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_type_never_panic(ty in 0u8..0x80, data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut msg = vec![ty];
        msg.extend(data);
        let _ = Message::from_bytes(Bytes::from(msg));
    }
}

#[test]
fn lengths_are_bounded_before_allocation() {
    let mut m = vec![ty::SEGMENT];
    m.extend_from_slice(&[0u8; 16]);
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        Message::from_bytes(Bytes::from(m)),
        Err(DecodeError::TooLong {
            field: "segment",
            len: u32::MAX as usize,
            max: MAX_SEGMENT_WIRE
        })
    );
}

#[test]
fn unknown_versions_are_refused() {
    let hello = Hello {
        batch_id: BatchId::new(&b"b"[..]).unwrap(),
        client_ephemeral: [1; 32],
        sender: [2; 32],
        chunk_size: 1 << 20,
        voucher: Bytes::new(),
        replace: false,
        compression: Compression::None,
        signature: Signature([3; 64]),
    };
    // Version 1 (before the push secret's new-transfer flag) and the next one.
    for version in [1, VERSION + 1] {
        let mut bytes = Message::Hello(hello.clone()).to_bytes().unwrap();
        bytes[1] = version;
        assert_eq!(
            Message::from_bytes(Bytes::from(bytes)),
            Err(DecodeError::UnsupportedVersion(version))
        );
    }
}

#[test]
fn encoders_refuse_fields_over_their_bounds_instead_of_truncating() {
    // A batch id over its bound cannot even be made (BatchId::new refuses it); a
    // voucher can, and is refused when encoded.
    let hello = Hello {
        batch_id: BatchId::new(&b"b"[..]).unwrap(),
        client_ephemeral: [1; 32],
        sender: [2; 32],
        chunk_size: 1 << 20,
        voucher: Bytes::from(vec![1; MAX_VOUCHER + 1]),
        replace: false,
        compression: Compression::None,
        signature: Signature([3; 64]),
    };
    assert_eq!(
        Message::Hello(hello).to_bytes(),
        Err(EncodeError::TooLong {
            field: "voucher",
            len: MAX_VOUCHER + 1,
            max: MAX_VOUCHER
        })
    );
    let listing = Listing {
        entries: vec![
            ListingEntry {
                batch_id: BatchId::new(&b"b"[..]).unwrap(),
                size: 0,
                segment_count: 0,
                sender: [0; 32],
                completed_unix: 0,
                metadata: Bytes::new(),
            };
            MAX_LISTING_ENTRIES + 1
        ],
        more: false,
    };
    assert!(Message::Listing(listing).to_bytes().is_err());
    let stored = Stored {
        runs: (0..=MAX_STORED_RUNS as u64).map(|i| (2 * i, 1)).collect(),
    };
    assert!(Message::Stored(stored).to_bytes().is_err());
}

#[test]
fn a_reply_is_taken_by_its_kind() {
    let ack = Message::SegmentAck(SegmentAck { index: 3 });
    assert_eq!(
        kind::SegmentAck::take(ack.clone()),
        Ok(SegmentAck { index: 3 })
    );
    assert_eq!(kind::Receipt::take(ack.clone()), Err(Box::new(ack)));
    assert_eq!(<kind::PullAccept as Kind>::NAME, "PullAccept");
}

#[test]
fn stored_runs() {
    let s = Stored::from_indices([0, 1, 2, 5, 7, 8]);
    assert_eq!(s.runs, vec![(0, 3), (5, 1), (7, 2)]);
    assert!(s.contains(8) && s.contains(0) && !s.contains(3) && !s.contains(9));
    assert_eq!(s.count(), 6);
    // Built from indices, it keeps the first runs that fit one message.
    let sparse = Stored::from_indices((0..=MAX_STORED_RUNS as u64 + 5).map(|i| 2 * i));
    assert_eq!(sparse.runs.len(), MAX_STORED_RUNS);
    assert!(Message::Stored(sparse).to_bytes().is_ok());
}
