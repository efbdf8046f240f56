//! `mftq demo`: the whole system on loopback. A server with a fresh key and an
//! embedded store in a temporary directory listens on QUIC and HTTPS; a client with
//! a fresh key pushes a generated batch over each transport, pulls both back, checks
//! every byte and the metadata, and prints a comparison.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::{Endpoint, Identity, Manager, ManagerConfig, Registry};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::args::DemoArgs;
use crate::error::{CliError, Exit};
use crate::output::{human, mb_per_s, print_json};
use crate::pattern::{self, PatternReader};

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let mut suffix = [0u8; 8];
        mft::crypto::fill_random(&mut suffix);
        let dir = std::env::temp_dir().join(format!("mftq-demo-{}", crate::output::hex(&suffix)));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Any failure of the demo, with what it was doing.
fn failed(step: &str, e: impl std::fmt::Display) -> CliError {
    CliError::other(format!("demo: {step}: {e}"))
}

/// One transport's figures.
struct Run {
    transport: &'static str,
    segments: u64,
    sent: Duration,
    got: Duration,
}

/// Runs the demo and prints the comparison.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let data = TempDir::new().map_err(|e| failed("creating a temporary directory", e))?;
    let dir = data.0.clone();
    let store = tokio::task::spawn_blocking(move || mft::store::FsStore::open(dir))
        .await
        .map_err(|e| failed("opening the store", e))?
        .map_err(|e| failed("opening the store", e))?;

    let server_identity = Identity::generate();
    let server_manager = Manager::new(
        server_identity.clone(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .map_err(|e| failed("starting the server", e))?;
    let mut endpoints = Vec::new();
    for protocol in ["quic", "https"] {
        let handle = server_manager
            .listen(protocol, "127.0.0.1:0")
            .await
            .map_err(|e| failed(&format!("listening on {protocol}"), e))?;
        endpoints.push((protocol, handle));
    }
    let client_identity = Identity::generate();
    let client_key = client_identity.public_key();
    // Only the demo's client may send and retrieve.
    let server = mft::Server::builder(server_identity, Arc::new(store))
        .authorize(move |request: &mft::Request<'_>| *request.key == client_key)
        .build();
    tokio::spawn({
        let server = server.clone();
        let manager = server_manager.clone();
        async move { server.serve(manager).await }
    });
    let server_key = server.identity().public_key();
    if !args.json {
        println!(
            "server {server_key} on {}, store in {}",
            endpoints
                .iter()
                .map(|(_, h)| h.endpoint().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            data.0.display()
        );
        println!("client {client_key}");
    }

    let mut runs = Vec::new();
    for (protocol, handle) in &endpoints {
        runs.push(
            one_transport(
                protocol,
                handle.endpoint(),
                &client_identity,
                server_key,
                &args,
            )
            .await?,
        );
    }
    server_manager.close();

    let size = args.size;
    if args.json {
        let list: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "transport": r.transport,
                    "size": size,
                    "segments": r.segments,
                    "flows": args.flows,
                    "send_seconds": r.sent.as_secs_f64(),
                    "send_mb_per_s": mb_per_s(size, r.sent),
                    "get_seconds": r.got.as_secs_f64(),
                    "get_mb_per_s": mb_per_s(size, r.got),
                    "verified": true,
                })
            })
            .collect();
        print_json(&json!({ "schema": "mftq-demo/1", "size": size, "runs": list }));
        return Ok(());
    }
    let segments = runs.first().map(|r| r.segments).unwrap_or(0);
    println!(
        "batch of {} ({segments} segments over {} flows on one connection per transport), receipts signed by the server",
        human(size),
        args.flows,
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}",
        "transport", "send time", "send MB/s", "get time", "get MB/s"
    );
    for r in &runs {
        println!(
            "{:<10} {:>10} {:>10.1} {:>10} {:>10.1}",
            r.transport,
            format!("{:.2?}", r.sent),
            mb_per_s(size, r.sent),
            format!("{:.2?}", r.got),
            mb_per_s(size, r.got),
        );
    }
    println!("verified: every byte and the metadata match over quic and https");
    Ok(())
}

/// Pushes and pulls one batch over one transport, checking every byte.
async fn one_transport(
    protocol: &'static str,
    endpoint: &Endpoint,
    identity: &Identity,
    server_key: flow::PeerKey,
    args: &DemoArgs,
) -> Result<Run, CliError> {
    // A manager per transport, so each run has its own connection.
    let manager = Manager::new(
        identity.clone(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .map_err(|e| failed("starting the client", e))?;
    let mut config = mft::ClientConfig::new(endpoint.clone(), server_key);
    config.streams(usize::from(args.flows));
    let sender = mft::Sender::new(manager.clone(), config.clone())
        .map_err(|e| failed("configuring the sender", e))?;
    let batch_id = format!("demo-{protocol}");
    let metadata = format!(
        r#"{{"name":"demo.bin","size":{},"generator":"mftq demo","transport":"{protocol}"}}"#,
        args.size
    );
    let started = Instant::now();
    let receipt = sender
        .send(
            PatternReader::new(args.size),
            batch_id.as_bytes(),
            metadata.as_bytes(),
        )
        .await
        .map_err(|e| failed(&format!("sending over {protocol}"), e))?;
    let sent = started.elapsed();

    let retriever = mft::Retriever::new(manager.clone(), config)
        .map_err(|e| failed("configuring the retriever", e))?;
    let started = Instant::now();
    let (mut batch, info) = retriever
        .get(batch_id.as_bytes())
        .await
        .map_err(|e| failed(&format!("retrieving over {protocol}"), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = batch
            .read(&mut buf)
            .await
            .map_err(|e| failed(&format!("retrieving over {protocol}"), e))?;
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern::byte_at(offset + k as u64)) {
            return Err(CliError::new(
                Exit::Integrity,
                format!(
                    "demo: retrieved byte {} over {protocol} differs from what was sent",
                    offset + k as u64
                ),
            ));
        }
        offset += n as u64;
    }
    let got = started.elapsed();
    if offset != args.size || info.metadata != metadata.as_bytes() {
        return Err(CliError::new(
            Exit::Integrity,
            format!(
                "demo: over {protocol}, retrieved {offset} bytes and metadata {:?}; sent {} bytes and {metadata:?}",
                String::from_utf8_lossy(&info.metadata),
                args.size
            ),
        ));
    }
    let connections = manager.connections();
    if connections.len() != 1 || connections.iter().any(|c| c.protocol() != protocol) {
        return Err(failed(
            protocol,
            format!(
                "expected one {protocol} connection, found {}",
                connections.len()
            ),
        ));
    }
    manager.close();
    Ok(Run {
        transport: protocol,
        segments: receipt.segment_count,
        sent,
        got,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_moves_and_verifies_every_byte() {
        run(DemoArgs {
            size: (3 << 20) + 7,
            flows: 4,
            json: true,
        })
        .await
        .expect("the demo succeeds");
    }
}
