//! `mftq bench-peer`: one side of a benchmark run, in a process of its own so that
//! each side's CPU time and memory are its own and, on an emulated link, each side
//! sits in its own network namespace.
//!
//! The orchestrator (`mftq bench`) talks to a peer through its standard streams: a
//! server prints one JSON line with its endpoint, serves until its standard input
//! closes, then prints one JSON line with its [`Usage`]; a client moves its data,
//! then prints one JSON line with its [`ClientReport`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use flow::{Authorizer, Endpoint, Flow, Identity, Manager, ManagerConfig, PeerKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::args::{CompressArg, TuningArgs, parse_size};
use crate::bench::usage::Usage;
use crate::client::load_identity;
use crate::error::CliError;
use crate::output::hex;
use crate::pattern::{PatternReader, pattern_block};
use crate::tuning::Tuning;

/// `mftq bench-peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Which side.
    #[command(subcommand)]
    pub role: Role,
}

/// The side a peer plays.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Receive: an mft server, or a sink for raw flows.
    Server(ServerArgs),
    /// Send: one batch, many small ones, or raw bytes.
    Client(ClientArgs),
}

/// What moves over the flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Bytes, no mft layer.
    Raw,
    /// One mft batch.
    Mft,
    /// Many small mft batches.
    Small,
}

/// `mftq bench-peer server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Raw sink or mft server (`small` is served like `mft`).
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Where to listen, as protocol/address.
    #[arg(long, value_name = "PROTO/ADDR")]
    pub listen: String,
    /// The server's key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The one client key allowed in.
    #[arg(long, value_name = "PUB")]
    pub allow: String,
    /// The store directory (mft).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Open transfers the client may have at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_open: usize,
    /// Transport tuning.
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// `mftq bench-peer client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// What to send.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The server's endpoint.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: String,
    /// The server's public key.
    #[arg(long, value_name = "PUB")]
    pub server_key: String,
    /// Our key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Bytes to send (per batch in `small` mode).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: u64,
    /// Flows at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub flows: u16,
    /// Segment or write size.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub chunk: u64,
    /// Batches to send (`small`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub batches: u32,
    /// Batches in progress at once (`small`).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub concurrency: u16,
    /// The sender's compression.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// Transport tuning.
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// The first line a server prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerReady {
    /// Where it listens.
    pub endpoint: String,
}

/// What a client reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    /// Payload bytes moved.
    pub bytes: u64,
    /// From the first dial to the last acknowledgement (or receipt).
    pub seconds: f64,
    /// Batches sent (1, or the count in `small` mode).
    pub batches: u32,
    /// Median batch latency in `small` mode.
    pub p50_ms: Option<f64>,
    /// 99th-percentile batch latency in `small` mode.
    pub p99_ms: Option<f64>,
    /// The client process's resources.
    pub usage: Usage,
}

/// Runs a peer.
pub async fn run(args: PeerArgs) -> Result<(), CliError> {
    match args.role {
        Role::Server(args) => server(args).await,
        Role::Client(args) => client(args).await,
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::other(format!("bench peer: {what}: {e}"))
}

fn print_line(value: &impl Serialize) -> Result<(), CliError> {
    let line = serde_json::to_string(value).map_err(|e| failed("reporting", e))?;
    println!("{line}");
    Ok(())
}

async fn server(args: ServerArgs) -> Result<(), CliError> {
    let identity = load_identity(&args.key)?;
    let client_key: PeerKey = crate::client::parse_key("--allow", &args.allow)?;
    let tuning = Tuning::from(&args.tuning);
    let manager = Manager::new(
        identity.clone(),
        tuning.registry(),
        ManagerConfig::default(),
    )
    .map_err(|e| failed("starting", e))?;
    let (protocol, address) = args
        .listen
        .split_once('/')
        .ok_or_else(|| CliError::usage("--listen: expected PROTO/ADDR"))?;
    let handle = manager
        .listen(protocol, address)
        .await
        .map_err(|e| failed("listening", e))?;
    let serving = match args.mode {
        Mode::Raw => tokio::spawn(raw_sink(manager.clone(), client_key)),
        Mode::Mft | Mode::Small => {
            let dir = args.store.clone();
            let store = tokio::task::spawn_blocking(move || mft::store::FsStore::open(dir))
                .await
                .map_err(|e| failed("opening the store", e))?
                .map_err(|e| failed("opening the store", e))?;
            let mut config = mft::ServerConfig::default();
            config.max_open_transfers_per_peer(args.max_open);
            let server = mft::Server::builder(identity, Arc::new(store))
                .config(config)
                .authorize(move |request: &mft::Request<'_>| *request.key == client_key)
                .build();
            let manager = manager.clone();
            tokio::spawn(async move { server.serve(manager).await })
        }
    };
    print_line(&ServerReady {
        endpoint: handle.endpoint().to_string(),
    })?;
    // Serve until the orchestrator closes our standard input.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
    serving.abort();
    manager.close();
    print_line(&Usage::now())
}

/// Accepts raw flows from `client`: reads each to its end, answers with the byte
/// count, and closes it.
async fn raw_sink(manager: Manager, client: PeerKey) {
    while let Ok(flow) = manager.accept().await {
        if flow.remote_identity() != client {
            continue;
        }
        tokio::spawn(async move {
            let _ = drain(flow).await;
        });
    }
}

async fn drain(mut flow: Flow) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = flow.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    flow.write_all(&total.to_be_bytes()).await?;
    flow.shutdown().await?;
    Ok(total)
}

async fn client(args: ClientArgs) -> Result<(), CliError> {
    let identity = load_identity(&args.key)?;
    let server_key = crate::client::parse_key("--server-key", &args.server_key)?;
    let endpoint: Endpoint = args
        .to
        .parse()
        .map_err(|e: flow::Error| CliError::usage(format!("--to: {}", e.reason())))?;
    let tuning = Tuning::from(&args.tuning);
    let manager = Manager::new(identity, tuning.registry(), ManagerConfig::default())
        .map_err(|e| failed("starting", e))?;
    let chunk = usize::try_from(args.chunk).map_err(|_| CliError::usage("--chunk too large"))?;
    let flows = usize::from(args.flows.max(1));
    let report = match args.mode {
        Mode::Raw => raw_send(&manager, &endpoint, server_key, args.size, flows, chunk).await?,
        Mode::Mft | Mode::Small => {
            // Small batches go one segment each, over one segment flow.
            let (chunk, streams) = match args.mode {
                Mode::Small => ((chunk as u32).max(mft::wire::MIN_CHUNK_SIZE), 1),
                _ => (chunk as u32, flows),
            };
            let mut config = mft::ClientConfig::new(endpoint, server_key);
            tuning.apply(&mut config);
            config.chunk_size(chunk).streams(streams);
            config.compress(args.compress.into());
            // Sender::new checks the configuration, naming the bad field.
            let sender = mft::Sender::new(manager.clone(), config)
                .map_err(|e| CliError::usage(e.to_string()))?;
            if args.mode == Mode::Small {
                small_batches(&sender, args.size, args.batches, args.concurrency).await?
            } else {
                let started = Instant::now();
                let receipt = send_one(&sender, "bench", args.size).await?;
                ClientReport {
                    bytes: receipt.size,
                    seconds: started.elapsed().as_secs_f64(),
                    batches: 1,
                    p50_ms: None,
                    p99_ms: None,
                    usage: Usage::now(),
                }
            }
        }
    };
    manager.close();
    print_line(&report)
}

/// Sends one generated batch of `size` bytes, its SHA-256 computed as it streams,
/// as `mftq send` does.
async fn send_one(
    sender: &mft::Sender,
    batch_id: &str,
    size: u64,
) -> Result<mft::Receipt, CliError> {
    sender
        .send_with(PatternReader::new(size), batch_id.as_bytes(), |content| {
            let metadata = serde_json::json!({
                "name": "bench.bin",
                "size": content.size,
                "sha256": hex(&content.sha256),
            });
            Ok(metadata.to_string().into_bytes())
        })
        .await
        .map_err(|e| failed(&format!("sending {batch_id}"), e))
}

/// Sends `size` bytes split over `flows` raw flows in `chunk`-byte writes; each
/// flow waits for the server's count of what it received.
async fn raw_send(
    manager: &Manager,
    endpoint: &Endpoint,
    server_key: PeerKey,
    size: u64,
    flows: usize,
    chunk: usize,
) -> Result<ClientReport, CliError> {
    let block = bytes::Bytes::from(pattern_block(chunk.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..flows as u64 {
        let share = size / flows as u64 + u64::from(k < size % flows as u64);
        let manager = manager.clone();
        let endpoint = endpoint.clone();
        let block = block.clone();
        tasks.spawn(async move {
            let flow = manager
                .dial(
                    &endpoint,
                    Authorizer::pinned(server_key),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| failed("dialing", e))?;
            let (mut reader, mut writer) = flow.into_split();
            let mut left = share;
            while left > 0 {
                // Whole buffers, as the mft sender writes its segments.
                let n = left.min(block.len() as u64) as usize;
                writer
                    .write_chunks(&mut [block.slice(..n)])
                    .await
                    .map_err(|e| failed("writing", e))?;
                left -= n as u64;
            }
            writer.shutdown().await.map_err(|e| failed("closing", e))?;
            let mut count = [0u8; 8];
            reader
                .read_exact(&mut count)
                .await
                .map_err(|e| failed("reading the count", e))?;
            let count = u64::from_be_bytes(count);
            if count != share {
                return Err(failed(
                    "raw flow",
                    format!("the server counted {count} bytes of {share}"),
                ));
            }
            Ok::<u64, CliError>(share)
        });
    }
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        bytes += joined.map_err(|e| failed("raw flow", e))??;
    }
    Ok(ClientReport {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        batches: 1,
        p50_ms: None,
        p99_ms: None,
        usage: Usage::now(),
    })
}

/// Sends `count` batches of `size` bytes, `concurrency` at a time, over the one
/// connection, and reports their latency percentiles.
async fn small_batches(
    sender: &mft::Sender,
    size: u64,
    count: u32,
    concurrency: u16,
) -> Result<ClientReport, CliError> {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(usize::from(concurrency.max(1))));
    let mut tasks = tokio::task::JoinSet::new();
    // A first batch alone opens the connection, so the others measure batches.
    let first = Instant::now();
    send_one(sender, "small-0", size).await?;
    let mut latencies = vec![first.elapsed()];
    for i in 1..count {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| failed("small batches", e))?;
        let sender = sender.clone();
        tasks.spawn(async move {
            let began = Instant::now();
            let result = send_one(&sender, &format!("small-{i}"), size).await;
            drop(permit);
            result.map(|_| began.elapsed())
        });
        while let Some(joined) = tasks.try_join_next() {
            latencies.push(joined.map_err(|e| failed("small batch", e))??);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        latencies.push(joined.map_err(|e| failed("small batch", e))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    Ok(ClientReport {
        bytes: size * u64::from(count),
        seconds,
        batches: count,
        p50_ms: Some(percentile(0.50)),
        p99_ms: Some(percentile(0.99)),
        usage: Usage::now(),
    })
}

/// A fresh identity saved where a peer process can load it.
pub fn write_identity(dir: &std::path::Path, name: &str) -> Result<(Identity, PathBuf), CliError> {
    let identity = Identity::generate();
    let path = dir.join(name);
    identity
        .save(&path)
        .map_err(|e| CliError::io(format!("writing {}", path.display()), e))?;
    Ok((identity, path))
}
