//! End-to-end transfers on loopback, in one process: raw bytes over flows, and whole
//! mft batches with full security (handshake, sealed and signed segments stored in
//! an embedded store in /dev/shm or the temporary directory, completion, receipt),
//! over QUIC and over HTTPS. Criterion reports the throughput of each.
//!
//! `cargo bench --bench transfer`. Both sides share this process's cores here; for
//! per-side CPU figures and emulated links use `mftq bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flow::{Authorizer, Endpoint, Flow, Identity, Manager, ManagerConfig, PeerKey, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 64 << 20;
const CHUNK: usize = 1 << 20;
const FLOWS: usize = 8;
const PROTOCOLS: [&str; 2] = ["quic", "https"];

/// Two servers on loopback (a raw sink and an mft server with an embedded store),
/// each on QUIC and HTTPS, and a client.
struct Loopback {
    runtime: tokio::runtime::Runtime,
    client: Manager,
    raw: (PeerKey, Vec<Endpoint>),
    mft: (PeerKey, Vec<Endpoint>),
    _store: tempfile::TempDir,
}

async fn listen_all(manager: &Manager) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for protocol in PROTOCOLS {
        let handle = manager
            .listen(protocol, "127.0.0.1:0")
            .await
            .expect("listens");
        endpoints.push(handle.endpoint().clone());
    }
    endpoints
}

fn manager(identity: Identity) -> Manager {
    Manager::new(identity, Registry::default(), ManagerConfig::default()).expect("manager")
}

impl Loopback {
    fn new() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let store = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let (raw, mft) = runtime.block_on(async {
            let sink = manager(Identity::generate());
            let raw = (sink.identity().public_key(), listen_all(&sink).await);
            tokio::spawn(async move {
                while let Ok(flow) = sink.accept().await {
                    tokio::spawn(drain(flow));
                }
            });
            let identity = Identity::generate();
            let serving = manager(identity.clone());
            let mft = (identity.public_key(), listen_all(&serving).await);
            let fs = mft::store::FsStore::open(store.path()).expect("store");
            let server = mft::Server::builder(identity, Arc::new(fs))
                .authorize(|r: &mft::Request<'_>| r.direction == mft::Direction::Send)
                .build();
            tokio::spawn(async move { server.serve(serving).await });
            (raw, mft)
        });
        let client = runtime.block_on(async { manager(Identity::generate()) });
        Loopback {
            runtime,
            client,
            raw,
            mft,
            _store: store,
        }
    }

    /// Sends `SIZE` bytes over `FLOWS` raw flows; returns when the sink counted them.
    async fn raw_send(&self, endpoint: &Endpoint, block: Arc<Vec<u8>>) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..FLOWS {
            let client = self.client.clone();
            let endpoint = endpoint.clone();
            let block = block.clone();
            let key = self.raw.0;
            tasks.spawn(async move {
                let mut flow = client
                    .dial(&endpoint, Authorizer::pinned(key), Duration::from_secs(10))
                    .await
                    .expect("dials");
                let share = SIZE / FLOWS as u64;
                let mut left = share;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    flow.write_all(&block[..n]).await.expect("writes");
                    left -= n as u64;
                }
                flow.shutdown().await.expect("closes");
                let mut count = [0u8; 8];
                flow.read_exact(&mut count).await.expect("count");
                assert_eq!(u64::from_be_bytes(count), share);
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("raw flow");
        }
    }

    /// Sends one batch of `SIZE` bytes with full mft security.
    async fn mft_send(&self, endpoint: &Endpoint, batch: u64, block: Arc<Vec<u8>>) {
        let mut config = mft::ClientConfig::new(endpoint.clone(), self.mft.0);
        config.streams(FLOWS).chunk_size(CHUNK as u32);
        let sender = mft::Sender::new(self.client.clone(), config).expect("sender");
        let reader = Repeat { block, left: SIZE };
        let receipt = sender
            .send_with(reader, format!("bench-{batch}").as_bytes(), |content| {
                Ok(content.sha256.to_vec())
            })
            .await
            .expect("sends");
        assert_eq!(receipt.size, SIZE);
    }
}

async fn drain(mut flow: Flow) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while let Ok(n) = flow.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = flow.write_all(&total.to_be_bytes()).await;
    let _ = flow.shutdown().await;
}

/// `left` bytes of `block`, repeated.
struct Repeat {
    block: Arc<Vec<u8>>,
    left: u64,
}

impl tokio::io::AsyncRead for Repeat {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (self.left.min(buf.remaining() as u64) as usize).min(self.block.len());
        let block = self.block.clone();
        buf.put_slice(&block[..n]);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

fn transfers(c: &mut Criterion) {
    let lo = Loopback::new();
    let block: Arc<Vec<u8>> = Arc::new((0..CHUNK).map(|i| (i * 31 % 251) as u8).collect());
    let mut group = c.benchmark_group("loopback transfer");
    group
        .throughput(Throughput::Bytes(SIZE))
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let mut batch = 0u64;
    for (k, protocol) in PROTOCOLS.iter().enumerate() {
        group.bench_function(BenchmarkId::new("raw", protocol), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    lo.runtime
                        .block_on(lo.raw_send(&lo.raw.1[k], block.clone()));
                }
                started.elapsed()
            })
        });
        group.bench_function(BenchmarkId::new("mft", protocol), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    batch += 1;
                    lo.runtime
                        .block_on(lo.mft_send(&lo.mft.1[k], batch, block.clone()));
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, transfers);
criterion_main!(benches);
