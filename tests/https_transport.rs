//! What only the HTTPS protocol does: HTTP/2 details, health checks for load
//! balancers, refusing garbage on its TCP port, and telling busy clients when to
//! come back. The flow suite (tests/flow_manager.rs) also runs over HTTPS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{anonymous_tls, bounded, init_tracing};
use flow::{
    Authorizer, ErrorKind, HttpsConfig, HttpsProtocol, Identity, Manager, ManagerConfig, Reason,
    Registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DIAL: Duration = Duration::from_secs(10);

async fn https_server(config: ManagerConfig) -> (Manager, flow::Endpoint) {
    let server = Manager::new(Identity::generate(), Registry::default(), config).unwrap();
    let endpoint = server
        .listen("https", "127.0.0.1:0")
        .await
        .unwrap()
        .endpoint()
        .clone();
    (server, endpoint)
}

fn port(endpoint: &flow::Endpoint) -> u16 {
    endpoint
        .address()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends one HTTP/1.1 request over TLS without a client certificate and returns the
/// status line and body.
async fn anonymous_http1(port: u16, request: &str) -> String {
    let mut tls = anonymous_tls(port, &[b"http/1.1"]).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = bounded("http/1.1 response", tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn echo_once(server: &Manager) {
    let mut flow = bounded("accept", server.accept()).await.unwrap();
    let msg = flow.read_msg().await.unwrap().unwrap();
    flow.write_msg_and_close(&[&msg]).await.unwrap();
}

async fn client_round_trip(endpoint: &flow::Endpoint, server: &Manager) {
    let client = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let pinned = Authorizer::pinned(server.identity().public_key());
    let echo = tokio::spawn({
        let server = server.clone();
        async move { echo_once(&server).await }
    });
    let mut flow = bounded("dial", client.dial(endpoint, pinned, DIAL))
        .await
        .unwrap();
    flow.write_msg(&[b"still serving"]).await.unwrap();
    assert_eq!(
        bounded("echo", flow.read_msg()).await.unwrap().as_deref(),
        Some(&b"still serving"[..])
    );
    echo.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_answer_without_a_certificate_and_nothing_else_does() {
    init_tracing();
    let (server, endpoint) = https_server(ManagerConfig::default()).await;
    let port = port(&endpoint);
    let health = anonymous_http1(
        port,
        "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    let flow = anonymous_http1(
        port,
        "POST /mftq/flow HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(flow.starts_with("HTTP/1.1 401"), "{flow}");
    let other = anonymous_http1(
        port,
        "GET /etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    // No anonymous connection ever reached the manager.
    assert!(server.connections().is_empty());
    client_round_trip(&endpoint, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_is_refused_and_the_server_keeps_serving() {
    init_tracing();
    let (server, endpoint) = https_server(ManagerConfig::default()).await;
    let port = port(&endpoint);
    // Random bytes, and plain HTTP/1.1 without TLS: the connection is closed.
    for garbage in [
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = tcp.write_all(&garbage).await;
        let mut sink = Vec::new();
        let closed = bounded("server closes", tcp.read_to_end(&mut sink)).await;
        assert!(
            closed.is_err() || sink.len() < 200,
            "answered garbage with {} bytes",
            sink.len()
        );
    }
    // A peer whose key the server does not trust.
    let mut config = ManagerConfig::default();
    let trusted = Identity::generate();
    config.accept_authorizer(Authorizer::allow([trusted.public_key()]));
    let (picky, picky_endpoint) = https_server(config).await;
    let stranger = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let err = bounded(
        "dial",
        stranger.dial(&picky_endpoint, Authorizer::any(), DIAL),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotTrusted, "{err}");
    assert_eq!(err.reason(), &Reason::RefusedByPeer);
    assert!(picky.connections().is_empty());

    client_round_trip(&endpoint, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_accept_queue_answers_busy_with_retry_after() {
    init_tracing();
    let mut https = HttpsConfig::default();
    https
        .accept_backlog(1)
        .busy_retry_after(Duration::from_secs(3));
    let mut registry = Registry::default();
    registry.register("https", Arc::new(HttpsProtocol::new(https)), &[]);
    // accept_backlog(1) at the manager too, so the protocol's queue fills.
    let mut config = ManagerConfig::default();
    config.accept_backlog(1);
    let server = Manager::new(Identity::generate(), registry, config).unwrap();
    let endpoint = server
        .listen("https", "127.0.0.1:0")
        .await
        .unwrap()
        .endpoint()
        .clone();
    let client = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    // Nobody accepts on the server: the backlogs fill, then flows are refused.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut flows = Vec::new();
    for _ in 0..8 {
        let flow = client
            .dial(&endpoint, Authorizer::any(), DIAL)
            .await
            .unwrap();
        let (mut reader, mut writer) = flow.into_split();
        writer.write_msg(&[b"x"]).await.unwrap();
        let tx = tx.clone();
        flows.push(writer);
        tokio::spawn(async move {
            let _ = tx.send(reader.read_msg().await);
        });
    }
    // Queued flows never answer; refused ones answer at once with an error.
    let refused = bounded("a refusal", async {
        loop {
            if let Some(Err(e)) = rx.recv().await {
                break Some(e);
            }
        }
    })
    .await;
    let err = refused.expect("a flow was refused as busy");
    assert_eq!(err.reason(), &Reason::Busy(Duration::from_secs(3)), "{err}");
    assert_eq!(err.kind(), ErrorKind::Network);
}
