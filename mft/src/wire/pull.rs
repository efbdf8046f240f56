//! The messages of retrieval and listing.

use bytes::Bytes;

use super::codec::{Codec, DecodeError, EncodeError, Reader, Writer};
use super::push::{ciphertext_len, read_batch_id, read_version};
use super::values::{BatchId, Signature};
use super::{
    MAX_BATCH_ID, MAX_LISTING_ENTRIES, MAX_METADATA, MAX_SEGMENT_WIRE, MAX_VOUCHER, TAG_LEN,
    VERSION, ty,
};

/// Opens a retrieval: client → server, first message of a pull flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullHello {
    /// The batch wanted.
    pub batch_id: BatchId,
    /// The sender whose namespace holds it; `None` asks the server to resolve the
    /// id among the senders the retriever may see, which fails as
    /// [`Ambiguous`](super::RefuseCode::Ambiguous) if there are several.
    pub owner: Option<[u8; 32]>,
    /// The retriever's one-time X25519 public key.
    pub client_ephemeral: [u8; 32],
    /// The retriever's Ed25519 key; must equal the flow's TLS peer key.
    pub retriever: [u8; 32],
    /// An optional application token, handed to the authoriser.
    pub voucher: Bytes,
    /// Only these plaintext bytes; `None` for the whole batch. The server sends
    /// the segments that hold them, and the retriever cuts them to the range.
    pub range: Option<ByteRange>,
    /// Ed25519 by `retriever` over [`PullHello::signed_bytes`].
    pub signature: Signature,
}

/// A part of a batch's plaintext: the bytes from `start` up to, not including,
/// `end`. Never empty: `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// `start..end`, or `None` if that is empty.
    pub fn new(start: u64, end: u64) -> Option<Self> {
        (start < end).then_some(ByteRange { start, end })
    }

    /// Its length in bytes (at least 1).
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Never: a range holds at least one byte. (For the `len` convention.)
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl PullHello {
    /// The encoding without the signature.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::starting_with(ty::PULL_HELLO);
        self.write_unsigned(&mut w)?;
        Ok(w.into_vec())
    }

    /// The fields before the signature, after the type byte.
    fn write_unsigned(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION)
            .bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?;
        write_key_option(w, self.owner.as_ref());
        w.put(&self.client_ephemeral).put(&self.retriever).bytes16(
            "voucher",
            &self.voucher,
            MAX_VOUCHER,
        )?;
        match self.range {
            None => {
                w.u8(0);
            }
            Some(range) => {
                w.u8(1).u64(range.start).u64(range.end);
            }
        }
        Ok(())
    }
}

/// Reads an optional [`ByteRange`]: a flag byte (0 or 1), then start and end; an
/// empty or inverted range is invalid.
fn read_range(r: &mut Reader) -> Result<Option<ByteRange>, DecodeError> {
    match r.u8("range flag")? {
        0 => Ok(None),
        1 => {
            let start = r.u64("range start")?;
            let end = r.u64("range end")?;
            ByteRange::new(start, end)
                .map(Some)
                .ok_or(DecodeError::Invalid("empty byte range"))
        }
        _ => Err(DecodeError::Invalid("range presence flag")),
    }
}

impl Codec for PullHello {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        self.write_unsigned(w)?;
        w.put(&self.signature.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(PullHello {
            batch_id: read_batch_id(r)?,
            owner: read_key_option(r, "owner")?,
            client_ephemeral: r.array("client ephemeral key")?,
            retriever: r.array("retriever key")?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
            range: read_range(r)?,
            signature: Signature(r.array("signature")?),
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

/// Bytes before the ciphertext in an encoded [`PullSegment`].
pub const PULL_SEGMENT_HEADER_LEN: usize = 1 + 8 + 4;

impl PullSegment {
    /// The header before the ciphertext: type, index, length.
    pub fn header(index: u64, ciphertext_len: u32) -> [u8; PULL_SEGMENT_HEADER_LEN] {
        let mut h = [0u8; PULL_SEGMENT_HEADER_LEN];
        h[0] = ty::PULL_SEGMENT;
        h[1..9].copy_from_slice(&index.to_be_bytes());
        h[9..13].copy_from_slice(&ciphertext_len.to_be_bytes());
        h
    }
}

impl Codec for PullSegment {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let len = ciphertext_len(&self.ciphertext)?;
        w.put(&PullSegment::header(self.index, len)[1..])
            .put(&self.ciphertext);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let index = r.u64("index")?;
        let ciphertext = r.bytes32("segment", MAX_SEGMENT_WIRE)?;
        if ciphertext.len() < TAG_LEN {
            return Err(DecodeError::Invalid("segment shorter than its tag"));
        }
        Ok(PullSegment { index, ciphertext })
    }
}

/// Writes an optional 32-byte key: a flag byte (0 or 1), then the key if present.
pub(super) fn write_key_option(w: &mut Writer, key: Option<&[u8; 32]>) {
    match key {
        None => {
            w.u8(0);
        }
        Some(key) => {
            w.u8(1).put(key);
        }
    }
}

/// Reads what [`write_key_option`] wrote; a flag other than 0 or 1 is invalid.
pub(super) fn read_key_option(
    r: &mut Reader,
    what: &'static str,
) -> Result<Option<[u8; 32]>, DecodeError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(r.array(what)?)),
        _ => Err(DecodeError::Invalid("key presence flag")),
    }
}

/// A place in a listing: a batch of a sender. Listings run in (sender, batch id)
/// byte order, and a page resumes after the last entry of the one before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The sender.
    pub owner: [u8; 32],
    /// The batch id in that sender's namespace.
    pub batch_id: BatchId,
}

/// Asks which batches the requester may see, a page at a time: client → server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    /// Only this sender's namespace; `None` for every namespace the requester may
    /// list.
    pub owner: Option<[u8; 32]>,
    /// Only batches after this one; `None` for the first page.
    pub after: Option<Position>,
    /// The most entries wanted (the server may send fewer).
    pub limit: u32,
    /// An optional application token, handed to the authoriser.
    pub voucher: Bytes,
}

impl Codec for List {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION);
        write_key_option(w, self.owner.as_ref());
        write_key_option(w, self.after.as_ref().map(|p| &p.owner));
        if let Some(after) = &self.after {
            w.bytes16("after", &after.batch_id, MAX_BATCH_ID)?;
        }
        w.u32(self.limit)
            .bytes16("voucher", &self.voucher, MAX_VOUCHER)?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        let owner = read_key_option(r, "owner")?;
        let after = match read_key_option(r, "after owner")? {
            None => None,
            Some(owner) => Some(Position {
                owner,
                batch_id: read_batch_id(r)?,
            }),
        };
        Ok(List {
            owner,
            after,
            limit: r.u32("limit")?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
        })
    }
}

/// One batch in a [`Listing`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingEntry {
    /// The batch id.
    pub batch_id: BatchId,
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

impl Codec for ListingEntry {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .u64(self.size)
            .u64(self.segment_count)
            .put(&self.sender)
            .u64(self.completed_unix)
            .bytes32("metadata", &self.metadata, MAX_METADATA)?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListingEntry {
            batch_id: read_batch_id(r)?,
            size: r.u64("size")?,
            segment_count: r.u64("segment count")?,
            sender: r.array("sender key")?,
            completed_unix: r.u64("completion time")?,
            metadata: r.bytes32("metadata", MAX_METADATA)?,
        })
    }
}

/// A page of batches: server → client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The batches, in (sender, batch id) order.
    pub entries: Vec<ListingEntry>,
    /// Whether more batches follow (ask again with `after` = the last entry's
    /// sender and batch id).
    pub more: bool,
}

impl Codec for Listing {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        super::codec::check_len("listing", self.entries.len(), MAX_LISTING_ENTRIES)?;
        w.u32(self.entries.len() as u32);
        for entry in &self.entries {
            entry.write_to(w)?;
        }
        w.u8(u8::from(self.more));
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
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
            entries.push(ListingEntry::read_from(r)?);
        }
        let more = r.bool("more flag")?;
        Ok(Listing { entries, more })
    }
}
