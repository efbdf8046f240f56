//! The record encoding: round trips, and no panic on arbitrary bytes.

use proptest::prelude::*;

use super::super::fs::{decode_batch, decode_transfer, encode_batch, encode_transfer};
use super::super::records::owned_key;
use super::*;

fn arb_transfer() -> impl Strategy<Value = TransferRecord> {
    (
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        arb_compression(),
    )
        .prop_map(
            |(id, batch_id, sender, chunk_size, created_unix, deadline_unix, compression)| {
                TransferRecord {
                    transfer: TransferId(id),
                    batch_id,
                    sender,
                    chunk_size,
                    created_unix,
                    deadline_unix,
                    compression,
                }
            },
        )
}

fn arb_compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Zstd)]
}

fn arb_batch() -> impl Strategy<Value = BatchRecord> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            arb_compression(),
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 64),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(
                batch_id,
                id,
                sender,
                (chunk_size, segment_count, size, completed_unix, compression),
                meta,
                chain,
                receipt,
                content_digest,
            )| {
                let mut c = [0u8; 64];
                c.copy_from_slice(&chain);
                BatchRecord {
                    batch_id,
                    transfer: TransferId(id),
                    sender,
                    chunk_size,
                    segment_count,
                    size,
                    sealed_metadata: meta,
                    chain: ChainHash(c),
                    completed_unix,
                    receipt,
                    compression,
                    content_digest,
                }
            },
        )
}

proptest! {
    #[test]
    fn transfer_encoding_round_trips(r in arb_transfer()) {
        let bytes = encode_transfer(&r).unwrap();
        prop_assert_eq!(decode_transfer(&bytes, &r.transfer.0).unwrap(), r.clone());
        // Every strict prefix is refused, as is any extra byte.
        for cut in 0..bytes.len() {
            prop_assert!(decode_transfer(&bytes[..cut], &r.transfer.0).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode_transfer(&longer, &r.transfer.0).is_err());
    }

    #[test]
    fn batch_encoding_round_trips(r in arb_batch()) {
        let bytes = encode_batch(&r).unwrap();
        prop_assert_eq!(decode_batch(&bytes, &owned_key(&r.sender, &r.batch_id)).unwrap(), r.clone());
        for cut in 0..bytes.len() {
            prop_assert!(decode_batch(&bytes[..cut], &owned_key(&r.sender, &r.batch_id)).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode_batch(&longer, &owned_key(&r.sender, &r.batch_id)).is_err());
    }

    #[test]
    fn a_version_1_batch_record_reads_as_declaring_no_digest(r in arb_batch()) {
        // Version 1 is version 3 without the trailing digest and compression.
        let mut bytes = encode_batch(&r).unwrap();
        bytes.truncate(bytes.len() - 33);
        bytes[0] = 1;
        let read = decode_batch(&bytes, &owned_key(&r.sender, &r.batch_id)).unwrap();
        prop_assert_eq!(
            read,
            BatchRecord { content_digest: [0; 32], compression: Compression::None, ..r }
        );
    }

    #[test]
    fn earlier_records_read_as_uncompressed(t in arb_transfer(), b in arb_batch()) {
        // Version 2 batch records and version 1 transfer records end before the
        // compression byte.
        let mut bytes = encode_batch(&b).unwrap();
        bytes.truncate(bytes.len() - 1);
        bytes[0] = 2;
        let read = decode_batch(&bytes, &owned_key(&b.sender, &b.batch_id)).unwrap();
        prop_assert_eq!(read, BatchRecord { compression: Compression::None, ..b });
        let mut bytes = encode_transfer(&t).unwrap();
        bytes.truncate(bytes.len() - 1);
        bytes[0] = 1;
        let read = decode_transfer(&bytes, &t.transfer.0).unwrap();
        prop_assert_eq!(read, TransferRecord { compression: Compression::None, ..t });
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Errors are fine; a panic fails the test.
        let _ = decode_transfer(&bytes, &[0; 16]);
        let _ = decode_batch(&bytes, b"");
        // And past the version byte, where the length checks are.
        let versioned = [&[1u8][..], &bytes].concat();
        let _ = decode_transfer(&versioned, &[0; 16]);
        let _ = decode_batch(&versioned, b"");
    }
}
