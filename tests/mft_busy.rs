//! A busy server asks clients to come back later; clients wait as asked, within
//! their retry budget, over QUIC and over HTTPS alike.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, init_tracing};
use flow::{Identity, Manager, ManagerConfig, Registry};
use mft::wire::RefuseCode;

async fn busy_server(protocol: &str, retry_after: Duration) -> (mft::Server, flow::Endpoint) {
    let manager = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let endpoint = manager
        .listen(protocol, "127.0.0.1:0")
        .await
        .unwrap()
        .endpoint()
        .clone();
    let mut config = mft::ServerConfig::default();
    // No open transfer allowed: every hello is answered "busy, retry later".
    config
        .max_open_transfers_per_peer(0)
        .busy_retry_after(retry_after);
    let server = mft::Server::builder(
        manager.identity().clone(),
        Arc::new(mft::store::MemoryStore::new()),
    )
    .config(config)
    .authorize(|r: &mft::Request<'_>| r.direction == mft::Direction::Send)
    .build();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(manager).await }
    });
    (server, endpoint)
}

async fn waits_as_asked_then_gives_up(protocol: &str) {
    init_tracing();
    let retry_after = Duration::from_millis(400);
    let (server, endpoint) = busy_server(protocol, retry_after).await;
    let client = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let mut config = mft::ClientConfig::new(endpoint, server.identity().public_key());
    config.retries(2);
    let sender = mft::Sender::new(client, config).unwrap();
    let mut events = sender.subscribe();
    let started = Instant::now();
    let err = bounded("send", sender.send(&b"data"[..], b"batch", b"{}"))
        .await
        .unwrap_err();
    // Two retries, each after the delay the server asked for.
    assert!(
        started.elapsed() >= retry_after * 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.refuse_code(), Some(RefuseCode::Busy), "{err}");
    assert!(
        matches!(err, mft::Error::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    let mut delays = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let mft::Event::Retrying { delay, .. } = event {
            delays.push(delay);
        }
    }
    assert_eq!(delays, vec![retry_after, retry_after]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_over_quic() {
    waits_as_asked_then_gives_up("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_over_https() {
    waits_as_asked_then_gives_up("https").await;
}
