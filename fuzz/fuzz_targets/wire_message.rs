//! Every wire message decoder: whatever the bytes, decoding returns a message or
//! an error, never panics; a message that decodes encodes back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mft::wire::{Codec, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::from_bytes(Bytes::copy_from_slice(data)) {
        let encoded = message.to_bytes().expect("a decoded message encodes");
        assert_eq!(encoded, data, "{} does not round-trip", message.name());
    }
});
