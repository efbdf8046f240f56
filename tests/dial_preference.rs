//! Dialing `mftq://host:port` by preference: QUIC first, HTTPS beside it after a
//! short delay, the winner kept, and a blocked UDP path remembered.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{bounded, init_tracing};
use flow::{
    Authorizer, Endpoint, ErrorKind, Identity, Manager, ManagerConfig, Property, Registry,
    Selection,
};

const DIAL: Duration = Duration::from_secs(10);

fn manager() -> Manager {
    Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap()
}

/// A server listening with QUIC on UDP port P and HTTPS on TCP port P (when `quic`),
/// or HTTPS only; returns the manager and P.
async fn server(quic: bool) -> (Manager, u16) {
    let server = manager();
    for _ in 0..20 {
        // Find a port free for both UDP and TCP.
        let https = server.listen("https", "127.0.0.1:0").await.unwrap();
        let port: u16 = https
            .endpoint()
            .address()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if !quic
            || server
                .listen("quic", &format!("127.0.0.1:{port}"))
                .await
                .is_ok()
        {
            return (server, port);
        }
        server.stop_listening();
    }
    panic!("no port free for both UDP and TCP");
}

/// Echoes one message on every flow the server accepts.
fn echo(server: &Manager) {
    let server = server.clone();
    tokio::spawn(async move {
        while let Ok(mut flow) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(Some(msg)) = flow.read_msg().await {
                    let _ = flow.write_msg_and_close(&[&msg]).await;
                }
            });
        }
    });
}

async fn round_trip(client: &Manager, endpoint: &Endpoint, selection: &Selection) -> String {
    let mut flow = bounded(
        "dial",
        client.dial_with(endpoint, Authorizer::any(), DIAL, selection),
    )
    .await
    .unwrap();
    flow.write_msg(&[b"ping"]).await.unwrap();
    assert_eq!(
        bounded("echo", flow.read_msg()).await.unwrap().as_deref(),
        Some(&b"ping"[..])
    );
    flow.conn().protocol().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_available_quic_wins() {
    init_tracing();
    let (server, port) = server(true).await;
    echo(&server);
    let client = manager();
    let endpoint: Endpoint = format!("mftq://127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        round_trip(&client, &endpoint, &Selection::default()).await,
        "quic"
    );
    assert_eq!(client.connections().len(), 1, "the loser was not kept");
    // Cached: the next flow reuses the QUIC connection.
    assert_eq!(
        round_trip(&client, &endpoint, &Selection::default()).await,
        "quic"
    );
    assert_eq!(client.connections().len(), 1);
    let cached = client
        .dial_cached(&endpoint, Authorizer::any())
        .await
        .unwrap();
    assert_eq!(cached.conn().protocol(), "quic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selections_steer_the_choice() {
    init_tracing();
    let (server, port) = server(true).await;
    echo(&server);
    let endpoint: Endpoint = format!("mftq://127.0.0.1:{port}").parse().unwrap();
    let no_udp = Selection::default().prohibit(Property::Udp);
    assert_eq!(round_trip(&manager(), &endpoint, &no_udp).await, "https");
    let tcp_first = Selection::default().prefer(Property::Tcp);
    assert_eq!(round_trip(&manager(), &endpoint, &tcp_first).await, "https");

    // A named protocol the selection excludes is a caller error.
    let quic: Endpoint = format!("quic://127.0.0.1:{port}").parse().unwrap();
    let err = manager()
        .dial_with(&quic, Authorizer::any(), DIAL, &no_udp)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg, "{err}");
    let nothing = Selection::default().require(Property::ZeroRtt);
    let err = manager()
        .dial_with(&endpoint, Authorizer::any(), DIAL, &nothing)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_udp_falls_back_to_https_and_is_remembered() {
    init_tracing();
    let (server, port) = server(false).await;
    echo(&server);
    // The QUIC port is a black hole: a UDP socket that reads and drops everything.
    let hole = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let swallowed = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let swallowed = swallowed.clone();
        async move {
            let mut buf = [0u8; 2048];
            while hole.recv_from(&mut buf).await.is_ok() {
                swallowed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let client = manager();
    let endpoint: Endpoint = format!("mftq://127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    assert_eq!(
        round_trip(&client, &endpoint, &Selection::default()).await,
        "https"
    );
    // Won by HTTPS after the happy-eyeballs delay, long before QUIC would give up
    // (the dial timeout is 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        swallowed.load(Ordering::Relaxed) > 0,
        "QUIC was tried first"
    );

    // A new connection to the same destination goes straight to HTTPS.
    for conn in client.connections() {
        conn.close();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = swallowed.load(Ordering::Relaxed);
    assert_eq!(
        round_trip(&client, &endpoint, &Selection::default()).await,
        "https"
    );
    assert_eq!(
        swallowed.load(Ordering::Relaxed),
        before,
        "UDP was tried again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_an_mftq_endpoint_runs_over_the_winner() {
    init_tracing();
    let (server_manager, port) = server(true).await;
    let server = mft::Server::builder(
        server_manager.identity().clone(),
        Arc::new(mft::store::MemoryStore::new()),
    )
    .authorize(|_: &mft::Request<'_>| true)
    .build();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(server_manager).await }
    });
    let endpoint: Endpoint = format!("mftq://127.0.0.1:{port}").parse().unwrap();
    let config = mft::ClientConfig::new(endpoint, server.identity().public_key());
    let client = manager();
    let sender = mft::Sender::new(client.clone(), config.clone()).unwrap();
    let mut events = sender.subscribe();
    let receipt = bounded("send", sender.send(&b"over the winner"[..], b"b", b"{}"))
        .await
        .unwrap();
    assert_eq!(receipt.size, 15);
    let mut protocol = None;
    while let Ok(event) = events.try_recv() {
        if let mft::Event::Accepted { protocol: p, .. } = event {
            protocol = Some(p);
        }
    }
    assert_eq!(protocol.as_deref(), Some("quic"));
    let (mut data, _) = mft::Retriever::new(client, config)
        .unwrap()
        .get(b"b")
        .await
        .unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut data, &mut back)
        .await
        .unwrap();
    assert_eq!(back, b"over the winner");
}

/// Nothing listening at an `mftq://` address: HTTPS is refused at once, QUIC
/// stays silent, and after the probe the dial fails as refused, naming both,
/// well inside its own timeout. A server listening on QUIC alone is still
/// reached: the refused TCP connection does not cut a QUIC that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tcp_and_a_silent_quic_mean_nothing_listens() {
    init_tracing();
    let port = {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.local_addr().unwrap().port()
    };
    let endpoint: Endpoint = format!("mftq://127.0.0.1:{port}").parse().unwrap();
    let mut config = ManagerConfig::default();
    config.probe_after_refusal(Duration::from_millis(200));
    let client = Manager::new(Identity::generate(), Registry::default(), config).unwrap();
    let timeout = Duration::from_secs(30);
    let err = bounded(
        "a dial to nothing",
        client.dial(&endpoint, Authorizer::any(), timeout),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("https://127.0.0.1:{port} refused"))
            && text.contains(&format!(
                "quic://127.0.0.1:{port} gave no answer within 200ms"
            )),
        "{text}"
    );

    // QUIC alone, on a port whose TCP side refuses.
    let quic_only = manager();
    let handle = quic_only.listen("quic", "127.0.0.1:0").await.unwrap();
    echo(&quic_only);
    let address = handle.endpoint().address().to_string();
    let endpoint: Endpoint = format!("mftq://{address}").parse().unwrap();
    let mut config = ManagerConfig::default();
    config
        .happy_eyeballs_delay(Duration::ZERO)
        .probe_after_refusal(Duration::from_millis(500));
    let client = Manager::new(Identity::generate(), Registry::default(), config).unwrap();
    assert_eq!(
        round_trip(&client, &endpoint, &Selection::default()).await,
        "quic"
    );
}
