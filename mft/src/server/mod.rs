//! The server: accepts flows from a [`flow::Manager`], dispatches each on its first
//! message, and keeps every promise of `RELIABILITY.md` about what it stores.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flow::{Flow, FlowReader, FlowWriter, Identity, Manager, PeerKey};

use crate::crypto::{self, Cipher};
use crate::error::Result;
use crate::proto::transfer::TransferState;
use crate::store::{Store, StoreError, TransferId, TransferRecord};
use crate::wire::{self, Codec, Message, Refuse, RefuseCode};

mod at_rest;
mod authorize;
mod batches;
mod config;
mod events;
mod manage;
mod pending;
mod pull;
mod push;
mod quota;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use at_rest::seal_secret_at_rest;
pub use authorize::{Authorize, DenyAll, Direction, Request};
pub use config::ServerConfig;
pub use events::{CancelReason, ServerEvent};
use push::OpenTransfer;

/// The mft server. Cheap to clone: every clone is the same server, with the same
/// state (open transfers, per-key flow counts, memory bound).
///
/// ```no_run
/// # async fn demo(manager: flow::Manager, alice: flow::PeerKey) -> mft::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mft::{Direction, Request};
/// let store = Arc::new(mft::store::FsStore::open("./data")?);
/// let server = mft::Server::builder(manager.identity().clone(), store)
///     .config(mft::ServerConfig::default())
///     .authorize(move |r: &Request<'_>| *r.key == alice || r.direction != Direction::Send)
///     .build();
/// let serving = tokio::spawn({
///     let server = server.clone();
///     async move { server.serve(manager).await }
/// });
/// // Later: stop accepting, let open flows finish for up to 30 s, then close.
/// server.shutdown(Duration::from_secs(30));
/// serving.await.ok();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    store: Arc<dyn Store>,
    config: ServerConfig,
    authorize: Box<dyn Authorize>,
    at_rest: Cipher,
    /// Set by [`Server::shutdown`]: the grace period for open flows.
    stopping: tokio::sync::watch::Sender<Option<Duration>>,
    /// Flows being handled, and a wake-up when the count drops to zero.
    handling: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    pending: Arc<pending::Pending>,
    flows_per_peer: Mutex<HashMap<PeerKey, usize>>,
    open: Mutex<HashMap<TransferId, Arc<OpenTransfer>>>,
    /// When this server was built (Unix seconds): no transfer it has not seen
    /// has been idle longer than since then.
    started_unix: u64,
    /// What each key holds, for its quotas.
    usage: quota::Usage,
    /// Transfers being read by retrievals, which keeps their data if retired.
    readers: batches::Readers,
    /// Where [`ServerEvent`]s go, for [`Server::subscribe`].
    events: tokio::sync::broadcast::Sender<ServerEvent>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("identity", &self.inner.identity.public_key())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A refusal to send the peer and the reason to log.
struct Refusal(Refuse);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed");
        refusal(RefuseCode::Internal, "storage failed; retry later")
    }
}

fn refusal(code: RefuseCode, message: impl Into<String>) -> Refusal {
    Refusal(Refuse::new(code, message))
}

/// Builds a [`Server`]: identity and store first, then limits and who may do what.
pub struct ServerBuilder {
    identity: Identity,
    store: Arc<dyn Store>,
    config: ServerConfig,
    authorize: Box<dyn Authorize>,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("identity", &self.identity.public_key())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// The server's limits (default [`ServerConfig::default`]).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Who may send and retrieve what (default [`DenyAll`]: nobody).
    pub fn authorize(mut self, authorize: impl Authorize) -> Self {
        self.authorize = Box::new(authorize);
        self
    }

    /// The server, ready to [`serve`](Server::serve).
    pub fn build(self) -> Server {
        let at_rest = Cipher::new(&crypto::at_rest_key(&self.identity));
        Server {
            inner: Arc::new(Inner {
                pending: pending::Pending::new(
                    self.config.max_pending_bytes,
                    self.config.max_pending_bytes_per_peer,
                ),
                identity: self.identity,
                store: self.store,
                config: self.config,
                authorize: self.authorize,
                at_rest,
                stopping: tokio::sync::watch::channel(None).0,
                handling: std::sync::atomic::AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                flows_per_peer: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
                started_unix: now_unix(),
                usage: quota::Usage::default(),
                readers: batches::Readers::default(),
                events: tokio::sync::broadcast::channel(events::EVENT_BUFFER).0,
            }),
        }
    }
}

impl Server {
    /// Starts building a server acting as `identity` over `store`. Nobody may send
    /// or retrieve until [`ServerBuilder::authorize`] says who.
    pub fn builder(identity: Identity, store: Arc<dyn Store>) -> ServerBuilder {
        ServerBuilder {
            identity,
            store,
            config: ServerConfig::default(),
            authorize: Box::new(DenyAll),
        }
    }

    /// Whether the authoriser admits `key` with `voucher` for `batch_id` in
    /// `direction`.
    fn allowed(
        &self,
        key: &PeerKey,
        voucher: &[u8],
        owner: &[u8; 32],
        batch_id: &[u8],
        direction: Direction,
    ) -> bool {
        let request = Request::new(key, voucher, owner, batch_id, direction);
        self.inner.authorize.authorize(&request)
    }

    /// The door: an accept authoriser for the manager this server serves, which
    /// asks [`Authorize::admits`] in the TLS handshake, so keys the policy does not
    /// admit never reach the protocol.
    ///
    /// ```no_run
    /// # fn demo(identity: flow::Identity, store: std::sync::Arc<dyn mft::store::Store>,
    /// #         policy: impl mft::Authorize) -> flow::Result<()> {
    /// let server = mft::Server::builder(identity.clone(), store).authorize(policy).build();
    /// let mut config = flow::ManagerConfig::default();
    /// config.accept_authorizer(server.door());
    /// let manager = flow::Manager::new(identity, flow::Registry::default(), config)?;
    /// # drop(manager); Ok(()) }
    /// ```
    pub fn door(&self) -> Arc<dyn flow::PeerAuthorizer> {
        let inner = self.inner.clone();
        flow::Authorizer::from_fn(move |key| inner.authorize.admits(key))
    }

    /// The server's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Every [`ServerEvent`] from now on: transfers opened, resumed, stored
    /// segment by segment, completed, cancelled; batches retrieved and deleted;
    /// refusals. The same events are logged. A subscriber that falls more than
    /// 1,024 events behind misses the oldest ones (and is told how many).
    ///
    /// ```no_run
    /// # async fn demo(server: mft::Server) {
    /// let mut events = server.subscribe();
    /// while let Ok(event) = events.recv().await {
    ///     if let mft::ServerEvent::Completed { batch_id, bytes, .. } = event {
    ///         println!("stored {batch_id}: {bytes} bytes");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ServerEvent> {
        self.inner.events.subscribe()
    }

    /// Logs `event` and hands it to the subscribers, if any.
    fn emit(&self, event: ServerEvent) {
        event.log();
        let _ = self.inner.events.send(event);
    }

    /// Serves every flow `manager` accepts, reclaiming expired transfers every
    /// minute meanwhile, until the manager closes or [`Server::shutdown`] is
    /// called; then it stops listening, lets the flows being served finish for the
    /// grace period, closes the manager (ending what is left) and returns.
    pub async fn serve(&self, manager: Manager) {
        let reclaimer = tokio::spawn({
            let server = self.clone();
            async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(60));
                loop {
                    ticker.tick().await;
                    if let Err(e) = server.reclaim_expired().await {
                        tracing::warn!(error = %e, "reclaiming expired transfers failed");
                    }
                    server.reclaim_retired_now().await;
                }
            }
        });
        let mut stopping = self.inner.stopping.subscribe();
        let grace = loop {
            tokio::select! {
                biased;
                changed = stopping.wait_for(Option::is_some) => {
                    break changed.ok().and_then(|grace| *grace);
                }
                accepted = manager.accept() => match accepted {
                    Ok(flow) => {
                        let server = self.clone();
                        let handling = Handling::start(self.inner.clone());
                        tokio::spawn(async move {
                            server.handle_flow(flow).await;
                            drop(handling);
                        });
                    }
                    Err(_) => break None,
                },
            }
        };
        reclaimer.abort();
        if let Some(grace) = grace {
            self.drain(&manager, grace).await;
        }
    }

    /// Stops the server: [`Server::serve`] accepts no new flow, gives the flows
    /// being served up to `grace` to finish, then closes its manager and returns.
    /// Senders cut off by the close resume later from what was stored.
    pub fn shutdown(&self, grace: Duration) {
        self.inner.stopping.send_replace(Some(grace));
    }

    /// Stops listening and waits up to `grace` for the flows being handled, then
    /// closes the manager.
    async fn drain(&self, manager: &Manager, grace: Duration) {
        use std::sync::atomic::Ordering;
        manager.stop_listening();
        let open = self.inner.handling.load(Ordering::SeqCst);
        tracing::info!(open, ?grace, "shutting down: no new flows");
        let idle = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.handling.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, idle).await.is_err() {
            let open = self.inner.handling.load(Ordering::SeqCst);
            tracing::warn!(open, "grace period over: closing the flows still open");
        }
        manager.close();
    }

    /// Deletes open transfers past their deadline, with their segments and secrets,
    /// and returns how many. A transfer whose batch was completed (a crash between
    /// storing the batch and closing the transfer) only loses its open record.
    pub async fn reclaim_expired(&self) -> Result<usize> {
        let now = now_unix();
        let mut reclaimed = 0;
        for record in self.inner.store.transfers().await? {
            if record.deadline_unix >= now {
                continue;
            }
            if self.forget(&record, |state| state.expire(now)).await? {
                self.cancelled(&record, CancelReason::Expired);
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    }

    /// Aborts every open transfer `sender` has, deleting its segments and secret,
    /// and returns how many: for a key that lost its access. Flows carrying them
    /// find them aborted; completed batches are kept.
    pub async fn abort_transfers_of(&self, sender: &PeerKey) -> Result<usize> {
        let mut aborted = 0;
        for record in self.inner.store.transfers_of(*sender.as_bytes()).await? {
            if self.forget(&record, TransferState::abort).await? {
                self.cancelled(&record, CancelReason::AccessRevoked);
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Deletes an open transfer if `end` (an expiry or an abort) says its state
    /// allows it; true if it was deleted. A transfer in memory is ended only through
    /// its state, which waits for segments being stored and for a completion in
    /// progress. A transfer whose batch is stored only loses its open record.
    async fn forget(
        &self,
        record: &TransferRecord,
        end: impl FnOnce(&mut TransferState) -> bool,
    ) -> Result<bool> {
        let store = &self.inner.store;
        let open = self.lock_open().get(&record.transfer).cloned();
        if let Some(open) = &open
            && !end(&mut *open.state.write().await)
        {
            return Ok(false);
        }
        let completed = store
            .batch(&record.sender, &record.batch_id)
            .await?
            .is_some_and(|b| b.transfer == record.transfer);
        if !completed {
            store.delete_segments(record.transfer).await?;
            store.delete_secret(record.transfer).await?;
        }
        store.delete_transfer(record.transfer).await?;
        self.lock_open().remove(&record.transfer);
        self.recount_quota(&record.sender).await;
        Ok(true)
    }

    /// Reports that `record`'s transfer ended without a batch, for `why`.
    fn cancelled(&self, record: &TransferRecord, why: CancelReason) {
        self.emit(ServerEvent::Cancelled {
            owner: record.sender,
            transfer: record.transfer,
            batch_id: event_batch_id(&record.batch_id),
            why,
        });
    }

    /// Serves one flow to its end.
    pub async fn handle_flow(&self, flow: Flow) {
        use tracing::Instrument;
        // Every log line of the flow carries where it came from: the peer's key
        // (short), its address and the protocol.
        let conn = flow.conn();
        let key = flow.remote_identity().to_string();
        let span = tracing::info_span!(
            "flow",
            client = &key[..12.min(key.len())],
            remote = %conn.remote_endpoint().address(),
            protocol = %conn.protocol(),
        );
        self.handle_flow_in_span(flow).instrument(span).await
    }

    /// [`Server::handle_flow`]'s work.
    async fn handle_flow_in_span(&self, mut flow: Flow) {
        let peer = flow.remote_identity();
        let config = &self.inner.config;
        flow.set_max_msg_size(config.max_segment_message());
        flow.set_idle_timeout(Some(config.flow_idle_timeout));
        let slot = self.flow_slot(peer);
        let (mut reader, mut writer) = flow.into_split();
        let Some(len) = self.first_message_len(peer, &mut reader, &mut writer).await else {
            return;
        };
        if slot.is_none() {
            // Refused from the length prefix alone: the payload is never read. The
            // client reads this refusal when its write is cut off.
            let Refusal(busy) = self.busy("too many flows from this key");
            self.refused(peer, &busy);
            let _ = writer
                .write_msg_and_close(&[&encode_reply(&Message::Refuse(busy))])
                .await;
            return;
        }
        let outcome = match self.reserve(peer, len).await {
            Ok(permit) => match reader.read_msg().await {
                Ok(Some(first)) => {
                    self.dispatch(peer, first, permit, &mut reader, &mut writer)
                        .await
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "flow failed in its first message");
                    return;
                }
            },
            Err(refusal) => Err(refusal),
        };
        let last = match outcome {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(Refusal(refuse)) => {
                self.refused(peer, &refuse);
                Message::Refuse(refuse)
            }
        };
        if let Err(e) = writer.write_msg_and_close(&[&encode_reply(&last)]).await {
            tracing::debug!(%peer, error = %e, "could not answer");
        }
    }

    /// Reports a refusal sent to `peer`.
    fn refused(&self, peer: PeerKey, refuse: &Refuse) {
        self.emit(ServerEvent::Failed {
            peer,
            code: refuse.code,
            message: refuse.message.clone(),
        });
    }

    /// The length of a flow's first message, whose 4-byte prefix must arrive
    /// within the first-message timeout; `None` if the flow ended, failed or stayed
    /// silent (a message over the size limit is refused from its prefix). Only the
    /// prefix is timed so: the body is read under the flow's idle timeout, so an
    /// honest sender of a big segment on a slow link is not cut off.
    async fn first_message_len(
        &self,
        peer: PeerKey,
        reader: &mut FlowReader,
        writer: &mut FlowWriter,
    ) -> Option<usize> {
        let timeout = self.inner.config.first_message_timeout;
        match tokio::time::timeout(timeout, reader.peek_msg_len()).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "flow failed before its first message");
                if let Some(Refusal(too_large)) = too_large(&e) {
                    let too_large = encode_reply(&Message::Refuse(too_large));
                    let _ = writer.write_msg_and_close(&[&too_large]).await;
                }
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "no first message in time");
                None
            }
        }
    }

    /// Holds `len` bytes of the pending-bytes budget (the key's share, then the
    /// server's) for a message of `peer`, before it is read: what is in memory
    /// between the network and the store stays bounded, however many flows send
    /// at once, and one key cannot hold all of it.
    async fn reserve(&self, peer: PeerKey, len: usize) -> Result<pending::Reservation, Refusal> {
        self.inner
            .pending
            .reserve(peer, len)
            .await
            .ok_or_else(|| refusal(RefuseCode::Internal, "server shutting down"))
    }

    /// Hands a flow to the handler its first message names: what to answer last,
    /// if anything.
    async fn dispatch(
        &self,
        peer: PeerKey,
        first: Bytes,
        permit: pending::Reservation,
        reader: &mut FlowReader,
        writer: &mut FlowWriter,
    ) -> Result<Option<Message>, Refusal> {
        let message = match Message::from_bytes(first) {
            // A segment keeps its share of the pending bytes until it is stored.
            Ok(Message::Segment(segment)) => {
                return self
                    .handle_segments(peer, (segment, permit), reader, writer)
                    .await;
            }
            other => {
                drop(permit);
                other
            }
        };
        match message {
            Ok(Message::Hello(hello)) => self.handle_hello(peer, &hello).await,
            Ok(Message::Complete(complete)) => self.handle_complete(peer, &complete).await,
            Ok(Message::Resume(resume)) => self.handle_resume(peer, resume.transfer_id).await,
            Ok(Message::PullHello(hello)) => self.handle_pull(peer, &hello, writer).await,
            Ok(Message::List(list)) => self.handle_list(peer, &list).await,
            Ok(Message::ListOpen(_)) => self.handle_list_open(peer).await,
            Ok(Message::Abort(abort)) => self.handle_abort(peer, abort.transfer_id).await,
            Ok(Message::Pause(pause)) => self.handle_pause(peer, &pause).await,
            Ok(Message::Delete(delete)) => self.handle_delete(peer, &delete).await,
            Ok(Message::Confirm(confirm)) => self.handle_confirm(peer, &confirm).await,
            Ok(other) => Err(refusal(
                RefuseCode::BadMessage,
                format!("{} cannot start a flow", other.name()),
            )),
            Err(wire::DecodeError::UnsupportedVersion(v)) => Err(refusal(
                RefuseCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this server speaks {}",
                    wire::VERSION
                ),
            )),
            Err(e) => Err(refusal(RefuseCode::BadMessage, e.to_string())),
        }
    }

    fn retry_after_ms(&self) -> u32 {
        u32::try_from(self.inner.config.busy_retry_after.as_millis()).unwrap_or(u32::MAX)
    }

    fn busy(&self, why: &str) -> Refusal {
        Refusal(Refuse {
            retry_after_ms: self.retry_after_ms(),
            ..Refuse::new(RefuseCode::Busy, why)
        })
    }

    /// Counts a flow against its peer's limit for as long as the guard lives.
    fn flow_slot(&self, peer: PeerKey) -> Option<FlowSlot> {
        let mut counts = self
            .inner
            .flows_per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(peer).or_insert(0);
        if *count >= self.inner.config.max_flows_per_peer {
            return None;
        }
        *count += 1;
        Some(FlowSlot {
            server: self.inner.clone(),
            peer,
        })
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<TransferId, Arc<OpenTransfer>>> {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A batch id read back from the store: stored only after the wire checked it, so
/// one that is not a batch id is damage.
fn stored_batch_id(bytes: &[u8]) -> Result<wire::BatchId, StoreError> {
    wire::BatchId::new(bytes.to_vec())
        .map_err(|e| StoreError::Corrupt(format!("a stored batch id: {e}")))
}

/// A stored batch id for an event: one that fails to decode (a damaged
/// record) is shown as `?` rather than dropping the event.
fn event_batch_id(bytes: &[u8]) -> wire::BatchId {
    wire::BatchId::new(bytes.to_vec())
        .or_else(|_| wire::BatchId::new(b"?".to_vec()))
        .unwrap_or_else(|_| unreachable!("a one-byte batch id is valid"))
}

/// The bytes of a reply the server built itself. Its fields are within the
/// protocol's bounds by construction; should one not be, the peer gets an internal
/// refusal rather than a truncated message.
fn encode_reply(reply: &Message) -> Vec<u8> {
    reply.to_bytes().unwrap_or_else(|e| {
        tracing::error!(error = %e, message = reply.name(), "a reply did not encode");
        let internal = Refuse::new(
            RefuseCode::Internal,
            "the server could not encode its reply",
        );
        Message::Refuse(internal).to_bytes().unwrap_or_default()
    })
}

/// The refusal for a message over the flow's size limit: refused from its length
/// prefix alone, before its body is read or buffered.
fn too_large(e: &flow::Error) -> Option<Refusal> {
    match e.reason() {
        flow::Reason::MessageTooLarge { len, max } => Some(refusal(
            RefuseCode::SegmentTooLarge,
            format!("message of {len} bytes exceeds this server's limit of {max}"),
        )),
        _ => None,
    }
}

/// A flow being handled by [`Server::serve`], counted until it ends, so a
/// shutdown can wait for the server to go idle.
struct Handling(Arc<Inner>);

impl Handling {
    fn start(inner: Arc<Inner>) -> Self {
        inner
            .handling
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Handling(inner)
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        let before = self
            .0
            .handling
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if before == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A flow counted against its peer's limit.
struct FlowSlot {
    server: Arc<Inner>,
    peer: PeerKey,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        let mut counts = self
            .server
            .flows_per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}
