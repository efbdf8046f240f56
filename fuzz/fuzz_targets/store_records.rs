//! The store's record decoders (what a damaged or hostile database file holds):
//! never a panic, and what decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mft::store::{BatchRecord, TransferRecord};
use mft::wire::Codec;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(record) = TransferRecord::from_bytes(bytes.clone()) {
        assert_eq!(record.to_bytes().expect("encodes"), data);
    }
    if let Ok(record) = BatchRecord::from_bytes(bytes) {
        assert_eq!(record.to_bytes().expect("encodes"), data);
    }
});
