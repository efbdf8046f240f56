//! The server: accepts flows from a [`flow::Manager`], dispatches each on its first
//! message, and keeps every promise of `RELIABILITY.md` about what it stores.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flow::{Flow, Identity, Manager, PeerKey};
use tokio::sync::Semaphore;

use crate::crypto::{self, Cipher};
use crate::error::Result;
use crate::store::{Store, StoreError, TransferId};
use crate::wire::{self, Codec, Message, Refuse, RefuseCode};

mod at_rest;
mod config;
mod pull;
mod push;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use at_rest::seal_secret_at_rest;
pub use config::ServerConfig;
use push::OpenTransfer;

/// Decides whether `key`, presenting `voucher`, may send (or retrieve) `batch_id`.
pub type Authorize = Arc<dyn Fn(&PeerKey, &[u8], &[u8]) -> bool + Send + Sync>;

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
            let busy = encode_reply(&Message::Refuse(busy));
            let _ = writer.write_msg_and_close(&[&busy]).await;
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
                    let too_large = encode_reply(&Message::Refuse(too_large));
                    let _ = writer.write_msg_and_close(&[&too_large]).await;
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no first message in time");
                return;
            }
        };
        let outcome = match Message::from_bytes(first) {
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
            Err(Refusal(refuse)) => {
                tracing::info!(%peer, code = %refuse.code, reason = %refuse.message, "refused");
                Message::Refuse(refuse)
            }
        };
        if let Err(e) = writer.write_msg_and_close(&[&encode_reply(&last)]).await {
            tracing::debug!(%peer, error = %e, "could not answer");
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
