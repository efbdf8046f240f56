//! Namespaces and listings: batch ids are per sender, a retrieval that names no
//! sender resolves only among the batches its key may see, and a listing walks
//! the namespaces a key may list, a page at a time, from the store's indexes.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{TIMEOUT, Transport, allow_all, bounded, init_tracing};
use flow::{Authorizer, Identity, Manager, ManagerConfig, PeerKey};
use mft::wire::{Codec, List, Listing, Message, Position, RefuseCode};
use tokio::io::AsyncReadExt;

on_every_transport!(
    batch_ids_are_per_sender_and_keys_see_only_their_share,
    a_listing_asks_once_per_namespace_and_pages_in_order,
);

struct World {
    t: Transport,
    server: mft::Server,
    endpoint: flow::Endpoint,
    _server_manager: Manager,
    config: mft::ClientConfig,
}

impl World {
    /// A server where everyone may send, and `retrievers` decides the rest.
    async fn new(t: Transport, retrievers: common::Policy) -> Self {
        let (server, endpoint, server_manager) = common::mft_server(
            &t,
            Identity::generate(),
            Arc::new(mft::store::MemoryStore::new()),
            mft::ServerConfig::default(),
            allow_all(),
            retrievers,
        )
        .await;
        let config = mft::ClientConfig::new(endpoint.clone(), server.identity().public_key());
        World {
            t,
            server,
            endpoint,
            _server_manager: server_manager,
            config,
        }
    }

    fn manager(&self) -> Manager {
        self.t.manager(ManagerConfig::default())
    }

    async fn send(&self, from: &Manager, id: &str, body: &str) -> mft::Result<mft::wire::Receipt> {
        let metadata = format!(r#"{{"name":"{id}"}}"#);
        mft::Sender::new(from.clone(), self.config.clone())
            .unwrap()
            .send(
                std::io::Cursor::new(body.as_bytes().to_vec()),
                id.as_bytes(),
                metadata.as_bytes(),
            )
            .await
    }

    fn retriever(&self, who: &Manager) -> mft::Retriever {
        mft::Retriever::new(who.clone(), self.config.clone()).unwrap()
    }
}

async fn read_all(mut reader: mft::BatchReader) -> String {
    let mut out = String::new();
    bounded("read", reader.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

async fn batch_ids_are_per_sender_and_keys_see_only_their_share(t: Transport) {
    let (s1, s2) = (
        t.manager(ManagerConfig::default()),
        t.manager(ManagerConfig::default()),
    );
    let (alice, bob, stranger) = (
        t.manager(ManagerConfig::default()),
        t.manager(ManagerConfig::default()),
        t.manager(ManagerConfig::default()),
    );
    let s1_key = s1.identity().public_key();
    let (alice_key, bob_key) = (alice.identity().public_key(), bob.identity().public_key());
    // Alice sees only the first sender's namespace; Bob sees every one.
    let retrievers: common::Policy = Arc::new(move |r: &mft::Request<'_>| {
        (*r.key == alice_key && r.owner == s1_key.as_bytes()) || *r.key == bob_key
    });
    let w = World::new(t, retrievers).await;

    // Two senders use the same id: each gets its own batch.
    w.send(&s1, "report", "from the first sender")
        .await
        .unwrap();
    w.send(&s2, "report", "from the second sender")
        .await
        .unwrap();
    w.send(&s2, "other", "only the second").await.unwrap();
    // The same id again in one's own namespace exists, and says nothing of others.
    let again = w.send(&s1, "report", "again").await.unwrap_err();
    assert_eq!(
        again.refuse_code(),
        Some(RefuseCode::BatchExists),
        "{again}"
    );
    assert!(
        !again
            .to_string()
            .contains(&s2.identity().public_key().to_string())
    );

    // Alice resolves "report" to the one batch she may see.
    let (data, info) = w.retriever(&alice).get(b"report").await.unwrap();
    assert_eq!(info.sender, s1.identity().public_key());
    assert_eq!(read_all(data).await, "from the first sender");
    // What she may not see is missing, as if it did not exist.
    let hidden = w.retriever(&alice).get(b"other").await.unwrap_err();
    assert_eq!(hidden.refuse_code(), Some(RefuseCode::NotFound), "{hidden}");
    let hidden = w
        .retriever(&alice)
        .get_from(&s2.identity().public_key(), b"report")
        .await
        .unwrap_err();
    assert_eq!(hidden.refuse_code(), Some(RefuseCode::NotFound), "{hidden}");

    // Bob sees both: the bare id is ambiguous, naming the sender settles it.
    let ambiguous = w.retriever(&bob).get(b"report").await.unwrap_err();
    assert_eq!(
        ambiguous.refuse_code(),
        Some(RefuseCode::Ambiguous),
        "{ambiguous}"
    );
    let (data, info) = w
        .retriever(&bob)
        .get_from(&s2.identity().public_key(), b"report")
        .await
        .unwrap();
    assert_eq!(info.sender, s2.identity().public_key());
    assert_eq!(read_all(data).await, "from the second sender");

    // Listings show each key its share, in (sender, id) order, with metadata.
    let listed = |who: Manager| {
        let r = w.retriever(&who);
        async move { r.list().await.unwrap() }
    };
    let seen: Vec<(PeerKey, Vec<u8>)> = listed(alice.clone())
        .await
        .into_iter()
        .map(|b| (b.sender, b.batch_id))
        .collect();
    assert_eq!(seen, vec![(s1.identity().public_key(), b"report".to_vec())]);
    let by_bob = listed(bob.clone()).await;
    assert_eq!(by_bob.len(), 3);
    assert!(by_bob.windows(2).all(|p| {
        (p[0].sender.as_bytes(), &p[0].batch_id) < (p[1].sender.as_bytes(), &p[1].batch_id)
    }));
    assert!(
        by_bob
            .iter()
            .any(|b| &b.metadata[..] == br#"{"name":"other"}"#)
    );
    let of_s2 = w
        .retriever(&bob)
        .list_from(&s2.identity().public_key())
        .await
        .unwrap();
    assert_eq!(of_s2.len(), 2);
    assert!(
        listed(stranger.clone()).await.is_empty(),
        "a stranger sees nothing"
    );
    let err = w.retriever(&stranger).get(b"report").await.unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::NotFound), "{err}");
    drop(w.server);
}

/// One page of a raw listing.
async fn list_page(client: &Manager, w: &World, list: List) -> Listing {
    let mut flow = bounded("dial", client.dial(&w.endpoint, Authorizer::any(), TIMEOUT))
        .await
        .unwrap();
    flow.write_msg(&[&Message::List(list).to_bytes().unwrap()])
        .await
        .unwrap();
    let reply = bounded("listing", flow.read_msg()).await.unwrap().unwrap();
    match Message::from_bytes(reply).unwrap() {
        Message::Listing(listing) => listing,
        other => panic!("expected Listing, got {other:?}"),
    }
}

async fn a_listing_asks_once_per_namespace_and_pages_in_order(t: Transport) {
    let asked = Arc::new(AtomicUsize::new(0));
    let counted = asked.clone();
    let retrievers: common::Policy = Arc::new(move |r: &mft::Request<'_>| {
        counted.fetch_add(1, Ordering::SeqCst);
        r.direction == mft::Direction::List
    });
    let w = World::new(t, retrievers).await;
    let (s1, s2, reader) = (w.manager(), w.manager(), w.manager());
    for n in 0..12 {
        w.send(&s1, &format!("s1-{n:02}"), "x").await.unwrap();
    }
    for n in 0..3 {
        w.send(&s2, &format!("s2-{n}"), "y").await.unwrap();
    }
    asked.store(0, Ordering::SeqCst);

    // Five per page, walked with the cursor the pages give.
    let mut after = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = list_page(
            &reader,
            &w,
            List {
                owner: None,
                after: after.clone(),
                limit: 5,
                voucher: Default::default(),
            },
        )
        .await;
        pages += 1;
        assert!(page.entries.len() <= 5);
        for e in &page.entries {
            seen.push((e.sender, e.batch_id.to_vec()));
        }
        after = page.entries.last().map(|e| Position {
            owner: e.sender,
            batch_id: e.batch_id.clone(),
        });
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 15);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in (sender, id) order");
    // One question per namespace a page touches, none per batch: three pages,
    // each in at most two namespaces.
    let questions = asked.load(Ordering::SeqCst);
    assert!(
        questions <= 6,
        "the authoriser was asked {questions} times for 15 batches"
    );

    // One namespace alone, from the middle.
    let s1_key = *s1.identity().public_key().as_bytes();
    let page = list_page(
        &reader,
        &w,
        List {
            owner: Some(s1_key),
            after: Some(Position {
                owner: s1_key,
                batch_id: mft::wire::BatchId::new(b"s1-09".to_vec()).unwrap(),
            }),
            limit: 100,
            voucher: Default::default(),
        },
    )
    .await;
    let ids: Vec<&[u8]> = page.entries.iter().map(|e| &e.batch_id[..]).collect();
    assert_eq!(ids, vec![&b"s1-10"[..], b"s1-11"]);
    assert!(!page.more);
}
