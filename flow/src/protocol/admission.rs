//! Admission at a listener: how many connections it holds and how many handshakes
//! it runs, in total and per source address, so that one source cannot take every
//! slot and a flood costs bounded memory.
//!
//! A listener asks [`Admission::admit`] before it spends anything on a new
//! connection. The [`Admitted`] slot it gets counts as a handshake until
//! [`Admitted::handshake_done`], and as a connection until it is dropped: the
//! listener keeps it for as long as the connection lives.
//!
//! A *source* is the remote IP address; IPv6 addresses count per /64, the block
//! one host or household is usually given, so a host cannot escape its limit by
//! hopping addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A listener's limits on incoming connections, with safe defaults.
///
/// ```
/// let mut limits = flow::ListenLimits::default();
/// limits.max_connections(1024).max_connections_per_source(32);
/// let mut config = flow::QuicConfig::default();
/// config.listen_limits(limits);
/// ```
#[derive(Clone, Debug)]
pub struct ListenLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_source: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) max_handshakes_per_source: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) validate_addresses_above: usize,
    pub(crate) anonymous_lifetime: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            max_connections: 4096,
            max_connections_per_source: 64,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
            handshake_timeout: Duration::from_secs(10),
            validate_addresses_above: 32,
            anonymous_lifetime: Duration::from_secs(10),
        }
    }
}

impl ListenLimits {
    /// Connections a listener holds at once, handshakes included (default 4096).
    pub fn max_connections(&mut self, count: usize) -> &mut Self {
        self.max_connections = count.max(1);
        self
    }

    /// Connections one source address holds at once (default 64).
    pub fn max_connections_per_source(&mut self, count: usize) -> &mut Self {
        self.max_connections_per_source = count.max(1);
        self
    }

    /// Handshakes a listener runs at once (default 256); beyond that, new
    /// connection attempts are refused until one finishes.
    pub fn max_handshakes(&mut self, count: usize) -> &mut Self {
        self.max_handshakes = count.max(1);
        self
    }

    /// Handshakes one source address runs at once (default 16), so a few cheap
    /// attempts per second from one place cannot lock everyone else out.
    pub fn max_handshakes_per_source(&mut self, count: usize) -> &mut Self {
        self.max_handshakes_per_source = count.max(1);
        self
    }

    /// How long an incoming handshake may take (default 10 s).
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// QUIC only: once more handshakes than this are in progress (default 32), a
    /// client must first prove it owns its address by echoing a Retry token, so
    /// spoofed or fire-and-forget Initials take no handshake slot. `usize::MAX`
    /// never asks.
    pub fn validate_addresses_above(&mut self, count: usize) -> &mut Self {
        self.validate_addresses_above = count;
        self
    }

    /// HTTPS only: how long a connection without a client certificate (a health
    /// check) may stay open, whatever it does (default 10 s).
    pub fn anonymous_lifetime(&mut self, lifetime: Duration) -> &mut Self {
        self.anonymous_lifetime = lifetime;
        self
    }
}

/// Why a new connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its maximum of connections.
    Connections,
    /// This source holds its maximum of connections.
    SourceConnections,
    /// The listener runs its maximum of handshakes.
    Handshakes,
    /// This source runs its maximum of handshakes.
    SourceHandshakes,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Connections => "too many connections",
            Refusal::SourceConnections => "too many connections from this source",
            Refusal::Handshakes => "too many handshakes",
            Refusal::SourceHandshakes => "too many handshakes from this source",
        })
    }
}

/// What one source (or the whole listener) holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: Held,
    by_source: HashMap<IpAddr, Held>,
}

/// The connection and handshake counts of one listener.
#[derive(Debug)]
pub struct Admission {
    limits: ListenLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    /// Counts for a listener with these limits.
    pub fn new(limits: ListenLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The limits this listener applies.
    pub fn limits(&self) -> &ListenLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `remote`, in its handshake, or why none.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<Admitted, Refusal> {
        let source = source_of(remote.ip());
        let limits = &self.limits;
        let mut counts = self.lock();
        let from_source = counts.by_source.get(&source).copied().unwrap_or_default();
        if counts.total.connections >= limits.max_connections {
            return Err(Refusal::Connections);
        }
        if from_source.connections >= limits.max_connections_per_source {
            return Err(Refusal::SourceConnections);
        }
        if counts.total.handshakes >= limits.max_handshakes {
            return Err(Refusal::Handshakes);
        }
        if from_source.handshakes >= limits.max_handshakes_per_source {
            return Err(Refusal::SourceHandshakes);
        }
        counts.total.connections += 1;
        counts.total.handshakes += 1;
        let held = counts.by_source.entry(source).or_default();
        held.connections += 1;
        held.handshakes += 1;
        Ok(Admitted {
            admission: self.clone(),
            source,
            in_handshake: true,
        })
    }

    /// Handshakes in progress now.
    pub fn handshakes(&self) -> usize {
        self.lock().total.handshakes
    }

    /// Connections held now, handshakes included.
    pub fn connections(&self) -> usize {
        self.lock().total.connections
    }

    /// Whether a QUIC listener should ask new clients to validate their address.
    pub fn under_load(&self) -> bool {
        self.handshakes() >= self.limits.validate_addresses_above
    }

    fn release(&self, source: IpAddr, handshake: bool, connection: bool) {
        let mut counts = self.lock();
        let Counts { total, by_source } = &mut *counts;
        let Some(held) = by_source.get_mut(&source) else {
            return;
        };
        if handshake {
            total.handshakes -= 1;
            held.handshakes -= 1;
        }
        if connection {
            total.connections -= 1;
            held.connections -= 1;
        }
        if *held == Held::default() {
            by_source.remove(&source);
        }
    }
}

/// One admitted connection: a handshake slot until [`Admitted::handshake_done`],
/// and a connection slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    source: IpAddr,
    in_handshake: bool,
}

impl Admitted {
    /// The handshake finished (either way): its slot goes back, the connection's
    /// stays.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.admission.release(self.source, true, false);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.source, self.in_handshake, true);
    }
}

/// The source an address counts under: itself for IPv4 (and IPv4-mapped IPv6),
/// its /64 for IPv6.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn limits() -> ListenLimits {
        let mut limits = ListenLimits::default();
        limits
            .max_connections(4)
            .max_connections_per_source(3)
            .max_handshakes(3)
            .max_handshakes_per_source(2);
        limits
    }

    #[test]
    fn one_source_cannot_take_every_handshake() {
        let admission = Admission::new(limits());
        let a1 = admission.admit(addr("10.0.0.1:1")).unwrap();
        let _a2 = admission.admit(addr("10.0.0.1:2")).unwrap();
        assert_eq!(
            admission.admit(addr("10.0.0.1:3")).unwrap_err(),
            Refusal::SourceHandshakes
        );
        // Another source still gets in.
        let _b = admission.admit(addr("10.0.0.2:1")).unwrap();
        assert_eq!(
            admission.admit(addr("10.0.0.3:1")).unwrap_err(),
            Refusal::Handshakes
        );
        drop(a1);
        assert!(admission.admit(addr("10.0.0.3:1")).is_ok());
    }

    #[test]
    fn finished_handshakes_keep_their_connection_slot() {
        let admission = Admission::new(limits());
        let mut held = Vec::new();
        for port in 1..=3 {
            let mut a = admission.admit(addr(&format!("10.0.0.1:{port}"))).unwrap();
            a.handshake_done();
            a.handshake_done(); // idempotent
            held.push(a);
        }
        assert_eq!(admission.handshakes(), 0);
        assert_eq!(admission.connections(), 3);
        assert_eq!(
            admission.admit(addr("10.0.0.1:9")).unwrap_err(),
            Refusal::SourceConnections
        );
        let _other = admission.admit(addr("10.0.0.2:1")).unwrap();
        assert_eq!(
            admission.admit(addr("10.0.0.3:1")).unwrap_err(),
            Refusal::Connections
        );
        held.clear();
        assert_eq!(admission.connections(), 1);
        assert!(admission.lock().by_source.len() == 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(limits());
        let _a = admission.admit(addr("[2001:db8::1]:1")).unwrap();
        let _b = admission.admit(addr("[2001:db8::ffff:2]:1")).unwrap();
        assert_eq!(
            admission.admit(addr("[2001:db8::3]:1")).unwrap_err(),
            Refusal::SourceHandshakes
        );
        assert_eq!(
            source_of("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn under_load_from_the_threshold() {
        let mut limits = limits();
        limits.validate_addresses_above(1);
        let admission = Admission::new(limits);
        assert!(!admission.under_load());
        let _a = admission.admit(addr("10.0.0.1:1")).unwrap();
        assert!(admission.under_load());
    }
}
