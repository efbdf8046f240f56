//! Transport tuning from the command line or the config file: the QUIC congestion
//! controller, and receive and send windows sized from a target rate.
//!
//! A window caps the data in flight on a connection: a path of rate R and round
//! trip T needs R × T (its bandwidth-delay product) in flight to stay full, and
//! more while losses are repaired. quinn and hyper fix their windows when a
//! connection opens, before its round trip is known, so the windows here are sized
//! for the target rate over a long round trip ([`WINDOW_RTT`]), never below the
//! built-in defaults (which already serve 1 Gbit/s at 100 ms). The data a sender
//! keeps in flight is then sized from the round trip it measures
//! ([`mft::InFlight::for_path`]).

use std::sync::Arc;
use std::time::Duration;

use flow::{
    CongestionControl, HttpsConfig, HttpsProtocol, ListenLimits, QuicConfig, QuicProtocol, Registry,
};

use crate::args::TuningArgs;

/// The round trip the windows are sized for: long enough for intercontinental
/// paths with some queueing.
pub const WINDOW_RTT: Duration = Duration::from_millis(250);

/// The largest connection window: bounds the memory one connection may make us hold.
const MAX_CONNECTION_WINDOW: u64 = 1 << 30;

/// The windows for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Bytes one flow may have in flight.
    pub stream: u64,
    /// Bytes all flows of a connection may have in flight, each way.
    pub connection: u64,
}

impl Windows {
    /// Windows for a path of `rate` bits per second: twice its bandwidth-delay
    /// product at [`WINDOW_RTT`] per connection, never below the built-in 64 MiB nor
    /// above 1 GiB, and a quarter of that per flow (at least 16 MiB, so one flow
    /// alone fills 1 Gbit/s at 100 ms).
    pub fn for_rate(rate: u64) -> Self {
        let bdp = (rate as f64 / 8.0 * WINDOW_RTT.as_secs_f64()) as u64;
        let connection = (2 * bdp).clamp(64 << 20, MAX_CONNECTION_WINDOW);
        let stream = (connection / 4).clamp(16 << 20, connection);
        Windows { stream, connection }
    }
}

/// The tuning of one process's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The QUIC congestion controller (`None`: the built-in default).
    pub congestion: Option<CongestionControl>,
    /// The target rate in bits per second (`None`: [`mft::DEFAULT_TARGET_RATE`]).
    pub rate: Option<u64>,
}

impl From<&TuningArgs> for Tuning {
    fn from(args: &TuningArgs) -> Self {
        Tuning {
            congestion: args.congestion,
            rate: args.rate,
        }
    }
}

impl Tuning {
    /// The target rate in bits per second.
    pub fn rate(&self) -> u64 {
        self.rate.unwrap_or(mft::DEFAULT_TARGET_RATE)
    }

    /// The QUIC settings.
    pub fn quic(&self) -> QuicConfig {
        let windows = Windows::for_rate(self.rate());
        let mut quic = QuicConfig::default();
        quic.stream_receive_window(windows.stream)
            .receive_window(windows.connection)
            .send_window(windows.connection);
        if let Some(congestion) = self.congestion {
            quic.congestion(congestion);
        }
        quic
    }

    /// The HTTPS settings (HTTP/2 windows; TCP's own are the kernel's).
    pub fn https(&self) -> HttpsConfig {
        let windows = Windows::for_rate(self.rate());
        // HTTP/2 windows are at most 2³¹ − 1 bytes.
        let h2 = |bytes: u64| bytes.min((1 << 31) - 1) as u32;
        let mut https = HttpsConfig::default();
        https
            .stream_window(h2(windows.stream))
            .connection_window(h2(windows.connection));
        https
    }

    /// The built-in protocols with these settings.
    pub fn registry(&self) -> Registry {
        self.registry_with(&ListenLimits::default())
    }

    /// The built-in protocols with these settings, their listeners admitting
    /// connections within `limits`.
    pub fn registry_with(&self, limits: &ListenLimits) -> Registry {
        let mut quic = self.quic();
        quic.listen_limits(limits.clone());
        let mut https = self.https();
        https.listen_limits(limits.clone());
        let mut registry = Registry::default();
        registry.register("quic", Arc::new(QuicProtocol::new(quic)), &[]);
        registry.register("https", Arc::new(HttpsProtocol::new(https)), &[]);
        registry
    }

    /// Applies the target rate to a client configuration.
    pub fn apply(&self, config: &mut mft::ClientConfig) {
        config.target_rate(self.rate());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_rate_within_bounds() {
        // 1 Gbit/s × 250 ms is 31 MB: twice that is below the 64 MiB floor.
        assert_eq!(
            Windows::for_rate(1_000_000_000),
            Windows {
                stream: 16 << 20,
                connection: 64 << 20
            }
        );
        // 10 Gbit/s × 250 ms is 312.5 MB: a 625 MB connection window.
        let fast = Windows::for_rate(10_000_000_000);
        assert_eq!(fast.connection, 625_000_000);
        assert_eq!(fast.stream, 625_000_000 / 4);
        // Never above 1 GiB, however fast.
        assert_eq!(Windows::for_rate(1_000_000_000_000).connection, 1 << 30);
        // Slow paths keep the floors.
        assert_eq!(
            Windows::for_rate(1_000_000),
            Windows {
                stream: 16 << 20,
                connection: 64 << 20
            }
        );
    }

    #[test]
    fn the_registry_holds_both_transports() {
        let registry = Tuning {
            congestion: Some(CongestionControl::Bbr),
            rate: Some(200_000_000),
        }
        .registry();
        assert!(registry.get("quic").is_some() && registry.get("https").is_some());
    }
}
