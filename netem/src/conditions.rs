//! What the link does to packets: the conditions of one direction, and the whole
//! link's configuration.

use std::fmt;
use std::time::Duration;

use crate::Error;

/// One end of the link: a network namespace with one TUN interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first namespace, address 198.18.0.1 (by convention the client's).
    A,
    /// The second namespace, address 198.18.0.2 (by convention the server's).
    B,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The direction of packets sent from this side.
    pub fn outgoing(self) -> Direction {
        match self {
            Side::A => Direction::AToB,
            Side::B => Direction::BToA,
        }
    }
}

/// A direction of the link; each has its own conditions, queue and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets sent by A to B.
    AToB,
    /// Packets sent by B to A.
    BToA,
}

impl Direction {
    /// Both directions, A→B first.
    pub const BOTH: [Direction; 2] = [Direction::AToB, Direction::BToA];

    /// The side packets in this direction come from.
    pub fn from_side(self) -> Side {
        match self {
            Direction::AToB => Side::A,
            Direction::BToA => Side::B,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 1,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::AToB => "A→B",
            Direction::BToA => "B→A",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How much backlog the bottleneck queue holds before it tail-drops, like a router's
/// buffer. Only used with a rate limit (without one nothing ever queues).
///
/// A packet is dropped if, counting itself, the backlog would exceed the limit; so
/// `Bytes(b)` and `Time(b * 8 / rate)` are the same queue, and a limit smaller than
/// one packet drops every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this much transmission time at the configured rate is waiting.
    Time(Duration),
    /// At most this many bytes (whole IP packets) are waiting.
    Bytes(u64),
}

impl Default for QueueLimit {
    /// 100 ms of backlog at the rate.
    fn default() -> Self {
        QueueLimit::Time(Duration::from_millis(100))
    }
}

/// What one direction of the link does to each packet, in this order:
///
/// 1. `blackhole`: drop it;
/// 2. `loss`: drop it with this probability, independently of other packets;
/// 3. `rate_bits_per_sec`: serialise it through a bottleneck of this rate, after the
///    packets already queued (departure = max(arrival, previous departure) +
///    size × 8 / rate), tail-dropping it if the queue would exceed `queue`;
/// 4. `delay` + a uniformly random extra in [0, `jitter`]: deliver it that long after
///    its departure, but never before the packet in front of it (no reordering, so
///    jitter that is large next to the packet spacing bunches packets up).
///
/// Loss comes before the bottleneck, as in Linux's netem: a lost packet takes no
/// bandwidth and no queue space. The rate counts whole IP packets (IP header and
/// payload), as a real link's bit rate counts everything it carries (no link-layer
/// framing is added). The defaults are a perfect link: no delay, no loss, no rate
/// limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConditions {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Largest random extra delay on top of `delay`.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a packet is dropped at random.
    pub loss: f64,
    /// Bottleneck bandwidth in bits per second (`None`: unlimited).
    pub rate_bits_per_sec: Option<u64>,
    /// Bottleneck queue limit (ignored without a rate).
    pub queue: QueueLimit,
    /// Drop every packet (a cut link, for fault tests). Turning it on also discards
    /// the packets already on their way.
    pub blackhole: bool,
}

impl Default for LinkConditions {
    fn default() -> Self {
        LinkConditions {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bits_per_sec: None,
            queue: QueueLimit::default(),
            blackhole: false,
        }
    }
}

impl LinkConditions {
    /// A perfect link whose round trip takes `rtt`: a one-way `delay` of `rtt / 2`
    /// (apply it to both directions, e.g. with [`LinkConfig::symmetric`]).
    pub fn from_rtt(rtt: Duration) -> Self {
        LinkConditions {
            delay: rtt / 2,
            ..LinkConditions::default()
        }
    }

    /// Checks the values are in range.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(Error::InvalidConfig(format!(
                "loss {} is not a probability in 0..=1",
                self.loss
            )));
        }
        if self.rate_bits_per_sec == Some(0) {
            return Err(Error::InvalidConfig(
                "a rate of 0 bit/s would never deliver anything (use blackhole)".into(),
            ));
        }
        Ok(())
    }
}

/// The whole link: the conditions of each direction, the interfaces' MTU, and the
/// seed of the random loss and jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// What happens to packets from A to B.
    pub a_to_b: LinkConditions,
    /// What happens to packets from B to A.
    pub b_to_a: LinkConditions,
    /// MTU of both TUN interfaces, in bytes (68..=65535, default 1500).
    pub mtu: u32,
    /// Seed of the random numbers (loss and jitter). The same seed and the same
    /// packets give the same drops and delays, so tests are reproducible.
    pub seed: u64,
    /// Run the relay threads at real-time priority (SCHED_FIFO 1) if the system
    /// allows it (default: yes). The endpoints of a benchmark on a small machine
    /// keep every core busy; at normal priority they delay the relay by up to
    /// milliseconds (tens of them on 2 saturated cores), which shows as extra delay,
    /// jitter and lost bandwidth. Real-time, the relay is late by microseconds, as a
    /// kernel qdisc (which runs in softirq) would be. Its CPU use is bounded by the
    /// traffic (about half a core at 1 Gbit/s), and the kernel's real-time
    /// throttling keeps 5% of every core for normal threads even in a flood.
    pub realtime: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig::symmetric(LinkConditions::default())
    }
}

impl LinkConfig {
    /// The default seed.
    pub const DEFAULT_SEED: u64 = 0x6d66_7471_6e65_7465;

    /// The same conditions in both directions, MTU 1500, the default seed, relay at
    /// real-time priority.
    pub fn symmetric(conditions: LinkConditions) -> Self {
        LinkConfig {
            a_to_b: conditions,
            b_to_a: conditions,
            mtu: 1500,
            seed: LinkConfig::DEFAULT_SEED,
            realtime: true,
        }
    }

    /// The conditions of one direction.
    pub fn conditions(&self, direction: Direction) -> &LinkConditions {
        match direction {
            Direction::AToB => &self.a_to_b,
            Direction::BToA => &self.b_to_a,
        }
    }

    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), Error> {
        self.a_to_b.validate()?;
        self.b_to_a.validate()?;
        if !(68..=65535).contains(&self.mtu) {
            return Err(Error::InvalidConfig(format!(
                "MTU {} is outside 68..=65535",
                self.mtu
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_rtt_halves() {
        let c = LinkConditions::from_rtt(Duration::from_millis(50));
        assert_eq!(c.delay, Duration::from_millis(25));
        assert_eq!(c.loss, 0.0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn validation() {
        let bad_loss = LinkConditions {
            loss: 1.5,
            ..Default::default()
        };
        assert!(
            bad_loss
                .validate()
                .unwrap_err()
                .to_string()
                .contains("loss")
        );
        let nan = LinkConditions {
            loss: f64::NAN,
            ..Default::default()
        };
        assert!(nan.validate().is_err());
        let zero = LinkConditions {
            rate_bits_per_sec: Some(0),
            ..Default::default()
        };
        assert!(zero.validate().is_err());
        let mut config = LinkConfig::default();
        assert!(config.validate().is_ok());
        config.mtu = 40;
        assert!(config.validate().unwrap_err().to_string().contains("MTU"));
    }

    #[test]
    fn sides_and_directions() {
        assert_eq!(Side::A.peer(), Side::B);
        assert_eq!(Side::B.outgoing(), Direction::BToA);
        assert_eq!(Direction::AToB.from_side(), Side::A);
        assert_eq!(Direction::BToA.to_string(), "B→A");
    }
}
