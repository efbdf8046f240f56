//! Choosing protocols by their properties, after TAPS: require, prefer, avoid,
//! prohibit.

use crate::registry::Properties;

/// The scheme of endpoints that name a destination, not a protocol.
pub(crate) const PREFERENCE_SCHEME: &str = "mftq";

/// The protocols an `mftq://host:port` endpoint may be reached by, in default
/// order: QUIC on the UDP port, HTTPS on the TCP port of the same number.
pub(crate) const PREFERENCE_PROTOCOLS: [&str; 2] = ["quic", "https"];

/// A property a protocol may have (see [`Properties`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// Many flows over one connection without connection-level head-of-line blocking.
    Multistreaming,
    /// Runs over UDP.
    Udp,
    /// Runs over TCP.
    Tcp,
    /// Can send data in its first flight.
    ZeroRtt,
}

impl Property {
    fn of(self, p: &Properties) -> bool {
        match self {
            Property::Multistreaming => p.is_multistreaming(),
            Property::Udp => p.is_udp(),
            Property::Tcp => p.is_tcp(),
            Property::ZeroRtt => p.is_zero_rtt(),
        }
    }
}

/// Which protocols a dial may use and in what order of preference.
///
/// ```
/// use flow::{Property, Selection};
/// // Where UDP is known to be blocked:
/// let tcp_only = Selection::default().prohibit(Property::Udp);
/// // Prefer TCP, but take UDP if that is all there is:
/// let tcp_first = Selection::default().prefer(Property::Tcp);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    require: Vec<Property>,
    prefer: Vec<Property>,
    avoid: Vec<Property>,
    prohibit: Vec<Property>,
}

impl Selection {
    /// Only protocols with `property`.
    pub fn require(mut self, property: Property) -> Self {
        self.require.push(property);
        self
    }

    /// Protocols with `property` first.
    pub fn prefer(mut self, property: Property) -> Self {
        self.prefer.push(property);
        self
    }

    /// Protocols with `property` last.
    pub fn avoid(mut self, property: Property) -> Self {
        self.avoid.push(property);
        self
    }

    /// Never protocols with `property`.
    pub fn prohibit(mut self, property: Property) -> Self {
        self.prohibit.push(property);
        self
    }

    /// Whether a protocol with `properties` may be used.
    pub fn admits(&self, properties: &Properties) -> bool {
        self.require.iter().all(|p| p.of(properties))
            && !self.prohibit.iter().any(|p| p.of(properties))
    }

    fn score(&self, properties: &Properties) -> i32 {
        let preferred = self.prefer.iter().filter(|p| p.of(properties)).count() as i32;
        let avoided = self.avoid.iter().filter(|p| p.of(properties)).count() as i32;
        preferred - avoided
    }

    /// Orders candidates best first, keeping the default order among equals.
    pub(crate) fn rank<T>(&self, candidates: &mut [T], properties: impl Fn(&T) -> Properties) {
        candidates.sort_by_key(|c| -self.score(&properties(c)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_and_ranks() {
        let quic = Properties::new().udp(true).multistreaming(true);
        let https = Properties::new().tcp(true).multistreaming(true);
        let default = Selection::default();
        assert!(default.admits(&quic) && default.admits(&https));
        let no_udp = Selection::default().prohibit(Property::Udp);
        assert!(!no_udp.admits(&quic) && no_udp.admits(&https));
        let tcp_required = Selection::default().require(Property::Tcp);
        assert!(!tcp_required.admits(&quic) && tcp_required.admits(&https));

        let mut order = vec![("quic", quic), ("https", https)];
        default.rank(&mut order, |(_, p)| *p);
        assert_eq!(order[0].0, "quic");
        Selection::default()
            .prefer(Property::Tcp)
            .rank(&mut order, |(_, p)| *p);
        assert_eq!(order[0].0, "https");
        Selection::default()
            .avoid(Property::Tcp)
            .rank(&mut order, |(_, p)| *p);
        assert_eq!(order[0].0, "quic");
    }
}
