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
//! - [`Protocol::dial`] makes the first TCP+TLS connection, learns the server's key
//!   from the TLS session, and keeps that stream as the first flow. Each later
//!   [`Conn::open_flow`] makes a fresh connection to the same address and checks that
//!   the server proves the same key.
//! - The [`Listener`] turns every incoming TCP+TLS connection into a [`Conn`] whose one
//!   flow is that stream; the conn ends when its flow does. There is no reverse path:
//!   the listening side cannot open flows towards the dialer.
//! - Each flow's TLS stream is driven by a small task (the *pump*) that copies between
//!   it and an in-memory pipe, whose other end the manager gets as the flow. The pump
//!   flushes TLS records (a TLS stream buffers like a `BufWriter`, and
//!   [`Flow::write_msg`] never flushes), ends the TLS stream with `close_notify` when
//!   the flow is dropped, and tears it down when the conn is closed.
//! - Both sides authenticate with the TLS configurations from [`DialContext`] and
//!   [`ListenContext`]: they carry the Ed25519 certificate verifiers and consult the
//!   authorizers, so this file does no cryptography of its own.
//!
//! # Limits, compared with QUIC
//!
//! - A TLS 1.3 client finishes its handshake before the server has judged the client's
//!   certificate, so a server that refuses us shows up on the first read of the flow
//!   (as [`ErrorKind::NotTrusted`]), not in `dial`; the conn is then closed. The QUIC
//!   protocol avoids this with a confirmation stream, at the cost of a round trip.
//! - Plain TLS has nowhere to carry a close code or reason: a peer whose conn is closed
//!   sees its flows fail with a connection error.
//! - No round-trip time is measured ([`Conn::rtt`] is `None`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use flow::identity::key_from_certificates;
use flow::{
    Authorizer, CloseCode, Conn, DialContext, Endpoint, Error, ErrorKind, Flow, Identity,
    ListenContext, Listener, Manager, ManagerConfig, PeerKey, Properties, Protocol, RawFlow,
    Reason, Registry, resolve_socket_addrs,
};
use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// The ALPN id both sides insist on, so a `tls-tcp` peer never mistakes some other
/// TLS service on the same port for one of its own.
const ALPN: &[u8] = b"tls-tcp-example";

/// The server name the client sends. Our verifiers ignore names (a peer *is* its key),
/// but TLS needs one; this is the name the built-in QUIC protocol sends too.
const SERVER_NAME: &str = "mftq.invalid";

/// Bytes buffered in each direction between a flow and its TLS stream, and the size
/// of the pump's copy buffers: large enough that a bulk transfer is not cut into tiny
/// writes.
const PIPE_BUFFER: usize = 64 << 10;

/// How long the example and its tests give any one dial.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the example's client sends; the server answers each with `echo: ` + message.
const MESSAGES: [&str; 3] = ["hello", "one TCP+TLS connection per flow", "bye"];

/// TLS alerts (RFC 8446 §6) by which a peer says it refused our certificate; rustls
/// sends `access_denied` when the authorizer says no.
const REFUSAL_ALERTS: [AlertDescription; 6] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::CertificateRequired,
];

/// The `tls-tcp` protocol: TLS 1.3 over TCP, one TCP+TLS connection per flow.
#[derive(Clone, Debug)]
pub struct TlsTcpProtocol {
    /// How long a listener gives an incoming TCP connection to finish its TLS
    /// handshake, so silent clients do not hold sockets forever.
    handshake_timeout: Duration,
}

impl Default for TlsTcpProtocol {
    fn default() -> Self {
        TlsTcpProtocol {
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[async_trait]
impl Protocol for TlsTcpProtocol {
    fn properties(&self) -> Properties {
        // Not multistreaming: flows share no connection, so they cannot block each
        // other, but each one costs a TCP and a TLS handshake.
        Properties::new().tcp(true)
    }

    async fn dial(
        &self,
        ctx: &DialContext,
        _protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> flow::Result<Arc<dyn Conn>> {
        // One client configuration (and so one verifier) for every connection of this
        // conn: later flows are checked exactly like the first, and TLS session
        // resumption between them comes for free.
        let redial = Redial {
            connector: TlsConnector::from(Arc::new(ctx.tls_client_config(&[ALPN])?)),
            ctx: ctx.clone(),
            address: address.to_string(),
            timeout,
        };
        let (tls, remote_key) = redial.connect().await?;
        let (tcp, _) = tls.get_ref();
        let (local, remote) = (tcp.local_addr(), tcp.peer_addr());
        Ok(Arc::new(TlsTcpConn::new(
            remote_key,
            local,
            remote,
            tls.into(),
            Some(redial),
        )))
    }

    // `resolve` keeps its default: `host:port` through the system resolver. The
    // manager then calls `dial` with each resolved `ip:port` in turn.

    async fn listen(
        &self,
        ctx: &ListenContext,
        _protocol: &str,
        address: &str,
    ) -> flow::Result<Box<dyn Listener>> {
        let addr = *resolve_socket_addrs(address)
            .await?
            .first()
            .ok_or_else(|| Error::new(Reason::Resolve("no addresses found".into())))?;
        let acceptor = TlsAcceptor::from(Arc::new(ctx.tls_server_config(&[ALPN])?));
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            Error::protocol(
                ErrorKind::BadArg,
                format!("tls-tcp: cannot listen on {addr}: {e}"),
            )
            .with_source(e)
        })?;
        let local = tcp.local_addr().map_err(|e| {
            Error::protocol(ErrorKind::Network, format!("tls-tcp: {e}")).with_source(e)
        })?;
        let (ready_tx, ready_rx) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(tcp, acceptor, ready_tx, self.handshake_timeout));
        Ok(Box::new(TlsTcpListener {
            local,
            ready: tokio::sync::Mutex::new(ready_rx),
            stop: watch::channel(false).0,
            accepting,
        }))
    }
}

/// What the dialing side keeps to make one more TCP+TLS connection per flow.
struct Redial {
    /// The client side of TLS, with our certificate and the server verifier in it.
    connector: TlsConnector,
    /// Kept for [`DialContext::take_refusal`] after a failed handshake.
    ctx: DialContext,
    /// The resolved `ip:port` the first connection went to.
    address: String,
    /// The dial's timeout, applied to each later connection (TCP plus TLS) as well.
    timeout: Duration,
}

impl Redial {
    /// Makes one TCP+TLS connection and returns it with the key the server proved.
    async fn connect(&self) -> flow::Result<(tokio_rustls::client::TlsStream<TcpStream>, PeerKey)> {
        let server_name = ServerName::try_from(SERVER_NAME).map_err(|e| {
            Error::protocol(ErrorKind::BadArg, format!("tls-tcp: server name: {e}"))
        })?;
        let handshake = async {
            let tcp = TcpStream::connect(self.address.as_str())
                .await
                .map_err(|e| {
                    Error::protocol(
                        ErrorKind::DialFailed,
                        format!("tls-tcp: cannot connect to {}: {e}", self.address),
                    )
                    .with_source(e)
                })?;
            // Flows exchange small messages; Nagle's algorithm would hold them back.
            // Failing to turn it off only costs latency, so it is not an error.
            let _ = tcp.set_nodelay(true);
            let tls = self
                .connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| self.handshake_error(e))?;
            // The verifier already proved the key and asked the authorizer; this
            // only reads the key back out of the session.
            let key =
                key_from_certificates(tls.get_ref().1.peer_certificates().unwrap_or_default())?;
            Ok((tls, key))
        };
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(Reason::Timeout(self.timeout))),
        }
    }

    /// The error for a failed client handshake, as precise as we can make it.
    fn handshake_error(&self, err: io::Error) -> Error {
        // rustls reduces our verifier's refusal (pin mismatch, unauthorized key, bad
        // signature) to an alert; the context kept the real reason.
        if let Some(refusal) = self.ctx.take_refusal() {
            return refusal.with_source(err);
        }
        if is_refusal(&err) {
            return Error::new(Reason::RefusedByPeer).with_source(err);
        }
        Error::protocol(
            ErrorKind::DialFailed,
            format!("tls-tcp: TLS handshake with {} failed: {err}", self.address),
        )
        .with_source(err)
    }
}

/// Whether an I/O error from a TLS stream is the peer refusing our certificate.
fn is_refusal(err: &io::Error) -> bool {
    matches!(
        err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(alert)) if REFUSAL_ALERTS.contains(alert)
    )
}

/// The error a flow reports when its TLS stream failed.
fn stream_error(err: io::Error) -> Error {
    if is_refusal(&err) {
        return Error::new(Reason::RefusedByPeer).with_source(err);
    }
    Error::new(Reason::ConnectionLost(format!("tls-tcp: {err}"))).with_source(err)
}

/// Locks a mutex, ignoring poisoning: every critical section here is a single
/// `Option` take or replace, so a panic cannot leave the data half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An address for display; a socket whose address cannot be read is still usable.
fn address_text(addr: io::Result<SocketAddr>) -> String {
    addr.map_or_else(|_| "unknown".to_string(), |a| a.to_string())
}

/// A conn's closed state, shared with the pumps of its flows.
#[derive(Debug)]
struct Link {
    /// Set once, by whoever closes first.
    state: watch::Sender<Option<Closed>>,
}

/// Why a conn closed.
#[derive(Clone, Debug)]
struct Closed {
    /// What this side's operations on the conn now fail with.
    error: Error,
    /// Whether its flows must fail now (an explicit close), or may finish reading what
    /// already arrived (a listening-side conn whose one flow simply ended).
    aborts_flows: bool,
}

impl Link {
    /// An open link.
    fn new() -> Arc<Self> {
        Arc::new(Link {
            state: watch::channel(None).0,
        })
    }

    /// Closes the link with `error`, unless it is already closed.
    fn close(&self, error: Error, aborts_flows: bool) {
        self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(Closed {
                error,
                aborts_flows,
            });
            true
        });
    }

    /// Why the link closed, if it did.
    fn error(&self) -> Option<Error> {
        self.state.borrow().as_ref().map(|c| c.error.clone())
    }

    /// Why the link was aborted, if it was.
    fn abort_error(&self) -> Option<Error> {
        let state = self.state.borrow();
        state
            .as_ref()
            .filter(|c| c.aborts_flows)
            .map(|c| c.error.clone())
    }

    /// Resolves when the link closes, with why.
    async fn closed(&self) -> Error {
        self.wait(|_| true).await
    }

    /// Resolves when the link is aborted, with why.
    async fn aborted(&self) -> Error {
        self.wait(|c| c.aborts_flows).await
    }

    /// Resolves when the link is closed in a way `done` accepts, with why.
    async fn wait(&self, done: impl Fn(&Closed) -> bool) -> Error {
        let mut state = self.state.subscribe();
        let closed = match state.wait_for(|s| s.as_ref().is_some_and(&done)).await {
            Ok(closed) => closed.clone(),
            // Cannot happen while `self` holds the sender; answer sensibly anyway.
            Err(_) => None,
        };
        closed.map_or_else(
            || Error::protocol(ErrorKind::Aborted, "tls-tcp: connection gone"),
            |c| c.error,
        )
    }
}

/// A `tls-tcp` connection: on the dialing side the group of TCP+TLS connections of one
/// dial, on the listening side one TCP+TLS connection carrying one flow.
struct TlsTcpConn {
    /// Closed state, shared with the pumps of this conn's flows.
    link: Arc<Link>,
    /// The key the peer proved in the TLS handshake.
    remote_key: PeerKey,
    /// Our `ip:port` (of the first connection, on the dialing side).
    local: String,
    /// The peer's `ip:port`.
    remote: String,
    /// The stream made by the handshake, until it is handed out as the first flow.
    first: Mutex<Option<TlsStream<TcpStream>>>,
    /// How to make more connections: `Some` on the dialing side only.
    redial: Option<Redial>,
}

impl TlsTcpConn {
    /// A conn around the handshake's stream `first`; `redial` is `Some` on the dialing
    /// side only.
    fn new(
        remote_key: PeerKey,
        local: io::Result<SocketAddr>,
        remote: io::Result<SocketAddr>,
        first: TlsStream<TcpStream>,
        redial: Option<Redial>,
    ) -> Self {
        TlsTcpConn {
            link: Link::new(),
            remote_key,
            local: address_text(local),
            remote: address_text(remote),
            first: Mutex::new(Some(first)),
            redial,
        }
    }

    /// Turns one TLS stream into a flow of this conn.
    fn start_flow(&self, tls: TlsStream<TcpStream>) -> RawFlow {
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let failure = Arc::new(Mutex::new(None));
        // On the listening side the conn *is* this one connection, so it ends with it.
        let ends_conn = self.redial.is_none();
        tokio::spawn(pump(
            tls,
            theirs,
            self.link.clone(),
            failure.clone(),
            ends_conn,
        ));
        let (recv, send) = tokio::io::split(ours);
        RawFlow::new(
            FlowHalf {
                inner: recv,
                link: self.link.clone(),
                failure: failure.clone(),
            },
            FlowHalf {
                inner: send,
                link: self.link.clone(),
                failure,
            },
        )
    }
}

impl fmt::Debug for TlsTcpConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTcpConn")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("remote_key", &self.remote_key)
            .field("dialed", &self.redial.is_some())
            .field("closed", &self.link.error())
            .finish()
    }
}

#[async_trait]
impl Conn for TlsTcpConn {
    async fn open_flow(&self) -> flow::Result<RawFlow> {
        if let Some(error) = self.link.error() {
            return Err(error);
        }
        let Some(redial) = &self.redial else {
            return Err(Error::protocol(
                ErrorKind::BadState,
                "tls-tcp: the listening side cannot open flows (no reverse path)",
            ));
        };
        // The first flow uses the connection the dial already made.
        if let Some(tls) = lock(&self.first).take() {
            return Ok(self.start_flow(tls));
        }
        let (tls, key) = redial.connect().await?;
        // The authorizer may trust several keys, but a conn is one peer: a different
        // key at the same address is someone else.
        if key != self.remote_key {
            return Err(Error::new(Reason::PinMismatch {
                expected: self.remote_key,
                actual: key,
            }));
        }
        // Closed while we were dialing: drop the new stream rather than start a flow.
        if let Some(error) = self.link.error() {
            return Err(error);
        }
        Ok(self.start_flow(tls.into()))
    }

    async fn accept_flow(&self) -> flow::Result<RawFlow> {
        if self.redial.is_none()
            && let Some(tls) = lock(&self.first).take()
        {
            return Ok(self.start_flow(tls));
        }
        // The dialing side never receives flows, and the listening side has handed
        // out its one flow: nothing more will come before the conn closes.
        Err(self.link.closed().await)
    }

    fn remote_key(&self) -> PeerKey {
        self.remote_key
    }

    fn remote_address(&self) -> String {
        self.remote.clone()
    }

    fn local_address(&self) -> String {
        // On the dialing side, the first connection's; later ones use other ports.
        self.local.clone()
    }

    fn rtt(&self) -> Option<Duration> {
        None
    }

    fn close(&self, _code: CloseCode, reason: &str) {
        // Plain TLS cannot carry the code to the peer; tearing the connections down
        // (in the pumps) makes the peer's flows fail.
        self.link
            .close(Error::new(Reason::ClosedLocally(reason.to_string())), true);
        drop(lock(&self.first).take());
    }

    async fn closed(&self) -> Error {
        self.link.closed().await
    }

    fn is_closed(&self) -> bool {
        self.link.error().is_some()
    }
}

impl Drop for TlsTcpConn {
    fn drop(&mut self) {
        // The Conn contract: dropping the last reference closes the connection.
        self.close(CloseCode::Closed, "connection dropped");
    }
}

/// Drives one flow's TLS stream: copies between it and the flow's pipe until both
/// directions end, an error occurs, or the conn is aborted.
async fn pump(
    mut tls: TlsStream<TcpStream>,
    mut pipe: DuplexStream,
    link: Arc<Link>,
    failure: Arc<Mutex<Option<Error>>>,
    ends_conn: bool,
) {
    // `copy_bidirectional` flushes TLS whenever the flow has nothing more to send, and
    // when the flow ends its sending side (or is dropped) it shuts TLS down with
    // close_notify, which the peer reads as a clean end of the flow.
    let copying =
        tokio::io::copy_bidirectional_with_sizes(&mut pipe, &mut tls, PIPE_BUFFER, PIPE_BUFFER);
    let outcome = tokio::select! {
        copied = copying => copied.err().map(stream_error),
        error = link.aborted() => Some(error),
    };
    if let Some(error) = &outcome {
        *lock(&failure) = Some(error.clone());
        // A peer that refuses our key refuses every connection of this conn.
        if error.kind() == ErrorKind::NotTrusted {
            link.close(error.clone(), true);
        }
    }
    // Only now may the flow see the end of its pipe, so it finds `failure` already set
    // and does not mistake an abort for a clean end.
    drop(pipe);
    // Without close_notify when we did not finish cleanly: the peer reads an error.
    drop(tls);
    if ends_conn {
        let error = outcome.unwrap_or_else(|| {
            Error::protocol(
                ErrorKind::Aborted,
                "tls-tcp: the connection's one flow ended",
            )
        });
        link.close(error, false);
    }
}

/// One half of a flow as the manager sees it: a pipe half that fails with the conn's
/// error once the conn is aborted, and with the pump's error where the pipe would
/// otherwise just end.
struct FlowHalf<T> {
    /// Our end of the pipe to the pump.
    inner: T,
    /// The conn, to fail at once when it is aborted.
    link: Arc<Link>,
    /// Set by the pump, before it drops its end of the pipe, when it did not finish
    /// cleanly.
    failure: Arc<Mutex<Option<Error>>>,
}

impl<T> FlowHalf<T> {
    /// Fails at once after an abort: no more bytes either way, even buffered ones.
    fn check_aborted(&self) -> io::Result<()> {
        match self.link.abort_error() {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Why the pump stopped, if it failed.
    fn failure(&self) -> Option<Error> {
        lock(&self.failure).clone()
    }

    /// Replaces a pipe error (the pump dropped its end) with the real cause.
    fn explain(&self, err: io::Error) -> io::Error {
        match self.failure().or_else(|| self.link.error()) {
            Some(error) => error.into(),
            None => err,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FlowHalf<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_aborted()?;
        let wanted = buf.remaining() > 0;
        let before = buf.filled().len();
        match ready!(Pin::new(&mut self.inner).poll_read(cx, buf)) {
            Err(e) => Poll::Ready(Err(self.explain(e))),
            // The end of the pipe is the end of the flow only if the pump ended cleanly.
            Ok(()) if wanted && buf.filled().len() == before => match self.failure() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => Poll::Ready(Ok(())),
            },
            Ok(()) => Poll::Ready(Ok(())),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FlowHalf<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_aborted()?;
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        Poll::Ready(written.map_err(|e| self.explain(e)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_aborted()?;
        let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        Poll::Ready(flushed.map_err(|e| self.explain(e)))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_aborted()?;
        let shut = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
        Poll::Ready(shut.map_err(|e| self.explain(e)))
    }
}

/// Listens on one TCP socket; handshakes run in their own tasks.
#[derive(Debug)]
struct TlsTcpListener {
    /// The address bound, with the real port.
    local: SocketAddr,
    /// Connections whose handshake finished, waiting for [`Listener::accept`].
    ready: tokio::sync::Mutex<mpsc::Receiver<Arc<dyn Conn>>>,
    /// Set by [`Listener::close`], to fail pending and later `accept` calls.
    stop: watch::Sender<bool>,
    /// The accept loop; aborting it drops the socket, freeing the port.
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsTcpListener {
    /// Resolves once the listener is closed.
    async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

#[async_trait]
impl Listener for TlsTcpListener {
    async fn accept(&self) -> flow::Result<Arc<dyn Conn>> {
        let not_listening = || Error::new(Reason::NotListening);
        let mut ready = tokio::select! {
            ready = self.ready.lock() => ready,
            () = self.stopped() => return Err(not_listening()),
        };
        tokio::select! {
            conn = ready.recv() => conn.ok_or_else(not_listening),
            () = self.stopped() => Err(not_listening()),
        }
    }

    fn local_address(&self) -> String {
        self.local.to_string()
    }

    fn close(&self) {
        self.stop.send_replace(true);
        self.accepting.abort();
    }
}

impl Drop for TlsTcpListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// Accepts TCP connections until aborted, handing each to its own handshake task.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<Arc<dyn Conn>>,
    handshake_timeout: Duration,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Such errors concern one connection (reset before we took it) or pass
                // (out of file descriptors): back off and go on rather than stop
                // listening for good.
                tracing::debug!(%error, "tls-tcp: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        // The handshake runs off the accept path, so a slow or silent client does not
        // hold up the others.
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, accept_tls(&acceptor, stream)).await {
                Ok(Ok(conn)) => {
                    // If the listener is gone the conn is dropped here, which closes it.
                    let _ = ready.send(Arc::new(conn)).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "tls-tcp: incoming handshake failed");
                }
                Err(_) => tracing::debug!(%peer, "tls-tcp: incoming handshake timed out"),
            }
        });
    }
}

/// The server side of one handshake: a listening-side conn with one flow in it.
async fn accept_tls(acceptor: &TlsAcceptor, tcp: TcpStream) -> flow::Result<TlsTcpConn> {
    // As on the dialing side: small messages should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let (local, remote) = (tcp.local_addr(), tcp.peer_addr());
    // The server configuration refuses clients the listener's authorizer refuses.
    let tls = acceptor.accept(tcp).await.map_err(|e| {
        Error::protocol(
            ErrorKind::DialFailed,
            format!("tls-tcp: TLS handshake failed: {e}"),
        )
        .with_source(e)
    })?;
    let key = key_from_certificates(tls.get_ref().1.peer_certificates().unwrap_or_default())?;
    Ok(TlsTcpConn::new(key, local, remote, tls.into(), None))
}

/// The built-in protocols plus ours, under the name `tls-tcp` and the alias `tcp-tls`.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.register("tls-tcp", Arc::new(TlsTcpProtocol::default()), &["tcp-tls"]);
    registry
}

/// A manager with a fresh identity that knows `tls-tcp`.
fn manager(config: ManagerConfig) -> flow::Result<Manager> {
    Manager::new(Identity::generate(), registry(), config)
}

/// A manager listening on `tls-tcp` on a free loopback port, with a task answering
/// every flow with [`echo`]. The task ends when the manager is closed.
async fn start_echo_server(
    config: ManagerConfig,
) -> flow::Result<(Manager, Endpoint, tokio::task::JoinHandle<()>)> {
    let server = manager(config)?;
    let endpoint = server
        .listen("tls-tcp", "127.0.0.1:0")
        .await?
        .endpoint()
        .clone();
    let accepting = server.clone();
    let serving = tokio::spawn(async move {
        while let Ok(flow) = accepting.accept().await {
            tokio::spawn(async move {
                if let Err(error) = echo(flow).await {
                    tracing::debug!(%error, "echo flow failed");
                }
            });
        }
    });
    Ok((server, endpoint, serving))
}

/// Answers every message on `flow` with `echo: ` + the message, until the peer ends
/// the flow.
async fn echo(mut flow: Flow) -> flow::Result<()> {
    while let Some(message) = flow.read_msg().await? {
        flow.write_msg(&[b"echo: ", &message]).await?;
    }
    Ok(())
}

/// Sends `message` on `flow` and returns the answer as text.
async fn ask(flow: &mut Flow, message: &str) -> flow::Result<String> {
    flow.write_msg(&[message.as_bytes()]).await?;
    let reply = flow
        .read_msg()
        .await?
        .ok_or_else(|| Error::protocol(ErrorKind::Aborted, "the server ended the flow early"))?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The example: one manager listens on `tls-tcp`, another dials it trusting only the
/// server's key, sends [`MESSAGES`] and returns the server's answers.
pub async fn run() -> flow::Result<Vec<String>> {
    let (server, endpoint, serving) = start_echo_server(ManagerConfig::default()).await?;
    println!(
        "server {} listens on {endpoint}",
        server.identity().public_key()
    );

    let client = manager(ManagerConfig::default())?;
    let trust_server = Authorizer::pinned(server.identity().public_key());
    let mut flow = client.dial(&endpoint, trust_server, TIMEOUT).await?;
    println!(
        "client {} connected from {}",
        client.identity().public_key(),
        flow.local_endpoint()
    );
    let mut replies = Vec::with_capacity(MESSAGES.len());
    for message in MESSAGES {
        replies.push(ask(&mut flow, message).await?);
    }

    // Dropping the flow ends it cleanly; closing the managers closes everything else.
    drop(flow);
    client.close();
    server.close();
    // The echo task only ends with an error (the manager is closed), never a panic
    // worth reporting here.
    let _ = serving.await;
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

    /// The example's own run: every message comes back, in order.
    #[tokio::test]
    async fn round_trip_returns_the_echoes() {
        let replies = run().await.unwrap();
        let expected: Vec<String> = MESSAGES.iter().map(|m| format!("echo: {m}")).collect();
        assert_eq!(replies, expected);
    }

    /// Several flows are open at once over one managed connection, each on its own
    /// TCP+TLS connection, and work concurrently.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_flows_share_one_managed_connection() {
        let (server, endpoint, _serving) =
            start_echo_server(ManagerConfig::default()).await.unwrap();
        let client = manager(ManagerConfig::default()).unwrap();
        let trust_server = Authorizer::pinned(server.identity().public_key());

        // All five are open before any is used: the first dial makes the managed
        // connection, the others find it in the cache and open flows on it.
        let mut flows = Vec::new();
        for _ in 0..5 {
            flows.push(
                client
                    .dial(&endpoint, trust_server.clone(), TIMEOUT)
                    .await
                    .unwrap(),
            );
        }
        let connections = client.connections();
        assert_eq!(connections.len(), 1, "{connections:?}");
        assert_eq!(connections[0].active_flows(), 5);
        assert_eq!(connections[0].protocol(), "tls-tcp");

        let tasks: Vec<_> = flows
            .into_iter()
            .enumerate()
            .map(|(i, mut flow)| {
                tokio::spawn(async move {
                    let mut replies = Vec::new();
                    for round in 0..3 {
                        replies.push(ask(&mut flow, &format!("flow {i} round {round}")).await?);
                    }
                    Ok::<_, Error>((replies, flow))
                })
            })
            .collect();
        let mut still_open = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let (replies, flow) = tokio::time::timeout(TIMEOUT, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let expected: Vec<String> = (0..3)
                .map(|round| format!("echo: flow {i} round {round}"))
                .collect();
            assert_eq!(replies, expected);
            still_open.push(flow);
        }
        // One managed connection here; on the server, each flow arrived as a
        // connection of its own (the "Clone" rule).
        assert_eq!(client.connections().len(), 1);
        assert_eq!(server.connections().len(), 5);

        // When a flow ends, so does the server's connection that carried it.
        drop(still_open);
        tokio::time::timeout(TIMEOUT, async {
            while !server.connections().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            client.connections().len(),
            1,
            "the client keeps its connection"
        );
    }

    /// Pinning a key the server does not have fails the dial as not trusted, with
    /// the precise reason our verifier recorded.
    #[tokio::test]
    async fn a_wrong_pinned_key_is_not_trusted() {
        let (server, endpoint, _serving) =
            start_echo_server(ManagerConfig::default()).await.unwrap();
        let client = manager(ManagerConfig::default()).unwrap();
        let someone_else = Identity::generate().public_key();
        let err = client
            .dial(&endpoint, Authorizer::pinned(someone_else), TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotTrusted, "{err}");
        assert!(
            matches!(
                err.reason(),
                Reason::PinMismatch { expected, actual }
                    if *expected == someone_else && *actual == server.identity().public_key()
            ),
            "{err}"
        );
        assert!(client.connections().is_empty());
    }

    /// Closing a connection fails its flows at once on our side, and on the peer's.
    #[tokio::test]
    async fn closing_the_connection_fails_its_flows_on_both_sides() {
        let server = manager(ManagerConfig::default()).unwrap();
        let endpoint = server
            .listen("tcp-tls", "127.0.0.1:0")
            .await
            .unwrap()
            .endpoint()
            .clone();
        assert_eq!(
            endpoint.protocol(),
            "tls-tcp",
            "the alias resolves to the name"
        );
        let client = manager(ManagerConfig::default()).unwrap();
        let trust_server = Authorizer::pinned(server.identity().public_key());
        let mut ours = client.dial(&endpoint, trust_server, TIMEOUT).await.unwrap();
        ours.write_msg(&[b"hi"]).await.unwrap();
        let mut theirs = server.accept().await.unwrap();
        assert_eq!(theirs.remote_identity(), client.identity().public_key());
        assert_eq!(
            theirs.read_msg().await.unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        theirs.write_msg(&[b"unread"]).await.unwrap();

        ours.conn().close();
        assert!(ours.conn().is_closed());
        let err = ours.read_msg().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Aborted, "{err}");
        let err = tokio::time::timeout(TIMEOUT, theirs.read_msg())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network, "{err}");
        // New flows on a closed connection fail too; a new dial makes a new one.
        assert!(
            client
                .dial_cached(&endpoint, Authorizer::any())
                .await
                .is_err()
        );
    }

    /// A server that refuses our key: TLS 1.3 lets the dial finish first, so the
    /// refusal arrives on the flow, as not trusted, and closes the connection.
    #[tokio::test]
    async fn a_server_that_refuses_us_is_not_trusted() {
        let mut config = ManagerConfig::default();
        config.accept_authorizer(Authorizer::pinned(Identity::generate().public_key()));
        let (server, endpoint, _serving) = start_echo_server(config).await.unwrap();
        let client = manager(ManagerConfig::default()).unwrap();
        let trust_server = Authorizer::pinned(server.identity().public_key());
        let outcome = async {
            let mut flow = client.dial(&endpoint, trust_server, TIMEOUT).await?;
            ask(&mut flow, "let me in").await
        };
        let err = tokio::time::timeout(TIMEOUT, outcome)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotTrusted, "{err}");
        assert!(client.connections().is_empty());
    }
}
