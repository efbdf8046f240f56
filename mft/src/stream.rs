//! Reading a batch back: segments from any source are checked one by one (position,
//! size, AES-GCM tag) and handed on as plaintext; the chain hash is checked before
//! the reader sees the end, so a truncated or reordered batch ends in an error, never
//! in a clean end of file. Memory stays bounded: a few segments in flight.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use flow::PeerKey;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::compress;
use crate::crypto::{self, Chain, Cipher};
use crate::error::{Error, Result};
use crate::handshake::PullSecret;
use crate::proto::layout::{BatchLayout, Covering};
use crate::wire::{self, ByteRange, ChainHash, Compression, Tag};

/// Plaintext segments buffered between the verifier and the reader.
const BUFFERED_SEGMENTS: usize = 4;

/// Where a batch's segments come from: storage, or a pull flow.
#[async_trait]
pub trait SegmentSource: Send + 'static {
    /// The next `(index, ciphertext)`, or `None` at the end.
    async fn next_segment(&mut self) -> Result<Option<(u64, Bytes)>>;
}

/// What is known about a retrieved batch before its data is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// The batch id.
    pub batch_id: Vec<u8>,
    /// Plaintext size in bytes of the whole batch.
    pub size: u64,
    /// Number of segments in the whole batch.
    pub segment_count: u64,
    /// Who sent it.
    pub sender: PeerKey,
    /// The metadata the sender attached (verified).
    pub metadata: Bytes,
    /// The plaintext bytes the reader yields: `0..size` for the whole batch, or
    /// the range asked for.
    pub range: Range<u64>,
    /// The chain hash over the batch's segments. It names this exact content: a
    /// batch replaced under the same id has another, so a partial download can
    /// tell whether what it holds still belongs to the batch.
    pub chain: ChainHash,
}

/// The plaintext of a batch, verified as it is read.
///
/// An `InvalidData` error means the stored or received data failed verification;
/// the bytes read before it were each authenticated, but the batch as a whole is not
/// — callers writing a file should discard it (write to a temporary name, rename on
/// a clean end).
#[derive(Debug)]
pub struct BatchReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl AsyncRead for BatchReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                buf.put_slice(&self.current[..n]);
                self.current.advance(n);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// How a reader's verification ended: the segments it verified, or why it
/// stopped ([`Error::Cancelled`] if the reader was dropped first).
pub(crate) type Ended = Box<dyn FnOnce(&Result<u64>) + Send>;

/// Checks the metadata now and starts verifying segments from `source` in the
/// background, returning the reader of the plaintext: of the whole batch, or of
/// `range` (which must lie within it). `ended` hears how it ended.
pub(crate) fn open_batch(
    batch_id: &[u8],
    secret: PullSecret,
    source: impl SegmentSource,
    range: Option<ByteRange>,
    ended: Ended,
) -> Result<(BatchReader, BatchInfo)> {
    let cipher = Cipher::new(secret.data_key.expose());
    let metadata = crypto::open(
        &cipher,
        &crypto::METADATA_NONCE,
        &crypto::metadata_aad(&secret.transfer_id),
        &secret.sealed_metadata,
    )
    .map_err(|_| Error::Integrity("the metadata fails authentication".into()))?;
    let sender = PeerKey::from_bytes(secret.sender)
        .map_err(|_| Error::Integrity("the sender key is invalid".into()))?;
    let layout = BatchLayout::new(secret.chunk_size, secret.compression);
    let plan = match range {
        None => Plan::Whole,
        Some(range) => Plan::Part {
            range,
            covering: layout.covering(range, secret.size).ok_or_else(|| {
                Error::Protocol(format!(
                    "the range {}-{} ends past the batch's {} bytes",
                    range.start,
                    range.end - 1,
                    secret.size
                ))
            })?,
        },
    };
    let info = BatchInfo {
        batch_id: batch_id.to_vec(),
        size: secret.size,
        segment_count: secret.segment_count,
        sender,
        metadata: Bytes::from(metadata),
        range: range.map_or(0..secret.size, |r| r.start..r.end),
        chain: secret.chain,
    };
    let (tx, rx) = mpsc::channel(BUFFERED_SEGMENTS);
    let mut chain = Chain::new(&secret.transfer_id, batch_id);
    tokio::spawn(async move {
        let result = match plan {
            Plan::Whole => verify_segments(&secret, &cipher, &mut chain, source, &tx).await,
            Plan::Part { range, covering } => {
                verify_part(&secret, &cipher, range, covering, source, &tx).await
            }
        };
        ended(&result);
        if let Err(e) = result {
            // A cancel is not bad data: callers tell it by its kind.
            let error = match e {
                Error::Cancelled => io::Error::other(e),
                e => io::Error::new(io::ErrorKind::InvalidData, e),
            };
            let _ = tx.send(Err(error)).await;
        }
    });
    Ok((
        BatchReader {
            rx,
            current: Bytes::new(),
        },
        info,
    ))
}

/// What a reader yields.
enum Plan {
    /// Every segment, the chain checked before the end.
    Whole,
    /// The bytes of `range`, from the segments that cover it.
    Part {
        range: ByteRange,
        covering: Covering,
    },
}

/// The next segment from `source`, which must be segment `expected` of the batch,
/// in its place and size: its ciphertext.
async fn next_in_place(
    source: &mut impl SegmentSource,
    layout: &BatchLayout,
    expected: u64,
    count: u64,
    what: &str,
) -> Result<Bytes> {
    let (index, ciphertext) = source.next_segment().await?.ok_or_else(|| {
        Error::Integrity(format!(
            "the {what} ended before segment {expected} of {count}"
        ))
    })?;
    if index != expected {
        return Err(Error::Integrity(format!(
            "segment {index} arrived where segment {expected} belongs"
        )));
    }
    layout
        .check_place(index, ciphertext.len(), count)
        .map_err(|e| Error::Integrity(e.message()))?;
    Ok(ciphertext)
}

async fn verify_segments(
    secret: &PullSecret,
    cipher: &Cipher,
    chain: &mut Chain,
    mut source: impl SegmentSource,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<u64> {
    let layout = BatchLayout::new(secret.chunk_size, secret.compression);
    let mut total = 0u64;
    let mut held: Option<Bytes> = None;
    for expected in 0..secret.segment_count {
        let ciphertext = next_in_place(
            &mut source,
            &layout,
            expected,
            secret.segment_count,
            "batch",
        )
        .await?;
        let last = expected + 1 == secret.segment_count;
        let len = ciphertext.len();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&ciphertext[len - wire::TAG_LEN..]);
        chain.push(len as u32, &Tag(tag));
        let plaintext = open_segment(cipher, secret, &layout, expected, ciphertext).await?;
        total += plaintext.len() as u64;
        if last {
            // Held until the whole batch checks out, so a reader never sees a clean
            // end of a batch that is wrong.
            held = Some(plaintext);
        } else if tx.send(Ok(plaintext)).await.is_err() {
            return Err(Error::Cancelled); // the reader was dropped
        }
    }
    if total != secret.size {
        return Err(Error::Integrity(format!(
            "the batch has {total} bytes, {} expected",
            secret.size
        )));
    }
    if !chain.value().matches(&secret.chain) {
        return Err(Error::Integrity("the chain hash does not match".into()));
    }
    if source.next_segment().await?.is_some() {
        return Err(Error::Integrity("segments after the last one".into()));
    }
    if let Some(last) = held {
        let _ = tx.send(Ok(last)).await;
    }
    Ok(secret.segment_count)
}

/// The bytes of `range`: each covering segment checked for its place and tag, the
/// first and last cut to the range. The chain binds the whole batch, so it cannot
/// be checked here; each segment's tag binds it to its index and transfer, and
/// the count of bytes to the range, so nothing else can pass for the range.
async fn verify_part(
    secret: &PullSecret,
    cipher: &Cipher,
    range: ByteRange,
    covering: Covering,
    mut source: impl SegmentSource,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<u64> {
    let layout = BatchLayout::new(secret.chunk_size, secret.compression);
    let mut skip = covering.skip as usize;
    let mut left = range.len();
    let mut held: Option<Bytes> = None;
    for expected in covering.segments.clone() {
        let ciphertext = next_in_place(
            &mut source,
            &layout,
            expected,
            secret.segment_count,
            "range",
        )
        .await?;
        let mut plaintext = open_segment(cipher, secret, &layout, expected, ciphertext).await?;
        if plaintext.len() < skip {
            return Err(Error::Integrity(format!(
                "segment {expected} is shorter than its place in the batch"
            )));
        }
        plaintext.advance(std::mem::take(&mut skip));
        let take = (plaintext.len() as u64).min(left);
        plaintext.truncate(take as usize);
        left -= take;
        if let Some(before) = held.replace(plaintext)
            && tx.send(Ok(before)).await.is_err()
        {
            return Err(Error::Cancelled); // the reader was dropped
        }
    }
    if left != 0 {
        return Err(Error::Integrity(format!(
            "the segments of the range hold {left} bytes fewer than it"
        )));
    }
    if source.next_segment().await?.is_some() {
        return Err(Error::Integrity("segments after the range".into()));
    }
    if let Some(last) = held {
        let _ = tx.send(Ok(last)).await;
    }
    Ok(covering.segments.end - covering.segments.start)
}

/// The plaintext of segment `index`, authenticated (and, if it is a zstd frame,
/// expanded to exactly its place's length) off the I/O tasks.
async fn open_segment(
    cipher: &Cipher,
    secret: &PullSecret,
    layout: &BatchLayout,
    index: u64,
    ciphertext: Bytes,
) -> Result<Bytes> {
    let cipher = cipher.clone();
    let transfer_id = secret.transfer_id;
    let compression = secret.compression;
    let expected = layout.plaintext_len(index, secret.segment_count, secret.size);
    tokio::task::spawn_blocking(move || {
        let mut buf = ciphertext.to_vec();
        let n = crypto::open_segment(&cipher, &transfer_id, index, &mut buf)
            .map_err(|_| Error::Integrity(format!("segment {index} fails authentication")))?;
        buf.truncate(n);
        if compression == Compression::None {
            // Its length is checked with the batch's: every other segment is a
            // full chunk by its ciphertext's length.
            return Ok(Bytes::from(buf));
        }
        let expected = usize::try_from(expected)
            .map_err(|_| Error::Integrity(format!("segment {index} has no place")))?;
        compress::expand(compression, buf, expected)
            .map(Bytes::from)
            .map_err(|e| Error::Integrity(format!("segment {index} {e}")))
    })
    .await
    .map_err(|e| Error::Io(io::Error::other(e)))?
}
