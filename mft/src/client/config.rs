//! Client settings and the data a send keeps in flight.

use std::time::Duration;

use flow::{Endpoint, PeerKey};

use crate::compress::Compress;
use crate::error::{Error, Result};
use crate::wire::{self};

/// The default [`ClientConfig::target_rate`]: 1 Gbit/s.
pub const DEFAULT_TARGET_RATE: u64 = 1_000_000_000;

/// The most segments one flow keeps in flight.
pub const MAX_SEGMENTS_IN_FLIGHT: usize = 64;

/// The least data a sender keeps in flight, whatever the path: enough that every
/// flow has its next segments queued while the server stores one, even on loopback.
pub const MIN_BYTES_IN_FLIGHT: u64 = 32 << 20;

/// The most data a sender keeps in flight (and so holds for resending), whatever
/// the path: the sender's memory bound.
pub const MAX_BYTES_IN_FLIGHT: u64 = 256 << 20;

/// How much a send keeps in flight, in segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Segments sent and unacknowledged over all flows together, at most.
    pub total: usize,
    /// Segments one flow keeps sent and unacknowledged, at most.
    pub per_flow: usize,
}

impl InFlight {
    /// What fills a path of `rate` bits per second and round trip `rtt` with
    /// `chunk`-byte segments over `streams` flows: twice the bandwidth-delay product
    /// (so acknowledgements delayed by queues and repaired losses do not idle the
    /// flows), within [`MIN_BYTES_IN_FLIGHT`]`..=`[`MAX_BYTES_IN_FLIGHT`] and never
    /// fewer than one segment per flow; spread over the flows, at least two and at
    /// most [`MAX_SEGMENTS_IN_FLIGHT`] each.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mft::InFlight;
    /// // Loopback: the 32 MiB floor, 32 segments of 1 MiB, 4 per flow over 8 flows.
    /// let lo = InFlight::for_path(1_000_000_000, Duration::from_micros(100), 1 << 20, 8);
    /// assert_eq!(lo, InFlight { total: 32, per_flow: 4 });
    /// // 1 Gbit/s at 300 ms: 75 MB in 1 MiB segments, 36 per flow over 2 flows.
    /// let far = InFlight::for_path(1_000_000_000, Duration::from_millis(300), 1 << 20, 2);
    /// assert_eq!(far, InFlight { total: 72, per_flow: 36 });
    /// // 32 flows of 4 MiB segments stay within 256 MiB: 64 segments, 2 per flow.
    /// let wide = InFlight::for_path(10_000_000_000, Duration::from_secs(1), 4 << 20, 32);
    /// assert_eq!(wide, InFlight { total: 64, per_flow: 2 });
    /// ```
    pub fn for_path(rate: u64, rtt: Duration, chunk: u32, streams: usize) -> Self {
        let chunk = u64::from(chunk.max(1));
        let streams = streams.max(1);
        let bytes = (2.0 * rate as f64 / 8.0 * rtt.as_secs_f64()) as u64;
        let bytes = bytes.clamp(MIN_BYTES_IN_FLIGHT, MAX_BYTES_IN_FLIGHT);
        let total = (bytes.div_ceil(chunk) as usize).max(streams);
        let per_flow = total.div_ceil(streams).clamp(2, MAX_SEGMENTS_IN_FLIGHT);
        InFlight { total, per_flow }
    }
}

/// Client settings, validated before anything is sent.
///
/// ```
/// use flow::{Endpoint, Identity};
/// let server = Identity::generate().public_key();
/// let endpoint: Endpoint = "quic://127.0.0.1:4433".parse().unwrap();
/// let mut config = mft::ClientConfig::new(endpoint, server);
/// config.chunk_size(4 << 20).streams(16);
/// assert!(config.validate().is_ok());
/// assert!(config.clone().streams(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(super) endpoint: Endpoint,
    pub(super) server_key: PeerKey,
    pub(super) chunk_size: u32,
    pub(super) streams: usize,
    pub(super) segments_in_flight: Option<usize>,
    pub(super) target_rate: u64,
    pub(super) retries: u32,
    pub(super) dial_timeout: Duration,
    pub(super) voucher: Vec<u8>,
    pub(super) replace: bool,
    pub(super) compress: Compress,
}

impl ClientConfig {
    /// Talks to the server at `endpoint`, which must prove `server_key`.
    pub fn new(endpoint: Endpoint, server_key: PeerKey) -> Self {
        ClientConfig {
            endpoint,
            server_key,
            chunk_size: 1 << 20,
            streams: 8,
            segments_in_flight: None,
            target_rate: DEFAULT_TARGET_RATE,
            retries: 5,
            dial_timeout: Duration::from_secs(10),
            voucher: Vec::new(),
            replace: false,
            compress: Compress::Auto,
        }
    }

    /// Plaintext bytes per segment (default 1 MiB); the server may lower it.
    pub fn chunk_size(&mut self, bytes: u32) -> &mut Self {
        self.chunk_size = bytes;
        self
    }

    /// Segment flows in parallel (default 8).
    pub fn streams(&mut self, count: usize) -> &mut Self {
        self.streams = count;
        self
    }

    /// Segments each flow keeps sent but unacknowledged, so no flow idles for a
    /// round trip between segments. By default it is derived when the transfer
    /// opens, from the [target rate](Self::target_rate) and the connection's
    /// measured round-trip time (see [`InFlight::for_path`]), with all flows
    /// together holding at most 32 to 256 MiB; setting it fixes it per flow, and
    /// `streams × segments_in_flight × chunk_size` then bounds the data in flight and
    /// the memory the sender holds for resending.
    pub fn segments_in_flight(&mut self, count: usize) -> &mut Self {
        self.segments_in_flight = Some(count);
        self
    }

    /// The rate, in bits per second, the path is expected to carry at most
    /// (default 1 Gbit/s): a hint for sizing the data in flight, never a limit.
    pub fn target_rate(&mut self, bits_per_second: u64) -> &mut Self {
        self.target_rate = bits_per_second;
        self
    }

    /// Failures to retry before giving up (default 5).
    pub fn retries(&mut self, count: u32) -> &mut Self {
        self.retries = count;
        self
    }

    /// The bound on each dial (default 10 s).
    pub fn dial_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.dial_timeout = timeout;
        self
    }

    /// An application token (a JWT, say) for the server's authoriser.
    pub fn voucher(&mut self, voucher: impl Into<Vec<u8>>) -> &mut Self {
        self.voucher = voucher.into();
        self
    }

    /// Whether a send replaces a batch of the same id that this key holds
    /// (default false: such a send succeeds only if the batch holds the same
    /// content, and then returns its stored receipt). The old batch stays
    /// retrievable until the new one completes, and is swapped out at once.
    pub fn replace(&mut self, replace: bool) -> &mut Self {
        self.replace = replace;
        self
    }

    /// Whether sends compress their segments with zstd before sealing them
    /// (default [`Compress::Auto`]: what compresses, if the server agrees). A
    /// segment that would not shrink is always sent as it is; the retriever
    /// needs no setting. See PROTOCOL.md §14 for what compression shows an
    /// observer of ciphertext lengths.
    ///
    /// ```
    /// # let endpoint: flow::Endpoint = "quic://127.0.0.1:4433".parse().unwrap();
    /// # let server_key = flow::Identity::generate().public_key();
    /// let mut config = mft::ClientConfig::new(endpoint, server_key);
    /// config.compress(mft::Compress::Off); // input known not to compress
    /// ```
    pub fn compress(&mut self, compress: Compress) -> &mut Self {
        self.compress = compress;
        self
    }

    /// The data a send keeps in flight on a path of round trip `rtt` with
    /// `chunk`-byte segments: fixed per flow if [`segments_in_flight`] was set,
    /// else [`InFlight::for_path`] at the target rate.
    ///
    /// [`segments_in_flight`]: ClientConfig::segments_in_flight
    pub(super) fn in_flight(&self, rtt: Duration, chunk: u32) -> InFlight {
        match self.segments_in_flight {
            Some(per_flow) => InFlight {
                total: per_flow * self.streams,
                per_flow,
            },
            None => InFlight::for_path(self.target_rate, rtt, chunk, self.streams),
        }
    }

    /// Checks every field, reporting the first that is wrong by name.
    pub fn validate(&self) -> Result<()> {
        if !(wire::MIN_CHUNK_SIZE..=wire::MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(Error::config(
                "chunk size",
                format!(
                    "{} is outside {}..={} bytes",
                    self.chunk_size,
                    wire::MIN_CHUNK_SIZE,
                    wire::MAX_CHUNK_SIZE
                ),
            ));
        }
        if !(1..=1024).contains(&self.streams) {
            return Err(Error::config(
                "streams",
                format!("{} is outside 1..=1024", self.streams),
            ));
        }
        if let Some(count) = self.segments_in_flight
            && !(1..=MAX_SEGMENTS_IN_FLIGHT).contains(&count)
        {
            return Err(Error::config(
                "segments in flight",
                format!("{count} is outside 1..={MAX_SEGMENTS_IN_FLIGHT}"),
            ));
        }
        if self.target_rate < 1_000_000 {
            return Err(Error::config("target rate", "at least 1 Mbit/s"));
        }
        if self.voucher.len() > wire::MAX_VOUCHER {
            return Err(Error::config(
                "voucher",
                format!(
                    "{} bytes exceeds the limit of {}",
                    self.voucher.len(),
                    wire::MAX_VOUCHER
                ),
            ));
        }
        if self.retries > 1000 {
            return Err(Error::config("retries", "at most 1000"));
        }
        if self.dial_timeout.is_zero() {
            return Err(Error::config("dial timeout", "must be above zero"));
        }
        Ok(())
    }
}
