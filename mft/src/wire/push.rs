//! The messages of a push: handshake, segments, resume and completion.

use bytes::Bytes;

use super::codec::{Codec, DecodeError, EncodeError, Reader, Writer};
use super::values::{BatchId, ChainHash, Compression, Signature, Tag, TransferId};
use super::{
    MAX_BATCH_ID, MAX_METADATA, MAX_SEALED_SECRET, MAX_SEGMENT_WIRE, MAX_STORED_RUNS, MAX_VOUCHER,
    TAG_LEN, VERSION, ty,
};

/// Reads a batch id: a u16-length byte string of 1 to [`MAX_BATCH_ID`] bytes.
pub(super) fn read_batch_id(r: &mut Reader) -> Result<BatchId, DecodeError> {
    BatchId::new(r.bytes16("batch id", MAX_BATCH_ID)?)
        .map_err(|_| DecodeError::Invalid("batch id (empty)"))
}

/// Reads the version byte that opens a hello or a list, refusing any other.
pub(super) fn read_version(r: &mut Reader) -> Result<(), DecodeError> {
    match r.u8("version")? {
        VERSION => Ok(()),
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

/// Opens a push transfer: client → server, first message of the handshake flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The batch this transfer will become.
    pub batch_id: BatchId,
    /// The client's one-time X25519 public key.
    pub client_ephemeral: [u8; 32],
    /// The sender's Ed25519 public key; must equal the flow's TLS peer key.
    pub sender: [u8; 32],
    /// The chunk size the client prefers.
    pub chunk_size: u32,
    /// An optional application token (a JWT, say), handed to the authoriser.
    pub voucher: Bytes,
    /// The sender means to replace a batch of this id it holds already: the
    /// hello is not refused as `BatchExists`, and the completion (which says so
    /// too) swaps the new batch in for the old one at once.
    pub replace: bool,
    /// The compression the sender offers: with [`Compression::Zstd`] the server
    /// may settle on it (its accept says which), and the sender may then seal
    /// zstd frames of its segments' plaintext.
    pub compression: Compression,
    /// Ed25519 by `sender` over [`Hello::signed_bytes`].
    pub signature: Signature,
}

/// The flags byte of a [`Hello`] or a [`Complete`]: bit 0 is `replace`; bit 1,
/// in a hello only, offers zstd; every other bit must be clear, so a later
/// version can give them meanings.
const FLAG_REPLACE: u8 = 0x01;
/// Bit 1 of a hello's flags: zstd offered.
const FLAG_ZSTD: u8 = 0x02;

fn write_flags(replace: bool) -> u8 {
    if replace { FLAG_REPLACE } else { 0 }
}

/// The flags byte, refused if it sets a bit outside `known`.
fn read_flags(r: &mut Reader, known: u8, field: &'static str) -> Result<u8, DecodeError> {
    let flags = r.u8(field)?;
    if flags & !known != 0 {
        return Err(DecodeError::Invalid(field));
    }
    Ok(flags)
}

impl Hello {
    /// Everything the signature covers: the encoding without the signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::starting_with(ty::HELLO);
        self.write_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// The fields before the signature, after the type byte.
    fn write_unsigned(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION)
            .bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .put(&self.client_ephemeral)
            .put(&self.sender)
            .u32(self.chunk_size)
            .bytes16("voucher", &self.voucher, MAX_VOUCHER)?
            .u8(write_flags(self.replace) | self.offer_flag());
        Ok(())
    }

    fn offer_flag(&self) -> u8 {
        match self.compression {
            Compression::None => 0,
            Compression::Zstd => FLAG_ZSTD,
        }
    }
}

impl Codec for Hello {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.write_unsigned(w)?;
        w.put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        let batch_id = read_batch_id(r)?;
        let client_ephemeral = r.array("client ephemeral key")?;
        let sender = r.array("sender key")?;
        let chunk_size = r.u32("chunk size")?;
        let voucher = r.bytes16("voucher", MAX_VOUCHER)?;
        let flags = read_flags(
            r,
            FLAG_REPLACE | FLAG_ZSTD,
            "hello flags (unknown bits set)",
        )?;
        Ok(Hello {
            batch_id,
            client_ephemeral,
            sender,
            chunk_size,
            voucher,
            replace: flags & FLAG_REPLACE != 0,
            compression: if flags & FLAG_ZSTD != 0 {
                Compression::Zstd
            } else {
                Compression::None
            },
            signature: Signature(r.array("signature")?),
        })
    }
}

/// The server's answer to a [`Hello`] or [`PullHello`](super::PullHello).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The server's one-time X25519 public key.
    pub server_ephemeral: [u8; 32],
    /// The server's Ed25519 public key.
    pub server: [u8; 32],
    /// The handshake secret, AES-256-GCM under the handshake key.
    pub sealed: Bytes,
    /// Ed25519 by `server` over the transcript (see `docs/PROTOCOL.md`).
    pub signature: Signature,
}

impl Accept {
    /// The encoding without the signature, under type byte `ty` (see
    /// [`accept_type`](super::accept_type)): part of what the signature covers.
    pub fn signed_bytes(&self, ty: u8) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::starting_with(ty);
        self.write_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// The fields before the signature, after the type byte.
    fn write_unsigned(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.server_ephemeral).put(&self.server).bytes32(
            "sealed secret",
            &self.sealed,
            MAX_SEALED_SECRET,
        )?;
        Ok(())
    }
}

impl Codec for Accept {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.write_unsigned(w)?;
        w.put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Accept {
            server_ephemeral: r.array("server ephemeral key")?,
            server: r.array("server key")?,
            sealed: r.bytes32("sealed secret", MAX_SEALED_SECRET)?,
            signature: Signature(r.array("signature")?),
        })
    }
}

/// One encrypted chunk of the batch: client → server on a segment flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The transfer it belongs to.
    pub transfer_id: TransferId,
    /// Its position, from 0.
    pub index: u64,
    /// AES-256-GCM ciphertext with the 16-byte tag at the end.
    pub ciphertext: Bytes,
    /// Ed25519 by the sender over the segment header and tag.
    pub signature: Signature,
}

/// Bytes before the ciphertext in an encoded [`Segment`].
pub const SEGMENT_HEADER_LEN: usize = 1 + 16 + 8 + 4;

impl Segment {
    /// The header that precedes the ciphertext on the wire; write it, the ciphertext
    /// and the signature as three parts of one flow message to avoid a copy.
    pub fn header(
        transfer_id: &TransferId,
        index: u64,
        ciphertext_len: u32,
    ) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0] = ty::SEGMENT;
        h[1..17].copy_from_slice(&transfer_id.0);
        h[17..25].copy_from_slice(&index.to_be_bytes());
        h[25..29].copy_from_slice(&ciphertext_len.to_be_bytes());
        h
    }

    /// The AES-GCM tag at the end of the ciphertext.
    pub fn tag(&self) -> Tag {
        let mut tag = [0u8; 16];
        let ct = &self.ciphertext;
        if ct.len() >= TAG_LEN {
            tag.copy_from_slice(&ct[ct.len() - TAG_LEN..]);
        }
        Tag(tag)
    }
}

/// Checks a segment ciphertext's length against the protocol's bounds.
fn check_ciphertext(ciphertext: &Bytes) -> Result<(), DecodeError> {
    if ciphertext.len() < TAG_LEN {
        return Err(DecodeError::Invalid("segment shorter than its tag"));
    }
    Ok(())
}

/// A segment ciphertext's length as the wire carries it, refused beyond the
/// protocol's largest segment.
pub(super) fn ciphertext_len(ciphertext: &[u8]) -> Result<u32, EncodeError> {
    super::codec::check_len("segment", ciphertext.len(), MAX_SEGMENT_WIRE)?;
    Ok(ciphertext.len() as u32)
}

impl Codec for Segment {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let len = ciphertext_len(&self.ciphertext)?;
        w.put(&Segment::header(&self.transfer_id, self.index, len)[1..])
            .put(&self.ciphertext)
            .put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let transfer_id = TransferId(r.array("transfer id")?);
        let index = r.u64("index")?;
        let ciphertext = r.bytes32("segment", MAX_SEGMENT_WIRE)?;
        check_ciphertext(&ciphertext)?;
        Ok(Segment {
            transfer_id,
            index,
            ciphertext,
            signature: Signature(r.array("signature")?),
        })
    }
}

/// The server stored a segment durably: server → client on the segment's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentAck {
    /// The index stored.
    pub index: u64,
}

impl Codec for SegmentAck {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u64(self.index);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SegmentAck {
            index: r.u64("index")?,
        })
    }
}

/// Ends a push transfer: client → server on the completion flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complete {
    /// The transfer.
    pub transfer_id: TransferId,
    /// How many segments the batch has.
    pub segment_count: u64,
    /// The plaintext size in bytes.
    pub size: u64,
    /// The secret completion id from the handshake.
    pub completion_id: [u8; 32],
    /// The chain hash over every segment in order.
    pub chain: ChainHash,
    /// The metadata, AES-256-GCM under the data key.
    pub sealed_metadata: Bytes,
    /// The SHA-256 of the plaintext, as the sender declares it (all zeros:
    /// not declared). The server cannot check it (it sees the data out of
    /// order); it keeps it, so a re-send of the same content is recognised, and
    /// signs it into the receipt as declared. Retrievers check it end to end.
    pub content_digest: [u8; 32],
    /// Replace the sender's batch of this id, if it holds one (see
    /// [`Hello::replace`]); without it, an existing batch refuses the completion.
    pub replace: bool,
    /// Ed25519 by the sender over [`Complete::signed_bytes`].
    pub signature: Signature,
}

impl Complete {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::starting_with(ty::COMPLETE);
        self.write_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// The fields before the signature, after the type byte.
    fn write_unsigned(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.transfer_id.0)
            .u64(self.segment_count)
            .u64(self.size)
            .put(&self.completion_id)
            .put(&self.chain.0)
            .bytes32("metadata", &self.sealed_metadata, MAX_METADATA + TAG_LEN)?
            .put(&self.content_digest)
            .u8(write_flags(self.replace));
        Ok(())
    }
}

impl Codec for Complete {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.write_unsigned(w)?;
        w.put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Complete {
            transfer_id: TransferId(r.array("transfer id")?),
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            completion_id: r.array("completion id")?,
            chain: ChainHash(r.array("chain hash")?),
            sealed_metadata: r.bytes32("metadata", MAX_METADATA + TAG_LEN)?,
            content_digest: r.array("content digest")?,
            replace: read_flags(r, FLAG_REPLACE, "completion flags (unknown bits set)")? != 0,
            signature: Signature(r.array("signature")?),
        })
    }
}

/// The server's signed statement that it holds a batch: server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The batch id.
    pub batch_id: BatchId,
    /// The transfer that delivered it.
    pub transfer_id: TransferId,
    /// The sender's key.
    pub sender: [u8; 32],
    /// Segments stored.
    pub segment_count: u64,
    /// Plaintext size in bytes.
    pub size: u64,
    /// The verified chain hash.
    pub chain: ChainHash,
    /// The SHA-256 of the plaintext as the sender declared it in its completion
    /// (all zeros: not declared): signed here as declared, not as checked.
    pub content_digest: [u8; 32],
    /// When the server completed it, seconds since the Unix epoch.
    pub completed_unix: u64,
    /// The server's key.
    pub server: [u8; 32],
    /// Ed25519 by `server` over [`Receipt::signed_bytes`].
    pub signature: Signature,
}

impl Receipt {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::starting_with(ty::RECEIPT);
        self.write_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// The fields before the signature, after the type byte.
    fn write_unsigned(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .put(&self.transfer_id.0)
            .put(&self.sender)
            .u64(self.segment_count)
            .u64(self.size)
            .put(&self.chain.0)
            .put(&self.content_digest)
            .u64(self.completed_unix)
            .put(&self.server);
        Ok(())
    }
}

impl Codec for Receipt {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.write_unsigned(w)?;
        w.put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Receipt {
            batch_id: read_batch_id(r)?,
            transfer_id: TransferId(r.array("transfer id")?),
            sender: r.array("sender key")?,
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            chain: ChainHash(r.array("chain hash")?),
            content_digest: r.array("content digest")?,
            completed_unix: r.u64("completion time")?,
            server: r.array("server key")?,
            signature: Signature(r.array("signature")?),
        })
    }
}

/// Asks which segments of an open transfer the server holds: client → server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The transfer, from an earlier [`Accept`].
    pub transfer_id: TransferId,
}

impl Codec for Resume {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.transfer_id.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Resume {
            transfer_id: TransferId(r.array("transfer id")?),
        })
    }
}

/// The segments the server holds, as runs of consecutive indices: server → client.
/// It may list fewer than all (at most [`MAX_STORED_RUNS`] runs): a segment not
/// listed that is stored is refused as a duplicate when sent again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// `(first index, count)` runs, ascending and not overlapping.
    pub runs: Vec<(u64, u64)>,
}

impl Stored {
    /// Runs from ascending indices, at most [`MAX_STORED_RUNS`] of them: the
    /// first ones.
    pub fn from_indices(indices: impl IntoIterator<Item = u64>) -> Self {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in indices {
            let full = runs.len() == MAX_STORED_RUNS;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ if full => break,
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
}

impl Codec for Stored {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        super::codec::check_len("stored runs", self.runs.len(), MAX_STORED_RUNS)?;
        w.u32(self.runs.len() as u32);
        for &(first, count) in &self.runs {
            w.u64(first).u64(count);
        }
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
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
