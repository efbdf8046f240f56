//! The transfer protocol's messages and their explicit binary encoding.
//!
//! Sans-IO: nothing here touches a socket. Each message is one flow message (see the
//! flow layer's framing): a 1-byte type, then fixed-order fields. Integers are
//! big-endian; byte strings carry a u16 or u32 length prefix and have an upper bound
//! that is checked before anything is allocated; trailing bytes are an error.
//! `docs/PROTOCOL.md` §7 is the normative description and names the types as here.

use std::fmt;

use bytes::Bytes;

/// The protocol version this code speaks; others are refused, never downgraded.
/// Version 2 added the new-transfer flag to the push secret (`docs/PROTOCOL.md`).
pub const VERSION: u8 = 2;

/// Longest batch id, in bytes.
pub const MAX_BATCH_ID: usize = 256;
/// Longest voucher (application token), in bytes.
pub const MAX_VOUCHER: usize = 8 << 10;
/// Smallest chunk size a peer may propose.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size the protocol allows.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest segment ciphertext on the wire (a full chunk plus its tag).
pub const MAX_SEGMENT_WIRE: usize = MAX_CHUNK_SIZE as usize + TAG_LEN;
/// Largest metadata the protocol allows (servers set lower limits).
pub const MAX_METADATA: usize = 1 << 20;
/// Longest refusal message, in bytes.
pub const MAX_REFUSE_MESSAGE: usize = 1024;
/// Most entries in one [`Listing`].
pub const MAX_LISTING_ENTRIES: usize = 1024;
/// Most runs in a [`Stored`] message.
pub const MAX_STORED_RUNS: usize = 1 << 16;
/// Longest sealed handshake secret (a pull's carries the sealed metadata).
pub const MAX_SEALED_SECRET: usize = MAX_METADATA + 1024;

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended before a field.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// A length field exceeds its bound.
    #[error("{field} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes remained after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The type byte names no message.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// A message of another type was expected here.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expects at this point.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A version this code does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A field's value is out of range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads fields from a message, never past its end.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated(field));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u16-length-prefixed byte string of at most `max` bytes.
    fn bytes16(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    fn bytes32(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends fields to a message.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    fn with_type(ty: u8) -> Self {
        Writer(vec![ty])
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// Writes a u16 length and the bytes; callers keep within the decode bounds,
    /// which are all far below u16::MAX for these fields.
    fn bytes16(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(len).put(&b[..usize::from(len)])
    }

    fn bytes32(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len).put(&b[..len as usize])
    }

    fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Message type bytes.
mod ty {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const ACCEPT: u8 = 0x02;
    pub(super) const SEGMENT: u8 = 0x10;
    pub(super) const SEGMENT_ACK: u8 = 0x11;
    pub(super) const COMPLETE: u8 = 0x20;
    pub(super) const RECEIPT: u8 = 0x21;
    pub(super) const RESUME: u8 = 0x30;
    pub(super) const STORED: u8 = 0x31;
    pub(super) const PULL_HELLO: u8 = 0x40;
    pub(super) const PULL_ACCEPT: u8 = 0x41;
    pub(super) const PULL_SEGMENT: u8 = 0x42;
    pub(super) const LIST: u8 = 0x50;
    pub(super) const LISTING: u8 = 0x51;
    pub(super) const REFUSE: u8 = 0x7f;
}

/// Opens a push transfer: client → server, first message of the handshake flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The batch this transfer will become (opaque bytes, 1..=256).
    pub batch_id: Bytes,
    /// The client's one-time X25519 public key.
    pub client_ephemeral: [u8; 32],
    /// The sender's Ed25519 public key; must equal the flow's TLS peer key.
    pub sender: [u8; 32],
    /// The chunk size the client prefers.
    pub chunk_size: u32,
    /// An optional application token (a JWT, say), handed to the authoriser.
    pub voucher: Bytes,
    /// Ed25519 by `sender` over [`Hello::signed_bytes`].
    pub signature: [u8; 64],
}

impl Hello {
    /// Everything the signature covers: the encoding without the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_type(ty::HELLO);
        w.put(&[VERSION])
            .bytes16(&self.batch_id)
            .put(&self.client_ephemeral)
            .put(&self.sender)
            .u32(self.chunk_size)
            .bytes16(&self.voucher);
        w.into_vec()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let batch_id = r.bytes16("batch id", MAX_BATCH_ID)?;
        if batch_id.is_empty() {
            return Err(DecodeError::Invalid("batch id (empty)"));
        }
        Ok(Hello {
            batch_id,
            client_ephemeral: r.array("client ephemeral key")?,
            sender: r.array("sender key")?,
            chunk_size: r.u32("chunk size")?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
            signature: r.array("signature")?,
        })
    }
}

/// The server's answer to a [`Hello`] or [`PullHello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The server's one-time X25519 public key.
    pub server_ephemeral: [u8; 32],
    /// The server's Ed25519 public key.
    pub server: [u8; 32],
    /// The handshake secret, AES-256-GCM under the handshake key.
    pub sealed: Bytes,
    /// Ed25519 by `server` over the transcript (see `docs/PROTOCOL.md`).
    pub signature: [u8; 64],
}

impl Accept {
    /// The encoding without the signature (part of what the signature covers).
    pub fn signed_bytes(&self, ty: u8) -> Vec<u8> {
        let mut w = Writer::with_type(ty);
        w.put(&self.server_ephemeral)
            .put(&self.server)
            .bytes32(&self.sealed);
        w.into_vec()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Accept {
            server_ephemeral: r.array("server ephemeral key")?,
            server: r.array("server key")?,
            sealed: r.bytes32("sealed secret", MAX_SEALED_SECRET)?,
            signature: r.array("signature")?,
        })
    }
}

/// One encrypted chunk of the batch: client → server on a segment flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The transfer it belongs to.
    pub transfer_id: [u8; 16],
    /// Its position, from 0.
    pub index: u64,
    /// AES-256-GCM ciphertext with the 16-byte tag at the end.
    pub ciphertext: Bytes,
    /// Ed25519 by the sender over the segment header and tag.
    pub signature: [u8; 64],
}

/// Bytes before the ciphertext in an encoded [`Segment`].
pub const SEGMENT_HEADER_LEN: usize = 1 + 16 + 8 + 4;

impl Segment {
    /// The header that precedes the ciphertext on the wire; write it, the ciphertext
    /// and the signature as three parts of one flow message to avoid a copy.
    pub fn header(
        transfer_id: &[u8; 16],
        index: u64,
        ciphertext_len: u32,
    ) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0] = ty::SEGMENT;
        h[1..17].copy_from_slice(transfer_id);
        h[17..25].copy_from_slice(&index.to_be_bytes());
        h[25..29].copy_from_slice(&ciphertext_len.to_be_bytes());
        h
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let transfer_id = r.array("transfer id")?;
        let index = r.u64("index")?;
        let ciphertext = r.bytes32("segment", MAX_SEGMENT_WIRE)?;
        if ciphertext.len() < TAG_LEN {
            return Err(DecodeError::Invalid("segment shorter than its tag"));
        }
        Ok(Segment {
            transfer_id,
            index,
            ciphertext,
            signature: r.array("signature")?,
        })
    }

    /// The AES-GCM tag at the end of the ciphertext.
    pub fn tag(&self) -> [u8; 16] {
        let mut tag = [0u8; 16];
        let ct = &self.ciphertext;
        if ct.len() >= TAG_LEN {
            tag.copy_from_slice(&ct[ct.len() - TAG_LEN..]);
        }
        tag
    }
}

/// The server stored a segment durably: server → client on the segment's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentAck {
    /// The index stored.
    pub index: u64,
}

/// Ends a push transfer: client → server on the completion flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complete {
    /// The transfer.
    pub transfer_id: [u8; 16],
    /// How many segments the batch has.
    pub segment_count: u64,
    /// The plaintext size in bytes.
    pub size: u64,
    /// The secret completion id from the handshake.
    pub completion_id: [u8; 32],
    /// The chain hash over every segment in order.
    pub chain: [u8; 64],
    /// The metadata, AES-256-GCM under the data key.
    pub sealed_metadata: Bytes,
    /// Ed25519 by the sender over [`Complete::signed_bytes`].
    pub signature: [u8; 64],
}

impl Complete {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_type(ty::COMPLETE);
        w.put(&self.transfer_id)
            .u64(self.segment_count)
            .u64(self.size)
            .put(&self.completion_id)
            .put(&self.chain)
            .bytes32(&self.sealed_metadata);
        w.into_vec()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Complete {
            transfer_id: r.array("transfer id")?,
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            completion_id: r.array("completion id")?,
            chain: r.array("chain hash")?,
            sealed_metadata: r.bytes32("metadata", MAX_METADATA + TAG_LEN)?,
            signature: r.array("signature")?,
        })
    }
}

/// The server's signed statement that it holds a batch: server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The batch id.
    pub batch_id: Bytes,
    /// The transfer that delivered it.
    pub transfer_id: [u8; 16],
    /// The sender's key.
    pub sender: [u8; 32],
    /// Segments stored.
    pub segment_count: u64,
    /// Plaintext size in bytes.
    pub size: u64,
    /// The verified chain hash.
    pub chain: [u8; 64],
    /// When the server completed it, seconds since the Unix epoch.
    pub completed_unix: u64,
    /// The server's key.
    pub server: [u8; 32],
    /// Ed25519 by `server` over [`Receipt::signed_bytes`].
    pub signature: [u8; 64],
}

impl Receipt {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_type(ty::RECEIPT);
        w.bytes16(&self.batch_id)
            .put(&self.transfer_id)
            .put(&self.sender)
            .u64(self.segment_count)
            .u64(self.size)
            .put(&self.chain)
            .u64(self.completed_unix)
            .put(&self.server);
        w.into_vec()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Receipt {
            batch_id: r.bytes16("batch id", MAX_BATCH_ID)?,
            transfer_id: r.array("transfer id")?,
            sender: r.array("sender key")?,
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            chain: r.array("chain hash")?,
            completed_unix: r.u64("completion time")?,
            server: r.array("server key")?,
            signature: r.array("signature")?,
        })
    }
}

/// Asks which segments of an open transfer the server holds: client → server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The transfer, from an earlier [`Accept`].
    pub transfer_id: [u8; 16],
}

/// The segments the server holds, as runs of consecutive indices: server → client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// `(first index, count)` runs, ascending and not overlapping.
    pub runs: Vec<(u64, u64)>,
}

impl Stored {
    /// Runs from ascending indices.
    pub fn from_indices(indices: impl IntoIterator<Item = u64>) -> Self {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in indices {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => runs.push((i, 1)),
            }
        }
        Stored { runs }
    }

    /// Whether `index` is in a run.
    pub fn contains(&self, index: u64) -> bool {
        self.runs
            .iter()
            .any(|&(first, count)| index >= first && index - first < count)
    }

    /// How many indices the runs cover.
    pub fn count(&self) -> u64 {
        self.runs.iter().map(|&(_, c)| c).sum()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("run count")? as usize;
        if n > MAX_STORED_RUNS {
            return Err(DecodeError::TooLong {
                field: "stored runs",
                len: n,
                max: MAX_STORED_RUNS,
            });
        }
        let mut runs = Vec::with_capacity(n);
        let mut next = 0u64;
        for _ in 0..n {
            let first = r.u64("run start")?;
            let count = r.u64("run length")?;
            if count == 0 || first < next {
                return Err(DecodeError::Invalid("stored runs (empty or not ascending)"));
            }
            next = first
                .checked_add(count)
                .ok_or(DecodeError::Invalid("stored runs (overflow)"))?;
            runs.push((first, count));
        }
        Ok(Stored { runs })
    }
}

/// Opens a retrieval: client → server, first message of a pull flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullHello {
    /// The batch wanted.
    pub batch_id: Bytes,
    /// The retriever's one-time X25519 public key.
    pub client_ephemeral: [u8; 32],
    /// The retriever's Ed25519 key; must equal the flow's TLS peer key.
    pub retriever: [u8; 32],
    /// An optional application token, handed to the authoriser.
    pub voucher: Bytes,
    /// Ed25519 by `retriever` over [`PullHello::signed_bytes`].
    pub signature: [u8; 64],
}

impl PullHello {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_type(ty::PULL_HELLO);
        w.put(&[VERSION])
            .bytes16(&self.batch_id)
            .put(&self.client_ephemeral)
            .put(&self.retriever)
            .bytes16(&self.voucher);
        w.into_vec()
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        Ok(PullHello {
            batch_id: r.bytes16("batch id", MAX_BATCH_ID)?,
            client_ephemeral: r.array("client ephemeral key")?,
            retriever: r.array("retriever key")?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
            signature: r.array("signature")?,
        })
    }
}

/// One stored segment streamed back to a retriever, in index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSegment {
    /// Its index.
    pub index: u64,
    /// The ciphertext as stored, tag at the end.
    pub ciphertext: Bytes,
}

impl PullSegment {
    /// The header before the ciphertext: type, index, length.
    pub fn header(index: u64, ciphertext_len: u32) -> [u8; 13] {
        let mut h = [0u8; 13];
        h[0] = ty::PULL_SEGMENT;
        h[1..9].copy_from_slice(&index.to_be_bytes());
        h[9..13].copy_from_slice(&ciphertext_len.to_be_bytes());
        h
    }
}

/// Asks which batches the requester may retrieve, a page at a time: client → server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    /// Only batch ids after this one (byte order); empty for the first page.
    pub after: Bytes,
    /// The most entries wanted (the server may send fewer).
    pub limit: u32,
    /// An optional application token, handed to the authoriser.
    pub voucher: Bytes,
}

/// One batch in a [`Listing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingEntry {
    /// The batch id.
    pub batch_id: Bytes,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Number of segments.
    pub segment_count: u64,
    /// The sender's key.
    pub sender: [u8; 32],
    /// When it completed, seconds since the Unix epoch.
    pub completed_unix: u64,
    /// The metadata the sender attached (decrypted by the server for the requester).
    pub metadata: Bytes,
}

/// A page of batches: server → client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The batches, in batch-id order.
    pub entries: Vec<ListingEntry>,
    /// Whether more batches follow (ask again with `after` = the last id).
    pub more: bool,
}

impl Listing {
    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("entry count")? as usize;
        if n > MAX_LISTING_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "listing",
                len: n,
                max: MAX_LISTING_ENTRIES,
            });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(ListingEntry {
                batch_id: r.bytes16("batch id", MAX_BATCH_ID)?,
                size: r.u64("size")?,
                segment_count: r.u64("segment count")?,
                sender: r.array("sender key")?,
                completed_unix: r.u64("completion time")?,
                metadata: r.bytes32("metadata", MAX_METADATA)?,
            });
        }
        let more = match r.u8("more")? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Invalid("more flag")),
        };
        Ok(Listing { entries, more })
    }
}

/// Refusal codes: what the peer did wrong, or why the server cannot serve now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseCode {
    /// A message did not decode or came out of order.
    BadMessage,
    /// The protocol version is not spoken here.
    UnsupportedVersion,
    /// The key (or voucher) is not authorised for this.
    NotAuthorized,
    /// The key in the message is not the connection's TLS identity.
    IdentityMismatch,
    /// A signature did not verify.
    BadSignature,
    /// A per-peer or server limit was reached; retry later.
    Busy,
    /// A segment exceeds the negotiated size.
    SegmentTooLarge,
    /// The metadata exceeds the server's limit.
    MetadataTooLarge,
    /// No open transfer has that id (or it expired).
    UnknownTransfer,
    /// That segment index is already stored.
    DuplicateSegment,
    /// A segment failed authentication (tampered, replayed, or misplaced).
    BadSegment,
    /// The completion id is wrong.
    WrongCompletionId,
    /// The segment count or size does not match what is stored.
    WrongSegmentCount,
    /// The chain hash does not match the stored segments.
    ChainMismatch,
    /// A batch with that id exists already.
    BatchExists,
    /// No such batch (or not visible to this key).
    NotFound,
    /// The server failed internally (storage); the transfer may be retried.
    Internal,
}

impl RefuseCode {
    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        use RefuseCode::*;
        match self {
            BadMessage => 1,
            UnsupportedVersion => 2,
            NotAuthorized => 3,
            IdentityMismatch => 4,
            BadSignature => 5,
            Busy => 6,
            SegmentTooLarge => 7,
            MetadataTooLarge => 8,
            UnknownTransfer => 9,
            DuplicateSegment => 10,
            BadSegment => 11,
            WrongCompletionId => 12,
            WrongSegmentCount => 13,
            ChainMismatch => 14,
            BatchExists => 15,
            NotFound => 16,
            Internal => 17,
        }
    }

    /// The code for a number; unknown numbers are [`RefuseCode::BadMessage`]'s
    /// business only if the caller says so, hence `None`.
    pub fn from_u16(n: u16) -> Option<Self> {
        use RefuseCode::*;
        Some(match n {
            1 => BadMessage,
            2 => UnsupportedVersion,
            3 => NotAuthorized,
            4 => IdentityMismatch,
            5 => BadSignature,
            6 => Busy,
            7 => SegmentTooLarge,
            8 => MetadataTooLarge,
            9 => UnknownTransfer,
            10 => DuplicateSegment,
            11 => BadSegment,
            12 => WrongCompletionId,
            13 => WrongSegmentCount,
            14 => ChainMismatch,
            15 => BatchExists,
            16 => NotFound,
            17 => Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A refusal, with an optional delay after which a retry may succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    /// What went wrong.
    pub code: RefuseCode,
    /// Milliseconds to wait before retrying (0: do not retry).
    pub retry_after_ms: u32,
    /// Text for people (UTF-8, at most 1024 bytes).
    pub message: String,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Accept`] (answering a [`Hello`]).
    Accept(Accept),
    /// See [`Segment`].
    Segment(Segment),
    /// See [`SegmentAck`].
    SegmentAck(SegmentAck),
    /// See [`Complete`].
    Complete(Complete),
    /// See [`Receipt`].
    Receipt(Receipt),
    /// See [`Resume`].
    Resume(Resume),
    /// See [`Stored`].
    Stored(Stored),
    /// See [`PullHello`].
    PullHello(PullHello),
    /// See [`Accept`] (answering a [`PullHello`]).
    PullAccept(Accept),
    /// See [`PullSegment`].
    PullSegment(PullSegment),
    /// See [`List`].
    List(List),
    /// See [`Listing`].
    Listing(Listing),
    /// See [`Refuse`].
    Refuse(Refuse),
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Accept(_) => "Accept",
            Message::Segment(_) => "Segment",
            Message::SegmentAck(_) => "SegmentAck",
            Message::Complete(_) => "Complete",
            Message::Receipt(_) => "Receipt",
            Message::Resume(_) => "Resume",
            Message::Stored(_) => "Stored",
            Message::PullHello(_) => "PullHello",
            Message::PullAccept(_) => "PullAccept",
            Message::PullSegment(_) => "PullSegment",
            Message::List(_) => "List",
            Message::Listing(_) => "Listing",
            Message::Refuse(_) => "Refuse",
        }
    }

    /// Decodes one whole message; trailing bytes are an error.
    pub fn decode(bytes: Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let message = match r.u8("message type")? {
            ty::HELLO => Message::Hello(Hello::decode(&mut r)?),
            ty::ACCEPT => Message::Accept(Accept::decode(&mut r)?),
            ty::SEGMENT => Message::Segment(Segment::decode(&mut r)?),
            ty::SEGMENT_ACK => Message::SegmentAck(SegmentAck {
                index: r.u64("index")?,
            }),
            ty::COMPLETE => Message::Complete(Complete::decode(&mut r)?),
            ty::RECEIPT => Message::Receipt(Receipt::decode(&mut r)?),
            ty::RESUME => Message::Resume(Resume {
                transfer_id: r.array("transfer id")?,
            }),
            ty::STORED => Message::Stored(Stored::decode(&mut r)?),
            ty::PULL_HELLO => Message::PullHello(PullHello::decode(&mut r)?),
            ty::PULL_ACCEPT => Message::PullAccept(Accept::decode(&mut r)?),
            ty::PULL_SEGMENT => {
                let index = r.u64("index")?;
                let ciphertext = r.bytes32("segment", MAX_SEGMENT_WIRE)?;
                if ciphertext.len() < TAG_LEN {
                    return Err(DecodeError::Invalid("segment shorter than its tag"));
                }
                Message::PullSegment(PullSegment { index, ciphertext })
            }
            ty::LIST => {
                let version = r.u8("version")?;
                if version != VERSION {
                    return Err(DecodeError::UnsupportedVersion(version));
                }
                Message::List(List {
                    after: r.bytes16("after", MAX_BATCH_ID)?,
                    limit: r.u32("limit")?,
                    voucher: r.bytes16("voucher", MAX_VOUCHER)?,
                })
            }
            ty::LISTING => Message::Listing(Listing::decode(&mut r)?),
            ty::REFUSE => {
                let code = r.u16("refuse code")?;
                let retry_after_ms = r.u32("retry after")?;
                let message = r.bytes16("refuse message", MAX_REFUSE_MESSAGE)?;
                Message::Refuse(Refuse {
                    code: RefuseCode::from_u16(code).ok_or(DecodeError::Invalid("refuse code"))?,
                    retry_after_ms,
                    message: String::from_utf8_lossy(&message).into_owned(),
                })
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(message)
    }

    /// Encodes the message. Segments are better written in parts (see
    /// [`Segment::header`]); this copies.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello(m) => with_signature(m.signed_bytes(), &m.signature),
            Message::Accept(m) => with_signature(m.signed_bytes(ty::ACCEPT), &m.signature),
            Message::PullAccept(m) => with_signature(m.signed_bytes(ty::PULL_ACCEPT), &m.signature),
            Message::Segment(m) => {
                let len = u32::try_from(m.ciphertext.len()).unwrap_or(u32::MAX);
                let mut out = Segment::header(&m.transfer_id, m.index, len).to_vec();
                out.extend_from_slice(&m.ciphertext);
                out.extend_from_slice(&m.signature);
                out
            }
            Message::SegmentAck(m) => {
                let mut w = Writer::with_type(ty::SEGMENT_ACK);
                w.u64(m.index);
                w.into_vec()
            }
            Message::Complete(m) => with_signature(m.signed_bytes(), &m.signature),
            Message::Receipt(m) => with_signature(m.signed_bytes(), &m.signature),
            Message::Resume(m) => {
                let mut w = Writer::with_type(ty::RESUME);
                w.put(&m.transfer_id);
                w.into_vec()
            }
            Message::Stored(m) => {
                let mut w = Writer::with_type(ty::STORED);
                let runs = &m.runs[..m.runs.len().min(MAX_STORED_RUNS)];
                w.u32(runs.len() as u32);
                for &(first, count) in runs {
                    w.u64(first).u64(count);
                }
                w.into_vec()
            }
            Message::PullHello(m) => with_signature(m.signed_bytes(), &m.signature),
            Message::PullSegment(m) => {
                let len = u32::try_from(m.ciphertext.len()).unwrap_or(u32::MAX);
                let mut out = PullSegment::header(m.index, len).to_vec();
                out.extend_from_slice(&m.ciphertext);
                out
            }
            Message::List(m) => {
                let mut w = Writer::with_type(ty::LIST);
                w.put(&[VERSION])
                    .bytes16(&m.after)
                    .u32(m.limit)
                    .bytes16(&m.voucher);
                w.into_vec()
            }
            Message::Listing(m) => {
                let mut w = Writer::with_type(ty::LISTING);
                let entries = &m.entries[..m.entries.len().min(MAX_LISTING_ENTRIES)];
                w.u32(entries.len() as u32);
                for e in entries {
                    w.bytes16(&e.batch_id)
                        .u64(e.size)
                        .u64(e.segment_count)
                        .put(&e.sender)
                        .u64(e.completed_unix)
                        .bytes32(&e.metadata);
                }
                w.put(&[u8::from(m.more)]);
                w.into_vec()
            }
            Message::Refuse(m) => {
                let mut w = Writer::with_type(ty::REFUSE);
                let text = truncate_utf8(&m.message, MAX_REFUSE_MESSAGE);
                w.u16(m.code.as_u16())
                    .u32(m.retry_after_ms)
                    .bytes16(text.as_bytes());
                w.into_vec()
            }
        }
    }
}

/// The type byte of an accept answering a push (`false`) or a pull (`true`).
pub fn accept_type(pull: bool) -> u8 {
    if pull { ty::PULL_ACCEPT } else { ty::ACCEPT }
}

fn with_signature(mut body: Vec<u8>, signature: &[u8; 64]) -> Vec<u8> {
    body.extend_from_slice(signature);
    body
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
    }

    fn array<const N: usize>() -> impl Strategy<Value = [u8; N]> {
        proptest::collection::vec(any::<u8>(), N).prop_map(|v| {
            let mut a = [0u8; N];
            a.copy_from_slice(&v);
            a
        })
    }

    fn code() -> impl Strategy<Value = RefuseCode> {
        (1u16..=17).prop_map(|n| RefuseCode::from_u16(n).unwrap())
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                bytes(MAX_BATCH_ID).prop_filter("non-empty", |b| !b.is_empty()),
                array(),
                array(),
                any::<u32>(),
                bytes(64),
                array()
            )
                .prop_map(
                    |(batch_id, client_ephemeral, sender, chunk_size, voucher, signature)| {
                        Message::Hello(Hello {
                            batch_id,
                            client_ephemeral,
                            sender,
                            chunk_size,
                            voucher,
                            signature,
                        })
                    }
                ),
            (array(), array(), bytes(200), array()).prop_map(
                |(server_ephemeral, server, sealed, signature)| {
                    Message::Accept(Accept {
                        server_ephemeral,
                        server,
                        sealed,
                        signature,
                    })
                }
            ),
            (array(), array(), bytes(200), array()).prop_map(
                |(server_ephemeral, server, sealed, signature)| {
                    Message::PullAccept(Accept {
                        server_ephemeral,
                        server,
                        sealed,
                        signature,
                    })
                }
            ),
            (
                array(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), TAG_LEN..300),
                array()
            )
                .prop_map(|(transfer_id, index, ct, signature)| {
                    Message::Segment(Segment {
                        transfer_id,
                        index,
                        ciphertext: Bytes::from(ct),
                        signature,
                    })
                }),
            any::<u64>().prop_map(|index| Message::SegmentAck(SegmentAck { index })),
            (
                array(),
                any::<u64>(),
                any::<u64>(),
                array(),
                array(),
                bytes(100),
                array()
            )
                .prop_map(
                    |(
                        transfer_id,
                        segment_count,
                        size,
                        completion_id,
                        chain,
                        sealed_metadata,
                        signature,
                    )| {
                        Message::Complete(Complete {
                            transfer_id,
                            segment_count,
                            size,
                            completion_id,
                            chain,
                            sealed_metadata,
                            signature,
                        })
                    }
                ),
            (
                bytes(MAX_BATCH_ID),
                array(),
                array(),
                any::<u64>(),
                any::<u64>(),
                array(),
                any::<u64>(),
                array(),
                array()
            )
                .prop_map(
                    |(
                        batch_id,
                        transfer_id,
                        sender,
                        segment_count,
                        size,
                        chain,
                        completed_unix,
                        server,
                        signature,
                    )| {
                        Message::Receipt(Receipt {
                            batch_id,
                            transfer_id,
                            sender,
                            segment_count,
                            size,
                            chain,
                            completed_unix,
                            server,
                            signature,
                        })
                    }
                ),
            array().prop_map(|transfer_id| Message::Resume(Resume { transfer_id })),
            proptest::collection::btree_set(0u64..10_000, 0..50)
                .prop_map(|set| Message::Stored(Stored::from_indices(set))),
            (bytes(MAX_BATCH_ID), array(), array(), bytes(64), array()).prop_map(
                |(batch_id, client_ephemeral, retriever, voucher, signature)| {
                    Message::PullHello(PullHello {
                        batch_id,
                        client_ephemeral,
                        retriever,
                        voucher,
                        signature,
                    })
                }
            ),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), TAG_LEN..300)
            )
                .prop_map(|(index, ct)| {
                    Message::PullSegment(PullSegment {
                        index,
                        ciphertext: Bytes::from(ct),
                    })
                }),
            (bytes(MAX_BATCH_ID), any::<u32>(), bytes(64)).prop_map(|(after, limit, voucher)| {
                Message::List(List {
                    after,
                    limit,
                    voucher,
                })
            }),
            (
                proptest::collection::vec(
                    (
                        bytes(40),
                        any::<u64>(),
                        any::<u64>(),
                        array(),
                        any::<u64>(),
                        bytes(60)
                    ),
                    0..5,
                ),
                any::<bool>(),
            )
                .prop_map(|(entries, more)| {
                    Message::Listing(Listing {
                        entries: entries
                            .into_iter()
                            .map(
                                |(
                                    batch_id,
                                    size,
                                    segment_count,
                                    sender,
                                    completed_unix,
                                    metadata,
                                )| {
                                    ListingEntry {
                                        batch_id,
                                        size,
                                        segment_count,
                                        sender,
                                        completed_unix,
                                        metadata,
                                    }
                                },
                            )
                            .collect(),
                        more,
                    })
                }),
            (code(), any::<u32>(), "[a-z ]{0,40}").prop_map(|(code, retry_after_ms, message)| {
                Message::Refuse(Refuse {
                    code,
                    retry_after_ms,
                    message,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in message()) {
            let encoded = m.encode();
            prop_assert_eq!(Message::decode(Bytes::from(encoded.clone())).unwrap(), m);
            // Any strict prefix is truncated, any extension has trailing bytes.
            for cut in [0, encoded.len() / 2, encoded.len() - 1] {
                prop_assert!(Message::decode(Bytes::copy_from_slice(&encoded[..cut])).is_err());
            }
            let mut longer = encoded.clone();
            longer.push(0);
            prop_assert_eq!(Message::decode(Bytes::from(longer)), Err(DecodeError::TrailingBytes(1)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::decode(Bytes::from(data));
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_type_never_panic(ty in 0u8..0x80, data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut msg = vec![ty];
            msg.extend(data);
            let _ = Message::decode(Bytes::from(msg));
        }
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut m = vec![ty::SEGMENT];
        m.extend_from_slice(&[0u8; 16]);
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Message::decode(Bytes::from(m)),
            Err(DecodeError::TooLong {
                field: "segment",
                len: u32::MAX as usize,
                max: MAX_SEGMENT_WIRE
            })
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        let hello = Hello {
            batch_id: Bytes::from_static(b"b"),
            client_ephemeral: [1; 32],
            sender: [2; 32],
            chunk_size: 1 << 20,
            voucher: Bytes::new(),
            signature: [3; 64],
        };
        // Version 1 (before the push secret's new-transfer flag) and the next one.
        for version in [1, VERSION + 1] {
            let mut bytes = Message::Hello(hello.clone()).encode();
            bytes[1] = version;
            assert_eq!(
                Message::decode(Bytes::from(bytes)),
                Err(DecodeError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn stored_runs() {
        let s = Stored::from_indices([0, 1, 2, 5, 7, 8]);
        assert_eq!(s.runs, vec![(0, 3), (5, 1), (7, 2)]);
        assert!(s.contains(8) && s.contains(0) && !s.contains(3) && !s.contains(9));
        assert_eq!(s.count(), 6);
    }
}
