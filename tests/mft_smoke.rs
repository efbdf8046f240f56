//! Quick end-to-end check of the transfer protocol over QUIC (the full suite lives in
//! tests/mft_transfer.rs).

mod common;

use std::sync::Arc;

use common::{Transport, init_tracing};
use flow::ManagerConfig;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_round_trip() {
    init_tracing();
    let t = Transport::quic();
    let (server_manager, endpoint) = t.server(ManagerConfig::default()).await;
    let store = Arc::new(mft::store::MemoryStore::new());
    let server = mft::Server::builder(server_manager.identity().clone(), store)
        .authorize(|_: &mft::Request<'_>| true)
        .build();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(server_manager).await }
    });
    let client = t.manager(ManagerConfig::default());
    let mut config = mft::ClientConfig::new(endpoint, server.identity().public_key());
    config.chunk_size(64 << 10);
    let data: Vec<u8> = (0..(5 * 65536 + 123))
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let sender = mft::Sender::new(client.clone(), config.clone()).unwrap();
    let receipt = sender
        .send(
            std::io::Cursor::new(data.clone()),
            b"batch-1",
            b"{\"name\":\"x\"}",
        )
        .await
        .unwrap();
    assert_eq!(receipt.size, data.len() as u64);
    assert_eq!(receipt.segment_count, 6);
    let retriever = mft::Retriever::new(client, config).unwrap();
    let (mut reader, info) = retriever.get(b"batch-1").await.unwrap();
    assert_eq!(&info.metadata[..], b"{\"name\":\"x\"}");
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    assert!(back == data);
}
