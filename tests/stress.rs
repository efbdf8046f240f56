//! Load (RELIABILITY.md, "Load"): `mftq serve` takes 200 concurrent batches over
//! 20 connections while a flood of stalled handshakes and stalled flows runs
//! beside them; every batch is retrieved and checked, a legitimate client still
//! completes, and the server's peak memory (VmHWM) stays under a stated bound.
//!
//! It takes a few seconds, so it runs with the other tests;
//! `cargo test --release --test stress -- --nocapture` prints the peak, which
//! README.md quotes.

mod common;

use common::payload;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::{Authorizer, Endpoint, Identity, Manager, ManagerConfig, Registry};
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_mftq");
/// Concurrent connections, and batches on each.
const CLIENTS: usize = 20;
const BATCHES_PER_CLIENT: usize = 10;
/// Each batch's size.
const BATCH: usize = 1 << 20;
/// The bound on the server's peak resident memory.
const PEAK_RSS_BOUND_MIB: u64 = 768;

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peak resident set of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_batches_under_a_flood_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server_id = Identity::generate();
    server_id.save(dir.join("server.key")).unwrap();
    let clients: Vec<Identity> = (0..=CLIENTS).map(|_| Identity::generate()).collect();
    let list: String = clients
        .iter()
        .map(|c| format!("{}\n", c.public_key()))
        .collect();
    std::fs::write(dir.join("allowed.txt"), list).unwrap();
    let mut server = Guard(
        Command::new(BIN)
            .args(["serve", "--data", "data", "--key", "server.key"])
            .args(["--senders", "allowed.txt", "--retrievers", "allowed.txt"])
            .args([
                "--listen",
                "quic/127.0.0.1:0",
                "--listen",
                "https/127.0.0.1:0",
            ])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = server.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut quic, mut https) = (None, None);
    while quic.is_none() || https.is_none() {
        let line = lines.next().expect("serve prints its endpoints").unwrap();
        if let Some(ep) = line.strip_prefix("listening on ") {
            let ep: Endpoint = ep.parse().unwrap();
            match ep.protocol() {
                "quic" => quic = Some(ep),
                _ => https = Some(ep),
            }
        }
    }
    let (quic, https) = (quic.unwrap(), https.unwrap());
    let server_key = server_id.public_key();

    // The flood, from another loopback address: stalled TLS handshakes on the
    // HTTPS port, and (from an authorised key) flows that announce a segment and
    // stall.
    let https_addr: std::net::SocketAddr = https.address().parse().unwrap();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(https_addr).await {
            stalled.push(stream);
        }
    }
    let staller = Manager::new(
        clients[CLIENTS].clone(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let mut stalled_flows = Vec::new();
    for _ in 0..100 {
        if let Ok(mut flow) = staller
            .dial(
                &quic,
                Authorizer::pinned(server_key),
                Duration::from_secs(10),
            )
            .await
        {
            // A length prefix of 4 MiB and nothing after it.
            let _ =
                tokio::io::AsyncWriteExt::write_all(&mut flow, &(4u32 << 20).to_be_bytes()).await;
            stalled_flows.push(flow);
        }
    }

    // 200 batches over 20 connections, all at once.
    let started = Instant::now();
    let mut sends = Vec::new();
    for (c, identity) in clients.iter().take(CLIENTS).enumerate() {
        let manager = Manager::new(
            identity.clone(),
            Registry::default(),
            ManagerConfig::default(),
        )
        .unwrap();
        let config = mft::ClientConfig::new(quic.clone(), server_key);
        let sender = Arc::new(mft::Sender::new(manager.clone(), config.clone()).unwrap());
        for b in 0..BATCHES_PER_CLIENT {
            let sender = sender.clone();
            let retriever = mft::Retriever::new(manager.clone(), config.clone()).unwrap();
            sends.push(tokio::spawn(async move {
                let seed = (c * BATCHES_PER_CLIENT + b) as u64;
                let data = payload(BATCH, seed);
                let id = format!("load-{seed}");
                sender
                    .send(std::io::Cursor::new(data.clone()), id.as_bytes(), b"")
                    .await
                    .unwrap_or_else(|e| panic!("send {id}: {e}"));
                let (mut back, _) = retriever.get(id.as_bytes()).await.unwrap();
                let mut got = Vec::new();
                back.read_to_end(&mut got).await.unwrap();
                assert!(got == data, "batch {id} came back different");
            }));
        }
    }
    // Not a speed check: the stalled flows are dropped after the server's 60 s
    // flow idle timeout, so finishing well before it shows they held nobody up
    // (one key's stalled flows once held the whole pending-bytes budget, and
    // every batch waited the full 60 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    for send in sends {
        tokio::time::timeout_at(deadline, send)
            .await
            .expect("every batch before the stalled flows time out")
            .unwrap();
    }
    let elapsed = started.elapsed();

    // A legitimate client over HTTPS completes too, with the flood still there.
    let late = Manager::new(
        clients[0].clone(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .unwrap();
    let sender = mft::Sender::new(late, mft::ClientConfig::new(https, server_key)).unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        sender.send(&b"still served"[..], b"late", b""),
    )
    .await
    .expect("in time")
    .unwrap();

    let peak = peak_rss_kib(server.0.id()) / 1024;
    println!(
        "{} batches of {} KiB in {elapsed:.1?}; server peak RSS {peak} MiB (bound {PEAK_RSS_BOUND_MIB} MiB)",
        CLIENTS * BATCHES_PER_CLIENT,
        BATCH >> 10
    );
    assert!(peak < PEAK_RSS_BOUND_MIB, "peak RSS {peak} MiB");
    drop((stalled, stalled_flows));
}
