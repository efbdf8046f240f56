//! Registering your own protocol: `tls-tcp`, TLS 1.3 over plain TCP, next to the
//! built-in QUIC.
//!
//! Run it with `cargo run --example custom_protocol` (prefix `RUST_LOG=debug` to watch
//! the protocol work); `cargo test --example custom_protocol` runs its tests.
//!
//! # The design
//!
//! TCP carries a single byte stream. Multiplexing many flows over it would need a
//! framing layer with its own flow control, and one slow flow would stall the others
//! (head-of-line blocking). This protocol follows the TAPS "Clone" rule instead:
//! **every flow gets its own TCP+TLS connection** to the peer, and a [`Conn`] is the
//! group of connections made by one dial.
//!
//! - [`Protocol::dial`] makes the first TCP+TLS connection, which becomes the first
//!   flow. Each later [`Conn::open_flow`] makes a fresh connection to the same address
//!   and checks that the server proves the same key.
//! - The [`Listener`] turns every incoming TCP+TLS connection into a [`Conn`] whose one
//!   flow is that connection; the conn ends when its flow does. TCP gives no way back
//!   (the dialer accepts no connections), so the listening side cannot open flows, and
//!   the dialing side's [`Conn::accept_flow`] only waits for the conn to close.
//! - A flow is the TLS stream itself ([`Flow::write_msg`] flushes each message out of
//!   rustls' buffer). Its two halves share the stream through a small wrapper that
//!   fails once the conn is closed; closing also drops the streams, so the peer's flows
//!   fail too. A dropped flow ends cleanly, with `close_notify` and then FIN.
//! - The TLS configurations from [`DialContext`] and [`ListenContext`] carry the
//!   Ed25519 verifiers and consult the authorizers, so this file does no cryptography.
//!   The server issues no session tickets: the authorizer judges every connection.
//!
//! # Limits, compared with QUIC
//!
//! - A TLS 1.3 client finishes its handshake before the server has judged the client's
//!   certificate, so a server that refuses us shows up on the first read of the flow
//!   (as [`ErrorKind::NotTrusted`]), not in `dial`; the conn is then closed. The QUIC
//!   protocol avoids this with a confirmation stream, at the cost of a round trip.
//! - Plain TLS has nowhere to carry a close code or reason: a peer whose conn is closed
//!   sees its flows fail with a network error.
//! - No round-trip time is measured ([`Conn::rtt`] is `None`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use flow::identity::{TLS_SERVER_NAME, key_from_certificates};
use flow::{
    Authorizer, CloseCode, Conn, DialContext, Endpoint, Error, ErrorKind, Flow, Identity,
    ListenContext, Listener, Manager, ManagerConfig, PeerKey, Properties, Protocol, RawFlow,
    Reason, Registry,
};
use rustls::AlertDescription::{AccessDenied, BadCertificate};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The ALPN id both sides insist on, so a `tls-tcp` peer never mistakes some other
/// TLS service on the same port for one of its own.
const ALPN: &[u8] = b"tls-tcp-example";

/// How long an incoming handshake, or a dropped flow's `close_notify`, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the example and its tests give any one dial.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the example's client sends; the server answers each with `echo: ` + message.
const MESSAGES: [&str; 3] = ["hello", "one TCP+TLS connection per flow", "bye"];

/// The `tls-tcp` protocol: TLS 1.3 over TCP, one TCP+TLS connection per flow.
#[derive(Clone, Debug, Default)]
pub struct TlsTcpProtocol;

#[async_trait]
impl Protocol for TlsTcpProtocol {
    fn properties(&self) -> Properties {
        // Not multistreaming: each flow costs a TCP and a TLS handshake, but flows
        // cannot block each other.
        Properties::new().tcp(true)
    }

    // `resolve` keeps its default (`host:port` through the system resolver); the
    // manager calls `dial` with each resolved `ip:port` in turn.

    async fn dial(
        &self,
        ctx: &DialContext,
        _protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> flow::Result<Arc<dyn Conn>> {
        let redial = Redial {
            // One configuration, so one verifier, for every connection of the conn.
            config: Arc::new(ctx.tls_client_config(&[ALPN])?),
            ctx: ctx.clone(),
            address: address.to_string(),
            timeout,
        };
        let tls = redial.connect().await?;
        Ok(Arc::new(TlsTcpConn::new(tls, Some(redial))?))
    }

    async fn listen(
        &self,
        ctx: &ListenContext,
        _protocol: &str,
        address: &str,
    ) -> flow::Result<Box<dyn Listener>> {
        let tcp = TcpListener::bind(address).await.map_err(|e| {
            let why = format!("tls-tcp: cannot listen on {address}: {e}");
            Error::protocol(ErrorKind::BadArg, why).with_source(e)
        })?;
        Ok(Box::new(TlsTcpListener {
            local: tcp.local_addr()?,
            tcp,
            config: Arc::new(ctx.tls_server_config(&[ALPN])?),
            handshakes: Default::default(),
            stop: CancellationToken::new(),
        }))
    }
}

/// What the dialing side keeps to make one more TCP+TLS connection per flow.
#[derive(Debug)]
struct Redial {
    /// The client side of TLS: our certificate and the server verifier.
    config: Arc<ClientConfig>,
    /// Kept for [`DialContext::take_refusal`] after a failed handshake.
    ctx: DialContext,
    /// The resolved `ip:port` of the server.
    address: String,
    /// The dial's timeout, for each connection (TCP plus TLS).
    timeout: Duration,
}

impl Redial {
    /// Makes one TCP+TLS connection to a server the authorizer trusts.
    async fn connect(&self) -> flow::Result<TlsStream<TcpStream>> {
        let failed = |e: io::Error| {
            let why = format!("tls-tcp: {}: {e}", self.address);
            Error::new(Reason::ConnectFailed(why)).with_source(e)
        };
        let connecting = async {
            let tcp = TcpStream::connect(&self.address).await.map_err(failed)?;
            // Flows exchange small messages; Nagle's algorithm would hold them back.
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(TLS_SERVER_NAME)
                .map_err(|e| Error::new(Reason::BadConfig(e.to_string())))?;
            let connector = TlsConnector::from(self.config.clone());
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                // rustls reduces our verifier's refusal (pin mismatch, unauthorized
                // key, bad signature) to an alert; the context kept the real reason.
                match self.ctx.take_refusal() {
                    Some(refusal) => refusal.with_source(e),
                    None => failed(e),
                }
            })?;
            Ok(tls.into())
        };
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(Error::new(Reason::Timeout(self.timeout))),
        }
    }
}

/// The key the peer proved in the TLS handshake (the verifier checked it already).
fn peer_key(tls: &TlsStream<TcpStream>) -> flow::Result<PeerKey> {
    key_from_certificates(tls.get_ref().1.peer_certificates().unwrap_or_default())
}

/// Locks a mutex, ignoring poisoning: each lock here guards a single take, push or
/// poll, so a panic leaves nothing half-updated that later code relies on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a conn shares with its flows.
#[derive(Debug, Default)]
struct Link {
    /// Cancelled when the conn closes: by [`Conn::close`], when the peer refuses us,
    /// or on the listening side when its one flow ends.
    closed: CancellationToken,
    /// Why the conn closed; set before `closed` is cancelled.
    why: OnceLock<Error>,
    /// The conn's flows, for closing to tear their connections down.
    flows: Mutex<Vec<Weak<FlowStream>>>,
}

impl Link {
    /// Closes the conn: its flows fail, and their TLS streams are dropped without
    /// `close_notify`, so the peer's flows fail too. Only the first `why` is kept.
    fn close(&self, why: Error) {
        let _ = self.why.set(why);
        self.closed.cancel();
        for flow in lock(&self.flows).drain(..) {
            if let Some(flow) = flow.upgrade() {
                drop(lock(&flow.tls).take());
            }
        }
    }

    /// Why the conn closed.
    fn error(&self) -> Error {
        let closed = || Error::protocol(ErrorKind::Aborted, "tls-tcp: closed");
        self.why.get().cloned().unwrap_or_else(closed)
    }
}

/// A `tls-tcp` connection: on the dialing side the group of TCP+TLS connections of one
/// dial, on the listening side one TCP+TLS connection carrying one flow.
#[derive(Debug)]
struct TlsTcpConn {
    /// Shared with the flows.
    link: Arc<Link>,
    /// The key the peer proved in the TLS handshake.
    remote_key: PeerKey,
    /// Our `ip:port` (of the first connection, on the dialing side).
    local: String,
    /// The peer's `ip:port`.
    remote: String,
    /// The handshake's connection, until it is handed out as the first flow.
    first: Mutex<Option<TlsStream<TcpStream>>>,
    /// How to make more connections: `Some` on the dialing side only.
    redial: Option<Redial>,
}

impl TlsTcpConn {
    /// A conn around a handshake's connection; `redial` is `Some` when we dialed.
    fn new(tls: TlsStream<TcpStream>, redial: Option<Redial>) -> flow::Result<Self> {
        let tcp = tls.get_ref().0;
        Ok(TlsTcpConn {
            link: Arc::default(),
            remote_key: peer_key(&tls)?,
            local: tcp.local_addr()?.to_string(),
            remote: tcp.peer_addr()?.to_string(),
            first: Mutex::new(Some(tls)),
            redial,
        })
    }

    /// Turns one TCP+TLS connection into a flow of this conn.
    fn start_flow(&self, tls: TlsStream<TcpStream>) -> flow::Result<RawFlow> {
        let mut flows = lock(&self.link.flows);
        // Checked under the lock, so closing either sees this flow or is seen here.
        if self.link.closed.is_cancelled() {
            return Err(self.link.error());
        }
        let stream = Arc::new(FlowStream {
            tls: Mutex::new(Some(tls)),
            link: self.link.clone(),
            ends_conn: self.redial.is_none(),
        });
        flows.retain(|flow| flow.strong_count() > 0);
        flows.push(Arc::downgrade(&stream));
        Ok(RawFlow::new(Half::new(&stream), Half::new(&stream)))
    }
}

#[async_trait]
impl Conn for TlsTcpConn {
    async fn open_flow(&self) -> flow::Result<RawFlow> {
        let Some(redial) = &self.redial else {
            let why = "tls-tcp: the listening side cannot open flows (no reverse path)";
            return Err(Error::protocol(ErrorKind::BadState, why));
        };
        if self.is_closed() {
            return Err(self.link.error());
        }
        // The first flow uses the connection the dial made; later ones make their own.
        let first = lock(&self.first).take();
        let tls = match first {
            Some(tls) => tls,
            None => redial.connect().await?,
        };
        // The authorizer may trust several keys, but a conn is one peer.
        let (expected, actual) = (self.remote_key, peer_key(&tls)?);
        if actual != expected {
            return Err(Reason::PinMismatch { expected, actual }.into());
        }
        self.start_flow(tls)
    }

    async fn accept_flow(&self) -> flow::Result<RawFlow> {
        // The listening side's one flow is the connection it accepted; then nothing.
        let first = match self.redial {
            None => lock(&self.first).take(),
            Some(_) => None,
        };
        match first {
            Some(tls) => self.start_flow(tls),
            None => Err(self.closed().await),
        }
    }

    fn remote_key(&self) -> PeerKey {
        self.remote_key
    }

    fn remote_address(&self) -> String {
        self.remote.clone()
    }

    fn local_address(&self) -> String {
        self.local.clone()
    }

    fn rtt(&self) -> Option<Duration> {
        None
    }

    fn close(&self, _code: CloseCode, reason: &str) {
        // TLS cannot carry the code or reason; the peer's flows fail with an error.
        let why = Reason::ClosedLocally(reason.to_string());
        self.link.close(why.into());
        drop(lock(&self.first).take());
    }

    async fn closed(&self) -> Error {
        self.link.closed.cancelled().await;
        self.link.error()
    }

    fn is_closed(&self) -> bool {
        self.link.closed.is_cancelled()
    }
}

impl Drop for TlsTcpConn {
    /// The [`Conn`] contract: dropping the last reference closes the connection.
    fn drop(&mut self) {
        self.close(CloseCode::Closed, "connection dropped");
    }
}

/// One flow's TCP+TLS connection, shared by the flow's two halves.
#[derive(Debug)]
struct FlowStream {
    /// The stream; `None` once the conn is closed.
    tls: Mutex<Option<TlsStream<TcpStream>>>,
    /// The conn's shared state.
    link: Arc<Link>,
    /// Whether the conn ends with this flow (on the listening side).
    ends_conn: bool,
}

impl Drop for FlowStream {
    /// Ends a dropped flow cleanly, as a QUIC stream is: `close_notify`, then FIN.
    fn drop(&mut self) {
        let tls = lock(&self.tls).take();
        if self.ends_conn {
            let why = "tls-tcp: the connection's one flow ended";
            self.link.close(Error::protocol(ErrorKind::Aborted, why));
        }
        if let (Some(mut tls), Ok(rt)) = (tls, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { tokio::time::timeout(IO_TIMEOUT, tls.shutdown()).await });
        }
    }
}

/// One half of a flow, as the manager gets it: the shared TLS stream, failing with the
/// conn's error once the conn is closed.
struct Half {
    /// The flow's stream.
    stream: Arc<FlowStream>,
    /// Completes when the conn closes; polled first, so a waiting half wakes up.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Half {
    /// A half of `stream`.
    fn new(stream: &Arc<FlowStream>) -> Self {
        let closed = stream.link.closed.clone().cancelled_owned();
        Half {
            stream: stream.clone(),
            closed: Box::pin(closed),
        }
    }

    /// Runs `op` on the TLS stream unless the conn is closed. A peer that refuses our
    /// certificate (the alerts `flow`'s verifiers send) refuses the whole conn.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut TlsStream<TcpStream>>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let link = &self.stream.link;
        let failed = || Poll::Ready(Err(link.error().into_io()));
        if self.closed.as_mut().poll(cx).is_ready() {
            return failed();
        }
        let mut tls = lock(&self.stream.tls);
        let Some(stream) = tls.as_mut() else {
            return failed();
        };
        let result = ready!(op(Pin::new(stream), cx));
        drop(tls); // `Link::close` takes this lock too.
        Poll::Ready(result.map_err(|e| {
            let alert = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
            let Some(rustls::Error::AlertReceived(AccessDenied | BadCertificate)) = alert else {
                return e;
            };
            let refused = Error::new(Reason::RefusedByPeer).with_source(e);
            link.close(refused.clone());
            refused.into_io()
        }))
    }
}

impl AsyncRead for Half {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_io(cx, |tls, cx| tls.poll_read(cx, buf))
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, |tls, cx| tls.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, |tls, cx| tls.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, |tls, cx| tls.poll_shutdown(cx))
    }
}

/// Listens on one TCP socket. Each handshake runs in a task of its own, so a slow or
/// silent client does not hold up the others.
#[derive(Debug)]
struct TlsTcpListener {
    /// The address bound, with the real port.
    local: SocketAddr,
    /// The socket; dropping the listener frees the port.
    tcp: TcpListener,
    /// The server side of TLS: our certificate and the client verifier.
    config: Arc<ServerConfig>,
    /// Handshakes under way.
    handshakes: tokio::sync::Mutex<JoinSet<flow::Result<TlsTcpConn>>>,
    /// Cancelled by [`Listener::close`].
    stop: CancellationToken,
}

#[async_trait]
impl Listener for TlsTcpListener {
    async fn accept(&self) -> flow::Result<Arc<dyn Conn>> {
        let not_listening = || Error::new(Reason::NotListening);
        let handshakes = self.stop.run_until_cancelled(self.handshakes.lock());
        let mut handshakes = handshakes.await.ok_or_else(not_listening)?;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return Err(not_listening()),
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, _)) => {
                        handshakes.spawn(handshake(self.config.clone(), tcp));
                    }
                    Err(error) => {
                        // A connection reset before we took it, or no file descriptors
                        // left: back off and go on rather than stop listening for good.
                        tracing::debug!(%error, "tls-tcp: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(handshake) = handshakes.join_next() => match handshake {
                    Ok(Ok(conn)) => return Ok(Arc::new(conn)),
                    Ok(Err(error)) => tracing::debug!(%error, "tls-tcp: handshake failed"),
                    Err(error) => tracing::debug!(%error, "tls-tcp: handshake task failed"),
                },
            }
        }
    }

    fn local_address(&self) -> String {
        self.local.to_string()
    }

    fn close(&self) {
        self.stop.cancel();
    }
}

/// The server side of one handshake: a conn whose one flow is this connection.
async fn handshake(config: Arc<ServerConfig>, tcp: TcpStream) -> flow::Result<TlsTcpConn> {
    tcp.set_nodelay(true)?;
    // The server configuration refuses clients the authorizer refuses.
    let accepting = TlsAcceptor::from(config).accept(tcp);
    match tokio::time::timeout(IO_TIMEOUT, accepting).await {
        Ok(tls) => TlsTcpConn::new(tls?.into(), None),
        Err(_) => Err(Error::new(Reason::Timeout(IO_TIMEOUT))),
    }
}

/// The built-in protocols plus ours, under the name `tls-tcp` and the alias `tcp-tls`.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register("tls-tcp", Arc::new(TlsTcpProtocol), &["tcp-tls"]);
    registry
}

/// A manager with a fresh identity that knows `tls-tcp`.
fn manager(config: ManagerConfig) -> flow::Result<Manager> {
    Manager::new(Identity::generate(), registry(), config)
}

/// A manager listening on `tls-tcp` on a free loopback port, with a task that answers
/// every message with `echo: ` + the message, until the manager is closed.
async fn start_echo_server(config: ManagerConfig) -> flow::Result<(Manager, Endpoint)> {
    let server = manager(config)?;
    let listening = server.listen("tls-tcp", "127.0.0.1:0").await?;
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Ok(mut flow) = accepting.accept().await {
            tokio::spawn(async move {
                while let Ok(Some(message)) = flow.read_msg().await {
                    if flow.write_msg(&[b"echo: ", &message]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((server, listening.endpoint().clone()))
}

/// Sends `message` on `flow` and returns the answer as text.
async fn ask(flow: &mut Flow, message: &str) -> flow::Result<String> {
    flow.write_msg(&[message.as_bytes()]).await?;
    let ended = || Error::protocol(ErrorKind::Aborted, "the server ended the flow early");
    let reply = flow.read_msg().await?.ok_or_else(ended)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The example: one manager listens on `tls-tcp`, another dials it trusting only the
/// server's key, sends `MESSAGES` and returns the server's answers.
pub async fn run() -> flow::Result<Vec<String>> {
    let (server, endpoint) = start_echo_server(ManagerConfig::default()).await?;
    let server_key = server.identity().public_key();
    println!("server {server_key} listens on {endpoint}");

    let client = manager(ManagerConfig::default())?;
    let trust_server = Authorizer::pinned(server_key);
    let mut flow = client.dial(&endpoint, trust_server, TIMEOUT).await?;
    let (client_key, from) = (client.identity().public_key(), flow.local_endpoint());
    println!("client {client_key} connected from {from}");
    let mut replies = Vec::new();
    for message in MESSAGES {
        replies.push(ask(&mut flow, message).await?);
    }

    // Dropping the flow ends it cleanly; closing the managers closes everything else.
    drop(flow);
    client.close();
    server.close();
    Ok(replies)
}

/// Runs the example and prints what was said.
#[tokio::main]
async fn main() -> flow::Result<()> {
    // `RUST_LOG=debug` shows the managers and the protocol at work.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let replies = run().await?;
    for (sent, reply) in MESSAGES.iter().zip(&replies) {
        println!("sent {sent:?}, got {reply:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client manager, and an authorizer that trusts only `server`.
    fn client_of(server: &Manager) -> (Manager, Arc<Authorizer>) {
        let client = manager(ManagerConfig::default()).unwrap();
        (client, Authorizer::pinned(server.identity().public_key()))
    }

    /// The example's own run: every message comes back, in order.
    #[tokio::test]
    async fn round_trip_returns_the_echoes() {
        let expected = MESSAGES.map(|m| format!("echo: {m}"));
        assert_eq!(run().await.unwrap(), expected);
    }

    /// Several flows are open at once over one managed connection, each on its own
    /// TCP+TLS connection, and work concurrently.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_flows_share_one_managed_connection() {
        let (server, endpoint) = start_echo_server(ManagerConfig::default()).await.unwrap();
        let (client, trust_server) = client_of(&server);
        // All five are open before any is used: the first dial makes the managed
        // connection, the others find it in the cache and open flows on it.
        let mut tasks = Vec::new();
        for i in 0..5 {
            let dialing = client.dial(&endpoint, trust_server.clone(), TIMEOUT);
            let mut flow = dialing.await.unwrap();
            tasks.push(async move {
                let mut replies = Vec::new();
                for round in 0..3 {
                    replies.push(ask(&mut flow, &format!("{i}.{round}")).await.unwrap());
                }
                assert_eq!(replies, [0, 1, 2].map(|round| format!("echo: {i}.{round}")));
                flow
            });
        }
        let connections = client.connections();
        assert_eq!(connections.len(), 1, "{connections:?}");
        assert_eq!(connections[0].active_flows(), 5);
        assert_eq!(connections[0].protocol(), "tls-tcp");

        let tasks: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let mut still_open = Vec::new();
        for task in tasks {
            still_open.push(tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap());
        }
        // On the server, each flow arrived as a connection of its own ("Clone").
        assert_eq!(client.connections().len(), 1);
        assert_eq!(server.connections().len(), 5);

        // When a flow ends, so does the server's connection that carried it.
        drop(still_open);
        let all_gone = async {
            while !server.connections().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(TIMEOUT, all_gone).await.unwrap();
        assert_eq!(client.connections().len(), 1); // The client keeps its connection.
    }

    /// Pinning a key the server does not have fails the dial as not trusted, with
    /// the precise reason our verifier recorded.
    #[tokio::test]
    async fn a_wrong_pinned_key_is_not_trusted() {
        let (server, endpoint) = start_echo_server(ManagerConfig::default()).await.unwrap();
        let client = manager(ManagerConfig::default()).unwrap();
        let someone_else = Identity::generate().public_key();
        let dialing = client.dial(&endpoint, Authorizer::pinned(someone_else), TIMEOUT);
        let err = dialing.await.unwrap_err();
        let mismatch = Reason::PinMismatch {
            expected: someone_else,
            actual: server.identity().public_key(),
        };
        assert_eq!(err.kind(), ErrorKind::NotTrusted);
        assert_eq!(err.reason(), &mismatch);
        assert!(client.connections().is_empty());
    }

    /// Closing a connection fails its flows at once on our side, and on the peer's.
    #[tokio::test]
    async fn closing_the_connection_fails_its_flows_on_both_sides() {
        let server = manager(ManagerConfig::default()).unwrap();
        let listening = server.listen("tcp-tls", "127.0.0.1:0").await.unwrap();
        let endpoint = listening.endpoint();
        assert_eq!(endpoint.protocol(), "tls-tcp"); // The alias resolves to the name.
        let (client, trust_server) = client_of(&server);
        let mut ours = client.dial(endpoint, trust_server, TIMEOUT).await.unwrap();
        ours.write_msg(&[b"hi"]).await.unwrap();
        let mut theirs = server.accept().await.unwrap();
        assert_eq!(theirs.remote_identity(), client.identity().public_key());
        let hi = theirs.read_msg().await.unwrap();
        assert_eq!(hi.as_deref(), Some(&b"hi"[..]));
        theirs.write_msg(&[b"unread"]).await.unwrap();

        ours.conn().close();
        assert!(ours.conn().is_closed());
        // Here: the local close, even though a message is waiting.
        let err = ours.read_msg().await.unwrap_err();
        let closed = Reason::ClosedLocally("closed by application".into());
        assert_eq!(err.kind(), ErrorKind::Aborted);
        assert_eq!(err.reason(), &closed);
        // There: the TCP connection ended without close_notify, an I/O error.
        let reading = tokio::time::timeout(TIMEOUT, theirs.read_msg());
        let err = reading.await.unwrap().unwrap_err();
        assert!(matches!(err.reason(), Reason::Io(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Network);
        // A closed connection is no longer offered for new flows.
        let err = client.dial_cached(endpoint, Authorizer::any()).await;
        let err = err.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadState);
        assert_eq!(err.reason(), &Reason::NotCached);
    }

    /// A server that refuses our key: TLS 1.3 lets the dial finish first, so the
    /// refusal arrives on the flow, as not trusted, and closes the connection.
    #[tokio::test]
    async fn a_server_that_refuses_us_is_not_trusted() {
        let mut config = ManagerConfig::default();
        config.accept_authorizer(Authorizer::pinned(Identity::generate().public_key()));
        let (server, endpoint) = start_echo_server(config).await.unwrap();
        let (client, trust_server) = client_of(&server);
        let mut flow = client.dial(&endpoint, trust_server, TIMEOUT).await.unwrap();
        let asking = tokio::time::timeout(TIMEOUT, ask(&mut flow, "let me in"));
        let err = asking.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotTrusted);
        assert_eq!(err.reason(), &Reason::RefusedByPeer);
        assert!(flow.conn().is_closed());
        assert!(client.connections().is_empty());
    }
}
