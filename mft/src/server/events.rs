//! What the server does, as it happens: one event per step of a transfer's life,
//! broadcast to subscribers (dashboards, metrics, tests) and written to the log by
//! the same call, so the two never disagree.

use flow::PeerKey;

use crate::store::TransferId;
use crate::wire::{BatchId, RefuseCode};

/// How many events a slow subscriber may fall behind before it misses some
/// (it then reads [`tokio::sync::broadcast::error::RecvError::Lagged`]).
pub(super) const EVENT_BUFFER: usize = 1024;

/// One step in the life of a transfer on the server, from
/// [`Server::subscribe`](super::Server::subscribe). Every event is also logged (at
/// `info`, segments at `debug`), with the same fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A sender's hello opened a new transfer.
    Opened {
        /// The sender.
        peer: PeerKey,
        /// The batch the transfer will complete, in the sender's namespace.
        batch_id: BatchId,
        /// The transfer's id.
        transfer: TransferId,
        /// Whether it replaces a stored batch of that id when it completes.
        replace: bool,
    },
    /// A sender came back to a transfer it left open (a hello for the same batch
    /// or a resume): what it stored before stays valid.
    Resumed {
        /// The sender.
        peer: PeerKey,
        /// The transfer.
        transfer: TransferId,
        /// The batch it is for, in its sender's namespace.
        batch_id: BatchId,
    },
    /// A sender said it paused its open transfer: it reads no input, and sends
    /// nothing more until it goes on ([`ServerEvent::Continued`]).
    Paused {
        /// The sender.
        peer: PeerKey,
        /// The transfer.
        transfer: TransferId,
        /// The batch it is for, in its sender's namespace.
        batch_id: BatchId,
    },
    /// A sender said it went on with a transfer it had paused.
    Continued {
        /// The sender.
        peer: PeerKey,
        /// The transfer.
        transfer: TransferId,
        /// The batch it is for, in its sender's namespace.
        batch_id: BatchId,
    },
    /// A segment was authenticated and stored durably, and is acknowledged.
    Progress {
        /// The sender.
        peer: PeerKey,
        /// The transfer.
        transfer: TransferId,
        /// The segment's index.
        index: u64,
        /// Its ciphertext bytes (what it counts against quotas).
        bytes: u64,
    },
    /// A transfer's completion was checked, its batch stored and its receipt
    /// signed.
    Completed {
        /// The sender.
        peer: PeerKey,
        /// The batch, in the sender's namespace.
        batch_id: BatchId,
        /// The transfer that became the batch.
        transfer: TransferId,
        /// Its segments.
        segments: u64,
        /// Its plaintext bytes.
        bytes: u64,
        /// The batch it replaced, whose data is freed once no retrieval reads it.
        replaced: Option<TransferId>,
    },
    /// A sender sent content the server already holds (an identical re-send, or a
    /// repeated completion): the stored receipt was returned, nothing stored.
    AlreadyStored {
        /// The sender.
        peer: PeerKey,
        /// The batch's transfer.
        transfer: TransferId,
    },
    /// An open transfer ended without a batch: its segments and secret are
    /// deleted and its quota freed.
    Cancelled {
        /// The key that sent it.
        owner: [u8; 32],
        /// The transfer.
        transfer: TransferId,
        /// The batch it is for, in its sender's namespace.
        batch_id: BatchId,
        /// Why it ended.
        why: CancelReason,
    },
    /// A retriever was sent a batch, or the part of it that it asked for.
    Retrieved {
        /// The retriever.
        peer: PeerKey,
        /// The batch's transfer.
        transfer: TransferId,
        /// The batch, in its sender's namespace.
        batch_id: BatchId,
        /// Segments sent.
        segments: u64,
        /// Ciphertext bytes sent.
        bytes: u64,
        /// Whether it asked for a byte range rather than the whole batch.
        ranged: bool,
    },
    /// A retriever went away (it cancelled, or its connection was lost) before
    /// it was sent all it asked for.
    RetrievalStopped {
        /// The retriever.
        peer: PeerKey,
        /// The batch's transfer.
        transfer: TransferId,
        /// The batch, in its sender's namespace.
        batch_id: BatchId,
        /// Segments sent before it went away.
        segments: u64,
        /// Segments it had asked for.
        wanted: u64,
    },
    /// A stored batch was deleted.
    Deleted {
        /// The key that asked.
        peer: PeerKey,
        /// The batch's owner (the key that sent it).
        owner: [u8; 32],
        /// The batch's transfer.
        transfer: TransferId,
        /// The batch, in its sender's namespace.
        batch_id: BatchId,
        /// Its plaintext bytes.
        bytes: u64,
    },
    /// A flow was refused: the peer was told `code` and `message`.
    Failed {
        /// The peer.
        peer: PeerKey,
        /// What the peer was told.
        code: RefuseCode,
        /// The refusal's words.
        message: String,
    },
}

/// Why an open transfer was [cancelled](ServerEvent::Cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// Its sender aborted it (`mftq abort`, or Ctrl-C with `--cancel-on-interrupt`).
    Aborted,
    /// Its deadline passed.
    Expired,
    /// It was given up, long idle, to make room for a new transfer of its sender.
    Abandoned,
    /// Its sender lost its access ([`Server::abort_transfers_of`](super::Server::abort_transfers_of)).
    AccessRevoked,
}

impl CancelReason {
    /// One word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Aborted => "aborted by its sender",
            CancelReason::Expired => "expired",
            CancelReason::Abandoned => "abandoned",
            CancelReason::AccessRevoked => "access revoked",
        }
    }
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServerEvent {
    /// Writes the event to the log, with its fields as structured fields.
    pub(super) fn log(&self) {
        match self {
            ServerEvent::Opened {
                peer,
                batch_id,
                transfer,
                replace,
            } => tracing::info!(%peer, batch = %batch_id, %transfer, replace, "transfer opened"),
            ServerEvent::Resumed {
                peer,
                transfer,
                batch_id,
            } => tracing::info!(%peer, batch = %batch_id, %transfer, "transfer resumed"),
            ServerEvent::Paused {
                peer,
                transfer,
                batch_id,
            } => {
                tracing::info!(%peer, batch = %batch_id, %transfer, "transfer paused by its sender")
            }
            ServerEvent::Continued {
                peer,
                transfer,
                batch_id,
            } => {
                tracing::info!(%peer, batch = %batch_id, %transfer, "transfer continued by its sender")
            }
            ServerEvent::Progress {
                peer,
                transfer,
                index,
                bytes,
            } => tracing::debug!(%peer, %transfer, index, bytes, "segment stored"),
            ServerEvent::Completed {
                peer,
                batch_id,
                transfer,
                segments,
                bytes,
                replaced,
            } => match replaced {
                Some(old) => tracing::info!(
                    %peer, batch = %batch_id, %transfer, segments, bytes, replaced = %old,
                    "batch completed, replacing the stored one"
                ),
                None => tracing::info!(
                    %peer, batch = %batch_id, %transfer, segments, bytes, "batch completed"
                ),
            },
            ServerEvent::AlreadyStored { peer, transfer } => {
                tracing::info!(%peer, %transfer, "same content sent again; stored receipt returned")
            }
            ServerEvent::Cancelled {
                owner,
                transfer,
                batch_id,
                why,
            } => tracing::info!(
                owner = crate::wire::values::hex(owner),
                batch = %batch_id,
                %transfer,
                why = why.as_str(),
                "open transfer cancelled"
            ),
            ServerEvent::Retrieved {
                peer,
                transfer,
                batch_id,
                segments,
                bytes,
                ranged,
            } => tracing::info!(
                %peer, batch = %batch_id, %transfer, segments, bytes, ranged, "batch retrieved"
            ),
            ServerEvent::RetrievalStopped {
                peer,
                transfer,
                batch_id,
                segments,
                wanted,
            } => tracing::info!(
                %peer, batch = %batch_id, %transfer, segments, wanted,
                "retrieval stopped by the retriever"
            ),
            ServerEvent::Deleted {
                peer,
                owner,
                transfer,
                batch_id,
                bytes,
            } => tracing::info!(
                %peer,
                owner = crate::wire::values::hex(owner),
                batch = %batch_id,
                %transfer,
                bytes,
                "batch deleted"
            ),
            ServerEvent::Failed {
                peer,
                code,
                message,
            } => tracing::info!(%peer, %code, reason = %message, "refused"),
        }
    }
}
