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
    )
        .prop_map(
            |(id, batch_id, sender, chunk_size, created_unix, deadline_unix)| TransferRecord {
                transfer: TransferId(id),
                batch_id,
                sender,
                chunk_size,
                created_unix,
                deadline_unix,
            },
        )
}

fn arb_batch() -> impl Strategy<Value = BatchRecord> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
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
                (chunk_size, segment_count, size, completed_unix),
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
        // Version 1 is version 2 without the trailing digest.
        let mut bytes = encode_batch(&r).unwrap();
        bytes.truncate(bytes.len() - 32);
        bytes[0] = 1;
        let read = decode_batch(&bytes, &owned_key(&r.sender, &r.batch_id)).unwrap();
        prop_assert_eq!(read, BatchRecord { content_digest: [0; 32], ..r });
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
