//! The model-based controller as pure logic: fed "sent", "acked" and "lost" events
//! with explicit times (a [`Duration`] since an arbitrary origin), it answers with a
//! congestion window and the pacing rate it intends. No sockets, no clocks.
//!
//! See the [module documentation](super) for the design.

use std::collections::VecDeque;
use std::time::Duration;

use super::filter::{Extremum, WindowedFilter};

/// Round trips over which the bottleneck bandwidth is the maximum delivery rate.
const BW_WINDOW_ROUNDS: u64 = 10;
/// How long the propagation delay is the minimum RTT sample (microseconds).
const MIN_RTT_WINDOW_US: u64 = 10_000_000;
/// Without an RTT sample near the minimum for this long, drain to re-measure it.
const PROBE_RTT_INTERVAL: Duration = Duration::from_secs(5);
/// How long PROBE_RTT holds the reduced window (at least one round trip too).
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// PROBE_RTT's window, as a fraction of the bandwidth-delay product.
const PROBE_RTT_GAIN: f64 = 0.5;

/// STARTUP's ceiling on the window, as a multiple of the bandwidth-delay product
/// (2/ln 2, the gain that doubles the delivery rate every round trip).
const STARTUP_GAIN: f64 = 2.885;
/// STARTUP ends when the bandwidth grew less than this factor ...
const STARTUP_GROWTH: f64 = 1.25;
/// ... for this many round trips in a row.
const STARTUP_FLAT_ROUNDS: u32 = 3;

/// PROBE_BW's window gains. UP probes for more bandwidth for one round trip; DOWN
/// drains what UP queued (and a little more, so the minimum RTT stays measurable);
/// CRUISE holds exactly one bandwidth-delay product, so no standing queue builds.
const UP_GAIN: f64 = 1.25;
const DOWN_GAIN: f64 = 0.9;
const CRUISE_GAIN: f64 = 1.0;
/// CRUISE lasts a random number of round trips in this range, so flows sharing a
/// bottleneck do not probe in lock step.
const CRUISE_ROUNDS: (u32, u32) = (4, 7);

/// A round trip whose smallest RTT exceeds `min_rtt * QUEUE_FACTOR + QUEUE_SLACK` saw
/// a standing queue the whole time: the path is saturated.
const QUEUE_FACTOR: f64 = 1.25;
/// A round trip whose RTT samples (all but [`CLEAN_OUTLIERS`] of them) stay below
/// `min_rtt * CLEAN_FACTOR + QUEUE_SLACK` saw no queue to speak of: a drop-tail
/// buffer cannot have overflowed, so its losses were random. Only such round trips
/// teach the background loss rate.
const CLEAN_FACTOR: f64 = 1.15;
/// The share of a round trip's RTT samples allowed above the clean threshold (late
/// acknowledgements, timer jitter) before it counts as having seen a queue.
const CLEAN_OUTLIERS: f64 = 0.1;
/// After giving way to a queue, a round trip whose smallest RTT is still above
/// `min_rtt * FLOOR_FACTOR + QUEUE_SLACK` shows the queue was not ours.
const FLOOR_FACTOR: f64 = 1.1;
/// Slack for timer granularity and acknowledgement delay.
const QUEUE_SLACK: Duration = Duration::from_millis(1);
/// Standing-queue round trips in a row that make the model give way.
const QUEUE_ROUNDS: u32 = 2;

/// Loss above the background rate by at least this much (and beyond three standard
/// deviations of the binomial noise) in a round trip that saw a queue is congestion.
const EXCESS_LOSS: f64 = 0.02;
/// Fewest packets lost in a round trip for it to count as congested by loss.
const MIN_LOST_PACKETS: u64 = 3;
/// Per round-trip decay of the background loss estimate's memory.
const LOSS_DECAY: f64 = 0.95;
/// Most of the window given to replacing random losses.
const MAX_LOSS_COMPENSATION: f64 = 0.15;

/// Ack aggregation larger than this many seconds of bandwidth is not believed.
const MAX_EXTRA_ACKED_SECS: f64 = 0.1;
/// The smallest window, in packets.
const MIN_WINDOW_PACKETS: u64 = 4;
/// The shortest propagation delay windows are sized for. Below a few milliseconds
/// (loopback, a LAN) timer granularity, acknowledgement delay and scheduling make
/// deliveries arrive in bursts much longer than the path's delay, and a window of
/// one measured product would starve the path (seen on loopback: a fifth of what
/// CUBIC moves). Long paths are unaffected.
const MIN_WINDOW_RTT: Duration = Duration::from_millis(2);

/// Where the controller is in its cycle of measuring the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Doubling the rate each round trip until the bandwidth stops growing.
    Startup,
    /// Emptying the queue STARTUP built.
    Drain,
    /// Steady state: cycling UP, DOWN, CRUISE.
    ProbeBw(Phase),
    /// Holding little in flight to re-measure the propagation delay.
    ProbeRtt,
}

/// The phases of PROBE_BW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// One round trip at [`UP_GAIN`].
    Up,
    /// One round trip at [`DOWN_GAIN`].
    Down,
    /// Some round trips at [`CRUISE_GAIN`].
    Cruise,
}

/// What was known when a batch of packets left: the delivery-rate sample taken
/// when one of them is the newest packet acknowledged compares these with the state
/// at that moment.
#[derive(Clone, Copy, Debug)]
struct SendRecord {
    /// The packet numbers of the batch.
    first_pn: u64,
    last_pn: u64,
    /// When the batch was sent (all its packets carry this time in quinn).
    sent: Duration,
    /// Connection-level delivered bytes and their time when the batch was sent.
    delivered: u64,
    delivered_time: Duration,
    /// The send time of the newest packet acknowledged when this batch left.
    first_sent: Duration,
    /// Sent while the application had nothing more to send.
    app_limited: bool,
}

/// What one round trip of acknowledgements showed.
#[derive(Clone, Copy, Debug)]
struct Round {
    delivered: u64,
    lost: u64,
    ecn: bool,
    app_limited: bool,
    min_rtt: Duration,
    max_rtt: Duration,
    /// RTT samples, and how many of them were above the clean threshold.
    samples: u32,
    high_samples: u32,
    max_rate: u64,
}

impl Default for Round {
    fn default() -> Self {
        Round {
            delivered: 0,
            lost: 0,
            ecn: false,
            app_limited: false,
            min_rtt: Duration::MAX,
            max_rtt: Duration::ZERO,
            samples: 0,
            high_samples: 0,
            max_rate: 0,
        }
    }
}

/// A fixed-seed generator for the length of CRUISE (SplitMix64).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }
}

/// The model-based controller's state: a model of the path (bottleneck bandwidth,
/// propagation delay, background loss rate, ack aggregation) and the state machine
/// that measures it.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    mtu: u64,
    initial_window: u64,

    // Delivery accounting (draft-cheng-iccrg-delivery-rate-estimation).
    delivered: u64,
    delivered_time: Duration,
    first_sent: Duration,
    in_flight: u64,
    /// Bytes ever sent and declared lost: what is neither lost nor in flight was
    /// delivered.
    sent_total: u64,
    lost_total: u64,
    /// While non-zero, packets sent are app-limited; cleared once this many bytes
    /// have been delivered.
    app_limited_until: u64,
    records: VecDeque<SendRecord>,
    /// The newest packet number sent, and the largest acknowledged.
    last_pn: Option<u64>,
    largest_acked: Option<u64>,
    /// Packet numbers up to this one are ambiguous: quinn numbers each packet-number
    /// space (Initial, Handshake, Data) from zero, and its congestion events do not
    /// say which space they belong to.
    ambiguous_upto: Option<u64>,

    // Round trips.
    round: u64,
    next_round_delivered: u64,
    current: Round,
    previous: Round,
    /// The phase while the packets acknowledged in the current round were sent.
    sent_phase: State,

    // The model.
    bw: WindowedFilter,
    min_rtt: WindowedFilter,
    /// Last time an RTT sample came close to the minimum.
    low_rtt_at: Duration,
    lost_weight: f64,
    total_weight: f64,
    extra_acked: WindowedFilter,
    aggregation_start: Duration,
    aggregation_acked: u64,

    // The state machine.
    state: State,
    cwnd: u64,
    full_bw: u64,
    flat_rounds: u32,
    filled: bool,
    cruise_left: u32,
    queue_rounds: u32,
    /// After giving way: congestion signals are not judged before this round (they
    /// are still those of packets sent before giving way).
    quiet_until: u64,
    /// After giving way to a queue: the round at whose end to check that the queue
    /// went away, and the bandwidth estimate before giving way.
    floor_check: Option<u64>,
    saved_bw: u64,
    /// Whether a standing queue means our excess: false once giving way did not make
    /// the queue go away (a longer path, or others that do not yield to delay), until
    /// an RTT sample comes near the minimum again.
    delay_trusted: bool,
    probe_rtt_until: Option<Duration>,
    probe_rtt_round: u64,
    rng: Rng,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn scale(d: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(d.as_secs_f64() * factor)
}

impl Model {
    /// A controller for a path whose datagrams carry `mtu` bytes, starting at `now`;
    /// `seed` randomises the probing cycle.
    pub(crate) fn new(now: Duration, mtu: u16, seed: u64) -> Self {
        let mtu = u64::from(mtu);
        let initial_window = initial_window(mtu);
        Model {
            mtu,
            initial_window,
            delivered: 0,
            delivered_time: now,
            first_sent: now,
            in_flight: 0,
            sent_total: 0,
            lost_total: 0,
            app_limited_until: 0,
            records: VecDeque::new(),
            last_pn: None,
            largest_acked: None,
            ambiguous_upto: None,
            round: 0,
            next_round_delivered: 0,
            current: Round::default(),
            previous: Round::default(),
            sent_phase: State::Startup,
            bw: WindowedFilter::new(Extremum::Max, BW_WINDOW_ROUNDS),
            min_rtt: WindowedFilter::new(Extremum::Min, MIN_RTT_WINDOW_US),
            low_rtt_at: now,
            lost_weight: 0.0,
            total_weight: 0.0,
            extra_acked: WindowedFilter::new(Extremum::Max, BW_WINDOW_ROUNDS),
            aggregation_start: now,
            aggregation_acked: 0,
            state: State::Startup,
            cwnd: initial_window,
            full_bw: 0,
            flat_rounds: 0,
            filled: false,
            cruise_left: 0,
            queue_rounds: 0,
            quiet_until: 0,
            floor_check: None,
            saved_bw: 0,
            delay_trusted: true,
            probe_rtt_until: None,
            probe_rtt_round: 0,
            rng: Rng(seed),
        }
    }

    // ---- Events (those of quinn's `Controller`) ----

    /// Packets totalling `bytes`, the newest numbered `last_pn`, left at `now`.
    pub(crate) fn on_sent(&mut self, now: Duration, bytes: u64, last_pn: u64) {
        if self.in_flight == 0 {
            // Nothing in flight: the next sample's intervals start now, not at the
            // last acknowledgement before an idle period.
            self.first_sent = now;
            self.delivered_time = now;
        }
        self.in_flight = self.in_flight.saturating_add(bytes);
        self.sent_total = self.sent_total.saturating_add(bytes);
        // The batch's datagrams are at most one MTU each, so it spans at least this
        // many packet numbers. Numbers below that are not claimed: quinn also sends
        // packets that never reach `on_sent` (MTU probes), and taking their numbers
        // for this batch would date them too late and understate their RTT.
        let packets = bytes.div_ceil(self.mtu).max(1);
        let first_pn = match self.last_pn {
            Some(prev) if last_pn > prev => (prev + 1).max((last_pn + 1).saturating_sub(packets)),
            Some(prev) => {
                // Numbers went back: another packet-number space. Everything so far
                // may be confused with it.
                self.ambiguous_upto = Some(self.ambiguous_upto.unwrap_or(0).max(prev));
                self.records.clear();
                last_pn
            }
            None => last_pn,
        };
        self.last_pn = Some(last_pn);
        self.records.push_back(SendRecord {
            first_pn,
            last_pn,
            sent: now,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent: self.first_sent,
            app_limited: self.app_limited_until > 0,
        });
    }

    /// A batch of acknowledgements (one ACK frame) was processed at `now`: quinn now
    /// counts `in_flight` bytes in flight, and `largest_acked` is the largest packet
    /// number ever acknowledged in the frame's space. `app_limited` if the
    /// application had nothing to send.
    ///
    /// The delivery-rate sample is the one of the newest packet acknowledged (as in
    /// TCP's rate sampling, which also samples once per ACK): bytes delivered since
    /// it left, over the longer of its send and acknowledgement intervals.
    pub(crate) fn on_end_acks(
        &mut self,
        now: Duration,
        in_flight: u64,
        app_limited: bool,
        largest_acked: Option<u64>,
    ) {
        let delivered = self
            .sent_total
            .saturating_sub(self.lost_total)
            .saturating_sub(in_flight)
            .max(self.delivered);
        let acked = delivered - self.delivered;
        self.delivered = delivered;
        self.in_flight = in_flight;
        if acked > 0 {
            self.delivered_time = now;
            self.current.delivered = self.current.delivered.saturating_add(acked);
        }
        if app_limited && self.app_limited_until == 0 {
            self.app_limited_until = self.delivered.saturating_add(in_flight).max(1);
        } else if self.app_limited_until > 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }

        let mut round_ended = false;
        if let Some(record) = self.newly_acked_record(largest_acked) {
            let rtt = now.saturating_sub(record.sent);
            self.on_rtt(now, rtt);
            self.first_sent = record.sent;
            if record.delivered >= self.next_round_delivered {
                round_ended = true;
            }
            let interval = record
                .sent
                .saturating_sub(record.first_sent)
                .max(now.saturating_sub(record.delivered_time));
            self.sample_bandwidth(
                interval,
                self.delivered - record.delivered,
                record.app_limited,
            );
        }
        self.update_aggregation(now, acked);
        if round_ended {
            self.next_round_delivered = self.delivered;
            self.round += 1;
            self.end_round();
        }
        self.advance(now);
        self.update_window(acked);
    }

    /// The record of the packet `largest_acked` if it is newly acknowledged and
    /// unambiguous.
    fn newly_acked_record(&mut self, largest_acked: Option<u64>) -> Option<SendRecord> {
        let pn = largest_acked?;
        if self.largest_acked.is_some_and(|l| pn <= l) {
            return None;
        }
        self.largest_acked = Some(pn);
        if self.ambiguous_upto.is_some_and(|a| pn <= a) {
            return None;
        }
        while self.records.front().is_some_and(|r| r.last_pn < pn) {
            self.records.pop_front();
        }
        self.records
            .front()
            .filter(|r| r.first_pn <= pn && pn <= r.last_pn)
            .copied()
    }

    /// Packets totalling `bytes`, the newest of them sent at `sent`, were declared lost
    /// at `now` (or, with `bytes` zero, ECN marked them); `persistent` if every
    /// packet over a long period was lost.
    pub(crate) fn on_congestion_event(
        &mut self,
        now: Duration,
        _sent: Duration,
        persistent: bool,
        bytes: u64,
    ) {
        if bytes == 0 {
            self.current.ecn = true;
        }
        self.in_flight = self.in_flight.saturating_sub(bytes);
        self.lost_total = self.lost_total.saturating_add(bytes);
        self.current.lost = self.current.lost.saturating_add(bytes);
        if persistent {
            self.restart(now);
        }
    }

    /// The path's datagram size changed.
    pub(crate) fn on_mtu_update(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
        self.initial_window = initial_window(self.mtu);
        self.cwnd = self.cwnd.max(self.min_window());
    }

    // ---- Answers ----

    /// Bytes that may be in flight.
    pub(crate) fn window(&self) -> u64 {
        self.cwnd.max(self.min_window())
    }

    /// The rate the model means to send at, bytes per second (`None` before the
    /// first bandwidth sample). quinn's own pacer runs at 1.25 × window / smoothed
    /// RTT, which for this window is about 1.25 × this.
    pub(crate) fn pacing_rate(&self) -> Option<u64> {
        let bw = self.bw.get()?;
        Some((bw as f64 * self.gain()) as u64)
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    pub(crate) fn bandwidth(&self) -> Option<u64> {
        self.bw.get()
    }

    /// The propagation delay estimate.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.get().map(Duration::from_micros)
    }

    /// The background (random) loss rate estimate.
    pub(crate) fn background_loss(&self) -> f64 {
        if self.total_weight > 0.0 {
            self.lost_weight / self.total_weight
        } else {
            0.0
        }
    }

    /// Where the state machine is.
    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The initial window for the current datagram size.
    pub(crate) fn initial_window(&self) -> u64 {
        self.initial_window
    }

    // ---- The model ----

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }

    fn on_rtt(&mut self, now: Duration, rtt: Duration) {
        let us = micros(rtt).max(1);
        let now_us = micros(now);
        let min = self.min_rtt.update(now_us, us);
        let min = Duration::from_micros(min);
        if rtt <= scale(min, 1.05) + Duration::from_micros(200) {
            self.low_rtt_at = now;
        }
        if rtt <= scale(min, FLOOR_FACTOR) + QUEUE_SLACK {
            self.delay_trusted = true;
        }
        self.current.min_rtt = self.current.min_rtt.min(rtt);
        self.current.max_rtt = self.current.max_rtt.max(rtt);
        self.current.samples += 1;
        if rtt > scale(min, CLEAN_FACTOR) + QUEUE_SLACK {
            self.current.high_samples += 1;
        }
    }

    /// Takes a delivery-rate sample: `delivered` bytes over `interval`.
    fn sample_bandwidth(&mut self, interval: Duration, delivered: u64, app_limited: bool) {
        // An interval shorter than the propagation delay means the acknowledgements
        // were compressed: the rate would be overstated.
        if interval.is_zero() || self.min_rtt().is_some_and(|m| interval < m) {
            return;
        }
        let rate = (delivered as f64 / interval.as_secs_f64()) as u64;
        self.current.app_limited |= app_limited;
        self.current.max_rate = self.current.max_rate.max(rate);
        // An app-limited sample says only that the path can do at least this much.
        if !app_limited || self.bw.get().is_none_or(|bw| rate >= bw) {
            self.bw.update(self.round, rate);
        }
    }

    /// Tracks how many bytes arrive in bursts beyond what the bandwidth explains
    /// (acknowledgement aggregation), so the window covers them.
    fn update_aggregation(&mut self, now: Duration, acked: u64) {
        let Some(bw) = self.bw.get() else {
            return;
        };
        if acked == 0 {
            return;
        }
        let elapsed = now.saturating_sub(self.aggregation_start);
        let expected = (bw as f64 * elapsed.as_secs_f64()) as u64;
        if self.aggregation_acked <= expected {
            // Deliveries fell behind the model: a new aggregation epoch.
            self.aggregation_start = now;
            self.aggregation_acked = 0;
        }
        self.aggregation_acked = self.aggregation_acked.saturating_add(acked);
        let elapsed = now.saturating_sub(self.aggregation_start);
        let expected = (bw as f64 * elapsed.as_secs_f64()) as u64;
        let cap = (bw as f64 * MAX_EXTRA_ACKED_SECS) as u64;
        let extra = self
            .aggregation_acked
            .saturating_sub(expected)
            .min(cap)
            .min(self.cwnd);
        self.extra_acked.update(self.round, extra);
    }

    /// The loss rate random losses cost, as a factor on the window.
    fn loss_compensation(&self) -> f64 {
        1.0 / (1.0 - self.background_loss().min(MAX_LOSS_COMPENSATION))
    }

    fn bdp(&self, gain: f64) -> u64 {
        let (Some(bw), Some(rtt)) = (self.bw.get(), self.min_rtt()) else {
            return self.initial_window;
        };
        let rtt = rtt.max(MIN_WINDOW_RTT);
        (bw as f64 * rtt.as_secs_f64() * gain * self.loss_compensation()) as u64
    }

    fn gain(&self) -> f64 {
        match self.state {
            State::Startup => STARTUP_GAIN,
            State::Drain => CRUISE_GAIN,
            State::ProbeBw(Phase::Up) => UP_GAIN,
            State::ProbeBw(Phase::Down) => DOWN_GAIN,
            State::ProbeBw(Phase::Cruise) => CRUISE_GAIN,
            State::ProbeRtt => PROBE_RTT_GAIN,
        }
    }

    /// Judges the round trip that just ended.
    fn end_round(&mut self) {
        let r = std::mem::take(&mut self.current);
        let sent_phase = std::mem::replace(&mut self.sent_phase, self.state);
        let Some(min_rtt) = self.min_rtt() else {
            self.previous = r;
            return;
        };

        // Losses: learn the background rate from round trips that saw no queue, and
        // call congestion only loss well beyond it that came with a queue.
        let total = r.delivered + r.lost;
        let loss_rate = if total > 0 {
            r.lost as f64 / total as f64
        } else {
            0.0
        };
        let clean = f64::from(r.high_samples) <= CLEAN_OUTLIERS * f64::from(r.samples);
        if clean && total > 0 {
            let packets = total as f64 / self.mtu as f64;
            self.lost_weight = self.lost_weight * LOSS_DECAY + loss_rate * packets;
            self.total_weight = self.total_weight * LOSS_DECAY + packets;
        }
        let background = self.background_loss();
        let packets = (total / self.mtu).max(1) as f64;
        let noise = 3.0 * (background.max(0.005) * (1.0 - background) / packets).sqrt();
        let lossy = !clean
            && r.lost >= MIN_LOST_PACKETS * self.mtu
            && loss_rate - background > EXCESS_LOSS.max(noise);
        let congested = lossy || r.ecn;
        tracing::trace!(
            round = self.round,
            state = ?self.state,
            bw = self.bw.get().unwrap_or(0),
            min_rtt = ?min_rtt,
            round_rtt = ?(r.min_rtt, r.max_rtt),
            loss_rate,
            background,
            clean,
            congested,
            in_flight = self.in_flight,
            cwnd = self.cwnd,
            "congestion model round"
        );
        let queued = self.delay_trusted
            && r.min_rtt != Duration::MAX
            && r.min_rtt > scale(min_rtt, QUEUE_FACTOR) + QUEUE_SLACK;

        // After giving way to a queue, see whether it went away. If it did not, the
        // queue was not ours to drain (a longer path, or others keeping a queue):
        // take back the bandwidth and stop reading queues as ours, until the RTT
        // touches its floor again.
        if self.floor_check == Some(self.round) {
            self.floor_check = None;
            if r.min_rtt != Duration::MAX && r.min_rtt > scale(min_rtt, FLOOR_FACTOR) + QUEUE_SLACK
            {
                let bw = self.bw.get().unwrap_or(0).max(self.saved_bw);
                self.bw.reset(self.round, bw);
                self.delay_trusted = false;
            }
        }

        match self.state {
            State::Startup => {
                if !r.app_limited {
                    let bw = self.bw.get().unwrap_or(0);
                    if bw as f64 >= self.full_bw as f64 * STARTUP_GROWTH {
                        self.full_bw = bw;
                        self.flat_rounds = 0;
                    } else {
                        self.flat_rounds += 1;
                    }
                }
                if self.flat_rounds >= STARTUP_FLAT_ROUNDS || congested {
                    self.filled = true;
                    self.state = State::Drain;
                }
            }
            State::Drain | State::ProbeRtt => {}
            State::ProbeBw(phase) => {
                // Packets sent during UP may overshoot; that is the probe's answer,
                // not congestion to give way to.
                let judged =
                    sent_phase != State::ProbeBw(Phase::Up) && self.round >= self.quiet_until;
                if judged && queued {
                    self.queue_rounds += 1;
                } else {
                    self.queue_rounds = 0;
                }
                if judged && (congested || self.queue_rounds >= QUEUE_ROUNDS) {
                    if congested {
                        self.give_way(r.max_rate);
                    } else {
                        self.saved_bw = self.bw.get().unwrap_or(0);
                        self.floor_check = Some(self.round + 2);
                        self.give_way(r.max_rate.max(self.previous.max_rate));
                    }
                    self.state = State::ProbeBw(Phase::Down);
                } else {
                    self.state = State::ProbeBw(match phase {
                        Phase::Up => Phase::Down,
                        Phase::Down => {
                            self.cruise_left = self.rng.range(CRUISE_ROUNDS.0, CRUISE_ROUNDS.1);
                            Phase::Cruise
                        }
                        Phase::Cruise => {
                            self.cruise_left = self.cruise_left.saturating_sub(1);
                            if self.cruise_left == 0 {
                                Phase::Up
                            } else {
                                Phase::Cruise
                            }
                        }
                    });
                }
            }
        }
        self.previous = r;
    }

    /// The path is saturated (queue or congestion loss): what we were delivered is
    /// our share, so that becomes the bandwidth, forgetting higher samples.
    fn give_way(&mut self, rate: u64) {
        self.queue_rounds = 0;
        self.quiet_until = self.round + 2;
        if rate == 0 {
            return;
        }
        let bw = self.bw.get().unwrap_or(rate);
        self.bw.reset(self.round, rate.min(bw));
    }

    /// Time-driven transitions, checked after every batch of acknowledgements.
    fn advance(&mut self, now: Duration) {
        if self.state == State::Drain && self.in_flight <= self.bdp(CRUISE_GAIN) {
            self.enter_probe_bw();
        }
        if self.state != State::ProbeRtt
            && self.state != State::Startup
            && now.saturating_sub(self.low_rtt_at) > PROBE_RTT_INTERVAL
        {
            self.state = State::ProbeRtt;
            self.probe_rtt_until = None;
            self.queue_rounds = 0;
        }
        if self.state == State::ProbeRtt {
            match self.probe_rtt_until {
                None if self.in_flight <= self.bdp(PROBE_RTT_GAIN).max(self.min_window()) => {
                    self.probe_rtt_until = Some(now + PROBE_RTT_DURATION);
                    self.probe_rtt_round = self.round;
                }
                Some(until) if now >= until && self.round > self.probe_rtt_round + 1 => {
                    // The samples taken meanwhile went into the min filter.
                    self.low_rtt_at = now;
                    self.probe_rtt_until = None;
                    if self.filled {
                        self.enter_probe_bw();
                    } else {
                        self.state = State::Startup;
                    }
                }
                _ => {}
            }
        }
    }

    fn enter_probe_bw(&mut self) {
        self.cruise_left = self.rng.range(CRUISE_ROUNDS.0, CRUISE_ROUNDS.1);
        self.state = State::ProbeBw(Phase::Cruise);
    }

    /// Recomputes the window after a batch that acknowledged `acked` bytes.
    fn update_window(&mut self, acked: u64) {
        let extra = self.extra_acked.get().unwrap_or(0);
        match self.state {
            State::Startup => {
                // Grow by what was acknowledged (doubling each round trip) up to the
                // STARTUP ceiling; never shrink while starting.
                let target = self
                    .bdp(STARTUP_GAIN)
                    .saturating_add(extra)
                    .max(self.initial_window);
                if self.cwnd < target {
                    self.cwnd = self.cwnd.saturating_add(acked).min(target);
                }
            }
            State::ProbeRtt => {
                self.cwnd = self.bdp(PROBE_RTT_GAIN).max(self.min_window());
            }
            _ => {
                self.cwnd = self.bdp(self.gain()).saturating_add(extra);
            }
        }
        self.cwnd = self.cwnd.max(self.min_window());
    }

    /// Every packet over a long period was lost: the path changed under us, so the
    /// model starts over (keeping only the propagation delay).
    fn restart(&mut self, _now: Duration) {
        self.bw.clear();
        self.extra_acked.clear();
        self.full_bw = 0;
        self.flat_rounds = 0;
        self.filled = false;
        self.queue_rounds = 0;
        self.floor_check = None;
        self.state = State::Startup;
        self.cwnd = self.min_window();
    }
}

/// RFC 9002's initial window: ten datagrams, at least 14720 bytes, at most ten.
fn initial_window(mtu: u64) -> u64 {
    14720u64.clamp(2 * mtu, 10 * mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rtt_and_rate_come_from_the_newest_packet_acknowledged() {
        let mut m = Model::new(Duration::ZERO, 1000, 1);
        m.on_sent(Duration::ZERO, 10_000, 9);
        m.on_end_acks(50 * MS, 0, false, Some(9));
        assert_eq!(m.min_rtt(), Some(50 * MS));
        // 10 kB over 50 ms.
        assert_eq!(m.bandwidth(), Some(200_000));
    }

    #[test]
    fn packets_that_skip_on_sent_give_no_sample() {
        // quinn sends MTU probes without `on_sent`: packet 10 here. Its
        // acknowledgement must not be taken for one of the batch sent later.
        let mut m = Model::new(Duration::ZERO, 1000, 1);
        m.on_sent(Duration::ZERO, 10_000, 9);
        m.on_sent(30 * MS, 10_000, 20);
        m.on_end_acks(50 * MS, 10_000, false, Some(10));
        assert_eq!(m.min_rtt(), None);
        m.on_end_acks(80 * MS, 0, false, Some(20));
        assert_eq!(m.min_rtt(), Some(50 * MS));
    }

    #[test]
    fn packet_numbers_of_other_spaces_are_ignored() {
        // Initial packets 0 and 1, then Handshake 0 and 1-RTT 0..: numbers restart.
        let mut m = Model::new(Duration::ZERO, 1200, 1);
        m.on_sent(Duration::ZERO, 1200, 0);
        m.on_sent(MS, 1200, 1);
        m.on_sent(60 * MS, 2400, 1);
        m.on_sent(70 * MS, 12_000, 11);
        // An ACK for an old-space packet 1, arriving late: ambiguous, no sample.
        m.on_end_acks(75 * MS, 14_400, false, Some(1));
        assert_eq!(m.min_rtt(), None);
        m.on_end_acks(120 * MS, 0, false, Some(11));
        assert_eq!(m.min_rtt(), Some(50 * MS));
    }

    #[test]
    fn random_loss_alone_does_not_shrink_the_window() {
        let mut m = Model::new(Duration::ZERO, 1000, 1);
        let mut now = Duration::ZERO;
        let mut pn = 0;
        let mut windows = Vec::new();
        for round in 0..60u64 {
            // A bottleneck of 40 packets per 40 ms round trip.
            let packets = (m.window() / 1000).min(40);
            m.on_sent(now, packets * 1000, pn + packets - 1);
            pn += packets;
            now += 40 * MS;
            // 5 % lost, every round, at the base RTT (no queue).
            let lost = packets.div_ceil(20) * 1000;
            m.on_congestion_event(now, now - 40 * MS, false, lost);
            m.on_end_acks(now, 0, false, Some(pn - 1));
            if round >= 40 {
                windows.push(m.window());
            }
        }
        let first = windows[0];
        assert!(windows.iter().all(|&w| w * 10 >= first * 9), "{windows:?}");
        assert!(m.background_loss() > 0.03, "{}", m.background_loss());
    }
}
