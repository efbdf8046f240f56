//! How stores encode their records, with the protocol's one [`Codec`]: the same
//! big-endian integers and bounded length-prefixed byte strings as the wire, after a
//! version byte so the format can change later. Any store that keeps records as
//! bytes (the embedded one, an object store) uses these, so a record means the same
//! thing wherever it is kept. Decoding refuses, as [`StoreError::Corrupt`], never a
//! panic, anything truncated, over-long, of an unknown version, or stored under a
//! key it does not repeat.

use bytes::Bytes;

use super::memory::printable;
use super::{BatchRecord, SegmentInfo, StoreError, StoreResult, TransferId, TransferRecord};
use crate::wire::{
    ChainHash, Codec, Compression, DecodeError, EncodeError, MAX_BATCH_ID, MAX_METADATA, Reader,
    TAG_LEN, Tag, Writer,
};

/// The first byte of every encoded transfer and batch record. Version 2 batch
/// records end with the declared content digest; version 1 ones (read still)
/// have none, which reads as all zeros: not declared. Version 3 batch records
/// and version 2 transfer records end with the transfer's compression byte;
/// earlier ones (read still) have none, which reads as no compression.
const RECORD_VERSION: u8 = 1;
/// The version of transfer records written now.
const TRANSFER_RECORD_VERSION: u8 = 2;
/// The version of batch records written now.
const BATCH_RECORD_VERSION: u8 = 3;

fn read_compression(r: &mut Reader) -> Result<Compression, DecodeError> {
    Compression::from_byte(r.u8("compression")?).ok_or(DecodeError::Invalid("compression"))
}

/// Longest receipt a batch record holds: an encoded receipt is about 500 bytes.
const MAX_RECEIPT: usize = 4096;

/// Longest sealed metadata a batch record holds.
const MAX_SEALED_METADATA: usize = MAX_METADATA + TAG_LEN;

/// Length of a segment record's value: ciphertext length, then the tag.
pub(crate) const SEGMENT_VALUE_LEN: usize = 4 + 16;

impl Codec for TransferRecord {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(TRANSFER_RECORD_VERSION)
            .put(&self.transfer.0)
            .bytes32("batch id", &self.batch_id, MAX_BATCH_ID)?
            .put(&self.sender)
            .u32(self.chunk_size)
            .u64(self.created_unix)
            .u64(self.deadline_unix)
            .u8(self.compression.to_byte());
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let version = match r.u8("version")? {
            v @ (RECORD_VERSION | TRANSFER_RECORD_VERSION) => v,
            _ => return Err(DecodeError::Invalid("record version")),
        };
        Ok(TransferRecord {
            transfer: TransferId(r.array("transfer id")?),
            batch_id: r.bytes32("batch id", MAX_BATCH_ID)?.to_vec(),
            sender: r.array("sender key")?,
            chunk_size: r.u32("chunk size")?,
            created_unix: r.u64("creation time")?,
            deadline_unix: r.u64("deadline")?,
            compression: if version == RECORD_VERSION {
                Compression::None
            } else {
                read_compression(r)?
            },
        })
    }
}

impl Codec for BatchRecord {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(BATCH_RECORD_VERSION)
            .bytes32("batch id", &self.batch_id, MAX_BATCH_ID)?
            .put(&self.transfer.0)
            .put(&self.sender)
            .u32(self.chunk_size)
            .u64(self.segment_count)
            .u64(self.size)
            .bytes32(
                "sealed metadata",
                &self.sealed_metadata,
                MAX_SEALED_METADATA,
            )?
            .put(&self.chain.0)
            .u64(self.completed_unix)
            .bytes32("receipt", &self.receipt, MAX_RECEIPT)?
            .put(&self.content_digest)
            .u8(self.compression.to_byte());
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let version = match r.u8("version")? {
            v @ (RECORD_VERSION | 2 | BATCH_RECORD_VERSION) => v,
            _ => return Err(DecodeError::Invalid("record version")),
        };
        Ok(BatchRecord {
            batch_id: r.bytes32("batch id", MAX_BATCH_ID)?.to_vec(),
            transfer: TransferId(r.array("transfer id")?),
            sender: r.array("sender key")?,
            chunk_size: r.u32("chunk size")?,
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            sealed_metadata: r.bytes32("sealed metadata", MAX_SEALED_METADATA)?.to_vec(),
            chain: ChainHash(r.array("chain hash")?),
            completed_unix: r.u64("completion time")?,
            receipt: r.bytes32("receipt", MAX_RECEIPT)?.to_vec(),
            content_digest: if version == RECORD_VERSION {
                [0; 32]
            } else {
                r.array("content digest")?
            },
            compression: if version < BATCH_RECORD_VERSION {
                Compression::None
            } else {
                read_compression(r)?
            },
        })
    }
}

/// A record that cannot be stored is the caller's mistake, reported as such.
fn unstorable(what: &str, e: EncodeError) -> StoreError {
    StoreError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} cannot be stored: {e}"),
    ))
}

fn corrupt(what: &str, e: DecodeError) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The bytes of a transfer record.
pub(crate) fn encode_transfer(r: &TransferRecord) -> StoreResult<Vec<u8>> {
    r.to_bytes().map_err(|e| unstorable("transfer record", e))
}

/// Decodes a transfer record stored under the key `id`, which it must repeat.
pub(crate) fn decode_transfer(value: &[u8], id: &[u8]) -> StoreResult<TransferRecord> {
    let record = TransferRecord::from_bytes(Bytes::copy_from_slice(value))
        .map_err(|e| corrupt("transfer record", e))?;
    if record.transfer.0.as_slice() != id {
        return Err(StoreError::Corrupt(format!(
            "transfer record {} is stored under another id",
            record.transfer
        )));
    }
    Ok(record)
}

/// The bytes of a batch record.
pub(crate) fn encode_batch(r: &BatchRecord) -> StoreResult<Vec<u8>> {
    r.to_bytes().map_err(|e| unstorable("batch record", e))
}

/// The key of a record in a sender's namespace: the sender (fixed width, so the
/// key splits back unambiguously), then the batch id. Byte order sorts it by
/// sender, then by batch id.
pub(crate) fn owned_key(owner: &[u8; 32], batch_id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + batch_id.len());
    key.extend_from_slice(owner);
    key.extend_from_slice(batch_id);
    key
}

/// Decodes a batch record stored under `key` ([`owned_key`]), whose sender and
/// batch id it must repeat.
pub(crate) fn decode_batch(value: &[u8], key: &[u8]) -> StoreResult<BatchRecord> {
    let record = BatchRecord::from_bytes(Bytes::copy_from_slice(value))
        .map_err(|e| corrupt("batch record", e))?;
    if owned_key(&record.sender, &record.batch_id) != key {
        return Err(StoreError::Corrupt(format!(
            "batch record {} is stored under another sender or batch id",
            printable(&record.batch_id)
        )));
    }
    Ok(record)
}

/// The key of a segment record: transfer id, then the big-endian index, so a
/// store's byte order is the index order and a prefix scan comes out sorted.
pub(crate) fn segment_key(transfer: TransferId, index: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&transfer.0);
    key[16..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The value of a segment record: ciphertext length, then the tag.
pub(crate) fn encode_segment(info: &SegmentInfo) -> [u8; SEGMENT_VALUE_LEN] {
    let mut value = [0u8; SEGMENT_VALUE_LEN];
    value[..4].copy_from_slice(&info.len.to_be_bytes());
    value[4..].copy_from_slice(&info.tag.0);
    value
}

/// A segment record from its key and value.
pub(crate) fn decode_segment(key: &[u8], value: &[u8]) -> StoreResult<SegmentInfo> {
    let mut k = Reader::new(Bytes::copy_from_slice(key));
    let mut v = Reader::new(Bytes::copy_from_slice(value));
    let decoded = (|| {
        let _transfer: [u8; 16] = k.array("transfer id")?;
        let index = k.u64("index")?;
        k.finish()?;
        let len = v.u32("length")?;
        let tag = Tag(v.array("tag")?);
        v.finish()?;
        Ok(SegmentInfo { index, len, tag })
    })();
    decoded.map_err(|e| corrupt("segment record", e))
}
