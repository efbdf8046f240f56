//! Per-direction packet counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::conditions::Direction;

/// What one direction of the link has done so far.
///
/// Every packet read is in `packets_in`; it then ends in exactly one of the drop
/// counters or in `packets_delivered`, or is still on its way
/// ([`in_flight`](DirectionStats::in_flight)). Bytes are whole IP packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets that entered the link.
    pub packets_in: u64,
    /// Bytes that entered the link.
    pub bytes_in: u64,
    /// Packets dropped by random loss.
    pub dropped_loss: u64,
    /// Packets tail-dropped because the bottleneck queue was full (also: the
    /// emulator's own bound of 65,536 packets in flight was hit, or the receiving
    /// interface refused the packet because it was down).
    pub dropped_queue: u64,
    /// Packets dropped by a blackhole, including those discarded in flight when it
    /// was turned on.
    pub dropped_blackhole: u64,
    /// Packets written to the other side.
    pub packets_delivered: u64,
    /// Bytes written to the other side.
    pub bytes_delivered: u64,
    /// The sum over delivered packets of how late each was written (after its due
    /// time): the emulator's own timing error. With the CPU to spare it is tens of
    /// µs per packet; much more means the relay was starved of CPU and the link was
    /// slower and more jittery than configured.
    pub lateness_total: Duration,
    /// The largest lateness of a delivered packet.
    pub lateness_max: Duration,
}

impl DirectionStats {
    /// Packets neither dropped nor delivered yet.
    pub fn in_flight(&self) -> u64 {
        self.packets_in.saturating_sub(
            self.dropped_loss
                + self.dropped_queue
                + self.dropped_blackhole
                + self.packets_delivered,
        )
    }

    /// The mean lateness of delivered packets (see
    /// [`lateness_total`](DirectionStats::lateness_total)).
    pub fn lateness_mean(&self) -> Duration {
        match u32::try_from(self.packets_delivered) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.lateness_total / n,
            Err(_) => Duration::from_secs_f64(
                self.lateness_total.as_secs_f64() / self.packets_delivered as f64,
            ),
        }
    }

    /// All dropped packets, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_blackhole
    }
}

/// Both directions' counters, from [`Link::stats`](crate::Link::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets from A to B.
    pub a_to_b: DirectionStats,
    /// Packets from B to A.
    pub b_to_a: DirectionStats,
}

impl LinkStats {
    /// One direction's counters.
    pub fn direction(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        }
    }
}

/// The live counters, written by one relay thread and read by anyone.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) packets_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) dropped_loss: AtomicU64,
    pub(crate) dropped_queue: AtomicU64,
    pub(crate) dropped_blackhole: AtomicU64,
    pub(crate) packets_delivered: AtomicU64,
    pub(crate) bytes_delivered: AtomicU64,
    pub(crate) lateness_total_ns: AtomicU64,
    pub(crate) lateness_max_ns: AtomicU64,
}

impl Counters {
    /// Adds to a counter. Release, so that a reader who sees a packet's outcome also
    /// sees it counted in (on x86 this costs the same as relaxed).
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Release);
    }

    /// Notes that a packet was written `late` after its due time.
    pub(crate) fn late(&self, late: Duration) {
        let nanos = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        self.lateness_total_ns.fetch_add(nanos, Ordering::Relaxed);
        self.lateness_max_ns.fetch_max(nanos, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DirectionStats {
        // Read the outcomes before the inputs, so a snapshot never shows more packets
        // out than in.
        let packets_delivered = self.packets_delivered.load(Ordering::Acquire);
        let bytes_delivered = self.bytes_delivered.load(Ordering::Acquire);
        let dropped_loss = self.dropped_loss.load(Ordering::Acquire);
        let dropped_queue = self.dropped_queue.load(Ordering::Acquire);
        let dropped_blackhole = self.dropped_blackhole.load(Ordering::Acquire);
        DirectionStats {
            packets_in: self.packets_in.load(Ordering::Acquire),
            bytes_in: self.bytes_in.load(Ordering::Acquire),
            dropped_loss,
            dropped_queue,
            dropped_blackhole,
            packets_delivered,
            bytes_delivered,
            lateness_total: Duration::from_nanos(self.lateness_total_ns.load(Ordering::Relaxed)),
            lateness_max: Duration::from_nanos(self.lateness_max_ns.load(Ordering::Relaxed)),
        }
    }
}
