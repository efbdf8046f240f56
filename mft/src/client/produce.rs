//! Reading, sealing and signing the input, a few segments ahead of the flows.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

use super::segments::Pending;
use super::{Content, Watch};
use crate::compress::{Compress, Shrinker};
use crate::crypto::{self, Chain, Cipher};
use crate::error::{Error, Result};
use crate::handshake::PushSecret;
use crate::wire::{self, ChainHash, Segment, Signature, Tag, TransferId};

/// What the producer made of the input.
pub(super) struct Produced {
    pub(super) content: Content,
    pub(super) chain: ChainHash,
}

/// One chunk's crypto, done on a blocking thread: hash the plaintext (when asked),
/// seal it in place and sign the segment.
pub(super) struct Sealer {
    pub(super) cipher: Cipher,
    pub(super) identity: flow::Identity,
    pub(super) transfer_id: TransferId,
    /// SHA-256 of the plaintext so far.
    pub(super) hasher: Sha256,
    /// Compresses segments before they are sealed, if the transfer settled on it.
    shrinker: Option<Shrinker>,
}

/// One chunk sealed and signed: the ciphertext (tag at its end), the tag, and the
/// sender's signature.
pub(super) struct Sealed {
    ciphertext: BytesMut,
    tag: Tag,
    signature: Signature,
}

impl Sealed {
    /// The segment, queued for the flows.
    fn pending(self, index: u64, plaintext_len: u64) -> Pending {
        Pending {
            index,
            ciphertext: self.ciphertext.freeze(),
            signature: self.signature,
            plaintext_len,
        }
    }
}

impl Sealer {
    /// The sealer of `secret`'s transfer, signing as `identity`, compressing
    /// as `compress` asks if the transfer settled on compression.
    pub(super) fn new(secret: &PushSecret, identity: flow::Identity, compress: Compress) -> Self {
        Sealer {
            cipher: Cipher::new(secret.data_key.expose()),
            identity,
            transfer_id: secret.transfer_id,
            hasher: Sha256::new(),
            shrinker: Shrinker::new(secret.compression, compress),
        }
    }

    pub(super) fn seal(&mut self, index: u64, mut buf: BytesMut) -> Sealed {
        self.hasher.update(&buf);
        if let Some(shrinker) = &mut self.shrinker {
            shrinker.shrink(&mut buf);
        }
        let tag = crypto::seal_segment(&self.cipher, &self.transfer_id, index, &mut buf);
        let signature = Segment::sign_parts(
            &self.identity,
            &self.transfer_id,
            index,
            buf.len() as u32,
            &tag,
        );
        Sealed {
            ciphertext: buf,
            tag,
            signature,
        }
    }

    /// [`Sealer::seal`] on a blocking thread, unless the chunk is small enough
    /// that the hop would cost more; the sealer comes back with the result.
    async fn seal_off_thread(mut self, index: u64, plaintext: BytesMut) -> Result<(Self, Sealed)> {
        if plaintext.len() <= crypto::INLINE_CRYPTO_MAX && self.shrinker.is_none() {
            let sealed = self.seal(index, plaintext);
            return Ok((self, sealed));
        }
        tokio::task::spawn_blocking(move || {
            let sealed = self.seal(index, plaintext);
            (self, sealed)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))
    }

    /// The SHA-256 of the plaintext sealed.
    fn digest(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

/// Segment buffers returned once acknowledged, so the producer reads the next
/// chunks into memory already mapped: no allocation, page fault or zeroing per
/// segment.
#[derive(Default)]
pub(super) struct BufferPool(Mutex<Vec<BytesMut>>);

impl BufferPool {
    /// Buffers kept at most: what the producer and its queue hold at once.
    const MAX: usize = 8;

    pub(super) fn take(&self, capacity: usize) -> BytesMut {
        let reused = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    /// Keeps `data`'s memory if nothing else refers to it any more.
    pub(super) fn give(&self, data: Bytes) {
        if let Ok(buf) = data.try_into_mut() {
            let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < Self::MAX {
                pool.push(buf);
            }
        }
    }
}

/// Where the producer's output goes.
pub(super) struct Outlet {
    /// The sealed segments, in order.
    pub(super) tx: mpsc::Sender<Pending>,
    /// Told once the first chunk is read: whether it is also the last.
    pub(super) first_is_last: oneshot::Sender<bool>,
}

/// Reads one chunk into `buf`: a full one, or less at the end of the input.
pub(super) async fn read_chunk(
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
pub(super) async fn produce(
    mut reader: impl AsyncRead + Unpin + Send,
    mut sealer: Sealer,
    secret: PushSecret,
    batch_id: Vec<u8>,
    out: Outlet,
    pool: Arc<BufferPool>,
    mut control: Watch,
) -> Result<Produced> {
    let Outlet { tx, first_is_last } = out;
    let mut first_is_last = Some(first_is_last);
    let chunk = secret.chunk_size as usize;
    let capacity = chunk + wire::TAG_LEN;
    let mut chain = Chain::new(&secret.transfer_id, &batch_id);
    let (mut index, mut size) = (0u64, 0u64);
    // A paused sender reads nothing more until resumed.
    control.unpaused().await;
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
        // Queue this segment as soon as it is sealed, and read the next chunk
        // meanwhile: a slow input (a pipe) never holds back a sealed segment.
        let queue = async {
            let (returned, sealed) = sealer.seal_off_thread(index, plaintext).await?;
            chain.push(sealed.ciphertext.len() as u32, &sealed.tag);
            let abandoned = tx.send(sealed.pending(index, plaintext_len)).await.is_err();
            Ok::<_, Error>((returned, abandoned))
        };
        let read = async {
            if last {
                Ok(BytesMut::new())
            } else {
                control.unpaused().await;
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
    let content = Content {
        size,
        segments: index,
        sha256: sealer.digest(),
    };
    Ok(Produced {
        content,
        chain: chain.value(),
    })
}
