//! A listener's admission limits (RELIABILITY.md promises 8 and 9): established
//! connections are capped in total and per source, anonymous HTTPS connections
//! are short-lived, HTTP/1 headers must arrive in time, one source cannot take
//! every handshake slot, and QUIC asks for address validation under load. Each
//! test floods from 127.0.0.2 and checks that an honest client on 127.0.0.1 still
//! gets through, or that the flood's connections are closed.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{anonymous_tls, bounded, init_tracing};
use flow::{
    Authorizer, Endpoint, HttpsConfig, HttpsProtocol, Identity, ListenLimits, Manager,
    ManagerConfig, QuicConfig, QuicProtocol, Registry,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Where floods come from; honest clients use 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";

fn registry_with(limits: &ListenLimits) -> Registry {
    let mut registry = Registry::default();
    let mut quic = QuicConfig::default();
    quic.listen_limits(limits.clone());
    let mut https = HttpsConfig::default();
    https.listen_limits(limits.clone());
    registry.register("quic", Arc::new(QuicProtocol::new(quic)), &[]);
    registry.register("https", Arc::new(HttpsProtocol::new(https)), &[]);
    registry
}

/// A server on `protocol` with `limits`, answering every flow's first message.
async fn echo_server(protocol: &str, limits: &ListenLimits) -> (Manager, Endpoint) {
    let server = Manager::new(
        Identity::generate(),
        registry_with(limits),
        ManagerConfig::default(),
    )
    .unwrap();
    let endpoint = server
        .listen(protocol, "127.0.0.1:0")
        .await
        .unwrap()
        .endpoint()
        .clone();
    tokio::spawn({
        let server = server.clone();
        async move {
            while let Ok(mut flow) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(Some(msg)) = flow.read_msg().await {
                        let _ = flow.write_msg_and_close(&[&msg]).await;
                    }
                });
            }
        }
    });
    (server, endpoint)
}

fn socket_addr(endpoint: &Endpoint) -> SocketAddr {
    endpoint.address().parse().unwrap()
}

/// An honest client on 127.0.0.1 dials and round-trips one message.
async fn honest_round_trip(server: &Manager, endpoint: &Endpoint) -> flow::Result<()> {
    let client = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let pinned = Authorizer::pinned(server.identity().public_key());
    let mut flow = client
        .dial(endpoint, pinned, Duration::from_secs(5))
        .await?;
    flow.write_msg(&[b"still here"]).await?;
    let echoed = flow.read_msg().await?;
    assert_eq!(echoed.as_deref(), Some(&b"still here"[..]));
    Ok(())
}

/// A TCP connection from the attacker's address that sends nothing.
async fn silent_tcp(to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{ATTACKER}:0").parse().unwrap())
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `stream` within `within`.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    let mut sink = [0u8; 512];
    let read = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_stalled_handshakes_from_one_source_leave_room_for_others() {
    init_tracing();
    let mut limits = ListenLimits::default();
    limits.max_handshakes(32).max_handshakes_per_source(8);
    let (server, endpoint) = echo_server("https", &limits).await;
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(silent_tcp(socket_addr(&endpoint)).await);
    }
    // The listener has taken every connection of the flood in by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bounded("honest dial", honest_round_trip(&server, &endpoint))
        .await
        .expect("an honest client gets a handshake slot during the flood");
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_connections_are_capped_in_total_and_per_source() {
    init_tracing();
    let mut limits = ListenLimits::default();
    limits.max_connections(6).max_connections_per_source(4);
    let (server, endpoint) = echo_server("https", &limits).await;
    let addr = socket_addr(&endpoint);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(silent_tcp(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = silent_tcp(addr).await;
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)).await,
        "a fifth connection from one source is closed at once"
    );
    // Other sources still get in, up to the total.
    bounded("honest dial", honest_round_trip(&server, &endpoint))
        .await
        .expect("another source is under its own limit");
    // The honest connection's slot comes back once the server sees it end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        let mut local = TcpStream::connect(addr).await.unwrap();
        assert!(
            !closed_within(&mut local, Duration::from_millis(200)).await,
            "a connection within the total is admitted"
        );
        held.push(local);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "a connection beyond the listener's total is closed at once"
    );
    // Slots come back when connections end.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bounded("honest dial", honest_round_trip(&server, &endpoint))
        .await
        .expect("freed slots admit new connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_https_connections_are_short_lived_whatever_they_do() {
    init_tracing();
    let mut limits = ListenLimits::default();
    limits.anonymous_lifetime(Duration::from_secs(1));
    let (_server, endpoint) = echo_server("https", &limits).await;
    let port = socket_addr(&endpoint).port();
    // Silent after the TLS handshake, with and without ALPN.
    let mut silent_h2 = anonymous_tls(port, &[b"h2"]).await;
    let mut silent_none = anonymous_tls(port, &[]).await;
    // An HTTP/2 client that keeps its connection busy with PINGs is no different:
    // send the preface and a PING every 200 ms.
    let mut pinging = anonymous_tls(port, &[b"h2"]).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    pinging.write_all(preface).await.unwrap();
    let pings = tokio::spawn(async move {
        let ping = b"\0\0\x08\x06\0\0\0\0\0\x01\x02\x03\x04\x05\x06\x07\x08";
        let mut sink = [0u8; 256];
        loop {
            if pinging.write_all(ping).await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(200), pinging.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
    });
    for (what, stream) in [("silent h2", &mut silent_h2), ("no ALPN", &mut silent_none)] {
        assert!(
            closed_within(stream, Duration::from_secs(4)).await,
            "{what}: an anonymous connection is closed after its lifetime"
        );
    }
    let ended = tokio::time::timeout(Duration::from_secs(4), pings).await;
    assert!(
        matches!(ended, Ok(Ok(true))),
        "a pinging anonymous connection is closed after its lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_headers_must_arrive_within_the_handshake_timeout() {
    init_tracing();
    let mut limits = ListenLimits::default();
    // The lifetime is long, so only the header-read timeout can close it.
    limits
        .anonymous_lifetime(Duration::from_secs(120))
        .handshake_timeout(Duration::from_secs(1));
    let (_server, endpoint) = echo_server("https", &limits).await;
    let port = socket_addr(&endpoint).port();
    let mut half = anonymous_tls(port, &[b"http/1.1"]).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).await,
        "half an HTTP/1.1 request is cut off by the header-read timeout"
    );
}

/// Stalled QUIC handshakes from the attacker's address: each is a real client
/// Initial, relayed once from its own UDP port on 127.0.0.2, with every answer
/// dropped, so the server's half-open connection waits for its handshake timeout
/// (and a Retry is never echoed). Returns once every Initial was relayed.
async fn stalled_quic_handshakes(to: SocketAddr, count: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let relayed = Arc::new(AtomicUsize::new(0));
    let dialer = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpSocket::bind(format!("{ATTACKER}:0")).await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let relayed = relayed.clone();
        tasks.push(tokio::spawn(async move {
            let mut datagram = vec![0u8; 65_535];
            let Ok((n, _)) = front.recv_from(&mut datagram).await else {
                return;
            };
            let _ = relay.send_to(&datagram[..n], to).await;
            relayed.fetch_add(1, Ordering::SeqCst);
            // Keep both sockets, and answer nothing, for the rest of the test.
            std::future::pending::<()>().await;
        }));
        let dialer = dialer.clone();
        tasks.push(tokio::spawn(async move {
            let endpoint = Endpoint::new("quic", &front_addr.to_string()).unwrap();
            let _ = dialer
                .dial(&endpoint, Authorizer::any(), Duration::from_secs(60))
                .await;
        }));
    }
    bounded("relaying the flood", async {
        while relayed.load(Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The server has read every Initial by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_stalled_handshakes_from_one_source_leave_room_for_others() {
    init_tracing();
    let mut limits = ListenLimits::default();
    limits
        .max_handshakes(32)
        .max_handshakes_per_source(8)
        .validate_addresses_above(usize::MAX)
        .handshake_timeout(Duration::from_secs(30));
    let (server, endpoint) = echo_server("quic", &limits).await;
    let flood = stalled_quic_handshakes(socket_addr(&endpoint), 40).await;
    bounded("honest dial", honest_round_trip(&server, &endpoint))
        .await
        .expect("an honest client gets a handshake slot during the flood");
    flood.iter().for_each(|t| t.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_asks_for_address_validation_under_load() {
    init_tracing();
    let mut limits = ListenLimits::default();
    // No per-source limit to help: only Retry keeps the flood out.
    limits
        .max_handshakes(32)
        .max_handshakes_per_source(1000)
        .validate_addresses_above(8)
        .handshake_timeout(Duration::from_secs(30));
    let (server, endpoint) = echo_server("quic", &limits).await;
    let flood = stalled_quic_handshakes(socket_addr(&endpoint), 40).await;
    bounded("honest dial", honest_round_trip(&server, &endpoint))
        .await
        .expect("an honest client answers the Retry and gets a slot");
    flood.iter().for_each(|t| t.abort());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_offers_version_1_only() {
    init_tracing();
    let (_server, endpoint) = echo_server("quic", &ListenLimits::default()).await;
    // A long-header packet of an unknown version, padded to 1200 bytes, draws a
    // Version Negotiation packet listing what the server speaks.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut packet = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    packet.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    packet.push(8);
    packet.extend_from_slice(&[9, 10, 11, 12, 13, 14, 15, 16]);
    packet.resize(1200, 0);
    probe
        .send_to(&packet, socket_addr(&endpoint))
        .await
        .unwrap();
    let mut reply = [0u8; 1500];
    let (n, _) = bounded("version negotiation", probe.recv_from(&mut reply))
        .await
        .unwrap();
    let reply = &reply[..n];
    assert_eq!(&reply[1..5], &[0, 0, 0, 0], "a Version Negotiation packet");
    let dcid_len = usize::from(reply[5]);
    let scid_len = usize::from(reply[6 + dcid_len]);
    let versions: Vec<u32> = reply[7 + dcid_len + scid_len..]
        .chunks_exact(4)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        .collect();
    let real: Vec<u32> = versions
        .iter()
        .copied()
        // Reserved "greasing" versions (0x?a?a?a?a) carry no meaning.
        .filter(|v| v & 0x0f0f_0f0f != 0x0a0a_0a0a)
        .collect();
    assert_eq!(real, vec![1], "offered versions: {versions:x?}");
}
