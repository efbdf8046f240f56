//! The server: accepts flows from a [`flow::Manager`], dispatches each on its first
//! message, and keeps every promise of `RELIABILITY.md` about what it stores.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flow::{Flow, FlowReader, FlowWriter, Identity, Manager, PeerKey};
use tokio::sync::Semaphore;

use crate::crypto::{self, Chain, Cipher, context};
use crate::error::{Error, Result};
use crate::handshake::{self, HelloProblem, PullSecret, PushSecret};
use crate::proto::transfer::{Refused, TransferState};
use crate::session::{self, refuse};
use crate::store::{BatchRecord, SegmentInfo, Store, StoreError, TransferId, TransferRecord};
use crate::stream::{BatchInfo, BatchReader, SegmentSource};
use crate::wire::{
    self, Complete, Hello, Message, PullHello, PullSegment, Receipt, Refuse, RefuseCode, Segment,
    SegmentAck, Stored,
};

/// Decides whether `key`, presenting `voucher`, may send (or retrieve) `batch_id`.
pub type Authorize = Arc<dyn Fn(&PeerKey, &[u8], &[u8]) -> bool + Send + Sync>;

/// Server limits, with safe defaults.
///
/// ```
/// let mut config = mft::ServerConfig::default();
/// config.max_chunk_size(4 << 20).unwrap().max_metadata(16 << 10);
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    max_chunk_size: u32,
    max_metadata: u32,
    max_open_transfers_per_peer: usize,
    max_flows_per_peer: usize,
    max_pending_bytes: usize,
    transfer_deadline: Duration,
    first_message_timeout: Duration,
    max_segments: u64,
    busy_retry_after: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_chunk_size: 4 << 20,
            max_metadata: 64 << 10,
            max_open_transfers_per_peer: 16,
            max_flows_per_peer: 256,
            max_pending_bytes: 256 << 20,
            transfer_deadline: Duration::from_secs(24 * 3600),
            first_message_timeout: Duration::from_secs(30),
            max_segments: 1 << 24,
            busy_retry_after: Duration::from_secs(1),
        }
    }
}

impl ServerConfig {
    /// The largest chunk a sender may use (default 4 MiB; at most 16 MiB). Segments
    /// larger than this are refused before they are buffered.
    pub fn max_chunk_size(&mut self, bytes: u32) -> Result<&mut Self> {
        if !(wire::MIN_CHUNK_SIZE..=wire::MAX_CHUNK_SIZE).contains(&bytes) {
            return Err(Error::config(
                "max chunk size",
                format!(
                    "{bytes} is outside {}..={}",
                    wire::MIN_CHUNK_SIZE,
                    wire::MAX_CHUNK_SIZE
                ),
            ));
        }
        self.max_chunk_size = bytes;
        Ok(self)
    }

    /// The largest metadata accepted (default 64 KiB; at most 1 MiB).
    pub fn max_metadata(&mut self, bytes: u32) -> &mut Self {
        self.max_metadata = bytes.min(wire::MAX_METADATA as u32);
        self
    }

    /// Open (incomplete) transfers one key may have at once (default 16).
    pub fn max_open_transfers_per_peer(&mut self, count: usize) -> &mut Self {
        self.max_open_transfers_per_peer = count;
        self
    }

    /// Flows one key may have being served at once (default 256); beyond that new
    /// flows are refused as busy.
    pub fn max_flows_per_peer(&mut self, count: usize) -> &mut Self {
        self.max_flows_per_peer = count.max(1);
        self
    }

    /// Segment bytes held in memory at once, server-wide (default 256 MiB); flows
    /// wait (and QUIC flow control slows senders) beyond it.
    pub fn max_pending_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// How long a transfer may stay open before it is reclaimed (default 24 h).
    pub fn transfer_deadline(&mut self, deadline: Duration) -> &mut Self {
        self.transfer_deadline = deadline;
        self
    }

    /// How long a new flow may take to send its first message (default 30 s).
    pub fn first_message_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.first_message_timeout = timeout;
        self
    }

    /// The most segments one batch may have (default 2²⁴).
    pub fn max_segments(&mut self, count: u64) -> &mut Self {
        self.max_segments = count;
        self
    }

    /// The delay a busy server asks clients to wait (default 1 s).
    pub fn busy_retry_after(&mut self, delay: Duration) -> &mut Self {
        self.busy_retry_after = delay;
        self
    }

    fn max_segment_message(&self) -> usize {
        wire::SEGMENT_HEADER_LEN + self.max_chunk_size as usize + wire::TAG_LEN + 64
    }
}

/// An open transfer's keys and state, kept in memory while it is open.
struct OpenTransfer {
    record: TransferRecord,
    secret: PushSecret,
    cipher: Cipher,
    /// Decides what the transfer may take. Segments hold it shared while they are
    /// checked and stored; a completion or a reclaim holds it exclusively, so no
    /// segment lands in a batch being completed, completed or reclaimed.
    state: tokio::sync::RwLock<TransferState>,
}

impl OpenTransfer {
    fn new(record: TransferRecord, secret: PushSecret, max_segments: u64) -> Self {
        OpenTransfer {
            cipher: Cipher::new(&secret.data_key),
            state: tokio::sync::RwLock::new(TransferState::open(
                record.deadline_unix,
                max_segments,
            )),
            record,
            secret,
        }
    }
}

/// The refusal the peer gets for what a transfer's state refused.
impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        let code = match refused {
            Refused::Expired | Refused::Complete => RefuseCode::UnknownTransfer,
            Refused::Completing => RefuseCode::Busy,
            Refused::TooManySegments { .. } => RefuseCode::SegmentTooLarge,
        };
        refusal(code, refused.message())
    }
}

/// The mft server. Cheap to clone.
///
/// ```no_run
/// # async fn demo(manager: flow::Manager) -> mft::Result<()> {
/// use std::sync::Arc;
/// let store = Arc::new(mft::store::FsStore::open("./data")?);
/// let server = mft::Server::new(manager.identity().clone(), store, mft::ServerConfig::default())
///     .authorize_senders(Arc::new(|_key, _voucher, _batch| true));
/// server.serve(manager).await;
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
    senders: Authorize,
    retrievers: Authorize,
    at_rest: Cipher,
    pending: Arc<Semaphore>,
    flows_per_peer: Mutex<HashMap<PeerKey, usize>>,
    open: Mutex<HashMap<TransferId, Arc<OpenTransfer>>>,
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
struct Refusal(Message);

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed");
        Refusal(refuse(RefuseCode::Internal, "storage failed; retry later"))
    }
}

fn refusal(code: RefuseCode, message: impl Into<String>) -> Refusal {
    Refusal(refuse(code, message))
}

impl Server {
    /// A server acting as `identity` over `store`. Nobody may send or retrieve until
    /// [`Server::authorize_senders`] / [`Server::authorize_retrievers`] say so.
    pub fn new(identity: Identity, store: Arc<dyn Store>, config: ServerConfig) -> Self {
        let at_rest = Cipher::new(&crypto::at_rest_key(&identity));
        Server {
            inner: Arc::new(Inner {
                pending: Arc::new(Semaphore::new(config.max_pending_bytes)),
                identity,
                store,
                config,
                senders: Arc::new(|_, _, _| false),
                retrievers: Arc::new(|_, _, _| false),
                at_rest,
                flows_per_peer: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                identity: shared.identity.clone(),
                store: shared.store.clone(),
                config: shared.config.clone(),
                senders: shared.senders.clone(),
                retrievers: shared.retrievers.clone(),
                at_rest: shared.at_rest.clone(),
                pending: shared.pending.clone(),
                flows_per_peer: Mutex::new(HashMap::new()),
                open: Mutex::new(HashMap::new()),
            },
        };
        f(&mut inner);
        Server {
            inner: Arc::new(inner),
        }
    }

    /// Who may send: called with the sender's key, its voucher and the batch id.
    pub fn authorize_senders(self, authorize: Authorize) -> Self {
        self.rebuild(|inner| inner.senders = authorize)
    }

    /// Who may retrieve: called with the retriever's key, its voucher and the batch id.
    pub fn authorize_retrievers(self, authorize: Authorize) -> Self {
        self.rebuild(|inner| inner.retrievers = authorize)
    }

    /// The server's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Serves every flow `manager` accepts until the manager closes, reclaiming
    /// expired transfers every minute meanwhile.
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
                }
            }
        });
        while let Ok(flow) = manager.accept().await {
            let server = self.clone();
            tokio::spawn(async move { server.handle_flow(flow).await });
        }
        reclaimer.abort();
    }

    /// Deletes open transfers past their deadline, with their segments and secrets,
    /// and returns how many. A transfer whose batch was completed (a crash between
    /// storing the batch and closing the transfer) only loses its open record.
    pub async fn reclaim_expired(&self) -> Result<usize> {
        let store = &self.inner.store;
        let now = now_unix();
        let mut reclaimed = 0;
        for record in store.transfers().await? {
            if record.deadline_unix >= now {
                continue;
            }
            // A transfer in memory is reclaimed only through its state: that waits
            // for segments being stored and for a completion in progress, and a
            // completed one is kept.
            let open = self.lock_open().get(&record.transfer).cloned();
            let mut state = match &open {
                Some(open) => Some(open.state.write().await),
                None => None,
            };
            if let Some(state) = state.as_mut()
                && !state.expire(now)
            {
                continue;
            }
            let completed = store
                .batch(&record.batch_id)
                .await?
                .is_some_and(|b| b.transfer == record.transfer);
            if !completed {
                store.delete_segments(record.transfer).await?;
                store.delete_secret(record.transfer).await?;
            }
            store.delete_transfer(record.transfer).await?;
            self.lock_open().remove(&record.transfer);
            tracing::info!(transfer = %record.transfer, completed, "reclaimed expired transfer");
            reclaimed += 1;
        }
        Ok(reclaimed)
    }

    /// Serves one flow to its end.
    pub async fn handle_flow(&self, mut flow: Flow) {
        let peer = flow.remote_identity();
        flow.set_max_msg_size(self.inner.config.max_segment_message());
        let Some(_slot) = self.flow_slot(peer) else {
            let (mut reader, mut writer) = flow.into_split();
            // Take the first message before answering, so the client's write
            // completes and it reads the refusal rather than a broken pipe.
            let _ =
                tokio::time::timeout(self.inner.config.first_message_timeout, reader.read_msg())
                    .await;
            let Refusal(busy) = self.busy("too many flows from this key");
            let _ = writer.write_msg_and_close(&[&busy.encode()]).await;
            return;
        };
        let (mut reader, mut writer) = flow.into_split();
        let first =
            tokio::time::timeout(self.inner.config.first_message_timeout, reader.read_msg()).await;
        let first = match first {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "flow failed before its first message");
                if let Some(Refusal(too_large)) = too_large(&e) {
                    let _ = writer.write_msg_and_close(&[&too_large.encode()]).await;
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no first message in time");
                return;
            }
        };
        let outcome = match Message::decode(first) {
            Ok(Message::Hello(hello)) => self.handle_hello(peer, &hello).await,
            Ok(Message::Segment(segment)) => {
                self.handle_segments(peer, segment, &mut reader, &mut writer)
                    .await
            }
            Ok(Message::Complete(complete)) => self.handle_complete(peer, &complete).await,
            Ok(Message::Resume(resume)) => self.handle_resume(peer, resume.transfer_id).await,
            Ok(Message::PullHello(hello)) => self.handle_pull(peer, &hello, &mut writer).await,
            Ok(Message::List(list)) => self.handle_list(peer, &list).await,
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
        };
        let last = match outcome {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(Refusal(message)) => {
                tracing::info!(%peer, refusal = ?message, "refused");
                message
            }
        };
        if let Err(e) = writer.write_msg_and_close(&[&last.encode()]).await {
            tracing::debug!(%peer, error = %e, "could not answer");
        }
    }

    fn retry_after_ms(&self) -> u32 {
        u32::try_from(self.inner.config.busy_retry_after.as_millis()).unwrap_or(u32::MAX)
    }

    fn busy(&self, why: &str) -> Refusal {
        Refusal(Message::Refuse(Refuse {
            code: RefuseCode::Busy,
            retry_after_ms: self.retry_after_ms(),
            message: why.to_string(),
        }))
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

    async fn handle_hello(&self, peer: PeerKey, hello: &Hello) -> Result<Option<Message>, Refusal> {
        let hello_hash = handshake::check_hello(hello, &peer).map_err(|p| match p {
            HelloProblem::IdentityMismatch => refusal(
                RefuseCode::IdentityMismatch,
                "the sender key is not the connection's identity",
            ),
            HelloProblem::BadSignature => refusal(RefuseCode::BadSignature, "hello signature"),
        })?;
        if !(self.inner.senders)(&peer, &hello.voucher, &hello.batch_id) {
            return Err(refusal(
                RefuseCode::NotAuthorized,
                format!("key {peer} may not send this batch"),
            ));
        }
        if hello.chunk_size < wire::MIN_CHUNK_SIZE {
            return Err(refusal(
                RefuseCode::BadMessage,
                format!(
                    "chunk size {} is below {}",
                    hello.chunk_size,
                    wire::MIN_CHUNK_SIZE
                ),
            ));
        }
        let store = &self.inner.store;
        if store.batch(&hello.batch_id).await?.is_some() {
            return Err(refusal(
                RefuseCode::BatchExists,
                "a batch with this id exists",
            ));
        }
        // The same sender opening the same batch again resumes its open transfer,
        // with the same keys: segments it already stored stay valid.
        let sender = *peer.as_bytes();
        let secret = match store.find_transfer(sender, &hello.batch_id).await? {
            Some(record) => self.resume_transfer(record.transfer).await?,
            None => match self.new_transfer(peer, hello).await? {
                Some(secret) => secret,
                // Another hello of this sender opened it meanwhile (the store lets
                // only one): resume that one.
                None => {
                    let record = store
                        .find_transfer(sender, &hello.batch_id)
                        .await?
                        .ok_or_else(|| self.busy("the transfer is being opened; retry"))?;
                    self.resume_transfer(record.transfer).await?
                }
            },
        };
        let accept = handshake::accept_push(&self.inner.identity, hello, &hello_hash, &secret)
            .map_err(|e| refusal(RefuseCode::BadMessage, e.to_string()))?;
        tracing::info!(%peer, transfer = %TransferId(secret.transfer_id), "transfer accepted");
        Ok(Some(Message::Accept(accept)))
    }

    /// The secret of an open transfer its sender's hello reopens.
    async fn resume_transfer(&self, transfer: TransferId) -> Result<PushSecret, Refusal> {
        let open = self.open_transfer(transfer).await?;
        open.state.read().await.admit_resume(now_unix())?;
        Ok(PushSecret {
            new_transfer: false,
            ..open.secret.clone()
        })
    }

    /// Opens a new transfer for `hello`, storing its record and secret together;
    /// `None` if another hello of the same sender opened one for the batch first.
    async fn new_transfer(
        &self,
        peer: PeerKey,
        hello: &Hello,
    ) -> Result<Option<PushSecret>, Refusal> {
        let store = &self.inner.store;
        let open = store.open_transfer_count(*peer.as_bytes()).await?;
        if open >= self.inner.config.max_open_transfers_per_peer as u64 {
            return Err(self.busy("too many open transfers for this key"));
        }
        let secret = PushSecret {
            transfer_id: TransferId::random().0,
            completion_id: crypto::random32(),
            data_key: crypto::random32(),
            chunk_size: hello.chunk_size.min(self.inner.config.max_chunk_size),
            max_metadata: self.inner.config.max_metadata,
            new_transfer: true,
        };
        let transfer = TransferId(secret.transfer_id);
        let now = now_unix();
        let record = TransferRecord {
            transfer,
            batch_id: hello.batch_id.to_vec(),
            sender: *peer.as_bytes(),
            chunk_size: secret.chunk_size,
            created_unix: now,
            deadline_unix: now.saturating_add(self.inner.config.transfer_deadline.as_secs()),
        };
        match store
            .put_transfer_with_secret(record.clone(), self.seal_at_rest(&transfer, &secret))
            .await
        {
            Ok(()) => {}
            // Refused before anything was written: no secret is left behind.
            Err(StoreError::AlreadyExists(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let open = Arc::new(OpenTransfer::new(
            record,
            secret.clone(),
            self.inner.config.max_segments,
        ));
        self.lock_open().insert(transfer, open);
        Ok(Some(secret))
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<TransferId, Arc<OpenTransfer>>> {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data key and completion id, sealed under the at-rest key: nonce ‖ sealed.
    fn seal_at_rest(&self, transfer: &TransferId, secret: &PushSecret) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        crypto::fill_random(&mut nonce);
        seal_secret_at_rest(&self.inner.at_rest, transfer, secret, &nonce)
    }

    fn open_at_rest(
        &self,
        transfer: &TransferId,
        sealed: &[u8],
    ) -> Result<([u8; 32], [u8; 32]), StoreError> {
        let corrupt = || StoreError::Corrupt(format!("sealed secret of transfer {transfer}"));
        if sealed.len() < 12 {
            return Err(corrupt());
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[..12]);
        let aad = [context::AT_REST_AAD, &transfer.0].concat();
        let plain = crypto::open(&self.inner.at_rest, &nonce, &aad, &sealed[12..])
            .map_err(|_| corrupt())?;
        if plain.len() != 64 {
            return Err(corrupt());
        }
        let mut key = [0u8; 32];
        let mut completion = [0u8; 32];
        key.copy_from_slice(&plain[..32]);
        completion.copy_from_slice(&plain[32..]);
        Ok((key, completion))
    }

    /// An open transfer by id, from memory or (after a restart) from the store.
    async fn open_transfer(&self, transfer: TransferId) -> Result<Arc<OpenTransfer>, Refusal> {
        if let Some(open) = self.lock_open().get(&transfer) {
            return Ok(open.clone());
        }
        let store = &self.inner.store;
        let record = store
            .transfer(transfer)
            .await?
            .ok_or_else(|| refusal(RefuseCode::UnknownTransfer, "no open transfer with this id"))?;
        if record.deadline_unix < now_unix() {
            return Err(refusal(RefuseCode::UnknownTransfer, "the transfer expired"));
        }
        let sealed = store
            .secret(transfer)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("transfer {transfer} has no secret")))?;
        let (data_key, completion_id) = self.open_at_rest(&transfer, &sealed)?;
        let secret = PushSecret {
            transfer_id: transfer.0,
            completion_id,
            data_key,
            chunk_size: record.chunk_size,
            max_metadata: self.inner.config.max_metadata,
            new_transfer: false,
        };
        let open = Arc::new(OpenTransfer::new(
            record,
            secret,
            self.inner.config.max_segments,
        ));
        self.lock_open().insert(transfer, open.clone());
        Ok(open)
    }

    /// An open transfer that `peer` sent.
    async fn own_transfer(
        &self,
        peer: PeerKey,
        transfer: [u8; 16],
    ) -> Result<Arc<OpenTransfer>, Refusal> {
        let open = self.open_transfer(TransferId(transfer)).await?;
        if open.record.sender != *peer.as_bytes() {
            // Not the owner: say nothing about whether it exists.
            return Err(refusal(
                RefuseCode::UnknownTransfer,
                "no open transfer with this id",
            ));
        }
        Ok(open)
    }

    async fn handle_segments(
        &self,
        peer: PeerKey,
        first: Segment,
        reader: &mut FlowReader,
        writer: &mut FlowWriter,
    ) -> Result<Option<Message>, Refusal> {
        let open = self.own_transfer(peer, first.transfer_id).await?;
        let max_wire = self.inner.config.max_segment_message() as u32;
        let mut segment = first;
        let mut scratch = Vec::new();
        loop {
            // Hold memory for the next segment before reading it: the server-wide
            // pending-bytes bound.
            let permit = self
                .inner
                .pending
                .clone()
                .acquire_many_owned(max_wire)
                .await
                .map_err(|_| refusal(RefuseCode::Internal, "server shutting down"))?;
            // The state decides, and is held while the segment is stored, so a
            // completion or reclaim cannot start in between.
            let state = open.state.read().await;
            state.admit_segment(segment.index, now_unix())?;
            let index = self.store_segment(&open, segment, &mut scratch).await?;
            drop(state);
            drop(permit);
            if let Err(e) = session::send(writer, &Message::SegmentAck(SegmentAck { index })).await
            {
                tracing::debug!(%peer, error = %e, "could not acknowledge a segment");
                return Ok(None);
            }
            let next = match reader.read_msg().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "segment flow failed");
                    return too_large(&e).map_or(Ok(None), Err);
                }
            };
            segment = match Message::decode(next) {
                Ok(Message::Segment(s)) if s.transfer_id == open.secret.transfer_id => s,
                Ok(Message::Segment(_)) => {
                    return Err(refusal(
                        RefuseCode::BadMessage,
                        "one transfer per segment flow",
                    ));
                }
                Ok(other) => {
                    return Err(refusal(
                        RefuseCode::BadMessage,
                        format!("expected Segment, got {}", other.name()),
                    ));
                }
                Err(e) => return Err(refusal(RefuseCode::BadMessage, e.to_string())),
            };
        }
    }

    /// Checks one segment, stores it durably and acknowledges it.
    async fn store_segment(
        &self,
        open: &Arc<OpenTransfer>,
        segment: Segment,
        scratch: &mut Vec<u8>,
    ) -> Result<u64, Refusal> {
        let chunk_wire = open.record.chunk_size as usize + wire::TAG_LEN;
        let len = segment.ciphertext.len();
        if len > chunk_wire {
            return Err(refusal(
                RefuseCode::SegmentTooLarge,
                format!("segment of {len} bytes exceeds the negotiated {chunk_wire}"),
            ));
        }
        let index = segment.index;
        let tag = segment.tag();
        let len32 = len as u32; // at most 16 MiB + 16, checked above
        let transfer_id = open.secret.transfer_id;
        if !crypto::verify(
            &open.record.sender,
            context::SEGMENT,
            &[&crypto::segment_signed(&transfer_id, index, len32, &tag)],
            &segment.signature,
        ) {
            return Err(refusal(
                RefuseCode::BadSignature,
                format!("segment {index} signature"),
            ));
        }
        // Authenticate the ciphertext (one AES-GCM pass) off the I/O tasks, unless
        // it is small enough that the hop would cost more; what is stored is the
        // ciphertext itself, so data stays encrypted at rest. The plaintext goes to
        // a scratch buffer that the flow reuses for every segment, so checking
        // costs no allocation.
        let authenticate = move |cipher: &crypto::Cipher, ciphertext: &[u8], buf: &mut Vec<u8>| {
            buf.clear();
            buf.extend_from_slice(ciphertext);
            crypto::open_segment(cipher, &transfer_id, index, buf).is_ok()
        };
        let authentic = if len <= crypto::INLINE_CRYPTO_MAX + wire::TAG_LEN {
            authenticate(&open.cipher, &segment.ciphertext, scratch)
        } else {
            let cipher = open.cipher.clone();
            let ciphertext = segment.ciphertext.clone();
            let mut buf = std::mem::take(scratch);
            let (authentic, buf) = tokio::task::spawn_blocking(move || {
                let ok = authenticate(&cipher, &ciphertext, &mut buf);
                (ok, buf)
            })
            .await
            .unwrap_or((false, Vec::new()));
            *scratch = buf;
            authentic
        };
        if !authentic {
            return Err(refusal(
                RefuseCode::BadSegment,
                format!("segment {index} fails authentication (tampered, replayed or misplaced)"),
            ));
        }
        let info = SegmentInfo {
            index,
            len: len32,
            tag,
        };
        let offset = index * chunk_wire as u64;
        match self
            .inner
            .store
            .put_segment(open.record.transfer, info, offset, segment.ciphertext)
            .await
        {
            Ok(()) => Ok(index),
            Err(StoreError::AlreadyExists(_)) => Err(refusal(
                RefuseCode::DuplicateSegment,
                format!("segment {index} is already stored"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn handle_resume(
        &self,
        peer: PeerKey,
        transfer: [u8; 16],
    ) -> Result<Option<Message>, Refusal> {
        let open = self.own_transfer(peer, transfer).await?;
        open.state.read().await.admit_resume(now_unix())?;
        let stored = self.inner.store.segments(open.record.transfer).await?;
        Ok(Some(Message::Stored(Stored::from_indices(
            stored.iter().map(|s| s.index),
        ))))
    }

    async fn handle_complete(
        &self,
        peer: PeerKey,
        complete: &Complete,
    ) -> Result<Option<Message>, Refusal> {
        let open = self.own_transfer(peer, complete.transfer_id).await?;
        // Held for the whole completion: segments wait, and then find it complete.
        let mut state = open.state.write().await;
        state.begin_completion(now_unix())?;
        let outcome = self.complete_open(peer, &open, complete).await;
        state.end_completion(outcome.is_ok());
        outcome
    }

    /// Checks a completion against the stored segments, stores the batch and signs
    /// its receipt. The caller holds the transfer's state as completing.
    async fn complete_open(
        &self,
        peer: PeerKey,
        open: &OpenTransfer,
        complete: &Complete,
    ) -> Result<Option<Message>, Refusal> {
        if !crypto::verify(
            &open.record.sender,
            context::COMPLETE,
            &[&complete.signed_bytes()],
            &complete.signature,
        ) {
            return Err(refusal(RefuseCode::BadSignature, "completion signature"));
        }
        if !crypto::secrets_equal(&complete.completion_id, &open.secret.completion_id) {
            return Err(refusal(
                RefuseCode::WrongCompletionId,
                "wrong completion id",
            ));
        }
        let max_sealed = self.inner.config.max_metadata as usize + wire::TAG_LEN;
        if complete.sealed_metadata.len() > max_sealed {
            return Err(refusal(
                RefuseCode::MetadataTooLarge,
                format!(
                    "metadata of {} bytes exceeds the limit of {}",
                    complete.sealed_metadata.len().saturating_sub(wire::TAG_LEN),
                    self.inner.config.max_metadata
                ),
            ));
        }
        let transfer = open.record.transfer;
        let segments = self.inner.store.segments(transfer).await?;
        let chunk_wire = open.record.chunk_size as u64 + wire::TAG_LEN as u64;
        let count = segments.len() as u64;
        let size: u64 = segments
            .iter()
            .map(|s| u64::from(s.len) - wire::TAG_LEN as u64)
            .sum();
        let contiguous = segments
            .iter()
            .enumerate()
            .all(|(i, s)| s.index == i as u64);
        if count != complete.segment_count || size != complete.size || !contiguous {
            return Err(refusal(
                RefuseCode::WrongSegmentCount,
                format!(
                    "completion claims {} segments and {} bytes; the server holds {count} segments ({} contiguous from 0) and {size} bytes",
                    complete.segment_count,
                    complete.size,
                    segments
                        .iter()
                        .enumerate()
                        .take_while(|(i, s)| s.index == *i as u64)
                        .count()
                ),
            ));
        }
        // Every segment but the last must be a full chunk: a batch has one layout.
        if segments
            .iter()
            .rev()
            .skip(1)
            .any(|s| u64::from(s.len) != chunk_wire)
        {
            return Err(refusal(
                RefuseCode::WrongSegmentCount,
                "a segment before the last is not a full chunk",
            ));
        }
        let mut chain = Chain::new(&transfer.0, &open.record.batch_id);
        for s in &segments {
            chain.push(s.len, &s.tag);
        }
        if !crypto::secrets_equal(&chain.value(), &complete.chain) {
            return Err(refusal(
                RefuseCode::ChainMismatch,
                "the chain hash does not match the stored segments",
            ));
        }
        crypto::open(
            &open.cipher,
            &crypto::METADATA_NONCE,
            &crypto::metadata_aad(&transfer.0),
            &complete.sealed_metadata,
        )
        .map_err(|_| refusal(RefuseCode::BadSegment, "metadata fails authentication"))?;

        let mut receipt = Receipt {
            batch_id: Bytes::from(open.record.batch_id.clone()),
            transfer_id: transfer.0,
            sender: open.record.sender,
            segment_count: count,
            size,
            chain: chain.value(),
            completed_unix: now_unix(),
            server: *self.inner.identity.public_key().as_bytes(),
            signature: [0; 64],
        };
        receipt.signature = crypto::sign(
            &self.inner.identity,
            context::RECEIPT,
            &[&receipt.signed_bytes()],
        );
        let record = BatchRecord {
            batch_id: open.record.batch_id.clone(),
            transfer,
            sender: open.record.sender,
            chunk_size: open.record.chunk_size,
            segment_count: count,
            size,
            sealed_metadata: complete.sealed_metadata.to_vec(),
            chain: chain.value(),
            completed_unix: receipt.completed_unix,
            receipt: Message::Receipt(receipt.clone()).encode(),
        };
        match self.inner.store.complete_transfer(record).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(refusal(
                    RefuseCode::BatchExists,
                    "a batch with this id exists",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.lock_open().remove(&transfer);
        tracing::info!(%peer, %transfer, segments = count, bytes = size, "batch completed");
        Ok(Some(Message::Receipt(receipt)))
    }

    async fn handle_pull(
        &self,
        peer: PeerKey,
        hello: &PullHello,
        writer: &mut FlowWriter,
    ) -> Result<Option<Message>, Refusal> {
        let hello_hash = handshake::check_pull_hello(hello, &peer).map_err(|p| match p {
            HelloProblem::IdentityMismatch => refusal(
                RefuseCode::IdentityMismatch,
                "the retriever key is not the connection's identity",
            ),
            HelloProblem::BadSignature => refusal(RefuseCode::BadSignature, "pull hello signature"),
        })?;
        // Unauthorised and missing look the same, so keys learn nothing about
        // batches they may not see.
        let not_found = || refusal(RefuseCode::NotFound, "no such batch for this key");
        if !(self.inner.retrievers)(&peer, &hello.voucher, &hello.batch_id) {
            return Err(not_found());
        }
        let batch = self
            .inner
            .store
            .batch(&hello.batch_id)
            .await?
            .ok_or_else(not_found)?;
        let secret = self.pull_secret(&batch).await?;
        let accept = handshake::accept_pull(&self.inner.identity, hello, &hello_hash, &secret)
            .map_err(|e| refusal(RefuseCode::BadMessage, e.to_string()))?;
        session::send(writer, &Message::PullAccept(accept))
            .await
            .map_err(|e| refusal(RefuseCode::Internal, e.to_string()))?;
        let chunk_wire = u64::from(batch.chunk_size) + wire::TAG_LEN as u64;
        for s in self.batch_segments(&batch).await? {
            let data = self
                .inner
                .store
                .read_segment(batch.transfer, s.index * chunk_wire, s.len)
                .await?;
            let header = PullSegment::header(s.index, s.len);
            let sent = writer
                .write_msg_bytes(&mut [Bytes::copy_from_slice(&header), data])
                .await;
            if let Err(e) = sent {
                tracing::debug!(%peer, error = %e, "retriever went away");
                return Ok(None);
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(writer).await;
        tracing::info!(%peer, batch = batch.transfer.to_hex(), "batch retrieved");
        Ok(None)
    }

    /// A page of the batches `peer` may retrieve, with their metadata.
    async fn handle_list(
        &self,
        peer: PeerKey,
        list: &wire::List,
    ) -> Result<Option<Message>, Refusal> {
        // Metadata per page is bounded too, so a listing always fits one message.
        const MAX_PAGE_METADATA: usize = 8 << 20;
        let limit = (list.limit as usize).clamp(1, wire::MAX_LISTING_ENTRIES);
        let mut listing = wire::Listing::default();
        let mut metadata_bytes = 0;
        for batch in self.inner.store.batches().await? {
            if batch.batch_id.as_slice() <= list.after.as_ref()
                || !(self.inner.retrievers)(&peer, &list.voucher, &batch.batch_id)
            {
                continue;
            }
            if listing.entries.len() == limit || metadata_bytes >= MAX_PAGE_METADATA {
                listing.more = true;
                break;
            }
            let secret = self.pull_secret(&batch).await?;
            let metadata = crypto::open(
                &Cipher::new(&secret.data_key),
                &crypto::METADATA_NONCE,
                &crypto::metadata_aad(&batch.transfer.0),
                &batch.sealed_metadata,
            )
            .map_err(|_| {
                StoreError::Corrupt(format!("metadata of batch transfer {}", batch.transfer))
            })?;
            metadata_bytes += metadata.len();
            listing.entries.push(wire::ListingEntry {
                batch_id: Bytes::from(batch.batch_id),
                size: batch.size,
                segment_count: batch.segment_count,
                sender: batch.sender,
                completed_unix: batch.completed_unix,
                metadata: Bytes::from(metadata),
            });
        }
        Ok(Some(Message::Listing(listing)))
    }

    /// The segments of a completed batch: those its record counts, never more, so
    /// nothing stored under its transfer afterwards can change what is retrieved.
    async fn batch_segments(&self, batch: &BatchRecord) -> Result<Vec<SegmentInfo>, StoreError> {
        let mut segments = self.inner.store.segments(batch.transfer).await?;
        segments.retain(|s| s.index < batch.segment_count);
        Ok(segments)
    }

    /// What a retriever of `batch` needs: its key (unsealed from the store) and
    /// description.
    async fn pull_secret(&self, batch: &BatchRecord) -> Result<PullSecret, StoreError> {
        let sealed = self
            .inner
            .store
            .secret(batch.transfer)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("batch transfer {} has no secret", batch.transfer))
            })?;
        let (data_key, _) = self.open_at_rest(&batch.transfer, &sealed)?;
        Ok(PullSecret {
            transfer_id: batch.transfer.0,
            data_key,
            chunk_size: batch.chunk_size,
            segment_count: batch.segment_count,
            size: batch.size,
            chain: batch.chain,
            sender: batch.sender,
            sealed_metadata: batch.sealed_metadata.clone(),
        })
    }

    /// Reads a completed batch locally: the plaintext as a stream (verified segment by
    /// segment, the chain checked before the end) and its description. `requester`
    /// must pass the retriever authorisation.
    pub async fn retrieve(
        &self,
        requester: &PeerKey,
        batch_id: &[u8],
    ) -> Result<(BatchReader, BatchInfo)> {
        let not_found = || Error::Refused {
            code: RefuseCode::NotFound,
            message: "no such batch for this key".into(),
            retry_after: None,
        };
        if !(self.inner.retrievers)(requester, &[], batch_id) {
            return Err(not_found());
        }
        let batch = self
            .inner
            .store
            .batch(batch_id)
            .await?
            .ok_or_else(not_found)?;
        let secret = self.pull_secret(&batch).await?;
        let source = StoreSource {
            store: self.inner.store.clone(),
            transfer: batch.transfer,
            chunk_wire: u64::from(batch.chunk_size) + wire::TAG_LEN as u64,
            segments: self.batch_segments(&batch).await?.into_iter(),
        };
        crate::stream::open_batch(&batch.batch_id, secret, source)
    }
}

/// A transfer's data key and completion id sealed under the server's at-rest key
/// with `nonce`: nonce ‖ ciphertext ‖ tag, as the store keeps it.
pub(crate) fn seal_secret_at_rest(
    at_rest: &Cipher,
    transfer: &TransferId,
    secret: &PushSecret,
    nonce: &[u8; 12],
) -> Vec<u8> {
    let aad = [context::AT_REST_AAD, &transfer.0].concat();
    let plain = [&secret.data_key[..], &secret.completion_id[..]].concat();
    let mut out = nonce.to_vec();
    out.extend(crypto::seal(at_rest, nonce, &aad, &plain));
    out
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

/// Stored segments as a [`SegmentSource`].
struct StoreSource {
    store: Arc<dyn Store>,
    transfer: TransferId,
    chunk_wire: u64,
    segments: std::vec::IntoIter<SegmentInfo>,
}

#[async_trait::async_trait]
impl SegmentSource for StoreSource {
    async fn next_segment(&mut self) -> Result<Option<(u64, Bytes)>> {
        let Some(s) = self.segments.next() else {
            return Ok(None);
        };
        let data = self
            .store
            .read_segment(self.transfer, s.index * self.chunk_wire, s.len)
            .await?;
        Ok(Some((s.index, data)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BatchStore, MemoryStore, SecretStore, SegmentStore, TransferStore};

    fn record(id: u8, batch: &[u8], deadline_unix: u64) -> TransferRecord {
        TransferRecord {
            transfer: TransferId([id; 16]),
            batch_id: batch.to_vec(),
            sender: [9; 32],
            chunk_size: 4096,
            created_unix: 0,
            deadline_unix,
        }
    }

    #[tokio::test]
    async fn expired_transfers_are_reclaimed_and_completed_batches_kept() {
        let store = Arc::new(MemoryStore::new());
        let server = Server::new(Identity::generate(), store.clone(), ServerConfig::default());
        let info = SegmentInfo {
            index: 0,
            len: 20,
            tag: [0; 16],
        };
        let (expired, live, done) = (
            record(1, b"old", 1),
            record(2, b"new", u64::MAX),
            record(3, b"done", 1),
        );
        for r in [&expired, &live, &done] {
            store.put_transfer(r.clone()).await.unwrap();
            store.put_secret(r.transfer, vec![1, 2, 3]).await.unwrap();
            store
                .put_segment(r.transfer, info, 0, Bytes::from(vec![0; 20]))
                .await
                .unwrap();
        }
        store
            .put_batch(BatchRecord {
                batch_id: b"done".to_vec(),
                transfer: done.transfer,
                sender: [9; 32],
                chunk_size: 4096,
                segment_count: 1,
                size: 4,
                sealed_metadata: vec![],
                chain: [0; 64],
                completed_unix: 1,
                receipt: vec![],
            })
            .await
            .unwrap();

        assert_eq!(server.reclaim_expired().await.unwrap(), 2);
        assert!(store.transfer(expired.transfer).await.unwrap().is_none());
        assert!(store.segments(expired.transfer).await.unwrap().is_empty());
        assert!(store.secret(expired.transfer).await.unwrap().is_none());
        assert!(store.transfer(live.transfer).await.unwrap().is_some());
        assert_eq!(store.segments(live.transfer).await.unwrap().len(), 1);
        // The completed batch keeps its data and key; only the open record goes.
        assert!(store.transfer(done.transfer).await.unwrap().is_none());
        assert_eq!(store.segments(done.transfer).await.unwrap().len(), 1);
        assert!(store.secret(done.transfer).await.unwrap().is_some());
    }
}
