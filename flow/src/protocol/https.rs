//! The HTTPS fallback: flows as HTTP/2 streams over TLS 1.3 over TCP, for networks
//! that block UDP.
//!
//! One TCP connection per peer carries HTTP/2 (ALPN `h2`, hyper). A flow is one
//! `POST /mftq/flow` request: the client's bytes travel in the request body, the
//! server's in the response body, both streaming at once, so a flow behaves as over
//! QUIC. TLS is the same mutual Ed25519 authentication as QUIC's, with one addition:
//! a client may connect without a certificate, and then may only ask `GET /healthz`
//! (load balancers); every other anonymous request gets 401.
//!
//! As over QUIC, a TLS 1.3 client finishes its handshake before the server has
//! judged its certificate, so the server confirms: its first application bytes on a
//! connection with an accepted certificate are [`WELCOME`], before HTTP/2 begins, and
//! a dial reads them (or the alert refusing it) before returning. HTTP/2 has no way for a server to open a stream to its client, so on
//! this protocol only the dialer opens flows (the transfer protocol never needs
//! more); the listening side's `open_flow` fails with [`ErrorKind::BadArg`].
//!
//! Limits: a connection whose accept queue is full answers new flows with
//! `503 Service Unavailable` and `Retry-After`, which the dialer reports as
//! [`Reason::Busy`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::{CancellationToken, PollSender};

use crate::error::{Error, ErrorKind, Reason, Result};
use crate::identity::{PeerKey, TLS_SERVER_NAME, key_from_certificates};
use crate::protocol::abort::AbortOnClose;
use crate::protocol::admission::{Admission, Admitted, ListenLimits};
use crate::registry::{
    CloseCode, Conn, DialContext, ListenContext, Listener, Properties, Protocol, RawFlow,
    resolve_socket_addr,
};

/// The ALPN protocols the listener offers: HTTP/2 for flows, HTTP/1.1 for health
/// checks.
const ALPN_SERVER: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// What a dialer offers: flows need HTTP/2.
const ALPN_CLIENT: [&[u8]; 1] = [b"h2"];

/// The path of a flow request.
pub const FLOW_PATH: &str = "/mftq/flow";
/// The health-check path, answered to anyone.
pub const HEALTH_PATH: &str = "/healthz";
/// What a listener writes first on a connection whose client certificate it
/// accepted, before HTTP/2 begins.
pub const WELCOME: &[u8] = b"mftq-flow/1 welcome";

/// Chunks of a flow buffered between the application and HTTP/2, each direction.
const PIPE_CHUNKS: usize = 4;
/// The largest chunk handed to HTTP/2 at once.
const MAX_CHUNK: usize = 256 << 10;

/// HTTPS settings, beside [`QuicConfig`](crate::QuicConfig); defaults for fast long
/// paths.
///
/// ```
/// let mut config = flow::HttpsConfig::default();
/// config.stream_window(16 << 20).connection_window(128 << 20);
/// let https = flow::HttpsProtocol::new(config);
/// ```
#[derive(Clone, Debug)]
pub struct HttpsConfig {
    stream_window: u32,
    connection_window: u32,
    max_concurrent_streams: u32,
    max_frame_size: u32,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Duration,
    listen: ListenLimits,
    accept_backlog: usize,
    busy_retry_after: Duration,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig {
            stream_window: 8 << 20,
            connection_window: 64 << 20,
            max_concurrent_streams: 1024,
            max_frame_size: 256 << 10,
            keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Duration::from_secs(20),
            listen: ListenLimits::default(),
            accept_backlog: 256,
            busy_retry_after: Duration::from_secs(1),
        }
    }
}

impl HttpsConfig {
    /// HTTP/2 flow-control window per stream (default 8 MiB, like QUIC's), so one
    /// flow can fill a long fat path.
    pub fn stream_window(&mut self, bytes: u32) -> &mut Self {
        self.stream_window = bytes.clamp(65_535, (1 << 31) - 1);
        self
    }

    /// HTTP/2 flow-control window per connection (default 64 MiB).
    pub fn connection_window(&mut self, bytes: u32) -> &mut Self {
        self.connection_window = bytes.clamp(65_535, (1 << 31) - 1);
        self
    }

    /// Flows the peer may have open at once (default 1024).
    pub fn max_concurrent_streams(&mut self, count: u32) -> &mut Self {
        self.max_concurrent_streams = count;
        self
    }

    /// Largest HTTP/2 DATA frame (default 256 KiB; 16 KiB to 16 MiB).
    pub fn max_frame_size(&mut self, bytes: u32) -> &mut Self {
        self.max_frame_size = bytes.clamp(16 << 10, (16 << 20) - 1);
        self
    }

    /// HTTP/2 PING interval on quiet connections (default 10 s; `None` disables).
    pub fn keep_alive_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long a PING may go unanswered before the connection is dead (default 20 s).
    pub fn keep_alive_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// How long a listener gives an incoming handshake (default 10 s); see
    /// [`ListenLimits::handshake_timeout`].
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.listen.handshake_timeout(timeout);
        self
    }

    /// Incoming handshakes run at once (default 256); beyond, new TCP connections
    /// are closed at once.
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

    /// Incoming flows of one connection waiting for the manager (default 256); beyond,
    /// new flows get `503` with `Retry-After`.
    pub fn accept_backlog(&mut self, count: usize) -> &mut Self {
        self.accept_backlog = count.max(1);
        self
    }

    /// The `Retry-After` a busy listener sends (default 1 s).
    pub fn busy_retry_after(&mut self, delay: Duration) -> &mut Self {
        self.busy_retry_after = delay;
        self
    }
}

/// The HTTPS protocol, registered as `https` in [`Registry::default`](crate::Registry).
#[derive(Debug, Default)]
pub struct HttpsProtocol {
    config: Arc<HttpsConfig>,
}

impl HttpsProtocol {
    /// HTTPS with the given settings.
    pub fn new(config: HttpsConfig) -> Self {
        HttpsProtocol {
            config: Arc::new(config),
        }
    }
}

/// The TLS alerts (as rustls names them) by which a peer refuses our certificate.
const REFUSAL_ALERT_NAMES: [&str; 6] = [
    "BadCertificate",
    "UnsupportedCertificate",
    "CertificateUnknown",
    "UnknownCA",
    "AccessDenied",
    "CertificateRequired",
];

/// Whether a failed TLS exchange was the peer refusing our certificate.
fn peer_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription::*;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(rustls::Error::AlertReceived(
            BadCertificate
            | UnsupportedCertificate
            | CertificateUnknown
            | UnknownCA
            | AccessDenied
            | CertificateRequired,
        )) = e.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && peer_refused(inner)
        {
            return true;
        }
        // h2 keeps only the text of I/O errors (they are not Clone), so the alert
        // may survive only as rustls' message.
        let text = e.to_string();
        if REFUSAL_ALERT_NAMES
            .iter()
            .any(|name| text.contains(&format!("received fatal alert: {name}")))
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a failed TLS handshake shows the peer is not one of ours: it sent
/// something that is not TLS, or TLS we cannot agree on (an older version, no
/// common application protocol).
fn not_ours(err: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription::*;
    let mut current = Some(err);
    while let Some(e) = current {
        match e.downcast_ref::<rustls::Error>() {
            Some(
                rustls::Error::InvalidMessage(_)
                | rustls::Error::PeerIncompatible(_)
                | rustls::Error::AlertReceived(
                    ProtocolVersion | HandshakeFailure | NoApplicationProtocol,
                ),
            ) => return true,
            Some(_) => return false,
            None => {}
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            return not_ours(inner);
        }
        current = e.source();
    }
    false
}

/// The error for a failure while setting up a dialed connection.
fn dial_error(ctx: &DialContext, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    if let Some(refusal) = ctx.take_refusal() {
        return refusal.with_source(err);
    }
    if peer_refused(&err) {
        return Error::new(Reason::RefusedByPeer).with_source(err);
    }
    if not_ours(&err) {
        return Error::new(Reason::NotMftq(format!("the TLS handshake failed: {err}")))
            .with_source(err);
    }
    Error::new(Reason::ConnectFailed(err.to_string())).with_source(err)
}

#[async_trait]
impl Protocol for HttpsProtocol {
    fn properties(&self) -> Properties {
        Properties::new().multistreaming(true).tcp(true)
    }

    async fn dial(
        &self,
        ctx: &DialContext,
        protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn Conn>> {
        let remote = resolve_socket_addr(address).await?;
        let connector = TlsConnector::from(Arc::new(ctx.tls_client_config(&ALPN_CLIENT)?));
        let config = self.config.clone();
        let setup = async {
            let tcp = TcpStream::connect(remote).await.map_err(|e| {
                let reason = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    Reason::Refused(format!("{protocol}://{address} refused the connection"))
                } else {
                    Reason::ConnectFailed(e.to_string())
                };
                Error::new(reason).with_source(e)
            })?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let server_name = ServerName::try_from(TLS_SERVER_NAME)
                .map_err(|e| Error::new(Reason::BadConfig(e.to_string())))?;
            let mut tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| dial_error(ctx, e))?;
            // The server's first bytes: its welcome, or the alert refusing us.
            let mut welcome = [0u8; WELCOME.len()];
            tokio::io::AsyncReadExt::read_exact(&mut tls, &mut welcome)
                .await
                .map_err(|e| dial_error(ctx, e))?;
            if welcome != WELCOME {
                return Err(Error::new(Reason::IncompatibleVersion(
                    String::from_utf8_lossy(&welcome).into_owned(),
                )));
            }
            let remote_key =
                key_from_certificates(tls.get_ref().1.peer_certificates().unwrap_or(&[]))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(Error::new(Reason::IncompatibleVersion(
                    "the server did not agree to HTTP/2".into(),
                )));
            }
            let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .initial_stream_window_size(config.stream_window)
                .initial_connection_window_size(config.connection_window)
                .max_frame_size(config.max_frame_size)
                .keep_alive_interval(config.keep_alive_interval)
                .keep_alive_timeout(config.keep_alive_timeout)
                .keep_alive_while_idle(true);
            let state = ConnState::new();
            // Closing cuts the I/O under hyper, which otherwise finishes open streams
            // before it lets a connection go.
            let io = state.abortable(WatchRefusal {
                inner: tls,
                state: state.clone(),
            });
            let (sender, connection) = builder
                .handshake::<_, PipeBody>(TokioIo::new(io))
                .await
                .map_err(|e| dial_error(ctx, e))?;
            tokio::spawn({
                let state = state.clone();
                async move {
                    let outcome = tokio::select! {
                        r = connection => r.map_err(|e| {
                            // A server that refuses our certificate says so with a
                            // TLS alert, which arrives here.
                            if peer_refused(&e) {
                                Error::new(Reason::RefusedByPeer).with_source(e)
                            } else {
                                Error::new(Reason::ConnectionLost(e.to_string())).with_source(e)
                            }
                        }),
                        _ = state.token.cancelled() => Ok(()),
                    };
                    state.ended(outcome);
                }
            });
            Ok(HttpsConn {
                state,
                side: Side::Client(sender),
                remote_key,
                local,
                remote: remote.to_string(),
            })
        };
        match tokio::time::timeout(timeout, setup).await {
            Ok(conn) => Ok(Arc::new(conn?)),
            Err(_) => Err(Error::new(Reason::Timeout(timeout))),
        }
    }

    async fn listen(
        &self,
        ctx: &ListenContext,
        _protocol: &str,
        address: &str,
    ) -> Result<Box<dyn Listener>> {
        let addr = resolve_socket_addr(address).await?;
        let acceptor = TlsAcceptor::from(Arc::new(
            ctx.tls_server_config_allowing_anonymous(&ALPN_SERVER)?,
        ));
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            Error::new(Reason::Protocol(
                ErrorKind::BadArg,
                format!("cannot listen on {addr}: {e}"),
            ))
        })?;
        let local = tcp
            .local_addr()
            .map_err(|e| Error::new(Reason::Io(e.to_string())))?;
        let (ready_tx, ready_rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            tcp,
            acceptor,
            self.config.clone(),
            ready_tx,
            stop.clone(),
        ));
        Ok(Box::new(HttpsListener {
            local,
            ready: tokio::sync::Mutex::new(ready_rx),
            stop,
        }))
    }
}

/// Takes TCP connections and runs their TLS handshakes concurrently, within the
/// listener's admission limits.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    config: Arc<HttpsConfig>,
    ready: mpsc::Sender<Arc<dyn Conn>>,
    stop: CancellationToken,
) {
    let admission = Admission::new(config.listen.clone());
    loop {
        let accepted = tokio::select! {
            // A stopped listener must not take one more connection.
            biased;
            _ = stop.cancelled() => return,
            accepted = tcp.accept() => accepted,
        };
        if stop.is_cancelled() {
            return;
        }
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match admission.admit(remote) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                tracing::debug!(%remote, %refusal, "closing a connection");
                continue;
            }
        };
        tokio::spawn(accept_one(
            Accepting {
                stream,
                remote,
                admitted,
            },
            acceptor.clone(),
            config.clone(),
            ready.clone(),
            stop.clone(),
        ));
    }
}

/// A TCP connection the listener admitted, before its TLS handshake.
struct Accepting {
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Admitted,
}

/// Runs one connection's TLS handshake, welcomes an authenticated peer and
/// serves HTTP on it; the admission slot is held until the connection ends.
async fn accept_one(
    accepting: Accepting,
    acceptor: TlsAcceptor,
    config: Arc<HttpsConfig>,
    ready: mpsc::Sender<Arc<dyn Conn>>,
    stop: CancellationToken,
) {
    let Accepting {
        stream,
        remote,
        mut admitted,
    } = accepting;
    let handshake = tokio::time::timeout(config.listen.handshake_timeout, async {
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        acceptor.accept(stream).await.map(|tls| (tls, local))
    })
    .await;
    admitted.handshake_done();
    let (mut tls, local) = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "https handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "https handshake timed out");
            return;
        }
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(key_from_certificates);
    let authenticated = match peer {
        Some(Ok(key)) => {
            // Confirm before HTTP/2 starts: the client waits for these bytes (or
            // reads the alert that refused it).
            let welcome = async {
                tokio::io::AsyncWriteExt::write_all(&mut tls, WELCOME).await?;
                tokio::io::AsyncWriteExt::flush(&mut tls).await
            };
            if let Err(e) = welcome.await {
                tracing::debug!(%remote, error = %e, "could not welcome");
                return;
            }
            let (flows_tx, flows_rx) = mpsc::channel(config.accept_backlog);
            let conn = HttpsConn {
                state: ConnState::new(),
                side: Side::Server(tokio::sync::Mutex::new(flows_rx)),
                remote_key: key,
                local,
                remote: remote.to_string(),
            };
            let state = conn.state.clone();
            if ready.send(Arc::new(conn)).await.is_err() {
                return;
            }
            Some((state, flows_tx))
        }
        Some(Err(e)) => {
            tracing::debug!(%remote, error = %e, "https peer without a usable key");
            return;
        }
        None => None,
    };
    if authenticated.is_some() {
        serve_connection(tls, authenticated, config, stop).await;
    } else {
        // Health checks and the like: short-lived whatever they do, so idle,
        // pinging or half-sent anonymous connections cannot pile up.
        let lifetime = config.listen.anonymous_lifetime;
        let served = serve_connection(tls, None, config, stop);
        if tokio::time::timeout(lifetime, served).await.is_err() {
            tracing::debug!(%remote, "anonymous connection reached its lifetime; closing");
        }
    }
    drop(admitted);
}

/// Serves HTTP on one TLS connection until it ends or the listener's conn is closed.
async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    authenticated: Option<(Arc<ConnState>, mpsc::Sender<RawFlow>)>,
    config: Arc<HttpsConfig>,
    stop: CancellationToken,
) {
    let state = authenticated.as_ref().map(|(s, _)| s.clone());
    let flows = authenticated.map(|(_, tx)| tx);
    let retry_after = config.busy_retry_after.as_secs().max(1).to_string();
    let conn_state = state.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let flows = flows.clone();
        let state = conn_state.clone();
        let retry_after = retry_after.clone();
        async move { Ok::<_, Infallible>(route(request, flows.as_ref(), state.as_ref(), &retry_after)) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently skips the HTTP/1 header-read timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.listen.handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.max_frame_size)
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.keep_alive_timeout);
    let closed = state.as_ref().map(|s| s.token.clone()).unwrap_or_default();
    let io = match &state {
        // Closing cuts the I/O under hyper, so the peer's flows end at once.
        Some(state) => state.abortable(tls),
        // Anonymous connections have nothing to close them by but the listener's stop.
        None => AbortOnClose::new(tls, &closed, Arc::new(|| Error::new(Reason::NotListening))),
    };
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let outcome = tokio::select! {
        r = connection => r.map_err(|e| Error::new(Reason::ConnectionLost(e.to_string()))),
        _ = closed.cancelled() => Ok(()),
        // A stopped listener keeps authenticated connections; anonymous ones go.
        _ = stop.cancelled(), if state.is_none() => Ok(()),
    };
    if let Some(state) = state {
        state.ended(outcome);
    }
}

/// Answers one request.
fn route(
    request: Request<Incoming>,
    flows: Option<&mpsc::Sender<RawFlow>>,
    state: Option<&Arc<ConnState>>,
    retry_after: &str,
) -> Response<PipeBody> {
    let status = |code: StatusCode, text: &'static str| {
        let mut response = Response::new(PipeBody::full(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = code;
        response
    };
    match (request.method(), request.uri().path(), flows, state) {
        (&Method::GET, HEALTH_PATH, _, _) => status(StatusCode::OK, "ok\n"),
        (_, FLOW_PATH, None, _) | (_, FLOW_PATH, _, None) => status(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required\n",
        ),
        (&Method::POST, FLOW_PATH, Some(flows), Some(state)) => {
            if request.version() != hyper::Version::HTTP_2 {
                return status(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "flows need HTTP/2\n",
                );
            }
            let (send, body) = pipe();
            let flow = RawFlow::new(
                state.abortable(IncomingReader::new_body(request.into_body())),
                state.abortable(send),
            );
            match flows.try_send(flow) {
                Ok(()) => Response::new(body),
                Err(_) => {
                    let mut busy = status(StatusCode::SERVICE_UNAVAILABLE, "busy; retry later\n");
                    if let Ok(value) = hyper::header::HeaderValue::from_str(retry_after) {
                        busy.headers_mut().insert(hyper::header::RETRY_AFTER, value);
                    }
                    busy
                }
            }
        }
        (_, HEALTH_PATH | FLOW_PATH, _, _) => {
            status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What both ends of a connection's tasks share: whether it is closed and why.
#[derive(Debug)]
struct ConnState {
    token: CancellationToken,
    reason: Mutex<Option<Error>>,
}

impl ConnState {
    fn new() -> Arc<Self> {
        Arc::new(ConnState {
            token: CancellationToken::new(),
            reason: Mutex::new(None),
        })
    }

    fn set_reason(&self, reason: Error) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
    }

    /// The connection task finished: record how, and close.
    fn ended(&self, outcome: Result<()>) {
        self.set_reason(match outcome {
            Ok(()) => Error::new(Reason::ClosedByPeer("connection closed".into())),
            Err(e) => e,
        });
        self.token.cancel();
    }

    fn error(&self) -> Error {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Error::new(Reason::ConnectionLost("connection closed".into())))
    }

    fn abortable<T>(self: &Arc<Self>, inner: T) -> AbortOnClose<T> {
        let state = self.clone();
        AbortOnClose::new(inner, &self.token, Arc::new(move || state.error()))
    }
}

enum Side {
    /// We dialed: we open flows.
    Client(SendRequest<PipeBody>),
    /// We accepted: flows arrive from the HTTP service.
    Server(tokio::sync::Mutex<mpsc::Receiver<RawFlow>>),
}

/// One HTTP/2 connection to a peer.
struct HttpsConn {
    state: Arc<ConnState>,
    side: Side,
    remote_key: PeerKey,
    local: String,
    remote: String,
}

impl std::fmt::Debug for HttpsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConn")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("remote_key", &self.remote_key)
            .finish_non_exhaustive()
    }
}

impl HttpsConn {
    fn sender(&self) -> Result<SendRequest<PipeBody>> {
        match &self.side {
            Side::Client(sender) => Ok(sender.clone()),
            Side::Server(_) => Err(Error::new(Reason::Protocol(
                ErrorKind::BadArg,
                "over HTTPS only the dialing side opens flows".into(),
            ))),
        }
    }

    fn request(&self, method: Method, path: &str, body: PipeBody) -> Result<Request<PipeBody>> {
        Request::builder()
            .method(method)
            .uri(format!("https://{TLS_SERVER_NAME}{path}"))
            .body(body)
            .map_err(|e| Error::new(Reason::Io(e.to_string())))
    }
}

#[async_trait]
impl Conn for HttpsConn {
    async fn open_flow(&self) -> Result<RawFlow> {
        if self.state.token.is_cancelled() {
            return Err(self.state.error());
        }
        let mut sender = self.sender()?;
        std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(|_| self.state.error())?;
        let (send, body) = pipe();
        let request = self.request(Method::POST, FLOW_PATH, body)?;
        // The request goes out now; the response (the peer's half) is awaited by the
        // first read, so opening a flow costs no round trip.
        let response = sender.send_request(request);
        Ok(RawFlow::new(
            self.state
                .abortable(IncomingReader::new_response(Box::pin(response))),
            self.state.abortable(send),
        ))
    }

    async fn accept_flow(&self) -> Result<RawFlow> {
        match &self.side {
            Side::Server(flows) => {
                let mut flows = flows.lock().await;
                tokio::select! {
                    flow = flows.recv() => flow.ok_or_else(|| self.state.error()),
                    _ = self.state.token.cancelled() => Err(self.state.error()),
                }
            }
            Side::Client(_) => {
                // HTTP/2 servers cannot open streams: wait for the end.
                self.state.token.cancelled().await;
                Err(self.state.error())
            }
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

    fn close(&self, code: CloseCode, reason: &str) {
        let why = match code {
            CloseCode::Idle => format!("idle: {reason}"),
            _ => reason.to_string(),
        };
        self.state
            .set_reason(Error::new(Reason::ClosedLocally(why)));
        self.state.token.cancel();
    }

    async fn closed(&self) -> Error {
        self.state.token.cancelled().await;
        self.state.error()
    }

    fn is_closed(&self) -> bool {
        self.state.token.is_cancelled()
    }
}

impl Drop for HttpsConn {
    fn drop(&mut self) {
        self.state.set_reason(Error::new(Reason::ClosedLocally(
            "connection dropped".into(),
        )));
        self.state.token.cancel();
    }
}

#[derive(Debug)]
struct HttpsListener {
    local: SocketAddr,
    ready: tokio::sync::Mutex<mpsc::Receiver<Arc<dyn Conn>>>,
    stop: CancellationToken,
}

#[async_trait]
impl Listener for HttpsListener {
    async fn accept(&self) -> Result<Arc<dyn Conn>> {
        let mut ready = tokio::select! {
            rx = self.ready.lock() => rx,
            _ = self.stop.cancelled() => return Err(Error::new(Reason::NotListening)),
        };
        tokio::select! {
            conn = ready.recv() => conn.ok_or_else(|| Error::new(Reason::NotListening)),
            _ = self.stop.cancelled() => Err(Error::new(Reason::NotListening)),
        }
    }

    fn local_address(&self) -> String {
        self.local.to_string()
    }

    fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A request or response body fed from a channel (or one fixed chunk).
struct PipeBody {
    rx: Option<mpsc::Receiver<Bytes>>,
    full: Option<Bytes>,
}

impl PipeBody {
    fn full(bytes: Bytes) -> Self {
        PipeBody {
            rx: None,
            full: Some(bytes),
        }
    }
}

impl Body for PipeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        if let Some(bytes) = self.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() && self.full.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.rx, &self.full) {
            (None, Some(bytes)) => hyper::body::SizeHint::with_exact(bytes.len() as u64),
            (None, None) => hyper::body::SizeHint::with_exact(0),
            (Some(_), _) => hyper::body::SizeHint::default(),
        }
    }
}

/// A flow's sending half and the body that carries its bytes.
fn pipe() -> (PipeWriter, PipeBody) {
    let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
    (
        PipeWriter {
            tx: PollSender::new(tx),
        },
        PipeBody {
            rx: Some(rx),
            full: None,
        },
    )
}

/// Writes a flow's bytes into its HTTP body; shutting down ends the body.
struct PipeWriter {
    tx: PollSender<Bytes>,
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the flow's stream was closed",
            )));
        }
        let n = buf.len().min(MAX_CHUNK);
        match self.tx.send_item(Bytes::copy_from_slice(&buf[..n])) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the flow's stream was closed",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

type ResponseFuture = Pin<
    Box<
        dyn std::future::Future<Output = std::result::Result<Response<Incoming>, hyper::Error>>
            + Send,
    >,
>;

/// Reads a flow's bytes from an HTTP body (after the response, on the client).
struct IncomingReader {
    response: Option<ResponseFuture>,
    body: Option<Incoming>,
    current: Bytes,
}

impl IncomingReader {
    fn new_body(body: Incoming) -> Self {
        IncomingReader {
            response: None,
            body: Some(body),
            current: Bytes::new(),
        }
    }

    fn new_response(response: ResponseFuture) -> Self {
        IncomingReader {
            response: Some(response),
            body: None,
            current: Bytes::new(),
        }
    }
}

fn hyper_io_error(e: hyper::Error) -> io::Error {
    let reason = if e.is_closed() || e.is_canceled() {
        Reason::ClosedByPeer(format!("stream ended: {e}"))
    } else {
        Reason::ConnectionLost(e.to_string())
    };
    Error::new(reason).with_source(e).into_io()
}

impl AsyncRead for IncomingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use bytes::Buf;
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(response) = self.response.as_mut() {
                let response = ready!(response.as_mut().poll(cx)).map_err(hyper_io_error)?;
                self.response = None;
                let status = response.status();
                if status != StatusCode::OK {
                    let retry_after = response
                        .headers()
                        .get(hyper::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let reason = match (status, retry_after) {
                        (
                            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS,
                            delay,
                        ) => Reason::Busy(delay.unwrap_or(Duration::from_secs(1))),
                        _ => Reason::ClosedByPeer(format!("the server answered {status}")),
                    };
                    return Poll::Ready(Err(Error::new(reason).into_io()));
                }
                self.body = Some(response.into_body());
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.current = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(hyper_io_error(e))),
                None => {
                    self.body = None;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A dialer's TLS stream, watched for the alert by which a server refuses our
/// certificate: hyper reports only that the connection failed, so the refusal is
/// recorded here, and the connection closed with it.
struct WatchRefusal<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchRefusal<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &read
            && peer_refused(e)
        {
            self.state.set_reason(Error::new(Reason::RefusedByPeer));
            self.state.token.cancel();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchRefusal<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
