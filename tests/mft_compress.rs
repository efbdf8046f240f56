//! Compression before sealing (PROTOCOL.md §14): a compressible batch is
//! stored and sent smaller and comes back byte for byte, whole or by range; an
//! incompressible one is sent as it is; a sender that turns it off, or a
//! server that declines it, stores every segment as it is.

#[macro_use]
mod common;

use common::mft_harness::*;
use common::{Transport, init_tracing, payload};
use mft::wire::Receipt;
use mft::{ClientConfig, Compress, Sender, ServerConfig};
use tokio::io::AsyncReadExt;

on_every_transport!(
    a_compressible_batch_is_stored_smaller_and_comes_back_whole,
    an_incompressible_batch_is_sent_as_it_is,
    without_compression_on_either_side_segments_are_sent_as_they_are,
);

/// Log-like text: compresses well, and is not one byte repeated.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("{i:08} transfer {} stored segment {} ok\n", i % 97, i % 13).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Ciphertext bytes the server holds for a receipted batch.
async fn stored(h: &Harness, receipt: &Receipt) -> u64 {
    let segments = h.store.segments(receipt.transfer_id).await.unwrap();
    assert_eq!(segments.len() as u64, receipt.segment_count);
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// What a batch of `size` bytes takes sealed as it is: its bytes and a tag each.
fn as_is(size: u64) -> u64 {
    size + size.div_ceil(u64::from(CHUNK)) * mft::wire::TAG_LEN as u64
}

fn sender(h: &Harness, compress: Compress) -> Sender {
    let mut config: ClientConfig = h.config();
    config.compress(compress);
    Sender::new(h.client.clone(), config).unwrap()
}

async fn retrieve(h: &Harness, request: &mft::Pull) -> Vec<u8> {
    let (mut reader, _) = h.retriever().pull(request).await.unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    back
}

async fn a_compressible_batch_is_stored_smaller_and_comes_back_whole(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    // Text, then noise, then text again, ending part way into a segment.
    let chunk = CHUNK as usize;
    let data = [
        text(6 * chunk),
        payload(3 * chunk, 5),
        text(4 * chunk + 321),
    ]
    .concat();
    let size = data.len() as u64;
    let receipt = sender(&h, Compress::Auto)
        .send(std::io::Cursor::new(data.clone()), b"logs", b"meta")
        .await
        .unwrap();
    h.check_receipt(&receipt, b"logs", size).await;
    let held = stored(&h, &receipt).await;
    assert!(
        held < as_is(3 * chunk as u64) + as_is(10 * chunk as u64) / 4,
        "{held} bytes stored for {size}"
    );
    assert_eq!(retrieve(&h, &mft::Pull::batch(b"logs")).await, data);
    // Ranges across compressed, stored and the last segments.
    for (start, end) in [(100, 200), (5 * chunk + 7, 9 * chunk + 9), (0, data.len())] {
        let request = mft::Pull::batch(b"logs").range(start as u64..end as u64);
        assert_eq!(
            retrieve(&h, &request).await,
            &data[start..end],
            "{start}..{end}"
        );
    }
    let tail = data.len() - 10;
    let request = mft::Pull::batch(b"logs").range(tail as u64..size);
    assert_eq!(retrieve(&h, &request).await, &data[tail..]);
    // The server's own reader expands it too.
    let (mut local, _) = h
        .server
        .retrieve(&h.client_key(), None, b"logs")
        .await
        .unwrap();
    let mut back = Vec::new();
    local.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
}

async fn an_incompressible_batch_is_sent_as_it_is(t: Transport) {
    let h = Harness::new(t, ServerConfig::default()).await;
    let size = 5 * u64::from(CHUNK) + 11;
    let receipt = sender(&h, Compress::Zstd)
        .send(PrngReader::new(3, size), b"noise", b"meta")
        .await
        .unwrap();
    assert_eq!(stored(&h, &receipt).await, as_is(size));
    h.check_retrieval(b"noise", 3, size, b"meta").await;
}

async fn without_compression_on_either_side_segments_are_sent_as_they_are(t: Transport) {
    let data = text(3 * CHUNK as usize + 50);
    let size = data.len() as u64;
    // The sender turns it off.
    let h = Harness::new(t.clone(), ServerConfig::default()).await;
    let receipt = sender(&h, Compress::Off)
        .send(std::io::Cursor::new(data.clone()), b"plain", b"meta")
        .await
        .unwrap();
    assert_eq!(stored(&h, &receipt).await, as_is(size));
    assert_eq!(retrieve(&h, &mft::Pull::batch(b"plain")).await, data);
    // The server declines it.
    let mut config = ServerConfig::default();
    config.compression(false);
    let h = Harness::new(t, config).await;
    let receipt = sender(&h, Compress::Zstd)
        .send(std::io::Cursor::new(data.clone()), b"plain", b"meta")
        .await
        .unwrap();
    assert_eq!(stored(&h, &receipt).await, as_is(size));
    assert_eq!(retrieve(&h, &mft::Pull::batch(b"plain")).await, data);
}
