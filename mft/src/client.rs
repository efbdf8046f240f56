//! The client side: [`Sender`] pushes a batch, [`Retriever`] pulls one back.
//!
//! A send is a handshake flow, then `streams` segment flows working through the
//! chunks of the input in parallel (one segment in flight per flow, each
//! acknowledged once the server stored it durably), then a completion flow. All flows
//! share the one connection the flow manager caches for the server. When flows fail
//! on the network, the sender waits (with backoff, or as long as a busy server asks),
//! asks the server which segments it holds, and sends only the rest, within its retry
//! budget.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flow::{Endpoint, FlowReader, FlowWriter, Manager, PeerKey};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::crypto::{self, Chain, Cipher};
use crate::error::{Error, Result};
use crate::handshake::{ClientHandshake, PushSecret};
use crate::proto::layout::BatchLayout;
use crate::session;
use crate::stream::{BatchInfo, BatchReader, SegmentSource};
use crate::wire::{
    self, BatchId, ChainHash, Codec, Complete, Message, RefuseCode, Resume, Segment, Signature,
    Signed, Stored, Tag, TransferId, kind,
};

pub use crate::wire::Receipt;

/// The default [`ClientConfig::target_rate`]: 1 Gbit/s.
pub const DEFAULT_TARGET_RATE: u64 = 1_000_000_000;

/// The most segments one flow keeps in flight.
pub const MAX_SEGMENTS_IN_FLIGHT: usize = 64;

/// The least data a sender keeps in flight, whatever the path: enough that every
/// flow has its next segments queued while the server stores one, even on loopback.
pub const MIN_BYTES_IN_FLIGHT: u64 = 32 << 20;

/// The most data a sender keeps in flight (and so holds for resending), whatever
/// the path: the sender's memory bound.
pub const MAX_BYTES_IN_FLIGHT: u64 = 256 << 20;

/// How much a send keeps in flight, in segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Segments sent and unacknowledged over all flows together, at most.
    pub total: usize,
    /// Segments one flow keeps sent and unacknowledged, at most.
    pub per_flow: usize,
}

impl InFlight {
    /// What fills a path of `rate` bits per second and round trip `rtt` with
    /// `chunk`-byte segments over `streams` flows: twice the bandwidth-delay product
    /// (so acknowledgements delayed by queues and repaired losses do not idle the
    /// flows), within [`MIN_BYTES_IN_FLIGHT`]`..=`[`MAX_BYTES_IN_FLIGHT`] and never
    /// fewer than one segment per flow; spread over the flows, at least two and at
    /// most [`MAX_SEGMENTS_IN_FLIGHT`] each.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mft::InFlight;
    /// // Loopback: the 32 MiB floor, 32 segments of 1 MiB, 4 per flow over 8 flows.
    /// let lo = InFlight::for_path(1_000_000_000, Duration::from_micros(100), 1 << 20, 8);
    /// assert_eq!(lo, InFlight { total: 32, per_flow: 4 });
    /// // 1 Gbit/s at 300 ms: 75 MB in 1 MiB segments, 36 per flow over 2 flows.
    /// let far = InFlight::for_path(1_000_000_000, Duration::from_millis(300), 1 << 20, 2);
    /// assert_eq!(far, InFlight { total: 72, per_flow: 36 });
    /// // 32 flows of 4 MiB segments stay within 256 MiB: 64 segments, 2 per flow.
    /// let wide = InFlight::for_path(10_000_000_000, Duration::from_secs(1), 4 << 20, 32);
    /// assert_eq!(wide, InFlight { total: 64, per_flow: 2 });
    /// ```
    pub fn for_path(rate: u64, rtt: Duration, chunk: u32, streams: usize) -> Self {
        let chunk = u64::from(chunk.max(1));
        let streams = streams.max(1);
        let bytes = (2.0 * rate as f64 / 8.0 * rtt.as_secs_f64()) as u64;
        let bytes = bytes.clamp(MIN_BYTES_IN_FLIGHT, MAX_BYTES_IN_FLIGHT);
        let total = (bytes.div_ceil(chunk) as usize).max(streams);
        let per_flow = total.div_ceil(streams).clamp(2, MAX_SEGMENTS_IN_FLIGHT);
        InFlight { total, per_flow }
    }
}

/// Client settings, validated before anything is sent.
///
/// ```
/// use flow::{Endpoint, Identity};
/// let server = Identity::generate().public_key();
/// let endpoint: Endpoint = "quic://127.0.0.1:4433".parse().unwrap();
/// let mut config = mft::ClientConfig::new(endpoint, server);
/// config.chunk_size(4 << 20).streams(16);
/// assert!(config.validate().is_ok());
/// assert!(config.clone().streams(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    endpoint: Endpoint,
    server_key: PeerKey,
    chunk_size: u32,
    streams: usize,
    segments_in_flight: Option<usize>,
    target_rate: u64,
    retries: u32,
    dial_timeout: Duration,
    voucher: Vec<u8>,
}

impl ClientConfig {
    /// Talks to the server at `endpoint`, which must prove `server_key`.
    pub fn new(endpoint: Endpoint, server_key: PeerKey) -> Self {
        ClientConfig {
            endpoint,
            server_key,
            chunk_size: 1 << 20,
            streams: 8,
            segments_in_flight: None,
            target_rate: DEFAULT_TARGET_RATE,
            retries: 5,
            dial_timeout: Duration::from_secs(10),
            voucher: Vec::new(),
        }
    }

    /// Plaintext bytes per segment (default 1 MiB); the server may lower it.
    pub fn chunk_size(&mut self, bytes: u32) -> &mut Self {
        self.chunk_size = bytes;
        self
    }

    /// Segment flows in parallel (default 8).
    pub fn streams(&mut self, count: usize) -> &mut Self {
        self.streams = count;
        self
    }

    /// Segments each flow keeps sent but unacknowledged, so no flow idles for a
    /// round trip between segments. By default it is derived when the transfer
    /// opens, from the [target rate](Self::target_rate) and the connection's
    /// measured round-trip time (see [`InFlight::for_path`]), with all flows
    /// together holding at most 32 to 256 MiB; setting it fixes it per flow, and
    /// `streams × segments_in_flight × chunk_size` then bounds the data in flight and
    /// the memory the sender holds for resending.
    pub fn segments_in_flight(&mut self, count: usize) -> &mut Self {
        self.segments_in_flight = Some(count);
        self
    }

    /// The rate, in bits per second, the path is expected to carry at most
    /// (default 1 Gbit/s): a hint for sizing the data in flight, never a limit.
    pub fn target_rate(&mut self, bits_per_second: u64) -> &mut Self {
        self.target_rate = bits_per_second;
        self
    }

    /// Failures to retry before giving up (default 5).
    pub fn retries(&mut self, count: u32) -> &mut Self {
        self.retries = count;
        self
    }

    /// The bound on each dial (default 10 s).
    pub fn dial_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.dial_timeout = timeout;
        self
    }

    /// An application token (a JWT, say) for the server's authoriser.
    pub fn voucher(&mut self, voucher: impl Into<Vec<u8>>) -> &mut Self {
        self.voucher = voucher.into();
        self
    }

    /// Checks every field, reporting the first that is wrong by name.
    pub fn validate(&self) -> Result<()> {
        if !(wire::MIN_CHUNK_SIZE..=wire::MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(Error::config(
                "chunk size",
                format!(
                    "{} is outside {}..={} bytes",
                    self.chunk_size,
                    wire::MIN_CHUNK_SIZE,
                    wire::MAX_CHUNK_SIZE
                ),
            ));
        }
        if !(1..=1024).contains(&self.streams) {
            return Err(Error::config(
                "streams",
                format!("{} is outside 1..=1024", self.streams),
            ));
        }
        if let Some(count) = self.segments_in_flight
            && !(1..=MAX_SEGMENTS_IN_FLIGHT).contains(&count)
        {
            return Err(Error::config(
                "segments in flight",
                format!("{count} is outside 1..={MAX_SEGMENTS_IN_FLIGHT}"),
            ));
        }
        if self.target_rate < 1_000_000 {
            return Err(Error::config("target rate", "at least 1 Mbit/s"));
        }
        if self.voucher.len() > wire::MAX_VOUCHER {
            return Err(Error::config(
                "voucher",
                format!(
                    "{} bytes exceeds the limit of {}",
                    self.voucher.len(),
                    wire::MAX_VOUCHER
                ),
            ));
        }
        if self.retries > 1000 {
            return Err(Error::config("retries", "at most 1000"));
        }
        if self.dial_timeout.is_zero() {
            return Err(Error::config("dial timeout", "must be above zero"));
        }
        Ok(())
    }
}

fn check_batch_id(batch_id: &[u8]) -> Result<BatchId> {
    BatchId::new(batch_id.to_vec()).map_err(|e| Error::config("batch id", e.to_string()))
}

/// What happens during a transfer, for progress displays. Slow subscribers may miss
/// progress events (the channel keeps the newest), never the final one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake started.
    Opened {
        /// The batch id.
        batch_id: Vec<u8>,
    },
    /// The server accepted the transfer.
    Accepted {
        /// The server's transfer id.
        transfer_id: TransferId,
        /// The negotiated chunk size.
        chunk_size: u32,
        /// The protocol the connection runs on (`quic`, `https`, …): with an
        /// `mftq://` endpoint, the one that won.
        protocol: String,
    },
    /// More segments were stored by the server.
    Progress {
        /// Plaintext bytes acknowledged so far.
        bytes: u64,
        /// Segments acknowledged so far.
        segments: u64,
    },
    /// A failure is being retried after `delay`.
    Retrying {
        /// Which retry this is (from 1).
        attempt: u32,
        /// How long the sender waits first.
        delay: Duration,
        /// What failed.
        error: String,
    },
    /// After a failure, the server reported holding these many segments.
    Resumed {
        /// Segments the server already holds.
        stored: u64,
    },
    /// The batch is complete and receipted.
    Completed {
        /// Plaintext size.
        size: u64,
        /// Segments.
        segments: u64,
    },
    /// The transfer failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// What a send learned while streaming its input, for metadata made at the end
/// ([`Sender::send_with`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Content {
    /// Plaintext bytes read and sent.
    pub size: u64,
    /// Segments they made.
    pub segments: u64,
    /// SHA-256 of the plaintext, computed as it was sealed.
    pub sha256: [u8; 32],
}

/// Makes a send's metadata from its [`Content`], once the data has streamed.
type MakeMetadata = Box<dyn FnOnce(&Content) -> Result<Vec<u8>> + Send>;

/// A send's metadata: known up front, or made from the [`Content`] at the end.
enum Metadata {
    Fixed(Vec<u8>),
    Deferred(MakeMetadata),
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
}

/// A sealed segment waiting to be sent (kept until acknowledged, to resend it).
#[derive(Clone)]
struct Pending {
    index: u64,
    ciphertext: Bytes,
    signature: Signature,
    plaintext_len: u64,
}

/// A segment on a flow, waiting for its acknowledgement, with its share of the
/// in-flight budget.
struct Sent {
    pending: Pending,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the segment workers share.
struct Shared {
    manager: Manager,
    config: ClientConfig,
    transfer_id: TransferId,
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// Segments the server held when the transfer (re)opened: not sent again.
    already_stored: Stored,
    /// Segments each flow keeps in flight.
    depth: usize,
    /// Segments all flows together keep in flight: a permit per segment sent and
    /// not yet acknowledged.
    budget: Arc<tokio::sync::Semaphore>,
    /// Where acknowledged segments' memory goes back to the producer.
    pool: Arc<BufferPool>,
    retry: Mutex<VecDeque<Pending>>,
    acked_bytes: AtomicU64,
    acked_segments: AtomicU64,
    progress: Mutex<()>,
    events: broadcast::Sender<Event>,
}

impl Shared {
    async fn next(&self) -> Option<Pending> {
        if let Some(p) = self.lock_retry().pop_front() {
            return Some(p);
        }
        let next = self.queue.lock().await.recv().await;
        // A failed worker may have returned a segment while we waited on the queue.
        next.or_else(|| self.lock_retry().pop_front())
    }

    /// Puts segments sent but not acknowledged back at the front of the retry
    /// queue, oldest first, returning their budget.
    fn requeue(&self, outstanding: &mut VecDeque<Sent>) {
        let mut retry = self.lock_retry();
        while let Some(sent) = outstanding.pop_back() {
            retry.push_front(sent.pending);
        }
    }

    /// The next segment to send, once the in-flight budget has room for it.
    async fn next_within_budget(
        &self,
    ) -> (Option<tokio::sync::OwnedSemaphorePermit>, Option<Pending>) {
        let permit = self.budget.clone().acquire_owned().await.ok();
        (permit, self.next().await)
    }

    fn lock_retry(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.retry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A segment sent and acknowledged: counted, and its memory reused.
    fn delivered(&self, sent: Sent) {
        self.acked(&sent.pending);
        self.pool.give(sent.pending.ciphertext);
    }

    fn acked(&self, pending: &Pending) {
        // One lock around count and event, so progress events are monotonic.
        let _order = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = self
            .acked_bytes
            .fetch_add(pending.plaintext_len, Ordering::Relaxed)
            + pending.plaintext_len;
        let segments = self.acked_segments.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.events.send(Event::Progress { bytes, segments });
    }
}

/// Exponential backoff: 100 ms doubling to at most 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
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
            events,
        })
    }

    /// Events of this sender's transfers.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends everything `reader` yields as batch `batch_id` with `metadata`, and
    /// returns the server's verified receipt.
    pub async fn send(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: &[u8],
    ) -> Result<Receipt> {
        self.report(
            self.send_inner(reader, batch_id, Metadata::Fixed(metadata.to_vec()))
                .await,
        )
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
    pub async fn send_with<F>(
        &self,
        reader: impl AsyncRead + Unpin + Send + 'static,
        batch_id: &[u8],
        metadata: F,
    ) -> Result<Receipt>
    where
        F: FnOnce(&Content) -> Result<Vec<u8>> + Send + 'static,
    {
        self.report(
            self.send_inner(reader, batch_id, Metadata::Deferred(Box::new(metadata)))
                .await,
        )
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
    ) -> Result<Receipt> {
        let batch_id = &check_batch_id(batch_id)?;
        if let Metadata::Fixed(metadata) = &metadata {
            check_metadata(metadata, wire::MAX_METADATA as u32, "protocol")?;
        }
        let _ = self.events.send(Event::Opened {
            batch_id: batch_id.to_vec(),
        });
        let mut attempt = 0;
        let (secret, protocol, rtt) = self
            .retrying(&mut attempt, || self.handshake(batch_id))
            .await?;
        let in_flight = match self.config.segments_in_flight {
            Some(per_flow) => InFlight {
                total: per_flow * self.config.streams,
                per_flow,
            },
            None => InFlight::for_path(
                self.config.target_rate,
                rtt,
                secret.chunk_size,
                self.config.streams,
            ),
        };
        tracing::debug!(?rtt, ?in_flight, "segments in flight");
        if let Metadata::Fixed(metadata) = &metadata {
            check_metadata(metadata, secret.max_metadata, "server's")?;
        }
        let _ = self.events.send(Event::Accepted {
            transfer_id: secret.transfer_id,
            chunk_size: secret.chunk_size,
            protocol,
        });

        // A transfer reopened by a new process (same sender, same batch id) may have
        // segments stored already; ask once, and send only the rest. A new one has
        // none, and the server says so in its accept.
        let already_stored = if secret.new_transfer {
            Stored::default()
        } else {
            self.retrying(&mut attempt, || self.stored(secret.transfer_id))
                .await?
        };
        if already_stored.count() > 0 {
            let _ = self.events.send(Event::Resumed {
                stored: already_stored.count(),
            });
        }
        let pool = Arc::new(BufferPool::default());
        // The producer stays a few sealed segments ahead of the flows.
        let (tx, rx) = mpsc::channel(4);
        let (first_is_last, single) = oneshot::channel();
        let producer = tokio::spawn(produce(
            reader,
            self.manager.identity().clone(),
            secret.clone(),
            batch_id.to_vec(),
            Outlet { tx, first_is_last },
            matches!(metadata, Metadata::Deferred(_)),
            pool.clone(),
        ));
        let shared = Arc::new(Shared {
            manager: self.manager.clone(),
            config: self.config.clone(),
            transfer_id: secret.transfer_id,
            queue: tokio::sync::Mutex::new(rx),
            already_stored,
            depth: in_flight.per_flow,
            budget: Arc::new(tokio::sync::Semaphore::new(in_flight.total)),
            pool,
            retry: Mutex::new(VecDeque::new()),
            acked_bytes: AtomicU64::new(0),
            acked_segments: AtomicU64::new(0),
            progress: Mutex::new(()),
            events: self.events.clone(),
        });
        // A batch of one segment (or none) needs one flow, not `streams` of them:
        // small batches would pay for workers with nothing to send.
        let streams = match single.await {
            Ok(false) => self.config.streams,
            Ok(true) | Err(_) => 1,
        };
        let mut workers = JoinSet::new();
        for _ in 0..streams {
            workers.spawn(send_segments(shared.clone()));
        }
        // One incident (a lost connection fails every worker on it) costs one
        // attempt and one wait; progress since the last incident renews the budget.
        let mut acked_at_incident = 0;
        while let Some(joined) = workers.join_next().await {
            let outcome = joined.map_err(|e| Error::Io(std::io::Error::other(e)))?;
            let Err(error) = outcome else { continue };
            let acked_now = shared.acked_segments.load(Ordering::Relaxed);
            if acked_now > acked_at_incident {
                attempt = 0;
            }
            if !error.is_retryable() || attempt >= self.config.retries {
                workers.abort_all();
                producer.abort();
                return Err(exhausted(attempt, error));
            }
            attempt += 1;
            let delay = retry_delay(&error, attempt);
            let _ = self.events.send(Event::Retrying {
                attempt,
                delay,
                error: error.to_string(),
            });
            tokio::time::sleep(delay).await;
            // The workers that failed in the same incident restart without costing
            // another attempt.
            let mut restart = 1;
            while let Some(joined) = workers.try_join_next() {
                match joined.map_err(|e| Error::Io(std::io::Error::other(e)))? {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() => restart += 1,
                    Err(e) => {
                        workers.abort_all();
                        producer.abort();
                        return Err(e);
                    }
                }
            }
            // Ask what the server holds and drop those from the resend queue: a
            // segment may have been stored with its acknowledgement lost.
            if let Ok(stored) = self.stored(secret.transfer_id).await {
                let _ = self.events.send(Event::Resumed {
                    stored: stored.count(),
                });
                let resent: Vec<Pending> = shared.lock_retry().drain(..).collect();
                for p in resent {
                    if stored.contains(p.index) {
                        shared.acked(&p);
                    } else {
                        shared.lock_retry().push_back(p);
                    }
                }
            }
            acked_at_incident = shared.acked_segments.load(Ordering::Relaxed);
            for _ in 0..restart {
                workers.spawn(send_segments(shared.clone()));
            }
        }
        let produced = producer
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let count = produced.content.segments;
        let acked = shared.acked_segments.load(Ordering::Relaxed);
        if acked != count {
            return Err(Error::Protocol(format!(
                "{acked} of {count} segments acknowledged"
            )));
        }
        let metadata = match metadata {
            Metadata::Fixed(bytes) => bytes,
            Metadata::Deferred(make) => {
                let bytes = make(&produced.content)?;
                check_metadata(&bytes, secret.max_metadata, "server's")?;
                bytes
            }
        };
        let complete = self.completion(
            &secret,
            count,
            produced.content.size,
            produced.chain,
            &metadata,
        )?;
        let receipt = self
            .retrying(&mut attempt, || self.complete(&complete))
            .await?;
        self.check_receipt(&receipt, batch_id, &complete)?;
        Ok(receipt)
    }

    /// Runs `op`, retrying retryable failures within the budget.
    async fn retrying<T, F, Fut>(&self, attempt: &mut u32, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        retry_within(self.config.retries, attempt, Some(&self.events), op).await
    }

    async fn flow(&self) -> Result<(FlowReader, FlowWriter)> {
        open_flow(&self.manager, &self.config).await
    }

    async fn handshake(&self, batch_id: &BatchId) -> Result<(PushSecret, String, Duration)> {
        let (handshake, hello) = ClientHandshake::push(
            self.manager.identity(),
            batch_id,
            self.config.chunk_size,
            &self.config.voucher,
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

    fn completion(
        &self,
        secret: &PushSecret,
        segment_count: u64,
        size: u64,
        chain: ChainHash,
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
            segment_count,
            size,
            completion_id: secret.completion_id,
            chain,
            sealed_metadata: Bytes::from(sealed_metadata),
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

    fn check_receipt(
        &self,
        receipt: &Receipt,
        batch_id: &BatchId,
        complete: &Complete,
    ) -> Result<()> {
        let server = self.config.server_key.as_bytes();
        if receipt.server != *server || !receipt.verify(server) {
            return Err(Error::ServerAuth(
                "the receipt's signature does not verify".into(),
            ));
        }
        let ours = *self.manager.identity().public_key().as_bytes();
        if receipt.batch_id != *batch_id
            || receipt.transfer_id != complete.transfer_id
            || receipt.sender != ours
            || receipt.segment_count != complete.segment_count
            || receipt.size != complete.size
            || receipt.chain != complete.chain
        {
            return Err(Error::ServerAuth(
                "the receipt does not describe the batch sent".into(),
            ));
        }
        Ok(())
    }
}

/// Runs `op`, retrying retryable failures (after the delay the failure asks for, or
/// backoff) while `attempt` is below `retries`; reports each retry to `events`.
async fn retry_within<T, F, Fut>(
    retries: u32,
    attempt: &mut u32,
    events: Option<&broadcast::Sender<Event>>,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && *attempt < retries => {
                *attempt += 1;
                let delay = retry_delay(&e, *attempt);
                if let Some(events) = events {
                    let _ = events.send(Event::Retrying {
                        attempt: *attempt,
                        delay,
                        error: e.to_string(),
                    });
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(exhausted(*attempt, e)),
        }
    }
}

fn retry_delay(error: &Error, attempt: u32) -> Duration {
    match error {
        Error::Refused {
            retry_after: Some(delay),
            ..
        } => *delay,
        Error::Flow(e) => match e.reason() {
            // HTTPS: 503/429 with Retry-After.
            flow::Reason::Busy(delay) => *delay,
            _ => backoff(attempt),
        },
        _ => backoff(attempt),
    }
}

fn exhausted(attempts: u32, error: Error) -> Error {
    if attempts == 0 || !error.is_retryable() {
        error
    } else {
        Error::RetriesExhausted {
            attempts: attempts + 1,
            last: Box::new(error),
        }
    }
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

/// What the producer made of the input.
struct Produced {
    content: Content,
    chain: ChainHash,
}

/// One chunk's crypto, done on a blocking thread: hash the plaintext (when asked),
/// seal it in place and sign the segment.
struct Sealer {
    cipher: Cipher,
    identity: flow::Identity,
    transfer_id: TransferId,
    /// SHA-256 of the plaintext so far.
    hasher: Option<Sha256>,
}

impl Sealer {
    fn seal(&mut self, index: u64, mut buf: BytesMut) -> (BytesMut, Tag, Signature) {
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf);
        }
        let tag = crypto::seal_segment(&self.cipher, &self.transfer_id, index, &mut buf);
        let signature = Segment::sign_parts(
            &self.identity,
            &self.transfer_id,
            index,
            buf.len() as u32,
            &tag,
        );
        (buf, tag, signature)
    }
}

/// Segment buffers returned once acknowledged, so the producer reads the next
/// chunks into memory already mapped: no allocation, page fault or zeroing per
/// segment.
#[derive(Default)]
struct BufferPool(Mutex<Vec<BytesMut>>);

impl BufferPool {
    /// Buffers kept at most: what the producer and its queue hold at once.
    const MAX: usize = 8;

    fn take(&self, capacity: usize) -> BytesMut {
        let reused = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    /// Keeps `data`'s memory if nothing else refers to it any more.
    fn give(&self, data: Bytes) {
        if let Ok(buf) = data.try_into_mut() {
            let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < Self::MAX {
                pool.push(buf);
            }
        }
    }
}

/// Where the producer's output goes.
struct Outlet {
    /// The sealed segments, in order.
    tx: mpsc::Sender<Pending>,
    /// Told once the first chunk is read: whether it is also the last.
    first_is_last: oneshot::Sender<bool>,
}

/// Reads one chunk into `buf`: a full one, or less at the end of the input.
async fn read_chunk(
    reader: &mut (impl AsyncRead + Unpin),
    chunk: usize,
    mut buf: BytesMut,
) -> Result<BytesMut> {
    // Loops over short reads (pipes) until a full chunk or the end of the input.
    while buf.len() < chunk {
        let want = (chunk - buf.len()) as u64;
        if (&mut *reader).take(want).read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf)
}

/// Reads chunks, hashes, seals and signs them off the I/O tasks, and queues them in
/// order; returns the content's size, segment count and digest, and the chain hash.
///
/// The next chunk is read while the previous one is sealed, so reading and crypto
/// overlap, and the input is read exactly once.
async fn produce(
    mut reader: impl AsyncRead + Unpin + Send,
    identity: flow::Identity,
    secret: PushSecret,
    batch_id: Vec<u8>,
    out: Outlet,
    digest: bool,
    pool: Arc<BufferPool>,
) -> Result<Produced> {
    let Outlet { tx, first_is_last } = out;
    let mut first_is_last = Some(first_is_last);
    let chunk = secret.chunk_size as usize;
    let mut chain = Chain::new(&secret.transfer_id, &batch_id);
    let mut sealer = Sealer {
        cipher: Cipher::new(secret.data_key.expose()),
        identity,
        transfer_id: secret.transfer_id,
        hasher: digest.then(Sha256::new),
    };
    let mut index = 0u64;
    let mut size = 0u64;
    let capacity = chunk + wire::TAG_LEN;
    let mut next = read_chunk(&mut reader, chunk, pool.take(capacity)).await?;
    // An empty input makes no segments.
    while !next.is_empty() {
        let plaintext = std::mem::take(&mut next);
        let plaintext_len = plaintext.len() as u64;
        let last = plaintext.len() < chunk;
        if index == 0 {
            // Every worker beyond the first has something to do only if there is
            // a second segment.
            let _ = first_is_last.take().map(|tx| tx.send(last));
        }
        let inline = plaintext.len() <= crypto::INLINE_CRYPTO_MAX;
        let sealing = async move {
            if inline {
                let sealed = sealer.seal(index, plaintext);
                return Ok((sealer, sealed));
            }
            tokio::task::spawn_blocking(move || {
                let sealed = sealer.seal(index, plaintext);
                (sealer, sealed)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))
        };
        // Queue this segment as soon as it is sealed, and read the next chunk
        // meanwhile: a slow input (a pipe) never holds back a sealed segment.
        let queue = async {
            let (returned, (ciphertext, tag, signature)) = sealing.await?;
            chain.push(ciphertext.len() as u32, &tag);
            let pending = Pending {
                index,
                ciphertext: ciphertext.freeze(),
                signature,
                plaintext_len,
            };
            let abandoned = tx.send(pending).await.is_err();
            Ok::<_, Error>((returned, abandoned))
        };
        let read = async {
            if last {
                Ok(BytesMut::new())
            } else {
                read_chunk(&mut reader, chunk, pool.take(capacity)).await
            }
        };
        let (queued, read) = tokio::join!(queue, read);
        let (returned, abandoned) = queued?;
        sealer = returned;
        size += plaintext_len;
        index += 1;
        if abandoned {
            break; // the send was abandoned
        }
        next = read?;
    }
    let sha256 = sealer
        .hasher
        .map(|h| h.finalize().into())
        .unwrap_or([0u8; 32]);
    Ok(Produced {
        content: Content {
            size,
            segments: index,
            sha256,
        },
        chain: chain.value(),
    })
}

/// What a segment flow's acknowledgement reader reports.
type AckResult = Result<u64>;

/// Reads a segment flow's acknowledgements into a channel, so the flow's writer can
/// wait for an acknowledgement or the next segment, whichever comes first, without
/// cancelling a half-read message.
async fn read_acks(mut reader: FlowReader, acks: mpsc::Sender<AckResult>) {
    loop {
        let ack = session::recv(&mut reader, kind::SegmentAck)
            .await
            .map(|ack| ack.index);
        let failed = ack.is_err();
        if acks.send(ack).await.is_err() || failed {
            return;
        }
    }
}

/// One segment flow over its connection: the writer half and the task reading its
/// acknowledgements.
struct SegmentFlow {
    writer: FlowWriter,
    acks: mpsc::Receiver<AckResult>,
    reader_task: tokio::task::JoinHandle<()>,
}

impl SegmentFlow {
    async fn open(shared: &Shared) -> Result<Self> {
        let (reader, writer) = open_flow(&shared.manager, &shared.config).await?;
        let depth = shared.depth;
        let (tx, acks) = mpsc::channel(depth + 1);
        let reader_task = tokio::spawn(read_acks(reader, tx));
        Ok(SegmentFlow {
            writer,
            acks,
            reader_task,
        })
    }

    async fn write(&mut self, transfer_id: &TransferId, pending: &Pending) -> Result<()> {
        let header = Segment::header(transfer_id, pending.index, pending.ciphertext.len() as u32);
        // The ciphertext goes to the transport as it is (no copy over QUIC).
        self.writer
            .write_msg_bytes(&mut [
                Bytes::copy_from_slice(&header),
                pending.ciphertext.clone(),
                Bytes::copy_from_slice(&pending.signature.0),
            ])
            .await?;
        Ok(())
    }

    /// After a failed write: the refusal the server sent before closing, if it sent
    /// one, else `error`. Acknowledgements that arrived first still count.
    async fn refusal_or(
        &mut self,
        error: Error,
        shared: &Shared,
        outstanding: &mut VecDeque<Sent>,
    ) -> Error {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(Ok(index)))
                    if outstanding.front().map(|s| s.pending.index) == Some(index) =>
                {
                    if let Some(sent) = outstanding.pop_front() {
                        shared.delivered(sent);
                    }
                }
                Ok(Some(Err(e @ Error::Refused { .. }))) => return e,
                _ => return error,
            }
        }
    }
}

impl Drop for SegmentFlow {
    fn drop(&mut self) {
        self.reader_task.abort();
    }
}

/// One segment flow: keeps up to `segments_in_flight` queued segments sent and
/// unacknowledged until the queue is empty and every segment is acknowledged. On a
/// failure the segments in hand go back to the retry queue.
async fn send_segments(shared: Arc<Shared>) -> Result<()> {
    let depth = shared.depth;
    let mut flow: Option<SegmentFlow> = None;
    let mut outstanding: VecDeque<Sent> = VecDeque::with_capacity(depth);
    let mut drained = false;
    let result = loop {
        if drained && outstanding.is_empty() {
            break Ok(());
        }
        let room = !drained && outstanding.len() < depth;
        // Waiting for an acknowledgement needs a flow with segments on it.
        let acks = flow.as_mut().filter(|_| !outstanding.is_empty());
        let step = match acks {
            Some(f) => tokio::select! {
                biased;
                ack = f.acks.recv() => Step::Ack(ack),
                (permit, next) = shared.next_within_budget(), if room => Step::Next(permit, next),
            },
            None => {
                let (permit, next) = shared.next_within_budget().await;
                Step::Next(permit, next)
            }
        };
        match step {
            Step::Next(_, None) => drained = true,
            Step::Next(permit, Some(pending)) => {
                if shared.already_stored.contains(pending.index) {
                    shared.acked(&pending);
                    continue;
                }
                let sent = Sent {
                    pending,
                    _permit: permit,
                };
                if flow.is_none() {
                    match SegmentFlow::open(&shared).await {
                        Ok(f) => flow = Some(f),
                        Err(e) => {
                            outstanding.push_back(sent);
                            break Err(e);
                        }
                    }
                }
                let Some(f) = flow.as_mut() else { continue };
                let written = f.write(&shared.transfer_id, &sent.pending).await;
                outstanding.push_back(sent);
                if let Err(e) = written {
                    let e = f.refusal_or(e, &shared, &mut outstanding).await;
                    if e.refuse_code() != Some(RefuseCode::DuplicateSegment) {
                        break Err(e);
                    }
                    skip_duplicate(&shared, &mut outstanding);
                    flow = None;
                }
            }
            Step::Ack(Some(Ok(index))) => match outstanding.front() {
                Some(front) if front.pending.index == index => {
                    if let Some(sent) = outstanding.pop_front() {
                        shared.delivered(sent);
                    }
                }
                _ => {
                    break Err(Error::Protocol(format!(
                        "acknowledgement of segment {index}, which is not the next one sent"
                    )));
                }
            },
            Step::Ack(Some(Err(e))) if e.refuse_code() == Some(RefuseCode::DuplicateSegment) => {
                skip_duplicate(&shared, &mut outstanding);
                flow = None;
            }
            Step::Ack(Some(Err(e))) => break Err(e),
            Step::Ack(None) => {
                break Err(Error::Protocol("the acknowledgement reader stopped".into()));
            }
        }
    };
    if result.is_err() {
        shared.requeue(&mut outstanding);
    }
    result
}

/// The server refused the oldest segment on a flow as stored already: an earlier
/// attempt stored it (its acknowledgement was lost, or that attempt's connection
/// was still being served when this one asked what is stored). It counts as
/// delivered; the server closed the flow, so what was sent after it goes out
/// again on a new one.
fn skip_duplicate(shared: &Shared, outstanding: &mut VecDeque<Sent>) {
    if let Some(sent) = outstanding.pop_front() {
        shared.delivered(sent);
    }
    shared.requeue(outstanding);
}

/// What a segment flow does next.
enum Step {
    Ack(Option<AckResult>),
    Next(Option<tokio::sync::OwnedSemaphorePermit>, Option<Pending>),
}

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
}

impl Retriever {
    /// A retriever using `manager`'s identity and connections.
    pub fn new(manager: Manager, config: ClientConfig) -> Result<Self> {
        config.validate()?;
        Ok(Retriever { manager, config })
    }

    /// Starts retrieving `batch_id`: its description now, its verified plaintext as
    /// the reader is read (bounded memory, however large the batch).
    pub async fn get(&self, batch_id: &[u8]) -> Result<(BatchReader, BatchInfo)> {
        let batch_id = &check_batch_id(batch_id)?;
        let mut attempt = 0;
        retry_within(self.config.retries, &mut attempt, None, || {
            self.try_get(batch_id)
        })
        .await
    }

    /// Every batch this key may retrieve, with its metadata, in batch-id order.
    pub async fn list(&self) -> Result<Vec<BatchSummary>> {
        let mut all = Vec::new();
        let mut after = Bytes::new();
        loop {
            let (mut reader, mut writer) = open_flow(&self.manager, &self.config).await?;
            let request = Message::List(wire::List {
                after: after.clone(),
                limit: wire::MAX_LISTING_ENTRIES as u32,
                voucher: Bytes::copy_from_slice(&self.config.voucher),
            });
            let listing =
                session::request(&mut reader, &mut writer, &request, kind::Listing).await?;
            let Some(last) = listing
                .entries
                .last()
                .map(|e| e.batch_id.as_bytes().clone())
            else {
                return Ok(all);
            };
            if last <= after {
                return Err(Error::Protocol("the listing went backwards".into()));
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
            after = last;
        }
    }

    async fn try_get(&self, batch_id: &BatchId) -> Result<(BatchReader, BatchInfo)> {
        let (handshake, hello) =
            ClientHandshake::pull(self.manager.identity(), batch_id, &self.config.voucher)?;
        let (mut reader, mut writer) = open_flow(&self.manager, &self.config).await?;
        let hello = Message::PullHello(hello);
        let accept = session::request(&mut reader, &mut writer, &hello, kind::PullAccept).await?;
        let secret = handshake.finish_pull(&accept, &self.config.server_key)?;
        let layout = BatchLayout::new(secret.chunk_size);
        reader.set_max_msg_size(wire::PULL_SEGMENT_HEADER_LEN + layout.segment_wire() as usize);
        crate::stream::open_batch(
            batch_id,
            secret,
            FlowSource {
                reader,
                _writer: writer,
            },
        )
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

/// Pull segments arriving on a flow.
struct FlowSource {
    reader: FlowReader,
    /// Kept so the flow stays open while we read.
    _writer: FlowWriter,
}

#[async_trait::async_trait]
impl SegmentSource for FlowSource {
    async fn next_segment(&mut self) -> Result<Option<(u64, Bytes)>> {
        match self.reader.read_msg().await? {
            None => Ok(None),
            Some(bytes) => match Message::from_bytes(bytes)? {
                Message::PullSegment(s) => Ok(Some((s.index, s.ciphertext))),
                Message::Refuse(r) => Err(session::refused(r)),
                other => Err(session::unexpected("PullSegment", &other)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_as_long_as_the_server_asks() {
        let busy_https = Error::Flow(flow::Error::new(flow::Reason::Busy(Duration::from_secs(3))));
        assert!(busy_https.is_retryable());
        assert_eq!(retry_delay(&busy_https, 1), Duration::from_secs(3));
        let busy_mft = Error::Refused {
            code: RefuseCode::Busy,
            message: String::new(),
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(retry_delay(&busy_mft, 4), Duration::from_millis(1500));
        let lost = Error::Flow(flow::Error::new(flow::Reason::ConnectionLost("x".into())));
        assert_eq!(retry_delay(&lost, 1), Duration::from_millis(200));
        assert_eq!(retry_delay(&lost, 10), Duration::from_secs(5));
        let refused = Error::Refused {
            code: RefuseCode::NotAuthorized,
            message: String::new(),
            retry_after: None,
        };
        assert!(!refused.is_retryable());
    }

    #[test]
    fn config_names_the_bad_field() {
        let endpoint: Endpoint = "quic://127.0.0.1:1".parse().unwrap();
        let key = flow::Identity::generate().public_key();
        let field = |f: &dyn Fn(&mut ClientConfig)| {
            let mut c = ClientConfig::new(endpoint.clone(), key);
            f(&mut c);
            match c.validate() {
                Err(Error::Config { field, .. }) => field,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            field(&|c| {
                c.chunk_size(100);
            }),
            "chunk size"
        );
        assert_eq!(
            field(&|c| {
                c.chunk_size(64 << 20);
            }),
            "chunk size"
        );
        assert_eq!(
            field(&|c| {
                c.streams(0);
            }),
            "streams"
        );
        assert_eq!(
            field(&|c| {
                c.voucher(vec![0; 9000]);
            }),
            "voucher"
        );
        assert_eq!(
            field(&|c| {
                c.dial_timeout(Duration::ZERO);
            }),
            "dial timeout"
        );
        assert!(matches!(
            check_batch_id(b""),
            Err(Error::Config {
                field: "batch id",
                ..
            })
        ));
        assert!(matches!(
            check_batch_id(&[0; 257]),
            Err(Error::Config {
                field: "batch id",
                ..
            })
        ));
        assert!(
            check_batch_id(b"../../etc/passwd").is_ok(),
            "batch ids are opaque bytes"
        );
    }
}
