//! The protocol registry and the traits a protocol implements.
//!
//! A [`Protocol`] turns an address into an authenticated, multiplexed [`Conn`] (by
//! dialing) or into a [`Listener`] that yields them. The [`Registry`] maps names and
//! aliases to protocols; a [`Manager`](crate::Manager) is built with one. The registry
//! is a value, not global state, so tests and embedders can each have their own.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Reason, Result};
use crate::identity::{self, Identity, PeerAuthorizer, PeerKey, Verdict};

/// What a protocol offers, used to choose among protocols.
///
/// ```
/// use flow::Properties;
/// let p = Properties::new().multistreaming(true).tcp(true);
/// assert!(p.is_multistreaming() && p.is_tcp() && !p.is_udp());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    multistreaming: bool,
    udp: bool,
    tcp: bool,
    zero_rtt: bool,
}

impl Properties {
    /// No properties.
    pub const fn new() -> Self {
        Properties {
            multistreaming: false,
            udp: false,
            tcp: false,
            zero_rtt: false,
        }
    }

    /// Many flows share one underlying connection without head-of-line blocking
    /// between them at the connection level.
    pub const fn multistreaming(mut self, yes: bool) -> Self {
        self.multistreaming = yes;
        self
    }

    /// Runs over UDP (so a firewall that blocks UDP blocks it).
    pub const fn udp(mut self, yes: bool) -> Self {
        self.udp = yes;
        self
    }

    /// Runs over TCP (so it passes firewalls that only let TCP through).
    pub const fn tcp(mut self, yes: bool) -> Self {
        self.tcp = yes;
        self
    }

    /// Can send data in its first flight (0-RTT). mftq never sends transfers in 0-RTT.
    pub const fn zero_rtt(mut self, yes: bool) -> Self {
        self.zero_rtt = yes;
        self
    }

    /// See [`Properties::multistreaming`].
    pub const fn is_multistreaming(&self) -> bool {
        self.multistreaming
    }

    /// See [`Properties::udp`].
    pub const fn is_udp(&self) -> bool {
        self.udp
    }

    /// See [`Properties::tcp`].
    pub const fn is_tcp(&self) -> bool {
        self.tcp
    }

    /// See [`Properties::zero_rtt`].
    pub const fn is_zero_rtt(&self) -> bool {
        self.zero_rtt
    }
}

/// The sending half of a flow. Any `AsyncWrite` will do ([`RawFlow::new`] wraps
/// it); a protocol that can take ownership of buffers overrides
/// [`write_chunks`](FlowSend::write_chunks) so large messages reach the transport
/// without a copy (QUIC hands them to quinn as they are).
///
/// ```
/// use std::pin::Pin;
/// use std::task::{Context, Poll};
/// use flow::{FlowSend, RawFlow};
///
/// /// A sender that keeps whole buffers (here it only collects them).
/// #[derive(Default)]
/// struct Collect(Vec<bytes::Bytes>);
///
/// impl tokio::io::AsyncWrite for Collect {
///     fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
///         self.0.push(bytes::Bytes::copy_from_slice(buf));
///         Poll::Ready(Ok(buf.len()))
///     }
///     fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> { Poll::Ready(Ok(())) }
///     fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> { Poll::Ready(Ok(())) }
/// }
///
/// impl FlowSend for Collect {
///     fn write_chunks<'a>(
///         self: Pin<&'a mut Self>,
///         chunks: &'a mut [bytes::Bytes],
///     ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>> {
///         // Takes the buffers themselves: no copy.
///         let this = self.get_mut();
///         this.0.extend(chunks.iter().cloned());
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// let raw = RawFlow::with_chunked_send(tokio::io::empty(), Collect::default());
/// # drop(raw);
/// ```
pub trait FlowSend: AsyncWrite + Send {
    /// Writes every chunk whole, in order. The default copies them through
    /// `poll_write`.
    fn write_chunks<'a>(
        self: Pin<&'a mut Self>,
        chunks: &'a mut [Bytes],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let mut this = self;
            for chunk in chunks.iter() {
                tokio::io::AsyncWriteExt::write_all(&mut this, chunk).await?;
            }
            Ok(())
        })
    }
}

/// An `AsyncWrite` as a [`FlowSend`] that copies.
struct CopyingSend<W>(Pin<Box<W>>);

impl<W: AsyncWrite + Send> AsyncWrite for CopyingSend<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

impl<W: AsyncWrite + Send> FlowSend for CopyingSend<W> {}

/// One bidirectional byte stream of a connection, as a protocol hands it over; the
/// manager wraps it into a [`Flow`](crate::Flow).
pub struct RawFlow {
    /// Bytes from the peer.
    pub recv: Pin<Box<dyn AsyncRead + Send>>,
    /// Bytes to the peer; shutting it down ends the peer's reading side.
    pub send: Pin<Box<dyn FlowSend>>,
}

impl RawFlow {
    /// A raw flow from its two halves; what is sent is copied into `send`.
    pub fn new(
        recv: impl AsyncRead + Send + 'static,
        send: impl AsyncWrite + Send + 'static,
    ) -> Self {
        RawFlow {
            recv: Box::pin(recv),
            send: Box::pin(CopyingSend(Box::pin(send))),
        }
    }

    /// A raw flow whose sending half takes whole buffers ([`FlowSend`]).
    pub fn with_chunked_send(
        recv: impl AsyncRead + Send + 'static,
        send: impl FlowSend + 'static,
    ) -> Self {
        RawFlow {
            recv: Box::pin(recv),
            send: Box::pin(send),
        }
    }
}

impl fmt::Debug for RawFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawFlow")
    }
}

/// An authenticated connection that carries many flows.
///
/// Implementations must already have proven the peer's key when they hand the
/// connection to the manager. Dropping the last reference closes it.
#[async_trait]
pub trait Conn: Send + Sync + fmt::Debug {
    /// Opens a new flow to the peer.
    async fn open_flow(&self) -> Result<RawFlow>;
    /// Waits for the peer to open a flow. Protocols that cannot carry flows opened by
    /// the accepting side may simply wait until the connection closes.
    async fn accept_flow(&self) -> Result<RawFlow>;
    /// The peer's proven key.
    fn remote_key(&self) -> PeerKey;
    /// The peer's address, in this protocol's syntax.
    fn remote_address(&self) -> String;
    /// Our address on this connection, in this protocol's syntax.
    fn local_address(&self) -> String;
    /// The current smoothed round-trip time, when the protocol measures it.
    fn rtt(&self) -> Option<Duration>;
    /// Closes the connection now; open flows fail on both sides with `reason`.
    fn close(&self, code: CloseCode, reason: &str);
    /// Resolves when the connection is closed, with why.
    async fn closed(&self) -> Error;
    /// Whether the connection is already closed.
    fn is_closed(&self) -> bool;
}

/// Why a connection is being closed, as told to the peer (QUIC application close
/// codes use these numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// The application or manager closed it.
    Closed,
    /// It was idle for longer than the idle timeout.
    Idle,
    /// The peer is not trusted.
    NotTrusted,
}

impl CloseCode {
    /// The number sent on the wire.
    pub const fn as_u32(self) -> u32 {
        match self {
            CloseCode::Closed => 0,
            CloseCode::Idle => 1,
            CloseCode::NotTrusted => 2,
        }
    }

    /// The code for a number received from the peer.
    pub const fn from_u32(code: u32) -> Option<Self> {
        match code {
            0 => Some(CloseCode::Closed),
            1 => Some(CloseCode::Idle),
            2 => Some(CloseCode::NotTrusted),
            _ => None,
        }
    }
}

/// A source of incoming connections, as returned by [`Protocol::listen`].
#[async_trait]
pub trait Listener: Send + Sync + fmt::Debug {
    /// Waits for the next authenticated connection. An error ends the listener.
    async fn accept(&self) -> Result<Arc<dyn Conn>>;
    /// The address actually bound (with the real port when port 0 was asked for).
    fn local_address(&self) -> String;
    /// Stops accepting; pending and later `accept` calls fail.
    fn close(&self);
}

/// What a protocol needs from the manager to dial: our identity and whom to trust.
#[derive(Clone, Debug)]
pub struct DialContext {
    identity: Identity,
    authorizer: Arc<dyn PeerAuthorizer>,
    verdict: Verdict,
}

impl DialContext {
    /// A context dialing as `identity` and trusting what `authorizer` accepts.
    pub fn new(identity: Identity, authorizer: Arc<dyn PeerAuthorizer>) -> Self {
        DialContext {
            identity,
            authorizer,
            verdict: Verdict::default(),
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whom we trust.
    pub fn authorizer(&self) -> &Arc<dyn PeerAuthorizer> {
        &self.authorizer
    }

    /// A TLS 1.3 client configuration that presents our certificate, verifies the
    /// server's Ed25519 key and handshake signature, and consults the authorizer.
    pub fn tls_client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig> {
        identity::client_tls_config(
            &self.identity,
            self.authorizer.clone(),
            self.verdict.clone(),
            alpn,
        )
    }

    /// After a failed TLS handshake: the precise reason our verifier refused the
    /// server, if it did (a refusal otherwise only shows as a TLS alert).
    pub fn take_refusal(&self) -> Option<Error> {
        self.verdict.take()
    }

    /// Checks a peer's proven key against the authorizer (for protocols without TLS).
    pub fn authorize(&self, peer: PeerKey) -> Result<()> {
        identity::authorize(self.authorizer.as_ref(), peer)
    }
}

/// What a protocol needs from the manager to listen: our identity and whom to accept.
#[derive(Clone, Debug)]
pub struct ListenContext {
    identity: Identity,
    authorizer: Arc<dyn PeerAuthorizer>,
}

impl ListenContext {
    /// A context listening as `identity` and accepting what `authorizer` accepts.
    pub fn new(identity: Identity, authorizer: Arc<dyn PeerAuthorizer>) -> Self {
        ListenContext {
            identity,
            authorizer,
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whom we accept.
    pub fn authorizer(&self) -> &Arc<dyn PeerAuthorizer> {
        &self.authorizer
    }

    /// A TLS 1.3 server configuration that presents our certificate, requires a client
    /// certificate with an Ed25519 key, and refuses clients the authorizer refuses.
    pub fn tls_server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
        identity::server_tls_config(&self.identity, self.authorizer.clone(), alpn, true)
    }

    /// Like [`ListenContext::tls_server_config`], but a client may also connect
    /// without a certificate (a load balancer's health check, say). A certificate
    /// that is presented is checked as strictly; the protocol must give anonymous
    /// connections nothing but what is public.
    pub fn tls_server_config_allowing_anonymous(
        &self,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig> {
        identity::server_tls_config(&self.identity, self.authorizer.clone(), alpn, false)
    }

    /// Checks a peer's proven key against the authorizer (for protocols without TLS).
    pub fn authorize(&self, peer: PeerKey) -> Result<()> {
        identity::authorize(self.authorizer.as_ref(), peer)
    }
}

/// A way to reach peers: dial, resolve and listen, after vanadium's `flow.Protocol`.
///
/// The `protocol` argument is the name the caller used (an alias, or the name given to
/// [`Registry::register_unknown`]), so one implementation can serve several names.
#[async_trait]
pub trait Protocol: Send + Sync + fmt::Debug {
    /// What this protocol offers.
    fn properties(&self) -> Properties;

    /// Connects to `address` and authenticates the peer, within `timeout`.
    async fn dial(
        &self,
        ctx: &DialContext,
        protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn Conn>>;

    /// Turns `address` into the concrete addresses to dial, possibly under another
    /// protocol name. The default resolves `host:port` with the system resolver.
    async fn resolve(&self, protocol: &str, address: &str) -> Result<(String, Vec<String>)> {
        let addrs = resolve_socket_addrs(address).await?;
        Ok((
            protocol.to_string(),
            addrs.iter().map(SocketAddr::to_string).collect(),
        ))
    }

    /// Starts accepting connections on `address`.
    async fn listen(
        &self,
        ctx: &ListenContext,
        protocol: &str,
        address: &str,
    ) -> Result<Box<dyn Listener>>;
}

/// Resolves `host:port` (names, IPv4 or bracketed IPv6) to socket addresses.
pub async fn resolve_socket_addrs(address: &str) -> Result<Vec<SocketAddr>> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !address.contains(':') {
        return Err(Error::new(Reason::MalformedEndpoint {
            input: address.to_string(),
            why: "expected host:port",
        }));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| Error::new(Reason::Resolve(e.to_string())).with_endpoint(address))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::new(Reason::Resolve("no addresses found".into())).with_endpoint(address));
    }
    Ok(addrs)
}

/// The first address `host:port` resolves to (see [`resolve_socket_addrs`]).
pub async fn resolve_socket_addr(address: &str) -> Result<SocketAddr> {
    let addrs = resolve_socket_addrs(address).await?;
    // resolve_socket_addrs never returns an empty list.
    addrs
        .first()
        .copied()
        .ok_or_else(|| Error::new(Reason::Resolve("no addresses found".into())))
}

/// The protocols a manager can use, by name and alias.
///
/// `Registry::default()` holds `quic` and `https`; `Registry::new()` is empty.
///
/// ```
/// use std::sync::Arc;
/// use flow::{MemProtocol, Registry};
/// let mut registry = Registry::default();
/// assert!(!registry.register("mem", Arc::new(MemProtocol::new()), &["inproc"]));
/// assert!(registry.get("inproc").is_some());
/// assert_eq!(registry.protocols(), vec!["https", "mem", "quic"]);
/// ```
#[derive(Clone)]
pub struct Registry {
    protocols: BTreeMap<String, Arc<dyn Protocol>>,
    aliases: BTreeMap<String, String>,
    unknown: Option<(String, Arc<dyn Protocol>)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            protocols: BTreeMap::new(),
            aliases: BTreeMap::new(),
            unknown: None,
        }
    }

    /// The built-in protocols (`quic` and `https`) with default settings.
    pub fn with_defaults() -> Self {
        let mut registry = Registry::new();
        registry.register(
            "quic",
            Arc::new(crate::protocol::quic::QuicProtocol::default()),
            &[],
        );
        registry.register(
            "https",
            Arc::new(crate::protocol::https::HttpsProtocol::default()),
            &[],
        );
        registry
    }

    /// Registers `protocol` under `name` and `aliases`, replacing whatever had that
    /// name. Returns true when it replaced a protocol.
    pub fn register(&mut self, name: &str, protocol: Arc<dyn Protocol>, aliases: &[&str]) -> bool {
        self.aliases.retain(|_, target| target != name);
        self.aliases.remove(name);
        for alias in aliases {
            self.aliases.insert(alias.to_string(), name.to_string());
        }
        self.protocols.insert(name.to_string(), protocol).is_some()
    }

    /// Makes endpoints without a protocol use `protocol`, which is called with `name`
    /// as the protocol to use. `name` must already be registered.
    pub fn register_unknown(&mut self, name: &str, protocol: Arc<dyn Protocol>) -> Result<()> {
        if self.get(name).is_none() {
            return Err(Error::new(Reason::UnknownProtocol(name.to_string())));
        }
        self.unknown = Some((name.to_string(), protocol));
        Ok(())
    }

    /// The names of the registered protocols (not aliases), sorted.
    pub fn protocols(&self) -> Vec<String> {
        self.protocols.keys().cloned().collect()
    }

    /// The protocol registered under `name` or an alias of it.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Protocol>> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.protocols.get(name).cloned()
    }

    /// Whether a manager with this registry can dial `endpoint`: its protocol (or an
    /// alias) is registered, or it is an `mftq://` endpoint and one of the protocols
    /// it stands for is, or it has no protocol and one was given to
    /// [`Registry::register_unknown`].
    pub fn can_dial(&self, endpoint: &crate::Endpoint) -> bool {
        match endpoint.protocol() {
            crate::select::PREFERENCE_SCHEME => crate::select::PREFERENCE_PROTOCOLS
                .iter()
                .any(|name| self.get(name).is_some()),
            name => self.lookup(name).is_ok(),
        }
    }

    /// The protocol for `name` and the name to call it with: for the empty name, the
    /// protocol given to [`Registry::register_unknown`].
    pub(crate) fn lookup(&self, name: &str) -> Result<(String, Arc<dyn Protocol>)> {
        if name.is_empty() {
            return self
                .unknown
                .clone()
                .ok_or_else(|| Error::new(Reason::UnknownProtocol(String::new())));
        }
        let canonical = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.protocols
            .get(canonical)
            .map(|p| (canonical.to_string(), p.clone()))
            .ok_or_else(|| Error::new(Reason::UnknownProtocol(name.to_string())))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_defaults()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("protocols", &self.protocols.keys().collect::<Vec<_>>())
            .field("aliases", &self.aliases)
            .field("unknown", &self.unknown.as_ref().map(|(n, _)| n))
            .finish()
    }
}
