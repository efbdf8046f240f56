//! The store's record decoders (what a damaged or hostile database file holds):
//! never a panic, and what decodes encodes back to the same bytes, an older
//! record in its current form: a transfer record as version 2 (with no
//! compression), a batch record as version 3 (with no content digest from
//! version 1, and no compression from versions 1 and 2).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mft::store::{BatchRecord, TransferRecord};
use mft::wire::Codec;

/// The byte that says "no compression" in a record.
const NO_COMPRESSION: u8 = 0;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(record) = TransferRecord::from_bytes(bytes.clone()) {
        let expected = match data.split_first() {
            Some((1, rest)) => [&[2u8][..], rest, &[NO_COMPRESSION]].concat(),
            _ => data.to_vec(),
        };
        assert_eq!(record.to_bytes().expect("encodes"), expected);
    }
    if let Ok(record) = BatchRecord::from_bytes(bytes) {
        let expected = match data.split_first() {
            Some((1, rest)) => [&[3u8][..], rest, &[0u8; 32], &[NO_COMPRESSION]].concat(),
            Some((2, rest)) => [&[3u8][..], rest, &[NO_COMPRESSION]].concat(),
            _ => data.to_vec(),
        };
        assert_eq!(record.to_bytes().expect("encodes"), expected);
    }
});
