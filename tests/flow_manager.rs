//! The flow manager end to end: real QUIC on loopback with real keys, and the same
//! scenarios over the in-process `mem` protocol where they apply.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Transport, bounded, init_tracing};
use flow::{Authorizer, Endpoint, ErrorKind, Identity, ManagerConfig, Reason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DIAL: Duration = Duration::from_secs(10);

on_every_transport!(
    dial_accept_and_echo,
    many_concurrent_flows_share_one_connection,
    large_message_round_trip,
    server_opens_a_flow_back_over_the_dialed_connection,
    server_refuses_an_untrusted_client,
    client_refuses_an_untrusted_server,
    pinned_key_mismatch_is_not_trusted,
    dial_where_nothing_listens_fails_within_the_timeout,
    stop_listening_ends_accepts,
    close_fails_open_flows_on_both_sides,
    idle_connections_are_evicted,
    dial_cached_uses_only_the_cache,
    oversized_message_is_refused_by_the_reader,
    raw_byte_streams_and_clean_end,
    whole_buffers_are_sent_intact,
);

async fn dial_accept_and_echo(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    assert_eq!(server.status().endpoints, vec![endpoint.clone()]);
    let client = t.manager(ManagerConfig::default());
    let echo = tokio::spawn({
        let server = server.clone();
        async move {
            let mut flow = server.accept().await.unwrap();
            while let Some(msg) = flow.read_msg().await.unwrap() {
                flow.write_msg(&[b"echo:", &msg]).await.unwrap();
            }
            flow.remote_identity()
        }
    });
    let pinned = Authorizer::pinned(server.identity().public_key());
    let mut flow = bounded("dial", client.dial(&endpoint, pinned, DIAL))
        .await
        .unwrap();
    assert_eq!(flow.remote_identity(), server.identity().public_key());
    assert_eq!(flow.remote_endpoint().protocol(), t.name());
    for text in ["one", "two", ""] {
        flow.write_msg(&[text.as_bytes()]).await.unwrap();
        let reply = bounded("echo", flow.read_msg()).await.unwrap().unwrap();
        assert_eq!(reply, format!("echo:{text}").as_bytes());
    }
    flow.shutdown().await.unwrap();
    let seen_by_server = bounded("server", echo).await.unwrap();
    assert_eq!(seen_by_server, client.identity().public_key());
    assert!(flow.read_msg().await.unwrap().is_none(), "clean end");
    if let Transport::Quic = t {
        assert!(flow.conn().rtt().is_some());
        let port: u16 = endpoint
            .address()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(port, 0, "status reports the real port");
    }
}

async fn many_concurrent_flows_share_one_connection(t: Transport) {
    const FLOWS: usize = 200;
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let server_task = tokio::spawn({
        let server = server.clone();
        async move {
            let mut handlers = Vec::new();
            for _ in 0..FLOWS {
                let mut flow = server.accept().await.unwrap();
                handlers.push(tokio::spawn(async move {
                    let msg = flow.read_msg().await.unwrap().unwrap();
                    flow.write_msg_and_close(&[&msg]).await.unwrap();
                }));
            }
            for h in handlers {
                h.await.unwrap();
            }
        }
    });
    let mut dials = Vec::new();
    for i in 0..FLOWS {
        let client = client.clone();
        let endpoint = endpoint.clone();
        dials.push(tokio::spawn(async move {
            let mut flow = client
                .dial(&endpoint, Authorizer::any(), DIAL)
                .await
                .unwrap();
            let payload = format!("flow {i}");
            flow.write_msg(&[payload.as_bytes()]).await.unwrap();
            let back = flow.read_msg().await.unwrap().unwrap();
            assert_eq!(back, payload.as_bytes());
            flow.local_endpoint().clone()
        }));
    }
    let mut locals = Vec::new();
    for d in dials {
        locals.push(bounded("flow", d).await.unwrap());
    }
    bounded("server", server_task).await.unwrap();
    locals.dedup();
    assert_eq!(locals.len(), 1, "all flows on one local endpoint");
    assert_eq!(client.connections().len(), 1, "the client dialed once");
    assert_eq!(server.connections().len(), 1, "the server accepted once");
}

async fn large_message_round_trip(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let message: Vec<u8> = (0..16u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    let server_task = tokio::spawn({
        let server = server.clone();
        async move {
            let mut flow = server.accept().await.unwrap();
            let msg = flow.read_msg().await.unwrap().unwrap();
            flow.write_msg_and_close(&[&msg]).await.unwrap();
        }
    });
    let mut flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    let (head, tail) = message.split_at(1 << 20);
    flow.write_msg(&[head, tail]).await.unwrap();
    let back = bounded("16 MiB echo", flow.read_msg())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), message.len());
    assert!(back == message, "echoed bytes differ");
    server_task.await.unwrap();
}

/// Messages and raw bytes sent as whole `Bytes` buffers (handed to QUIC without a
/// copy, copied by the other protocols) arrive exactly as messages and bytes sent
/// from slices do, in order, with other writes between them.
async fn whole_buffers_are_sent_intact(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let big = bytes::Bytes::from(
        (0..3u32 << 20)
            .map(|i| (i * 13 + i / 7919) as u8)
            .collect::<Vec<u8>>(),
    );
    let server_task = tokio::spawn({
        let server = server.clone();
        async move {
            let mut flow = server.accept().await.unwrap();
            let first = flow.read_msg().await.unwrap().unwrap();
            let second = flow.read_msg().await.unwrap().unwrap();
            let mut rest = Vec::new();
            flow.read_to_end(&mut rest).await.unwrap();
            (first, second, rest)
        }
    });
    let mut flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    flow.write_msg_bytes(&mut [
        bytes::Bytes::from_static(b"head:"),
        big.slice(..1 << 20),
        big.slice(1 << 20..),
    ])
    .await
    .unwrap();
    flow.write_msg(&[b"between"]).await.unwrap();
    let (_reader, mut writer) = flow.into_split();
    writer
        .write_chunks(&mut [big.slice(..5), bytes::Bytes::new(), big.slice(5..100_000)])
        .await
        .unwrap();
    writer.shutdown().await.unwrap();
    let (first, second, rest) = bounded("whole buffers", server_task).await.unwrap();
    assert_eq!(first.len(), 5 + big.len());
    assert!(
        first[..5] == b"head:"[..] && first[5..] == big[..],
        "message bytes differ"
    );
    assert_eq!(&second[..], b"between");
    assert!(rest[..] == big[..100_000], "raw bytes differ");
}

async fn server_opens_a_flow_back_over_the_dialed_connection(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let mut first = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    first.write_msg(&[b"hello"]).await.unwrap();
    let at_server = bounded("accept", server.accept()).await.unwrap();
    if !t.server_opens_flows() {
        // HTTP/2: only clients open streams; the server is told so, clearly.
        let err = at_server.conn().open_flow().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArg, "{err}");
        return;
    }
    let mut back = at_server.conn().open_flow().await.unwrap();
    back.write_msg(&[b"from server"]).await.unwrap();
    let mut at_client = bounded("accept on the dialer", client.accept())
        .await
        .unwrap();
    assert_eq!(at_client.remote_identity(), server.identity().public_key());
    assert!(at_client.conn().is_dialed());
    assert_eq!(
        at_client.read_msg().await.unwrap().as_deref(),
        Some(&b"from server"[..])
    );
    assert_eq!(client.connections().len(), 1, "no second connection");
}

async fn server_refuses_an_untrusted_client(t: Transport) {
    let trusted = Identity::generate();
    let mut config = ManagerConfig::default();
    config.accept_authorizer(Authorizer::allow([trusted.public_key()]));
    let (server, endpoint) = t.server(config).await;

    let stranger = t.manager(ManagerConfig::default());
    let err = bounded("dial", stranger.dial(&endpoint, Authorizer::any(), DIAL))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotTrusted, "{err}");
    assert_eq!(err.reason(), &Reason::RefusedByPeer);
    assert!(stranger.connections().is_empty());

    // Nothing reached the server's application.
    let nothing = tokio::time::timeout(Duration::from_millis(300), server.accept()).await;
    assert!(nothing.is_err(), "an untrusted flow was accepted");
    assert!(server.connections().is_empty());

    // The trusted key still gets in.
    let friend = t.manager_as(trusted, ManagerConfig::default());
    let mut flow = friend
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    flow.write_msg(&[b"hi"]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();
    assert_eq!(
        accepted.read_msg().await.unwrap().as_deref(),
        Some(&b"hi"[..])
    );
}

async fn client_refuses_an_untrusted_server(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let someone_else = Identity::generate().public_key();
    let err = bounded(
        "dial",
        client.dial(&endpoint, Authorizer::allow([someone_else]), DIAL),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotTrusted, "{err}");
    assert_eq!(
        err.reason(),
        &Reason::NotAuthorized(server.identity().public_key())
    );
    assert_eq!(err.endpoint(), Some(endpoint.to_string().as_str()));
    assert!(client.connections().is_empty());
}

async fn pinned_key_mismatch_is_not_trusted(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let expected = Identity::generate().public_key();
    let err = client
        .dial(&endpoint, Authorizer::pinned(expected), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotTrusted);
    assert_eq!(
        err.reason(),
        &Reason::PinMismatch {
            expected,
            actual: server.identity().public_key()
        }
    );
    // A cached connection to the same address is not reused for a pin it fails.
    let _ok = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    let err = client
        .dial(&endpoint, Authorizer::pinned(expected), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotTrusted);
}

/// How a dial learns that nothing listens: TCP (and the in-process protocol)
/// are refused at once; a closed UDP port says nothing, so QUIC times out.
fn nothing_listening(t: &Transport) -> ErrorKind {
    match t {
        Transport::Quic => ErrorKind::DialFailed,
        _ => ErrorKind::Refused,
    }
}

async fn dial_where_nothing_listens_fails_within_the_timeout(t: Transport) {
    let client = t.manager(ManagerConfig::default());
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = client
        .dial(&t.dead_endpoint(), Authorizer::any(), timeout)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), nothing_listening(&t), "{err}");
    // Bounded by the timeout (with wide slack for a loaded machine), not by QUIC's
    // idle timeout.
    assert!(started.elapsed() < timeout + Duration::from_secs(5));
    assert!(client.connections().is_empty());
}

async fn stop_listening_ends_accepts(t: Transport) {
    let server = t.manager(ManagerConfig::default());
    let mut handle = server.listen(t.name(), &t.listen_address()).await.unwrap();
    let endpoint = handle.endpoint().clone();
    let mut status = server.watch_status();
    status.borrow_and_update();
    let client = t.manager(ManagerConfig::default());
    let mut before = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    before.write_msg(&[b"before"]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();

    server.stop_listening();
    assert_eq!(handle.stopped().await.reason(), &Reason::NotListening);
    bounded("status change", status.changed()).await.unwrap();
    assert!(status.borrow().endpoints.is_empty());
    assert!(server.status().endpoints.is_empty());

    let newcomer = t.manager(ManagerConfig::default());
    let err = newcomer
        .dial(&endpoint, Authorizer::any(), Duration::from_millis(500))
        .await
        .unwrap_err();
    // A TCP connection that reached the closing listener's queue is reset
    // rather than refused.
    assert!(
        err.kind() == nothing_listening(&t) || err.kind() == ErrorKind::DialFailed,
        "{err}"
    );

    // The connection made before keeps working.
    assert_eq!(
        accepted.read_msg().await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    accepted.write_msg(&[b"still here"]).await.unwrap();
    assert_eq!(
        before.read_msg().await.unwrap().as_deref(),
        Some(&b"still here"[..])
    );
}

async fn close_fails_open_flows_on_both_sides(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let mut flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    flow.write_msg(&[b"x"]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();
    assert_eq!(
        accepted.read_msg().await.unwrap().as_deref(),
        Some(&b"x"[..])
    );

    client.close();
    bounded("closed", client.closed()).await;
    let local = bounded("client read", flow.read_msg()).await.unwrap_err();
    assert_eq!(local.kind(), ErrorKind::Aborted, "{local}");
    let remote = bounded("server read", accepted.read_msg())
        .await
        .unwrap_err();
    if let Transport::Https = t {
        // HTTP/2 carries no close reason: the peer sees the connection go.
        assert!(
            matches!(remote.kind(), ErrorKind::Aborted | ErrorKind::Network),
            "{remote}"
        );
    } else {
        assert_eq!(remote.kind(), ErrorKind::Aborted, "{remote}");
        assert!(
            matches!(remote.reason(), Reason::ClosedByPeer(_)),
            "{remote}"
        );
    }

    assert_eq!(
        client.accept().await.unwrap_err().kind(),
        ErrorKind::BadState
    );
    let err = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), &Reason::ManagerClosed);
    assert!(client.status().closed);
    assert!(client.connections().is_empty());
}

async fn idle_connections_are_evicted(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let mut config = ManagerConfig::default();
    config.idle_timeout(Duration::from_millis(200));
    let client = t.manager(config);

    let mut busy = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    busy.write_msg(&[b"keep"]).await.unwrap();
    let conn = busy.conn().clone();
    let used = conn.last_used();
    // An open flow keeps the connection even when it is quiet.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!conn.is_closed(), "evicted while a flow was open");
    assert_eq!(conn.active_flows(), 1);

    drop(busy);
    assert!(conn.last_used() > used, "closing a flow counts as use");
    let why = bounded("eviction", conn.closed()).await;
    assert_eq!(why.kind(), ErrorKind::Aborted, "{why}");
    assert!(client.connections().is_empty());

    // The server sees the connection go away too.
    bounded("server side closes", async {
        while !server.connections().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A new dial makes a new connection.
    let mut again = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    again.write_msg(&[b"again"]).await.unwrap();
    assert!(!again.conn().is_closed());
}

async fn dial_cached_uses_only_the_cache(t: Transport) {
    let (_server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let err = client
        .dial_cached(&endpoint, Authorizer::any())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), &Reason::NotCached);
    assert_eq!(err.kind(), ErrorKind::BadState);

    let first = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    let second = client
        .dial_cached(&endpoint, Authorizer::any())
        .await
        .unwrap();
    assert_eq!(first.local_endpoint(), second.local_endpoint());
    assert_eq!(client.connections().len(), 1);
    assert_eq!(first.conn().active_flows(), 2);
}

async fn oversized_message_is_refused_by_the_reader(t: Transport) {
    let mut config = ManagerConfig::default();
    config.max_msg_size(1024);
    let (server, endpoint) = t.server(config).await;
    let client = t.manager(ManagerConfig::default());
    let mut flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    flow.write_msg(&[&[7u8; 1024]]).await.unwrap();
    flow.write_msg(&[&[7u8; 1025]]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();
    assert_eq!(accepted.max_msg_size(), 1024);
    assert_eq!(accepted.read_msg().await.unwrap().unwrap().len(), 1024);
    let err = accepted.read_msg().await.unwrap_err();
    assert_eq!(
        err.reason(),
        &Reason::MessageTooLarge {
            len: 1025,
            max: 1024
        }
    );
}

async fn raw_byte_streams_and_clean_end(t: Transport) {
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let (mut from_server, mut to_server) = flow.into_split();
    // More than any flow buffer: the server must read while we write.
    let sender = tokio::spawn({
        let data = data.clone();
        async move {
            to_server.write_all(&data).await.unwrap();
            to_server.shutdown().await.unwrap();
        }
    });
    let accepted = bounded("accept", server.accept()).await.unwrap();
    let (mut reader, mut writer) = accepted.into_split();
    let mut received = Vec::new();
    bounded("read to end", reader.read_to_end(&mut received))
        .await
        .unwrap();
    assert!(received == data);
    sender.await.unwrap();
    writer.write_msg_and_close(&[b"done"]).await.unwrap();
    assert_eq!(
        from_server.read_msg().await.unwrap().as_deref(),
        Some(&b"done"[..])
    );
    assert!(from_server.read_msg().await.unwrap().is_none());
}

#[tokio::test]
async fn malformed_endpoints_and_unknown_protocols_are_bad_args() {
    init_tracing();
    for bad in [
        "",
        "quic://",
        "quic://host port:1",
        "Quic://h:1",
        "quic://a://b",
    ] {
        let err = bad.parse::<Endpoint>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadArg, "{bad:?}");
    }
    let client = Transport::quic().manager(ManagerConfig::default());
    let unknown: Endpoint = "carrier-pigeon://coop:1".parse().unwrap();
    let err = client
        .dial(&unknown, Authorizer::any(), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg);
    assert_eq!(
        err.reason(),
        &Reason::UnknownProtocol("carrier-pigeon".into())
    );
    let err = client.listen("carrier-pigeon", "coop:1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg);
    let bare: Endpoint = "127.0.0.1:9".parse().unwrap();
    let err = client
        .dial(&bare, Authorizer::any(), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), &Reason::UnknownProtocol(String::new()));
    let err = client.listen("quic", "not an address").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg, "{err}");
}

#[tokio::test]
async fn unresolvable_host_is_a_resolve_failure() {
    init_tracing();
    let client = Transport::quic().manager(ManagerConfig::default());
    let endpoint: Endpoint = "quic://no-such-host.invalid:4433".parse().unwrap();
    let err = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResolveFailed, "{err}");
}

#[tokio::test]
async fn registry_replace_alias_and_unknown() {
    init_tracing();
    let mut registry = flow::Registry::default();
    assert_eq!(registry.protocols(), vec!["https", "quic"]);
    let mem = Arc::new(flow::MemProtocol::new());
    assert!(!registry.register("mem", mem.clone(), &["inproc", "local"]));
    assert!(registry.get("inproc").is_some());
    assert!(registry.get("local").is_some());
    // Replacing drops the old aliases and reports the replacement.
    assert!(registry.register("mem", mem.clone(), &["inproc"]));
    assert!(registry.get("local").is_none());
    assert!(registry.get("inproc").is_some());
    assert_eq!(registry.protocols(), vec!["https", "mem", "quic"]);
    assert!(!registry.get("quic").unwrap().properties().is_tcp());
    assert!(registry.get("quic").unwrap().properties().is_udp());
    assert!(registry.get("https").unwrap().properties().is_tcp());
    assert!(!registry.get("https").unwrap().properties().is_udp());

    let err = registry.register_unknown("nope", mem.clone()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg);
    registry.register_unknown("mem", mem.clone()).unwrap();

    // Bare endpoints and aliases reach the registered protocol.
    let server = flow::Manager::new(
        Identity::generate(),
        registry.clone(),
        ManagerConfig::default(),
    )
    .unwrap();
    let handle = server.listen("inproc", "bare-server").await.unwrap();
    assert_eq!(handle.endpoint().to_string(), "mem://bare-server");
    let client =
        flow::Manager::new(Identity::generate(), registry, ManagerConfig::default()).unwrap();
    let bare: Endpoint = "bare-server".parse().unwrap();
    let mut flow = client.dial(&bare, Authorizer::any(), DIAL).await.unwrap();
    flow.write_msg(&[b"via unknown"]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();
    assert_eq!(
        accepted.read_msg().await.unwrap().as_deref(),
        Some(&b"via unknown"[..])
    );
    let alias: Endpoint = "inproc://bare-server".parse().unwrap();
    client.dial(&alias, Authorizer::any(), DIAL).await.unwrap();
    assert_eq!(
        client.connections().len(),
        1,
        "alias and bare share one connection"
    );
}

#[tokio::test]
async fn listening_twice_and_status_changes() {
    init_tracing();
    let t = Transport::quic();
    let server = t.manager(ManagerConfig::default());
    let mut watch = server.watch_status();
    watch.borrow_and_update();
    let a = server.listen("quic", "127.0.0.1:0").await.unwrap();
    bounded("status change", watch.changed()).await.unwrap();
    let b = server.listen("quic", "[::1]:0").await;
    let mut expected = vec![a.endpoint().clone()];
    if let Ok(b) = &b {
        expected.push(b.endpoint().clone());
    }
    assert_eq!(server.status().endpoints, expected);
    let err = server
        .listen("quic", a.endpoint().address())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArg, "port in use: {err}");
    server.close();
    let status = server.status();
    assert!(status.closed && status.endpoints.is_empty());
    assert_eq!(
        server
            .listen("quic", "127.0.0.1:0")
            .await
            .unwrap_err()
            .reason(),
        &Reason::ManagerClosed
    );
}

#[tokio::test]
async fn dropping_the_last_manager_handle_closes_it() {
    init_tracing();
    let t = Transport::quic();
    let (server, endpoint) = t.server(ManagerConfig::default()).await;
    let client = t.manager(ManagerConfig::default());
    let mut flow = client
        .dial(&endpoint, Authorizer::any(), DIAL)
        .await
        .unwrap();
    flow.write_msg(&[b"x"]).await.unwrap();
    let mut accepted = bounded("accept", server.accept()).await.unwrap();
    accepted.read_msg().await.unwrap();
    drop(client);
    let err = bounded("server read", accepted.read_msg())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted, "{err}");
}
