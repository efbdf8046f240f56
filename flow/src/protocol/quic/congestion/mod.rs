//! `model`: our model-based, loss-tolerant congestion controller for quinn.
//!
//! CUBIC reads every loss as congestion, so on a long path with a little random loss
//! it never opens its window (1 % loss at 50 ms holds it to a few Mbit/s). This
//! controller, in the family of BBR, instead keeps a model of the path and sends
//! what the model says the path carries:
//!
//! - **Bottleneck bandwidth**: the maximum delivery-rate sample over the last ten
//!   round trips (a windowed max filter).
//! - **Propagation delay**: the minimum RTT sample over the last ten seconds (a
//!   windowed min filter).
//! - **Background loss rate**: the loss rate of round trips that saw no queue.
//! - **Ack aggregation**: how far deliveries run ahead of the bandwidth in bursts.
//!
//! # Window and pacing
//!
//! quinn 0.11 paces from the window alone: its pacer releases 1.25 × window per
//! smoothed RTT, in bursts of about 2 ms, and ignores a controller's own pacing rate
//! (`ControllerMetrics::pacing_rate` only feeds qlog). So the window is the one lever,
//! and it is set to `gain × bandwidth × min RTT / (1 − background loss) + aggregation`:
//! the bytes in flight that keep the bottleneck busy (lost packets occupy the window
//! until they are declared lost, hence the loss term) and no more. With the window at
//! one bandwidth-delay product no standing queue forms, and the pacer then runs at
//! about 1.25 × the bandwidth, which spreads the bursts without being what limits.
//! (A window set to bandwidth × smoothed RTT / 1.25, to make the pacer run at exactly
//! the bandwidth, would cap the bytes in flight at 0.8 of what the path needs.)
//!
//! # State machine
//!
//! - **STARTUP**: the window grows by what is acknowledged (doubling each round trip)
//!   up to 2.885 × the bandwidth-delay product, until the bandwidth grows less than
//!   25 % for three round trips, or congestion (below) shows.
//! - **DRAIN**: window of one bandwidth-delay product until the queue STARTUP built is
//!   gone (bytes in flight at most one product).
//! - **PROBE_BW**: cycles UP (gain 1.25 for one round trip: is there more bandwidth?),
//!   DOWN (0.9 for one round trip: drain what UP queued, let the RTT touch its floor)
//!   and CRUISE (1.0 for 4 to 7 round trips, drawn at random so flows sharing a link
//!   do not probe in step).
//! - **PROBE_RTT**: when no RTT sample came near the minimum for 5 s, half a
//!   bandwidth-delay product in flight for 200 ms and a round trip, to re-measure it.
//!
//! # Random loss versus congestion
//!
//! A drop-tail buffer drops only when it is full, and a full buffer shows as delay.
//! So a round trip nine in ten of whose RTT samples stayed within 1.15 × the minimum
//! (+1 ms) saw no queue, and its losses were random: such round trips (only) teach
//! the background loss rate, an exponentially decaying average weighted by packets.
//! Losses count as congestion only when a round trip that did see a queue lost more
//! than the background rate by 2 points and by three standard deviations of binomial
//! noise (and at least three packets); ECN marks always count. A round trip whose
//! *smallest* RTT exceeded 1.25 × the minimum (+1 ms), twice in a row, saw a standing
//! queue: the path is saturated by more than we believed ours. Either way the
//! controller gives way: the delivery rate just measured is, at saturation, our
//! share, so the bandwidth estimate is reset to it (forgetting higher samples) and
//! DOWN drains the excess. Losses and queues that follow UP are the probe's answer
//! and do not count.
//!
//! Should a standing queue not go away after giving way to it, it was not ours (the
//! path got longer, or others keep it, such as loss-based flows): the bandwidth
//! estimate is restored, and standing queues are no longer read as ours until an RTT
//! sample comes near the floor again. Congestion losses still count meanwhile; the
//! min RTT filter and PROBE_RTT take care of a floor that really moved. quinn's
//! persistent congestion (everything lost for several PTOs) restarts the model from
//! STARTUP.
//!
//! # Delivery-rate sampling
//!
//! quinn 0.11 does not re-export `RttEstimator`, which `Controller::on_ack` takes, so
//! this controller works from what the other events give (after the rate sampling
//! of draft-cheng-iccrg-delivery-rate-estimation, sampled once per ACK frame as TCP
//! does): each `on_sent` (one batch of datagrams, a packet-number range, one send
//! time) leaves a record of the bytes delivered so far and when; each `on_end_acks`
//! says how many bytes are still in flight, so delivered = sent − lost − in flight,
//! and names the largest packet acknowledged, whose record gives the RTT sample
//! (now − its send time) and the delivery-rate sample (bytes delivered since it left,
//! over the longer of its send and acknowledgement intervals; shorter than the min
//! RTT means compressed acknowledgements and is dropped). Samples taken while the
//! application had nothing to send only ever raise the estimate. A record claims
//! only as many packet numbers as its bytes fill datagrams, because quinn sends MTU
//! probes without `on_sent`: a probe's number claimed by the next batch would date
//! its acknowledgement too late and understate the RTT. Packet numbers restart in
//! each packet-number space; those sent before the last restart are ambiguous and
//! give no samples (this only touches the handshake).

mod filter;
mod model;
#[cfg(test)]
mod sim;

use std::any::Any;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

use self::model::Model;

/// Builds [`ModelController`]s: the factory to hand to
/// `quinn::TransportConfig::congestion_controller_factory`.
#[derive(Clone, Debug, Default)]
pub struct ModelConfig {
    _private: (),
}

impl ModelConfig {
    /// The controller with its default parameters.
    pub fn new() -> Self {
        ModelConfig::default()
    }
}

impl ControllerFactory for ModelConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let seed = RandomState::new().hash_one(now);
        Box::new(ModelController {
            epoch: now,
            model: Model::new(Duration::ZERO, current_mtu, seed),
        })
    }
}

/// Our model-based congestion controller on one QUIC path (see the
/// [module documentation](self)).
#[derive(Clone, Debug)]
pub struct ModelController {
    epoch: Instant,
    model: Model,
}

impl ModelController {
    fn time(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    /// The bottleneck bandwidth estimate in bytes per second, if any.
    pub fn bandwidth(&self) -> Option<u64> {
        self.model.bandwidth()
    }

    /// The propagation delay estimate, if any.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.model.min_rtt()
    }
}

impl Controller for ModelController {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        let now = self.time(now);
        self.model.on_sent(now, bytes, last_packet_number);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        let now = self.time(now);
        self.model
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        let (now, sent) = (self.time(now), self.time(sent));
        self.model
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.model.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window();
        metrics.pacing_rate = self.model.pacing_rate().map(|bytes| bytes * 8);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.model.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::quic::CongestionControl;

    #[test]
    fn names_parse_both_ways() {
        for cc in CongestionControl::ALL {
            assert_eq!(cc.as_str().parse::<CongestionControl>().ok(), Some(cc));
            assert_eq!(cc.to_string(), cc.as_str());
        }
        assert_eq!(
            " Model ".parse::<CongestionControl>().ok(),
            Some(CongestionControl::Model)
        );
        assert_eq!(
            "NEWRENO".parse::<CongestionControl>().ok(),
            Some(CongestionControl::NewReno)
        );
        let err = "vegas"
            .parse::<CongestionControl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("vegas"), "{err}");
        assert!(err.contains("cubic, newreno, bbr, model"), "{err}");
    }

    #[test]
    fn quinn_adapter_grows_the_window() {
        let start = Instant::now();
        let mut cc = Arc::new(ModelConfig::new()).build(start, 1200);
        let initial = cc.window();
        assert_eq!(initial, cc.initial_window());
        let rtt = Duration::from_millis(20);
        let mut pn = 0u64;
        let mut now = start;
        // Ten round trips in which everything sent is acknowledged one RTT later.
        for _ in 0..10 {
            let window = cc.window();
            let packets = window / 1200;
            cc.on_sent(now, packets * 1200, pn + packets - 1);
            pn += packets;
            now += rtt;
            cc.on_end_acks(now, 0, false, Some(pn - 1));
        }
        assert!(cc.window() > 8 * initial, "window {}", cc.window());
        let model = cc.into_any().downcast::<ModelController>().ok();
        let model = model.as_deref().and_then(ModelController::min_rtt);
        assert_eq!(model, Some(rtt));
        // Times before the controller was built do not panic.
        let mut cc = Arc::new(ModelConfig::new()).build(start + rtt, 1200);
        cc.on_sent(start, 1200, 0);
        cc.on_congestion_event(start, start, false, 1200);
        assert!(cc.window() > 0);
    }
}
