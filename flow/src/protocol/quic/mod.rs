//! QUIC on quinn: one QUIC connection per peer, one bidirectional QUIC stream per flow.
//!
//! Both sides authenticate with TLS 1.3 client and server certificates carrying
//! Ed25519 keys (see [`identity`](crate::identity)). Because a TLS 1.3 client finishes
//! its handshake before the server has judged the client's certificate, the server
//! confirms every connection it accepts by opening a unidirectional stream that
//! carries [`WELCOME`]; a dial returns only after reading it, so a refused dialer
//! learns so from `dial` itself ([`ErrorKind::NotTrusted`](crate::ErrorKind)).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, TransportErrorCode, VarInt, WriteError};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Reason, Result};
use crate::identity::{PeerKey, TLS_SERVER_NAME, key_from_certificates};
use crate::protocol::admission::{Admission, Admitted, ListenLimits};
use crate::registry::{
    CloseCode, Conn, DialContext, ListenContext, Listener, Properties, Protocol, RawFlow,
    resolve_socket_addr,
};

pub mod congestion;

/// The ALPN protocol id of flows over QUIC.
pub const ALPN: &[u8] = b"mftq-flow/1";

/// What the server sends on its confirmation stream; a different value means an
/// incompatible peer.
pub const WELCOME: &[u8] = b"mftq-flow/1 welcome";

/// TLS alerts (RFC 8446 §6) by which a peer says it refused our certificate.
const REFUSAL_ALERTS: [u8; 6] = [
    42,  // bad_certificate
    43,  // unsupported_certificate
    46,  // certificate_unknown
    48,  // unknown_ca
    49,  // access_denied
    116, // certificate_required
];

/// The congestion controller QUIC connections use. What matters is the sender's:
/// the client's on a push, the server's on a pull.
///
/// The default is [`Model`](CongestionControl::Model): on emulated 200 Mbit/s WAN
/// paths whole transfers hold 0.87 of the link at 1 % random loss and 0.79 at 5 %,
/// where CUBIC and NewReno fall below 0.02 and quinn's BBR fills the bottleneck
/// queue (see `docs/BENCHMARKS.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CongestionControl {
    /// CUBIC (RFC 9438): the common loss-based choice; every loss reads as
    /// congestion, so random loss on a long path holds it to a few Mbit/s.
    Cubic,
    /// NewReno (RFC 9002): conservative and loss-based.
    NewReno,
    /// BBR (experimental in quinn): model-based, but it keeps the bottleneck queue
    /// full and has stalled connections at high loss.
    Bbr,
    /// Model-based and ours ([`congestion`]): paced from estimates of the
    /// bottleneck bandwidth and the propagation delay, loss-tolerant (random losses
    /// do not slow it; losses that come with a queue, and standing queues, do).
    #[default]
    Model,
}

impl CongestionControl {
    /// Every controller, in the order the names are listed.
    pub const ALL: [CongestionControl; 4] = [
        CongestionControl::Cubic,
        CongestionControl::NewReno,
        CongestionControl::Bbr,
        CongestionControl::Model,
    ];

    /// The name [`FromStr`] accepts: `cubic`, `newreno`, `bbr` or `model`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CongestionControl::Cubic => "cubic",
            CongestionControl::NewReno => "newreno",
            CongestionControl::Bbr => "bbr",
            CongestionControl::Model => "model",
        }
    }
}

impl std::fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CongestionControl {
    type Err = Error;

    /// Parses a controller's name, ignoring case.
    fn from_str(name: &str) -> Result<Self> {
        CongestionControl::ALL
            .into_iter()
            .find(|cc| cc.as_str().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                let valid: Vec<&str> = CongestionControl::ALL
                    .iter()
                    .map(|cc| cc.as_str())
                    .collect();
                Error::new(Reason::BadConfig(format!(
                    "unknown congestion controller {name:?}; valid: {}",
                    valid.join(", ")
                )))
            })
    }
}

/// QUIC settings. The defaults suit fast links with a large bandwidth-delay product
/// (1 Gbit/s at 100 ms is 12.5 MB in flight).
///
/// ```
/// use std::time::Duration;
/// use flow::{QuicConfig, QuicProtocol, CongestionControl};
/// let mut config = QuicConfig::default();
/// config.stream_receive_window(16 << 20).congestion(CongestionControl::Bbr);
/// let quic = QuicProtocol::new(config);
/// ```
#[derive(Clone, Debug)]
pub struct QuicConfig {
    stream_receive_window: u64,
    receive_window: u64,
    send_window: u64,
    max_concurrent_streams: u32,
    keep_alive_interval: Option<Duration>,
    idle_timeout: Duration,
    listen: ListenLimits,
    congestion: CongestionControl,
    socket_buffer: usize,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            stream_receive_window: 8 << 20,
            receive_window: 64 << 20,
            send_window: 64 << 20,
            max_concurrent_streams: 1024,
            keep_alive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            listen: ListenLimits::default(),
            socket_buffer: 4 << 20,
            congestion: CongestionControl::Model,
        }
    }
}

impl QuicConfig {
    /// Bytes one stream may have in flight towards us (default 8 MiB): one flow's
    /// ceiling is this divided by the round-trip time.
    pub fn stream_receive_window(&mut self, bytes: u64) -> &mut Self {
        self.stream_receive_window = bytes;
        self
    }

    /// Bytes all streams of a connection together may have in flight towards us
    /// (default 64 MiB).
    pub fn receive_window(&mut self, bytes: u64) -> &mut Self {
        self.receive_window = bytes;
        self
    }

    /// Bytes we buffer unacknowledged towards the peer per connection (default 64 MiB).
    pub fn send_window(&mut self, bytes: u64) -> &mut Self {
        self.send_window = bytes;
        self
    }

    /// How many flows the peer may have open towards us at once (default 1024).
    pub fn max_concurrent_streams(&mut self, count: u32) -> &mut Self {
        self.max_concurrent_streams = count;
        self
    }

    /// How often to send a keep-alive when nothing else is sent (default 10 s; `None`
    /// disables), so NATs and the idle timeout do not drop a quiet connection.
    pub fn keep_alive_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long a connection may hear nothing from the peer before it is considered
    /// dead (default 30 s).
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a listener gives an incoming handshake (default 10 s); see
    /// [`ListenLimits::handshake_timeout`].
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.listen.handshake_timeout(timeout);
        self
    }

    /// How many incoming handshakes a listener runs at once (default 256); beyond
    /// that, new connection attempts are refused until one finishes, so a flood of
    /// half-open connections costs bounded memory.
    pub fn max_concurrent_handshakes(&mut self, count: usize) -> &mut Self {
        self.listen.max_handshakes(count);
        self
    }

    /// The listener's limits on connections and handshakes, in total and per
    /// source (see [`ListenLimits`] for the defaults).
    pub fn listen_limits(&mut self, limits: ListenLimits) -> &mut Self {
        self.listen = limits;
        self
    }

    /// The UDP socket's send and receive buffer sizes to ask for (default 4 MiB;
    /// the kernel caps them at `net.core.wmem_max` / `rmem_max`). The default
    /// 208 KiB overflows when a fast sender's bursts arrive while the receiver is
    /// busy, and every datagram lost there reads to the sender as congestion.
    pub fn socket_buffer(&mut self, bytes: usize) -> &mut Self {
        self.socket_buffer = bytes;
        self
    }

    /// The congestion controller (default [`CongestionControl::Model`]).
    pub fn congestion(&mut self, congestion: CongestionControl) -> &mut Self {
        self.congestion = congestion;
        self
    }

    fn transport(&self) -> Result<quinn::TransportConfig> {
        let bad = |what: &str| Error::new(Reason::BadConfig(format!("quic: {what}")));
        let varint = |v: u64, what: &str| VarInt::from_u64(v).map_err(|_| bad(what));
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(varint(
            self.stream_receive_window,
            "stream receive window too large",
        )?)
        .receive_window(varint(self.receive_window, "receive window too large")?)
        .send_window(self.send_window)
        .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(1))
        .keep_alive_interval(self.keep_alive_interval)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout)
                .map_err(|_| bad("idle timeout too large"))?,
        ));
        match self.congestion {
            CongestionControl::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            CongestionControl::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            CongestionControl::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            CongestionControl::Model => {
                t.congestion_controller_factory(Arc::new(congestion::ModelConfig::new()))
            }
        };
        Ok(t)
    }
}

/// QUIC version 1 (RFC 9000), the only version we speak.
const QUIC_VERSION_1: u32 = 1;

/// A quinn endpoint on a UDP socket bound to `addr`, with `buffer`-byte socket
/// buffers asked for (what the kernel grants is capped by its limits).
fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    buffer: usize,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer works, only less well under bursts.
    let _ = state.set_recv_buffer_size((&socket).into(), buffer);
    let _ = state.set_send_buffer_size((&socket).into(), buffer);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| io::Error::other("no async runtime for QUIC (tokio expected)"))?;
    let mut config = quinn::EndpointConfig::default();
    // Version 1 only: quinn's default also offers drafts 29 to 34 in Version
    // Negotiation, which nobody should still speak.
    config.supported_versions(vec![QUIC_VERSION_1]);
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// The QUIC protocol, registered as `quic` in [`Registry::default`](crate::Registry).
#[derive(Debug, Default)]
pub struct QuicProtocol {
    config: QuicConfig,
}

impl QuicProtocol {
    /// QUIC with the given settings.
    pub fn new(config: QuicConfig) -> Self {
        QuicProtocol { config }
    }
}

#[async_trait]
impl Protocol for QuicProtocol {
    fn properties(&self) -> Properties {
        Properties::new().multistreaming(true).udp(true)
    }

    async fn dial(
        &self,
        ctx: &DialContext,
        _protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn Conn>> {
        let remote = resolve_socket_addr(address).await?;
        let tls = QuicClientConfig::try_from(ctx.tls_client_config(&[ALPN])?)
            .map_err(|e| Error::new(Reason::BadConfig(format!("quic tls: {e}"))))?;
        let mut client = quinn::ClientConfig::new(Arc::new(tls));
        client.transport_config(Arc::new(self.config.transport()?));

        let bind: SocketAddr = if remote.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = bind_endpoint(bind, None, self.config.socket_buffer)
            .map_err(|e| Error::new(Reason::ConnectFailed(format!("bind {bind}: {e}"))))?;
        let connecting = endpoint
            .connect_with(client, remote, TLS_SERVER_NAME)
            .map_err(|e| Error::new(Reason::ConnectFailed(e.to_string())))?;

        let handshake = async {
            let conn = connecting
                .await
                .map_err(|e| dial_error(e, ctx.take_refusal()))?;
            let remote_key = peer_key(&conn)?;
            await_welcome(&conn).await?;
            Ok::<_, Error>((conn, remote_key))
        };
        let (conn, remote_key) = match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::new(Reason::Timeout(timeout))),
        };
        Ok(Arc::new(QuicConn {
            conn,
            endpoint,
            remote_key,
            _admitted: None,
        }))
    }

    async fn listen(
        &self,
        ctx: &ListenContext,
        _protocol: &str,
        address: &str,
    ) -> Result<Box<dyn Listener>> {
        let addr = resolve_socket_addr(address).await?;
        let tls = QuicServerConfig::try_from(ctx.tls_server_config(&[ALPN])?)
            .map_err(|e| Error::new(Reason::BadConfig(format!("quic tls: {e}"))))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls));
        server.transport_config(Arc::new(self.config.transport()?));
        let endpoint =
            bind_endpoint(addr, Some(server), self.config.socket_buffer).map_err(|e| {
                Error::new(Reason::Protocol(
                    crate::ErrorKind::BadArg,
                    format!("cannot listen on {addr}: {e}"),
                ))
            })?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::new(Reason::Io(e.to_string())))?;
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            tx,
            stop.clone(),
            Admission::new(self.config.listen.clone()),
        ));
        Ok(Box::new(QuicListener {
            endpoint,
            local,
            incoming: Mutex::new(rx),
            stop,
        }))
    }
}

/// Waits for the server's confirmation that it accepted our identity.
async fn await_welcome(conn: &quinn::Connection) -> Result<()> {
    let mut stream = conn.accept_uni().await.map_err(|e| dial_error(e, None))?;
    let welcome = stream
        .read_to_end(WELCOME.len())
        .await
        .map_err(|e| Error::new(Reason::IncompatibleVersion(e.to_string())))?;
    if welcome != WELCOME {
        return Err(Error::new(Reason::IncompatibleVersion(
            String::from_utf8_lossy(&welcome).into_owned(),
        )));
    }
    Ok(())
}

/// Accepts handshakes concurrently, so one slow client does not hold up the others,
/// within the listener's admission limits.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    ready: mpsc::Sender<Result<Arc<dyn Conn>>>,
    stop: CancellationToken,
    admission: Arc<Admission>,
) {
    loop {
        let incoming = tokio::select! {
            // A stopped listener must not take one more connection.
            biased;
            _ = stop.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        if stop.is_cancelled() {
            if let Some(incoming) = incoming {
                incoming.refuse();
            }
            return;
        }
        let Some(incoming) = incoming else {
            let _ = ready
                .send(Err(Error::new(Reason::ConnectionLost(
                    "quic endpoint closed".into(),
                ))))
                .await;
            return;
        };
        let remote = incoming.remote_address();
        if !incoming.remote_address_validated() && incoming.may_retry() && admission.under_load() {
            // Costs us one stateless packet; a spoofed source never answers it.
            tracing::debug!(%remote, "under load; asking the client to validate its address");
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let mut admitted = match admission.admit(remote) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                tracing::debug!(%remote, %refusal, "refusing a connection");
                incoming.refuse();
                continue;
            }
        };
        let ready = ready.clone();
        let endpoint = endpoint.clone();
        let handshake_timeout = admission.limits().handshake_timeout;
        tokio::spawn(async move {
            let handshake = async {
                let conn = incoming.await.map_err(|e| dial_error(e, None))?;
                let remote_key = peer_key(&conn)?;
                let mut welcome = conn.open_uni().await.map_err(|e| dial_error(e, None))?;
                welcome
                    .write_all(WELCOME)
                    .await
                    .map_err(|e| Error::new(Reason::Io(e.to_string())))?;
                let _ = welcome.finish();
                Ok::<_, Error>((conn, remote_key))
            };
            let outcome = tokio::time::timeout(handshake_timeout, handshake).await;
            admitted.handshake_done();
            match outcome {
                Ok(Ok((conn, remote_key))) => {
                    let conn = QuicConn {
                        conn,
                        endpoint,
                        remote_key,
                        _admitted: Some(admitted),
                    };
                    let _ = ready.send(Ok(Arc::new(conn))).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "incoming handshake failed"),
                Err(_) => tracing::debug!(%remote, "incoming handshake timed out"),
            }
        });
    }
}

/// The peer's Ed25519 key from the certificate it presented.
fn peer_key(conn: &quinn::Connection) -> Result<PeerKey> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| Error::new(Reason::NoPeerKey("no certificate presented".into())))?;
    key_from_certificates(&certs)
}

/// An error while a connection is being set up.
fn dial_error(err: ConnectionError, refusal: Option<Error>) -> Error {
    if let Some(refusal) = refusal {
        return refusal.with_source(err);
    }
    let reason = match &err {
        ConnectionError::ConnectionClosed(close) => {
            let refused = REFUSAL_ALERTS
                .iter()
                .any(|alert| close.error_code == TransportErrorCode::crypto(*alert));
            // TLS alerts 70 (protocol_version), 40 (handshake_failure) and
            // 120 (no_application_protocol): a QUIC peer, but not one of ours.
            let foreign = [70u8, 40, 120]
                .iter()
                .any(|alert| close.error_code == TransportErrorCode::crypto(*alert));
            if refused {
                Reason::RefusedByPeer
            } else if foreign {
                Reason::NotMftq(format!("it closed the QUIC handshake: {close}"))
            } else {
                Reason::ConnectFailed(format!("peer closed the handshake: {close}"))
            }
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CloseCode::NotTrusted.as_u32()) =>
        {
            Reason::RefusedByPeer
        }
        ConnectionError::VersionMismatch => Reason::IncompatibleVersion("quic version".into()),
        ConnectionError::TimedOut => Reason::ConnectFailed("handshake timed out".into()),
        ConnectionError::LocallyClosed => Reason::ClosedLocally("connection closed".into()),
        other => Reason::ConnectFailed(other.to_string()),
    };
    Error::new(reason).with_source(err)
}

/// An error on an established connection.
fn connection_error(err: ConnectionError) -> Error {
    let reason = match &err {
        ConnectionError::ApplicationClosed(close) => {
            let why = String::from_utf8_lossy(&close.reason).into_owned();
            match CloseCode::from_u32(
                u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX),
            ) {
                Some(CloseCode::NotTrusted) => Reason::RefusedByPeer,
                Some(CloseCode::Idle) => Reason::ClosedByPeer(format!("idle: {why}")),
                _ => Reason::ClosedByPeer(why),
            }
        }
        ConnectionError::LocallyClosed => Reason::ClosedLocally("connection closed".into()),
        ConnectionError::TimedOut => Reason::ConnectionLost("peer stopped answering".into()),
        other => Reason::ConnectionLost(other.to_string()),
    };
    Error::new(reason).with_source(err)
}

/// A QUIC connection; holds its endpoint so the socket lives as long as it does.
#[derive(Debug)]
struct QuicConn {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    remote_key: PeerKey,
    /// An accepted connection's slot in its listener's counts, held while it lives.
    _admitted: Option<Admitted>,
}

#[async_trait]
impl Conn for QuicConn {
    async fn open_flow(&self) -> Result<RawFlow> {
        let (send, recv) = self.conn.open_bi().await.map_err(connection_error)?;
        Ok(RawFlow::with_chunked_send(QuicRecv(recv), QuicSend(send)))
    }

    async fn accept_flow(&self) -> Result<RawFlow> {
        let (send, recv) = self.conn.accept_bi().await.map_err(connection_error)?;
        Ok(RawFlow::with_chunked_send(QuicRecv(recv), QuicSend(send)))
    }

    fn remote_key(&self) -> PeerKey {
        self.remote_key
    }

    fn remote_address(&self) -> String {
        self.conn.remote_address().to_string()
    }

    fn local_address(&self) -> String {
        let bound = self.endpoint.local_addr().ok();
        match (self.conn.local_ip(), bound) {
            (Some(ip), Some(bound)) => SocketAddr::new(ip, bound.port()).to_string(),
            (None, Some(bound)) => bound.to_string(),
            _ => "unknown".to_string(),
        }
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.conn.rtt())
    }

    fn close(&self, code: CloseCode, reason: &str) {
        self.conn
            .close(VarInt::from_u32(code.as_u32()), reason.as_bytes());
    }

    async fn closed(&self) -> Error {
        connection_error(self.conn.closed().await)
    }

    fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}

/// Listens on one UDP socket. Closing it stops new connections but keeps the
/// connections already accepted (and so the socket) alive.
#[derive(Debug)]
struct QuicListener {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    incoming: Mutex<mpsc::Receiver<Result<Arc<dyn Conn>>>>,
    stop: CancellationToken,
}

#[async_trait]
impl Listener for QuicListener {
    async fn accept(&self) -> Result<Arc<dyn Conn>> {
        let mut incoming = tokio::select! {
            rx = self.incoming.lock() => rx,
            _ = self.stop.cancelled() => return Err(Error::new(Reason::NotListening)),
        };
        tokio::select! {
            conn = incoming.recv() => conn.unwrap_or_else(|| Err(Error::new(Reason::NotListening))),
            _ = self.stop.cancelled() => Err(Error::new(Reason::NotListening)),
        }
    }

    fn local_address(&self) -> String {
        self.local.to_string()
    }

    fn close(&self) {
        self.stop.cancel();
        self.endpoint.set_server_config(None);
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A QUIC receive stream whose errors carry a [`flow::Error`](Error).
struct QuicRecv(quinn::RecvStream);

impl AsyncRead for QuicRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf).map_err(|e| {
            match e.downcast::<ReadError>() {
                Ok(err) => read_error(err).into_io(),
                Err(e) => e,
            }
        })
    }
}

fn read_error(err: ReadError) -> Error {
    match err {
        ReadError::ConnectionLost(e) => connection_error(e),
        ReadError::Reset(code) => Error::new(Reason::ClosedByPeer(format!(
            "flow reset by peer (code {code})"
        ))),
        other => Error::new(Reason::Io(other.to_string())),
    }
}

/// A QUIC send stream whose errors carry a [`flow::Error`](Error).
struct QuicSend(quinn::SendStream);

impl QuicSend {
    fn map(e: io::Error) -> io::Error {
        match e.downcast::<WriteError>() {
            Ok(WriteError::ConnectionLost(e)) => connection_error(e).into_io(),
            Ok(WriteError::Stopped(code)) => Error::new(Reason::ClosedByPeer(format!(
                "peer stopped reading (code {code})"
            )))
            .into_io(),
            Ok(other) => Error::new(Reason::Io(other.to_string())).into_io(),
            Err(e) => e,
        }
    }
}

impl crate::registry::FlowSend for QuicSend {
    /// Hands the buffers to quinn, which keeps them until they are acknowledged:
    /// no copy.
    fn write_chunks<'a>(
        self: Pin<&'a mut Self>,
        chunks: &'a mut [bytes::Bytes],
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let this = self.get_mut();
            this.0
                .write_all_chunks(chunks)
                .await
                .map_err(|e| QuicSend::map(io::Error::from(e)))
        })
    }
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf).map_err(QuicSend::map)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx).map_err(QuicSend::map)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx).map_err(QuicSend::map)
    }
}
