//! What a transfer reports while it runs.

use std::time::Duration;

use crate::wire::TransferId;

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
    /// More segments were stored by the server (for a retriever: received).
    Progress {
        /// Plaintext bytes acknowledged so far.
        bytes: u64,
        /// Segments acknowledged so far.
        segments: u64,
        /// Sealed bytes of those segments (ciphertext with its tags, after any
        /// compression): what crossed the network and what the server holds.
        sealed: u64,
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
    /// The server holds this batch already, with the same content (its size and
    /// SHA-256): nothing was sent, and its stored receipt stands.
    AlreadyStored {
        /// Plaintext size.
        size: u64,
    },
    /// The transfer this send resumed held segments of other content (the input
    /// changed since it was interrupted): it was aborted, so the next send of
    /// this batch starts afresh.
    Restarted,
    /// The sender was [paused](super::Sender::pause): its sends read no more
    /// input until resumed.
    Paused,
    /// The transfers are being [restarted](super::Sender::restart) on a new
    /// connection: they reconnect and go on from what the other side holds.
    Reconnecting,
    /// The sender was [resumed](super::Sender::resume) after a pause.
    Continued,
    /// The send was [cancelled](super::Sender::cancel), and the transfer it
    /// opened aborted on the server.
    Cancelled,
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
/// ([`Sender::send_with`](super::Sender::send_with)).
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
