//! Compares QUIC congestion controllers on an emulated path, on loopback.
//!
//! Two QUIC endpoints (flow's own QUIC protocol, so the controller is the one
//! `QuicConfig::congestion` installs) talk through an in-process UDP relay. Towards
//! the server the relay applies random loss, then a bottleneck of fixed rate behind a
//! drop-tail queue of bounded size, then half the RTT of delay; back towards the
//! client only the other half of the delay. The client pushes one bulk stream and
//! the server counts what arrives.
//!
//! ```text
//! cargo run --release -p mftq-flow --example cc_probe -- \
//!     --mbps 200 --rtt-ms 50 --loss 1 --queue-ms 100 --secs 20 --warmup 5 --cc model,bbr,cubic
//! ```
//!
//! For each controller it prints the goodput over the measured interval (after
//! `--warmup` seconds), the mean smoothed RTT the sender saw over it, and what the
//! relay dropped. It is a tuning aid: user-space timers (about 1 ms) and a shared
//! CPU blur the path, so trust comparisons more than absolute numbers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flow::{
    Authorizer, CongestionControl, DialContext, Identity, ListenContext, Protocol, QuicConfig,
    QuicProtocol,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// The emulated path.
#[derive(Clone, Copy, Debug)]
struct Path {
    /// Bottleneck rate, bytes per second.
    rate: f64,
    /// Queue in front of the bottleneck, bytes.
    queue: f64,
    /// Random loss probability.
    loss: f64,
    /// Half the round-trip propagation delay.
    one_way: Duration,
}

#[derive(Debug, Default)]
struct RelayStats {
    forwarded: AtomicU64,
    random_drops: AtomicU64,
    overflow_drops: AtomicU64,
}

struct Options {
    mbps: f64,
    rtt_ms: f64,
    loss_percent: f64,
    queue_ms: f64,
    secs: f64,
    warmup: f64,
    ccs: Vec<CongestionControl>,
    trace: bool,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        mbps: 200.0,
        rtt_ms: 50.0,
        loss_percent: 1.0,
        queue_ms: 100.0,
        secs: 20.0,
        warmup: 5.0,
        ccs: vec![
            CongestionControl::Model,
            CongestionControl::Bbr,
            CongestionControl::Cubic,
        ],
        trace: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--trace" {
            o.trace = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<f64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--mbps" => o.mbps = num()?,
            "--rtt-ms" => o.rtt_ms = num()?,
            "--loss" => o.loss_percent = num()?,
            "--queue-ms" => o.queue_ms = num()?,
            "--secs" => o.secs = num()?,
            "--warmup" => o.warmup = num()?,
            "--cc" => {
                o.ccs = value
                    .split(',')
                    .map(|name| name.parse().map_err(|e| format!("{e}")))
                    .collect::<Result<_, String>>()?;
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --mbps --rtt-ms --loss (percent) \
                     --queue-ms --secs --warmup --cc (comma-separated) --trace"
                ));
            }
        }
    }
    if o.warmup >= o.secs {
        return Err("--warmup must be shorter than --secs".into());
    }
    Ok(o)
}

/// xorshift64*, for the relay's random loss.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A relay socket: big buffers, so it does not drop bursts itself. quinn-udp sets it
/// up, which also turns on GRO, so datagrams must be read through [`recv_segments`].
async fn bind_big() -> std::io::Result<(UdpSocket, quinn::udp::UdpSocketState)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
    let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
    Ok((socket, state))
}

/// Receives a batch and hands each datagram (GRO undone) to `each`.
async fn recv_segments(
    socket: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8], SocketAddr),
) -> std::io::Result<()> {
    loop {
        socket.readable().await?;
        let mut meta = [quinn::udp::RecvMeta::default()];
        let got = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            state.recv(socket.into(), &mut iov, &mut meta)
        });
        match got {
            Ok(n) => {
                for m in &meta[..n] {
                    for datagram in buf[..m.len].chunks(m.stride.max(1)) {
                        each(datagram, m.addr);
                    }
                }
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sends each datagram at its time, in order.
async fn deliver(
    socket: Arc<UdpSocket>,
    mut queue: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    to: Arc<Mutex<Option<SocketAddr>>>,
) {
    while let Some((at, datagram)) = queue.recv().await {
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let dest = *to.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dest) = dest {
            let _ = socket.send_to(&datagram, dest).await;
        }
    }
}

/// Starts a relay towards `server`; returns the address to dial and its counters.
async fn relay(
    path: Path,
    server: SocketAddr,
    seed: u64,
) -> std::io::Result<(
    SocketAddr,
    Arc<RelayStats>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let (client_side, client_state) = bind_big().await?;
    let (server_side, server_state) = bind_big().await?;
    let (client_side, server_side) = (Arc::new(client_side), Arc::new(server_side));
    let address = client_side.local_addr()?;
    let stats = Arc::new(RelayStats::default());
    let client_addr = Arc::new(Mutex::new(None));
    let server_addr = Arc::new(Mutex::new(Some(server)));
    let (to_server, to_server_rx) = mpsc::unbounded_channel();
    let (to_client, to_client_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();

    // Towards the server: loss, bottleneck queue, delay.
    {
        let (socket, stats, client_addr) =
            (client_side.clone(), stats.clone(), client_addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed | 1);
            let mut link_free = Instant::now();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let forward = |datagram: &[u8], from: SocketAddr| {
                    *client_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                    if path.loss > 0.0 && rng.unit() < path.loss {
                        stats.random_drops.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let now = Instant::now();
                    let n = datagram.len() as f64;
                    let backlog =
                        link_free.saturating_duration_since(now).as_secs_f64() * path.rate;
                    if backlog + n > path.queue {
                        stats.overflow_drops.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    link_free = link_free.max(now) + Duration::from_secs_f64(n / path.rate);
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    let _ = to_server.send((link_free + path.one_way, datagram.to_vec()));
                };
                if recv_segments(&socket, &client_state, &mut buf, forward)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    tasks.push(tokio::spawn(deliver(
        server_side.clone(),
        to_server_rx,
        server_addr,
    )));
    // Towards the client: delay only.
    {
        let socket = server_side.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let back = |datagram: &[u8], _from: SocketAddr| {
                    let _ = to_client.send((Instant::now() + path.one_way, datagram.to_vec()));
                };
                if recv_segments(&socket, &server_state, &mut buf, back)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    tasks.push(tokio::spawn(deliver(
        client_side,
        to_client_rx,
        client_addr,
    )));
    Ok((address, stats, tasks))
}

fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<_> = lines.next()?.split_whitespace().collect();
    let values: Vec<_> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

struct Outcome {
    mbps: f64,
    mean_rtt_ms: f64,
    forwarded: u64,
    random_drops: u64,
    overflow_drops: u64,
    rcvbuf_errors: Option<u64>,
}

async fn probe(
    o: &Options,
    cc: CongestionControl,
    relay_rt: &tokio::runtime::Handle,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let path = Path {
        rate: o.mbps * 1e6 / 8.0,
        queue: (o.mbps * 1e6 / 8.0 * o.queue_ms / 1000.0).max(3000.0),
        loss: o.loss_percent / 100.0,
        one_way: Duration::from_secs_f64(o.rtt_ms / 2000.0),
    };
    let mut config = QuicConfig::default();
    config
        .stream_receive_window(64 << 20)
        .receive_window(128 << 20)
        .send_window(128 << 20)
        .congestion(cc);
    let quic = QuicProtocol::new(config);

    let server_id = Identity::generate();
    let server_key = server_id.public_key();
    let listener = quic
        .listen(
            &ListenContext::new(server_id, Authorizer::any()),
            "quic",
            "127.0.0.1:0",
        )
        .await?;
    let server: SocketAddr = listener.local_address().parse()?;
    let (dial_to, stats, relay_tasks) = relay_rt.spawn(relay(path, server, 0x5eed)).await??;

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = tokio::spawn(async move {
        let conn = listener.accept().await?;
        let mut flow = conn.accept_flow().await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = flow.recv.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        drop(listener);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    let conn = quic
        .dial(
            &DialContext::new(Identity::generate(), Authorizer::pinned(server_key)),
            "quic",
            &if std::env::var_os("CC_PROBE_DIRECT").is_some() {
                server.to_string()
            } else {
                dial_to.to_string()
            },
            Duration::from_secs(10),
        )
        .await?;
    let mut flow = conn.open_flow().await?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(o.secs);
    let measure_from = start + Duration::from_secs_f64(o.warmup);
    let sender = tokio::spawn(async move {
        let chunk = vec![0u8; 1 << 20];
        while Instant::now() < end {
            if let Err(e) = flow.send.write_all(&chunk).await {
                eprintln!("cc_probe: sending failed: {e}");
                break;
            }
        }
        let _ = flow.send.shutdown().await;
        drop(flow);
    });

    let mut rtts = VecDeque::new();
    let mut at_measure = None;
    let mut rcvbuf_before = None;
    let mut last = (start, 0u64);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        if now >= measure_from {
            if at_measure.is_none() {
                at_measure = Some((now, received.load(Ordering::Relaxed)));
                rcvbuf_before = udp_rcvbuf_errors();
            }
            if let Some(rtt) = conn.rtt() {
                rtts.push_back(rtt.as_secs_f64());
            }
        }
        if o.trace && now.duration_since(last.0) >= Duration::from_secs(1) {
            let got = received.load(Ordering::Relaxed);
            println!(
                "    {:5.1} s: {:7.1} Mbit/s, srtt {:6.1} ms",
                now.duration_since(start).as_secs_f64(),
                (got - last.1) as f64 * 8.0 / now.duration_since(last.0).as_secs_f64() / 1e6,
                conn.rtt().unwrap_or_default().as_secs_f64() * 1e3
            );
            last = (now, got);
        }
    }
    let (t0, b0) = at_measure.unwrap_or((start, 0));
    let now = Instant::now();
    let got = received.load(Ordering::Relaxed);
    let rcvbuf_errors = match (rcvbuf_before, udp_rcvbuf_errors()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    sender.abort();
    conn.close(flow::CloseCode::Closed, "done");
    if receiver.is_finished() {
        if let Ok(Err(e)) = receiver.await {
            eprintln!("cc_probe: receiving failed: {e}");
        }
    } else {
        receiver.abort();
    }
    for task in relay_tasks {
        task.abort();
    }
    Ok(Outcome {
        mbps: (got - b0) as f64 * 8.0 / now.duration_since(t0).as_secs_f64() / 1e6,
        mean_rtt_ms: rtts.iter().sum::<f64>() / rtts.len().max(1) as f64 * 1e3,
        forwarded: stats.forwarded.load(Ordering::Relaxed),
        random_drops: stats.random_drops.load(Ordering::Relaxed),
        overflow_drops: stats.overflow_drops.load(Ordering::Relaxed),
        rcvbuf_errors,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cc_probe: {e}");
            std::process::exit(2);
        }
    };
    // The relay keeps its own thread, so the endpoints' work does not delay it.
    let relay_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let relay_handle = relay_rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_thread = std::thread::spawn(move || {
        relay_rt.block_on(async {
            let _ = stopped.await;
        });
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "path: {} Mbit/s, RTT {} ms, {} % random loss, queue {} ms; {} s, measured after {} s",
        o.mbps, o.rtt_ms, o.loss_percent, o.queue_ms, o.secs, o.warmup
    );
    for &cc in &o.ccs {
        let outcome = rt.block_on(probe(&o, cc, &relay_handle));
        match outcome {
            Ok(r) => println!(
                "{:>8}: {:7.1} Mbit/s ({:.3} of the link), mean srtt {:6.1} ms, relay forwarded {} \
                 dropped {} random + {} overflow{}",
                cc.as_str(),
                r.mbps,
                r.mbps / o.mbps,
                r.mean_rtt_ms,
                r.forwarded,
                r.random_drops,
                r.overflow_drops,
                r.rcvbuf_errors
                    .filter(|&e| e > 0)
                    .map(|e| format!(" (host UDP receive-buffer drops: {e})"))
                    .unwrap_or_default(),
            ),
            Err(e) => println!("{:>8}: failed: {e}", cc.as_str()),
        }
    }
    drop(rt);
    let _ = stop.send(());
    let _ = relay_thread.join();
    Ok(())
}
