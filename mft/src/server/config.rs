//! The server's limits.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::wire;

/// Server limits, with safe defaults.
///
/// ```
/// let mut config = mft::ServerConfig::default();
/// config.max_chunk_size(4 << 20).unwrap().max_metadata(16 << 10);
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(super) max_chunk_size: u32,
    pub(super) max_metadata: u32,
    pub(super) compression: bool,
    pub(super) max_open_transfers_per_peer: usize,
    pub(super) max_flows_per_peer: usize,
    pub(super) max_pending_bytes: usize,
    pub(super) max_pending_bytes_per_peer: usize,
    pub(super) transfer_deadline: Duration,
    pub(super) first_message_timeout: Duration,
    pub(super) flow_idle_timeout: Duration,
    pub(super) abandoned_after: Duration,
    pub(super) max_open_bytes_per_peer: u64,
    pub(super) max_bytes_per_peer: u64,
    pub(super) max_segments: u64,
    pub(super) busy_retry_after: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_chunk_size: 4 << 20,
            max_metadata: 64 << 10,
            compression: true,
            max_open_transfers_per_peer: 16,
            max_flows_per_peer: 256,
            max_pending_bytes: 256 << 20,
            max_pending_bytes_per_peer: 64 << 20,
            transfer_deadline: Duration::from_secs(24 * 3600),
            first_message_timeout: Duration::from_secs(10),
            flow_idle_timeout: Duration::from_secs(60),
            abandoned_after: Duration::from_secs(600),
            max_open_bytes_per_peer: 1 << 40,
            max_bytes_per_peer: 16 << 40,
            max_segments: 1 << 24,
            busy_retry_after: Duration::from_secs(1),
        }
    }
}

impl ServerConfig {
    /// The largest chunk a sender may use (default 4 MiB; at most 16 MiB). Segments
    /// larger than this are refused before they are buffered.
    pub fn max_chunk_size(&mut self, bytes: u32) -> Result<&mut Self> {
        if !(wire::MIN_CHUNK_SIZE..=wire::MAX_CHUNK_SIZE).contains(&bytes) {
            return Err(Error::config(
                "max chunk size",
                format!(
                    "{bytes} is outside {}..={}",
                    wire::MIN_CHUNK_SIZE,
                    wire::MAX_CHUNK_SIZE
                ),
            ));
        }
        self.max_chunk_size = bytes;
        Ok(self)
    }

    /// Whether a transfer whose hello offers zstd settles on it (default true).
    /// Compression costs the server nothing (it stores and relays what the
    /// sender sealed) and saves its disk and the retriever's link; turn it off
    /// where what ciphertext lengths reveal about content matters more (see
    /// PROTOCOL.md §14).
    pub fn compression(&mut self, accept: bool) -> &mut Self {
        self.compression = accept;
        self
    }

    /// The largest metadata accepted (default 64 KiB; at most 1 MiB).
    pub fn max_metadata(&mut self, bytes: u32) -> &mut Self {
        self.max_metadata = bytes.min(wire::MAX_METADATA as u32);
        self
    }

    /// Open (incomplete) transfers one key may have at once (default 16).
    pub fn max_open_transfers_per_peer(&mut self, count: usize) -> &mut Self {
        self.max_open_transfers_per_peer = count;
        self
    }

    /// Flows one key may have being served at once (default 256); beyond that new
    /// flows are refused as busy.
    pub fn max_flows_per_peer(&mut self, count: usize) -> &mut Self {
        self.max_flows_per_peer = count.max(1);
        self
    }

    /// Segment bytes held in memory at once, server-wide (default 256 MiB); flows
    /// wait (and QUIC flow control slows senders) beyond it.
    pub fn max_pending_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// The share of those bytes one key may hold (default 64 MiB, at most the
    /// server's): its flows wait beyond it, so one key's stalled flows, each
    /// announcing a large segment, cannot hold the memory other keys need.
    pub fn max_pending_bytes_per_peer(&mut self, bytes: usize) -> &mut Self {
        self.max_pending_bytes_per_peer = bytes;
        self
    }

    /// How long a transfer may stay open before it is reclaimed (default 24 h).
    pub fn transfer_deadline(&mut self, deadline: Duration) -> &mut Self {
        self.transfer_deadline = deadline;
        self
    }

    /// How long a new flow may take to start its first message, that is to send
    /// its 4-byte length (default 10 s). The rest of the message is read under
    /// the flow idle timeout, so a big first segment on a slow link is not cut off.
    pub fn first_message_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.first_message_timeout = timeout;
        self
    }

    /// How long a read or write on a flow may make no progress before the flow is
    /// dropped (default 60 s): a client that stops sending or stops reading cannot
    /// pin a flow slot, its buffers and its share of the pending bytes.
    pub fn flow_idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.flow_idle_timeout = timeout;
        self
    }

    /// How long an open transfer must have been idle before a hello of its sender,
    /// at its limit of open transfers, gives it up to make room (default 10 min).
    /// Until then an interrupted send keeps what the server holds, for its
    /// resume, until its deadline; a key is never locked out by sends it left.
    pub fn abandoned_after(&mut self, idle: Duration) -> &mut Self {
        self.abandoned_after = idle;
        self
    }

    /// The bytes one key's open transfers may hold together (default 1 TiB):
    /// beyond, its segments are refused as `QuotaExceeded` until it completes or
    /// aborts one. Bounds what sends that are never completed can take.
    pub fn max_open_bytes_per_peer(&mut self, bytes: u64) -> &mut Self {
        self.max_open_bytes_per_peer = bytes;
        self
    }

    /// The bytes one key may hold in all, open transfers and completed batches
    /// together (default 16 TiB): beyond, its segments are refused as
    /// `QuotaExceeded`.
    pub fn max_bytes_per_peer(&mut self, bytes: u64) -> &mut Self {
        self.max_bytes_per_peer = bytes;
        self
    }

    /// The most segments one batch may have (default 2²⁴).
    pub fn max_segments(&mut self, count: u64) -> &mut Self {
        self.max_segments = count;
        self
    }

    /// The delay a busy server asks clients to wait (default 1 s).
    pub fn busy_retry_after(&mut self, delay: Duration) -> &mut Self {
        self.busy_retry_after = delay;
        self
    }

    pub(super) fn max_segment_message(&self) -> usize {
        wire::SEGMENT_HEADER_LEN + self.max_chunk_size as usize + wire::TAG_LEN + 64
    }
}
