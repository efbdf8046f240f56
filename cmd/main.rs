//! The `mftq` command.
//!
//! Today it has one subcommand, `demo`, which runs the flow layer end to end on
//! loopback: two managers with fresh keys, mutual TLS over QUIC, many concurrent flows
//! over one connection, every byte checked. The transfer protocol, the HTTPS fallback
//! and the full command set (keygen, serve, send, get, list, bench) come with their
//! own issues.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use flow::{Authorizer, Flow, Identity, Manager, ManagerConfig, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "\
usage: mftq demo [--size SIZE] [--flows N]

Runs a loopback QUIC transfer between two flow managers with fresh Ed25519 keys,
checks every byte, and prints the throughput.

  --size SIZE   bytes to send in total, e.g. 64MiB, 1GiB, 1000000 (default 256MiB)
  --flows N     concurrent flows over the one connection (default 8)

Set RUST_LOG=debug for logs.";

/// Per-flow write unit: large enough to keep QUIC streams busy, small enough to reuse.
const CHUNK: usize = 256 << 10;

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

/// The byte at offset `i` of flow `f`'s stream: cheap to make and to check, and
/// different on every flow so crossed streams would be caught.
fn pattern(f: usize, i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (f as u64).wrapping_mul(0x9e)) as u8 ^ (i >> 12) as u8
}

async fn demo(options: DemoOptions) -> flow::Result<()> {
    let server = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )?;
    let listening = server.listen("quic", "127.0.0.1:0").await?;
    let client = Manager::new(
        Identity::generate(),
        Registry::default(),
        ManagerConfig::default(),
    )?;
    println!(
        "server {} listening on {}",
        server.identity().public_key(),
        listening.endpoint()
    );
    println!("client {}", client.identity().public_key());

    let flows = options.flows;
    let per_flow = options.size / flows as u64;
    let extra = options.size % flows as u64;
    let receiver = tokio::spawn({
        let server = server.clone();
        async move {
            let mut checks = Vec::new();
            for _ in 0..flows {
                let flow = server.accept().await?;
                checks.push(tokio::spawn(receive_and_check(flow)));
            }
            let mut total = 0;
            for check in checks {
                total += check.await.map_err(|e| {
                    flow::Error::protocol(flow::ErrorKind::Aborted, e.to_string())
                })??;
            }
            Ok::<u64, flow::Error>(total)
        }
    });

    let started = Instant::now();
    let pinned = Authorizer::pinned(server.identity().public_key());
    let mut senders = Vec::new();
    for f in 0..flows {
        let len = per_flow + if f == 0 { extra } else { 0 };
        let flow = client
            .dial(
                listening.endpoint(),
                pinned.clone(),
                Duration::from_secs(10),
            )
            .await?;
        senders.push(tokio::spawn(send_pattern(flow, f, len)));
    }
    for sender in senders {
        sender
            .await
            .map_err(|e| flow::Error::protocol(flow::ErrorKind::Aborted, e.to_string()))??;
    }
    let received = receiver
        .await
        .map_err(|e| flow::Error::protocol(flow::ErrorKind::Aborted, e.to_string()))??;
    let elapsed = started.elapsed();
    let connections = client.connections();
    let rtt = connections.first().and_then(|c| c.rtt());
    println!(
        "sent and verified {} over {} flow(s) on {} QUIC connection(s) in {:.2?}: {:.1} MB/s (rtt {:?})",
        human(received),
        flows,
        connections.len(),
        elapsed,
        received as f64 / elapsed.as_secs_f64() / 1e6,
        rtt.unwrap_or_default(),
    );
    client.close();
    server.close();
    Ok(())
}

/// Sends `[flow index][length]` then `len` pattern bytes, and waits for the
/// receiver's verdict.
async fn send_pattern(mut flow: Flow, f: usize, len: u64) -> flow::Result<()> {
    flow.write_msg(&[&(f as u32).to_be_bytes(), &len.to_be_bytes()])
        .await?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(f, sent + k as u64);
        }
        flow.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    match flow.read_msg().await? {
        Some(verdict) if verdict.as_ref() == b"ok" => Ok(()),
        Some(verdict) => Err(flow::Error::protocol(
            flow::ErrorKind::Network,
            format!("receiver reports: {}", String::from_utf8_lossy(&verdict)),
        )),
        None => Err(flow::Error::protocol(
            flow::ErrorKind::Aborted,
            "receiver ended the flow without a verdict",
        )),
    }
}

/// Reads one flow's header and data, checks every byte, and answers "ok".
async fn receive_and_check(mut flow: Flow) -> flow::Result<u64> {
    let bad = |why: String| flow::Error::protocol(flow::ErrorKind::Network, why);
    let header = flow
        .read_msg()
        .await?
        .ok_or_else(|| bad("flow ended before its header".into()))?;
    let (f, len) = match header.as_ref() {
        [a, b, c, d, rest @ ..] if rest.len() == 8 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(rest);
            (
                u32::from_be_bytes([*a, *b, *c, *d]) as usize,
                u64::from_be_bytes(n),
            )
        }
        _ => {
            return Err(bad(format!(
                "header of {} bytes, expected 12",
                header.len()
            )));
        }
    };
    let mut buf = vec![0u8; CHUNK];
    let mut seen = 0u64;
    while seen < len {
        let want = (len - seen).min(CHUNK as u64) as usize;
        let n = flow.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(bad(format!("flow {f} ended after {seen} of {len} bytes")));
        }
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(f, seen + k as u64)) {
            let verdict = format!("flow {f}: wrong byte at offset {}", seen + k as u64);
            flow.write_msg_and_close(&[verdict.as_bytes()]).await?;
            return Err(bad(verdict));
        }
        seen += n as u64;
    }
    flow.write_msg_and_close(&[b"ok"]).await?;
    Ok(seen)
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
}
