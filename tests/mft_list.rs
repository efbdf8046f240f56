//! Listing: a retriever sees exactly the batches it may retrieve, with metadata.

#[macro_use]
mod common;

use std::sync::Arc;

use common::{Transport, allow_all, init_tracing};
use flow::{Identity, ManagerConfig};

on_every_transport!(listing_shows_only_what_the_key_may_retrieve);

async fn listing_shows_only_what_the_key_may_retrieve(t: Transport) {
    let sender = t.manager(ManagerConfig::default());
    let alice = t.manager(ManagerConfig::default());
    let stranger = t.manager(ManagerConfig::default());
    let alice_key = alice.identity().public_key();
    let sender_key = sender.identity().public_key();
    // Alice may see batches named "a-…"; the sender sees everything.
    let retrievers: common::Policy = Arc::new(move |r: &mft::Request<'_>| {
        *r.key == sender_key || (*r.key == alice_key && r.batch_id.starts_with(b"a-"))
    });
    let (server, endpoint, _server_manager) = common::mft_server(
        &t,
        Identity::generate(),
        Arc::new(mft::store::MemoryStore::new()),
        mft::ServerConfig::default(),
        allow_all(),
        retrievers,
    )
    .await;
    let config = mft::ClientConfig::new(endpoint, server.identity().public_key());
    let send = mft::Sender::new(sender.clone(), config.clone()).unwrap();
    for (id, body) in [("b-1", "bee"), ("a-2", "second"), ("a-1", "first")] {
        let metadata = format!(r#"{{"name":"{id}"}}"#);
        send.send(body.as_bytes(), id.as_bytes(), metadata.as_bytes())
            .await
            .unwrap();
    }

    let list = |manager: flow::Manager| {
        let config = config.clone();
        async move {
            mft::Retriever::new(manager, config)
                .unwrap()
                .list()
                .await
                .unwrap()
        }
    };
    let seen_by_alice = list(alice).await;
    let ids: Vec<&[u8]> = seen_by_alice
        .iter()
        .map(|b| b.batch_id.as_slice())
        .collect();
    assert_eq!(ids, vec![&b"a-1"[..], b"a-2"]);
    assert_eq!(seen_by_alice[0].size, 5);
    assert_eq!(seen_by_alice[0].segment_count, 1);
    assert_eq!(&seen_by_alice[0].metadata[..], br#"{"name":"a-1"}"#);
    assert_eq!(seen_by_alice[1].sender, sender.identity().public_key());

    assert_eq!(list(sender).await.len(), 3);
    assert!(list(stranger).await.is_empty(), "a stranger sees nothing");
}
