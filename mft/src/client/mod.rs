//! The client side: [`Sender`] pushes a batch, [`Retriever`] pulls one back.
//!
//! A send is a handshake flow, then `streams` segment flows working through the
//! chunks of the input in parallel (one segment in flight per flow, each
//! acknowledged once the server stored it durably), then a completion flow. All flows
//! share the one connection the flow manager caches for the server. When flows fail
//! on the network, the sender waits (with backoff, or as long as a busy server asks),
//! asks the server which segments it holds, and sends only the rest, within its retry
//! budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flow::{FlowReader, FlowWriter, Manager};
use tokio::io::AsyncRead;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::compress::Compress;
use crate::crypto::{self, Cipher};
use crate::error::{Error, Result};
use crate::handshake::{ClientHandshake, PushSecret};
use crate::proto::retry::{Attempts, Verdict};
use crate::session;
use crate::wire::{
    self, BatchId, Complete, Compression, Confirm, Message, RefuseCode, Resume, Signature, Signed,
    Stored, TransferId, kind,
};

mod config;
mod control;
mod events;
mod manage;
mod produce;
mod retriever;
mod retry;
mod segments;
#[cfg(test)]
mod tests;

pub use config::{
    ClientConfig, DEFAULT_TARGET_RATE, InFlight, MAX_BYTES_IN_FLIGHT, MAX_SEGMENTS_IN_FLIGHT,
    MIN_BYTES_IN_FLIGHT,
};
use control::{Control, Watch};
pub use events::{Content, Event};
use produce::{BufferPool, Outlet, Produced, Sealer, produce};
pub use retriever::{BatchSummary, Pull, Retriever};
use retry::{exhausted, judge, retrying};
use segments::{Shared, send_segments};

pub use crate::wire::Receipt;

fn check_batch_id(batch_id: &[u8]) -> Result<BatchId> {
    BatchId::new(batch_id.to_vec()).map_err(|e| Error::config("batch id", e.to_string()))
}

/// Makes a send's metadata from its [`Content`], once the data has streamed.
type MakeMetadata = Box<dyn FnOnce(&Content) -> Result<Vec<u8>> + Send>;

/// A send's metadata: known up front, or made from the [`Content`] at the end.
enum Metadata {
    Fixed(Vec<u8>),
    Deferred(MakeMetadata),
}

impl Metadata {
    /// Checks metadata known up front against `limit`.
    fn check_fixed(&self, limit: u32, whose: &str) -> Result<()> {
        match self {
            Metadata::Fixed(metadata) => check_metadata(metadata, limit, whose),
            Metadata::Deferred(_) => Ok(()),
        }
    }

    /// The metadata to seal, made now if it was deferred, within the server's
    /// `limit`.
    fn finish(self, content: &Content, limit: u32) -> Result<Vec<u8>> {
        match self {
            Metadata::Fixed(bytes) => Ok(bytes),
            Metadata::Deferred(make) => {
                let bytes = make(content)?;
                check_metadata(&bytes, limit, "server's")?;
                Ok(bytes)
            }
        }
    }
}

/// How far a send got in opening its transfer, for a cancel to abort it.
#[derive(Default)]
struct Opening {
    /// Set before its hello is sent.
    hello_sent: std::sync::OnceLock<()>,
    /// Its transfer, once accepted.
    transfer: std::sync::OnceLock<TransferId>,
}

/// What the handshake settled for a send.
struct Opened {
    secret: PushSecret,
    in_flight: InFlight,
    /// Segments the server held when the transfer opened.
    held: Stored,
}

/// A task aborted if its handle is dropped before it is awaited: the producer of a
/// send that failed stops reading its input.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn finish(mut self) -> Result<T> {
        (&mut self.0).await.map_err(join_error)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task that panicked or was cancelled, as an error.
fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Io(std::io::Error::other(e))
}

/// The workers that failed in the same incident as the one just handled (they
/// have finished already): restarted without costing another retry. A failure
/// among them that cannot be retried ends the send (a refused connection can:
/// workers run on an open transfer, so the server refusing now is restarting).
fn failed_in_the_same_incident(workers: &mut JoinSet<Result<()>>) -> Result<usize> {
    let mut failed = 0;
    while let Some(joined) = workers.try_join_next() {
        match joined.map_err(join_error)? {
            Ok(()) => {}
            Err(e) if e.is_retryable() || e.is_refused() => failed += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(failed)
}

fn check_metadata(metadata: &[u8], limit: u32, whose: &str) -> Result<()> {
    if metadata.len() > limit as usize {
        return Err(Error::config(
            "metadata",
            format!(
                "{} bytes exceeds the {whose} limit of {limit}",
                metadata.len()
            ),
        ));
    }
    Ok(())
}

/// Pushes batches to one server.
///
/// ```no_run
/// # async fn demo(manager: flow::Manager, config: mft::ClientConfig) -> mft::Result<()> {
/// let sender = mft::Sender::new(manager, config)?;
/// let file = tokio::fs::File::open("report.pdf").await?;
/// let receipt = sender.send(file, b"report-2026-11", br#"{"name":"report.pdf"}"#).await?;
/// println!("stored {} bytes", receipt.size);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Sender {
    manager: Manager,
    config: ClientConfig,
    events: broadcast::Sender<Event>,
    control: Control,
}

impl Sender {
    /// A sender using `manager`'s identity and connections.
    pub fn new(manager: Manager, config: ClientConfig) -> Result<Self> {
        config.validate()?;
        if !manager.registry().can_dial(&config.endpoint) {
            return Err(Error::config(
                "endpoint",
                format!("no protocol {:?} is registered", config.endpoint.protocol()),
            ));
        }
        let (events, _) = broadcast::channel(256);
        Ok(Sender {
            manager,
            config,
            control: Control::new(events.clone()),
            events,
        })
    }

    /// Events of this sender's transfers.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Pauses this sender's sends: no more of their input is read or sealed, so
    /// once the segments already sealed (a few per send) are stored, nothing more
    /// crosses the network until [`Sender::resume`]. The transfers stay open on the
    /// server, which keeps what it holds until their deadline. Applies to every
    /// send through this sender and its clones, including those started while
    /// paused (they open their transfer, then wait). Returns false if the sender
    /// was paused already; emits [`Event::Paused`] otherwise. Each send with an
    /// open transfer tells the server, which reports
    /// [`ServerEvent::Paused`](crate::ServerEvent::Paused) (and
    /// [`Continued`](crate::ServerEvent::Continued) on resume) in its events and
    /// logs; a server that does not know the notice refuses it, and the send
    /// goes on regardless.
    ///
    /// A long pause may outlast the server's idle deadline for the flows the
    /// sends keep open; the sends then reconnect when resumed, at the cost of one
    /// retry each.
    ///
    /// ```no_run
    /// # async fn demo(sender: mft::Sender) -> mft::Result<()> {
    /// let file = tokio::fs::File::open("big.iso").await?;
    /// let send = sender.send(file, b"big.iso", b"{}");
    /// sender.pause(); // the link is needed for something else for a while
    /// let (receipt, ()) = tokio::join!(send, async {
    ///     tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    ///     sender.resume();
    /// });
    /// println!("stored {} bytes", receipt?.size);
    /// # Ok(()) }
    /// ```
    pub fn pause(&self) -> bool {
        self.control.pause()
    }

    /// Ends a [pause](Sender::pause): the sends read their input again. Returns
    /// false if the sender was not paused; emits [`Event::Continued`] otherwise.
    pub fn resume(&self) -> bool {
        self.control.resume()
    }

    /// Whether this sender is [paused](Sender::pause).
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Cancels every send in progress through this sender and its clones: each
    /// stops at once, tells the server to abort the transfer it opened (which
    /// frees the transfer's slot and deletes what it holds of it), emits
    /// [`Event::Cancelled`] and returns [`Error::Cancelled`]. A send is in
    /// progress from the call to [`Sender::send`] (or `send_with`) that made its
    /// future; sends made after this call are not affected. To stop a send but
    /// keep what the server holds for a later resume, drop its future instead.
    ///
    /// ```no_run
    /// # async fn demo(sender: mft::Sender) -> mft::Result<()> {
    /// let file = tokio::fs::File::open("wrong-file.iso").await?;
    /// let send = sender.send(file, b"big.iso", b"{}"); // subject to cancel from here
    /// sender.cancel();
    /// assert!(matches!(send.await, Err(mft::Error::Cancelled)));
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// Restarts this sender's sends in progress on a new connection: closes the
    /// manager's connections to the server now, and each send reconnects at
    /// once, asks the server which segments it holds and sends the rest, without
    /// waiting or spending a retry. For a path that changed or stalled under the
    /// connection (a laptop that moved networks), where waiting for the
    /// connection to time out would cost its idle timeout. Emits
    /// [`Event::Reconnecting`]. Flows of other users of the same manager to the
    /// same server fail too, and retry as after any lost connection; a send in
    /// its handshake or completion retries that step as it would then.
    ///
    /// This is the data-transfer seed's restart of an interrupted channel. A
    /// send that has already failed is picked up by sending the same batch id
    /// again, which resumes it.
    pub fn restart(&self) {
        self.control.restart(&self.manager, &self.config.server_key);
    }

    /// The transfers this key has open on the server (interrupted sends it can
    /// resume by sending the same batch id again, or abort), in batch-id order.
    ///
    /// ```no_run
    /// # async fn demo(sender: mft::Sender) -> mft::Result<()> {
    /// for open in sender.open_transfers().await? {
    ///     println!("{:?}: {} bytes held", open.batch_id, open.stored_bytes);
    ///     sender.abort(open.transfer_id).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open_transfers(&self) -> Result<Vec<crate::wire::OpenEntry>> {
        self.asking(|| manage::open_transfers(&self.manager, &self.config))
            .await
    }

    /// Runs one request under the retry policy, as every operation is.
    async fn asking<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempts = Attempts::new(self.config.retries);
        retrying(&mut attempts, Some(&self.events), 0, op).await
    }

    /// Aborts this key's open transfer `transfer`: the server deletes what it
    /// holds of it at once and frees its slot, instead of keeping it for a resume
    /// until its deadline.
    pub async fn abort(&self, transfer: crate::wire::TransferId) -> Result<()> {
        self.asking(|| manage::abort(&self.manager, &self.config, transfer))
            .await
    }

    /// Deletes this key's batch `batch_id`: it is no longer listed or retrievable
    /// (retrievals already under way finish), and the server frees its storage
    /// and its share of the key's quota. Returns the batch's plaintext size.
    ///
    /// ```no_run
    /// # async fn demo(sender: mft::Sender) -> mft::Result<()> {
    /// let freed = sender.delete(b"report-2026-11").await?;
    /// println!("freed {freed} bytes");
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, batch_id: &[u8]) -> Result<u64> {
        let batch_id = check_batch_id(batch_id)?;
        self.asking(|| manage::delete(&self.manager, &self.config, None, batch_id.clone()))
            .await
    }

    /// Deletes `owner`'s batch `batch_id`, as a key the server's policy lets
    /// delete others' batches ([`Direction::Delete`](crate::Direction::Delete)).
    /// A batch this key may not delete is not found, as a missing one.
    pub async fn delete_from(&self, owner: &flow::PeerKey, batch_id: &[u8]) -> Result<u64> {
        let owner = Some(*owner.as_bytes());
        let batch_id = check_batch_id(batch_id)?;
        self.asking(|| manage::delete(&self.manager, &self.config, owner, batch_id.clone()))
            .await
    }

    /// Sends everything `reader` yields as batch `batch_id` with `metadata`, and
    /// returns the server's verified receipt.
    ///
    /// If this key holds a batch `batch_id` already, the send succeeds without
    /// sending anything when that batch has the same size and SHA-256 as the
    /// input (reading the input once to tell), returning the stored receipt;
    /// otherwise it is refused as `BatchExists`, unless the config says to
    /// [replace](ClientConfig::replace) it. A send that resumes an interrupted
    /// transfer of other content fails as [`Error::ContentChanged`] after
    /// aborting that transfer, so sending the input again starts afresh.
    ///
    /// The send is subject to [`Sender::pause`] and [`Sender::cancel`] from the
    /// moment this is called, before its future is first polled.
    pub fn send(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: &[u8],
    ) -> impl Future<Output = Result<Receipt>> + Send {
        let metadata = Metadata::Fixed(metadata.to_vec());
        let watch = self.control.watch();
        async move { self.report(self.cancellable(reader, batch_id, metadata, watch).await) }
    }

    /// Sends everything `reader` yields as batch `batch_id`, with metadata made once
    /// the data has streamed: `metadata` receives the [`Content`] (size, segment
    /// count and the SHA-256 of the plaintext, computed while the segments were
    /// sealed, so the input is read once) and returns the metadata to seal into the
    /// completion, or an error to abandon the batch before it completes (say, the
    /// file changed while it was read).
    ///
    /// ```no_run
    /// # async fn demo(sender: mft::Sender) -> mft::Result<()> {
    /// let file = tokio::fs::File::open("big.iso").await?;
    /// let receipt = sender
    ///     .send_with(file, b"big.iso", |content| {
    ///         let hex: String = content.sha256.iter().map(|b| format!("{b:02x}")).collect();
    ///         Ok(format!(r#"{{"name":"big.iso","sha256":"{hex}"}}"#).into_bytes())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn send_with<F>(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: F,
    ) -> impl Future<Output = Result<Receipt>> + Send
    where
        F: FnOnce(&Content) -> Result<Vec<u8>> + Send + 'static,
    {
        let metadata = Metadata::Deferred(Box::new(metadata));
        let watch = self.control.watch();
        async move { self.report(self.cancellable(reader, batch_id, metadata, watch).await) }
    }

    /// Runs one send until it ends or is [cancelled](Sender::cancel); a cancelled
    /// send aborts the transfer it opened, if it opened one.
    async fn cancellable(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: Metadata,
        mut watch: Watch,
    ) -> Result<Receipt> {
        let opening = Opening::default();
        let for_the_send = watch.clone();
        tokio::select! {
            // A cancel asked before the send first ran wins: nothing is sent.
            biased;
            () = watch.cancelled() => {
                if let Some(transfer) = self.transfer_of(&opening, batch_id).await
                    && let Err(e) = self.abort(transfer).await
                {
                    tracing::warn!(
                        error = %e,
                        "the cancelled send's transfer was not aborted; it expires on its deadline"
                    );
                }
                Err(Error::Cancelled)
            }
            result = self.send_inner(reader, batch_id, metadata, &opening, for_the_send) => result,
        }
    }

    /// The transfer a cancelled send opened: known once its accept arrived; if
    /// its hello went out but no accept came back yet, the server's list of
    /// this key's open transfers says (a server still opening it then keeps it
    /// until it is abandoned or expires).
    async fn transfer_of(&self, opening: &Opening, batch_id: &[u8]) -> Option<TransferId> {
        if let Some(transfer) = opening.transfer.get() {
            return Some(*transfer);
        }
        opening.hello_sent.get()?;
        let open = self.open_transfers().await.ok()?;
        open.into_iter()
            .find(|o| &o.batch_id[..] == batch_id)
            .map(|o| o.transfer_id)
    }

    /// Emits the final event of a send.
    fn report(&self, result: Result<Receipt>) -> Result<Receipt> {
        match &result {
            Ok(receipt) => {
                let _ = self.events.send(Event::Completed {
                    size: receipt.size,
                    segments: receipt.segment_count,
                });
            }
            Err(Error::Cancelled) => {
                let _ = self.events.send(Event::Cancelled);
            }
            Err(e) => {
                let _ = self.events.send(Event::Failed {
                    error: e.to_string(),
                });
            }
        }
        result
    }

    async fn send_inner(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: Metadata,
        opening: &Opening,
        watch: Watch,
    ) -> Result<Receipt> {
        let batch_id = check_batch_id(batch_id)?;
        metadata.check_fixed(wire::MAX_METADATA as u32, "protocol")?;
        let _ = self.events.send(Event::Opened {
            batch_id: batch_id.to_vec(),
        });
        let mut attempts = Attempts::new(self.config.retries);
        let _ = opening.hello_sent.set(());
        let opened = match self.open(&batch_id, &mut attempts).await {
            Ok(opened) => opened,
            // The batch exists: sending the same content again is a success.
            Err(e) if e.refuse_code() == Some(RefuseCode::BatchExists) && !self.config.replace => {
                return self.confirm_same(reader, &batch_id, &mut attempts).await;
            }
            Err(e) => return Err(e),
        };
        let _ = opening.transfer.set(opened.secret.transfer_id);
        // The server hears of pauses (for its events and logs) while this runs.
        let _pauses = AbortOnDrop(tokio::spawn(manage::tell_pauses(
            self.manager.clone(),
            self.config.clone(),
            opened.secret.transfer_id,
            watch.clone(),
        )));
        metadata.check_fixed(opened.secret.max_metadata, "server's")?;
        let pool = Arc::new(BufferPool::default());
        // The producer stays a few sealed segments ahead of the flows.
        let (tx, queue) = mpsc::channel(4);
        let mut restarts = watch.clone();
        let (first_is_last, single) = oneshot::channel();
        let producer = AbortOnDrop(tokio::spawn(produce(
            reader,
            Sealer::new(
                &opened.secret,
                self.manager.identity().clone(),
                self.config.compress,
            ),
            opened.secret.clone(),
            batch_id.to_vec(),
            Outlet { tx, first_is_last },
            pool.clone(),
            watch,
        )));
        let transfer_id = opened.secret.transfer_id;
        let resumed = !opened.secret.new_transfer;
        let shared = Shared::new(
            self,
            transfer_id,
            queue,
            opened.held,
            opened.in_flight,
            pool,
        );
        let shared = Arc::new(shared);
        // A batch of one segment (or none) needs one flow, not `streams` of them:
        // small batches would pay for workers with nothing to send.
        let streams = match single.await {
            Ok(false) => self.config.streams,
            Ok(true) | Err(_) => 1,
        };
        self.deliver(&shared, streams, &mut attempts, &mut restarts)
            .await?;
        let produced = producer.finish().await??;
        shared.ready_to_complete(produced.content.segments)?;
        let metadata = metadata.finish(&produced.content, opened.secret.max_metadata)?;
        let complete = self.completion(&opened.secret, &produced, &metadata)?;
        let progress = shared.stored_count();
        let completed = retrying(&mut attempts, Some(&self.events), progress, || {
            self.complete(&complete)
        })
        .await;
        let receipt = match completed {
            Ok(receipt) => receipt,
            // A resumed transfer whose stored segments do not chain with ours
            // holds other content: end it, so the next send starts afresh
            // instead of resuming it again.
            Err(e) if resumed && e.refuse_code() == Some(RefuseCode::ChainMismatch) => {
                return Err(self.start_afresh(transfer_id, e).await);
            }
            Err(e) => return Err(e),
        };
        self.check_receipt(&receipt, &batch_id, &complete)?;
        Ok(receipt)
    }

    /// Aborts a resumed transfer found to hold other content, and says so.
    async fn start_afresh(&self, transfer_id: TransferId, refused: Error) -> Error {
        match self.abort(transfer_id).await {
            Ok(()) => {
                let _ = self.events.send(Event::Restarted);
                Error::ContentChanged(refused.to_string())
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not abort the transfer of other content");
                refused
            }
        }
    }

    /// Answers a send refused because the batch exists: reads the rest of the
    /// input (nothing of it was sent), and asks the server whether its batch holds
    /// the same size and SHA-256. If it does, its stored receipt is the answer;
    /// if not, the refusal says so.
    async fn confirm_same(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &BatchId,
        attempts: &mut Attempts,
    ) -> Result<Receipt> {
        let (size, content_digest) = digest_all(reader).await?;
        let confirm = Message::Confirm(Confirm {
            batch_id: batch_id.clone(),
            size,
            content_digest,
            voucher: Bytes::from(self.config.voucher.clone()),
        });
        let receipt = retrying(attempts, Some(&self.events), 0, || async {
            let (mut reader, mut writer) = self.flow().await?;
            session::request(&mut reader, &mut writer, &confirm, kind::Receipt).await
        })
        .await?;
        self.check_signed_by_server(&receipt)?;
        let ours = *self.manager.identity().public_key().as_bytes();
        if receipt.batch_id != *batch_id
            || receipt.sender != ours
            || receipt.size != size
            || receipt.content_digest != content_digest
        {
            return Err(Error::ServerAuth(
                "the stored receipt does not describe this content".into(),
            ));
        }
        let _ = self.events.send(Event::AlreadyStored { size });
        Ok(receipt)
    }

    /// The handshake, and what it settles: the secret, the data in flight for the
    /// path measured, and the segments a reopened transfer holds already.
    async fn open(&self, batch_id: &BatchId, attempts: &mut Attempts) -> Result<Opened> {
        let events = Some(&self.events);
        let (secret, protocol, rtt) =
            retrying(attempts, events, 0, || self.handshake(batch_id)).await?;
        let in_flight = self.config.in_flight(rtt, secret.chunk_size);
        tracing::debug!(?rtt, ?in_flight, "segments in flight");
        let _ = self.events.send(Event::Accepted {
            transfer_id: secret.transfer_id,
            chunk_size: secret.chunk_size,
            protocol,
        });
        // A transfer reopened by a new process (same sender, same batch id) may have
        // segments stored already; ask once, and send only the rest. A new one has
        // none, and the server says so in its accept.
        let held = if secret.new_transfer {
            Stored::default()
        } else {
            retrying(attempts, events, 0, || self.stored(secret.transfer_id)).await?
        };
        if held.count() > 0 {
            let _ = self.events.send(Event::Resumed {
                stored: held.count(),
            });
        }
        Ok(Opened {
            secret,
            in_flight,
            held,
        })
    }

    /// Runs `streams` segment workers until every segment is delivered. One
    /// incident (a lost connection fails every worker on it) costs one retry and
    /// one wait, unless it follows a [restart](Sender::restart), which costs
    /// neither; then the server says what it holds and the workers start again.
    async fn deliver(
        &self,
        shared: &Arc<Shared>,
        streams: usize,
        attempts: &mut Attempts,
        restarts: &mut Watch,
    ) -> Result<()> {
        // Dropping the set (on an error) aborts the workers.
        let mut workers = JoinSet::new();
        for _ in 0..streams {
            workers.spawn(send_segments(shared.clone()));
        }
        while let Some(joined) = workers.join_next().await {
            let Err(error) = joined.map_err(join_error)? else {
                continue;
            };
            let events = Some(&self.events);
            if !restart_caused(&error, restarts) {
                match judge(attempts, &error, shared.stored_count(), events) {
                    Verdict::Retry { delay, .. } => tokio::time::sleep(delay).await,
                    Verdict::GiveUp { attempts } => return Err(exhausted(attempts, error)),
                }
            }
            let restart = 1 + failed_in_the_same_incident(&mut workers)?;
            self.resync(shared).await;
            for _ in 0..restart {
                workers.spawn(send_segments(shared.clone()));
            }
        }
        Ok(())
    }

    /// Asks the server which segments it holds and drops those from the resend
    /// queue: a segment may have been stored with its acknowledgement lost.
    async fn resync(&self, shared: &Shared) {
        if let Ok(stored) = self.stored(shared.transfer_id).await {
            let _ = self.events.send(Event::Resumed {
                stored: stored.count(),
            });
            shared.server_holds(&stored);
        }
    }

    async fn flow(&self) -> Result<(FlowReader, FlowWriter)> {
        open_flow(&self.manager, &self.config).await
    }

    async fn handshake(&self, batch_id: &BatchId) -> Result<(PushSecret, String, Duration)> {
        let offer = match self.config.compress {
            Compress::Off => Compression::None,
            Compress::Auto | Compress::Zstd => Compression::Zstd,
        };
        let (handshake, hello) = ClientHandshake::push_offering(
            self.manager.identity(),
            batch_id,
            self.config.chunk_size,
            &self.config.voucher,
            self.config.replace,
            offer,
        )?;
        let (mut reader, mut writer) = self.flow().await?;
        let protocol = reader.conn().protocol().to_string();
        let asked = std::time::Instant::now();
        let hello = Message::Hello(hello);
        let accept = session::request(&mut reader, &mut writer, &hello, kind::Accept).await?;
        // Protocols that do not measure the round trip (HTTPS) get the time this
        // exchange took, an overestimate by the server's handshake work.
        let rtt = reader.conn().rtt().unwrap_or_else(|| asked.elapsed());
        let secret = handshake.finish_push(&accept, &self.config.server_key)?;
        Ok((secret, protocol, rtt))
    }

    async fn stored(&self, transfer_id: TransferId) -> Result<Stored> {
        let (mut reader, mut writer) = self.flow().await?;
        let resume = Message::Resume(Resume { transfer_id });
        session::request(&mut reader, &mut writer, &resume, kind::Stored).await
    }

    /// The signed completion of what the producer made, with `metadata` sealed.
    fn completion(
        &self,
        secret: &PushSecret,
        produced: &Produced,
        metadata: &[u8],
    ) -> Result<Complete> {
        let sealed_metadata = crypto::seal(
            &Cipher::new(secret.data_key.expose()),
            &crypto::METADATA_NONCE,
            &crypto::metadata_aad(&secret.transfer_id),
            metadata,
        );
        let mut complete = Complete {
            transfer_id: secret.transfer_id,
            segment_count: produced.content.segments,
            size: produced.content.size,
            completion_id: secret.completion_id,
            chain: produced.chain,
            sealed_metadata: Bytes::from(sealed_metadata),
            content_digest: produced.content.sha256,
            replace: self.config.replace,
            signature: Signature([0; 64]),
        };
        complete.sign(self.manager.identity())?;
        Ok(complete)
    }

    async fn complete(&self, complete: &Complete) -> Result<Receipt> {
        let (mut reader, mut writer) = self.flow().await?;
        let message = Message::Complete(complete.clone());
        session::request(&mut reader, &mut writer, &message, kind::Receipt).await
    }

    /// Checks that the server we trust signed `receipt`.
    fn check_signed_by_server(&self, receipt: &Receipt) -> Result<()> {
        let server = self.config.server_key.as_bytes();
        if receipt.server != *server || !receipt.verify(server) {
            return Err(Error::ServerAuth(
                "the receipt's signature does not verify".into(),
            ));
        }
        Ok(())
    }

    fn check_receipt(
        &self,
        receipt: &Receipt,
        batch_id: &BatchId,
        complete: &Complete,
    ) -> Result<()> {
        self.check_signed_by_server(receipt)?;
        let ours = *self.manager.identity().public_key().as_bytes();
        if receipt.batch_id != *batch_id
            || receipt.transfer_id != complete.transfer_id
            || receipt.sender != ours
            || receipt.segment_count != complete.segment_count
            || receipt.size != complete.size
            || receipt.chain != complete.chain
            || receipt.content_digest != complete.content_digest
        {
            return Err(Error::ServerAuth(
                "the receipt does not describe the batch sent".into(),
            ));
        }
        Ok(())
    }
}

/// Reads `reader` to its end: its size and SHA-256.
async fn digest_all(mut reader: impl AsyncRead + Unpin) -> Result<(u64, [u8; 32])> {
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().into()))
}

/// Whether `error` is what a [restart](Sender::restart) causes, so it costs no
/// retry: the first retryable failure after one, and any failure of a flow
/// whose connection we closed once a restart was asked for.
fn restart_caused(error: &Error, restarts: &mut Watch) -> bool {
    let closed_by_us = matches!(
        error,
        Error::Flow(e) if matches!(e.reason(), flow::Reason::ClosedLocally(_))
    );
    (error.is_retryable() && restarts.take_restart()) || (closed_by_us && restarts.ever_restarted())
}

async fn open_flow(manager: &Manager, config: &ClientConfig) -> Result<(FlowReader, FlowWriter)> {
    let flow = manager
        .dial(
            &config.endpoint,
            flow::Authorizer::pinned(config.server_key),
            config.dial_timeout,
        )
        .await?;
    Ok(flow.into_split())
}
