//! A deterministic, discrete-event simulator of bulk flows through one bottleneck,
//! driving [`Model`] with the events quinn would give it.
//!
//! The path: each sender's datagrams meet random loss (a fixed-seed generator), then
//! a drop-tail queue of bounded bytes in front of a link of fixed rate (shared by all
//! flows), then half the RTT of propagation to their receiver. Receivers acknowledge
//! every second datagram (at once when one is out of order, after 25 ms for a lone
//! one), and acknowledgements take the other half of the RTT back, without loss or
//! queue. Senders copy quinn 0.11: its RTT estimator, its pacer (token bucket of
//! 1.25 × window per smoothed RTT, ~2 ms bursts, same arithmetic), its window check,
//! one `on_sent` per batch of up to 10 datagrams, `on_end_acks` per ACK frame, then
//! loss detection (3 packets or 9/8 RTT) and `on_congestion_event`.
//!
//! Time is simulated (nanoseconds), so the tests run fast and always the same.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::model::{Model, Phase, State};

/// Datagram size.
const MTU: u64 = 1400;
/// Datagrams per `on_sent` (quinn's GSO batch).
const BATCH: u64 = 10;
/// quinn's initial RTT before any sample.
const INITIAL_RTT: f64 = 0.333;
/// The receiver's delayed-ACK timer.
const MAX_ACK_DELAY: u64 = 25_000_000;
/// Statistics interval.
const TICK: u64 = 100_000_000;

const fn secs(s: f64) -> u64 {
    (s * 1e9) as u64
}

fn dur(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// xorshift64*: small, fast and the same everywhere.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Self {
        Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A scenario to simulate.
#[derive(Clone, Debug)]
pub(super) struct Scenario {
    /// Bottleneck rate, Mbit/s.
    pub(super) mbps: f64,
    /// Round-trip propagation delay.
    pub(super) rtt_ms: f64,
    /// Queue size as a multiple of the bandwidth-delay product.
    pub(super) queue_bdp: f64,
    /// Random loss probability per datagram.
    pub(super) loss: f64,
    /// When each flow starts, seconds.
    pub(super) starts: Vec<f64>,
    /// How long to simulate, seconds.
    pub(super) duration: f64,
    /// Goodput and RTT are measured from here to the end, seconds.
    pub(super) measure_from: f64,
    /// The bottleneck changes to this rate (Mbit/s) at this time (seconds).
    pub(super) rate_change: Option<(f64, f64)>,
    /// ACKs reach the sender only at multiples of this (a coarse timer), ms.
    pub(super) ack_quantum_ms: f64,
    /// ACKs take up to this much longer, at random (in order still), ms.
    pub(super) ack_jitter_ms: f64,
    pub(super) seed: u64,
}

impl Scenario {
    pub(super) fn new(mbps: f64, rtt_ms: f64, loss: f64) -> Self {
        Scenario {
            mbps,
            rtt_ms,
            queue_bdp: 2.0,
            loss,
            starts: vec![0.0],
            duration: 20.0,
            measure_from: 5.0,
            rate_change: None,
            ack_quantum_ms: 0.0,
            ack_jitter_ms: 0.0,
            seed: 1,
        }
    }

    fn bytes_per_sec(&self) -> f64 {
        self.mbps * 1e6 / 8.0
    }
}

/// What one flow did.
#[derive(Clone, Debug, Default)]
pub(super) struct FlowReport {
    /// Goodput over the measurement interval, Mbit/s.
    pub(super) mbps: f64,
    /// Mean and largest RTT sample over the measurement interval, ms.
    pub(super) mean_rtt_ms: f64,
    pub(super) max_rtt_ms: f64,
    /// Datagrams sent, lost at random and dropped by the full queue (all time).
    pub(super) sent: u64,
    pub(super) random_drops: u64,
    pub(super) overflow_drops: u64,
    /// Datagrams dropped by the queue over the measurement interval.
    pub(super) overflow_drops_measured: u64,
    pub(super) sent_measured: u64,
    /// Per tick: (seconds, window bytes, bandwidth estimate Mbit/s, goodput of the
    /// tick Mbit/s, state).
    pub(super) ticks: Vec<(f64, u64, f64, f64, State)>,
    /// The controller's final estimates.
    pub(super) bw_mbps: f64,
    pub(super) min_rtt_ms: f64,
    pub(super) background_loss: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Arrive(usize),
    Ack(usize),
    Wake(usize),
    LossTimer(usize),
    AckTimer(usize),
    Start(usize),
    SetRate,
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
struct Event {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event must compare greatest.
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    InFlight,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Pkt {
    sent: u64,
    fate: Fate,
}

/// quinn's pacer, the same arithmetic.
struct Pacer {
    capacity: u64,
    last_window: u64,
    tokens: u64,
    prev: u64,
}

fn pacer_capacity(srtt: f64, window: u64) -> u64 {
    let cap = (window as f64 * 0.002 / srtt.max(1e-9)) as u64;
    cap.clamp(10 * MTU, 256 * MTU)
}

impl Pacer {
    fn new(srtt: f64, window: u64, now: u64) -> Self {
        let capacity = pacer_capacity(srtt, window);
        Pacer {
            capacity,
            last_window: window,
            tokens: capacity,
            prev: now,
        }
    }

    fn delay(&mut self, srtt: f64, bytes: u64, window: u64, now: u64) -> Option<u64> {
        if window != self.last_window {
            self.capacity = pacer_capacity(srtt, window);
            self.tokens = self.tokens.min(self.capacity);
            self.last_window = window;
        }
        if self.tokens >= bytes {
            return None;
        }
        let elapsed = now.saturating_sub(self.prev) as f64 / 1e9;
        let new_tokens = window as f64 * 1.25 * elapsed / srtt;
        self.tokens = (self.tokens + new_tokens as u64).min(self.capacity);
        self.prev = now;
        if self.tokens >= bytes {
            return None;
        }
        let unscaled = srtt * (bytes.max(self.capacity) - self.tokens) as f64 / window as f64;
        Some(self.prev + (unscaled * 1e9 / 5.0 * 4.0) as u64)
    }
}

struct Sender {
    model: Model,
    started: bool,
    next_pn: u64,
    base_pn: u64,
    sent: VecDeque<Pkt>,
    in_flight: u64,
    largest_acked: Option<u64>,
    srtt: Option<f64>,
    rttvar: f64,
    latest: f64,
    pacer: Pacer,
    wake_at: Option<u64>,
    loss_timer_at: Option<u64>,
    last_progress: u64,
    delivered: u64,
    report: FlowReport,
    rtt_sum: f64,
    rtt_n: u64,
    tick_delivered: u64,
    measured_from: u64,
}

impl Sender {
    fn srtt(&self) -> f64 {
        self.srtt.unwrap_or(INITIAL_RTT)
    }

    fn update_rtt(&mut self, rtt: f64) {
        self.latest = rtt;
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2.0;
            }
            Some(s) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (s - rtt).abs();
                self.srtt = Some(0.875 * s + 0.125 * rtt);
            }
        }
    }

    fn pkt(&mut self, pn: u64) -> Option<&mut Pkt> {
        let i = pn.checked_sub(self.base_pn)?;
        self.sent.get_mut(usize::try_from(i).ok()?)
    }

    fn trim(&mut self) {
        while self.sent.front().is_some_and(|p| p.fate == Fate::Done) {
            self.sent.pop_front();
            self.base_pn += 1;
        }
    }
}

#[derive(Default)]
struct Receiver {
    largest: Option<u64>,
    pending: Vec<u64>,
    timer_armed: bool,
}

struct Sim {
    sc: Scenario,
    now: u64,
    seq: u64,
    events: BinaryHeap<Event>,
    rng: Prng,
    rate: f64,
    link_free: f64,
    queue_limit: f64,
    one_way: u64,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    /// Per flow: datagrams on their way to the receiver (arrival time, pn), and
    /// ACK frames on their way back (arrival time, pns).
    transit: Vec<VecDeque<(u64, u64)>>,
    acks: Vec<VecDeque<(u64, Vec<u64>)>>,
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        let rate = sc.bytes_per_sec();
        let queue_limit = (rate * sc.rtt_ms / 1000.0 * sc.queue_bdp).max(2.0 * MTU as f64);
        let one_way = secs(sc.rtt_ms / 2000.0);
        let mut sim = Sim {
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            rng: Prng::new(sc.seed),
            rate,
            link_free: 0.0,
            queue_limit,
            one_way,
            senders: Vec::new(),
            receivers: Vec::new(),
            transit: Vec::new(),
            acks: Vec::new(),
            sc: sc.clone(),
        };
        for (i, &start) in sc.starts.iter().enumerate() {
            let t = secs(start);
            let model = Model::new(dur(t), MTU as u16, sc.seed.wrapping_add(i as u64 * 7919));
            let window = model.window();
            sim.senders.push(Sender {
                model,
                started: false,
                next_pn: 0,
                base_pn: 0,
                sent: VecDeque::new(),
                in_flight: 0,
                largest_acked: None,
                srtt: None,
                rttvar: INITIAL_RTT / 2.0,
                latest: INITIAL_RTT,
                pacer: Pacer::new(INITIAL_RTT, window, t),
                wake_at: None,
                loss_timer_at: None,
                last_progress: t,
                delivered: 0,
                report: FlowReport::default(),
                rtt_sum: 0.0,
                rtt_n: 0,
                tick_delivered: 0,
                measured_from: 0,
            });
            sim.receivers.push(Receiver::default());
            sim.transit.push(VecDeque::new());
            sim.acks.push(VecDeque::new());
            sim.push(t, Ev::Start(i));
        }
        if let Some((at, _)) = sc.rate_change {
            sim.push(secs(at), Ev::SetRate);
        }
        sim.push(TICK, Ev::Tick);
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn measuring(&self) -> bool {
        self.now >= secs(self.sc.measure_from)
    }

    fn run(mut self) -> Vec<FlowReport> {
        let end = secs(self.sc.duration);
        while let Some(Event { at, ev, .. }) = self.events.pop() {
            if at > end {
                break;
            }
            self.now = at;
            match ev {
                Ev::Start(f) => {
                    self.senders[f].started = true;
                    self.try_send(f);
                }
                Ev::Arrive(f) => self.arrive(f),
                Ev::Ack(f) => self.on_ack(f),
                Ev::Wake(f) => {
                    if self.senders[f].wake_at == Some(at) {
                        self.senders[f].wake_at = None;
                        self.try_send(f);
                    }
                }
                Ev::LossTimer(f) => {
                    if self.senders[f].loss_timer_at == Some(at) {
                        self.senders[f].loss_timer_at = None;
                        self.detect_losses(f);
                        self.try_send(f);
                    }
                }
                Ev::AckTimer(f) => {
                    self.receivers[f].timer_armed = false;
                    self.flush_ack(f);
                }
                Ev::SetRate => {
                    if let Some((_, mbps)) = self.sc.rate_change {
                        self.rate = mbps * 1e6 / 8.0;
                    }
                }
                Ev::Tick => self.tick(),
            }
        }
        let measure = (self.sc.duration - self.sc.measure_from).max(1e-9);
        self.senders
            .into_iter()
            .map(|s| {
                let mut r = s.report;
                r.mbps = (s.delivered - s.measured_from) as f64 * 8.0 / measure / 1e6;
                r.mean_rtt_ms = if s.rtt_n > 0 {
                    s.rtt_sum / s.rtt_n as f64 * 1e3
                } else {
                    0.0
                };
                r.bw_mbps = s.model.bandwidth().unwrap_or(0) as f64 * 8.0 / 1e6;
                r.min_rtt_ms = s.model.min_rtt().unwrap_or_default().as_secs_f64() * 1e3;
                r.background_loss = s.model.background_loss();
                r
            })
            .collect()
    }

    fn tick(&mut self) {
        let t = self.now as f64 / 1e9;
        let at_measure = self.now == secs(self.sc.measure_from).div_ceil(TICK) * TICK;
        for s in &mut self.senders {
            let goodput = (s.delivered - s.tick_delivered) as f64 * 8.0 / (TICK as f64 / 1e9) / 1e6;
            s.tick_delivered = s.delivered;
            let bw = s.model.bandwidth().unwrap_or(0) as f64 * 8.0 / 1e6;
            s.report
                .ticks
                .push((t, s.model.window(), bw, goodput, s.model.state()));
            if at_measure {
                s.measured_from = s.delivered;
            }
        }
        self.push(self.now + TICK, Ev::Tick);
    }

    /// Sends what the window and the pacer allow, in batches like quinn's.
    fn try_send(&mut self, f: usize) {
        if !self.senders[f].started {
            return;
        }
        loop {
            let mut batch = 0u64;
            let mut blocked = false;
            while batch < BATCH {
                let s = &mut self.senders[f];
                let window = s.model.window();
                if s.in_flight + MTU >= window {
                    blocked = true;
                    break;
                }
                let srtt = s.srtt();
                if let Some(at) = s.pacer.delay(srtt, MTU, window, self.now) {
                    if s.wake_at.is_none_or(|w| w != at) {
                        s.wake_at = Some(at);
                        self.push(at, Ev::Wake(f));
                    }
                    blocked = true;
                    break;
                }
                s.pacer.tokens = s.pacer.tokens.saturating_sub(MTU);
                let pn = s.next_pn;
                s.next_pn += 1;
                s.sent.push_back(Pkt {
                    sent: self.now,
                    fate: Fate::InFlight,
                });
                s.in_flight += MTU;
                s.report.sent += 1;
                if self.now >= secs(self.sc.measure_from) {
                    s.report.sent_measured += 1;
                }
                batch += 1;
                self.enqueue(f, pn);
            }
            if batch > 0 {
                let s = &mut self.senders[f];
                let last = s.next_pn - 1;
                s.model.on_sent(dur(self.now), batch * MTU, last);
                self.arm_loss_timer(f);
            }
            if blocked || batch == 0 {
                break;
            }
        }
    }

    /// A datagram meets random loss, then the queue.
    fn enqueue(&mut self, f: usize, pn: u64) {
        if self.sc.loss > 0.0 && self.rng.unit() < self.sc.loss {
            self.senders[f].report.random_drops += 1;
            return;
        }
        let now = self.now as f64 / 1e9;
        let backlog = (self.link_free - now).max(0.0) * self.rate;
        if backlog + MTU as f64 > self.queue_limit {
            let measuring = self.measuring();
            let r = &mut self.senders[f].report;
            r.overflow_drops += 1;
            if measuring {
                r.overflow_drops_measured += 1;
            }
            return;
        }
        let depart = self.link_free.max(now) + MTU as f64 / self.rate;
        self.link_free = depart;
        let arrive = secs(depart) + self.one_way;
        self.transit[f].push_back((arrive, pn));
        self.push(arrive, Ev::Arrive(f));
    }

    fn arrive(&mut self, f: usize) {
        let Some((_, pn)) = self.transit[f].pop_front() else {
            return;
        };
        let r = &mut self.receivers[f];
        let in_order = r.largest.is_none_or(|l| pn == l + 1);
        r.largest = Some(r.largest.map_or(pn, |l| l.max(pn)));
        r.pending.push(pn);
        if r.pending.len() >= 2 || !in_order {
            self.flush_ack(f);
        } else if !r.timer_armed {
            r.timer_armed = true;
            self.push(self.now + MAX_ACK_DELAY, Ev::AckTimer(f));
        }
    }

    fn flush_ack(&mut self, f: usize) {
        let pending = std::mem::take(&mut self.receivers[f].pending);
        if pending.is_empty() {
            return;
        }
        let mut at = self.now + self.one_way;
        if self.sc.ack_jitter_ms > 0.0 {
            at += secs(self.rng.unit() * self.sc.ack_jitter_ms / 1000.0);
        }
        let quantum = secs(self.sc.ack_quantum_ms / 1000.0);
        if quantum > 0 {
            at = at.div_ceil(quantum) * quantum;
        }
        // ACKs stay in order.
        if let Some(&(last, _)) = self.acks[f].back() {
            at = at.max(last);
        }
        self.acks[f].push_back((at, pending));
        self.push(at, Ev::Ack(f));
    }

    /// An ACK frame reaches the sender: quinn's order of events.
    fn on_ack(&mut self, f: usize) {
        let Some((_, pns)) = self.acks[f].pop_front() else {
            return;
        };
        let now = self.now;
        let measuring = self.measuring();
        let s = &mut self.senders[f];
        let mut newly = 0u64;
        let mut largest_new: Option<u64> = None;
        for &pn in &pns {
            if let Some(p) = s.pkt(pn)
                && p.fate == Fate::InFlight
            {
                p.fate = Fate::Done;
                newly += MTU;
                largest_new = Some(largest_new.map_or(pn, |l: u64| l.max(pn)));
            }
        }
        if newly == 0 {
            return;
        }
        s.in_flight -= newly;
        s.delivered += newly;
        s.last_progress = now;
        let frame_largest = pns.iter().copied().max();
        s.largest_acked = s.largest_acked.max(frame_largest);
        if let Some(l) = largest_new
            && Some(l) == frame_largest
            && let Some(sent) = s.pkt(l).map(|p| p.sent)
        {
            let rtt = (now - sent) as f64 / 1e9;
            s.update_rtt(rtt);
            if measuring {
                s.rtt_sum += rtt;
                s.rtt_n += 1;
                s.report.max_rtt_ms = s.report.max_rtt_ms.max(rtt * 1e3);
            }
        }
        let (in_flight, largest) = (s.in_flight, s.largest_acked);
        s.model.on_end_acks(dur(now), in_flight, false, largest);
        self.detect_losses(f);
        self.senders[f].trim();
        self.try_send(f);
    }

    /// quinn's loss detection: three packets or 9/8 of the RTT.
    fn detect_losses(&mut self, f: usize) {
        let now = self.now;
        let s = &mut self.senders[f];
        let Some(largest) = s.largest_acked else {
            self.arm_loss_timer(f);
            return;
        };
        let rtt = s.srtt().max(s.latest);
        let loss_delay = secs(rtt * 9.0 / 8.0).max(1_000_000);
        let mut lost = 0u64;
        let mut largest_lost_sent = 0;
        let base = s.base_pn;
        for (i, p) in s.sent.iter_mut().enumerate() {
            let pn = base + i as u64;
            if pn >= largest {
                break;
            }
            if p.fate != Fate::InFlight {
                continue;
            }
            if largest >= pn + 3 || now.saturating_sub(p.sent) >= loss_delay {
                p.fate = Fate::Done;
                lost += MTU;
                largest_lost_sent = p.sent;
            }
        }
        if lost > 0 {
            s.in_flight -= lost;
            s.model
                .on_congestion_event(dur(now), dur(largest_lost_sent), false, lost);
        }
        s.trim();
        self.arm_loss_timer(f);
    }

    /// Arms the time-threshold timer (for packets below the largest acknowledged,
    /// as quinn does) and a crude PTO: with nothing acknowledged for three PTOs,
    /// everything in flight is declared lost.
    fn arm_loss_timer(&mut self, f: usize) {
        let now = self.now;
        let s = &mut self.senders[f];
        if s.in_flight == 0 {
            return;
        }
        let rtt = s.srtt().max(s.latest);
        let loss_delay = secs(rtt * 9.0 / 8.0).max(1_000_000);
        let pto = secs(s.srtt() + 4.0 * s.rttvar) + MAX_ACK_DELAY;
        let pto_at = s.last_progress + 3 * pto;
        if now >= pto_at {
            let mut lost = 0;
            let mut last_sent = 0;
            for p in s.sent.iter_mut().filter(|p| p.fate == Fate::InFlight) {
                p.fate = Fate::Done;
                lost += MTU;
                last_sent = p.sent;
            }
            s.in_flight -= lost;
            s.last_progress = now;
            s.model
                .on_congestion_event(dur(now), dur(last_sent), false, lost);
            s.trim();
            return;
        }
        let mut at = pto_at;
        if let Some(largest) = s.largest_acked {
            let base = s.base_pn;
            for (i, p) in s.sent.iter().enumerate() {
                if base + i as u64 >= largest {
                    break;
                }
                if p.fate == Fate::InFlight {
                    at = at.min(p.sent + loss_delay);
                    break;
                }
            }
        }
        let at = at.max(now + 1);
        if s.loss_timer_at.is_none_or(|t| t > at || t <= now) {
            s.loss_timer_at = Some(at);
            self.push(at, Ev::LossTimer(f));
        }
    }
}

/// Runs a scenario.
pub(super) fn run(sc: &Scenario) -> Vec<FlowReport> {
    Sim::new(sc.clone()).run()
}

fn describe(sc: &Scenario, reports: &[FlowReport]) -> String {
    let mut out = format!(
        "{} Mbit/s, {} ms, queue {}×BDP, loss {}%:",
        sc.mbps,
        sc.rtt_ms,
        sc.queue_bdp,
        sc.loss * 100.0
    );
    for (i, r) in reports.iter().enumerate() {
        out += &format!(
            "\n  flow {i}: {:.1} Mbit/s ({:.3}×), rtt mean {:.1} max {:.1} ms, \
             est bw {:.1} Mbit/s min_rtt {:.1} ms bg loss {:.4}, \
             sent {} random drops {} overflow drops {} (measured {}/{})",
            r.mbps,
            r.mbps / sc.mbps,
            r.mean_rtt_ms,
            r.max_rtt_ms,
            r.bw_mbps,
            r.min_rtt_ms,
            r.background_loss,
            r.sent,
            r.random_drops,
            r.overflow_drops,
            r.overflow_drops_measured,
            r.sent_measured,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_single(sc: &Scenario, min_share: f64) -> FlowReport {
        let reports = run(sc);
        let text = describe(sc, &reports);
        println!("{text}");
        let r = &reports[0];
        assert!(r.mbps >= min_share * sc.mbps, "goodput too low: {text}");
        // The queue stays bounded: the mean RTT stays near the propagation delay.
        assert!(
            r.mean_rtt_ms <= 1.5 * sc.rtt_ms,
            "RTT inflated (standing queue): {text}"
        );
        r.clone()
    }

    #[test]
    fn clean_path_fills_the_link_without_a_queue() {
        let sc = Scenario::new(200.0, 50.0, 0.0);
        let r = check_single(&sc, 0.9);
        assert_eq!(r.overflow_drops_measured, 0, "{r:?}");
    }

    #[test]
    fn one_percent_random_loss() {
        let sc = Scenario::new(200.0, 50.0, 0.01);
        check_single(&sc, 0.9);
    }

    #[test]
    fn five_percent_random_loss_long_rtt() {
        let sc = Scenario::new(200.0, 100.0, 0.05);
        check_single(&sc, 0.85);
    }

    #[test]
    fn fat_long_path() {
        let mut sc = Scenario::new(1000.0, 100.0, 0.001);
        sc.duration = 10.0;
        sc.measure_from = 3.0;
        check_single(&sc, 0.8);
    }

    #[test]
    fn coarse_timers_and_late_acks() {
        // ACKs released on a 1 ms timer and up to 4 ms late: bunched and noisy, as
        // through a user-space relay or a busy receiver.
        for (rtt, loss, min_share) in [(50.0, 0.01, 0.9), (100.0, 0.05, 0.85)] {
            let mut sc = Scenario::new(200.0, rtt, loss);
            sc.ack_quantum_ms = 1.0;
            sc.ack_jitter_ms = 4.0;
            check_single(&sc, min_share);
        }
    }

    #[test]
    fn shallow_queue() {
        for loss in [0.0, 0.01] {
            let mut sc = Scenario::new(200.0, 50.0, loss);
            sc.queue_bdp = 0.2;
            let r = check_single(&sc, 0.85);
            // Overflow losses stay rare.
            let overflow = r.overflow_drops_measured as f64 / r.sent_measured.max(1) as f64;
            assert!(overflow < 0.01, "overflow {overflow}: {r:?}");
        }
    }

    #[test]
    fn two_flows_share_fairly() {
        for (queue_bdp, loss) in [(2.0, 0.0), (2.0, 0.01), (0.5, 0.0)] {
            let mut sc = Scenario::new(200.0, 50.0, loss);
            sc.queue_bdp = queue_bdp;
            sc.starts = vec![0.0, 3.0];
            sc.duration = 30.0;
            sc.measure_from = 15.0;
            let reports = run(&sc);
            let text = describe(&sc, &reports);
            println!("{text}");
            let total: f64 = reports.iter().map(|r| r.mbps).sum();
            assert!(total >= 0.85 * sc.mbps, "link underused: {text}");
            for r in &reports {
                let share = r.mbps / sc.mbps;
                assert!((0.3..=0.7).contains(&share), "unfair: {text}");
                assert!(r.mean_rtt_ms <= 1.5 * sc.rtt_ms, "queue: {text}");
            }
        }
    }

    #[test]
    fn gives_way_when_the_bottleneck_halves() {
        for queue_bdp in [2.0, 0.2] {
            let mut sc = Scenario::new(200.0, 50.0, 0.0);
            sc.queue_bdp = queue_bdp;
            sc.duration = 14.0;
            sc.rate_change = Some((10.0, 100.0));
            sc.measure_from = 11.0;
            let reports = run(&sc);
            let text = describe(&sc, &reports);
            println!("{text}");
            let r = &reports[0];
            for t in r.ticks.iter().filter(|t| (9.8..=11.0).contains(&t.0)) {
                println!(
                    "  {:.1} s: window {} B, bw {:.1} Mbit/s, goodput {:.1} Mbit/s, {:?}",
                    t.0, t.1, t.2, t.3, t.4
                );
            }
            // Within a few round trips (0.5 s is ten) the window follows the new rate.
            let new_bdp = 100e6 / 8.0 * 0.05;
            let after: Vec<_> = r.ticks.iter().filter(|t| t.0 >= 10.5).collect();
            for t in &after {
                assert!(
                    (t.1 as f64) < 1.6 * new_bdp,
                    "window {} at {:.1} s still above the new BDP {new_bdp}: {text}",
                    t.1,
                    t.0
                );
            }
            assert!(r.mbps >= 0.85 * 100.0, "{text}");
            assert!(r.mean_rtt_ms <= 1.5 * sc.rtt_ms, "{text}");
        }
    }

    #[test]
    fn starts_in_startup_and_settles_in_probe_bw() {
        let sc = Scenario::new(100.0, 40.0, 0.0);
        let reports = run(&sc);
        let r = &reports[0];
        assert_eq!(r.ticks.first().map(|t| t.4), Some(State::Startup));
        let late: Vec<_> = r.ticks.iter().filter(|t| t.0 > 5.0).collect();
        let probing = late
            .iter()
            .filter(|t| matches!(t.4, State::ProbeBw(_) | State::ProbeRtt))
            .count();
        assert_eq!(probing, late.len());
        assert!(late.iter().any(|t| t.4 == State::ProbeBw(Phase::Cruise)));
        // The estimates are those of the path.
        assert!((r.bw_mbps - 100.0).abs() < 10.0, "{r:?}");
        assert!((r.min_rtt_ms - 40.0).abs() < 2.0, "{r:?}");
    }

    #[test]
    fn deterministic() {
        let sc = Scenario::new(100.0, 20.0, 0.02);
        let a = run(&sc);
        let b = run(&sc);
        assert_eq!(a[0].sent, b[0].sent);
        assert_eq!(a[0].mbps, b[0].mbps);
    }
}

/// A tuning aid, not a test: prints how two flows share the link over seeds, queue
/// sizes, losses and start offsets (`cargo test --release -p mftq-flow --lib
/// congestion::sim::sweep -- --ignored --nocapture`).
#[cfg(test)]
mod sweep {
    use super::*;

    #[test]
    #[ignore]
    fn fairness_sweep() {
        for seed in 1..=8u64 {
            for (queue_bdp, loss, second) in [
                (2.0, 0.0, 3.0),
                (2.0, 0.01, 7.0),
                (0.3, 0.0, 1.0),
                (1.0, 0.02, 5.0),
            ] {
                let mut sc = Scenario::new(200.0, 50.0, loss);
                sc.seed = seed;
                sc.queue_bdp = queue_bdp;
                sc.starts = vec![0.0, second];
                sc.duration = 30.0;
                sc.measure_from = 15.0;
                let r = run(&sc);
                println!(
                    "seed {seed} q {queue_bdp} loss {loss} start2 {second}: {:.2} / {:.2}  rtt {:.1} ms, overflow {:.4}",
                    r[0].mbps / 200.0,
                    r[1].mbps / 200.0,
                    r[0].mean_rtt_ms,
                    (r[0].overflow_drops_measured + r[1].overflow_drops_measured) as f64
                        / (r[0].sent_measured + r[1].sent_measured) as f64
                );
            }
        }
    }
}
