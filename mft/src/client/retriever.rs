//! [`Retriever`]: pulling a batch back, and listing what a key may retrieve.

use std::ops::Range;

use bytes::Bytes;
use flow::{FlowReader, FlowWriter, Manager, PeerKey};
use tokio::sync::broadcast;

use super::retry::{exhausted, judge, retrying};
use super::{ClientConfig, Control, Event, Watch, check_batch_id, open_flow};
use crate::error::{Error, Result};
use crate::handshake::{ClientHandshake, PullSecret};
use crate::proto::layout::BatchLayout;
use crate::proto::retry::{Attempts, Verdict};
use crate::session;
use crate::stream::{BatchInfo, BatchReader, SegmentSource};
use crate::wire::{self, BatchId, ByteRange, ChainHash, Codec, Message, TransferId, kind};

/// Pulls batches from one server.
///
/// ```no_run
/// # async fn demo(manager: flow::Manager, config: mft::ClientConfig) -> mft::Result<()> {
/// use tokio::io::AsyncReadExt;
/// let retriever = mft::Retriever::new(manager, config)?;
/// let (mut data, info) = retriever.get(b"report-2026-11").await?;
/// let mut bytes = Vec::new();
/// data.read_to_end(&mut bytes).await?;
/// assert_eq!(bytes.len() as u64, info.size);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Retriever {
    manager: Manager,
    config: ClientConfig,
    events: broadcast::Sender<Event>,
    control: Control,
}

impl Retriever {
    /// A retriever using `manager`'s identity and connections.
    pub fn new(manager: Manager, config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let (events, _) = broadcast::channel(256);
        Ok(Retriever {
            manager,
            config,
            control: Control::new(events.clone()),
            events,
        })
    }

    /// Events of this retriever's pulls: [`Event::Opened`], [`Event::Accepted`],
    /// [`Event::Progress`] (plaintext bytes, segments and sealed bytes received,
    /// each segment verified before the reader sees it), [`Event::Retrying`], [`Event::Paused`],
    /// [`Event::Continued`], and one of [`Event::Completed`] (every byte verified
    /// and handed to the reader), [`Event::Cancelled`] or [`Event::Failed`].
    ///
    /// ```no_run
    /// # async fn demo(retriever: mft::Retriever) -> mft::Result<()> {
    /// let mut events = retriever.subscribe();
    /// tokio::spawn(async move {
    ///     while let Ok(event) = events.recv().await {
    ///         if let mft::Event::Progress { bytes, .. } = event {
    ///             eprintln!("{bytes} bytes in");
    ///         }
    ///     }
    /// });
    /// let (data, info) = retriever.get(b"report-2026-11").await?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Pauses this retriever's pulls: their readers yield what is verified and
    /// buffered already (a few segments), then wait, and no more is read from
    /// the network until [`Retriever::resume`], so the server's sending backs up
    /// under flow control. Applies to every pull through this retriever and its
    /// clones. Returns false if paused already; emits [`Event::Paused`] otherwise.
    ///
    /// The server ends a pull flow idle longer than its flow idle timeout (60 s
    /// by default): a pull paused longer fails when resumed, and what is missing
    /// is fetched with a [range](Pull::range).
    pub fn pause(&self) -> bool {
        self.control.pause()
    }

    /// Ends a [pause](Retriever::pause). Returns false if not paused; emits
    /// [`Event::Continued`] otherwise.
    pub fn resume(&self) -> bool {
        self.control.resume()
    }

    /// Whether this retriever is [paused](Retriever::pause).
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Cancels every pull in progress through this retriever and its clones: a
    /// pull still opening returns [`Error::Cancelled`]; a reader already handed
    /// out ends with an error of kind [`std::io::ErrorKind::Other`] holding
    /// [`Error::Cancelled`], its flow is closed, and the server stops reading and
    /// sending the batch. Emits [`Event::Cancelled`]. Pulls started afterwards
    /// are not affected. (Dropping a reader cancels its pull alone.)
    ///
    /// ```no_run
    /// # async fn demo(retriever: mft::Retriever) -> mft::Result<()> {
    /// use tokio::io::AsyncReadExt;
    /// let (mut data, _) = retriever.get(b"huge.iso").await?;
    /// retriever.cancel();
    /// let mut rest = Vec::new();
    /// let error = data.read_to_end(&mut rest).await.expect_err("cancelled");
    /// assert!(matches!(
    ///     error.get_ref().and_then(|e| e.downcast_ref::<mft::Error>()),
    ///     Some(mft::Error::Cancelled)
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// Restarts this retriever's pulls in progress on a new connection: closes
    /// the manager's connections to the server now, and each pull asks at once
    /// for the rest of its batch, from the next segment on, without waiting or
    /// spending a retry; its reader goes on as if nothing happened. For a path
    /// that changed or stalled under the connection. Emits
    /// [`Event::Reconnecting`]. A pull whose flow is lost on the network does
    /// the same by itself, after the retry policy's wait. Flows of other users
    /// of the same manager to the same server fail too, and retry as after any
    /// lost connection.
    pub fn restart(&self) {
        self.control.restart(&self.manager, &self.config.server_key);
    }

    /// Starts retrieving `batch_id`: its description now, its verified plaintext as
    /// the reader is read (bounded memory, however large the batch). Batch ids are
    /// per sender: the server finds the one sender's batch of that id this key may
    /// retrieve, and refuses with [`RefuseCode::Ambiguous`](crate::wire::RefuseCode)
    /// if there are several (then use [`Retriever::get_from`]).
    pub fn get(
        &self,
        batch_id: &[u8],
    ) -> impl Future<Output = Result<(BatchReader, BatchInfo)>> + Send {
        self.pull(&Pull::batch(batch_id))
    }

    /// Starts retrieving `batch_id` of `owner`'s namespace; see [`Retriever::get`].
    pub fn get_from(
        &self,
        owner: &PeerKey,
        batch_id: &[u8],
    ) -> impl Future<Output = Result<(BatchReader, BatchInfo)>> + Send {
        self.pull(&Pull::batch(batch_id).sender(*owner))
    }

    /// Starts a retrieval described by `request`: a batch, of a named sender or
    /// not, whole or a byte range of it. A range is verified segment by segment
    /// as it is read; only the segments that hold it cross the network, so a
    /// download that was cut off resumes by asking for what it lacks.
    ///
    /// ```no_run
    /// # async fn demo(retriever: mft::Retriever) -> mft::Result<()> {
    /// use tokio::io::AsyncReadExt;
    /// // The second MiB of the batch.
    /// let request = mft::Pull::batch(b"backup.tar").range(1 << 20..2 << 20);
    /// let (mut data, info) = retriever.pull(&request).await?;
    /// let mut bytes = Vec::new();
    /// data.read_to_end(&mut bytes).await?;
    /// assert_eq!(bytes.len() as u64, info.range.end - info.range.start);
    /// # Ok(()) }
    /// ```
    ///
    /// The pull is subject to [`Retriever::pause`] and [`Retriever::cancel`]
    /// from the moment this is called, before its future is first polled.
    pub fn pull<'a>(
        &'a self,
        request: &Pull,
    ) -> impl Future<Output = Result<(BatchReader, BatchInfo)>> + Send + use<'a> {
        let watch = self.control.watch();
        let request = request.clone();
        async move { self.pull_watched(&request, watch).await }
    }

    async fn pull_watched(
        &self,
        request: &Pull,
        mut watch: Watch,
    ) -> Result<(BatchReader, BatchInfo)> {
        let batch_id = &check_batch_id(&request.batch_id)?;
        let range = match &request.range {
            None => None,
            Some(r) => Some(ByteRange::new(r.start, r.end).ok_or_else(|| {
                Error::config("range", format!("{}..{} holds no bytes", r.start, r.end))
            })?),
        };
        let owner = request.sender.map(|k| *k.as_bytes());
        let mut attempts = Attempts::new(self.config.retries);
        let _ = self.events.send(Event::Opened {
            batch_id: batch_id.to_vec(),
        });
        let each_try = watch.clone();
        let opened = tokio::select! {
            opened = retrying(&mut attempts, Some(&self.events), 0, || {
                self.try_get(owner, batch_id, range, each_try.clone())
            }) => opened,
            () = watch.cancelled() => Err(Error::Cancelled),
        };
        if let Err(e) = &opened {
            let _ = self.events.send(match e {
                Error::Cancelled => Event::Cancelled,
                e => Event::Failed {
                    error: e.to_string(),
                },
            });
        }
        opened
    }

    /// Every batch this key may see, with its metadata, in (sender, batch id) order.
    pub async fn list(&self) -> Result<Vec<BatchSummary>> {
        self.list_batches(None).await
    }

    /// The batches of `owner`'s namespace this key may see, in batch-id order.
    pub async fn list_from(&self, owner: &PeerKey) -> Result<Vec<BatchSummary>> {
        self.list_batches(Some(*owner.as_bytes())).await
    }

    async fn list_batches(&self, owner: Option<[u8; 32]>) -> Result<Vec<BatchSummary>> {
        let mut all = Vec::new();
        let mut after: Option<wire::Position> = None;
        let mut attempts = Attempts::new(self.config.retries);
        loop {
            let request = Message::List(wire::List {
                owner,
                after: after.clone(),
                limit: wire::MAX_LISTING_ENTRIES as u32,
                voucher: Bytes::copy_from_slice(&self.config.voucher),
            });
            // Each page is retried as any request is; pages listed count as progress.
            let page = all.len() as u64;
            let listing = retrying(&mut attempts, Some(&self.events), page, || async {
                let (mut reader, mut writer) = open_flow(&self.manager, &self.config).await?;
                session::request(&mut reader, &mut writer, &request, kind::Listing).await
            })
            .await?;
            let Some(last) = listing.entries.last().map(|e| wire::Position {
                owner: e.sender,
                batch_id: e.batch_id.clone(),
            }) else {
                return Ok(all);
            };
            let key = |p: &wire::Position| (p.owner, p.batch_id.to_vec());
            if after.as_ref().is_some_and(|a| key(&last) <= key(a))
                || owner.is_some_and(|o| listing.entries.iter().any(|e| e.sender != o))
            {
                return Err(Error::Protocol(
                    "the listing went backwards or left the namespace asked for".into(),
                ));
            }
            for e in listing.entries {
                all.push(BatchSummary {
                    batch_id: e.batch_id.to_vec(),
                    size: e.size,
                    segment_count: e.segment_count,
                    sender: PeerKey::from_bytes(e.sender)
                        .map_err(|_| Error::Protocol("a listed sender key is invalid".into()))?,
                    completed_unix: e.completed_unix,
                    metadata: e.metadata,
                });
            }
            if !listing.more {
                return Ok(all);
            }
            after = Some(last);
        }
    }

    /// One pull's handshake, from dialing to the checked secret: the secret, the
    /// flow its segments arrive on, and the protocol it runs on.
    async fn open_pull(
        &self,
        owner: Option<[u8; 32]>,
        batch_id: &BatchId,
        range: Option<ByteRange>,
    ) -> Result<(PullSecret, FlowReader, FlowWriter, String)> {
        let identity = self.manager.identity();
        let (handshake, hello) =
            ClientHandshake::pull(identity, owner, batch_id, &self.config.voucher, range)?;
        let (mut reader, mut writer) = open_flow(&self.manager, &self.config).await?;
        let protocol = reader.conn().protocol().to_string();
        let hello = Message::PullHello(hello);
        let accept = session::request(&mut reader, &mut writer, &hello, kind::PullAccept).await?;
        let secret = handshake.finish_pull(&accept, &self.config.server_key)?;
        if owner.is_some_and(|o| o != secret.sender) {
            return Err(Error::Protocol(
                "the server answered with another sender's batch".into(),
            ));
        }
        let layout = BatchLayout::new(secret.chunk_size, secret.compression);
        reader.set_max_msg_size(wire::PULL_SEGMENT_HEADER_LEN + layout.segment_wire() as usize);
        Ok((secret, reader, writer, protocol))
    }

    async fn try_get(
        &self,
        owner: Option<[u8; 32]>,
        batch_id: &BatchId,
        range: Option<ByteRange>,
        watch: Watch,
    ) -> Result<(BatchReader, BatchInfo)> {
        let (secret, reader, writer, protocol) = self.open_pull(owner, batch_id, range).await?;
        let _ = self.events.send(Event::Accepted {
            transfer_id: secret.transfer_id,
            chunk_size: secret.chunk_size,
            protocol,
        });
        let size = range.map_or(secret.size, |r| r.len());
        let events = self.events.clone();
        let ended = Box::new(move |result: &Result<u64>| {
            let _ = events.send(match result {
                Ok(segments) => Event::Completed {
                    size,
                    segments: *segments,
                },
                Err(Error::Cancelled) => Event::Cancelled,
                Err(e) => Event::Failed {
                    error: e.to_string(),
                },
            });
        });
        let source = FlowSource {
            reader,
            _writer: writer,
            restarts: watch.clone(),
            watch,
            retriever: self.clone(),
            owner: Some(secret.sender),
            batch_id: batch_id.clone(),
            end: range.map_or(secret.size, |r| r.end),
            transfer_id: secret.transfer_id,
            chain: secret.chain,
            attempts: Attempts::new(self.config.retries),
            layout: BatchLayout::new(secret.chunk_size, secret.compression),
            count: secret.segment_count,
            size: secret.size,
            next: 0,
            segments: 0,
            sealed: 0,
            bytes: 0,
        };
        crate::stream::open_batch(batch_id, secret, source, range, ended)
    }
}

/// What [`Retriever::pull`] retrieves: a batch, by id, of one sender's namespace
/// or of whichever the server resolves, whole or a byte range of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pull {
    batch_id: Vec<u8>,
    sender: Option<PeerKey>,
    range: Option<Range<u64>>,
}

impl Pull {
    /// The whole batch `batch_id`, resolved by the server among the senders this
    /// key may retrieve from.
    pub fn batch(batch_id: &[u8]) -> Self {
        Pull {
            batch_id: batch_id.to_vec(),
            sender: None,
            range: None,
        }
    }

    /// Only in `sender`'s namespace.
    pub fn sender(mut self, sender: PeerKey) -> Self {
        self.sender = Some(sender);
        self
    }

    /// Only the plaintext bytes of `range` (end exclusive). It must hold at least
    /// one byte and end within the batch: otherwise the pull fails, with
    /// [`Error::Config`] for an empty range and a
    /// [`BadRange`](crate::wire::RefuseCode::BadRange) refusal for one past the end.
    pub fn range(mut self, range: Range<u64>) -> Self {
        self.range = Some(range);
        self
    }
}

/// A batch as [`Retriever::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// The batch id.
    pub batch_id: Vec<u8>,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Number of segments.
    pub segment_count: u64,
    /// Who sent it.
    pub sender: PeerKey,
    /// When it completed, seconds since the Unix epoch.
    pub completed_unix: u64,
    /// The metadata the sender attached.
    pub metadata: Bytes,
}

/// Pull segments arriving on a flow, read while the retriever is not paused. A
/// flow lost on the network (or [restarted](Retriever::restart)) is replaced
/// by a pull of the rest, from the next segment on, of the same batch.
struct FlowSource {
    reader: FlowReader,
    /// Kept so the flow stays open while we read.
    _writer: FlowWriter,
    watch: Watch,
    /// The same asks, watched for restarts.
    restarts: Watch,
    /// What a pull of the rest needs: who asks, for which batch, up to where.
    retriever: Retriever,
    owner: Option<[u8; 32]>,
    batch_id: BatchId,
    /// The plaintext end of what was asked for.
    end: u64,
    /// The batch's transfer and chain: a pull of the rest must find the same.
    transfer_id: TransferId,
    chain: ChainHash,
    attempts: Attempts,
    /// The batch's layout, segment count and size.
    layout: BatchLayout,
    count: u64,
    size: u64,
    /// The index after the last segment received.
    next: u64,
    /// Segments, sealed bytes and plaintext bytes received so far, for progress
    /// events.
    segments: u64,
    sealed: u64,
    bytes: u64,
}

impl FlowSource {
    /// Plaintext bytes received, with segment `index` just in.
    fn bytes_through(&mut self, index: u64) -> u64 {
        self.bytes += self.layout.plaintext_len(index, self.count, self.size);
        self.bytes
    }

    /// Replaces the flow by a pull of the rest; false if nothing is left to
    /// pull (every segment asked for arrived).
    async fn pull_the_rest(&mut self) -> Result<bool> {
        let start = self.next.saturating_mul(self.layout.chunk_size());
        let Some(rest) = ByteRange::new(start, self.end) else {
            return Ok(false);
        };
        let (secret, reader, writer, _) = self
            .retriever
            .open_pull(self.owner, &self.batch_id, Some(rest))
            .await?;
        if secret.transfer_id != self.transfer_id || !secret.chain.matches(&self.chain) {
            return Err(Error::Integrity(
                "the batch was replaced while it was pulled".into(),
            ));
        }
        self.reader = reader;
        self._writer = writer;
        Ok(true)
    }

    /// A pull of the rest in place of the lost flow, retried as the policy
    /// allows; false if nothing is left to pull.
    async fn replace_flow(&mut self) -> Result<bool> {
        loop {
            match self.pull_the_rest().await {
                Ok(pulled) => return Ok(pulled),
                Err(e) => self.recover(e).await?,
            }
        }
    }

    /// Whether to pull the rest after `error`: at once after a restart, after
    /// the retry policy's wait for a network failure; not for anything else.
    async fn recover(&mut self, error: Error) -> Result<()> {
        if !error.is_retryable_after(self.segments) {
            return Err(error);
        }
        // What a restart causes is free: the first failure after it, and any
        // failure of a flow on a connection it closed (a re-pull may still have
        // been handed that connection while it was closing).
        if !super::restart_caused(&error, &mut self.restarts) {
            let events = Some(&self.retriever.events);
            match judge(&mut self.attempts, &error, self.segments, events) {
                Verdict::Retry { delay, .. } => tokio::time::sleep(delay).await,
                Verdict::GiveUp { attempts } => return Err(exhausted(attempts, error)),
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SegmentSource for FlowSource {
    async fn next_segment(&mut self) -> Result<Option<(u64, Bytes)>> {
        loop {
            self.watch.unpaused().await;
            // A cancel wins over a segment that is ready, so it takes effect at
            // once; a restart drops the flow for a new one.
            let read = tokio::select! {
                biased;
                () = self.watch.cancelled() => return Err(Error::Cancelled),
                () = self.restarts.restarted() => None,
                read = self.reader.read_msg() => Some(read.map_err(Error::from)),
            };
            let bytes = match read {
                Some(Ok(Some(bytes))) => bytes,
                Some(Ok(None)) => return Ok(None),
                lost => {
                    // Restarted (a new flow at once), or lost on the network.
                    if let Some(Err(e)) = lost {
                        self.recover(e).await?;
                    }
                    if !self.replace_flow().await? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            return match Message::from_bytes(bytes)? {
                Message::PullSegment(s) => {
                    self.next = s.index.saturating_add(1);
                    self.sealed += s.ciphertext.len() as u64;
                    self.segments += 1;
                    let bytes = self.bytes_through(s.index);
                    let _ = self.retriever.events.send(Event::Progress {
                        bytes,
                        segments: self.segments,
                        sealed: self.sealed,
                    });
                    Ok(Some((s.index, s.ciphertext)))
                }
                Message::Refuse(r) => Err(session::refused(r)),
                other => Err(session::unexpected("PullSegment", &other)),
            };
        }
    }
}
