//! The model of one direction, without any I/O: given a packet's arrival time and
//! size, decide whether it is dropped and when it is delivered. Time is an argument,
//! so the arithmetic is unit-tested without root or sleeps.

use std::time::{Duration, Instant};

use crate::conditions::{LinkConditions, QueueLimit};

/// A small, fast, seeded PRNG (SplitMix64): good enough for loss and jitter, and
/// reproducible from its seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n] (inclusive).
    pub(crate) fn up_to(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            // Multiply-shift: bias below 2^-64 * n, irrelevant here.
            Some(m) => ((u128::from(self.next_u64()) * u128::from(m)) >> 64) as u64,
            None => self.next_u64(),
        }
    }
}

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Dropped: the direction is a blackhole.
    Blackhole,
    /// Dropped at random.
    Loss,
    /// Tail-dropped: the bottleneck queue is full.
    Queue,
    /// Delivered at this time.
    Deliver(Instant),
}

/// One direction's state: its conditions, the bottleneck's clock and the last
/// delivery time (deliveries never go backwards).
#[derive(Debug)]
pub(crate) struct Shaper {
    conditions: LinkConditions,
    rng: Rng,
    /// When the bottleneck will have sent every packet accepted so far.
    link_free_at: Option<Instant>,
    /// Delivery time of the last accepted packet.
    last_delivery: Option<Instant>,
}

impl Shaper {
    pub(crate) fn new(conditions: LinkConditions, seed: u64) -> Self {
        Shaper {
            conditions,
            rng: Rng::new(seed),
            link_free_at: None,
            last_delivery: None,
        }
    }

    /// New conditions for packets arriving from now on. The bottleneck's backlog and
    /// the delivery order carry over.
    pub(crate) fn set_conditions(&mut self, conditions: LinkConditions) {
        self.conditions = conditions;
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`.
    pub(crate) fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        let c = &self.conditions;
        if c.blackhole {
            return Verdict::Blackhole;
        }
        if c.loss > 0.0 && self.rng.next_f64() < c.loss {
            return Verdict::Loss;
        }
        let departure = match c.rate_bits_per_sec {
            None => now,
            Some(rate) => {
                let start = self.link_free_at.map_or(now, |free| free.max(now));
                let backlog = start - now;
                let tx = transmission_time(len as u64, rate);
                let full = match c.queue {
                    QueueLimit::Time(limit) => backlog + tx > limit,
                    QueueLimit::Bytes(limit) => backlog_bytes(backlog, rate) + len as u64 > limit,
                };
                if full {
                    return Verdict::Queue;
                }
                let departure = start + tx;
                self.link_free_at = Some(departure);
                departure
            }
        };
        let jitter = match u64::try_from(c.jitter.as_nanos()) {
            Ok(0) => Duration::ZERO,
            Ok(max) => Duration::from_nanos(self.rng.up_to(max)),
            Err(_) => c.jitter,
        };
        let mut due = departure + c.delay + jitter;
        if let Some(last) = self.last_delivery {
            due = due.max(last);
        }
        self.last_delivery = Some(due);
        Verdict::Deliver(due)
    }
}

/// How long `len` bytes take at `rate` bit/s.
fn transmission_time(len: u64, rate: u64) -> Duration {
    let nanos = u128::from(len) * 8 * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How many bytes `backlog` of transmission time is at `rate` bit/s.
fn backlog_bytes(backlog: Duration, rate: u64) -> u64 {
    let bytes = backlog.as_nanos() * u128::from(rate) / 8 / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn deliver(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver(t) => t,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..1000).all(|_| r.up_to(10) <= 10));
        assert!((0..1000).any(|_| r.up_to(10) == 10));
        assert_eq!(r.up_to(0), 0);
    }

    #[test]
    fn perfect_link_delivers_at_once() {
        let mut s = Shaper::new(LinkConditions::default(), 1);
        let now = Instant::now();
        assert_eq!(s.admit(now, 1500), Verdict::Deliver(now));
    }

    #[test]
    fn delay_is_added() {
        let mut s = Shaper::new(LinkConditions::from_rtt(50 * MS), 1);
        let now = Instant::now();
        assert_eq!(deliver(s.admit(now, 100)) - now, 25 * MS);
    }

    #[test]
    fn rate_serialises_back_to_back_packets() {
        // 1500 bytes at 12 Mbit/s take exactly 1 ms.
        let c = LinkConditions {
            rate_bits_per_sec: Some(12_000_000),
            ..Default::default()
        };
        let mut s = Shaper::new(c, 1);
        let now = Instant::now();
        for i in 1..=10u32 {
            assert_eq!(deliver(s.admit(now, 1500)) - now, i * MS);
        }
        // After the link has drained, a packet only waits for itself.
        let later = now + 100 * MS;
        assert_eq!(deliver(s.admit(later, 1500)) - later, MS);
    }

    #[test]
    fn time_queue_tail_drops() {
        // 1 ms per packet, 10 ms of queue: 10 packets fit in a burst, the rest drop.
        let c = LinkConditions {
            rate_bits_per_sec: Some(12_000_000),
            queue: QueueLimit::Time(10 * MS),
            ..Default::default()
        };
        let mut s = Shaper::new(c, 1);
        let now = Instant::now();
        let verdicts: Vec<_> = (0..15).map(|_| s.admit(now, 1500)).collect();
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| matches!(v, Verdict::Deliver(_)))
                .count(),
            10
        );
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::Queue));
        // Once 3 ms have drained, 3 more fit.
        let later = now + 3 * MS;
        let accepted = (0..5)
            .filter(|_| matches!(s.admit(later, 1500), Verdict::Deliver(_)))
            .count();
        assert_eq!(accepted, 3);
    }

    #[test]
    fn byte_queue_matches_time_queue() {
        let c = LinkConditions {
            rate_bits_per_sec: Some(12_000_000),
            queue: QueueLimit::Bytes(15_000),
            ..Default::default()
        };
        let mut s = Shaper::new(c, 1);
        let now = Instant::now();
        let accepted = (0..15)
            .filter(|_| matches!(s.admit(now, 1500), Verdict::Deliver(_)))
            .count();
        assert_eq!(accepted, 10);
    }

    #[test]
    fn loss_rate_matches() {
        let c = LinkConditions {
            loss: 0.05,
            ..Default::default()
        };
        let mut s = Shaper::new(c, 42);
        let now = Instant::now();
        let n = 200_000;
        let lost = (0..n)
            .filter(|_| s.admit(now, 100) == Verdict::Loss)
            .count();
        let rate = lost as f64 / n as f64;
        assert!((rate - 0.05).abs() < 0.002, "{rate}");
    }

    #[test]
    fn jitter_is_bounded_and_never_reorders() {
        let c = LinkConditions {
            delay: 10 * MS,
            jitter: 5 * MS,
            ..Default::default()
        };
        let mut s = Shaper::new(c, 3);
        let start = Instant::now();
        let mut last = start;
        let mut spread = Vec::new();
        for i in 0..10_000u32 {
            // One packet every 100 µs, far closer than the jitter.
            let now = start + i * Duration::from_micros(100);
            let due = deliver(s.admit(now, 100));
            assert!(due >= last, "reordered");
            last = due;
            spread.push(due - now);
        }
        assert!(spread.iter().all(|d| *d >= 10 * MS));
        // Bunching can hold a packet behind an earlier one's jitter, but never past
        // the largest delay plus jitter.
        assert!(
            spread.iter().all(|d| *d <= 15 * MS),
            "{:?}",
            spread.iter().max()
        );
        // With widely spaced packets, the extra delay spans the whole range.
        let mut s = Shaper::new(c, 3);
        let extras: Vec<Duration> = (0..1000u32)
            .map(|i| start + i * 100 * MS)
            .map(|t| deliver(s.admit(t, 100)) - t - 10 * MS)
            .collect();
        assert!(extras.iter().any(|e| *e < MS) && extras.iter().any(|e| *e > 4 * MS));
    }

    #[test]
    fn blackhole_drops_everything() {
        let c = LinkConditions {
            blackhole: true,
            ..Default::default()
        };
        let mut s = Shaper::new(c, 1);
        assert_eq!(s.admit(Instant::now(), 100), Verdict::Blackhole);
        s.set_conditions(LinkConditions::default());
        assert!(matches!(s.admit(Instant::now(), 100), Verdict::Deliver(_)));
    }

    #[test]
    fn conversions() {
        assert_eq!(
            transmission_time(1500, 1_000_000_000),
            Duration::from_micros(12)
        );
        assert_eq!(backlog_bytes(Duration::from_millis(1), 12_000_000), 1500);
    }
}
