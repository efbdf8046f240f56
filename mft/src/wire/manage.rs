//! The messages by which a sender manages what it left open and what it stored:
//! which of its transfers the server holds, ending one at once rather than at its
//! deadline, deleting a batch, and confirming that a batch holds what it would
//! send again.

use super::codec::{Codec, DecodeError, EncodeError, Reader, Writer};
use super::pull::{read_key_option, write_key_option};
use super::push::{read_batch_id, read_version};
use super::values::{BatchId, TransferId};
use super::{MAX_BATCH_ID, MAX_VOUCHER, VERSION};
use bytes::Bytes;

/// Most entries in one [`OpenTransfers`].
pub const MAX_OPEN_ENTRIES: usize = 1024;

/// Asks which transfers the requester has open: client → server, first message of
/// its flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOpen;

impl Codec for ListOpen {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(ListOpen)
    }
}

/// One open transfer in [`OpenTransfers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenEntry {
    /// The transfer.
    pub transfer_id: TransferId,
    /// The batch it will complete, in the requester's namespace.
    pub batch_id: BatchId,
    /// When it was opened, seconds since the Unix epoch.
    pub created_unix: u64,
    /// When the server reclaims it if it is not complete.
    pub deadline_unix: u64,
    /// Segments the server holds for it.
    pub stored_segments: u64,
    /// Ciphertext bytes the server holds for it (what it counts against quotas).
    pub stored_bytes: u64,
}

impl Codec for OpenEntry {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.transfer_id.0)
            .bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .u64(self.created_unix)
            .u64(self.deadline_unix)
            .u64(self.stored_segments)
            .u64(self.stored_bytes);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OpenEntry {
            transfer_id: TransferId(r.array("transfer id")?),
            batch_id: read_batch_id(r)?,
            created_unix: r.u64("creation time")?,
            deadline_unix: r.u64("deadline")?,
            stored_segments: r.u64("stored segments")?,
            stored_bytes: r.u64("stored bytes")?,
        })
    }
}

/// The requester's open transfers, in batch-id order: server → client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenTransfers {
    /// At most [`MAX_OPEN_ENTRIES`].
    pub entries: Vec<OpenEntry>,
}

impl Codec for OpenTransfers {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        super::codec::check_len("open transfers", self.entries.len(), MAX_OPEN_ENTRIES)?;
        w.u32(self.entries.len() as u32);
        for entry in &self.entries {
            entry.write_to(w)?;
        }
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("entry count")? as usize;
        if n > MAX_OPEN_ENTRIES {
            return Err(DecodeError::TooLong {
                field: "open transfers",
                len: n,
                max: MAX_OPEN_ENTRIES,
            });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(OpenEntry::read_from(r)?);
        }
        Ok(OpenTransfers { entries })
    }
}

/// Ends one of the requester's open transfers now, deleting what the server holds
/// of it: client → server, first message of its flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    /// The transfer, from an earlier [`Accept`](super::Accept) or [`OpenTransfers`].
    pub transfer_id: TransferId,
}

impl Codec for Abort {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION).put(&self.transfer_id.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(Abort {
            transfer_id: TransferId(r.array("transfer id")?),
        })
    }
}

/// The transfer was aborted and what the server held of it deleted: server →
/// client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aborted {
    /// The transfer.
    pub transfer_id: TransferId,
}

impl Codec for Aborted {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.transfer_id.0);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Aborted {
            transfer_id: TransferId(r.array("transfer id")?),
        })
    }
}

/// Tells the server that the sender paused one of its open transfers, or went
/// on with it: client → server, first message of its flow. The server reports
/// it (an event, a log line) and changes nothing else: a paused transfer keeps
/// its deadline, and idle flows of it may be closed as any others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// The transfer, from an earlier [`Accept`](super::Accept).
    pub transfer_id: TransferId,
    /// True when the sender paused; false when it went on.
    pub paused: bool,
}

impl Codec for Pause {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION)
            .put(&self.transfer_id.0)
            .u8(u8::from(self.paused));
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(Pause {
            transfer_id: TransferId(r.array("transfer id")?),
            paused: r.bool("paused")?,
        })
    }
}

/// The server took note of a [`Pause`]: server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseNoted {
    /// The transfer.
    pub transfer_id: TransferId,
    /// As the [`Pause`] said.
    pub paused: bool,
}

impl Codec for PauseNoted {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.transfer_id.0).u8(u8::from(self.paused));
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PauseNoted {
            transfer_id: TransferId(r.array("transfer id")?),
            paused: r.bool("paused")?,
        })
    }
}

/// Deletes a completed batch: client → server, first message of its flow. The
/// batch leaves its namespace at once (retrievals that started before it finish);
/// its data is freed when the last of them ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    /// Whose namespace: `None` is the requester's own. Another's batch may be
    /// deleted only by a key the server's policy authorises to.
    pub owner: Option<[u8; 32]>,
    /// The batch.
    pub batch_id: BatchId,
    /// An optional application token, handed to the authoriser.
    pub voucher: Bytes,
}

impl Codec for Delete {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION);
        write_key_option(w, self.owner.as_ref());
        w.bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .bytes16("voucher", &self.voucher, MAX_VOUCHER)?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(Delete {
            owner: read_key_option(r, "owner")?,
            batch_id: read_batch_id(r)?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
        })
    }
}

/// The batch was deleted: server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The namespace it was in.
    pub owner: [u8; 32],
    /// The batch.
    pub batch_id: BatchId,
    /// Its plaintext size, now freed from the owner's quota.
    pub size: u64,
}

impl Codec for Deleted {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.put(&self.owner)
            .bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .u64(self.size);
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Deleted {
            owner: r.array("owner")?,
            batch_id: read_batch_id(r)?,
            size: r.u64("size")?,
        })
    }
}

/// Asks whether the requester's batch `batch_id` holds exactly this content:
/// client → server, first message of its flow, sent by a sender whose hello was
/// refused as `BatchExists`. Answered with the batch's stored
/// [`Receipt`](super::Receipt) if its declared size and content digest are these
/// (so sending the same file again succeeds), else refused as `BatchExists`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    /// The batch, in the requester's namespace.
    pub batch_id: BatchId,
    /// The plaintext size the sender has.
    pub size: u64,
    /// The SHA-256 of the plaintext the sender has.
    pub content_digest: [u8; 32],
    /// The application token its hello carried, handed to the authoriser (as
    /// a send).
    pub voucher: Bytes,
}

impl Codec for Confirm {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(VERSION)
            .bytes16("batch id", &self.batch_id, MAX_BATCH_ID)?
            .u64(self.size)
            .put(&self.content_digest)
            .bytes16("voucher", &self.voucher, MAX_VOUCHER)?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        read_version(r)?;
        Ok(Confirm {
            batch_id: read_batch_id(r)?,
            size: r.u64("size")?,
            content_digest: r.array("content digest")?,
            voucher: r.bytes16("voucher", MAX_VOUCHER)?,
        })
    }
}
