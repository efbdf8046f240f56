//! # netem: a link emulator in user space
//!
//! [`Link::start`] makes two network namespaces, **A** (198.18.0.1) and **B**
//! (198.18.0.2), each with a loopback and one TUN interface, and joins them only
//! through a relay in this process that applies, per direction, random loss, a
//! bottleneck rate with a bounded (tail-drop) queue, one-way delay and jitter — to
//! UDP and TCP alike, like `tc netem` plus a rate limit, but without any qdisc. The
//! addresses come from the RFC 2544 benchmarking range, and the namespaces have no
//! other way out, so nothing reaches a real network.
//!
//! Programs run in a namespace through [`Link::command`] (`ip netns exec`); code in
//! this process binds its sockets there with [`Link::enter`]. Conditions change while
//! packets flow ([`Link::set_conditions`], including a blackhole for fault tests),
//! [`Link::stats`] counts what happened to every packet, and dropping the [`Link`]
//! removes it all. A run that died without dropping it leaves namespaces behind, which
//! the next `Link::start` removes.
//!
//! The model of one direction, in order (see [`LinkConditions`]):
//! blackhole → random loss → bottleneck (rate, queue limit) → delay + jitter, with
//! deliveries never reordered. The rate counts whole IP packets.
//!
//! It needs root (CAP_NET_ADMIN), `/dev/net/tun` and iproute2's `ip`;
//! [`preflight`] checks them and says what is missing.
//!
//! ## Precision and cost
//!
//! Each direction is one thread that reads the source TUN, decides each packet's
//! fate and delivery time, and writes it to the other TUN when due; it sleeps on a
//! timerfd with 1 ns of slack, wakes early and spins the last 100 µs after long
//! sleeps, and runs at real-time priority ([`LinkConfig::realtime`]) so busy
//! endpoints cannot delay it. It writes packets within microseconds of their due
//! time (mean 1–10 µs, worst ~150 µs on a 2-core VM even with both cores
//! saturated); [`DirectionStats::lateness_mean`] and
//! [`DirectionStats::lateness_max`] report it, so a benchmark can check the link
//! was what it claimed. The bottleneck runs in virtual time (departures follow from
//! arrival times and sizes, not from when the thread happens to run), so the rate is
//! exact on average however the releases are batched. Unshaped, the relay carries
//! 2–3 Gbit/s of TCP in 1500-byte packets on 2 cores, using 50–80% of one core,
//! and holds a 1 Gbit/s rate exactly.
//!
//! The kernel keeps a queue in front of the relay (the TUN's transmit queue, 10,000
//! packets) that the model does not see: a packet's arrival is when the relay reads
//! it. Packets wait there only while the relay thread cannot run, which at real-time
//! priority means hardly ever.
//!
//! ```no_run
//! use std::net::{SocketAddr, UdpSocket};
//! use std::time::Duration;
//! use netem::{Link, LinkConditions, LinkConfig, Side};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 50 ms round trip, 1% loss each way, 200 Mbit/s, 1 ms jitter.
//! let conditions = LinkConditions {
//!     loss: 0.01,
//!     rate_bits_per_sec: Some(200_000_000),
//!     jitter: Duration::from_millis(1),
//!     ..LinkConditions::from_rtt(Duration::from_millis(50))
//! };
//! let link = Link::start(LinkConfig::symmetric(conditions))?;
//!
//! // A server process in B, e.g. `ip netns exec mftq-emu-…-b mftq serve …`:
//! let server = link.command(Side::B, "mftq").args(["serve", "--listen", "quic/198.18.0.2:4433"]).spawn()?;
//!
//! // Or sockets of this process, bound inside the namespaces:
//! let b_addr = SocketAddr::from((link.address(Side::B), 9000));
//! let receiver = link.enter(Side::B, || UdpSocket::bind(b_addr))??;
//! let sender = link.enter(Side::A, || UdpSocket::bind((link.address(Side::A), 0)))??;
//! sender.send_to(b"hello", b_addr)?;
//! let mut buf = [0; 64];
//! let (n, _) = receiver.recv_from(&mut buf)?; // about 25 ms later (unless lost)
//! assert_eq!(&buf[..n], b"hello");
//! println!("{:?}", link.stats().a_to_b);
//! # drop(server);
//! # Ok(()) }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod conditions;
mod error;
mod netns;
mod relay;
mod shaper;
mod stats;
mod sys;

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;

pub use conditions::{Direction, LinkConditions, LinkConfig, QueueLimit, Side};
pub use error::Error;
pub use stats::{DirectionStats, LinkStats};

use netns::Namespace;
use relay::Relay;

/// The name of the TUN interface in each namespace.
pub const INTERFACE: &str = "emu0";

/// Address of side A.
pub const ADDRESS_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Address of side B.
pub const ADDRESS_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Transmit queue length of the TUN interfaces: the kernel's buffer in front of the
/// relay (the default 500 packets overflows under bursts, and those drops would be
/// invisible to [`Link::stats`]).
const TX_QUEUE_LEN: u32 = 10_000;

/// Checks that the emulator can run here: root, `/dev/net/tun`, the `ip` command.
///
/// [`Link::start`] does the same; call this first to skip a bench or test with the
/// error's message.
pub fn preflight() -> Result<(), Error> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    // Opening the clone device creates nothing until TUNSETIFF.
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(sys::TUN_DEVICE)
        .map_err(|source| Error::NoTun {
            path: sys::TUN_DEVICE,
            source,
        })?;
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(Error::NoIp)?;
    Ok(())
}

/// A running emulated link between two network namespaces. Dropping it stops the
/// relay, removes the TUN devices and deletes the namespaces (processes still inside
/// lose their network; sockets this process made there stop carrying packets).
#[derive(Debug)]
pub struct Link {
    // Dropped in this order: the relays first (their threads hold the TUN devices,
    // which close when both have stopped), then the namespaces.
    relays: [Relay; 2],
    namespaces: [Namespace; 2],
    config: LinkConfig,
}

impl Link {
    /// Creates the namespaces, interfaces and relay threads.
    ///
    /// Fails if the configuration is out of range or [`preflight`] fails, or if an
    /// `ip` command or a system call fails (the error says which); nothing is left
    /// behind then.
    pub fn start(config: LinkConfig) -> Result<Link, Error> {
        config.validate()?;
        preflight()?;
        netns::remove_stale();
        let stem = netns::unique_stem();
        let a = Namespace::create(format!("{stem}-a"))?;
        let b = Namespace::create(format!("{stem}-b"))?;
        let tun_a = Arc::new(Self::setup(&a, ADDRESS_A, ADDRESS_B, config.mtu)?);
        let tun_b = Arc::new(Self::setup(&b, ADDRESS_B, ADDRESS_A, config.mtu)?);
        let mtu = config.mtu as usize;
        // Distinct, fixed streams per direction, both from the one seed.
        let seed_b = config.seed ^ 0x5851_f42d_4c95_7f2d;
        let a_to_b = Relay::spawn(
            Direction::AToB,
            tun_a.clone(),
            tun_b.clone(),
            config.a_to_b,
            config.seed,
            mtu,
            config.realtime,
        )?;
        let b_to_a = Relay::spawn(
            Direction::BToA,
            tun_b,
            tun_a,
            config.b_to_a,
            seed_b,
            mtu,
            config.realtime,
        )?;
        Ok(Link {
            relays: [a_to_b, b_to_a],
            namespaces: [a, b],
            config,
        })
    }

    /// Makes the namespace's TUN interface and brings it and `lo` up.
    fn setup(ns: &Namespace, local: Ipv4Addr, peer: Ipv4Addr, mtu: u32) -> Result<File, Error> {
        let tun = ns.run(|| {
            // No IPv6 on the new interface: it would send router solicitations and
            // MLD reports of its own, which would show up in the counters.
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
            sys::create_tun(INTERFACE)
        })?;
        let tun = tun.map_err(|e| {
            Error::io(
                format!("creating TUN device {INTERFACE} in {}", ns.name()),
                e,
            )
        })?;
        ns.ip_batch(&format!(
            "link set dev lo up\n\
             link set dev {INTERFACE} mtu {mtu} txqueuelen {TX_QUEUE_LEN} up\n\
             addr add {local}/32 peer {peer}/32 dev {INTERFACE}\n"
        ))?;
        Ok(tun)
    }

    fn namespace_of(&self, side: Side) -> &Namespace {
        match side {
            Side::A => &self.namespaces[0],
            Side::B => &self.namespaces[1],
        }
    }

    fn relay(&self, direction: Direction) -> &Relay {
        &self.relays[direction.index()]
    }

    /// The namespace's name, for `ip netns exec NAME …` or `ip -n NAME …`.
    pub fn namespace(&self, side: Side) -> &str {
        self.namespace_of(side).name()
    }

    /// The side's address on the link (A: 198.18.0.1, B: 198.18.0.2).
    pub fn address(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::A => ADDRESS_A,
            Side::B => ADDRESS_B,
        }
    }

    /// The configuration the link started with (conditions may have changed since:
    /// see [`conditions`](Link::conditions)).
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Runs `f` on a fresh thread that has joined the side's network namespace, and
    /// returns its result. Sockets `f` creates belong to that namespace for good and
    /// can be used from any thread afterwards. A panic in `f` is resumed here.
    ///
    /// Fails only if the thread cannot be started or cannot join the namespace.
    pub fn enter<T, F>(&self, side: Side, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.namespace_of(side).run(f)
    }

    /// A command that runs `program` inside the side's namespace (as
    /// `ip netns exec NAME program`); add arguments and spawn it as usual. The
    /// program must not outlive the link if it needs the network.
    pub fn command(&self, side: Side, program: impl AsRef<OsStr>) -> Command {
        self.namespace_of(side).command(program.as_ref())
    }

    /// The conditions now applied in one direction.
    pub fn conditions(&self, direction: Direction) -> LinkConditions {
        self.relay(direction).conditions()
    }

    /// Changes one direction's conditions while the link runs. When this returns,
    /// every packet entering that direction meets the new conditions; packets already
    /// on their way keep their delivery times (a blackhole discards them instead).
    /// The bottleneck's backlog carries over.
    pub fn set_conditions(
        &self,
        direction: Direction,
        conditions: LinkConditions,
    ) -> Result<(), Error> {
        conditions.validate()?;
        self.relay(direction).set_conditions(conditions)
    }

    /// Both directions' counters now.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            a_to_b: self.relay(Direction::AToB).stats(),
            b_to_a: self.relay(Direction::BToA).stats(),
        }
    }

    /// Checks both relay threads still run (they stop only on an I/O error on a TUN
    /// device, which should not happen while the link exists).
    pub fn check(&self) -> Result<(), Error> {
        for direction in Direction::BOTH {
            if !self.relay(direction).is_running() {
                return Err(Error::RelayStopped(direction.label()));
            }
        }
        Ok(())
    }

    /// Makes `algorithm` (e.g. `"cubic"`, `"bbr"`, `"reno"`) the default TCP
    /// congestion control of the side's namespace: sockets created there afterwards
    /// use it (the setting is per namespace; the host's stays as it is).
    ///
    /// The kernel lets a namespace other than the initial one choose only algorithms
    /// in the global `net.ipv4.tcp_allowed_congestion_control` list; if `algorithm`
    /// is missing from it, it is added (a host-wide change, which only widens what
    /// unprivileged sockets may choose, and is not undone). Fails if the kernel does
    /// not have the algorithm (the error lists those it has) or it cannot be set.
    pub fn set_tcp_congestion(&self, side: Side, algorithm: &str) -> Result<(), Error> {
        self.namespace_of(side).set_tcp_congestion(algorithm)
    }

    /// Reads a sysctl of the side's namespace, such as
    /// `net.ipv4.tcp_congestion_control` (dots or slashes; `net.*` only).
    pub fn sysctl(&self, side: Side, key: &str) -> Result<String, Error> {
        self.namespace_of(side).sysctl(key)
    }

    /// Sets a sysctl of the side's namespace, e.g. `net.ipv4.tcp_rmem` to
    /// `"4096 131072 33554432"` so TCP's window can fill a long fat link (the
    /// defaults cap it near 3 MB: about 500 Mbit/s at 50 ms). Only `net.*` names are
    /// accepted, since only those are per namespace; a few of them are still global
    /// (`net.core.rmem_max`, say) and cannot be written from inside.
    pub fn set_sysctl(&self, side: Side, key: &str, value: &str) -> Result<(), Error> {
        self.namespace_of(side).set_sysctl(key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Link>();
        send_sync::<Error>();
    }
}
