//! The `mftq` command.
//!
//! Today it has one subcommand, `demo`, which runs a whole transfer on loopback: a
//! server with fresh keys and an embedded store in a temporary directory, a sender
//! pushing a generated batch over QUIC (many segment flows on one mutually
//! authenticated connection), a retriever pulling it back, every byte checked. The
//! HTTPS fallback and the full command set (keygen, serve, send, get, list, bench)
//! come with their own issues.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use flow::{Identity, Manager, ManagerConfig, Registry};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const USAGE: &str = "\
usage: mftq demo [--size SIZE] [--flows N]

Runs a whole transfer on loopback: a server with a fresh Ed25519 key and an
embedded store in a temporary directory, a sender pushing a generated batch over
QUIC, a retriever pulling it back; checks every byte and prints the throughput.

  --size SIZE   batch size, e.g. 64MiB, 1GiB, 1000000 (default 256MiB)
  --flows N     concurrent segment flows over the one connection (default 8)

Set RUST_LOG=debug for logs.";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mftq: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mftq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mftq: demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, PartialEq)]
struct DemoOptions {
    size: u64,
    flows: usize,
}

/// Parses the command line; `Ok(None)` asks for help.
fn parse(args: &[String]) -> Result<Option<DemoOptions>, String> {
    let mut options = DemoOptions {
        size: 256 << 20,
        flows: 8,
    };
    let mut args = args.iter();
    match args.next().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => return Ok(None),
        Some("demo") => {}
        Some(other) => {
            return Err(format!(
                "unknown command {other:?}; only `demo` exists so far"
            ));
        }
    }
    while let Some(flag) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--size" => options.size = parse_size(&value("--size")?)?,
            "--flows" => {
                let text = value("--flows")?;
                options.flows = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--flows {text:?}: expected 1 to 1024"))?;
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(Some(options))
}

/// Parses `123`, `64KiB`, `1MiB`, `2GiB` (also `KB`, `MB`, `GB` as powers of ten).
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("size {text:?}: expected a number with an optional unit (KiB, MiB, GiB)");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).ok_or_else(bad)
}

/// The demo batch's byte at `offset`: cheap to generate and to check, without holding
/// the batch in memory, and varied enough that misplaced segments would show.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 12).wrapping_mul(0x9e)) as u8
}

/// Generates `len` bytes of [`pattern`] as an `AsyncRead`.
struct PatternReader {
    offset: u64,
    len: u64,
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.len - self.offset).min(buf.remaining() as u64) as usize;
        let start = self.offset;
        let out = buf.initialize_unfilled_to(n);
        for (k, b) in out.iter_mut().enumerate() {
            *b = pattern(start + k as u64);
        }
        buf.advance(n);
        self.offset += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let mut suffix = [0u8; 8];
        mft::crypto::fill_random(&mut suffix);
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("mftq-demo-{name}"));
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
fn failed(step: &str, e: impl std::fmt::Display) -> String {
    format!("{step}: {e}")
}

async fn demo(options: DemoOptions) -> Result<(), String> {
    let data = TempDir::new().map_err(|e| failed("creating a temporary directory", e))?;
    let store = mft::store::FsStore::open(&data.0).map_err(|e| failed("opening the store", e))?;

    let server_identity = Identity::generate();
    let server_manager = Manager::new(
        server_identity.clone(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .map_err(|e| failed("starting the server", e))?;
    let listening = server_manager
        .listen("quic", "127.0.0.1:0")
        .await
        .map_err(|e| failed("listening", e))?;
    let client_manager = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )
    .map_err(|e| failed("starting the client", e))?;
    let client_key = client_manager.identity().public_key();
    // Only the demo's client may send and retrieve.
    let server = mft::Server::new(
        server_identity,
        Arc::new(store),
        mft::ServerConfig::default(),
    )
    .authorize_senders(Arc::new(move |key, _, _| *key == client_key))
    .authorize_retrievers(Arc::new(move |key, _, _| *key == client_key));
    tokio::spawn({
        let server = server.clone();
        let manager = server_manager.clone();
        async move { server.serve(manager).await }
    });
    println!(
        "server {} on {}, store in {}",
        server.identity().public_key(),
        listening.endpoint(),
        data.0.display()
    );
    println!("client {client_key}");

    let mut config =
        mft::ClientConfig::new(listening.endpoint().clone(), server.identity().public_key());
    config.streams(options.flows);
    let sender = mft::Sender::new(client_manager.clone(), config.clone())
        .map_err(|e| failed("configuring the sender", e))?;
    let metadata = format!(
        r#"{{"name":"demo.bin","size":{},"generator":"mftq demo"}}"#,
        options.size
    );
    let started = Instant::now();
    let receipt = sender
        .send(
            PatternReader {
                offset: 0,
                len: options.size,
            },
            b"demo-batch",
            metadata.as_bytes(),
        )
        .await
        .map_err(|e| failed("sending", e))?;
    let sent = started.elapsed();

    let retriever = mft::Retriever::new(client_manager.clone(), config)
        .map_err(|e| failed("configuring the retriever", e))?;
    let started = Instant::now();
    let (mut batch, info) = retriever
        .get(b"demo-batch")
        .await
        .map_err(|e| failed("retrieving", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = batch
            .read(&mut buf)
            .await
            .map_err(|e| failed("retrieving", e))?;
        if n == 0 {
            break;
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(offset + k as u64)) {
            return Err(format!(
                "retrieved byte {} differs from what was sent",
                offset + k as u64
            ));
        }
        offset += n as u64;
    }
    let got = started.elapsed();
    if offset != options.size || info.metadata != metadata.as_bytes() {
        return Err(format!(
            "retrieved {offset} bytes and metadata {:?}; sent {} bytes and {metadata:?}",
            String::from_utf8_lossy(&info.metadata),
            options.size
        ));
    }
    let rate = |d: Duration| options.size as f64 / d.as_secs_f64().max(1e-9) / 1e6;
    println!(
        "batch {} ({}, {} segments over {} flows on {} QUIC connection): receipt signed by the server",
        String::from_utf8_lossy(&receipt.batch_id),
        human(receipt.size),
        receipt.segment_count,
        options.flows,
        client_manager.connections().len(),
    );
    println!("{:<10} {:>10} {:>10}", "step", "time", "MB/s");
    println!("{:<10} {:>10.2?} {:>10.1}", "send", sent, rate(sent));
    println!("{:<10} {:>10.2?} {:>10.1}", "retrieve", got, rate(got));
    println!("verified: every byte and the metadata match");
    client_manager.close();
    server_manager.close();
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sizes_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        for bad in [
            "",
            "MiB",
            "1 XiB",
            "-1",
            "1.5GiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_line() {
        assert_eq!(parse(&args(&[])), Ok(None));
        assert_eq!(
            parse(&args(&["demo"])),
            Ok(Some(DemoOptions {
                size: 256 << 20,
                flows: 8
            }))
        );
        assert_eq!(
            parse(&args(&["demo", "--size", "8MiB", "--flows", "3"])),
            Ok(Some(DemoOptions {
                size: 8 << 20,
                flows: 3
            }))
        );
        assert!(parse(&args(&["serve"])).unwrap_err().contains("serve"));
        assert!(parse(&args(&["demo", "--flows", "0"])).is_err());
        assert!(
            parse(&args(&["demo", "--size"]))
                .unwrap_err()
                .contains("--size")
        );
        assert!(
            parse(&args(&["demo", "--bogus"]))
                .unwrap_err()
                .contains("--bogus")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_moves_and_verifies_every_byte() {
        demo(DemoOptions {
            size: (3 << 20) + 7,
            flows: 4,
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn pattern_reader_yields_exactly_the_pattern() {
        let mut reader = PatternReader {
            offset: 0,
            len: 70_001,
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 70_001);
        assert!(out.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));
    }
}
