//! An in-process protocol for tests and examples: no sockets, no TLS.
//!
//! A [`MemProtocol`] value is a private network: register clones of the same value in
//! the registries of the managers that should reach each other. Identities are
//! exchanged as plain keys (both ends live in one process, so there is nothing to
//! prove), but the authorizers are consulted exactly as over QUIC, so trust rules can
//! be tested without the network.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Reason, Result};
use crate::identity::PeerKey;
use crate::protocol::abort::AbortOnClose;
use crate::registry::{
    CloseCode, Conn, DialContext, ListenContext, Listener, Properties, Protocol, RawFlow,
};

/// Bytes buffered in each direction of an in-memory flow.
const FLOW_BUFFER: usize = 256 << 10;

/// The in-process protocol. Clones share one network.
///
/// ```
/// use std::sync::Arc;
/// use flow::{MemProtocol, Registry};
/// let network = MemProtocol::new();
/// let mut server_registry = Registry::new();
/// server_registry.register("mem", Arc::new(network.clone()), &[]);
/// let mut client_registry = Registry::new();
/// client_registry.register("mem", Arc::new(network), &[]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemProtocol {
    network: Arc<Network>,
}

#[derive(Debug, Default)]
struct Network {
    listeners: Mutex<HashMap<String, mpsc::Sender<DialRequest>>>,
    next_dialer: AtomicU64,
}

impl Network {
    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<DialRequest>>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemProtocol {
    /// A new, empty in-process network.
    pub fn new() -> Self {
        MemProtocol::default()
    }
}

/// A dialer's request, answered with the listener's key or a refusal.
struct DialRequest {
    dialer_key: PeerKey,
    conn: MemConn,
    reply: oneshot::Sender<Result<PeerKey>>,
}

#[async_trait]
impl Protocol for MemProtocol {
    fn properties(&self) -> Properties {
        Properties::new().multistreaming(true)
    }

    async fn dial(
        &self,
        ctx: &DialContext,
        _protocol: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn Conn>> {
        let listener = self.network.listeners().get(address).cloned();
        let listener = listener.ok_or_else(|| {
            Error::new(Reason::Refused(format!(
                "nothing listens on mem address {address:?}"
            )))
        })?;
        let dialer_address = format!(
            "dialer-{}",
            self.network.next_dialer.fetch_add(1, Ordering::Relaxed)
        );
        let dialer_key = ctx.identity().public_key();
        let (ours, theirs) = MemConn::pair(dialer_address, address.to_string(), dialer_key);
        let (reply, answer) = oneshot::channel();
        let request = DialRequest {
            dialer_key,
            conn: theirs,
            reply,
        };
        let exchange = async {
            listener.send(request).await.map_err(|_| {
                Error::new(Reason::ConnectFailed(format!(
                    "mem listener {address:?} stopped"
                )))
            })?;
            answer.await.map_err(|_| {
                Error::new(Reason::ConnectFailed(format!(
                    "mem listener {address:?} stopped"
                )))
            })?
        };
        let listener_key = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(Error::new(Reason::Timeout(timeout))),
        };
        if let Err(e) = ctx.authorize(listener_key) {
            ours.close(CloseCode::NotTrusted, "not trusted");
            return Err(e);
        }
        Ok(Arc::new(ours.with_remote_key(listener_key)))
    }

    async fn resolve(&self, protocol: &str, address: &str) -> Result<(String, Vec<String>)> {
        Ok((protocol.to_string(), vec![address.to_string()]))
    }

    async fn listen(
        &self,
        ctx: &ListenContext,
        _protocol: &str,
        address: &str,
    ) -> Result<Box<dyn Listener>> {
        let (tx, rx) = mpsc::channel(64);
        {
            let mut listeners = self.network.listeners();
            if listeners.get(address).is_some_and(|l| !l.is_closed()) {
                return Err(Error::new(Reason::Protocol(
                    crate::ErrorKind::BadArg,
                    format!("mem address {address:?} is already in use"),
                )));
            }
            listeners.insert(address.to_string(), tx.clone());
        }
        Ok(Box::new(MemListener {
            ctx: ctx.clone(),
            network: self.network.clone(),
            address: address.to_string(),
            registered: tx,
            requests: tokio::sync::Mutex::new(rx),
            stop: CancellationToken::new(),
        }))
    }
}

#[derive(Debug)]
struct MemListener {
    ctx: ListenContext,
    network: Arc<Network>,
    address: String,
    /// Our entry in the network, to remove only ours on close.
    registered: mpsc::Sender<DialRequest>,
    requests: tokio::sync::Mutex<mpsc::Receiver<DialRequest>>,
    stop: CancellationToken,
}

#[async_trait]
impl Listener for MemListener {
    async fn accept(&self) -> Result<Arc<dyn Conn>> {
        let mut requests = tokio::select! {
            rx = self.requests.lock() => rx,
            _ = self.stop.cancelled() => return Err(Error::new(Reason::NotListening)),
        };
        loop {
            let request = tokio::select! {
                r = requests.recv() => r.ok_or_else(|| Error::new(Reason::NotListening))?,
                _ = self.stop.cancelled() => return Err(Error::new(Reason::NotListening)),
            };
            if let Err(e) = self.ctx.authorize(request.dialer_key) {
                tracing::debug!(error = %e, "mem: refusing dialer");
                let _ = request.reply.send(Err(Error::new(Reason::RefusedByPeer)));
                continue;
            }
            if request
                .reply
                .send(Ok(self.ctx.identity().public_key()))
                .is_ok()
            {
                return Ok(Arc::new(request.conn));
            }
        }
    }

    fn local_address(&self) -> String {
        self.address.clone()
    }

    fn close(&self) {
        self.stop.cancel();
        let mut listeners = self.network.listeners();
        if listeners
            .get(&self.address)
            .is_some_and(|l| l.same_channel(&self.registered))
        {
            listeners.remove(&self.address);
        }
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.close();
    }
}

/// What two ends of one in-memory connection share.
#[derive(Debug)]
struct Link {
    closed: CancellationToken,
    /// Which end closed it (0 or 1), with what code and reason.
    closed_by: Mutex<Option<(usize, CloseCode, String)>>,
}

impl Link {
    fn close(&self, side: usize, code: CloseCode, reason: &str) {
        let mut closed_by = self.closed_by.lock().unwrap_or_else(|e| e.into_inner());
        if closed_by.is_none() {
            *closed_by = Some((side, code, reason.to_string()));
        }
        drop(closed_by);
        self.closed.cancel();
    }

    /// The error one end sees once the link is closed.
    fn error_for(&self, side: usize) -> Error {
        let closed_by = self.closed_by.lock().unwrap_or_else(|e| e.into_inner());
        match closed_by.as_ref() {
            Some((by, _, reason)) if *by == side => {
                Error::new(Reason::ClosedLocally(reason.clone()))
            }
            Some((_, CloseCode::NotTrusted, _)) => Error::new(Reason::RefusedByPeer),
            Some((_, _, reason)) => Error::new(Reason::ClosedByPeer(reason.clone())),
            None => Error::new(Reason::ConnectionLost("mem link closed".into())),
        }
    }
}

/// One end of an in-memory connection.
#[derive(Debug)]
struct MemConn {
    link: Arc<Link>,
    side: usize,
    outgoing: mpsc::UnboundedSender<RawFlow>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<RawFlow>>,
    local: String,
    remote: String,
    remote_key: PeerKey,
}

impl MemConn {
    /// Both ends of a new connection; the dialer's end gets the listener's key later.
    fn pair(dialer: String, listener: String, dialer_key: PeerKey) -> (MemConn, MemConn) {
        let link = Arc::new(Link {
            closed: CancellationToken::new(),
            closed_by: Mutex::new(None),
        });
        let (to_listener, from_dialer) = mpsc::unbounded_channel();
        let (to_dialer, from_listener) = mpsc::unbounded_channel();
        let dialer_end = MemConn {
            link: link.clone(),
            side: 0,
            outgoing: to_listener,
            incoming: tokio::sync::Mutex::new(from_listener),
            local: dialer.clone(),
            remote: listener.clone(),
            remote_key: dialer_key, // replaced by with_remote_key
        };
        let listener_end = MemConn {
            link,
            side: 1,
            outgoing: to_dialer,
            incoming: tokio::sync::Mutex::new(from_dialer),
            local: listener,
            remote: dialer,
            remote_key: dialer_key,
        };
        (dialer_end, listener_end)
    }

    fn with_remote_key(mut self, key: PeerKey) -> Self {
        self.remote_key = key;
        self
    }

    fn half<T>(&self, inner: T) -> AbortOnClose<T> {
        half(&self.link, self.side, inner)
    }
}

/// A flow half for `side` of `link`, failing with the link's close error.
fn half<T>(link: &Arc<Link>, side: usize, inner: T) -> AbortOnClose<T> {
    let error_link = link.clone();
    AbortOnClose::new(
        inner,
        &link.closed,
        Arc::new(move || error_link.error_for(side)),
    )
}

impl Drop for MemConn {
    fn drop(&mut self) {
        self.link
            .close(self.side, CloseCode::Closed, "connection dropped");
    }
}

#[async_trait]
impl Conn for MemConn {
    async fn open_flow(&self) -> Result<RawFlow> {
        if self.link.closed.is_cancelled() {
            return Err(self.link.error_for(self.side));
        }
        let (ours, theirs) = tokio::io::duplex(FLOW_BUFFER);
        let (our_read, our_write) = tokio::io::split(ours);
        let (their_read, their_write) = tokio::io::split(theirs);
        let peer_side = 1 - self.side;
        let theirs = RawFlow::new(
            half(&self.link, peer_side, their_read),
            half(&self.link, peer_side, EndOnDrop(their_write)),
        );
        self.outgoing
            .send(theirs)
            .map_err(|_| self.link.error_for(self.side))?;
        Ok(RawFlow::new(
            self.half(our_read),
            self.half(EndOnDrop(our_write)),
        ))
    }

    async fn accept_flow(&self) -> Result<RawFlow> {
        let mut incoming = self.incoming.lock().await;
        tokio::select! {
            flow = incoming.recv() => flow.ok_or_else(|| self.link.error_for(self.side)),
            _ = self.link.closed.cancelled() => Err(self.link.error_for(self.side)),
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
        self.link.close(self.side, code, reason);
    }

    async fn closed(&self) -> Error {
        self.link.closed.cancelled().await;
        self.link.error_for(self.side)
    }

    fn is_closed(&self) -> bool {
        self.link.closed.is_cancelled()
    }
}

/// The sending half of an in-memory flow: dropping it ends the peer's reading side,
/// as dropping a QUIC send stream does.
struct EndOnDrop<T: AsyncWrite + Unpin>(T);

impl<T: AsyncWrite + Unpin> Drop for EndOnDrop<T> {
    fn drop(&mut self) {
        // Shutting down an in-memory pipe completes at once; no waker is needed.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut self.0).poll_shutdown(&mut cx);
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EndOnDrop<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
