//! `mftq bench`: throughput as a matrix over transports, flows, chunk sizes,
//! congestion controllers and link conditions.
//!
//! Each cell of the matrix runs a server process and a client process of this same
//! binary ([`peer`]), so each side's CPU time and peak memory are its own. With
//! link conditions (`--rtt`, `--loss`, `--rate`, `--jitter`) the two sit in two
//! network namespaces joined only by the user-space link emulator (`netem`), whose
//! relay runs in this process. A run moves one whole batch, connection setup,
//! handshake and completion included. The raw transports move the same bytes over
//! the same flows without the mft layer, so its cost is a ratio within one run.

pub mod chart;
pub mod peer;
pub mod usage;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use flow::CongestionControl;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::args::{BenchArgs, BenchTransport};
use crate::error::{CliError, Exit};
use crate::output::{human, print_json};
use peer::{ClientReport, ServerReady};
use usage::Usage;

/// The longest one run may take before it is stopped: every run ends by itself.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    /// The transport.
    pub transport: &'static str,
    /// Flows at once.
    pub flows: u16,
    /// Segment or write size.
    pub chunk: u64,
    /// QUIC congestion controller (QUIC transports).
    pub congestion: Option<&'static str>,
    /// TCP congestion controller pinned in the namespaces (HTTPS on a link).
    pub tcp_congestion: Option<String>,
    #[serde(skip)]
    kind: BenchTransport,
    #[serde(skip)]
    congestion_control: Option<CongestionControl>,
}

impl Cell {
    /// A short label for tables, charts and progress.
    pub fn label(&self) -> String {
        let mut label = format!(
            "{} ×{} {}",
            self.transport,
            self.flows,
            human(self.chunk).replace(".0 ", " ").replace(' ', "")
        );
        if let Some(cc) = self.congestion {
            label.push_str(&format!(" {cc}"));
        }
        if let Some(cc) = &self.tcp_congestion {
            label.push_str(&format!(" tcp-{cc}"));
        }
        label
    }
}

/// One cell's measured result.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured.
    #[serde(flatten)]
    pub cell: Cell,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Seconds the whole run took, seen by the client.
    pub seconds: f64,
    /// Payload megabytes (10⁶ bytes) per second.
    pub mb_per_s: f64,
    /// Goodput over the link rate, or over the raw mode of the same transport.
    pub ratio: Option<f64>,
    /// What `ratio` compares with: `link` or the raw transport's name.
    pub ratio_to: Option<String>,
    /// CPU seconds per GiB of the side that sends the data (the client).
    pub sender_cpu_s_per_gib: f64,
    /// CPU seconds per GiB of the side that receives (the server).
    pub receiver_cpu_s_per_gib: f64,
    /// Peak resident memory of the sender, in bytes.
    pub sender_peak_rss: u64,
    /// Peak resident memory of the receiver, in bytes.
    pub receiver_peak_rss: u64,
    /// CPU seconds of the link emulator's relay during the run.
    pub relay_cpu_seconds: Option<f64>,
    /// Small batches: how many, their rate, and latency percentiles.
    pub batches: u32,
    /// Batches per second.
    pub batches_per_s: Option<f64>,
    /// Median batch latency.
    pub p50_ms: Option<f64>,
    /// 99th-percentile batch latency.
    pub p99_ms: Option<f64>,
    /// Packets the emulated link dropped at random during the run, both ways.
    pub link_dropped_by_loss: Option<u64>,
    /// Packets the emulated link's bottleneck queue dropped during the run.
    pub link_dropped_by_queue: Option<u64>,
    /// Why the run failed, if it did (the bench goes on with the next).
    pub error: Option<String>,
}

impl Row {
    /// A run that failed: reported, not measured.
    fn failed(cell: &Cell, error: &CliError) -> Self {
        Row {
            cell: cell.clone(),
            bytes: 0,
            seconds: 0.0,
            mb_per_s: 0.0,
            ratio: None,
            ratio_to: None,
            sender_cpu_s_per_gib: 0.0,
            receiver_cpu_s_per_gib: 0.0,
            sender_peak_rss: 0,
            receiver_peak_rss: 0,
            relay_cpu_seconds: None,
            batches: 0,
            batches_per_s: None,
            p50_ms: None,
            p99_ms: None,
            link_dropped_by_loss: None,
            link_dropped_by_queue: None,
            error: Some(error.message.clone()),
        }
    }
}

/// The emulated link's settings, as reported.
#[derive(Clone, Debug, Serialize)]
struct LinkReport {
    rtt_ms: f64,
    loss: f64,
    rate_bits_per_sec: Option<u64>,
    jitter_ms: f64,
    queue_ms: f64,
    dropped_by_loss: u64,
    dropped_by_queue: u64,
}

/// Runs the benchmark and prints and writes its results.
pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let cells = matrix(&args)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::other(format!("bench: cannot find this program: {e}")))?;
    let store_root = store_root(&args)?;
    let link = match start_link(&args) {
        Ok(link) => link,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&store_root);
            return Err(e);
        }
    };
    clean_up_on_signal(
        store_root.clone(),
        link.as_ref()
            .map(|l| [netem::Side::A, netem::Side::B].map(|s| l.namespace(s).to_string())),
    );
    let progress = Progress::new(cells.len() * usize::from(args.runs), args.json);
    let mut rows = Vec::new();
    for cell in &cells {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            progress.start(&cell.label());
            // A run that fails (a connection the controller lost, say) is a result
            // too: reported, and the matrix goes on. Bad arguments stop it.
            let run = match run_once(&exe, cell, &args, link.as_ref(), &store_root) {
                Ok(run) => run,
                Err(e) if e.exit == Exit::Usage => {
                    let _ = std::fs::remove_dir_all(&store_root);
                    return Err(e);
                }
                Err(e) => Row::failed(cell, &e),
            };
            progress.finish(&cell.label(), &run);
            runs.push(run);
        }
        // The median run by time, failures last.
        runs.sort_by(|a, b| {
            (a.error.is_some(), a.seconds)
                .partial_cmp(&(b.error.is_some(), b.seconds))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let ok = runs.iter().filter(|r| r.error.is_none()).count();
        let pick = if ok > 0 { ok / 2 } else { 0 };
        rows.push(runs.swap_remove(pick));
    }
    progress.done();
    let _ = std::fs::remove_dir_all(&store_root);
    fill_ratios(&mut rows, args.rate.filter(|_| link.is_some()));

    let link_report = link.as_ref().map(|link| {
        let stats = link.stats();
        let a_to_b = stats.a_to_b;
        LinkReport {
            rtt_ms: args.rtt.unwrap_or_default().as_secs_f64() * 1e3,
            loss: args.loss.unwrap_or(0.0),
            rate_bits_per_sec: args.rate,
            jitter_ms: args.jitter.unwrap_or_default().as_secs_f64() * 1e3,
            queue_ms: args.queue.as_secs_f64() * 1e3,
            dropped_by_loss: a_to_b.dropped_loss + stats.b_to_a.dropped_loss,
            dropped_by_queue: a_to_b.dropped_queue + stats.b_to_a.dropped_queue,
        }
    });
    let report = serde_json::json!({
        "schema": "mftq-bench/1",
        "mftq": env!("CARGO_PKG_VERSION"),
        "machine": machine(),
        "size": args.size,
        "link": link_report,
        "results": rows,
    });
    let json_path = with_extension(&args.output, "json");
    let svg_path = with_extension(&args.output, "svg");
    write_file(
        &json_path,
        &serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )?;
    let title = chart_title(&args, link.is_some());
    write_file(
        &svg_path,
        chart::render(&title, &rows, args.rate.filter(|_| link.is_some())).as_bytes(),
    )?;
    if args.json {
        print_json(&report);
    } else {
        print_table(&title, &rows);
        println!(
            "results: {} and {}",
            json_path.display(),
            svg_path.display()
        );
    }
    Ok(())
}

/// Every cell: transports × flows × chunks × controllers.
fn matrix(args: &BenchArgs) -> Result<Vec<Cell>, CliError> {
    let emulated = link_requested(args);
    if !args.tcp_congestion.is_empty() && !emulated {
        return Err(CliError::usage(
            "--tcp-congestion needs an emulated link (--rtt, --loss, --rate or --jitter): on loopback the host's setting applies",
        ));
    }
    if args.batches == Some(0) {
        return Err(CliError::usage("--batches: at least 1"));
    }
    let mut cells = Vec::new();
    let mut transports = args.transports.clone();
    transports.dedup();
    if args.batches.is_some() {
        transports.retain(|t| !t.is_raw());
        if transports.is_empty() {
            return Err(CliError::usage(
                "--batches measures mft batches: give --transports quic and/or https",
            ));
        }
    }
    let chunks: Vec<u64> = if args.batches.is_some() {
        vec![args.batch_size.max(u64::from(mft::wire::MIN_CHUNK_SIZE))]
    } else {
        args.chunk.clone()
    };
    for &chunk in &chunks {
        if u32::try_from(chunk).is_err() || chunk == 0 {
            return Err(CliError::usage(format!("--chunk {chunk}: out of range")));
        }
    }
    let flows = if args.batches.is_some() {
        vec![1]
    } else {
        args.flows.clone()
    };
    for &transport in &transports {
        let quic = transport.protocol() == "quic";
        let ccs: Vec<Option<CongestionControl>> = if quic && !args.congestion.is_empty() {
            args.congestion.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };
        let tcps: Vec<Option<String>> = if !quic && !args.tcp_congestion.is_empty() {
            args.tcp_congestion.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        for &f in &flows {
            for &chunk in &chunks {
                for cc in &ccs {
                    for tcp in &tcps {
                        cells.push(Cell {
                            transport: transport.name(),
                            flows: f,
                            chunk,
                            congestion: quic.then(|| cc.unwrap_or_default().as_str()),
                            tcp_congestion: tcp.clone(),
                            kind: transport,
                            congestion_control: *cc,
                        });
                    }
                }
            }
        }
    }
    Ok(cells)
}

fn link_requested(args: &BenchArgs) -> bool {
    args.rtt.is_some() || args.loss.is_some() || args.rate.is_some() || args.jitter.is_some()
}

/// Starts the emulated link when conditions are given.
fn start_link(args: &BenchArgs) -> Result<Option<netem::Link>, CliError> {
    if !link_requested(args) {
        return Ok(None);
    }
    let conditions = netem::LinkConditions {
        delay: args.rtt.unwrap_or_default() / 2,
        jitter: args.jitter.unwrap_or_default(),
        loss: args.loss.unwrap_or(0.0),
        rate_bits_per_sec: args.rate,
        queue: netem::QueueLimit::Time(args.queue),
        blackhole: false,
    };
    let link = netem::Link::start(netem::LinkConfig::symmetric(conditions)).map_err(|e| {
        CliError::new(
            Exit::Usage,
            format!("bench: the link emulator cannot start: {e}"),
        )
    })?;
    // Let TCP's windows grow to fill a long fat link, as a tuned host would: the
    // kernel's defaults cap them near 6 MB (about 500 Mbit/s at 100 ms).
    for side in [netem::Side::A, netem::Side::B] {
        for (key, value) in [
            ("net.ipv4.tcp_rmem", "4096 131072 268435456"),
            ("net.ipv4.tcp_wmem", "4096 65536 268435456"),
        ] {
            link.set_sysctl(side, key, value).map_err(|e| {
                CliError::other(format!("bench: setting {key} in the link's namespace: {e}"))
            })?;
        }
    }
    Ok(Some(link))
}

/// Where the runs' stores and keys go: `--store`, else /dev/shm (memory, so the
/// disk is not what is measured), else the temporary directory. Named by our
/// process id, so what a killed bench left behind is found and removed.
fn store_root(args: &BenchArgs) -> Result<PathBuf, CliError> {
    let parent = match &args.store {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    remove_stale_stores(&parent);
    let root = parent.join(format!("{STORE_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)
        .map_err(|e| CliError::io(format!("--store {}", parent.display()), e))?;
    Ok(root)
}

/// The name of a bench's store directory, before its process id.
const STORE_PREFIX: &str = "mftq-bench-";

/// Removes the store directories of benches whose process no longer runs.
fn remove_stale_stores(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STORE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// On SIGINT or SIGTERM: removes the stores and the link's namespaces (the peers,
/// in our process group, get the terminal's signal too; those in the namespaces
/// lose their network), then exits with 130.
fn clean_up_on_signal(store_root: PathBuf, namespaces: Option<[String; 2]>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("mftq: bench: interrupted; cleaning up");
        for pid in peers().iter() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&store_root);
        for name in namespaces.into_iter().flatten() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
        std::process::exit(130);
    });
}

/// The peer processes running now, for the signal handler to stop.
static PEERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn peers() -> std::sync::MutexGuard<'static, Vec<u32>> {
    PEERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A peer process and its pipes.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    role: &'static str,
    /// The last line the peer wrote on stderr (its error, if it failed).
    last_error: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn spawn(mut command: Command, role: &'static str) -> Result<Self, CliError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CliError::other(format!("bench: starting the {role}: {e}")))?;
        peers().push(child.id());
        // Pass the peer's stderr through, keeping its last line for the report.
        let last_error = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr_reader = child.stderr.take().map(|stderr| {
            let last = last_error.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = line;
                }
            })
        });
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .map(BufReader::new)
            .ok_or_else(|| CliError::other(format!("bench: the {role} has no output")))?;
        Ok(Peer {
            child,
            stdin,
            stdout,
            role,
            last_error,
            stderr_reader,
        })
    }

    /// The next line the peer prints, parsed.
    fn line<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, CliError> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| CliError::other(format!("bench: reading the {}: {e}", self.role)))?;
        if n == 0 {
            let status = self.child.wait().ok();
            if let Some(reader) = self.stderr_reader.take() {
                let _ = reader.join();
            }
            let said = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let said = said.strip_prefix("mftq: ").unwrap_or(&said).to_string();
            return Err(CliError::other(format!(
                "the {} stopped ({}){}",
                self.role,
                status.map_or("unknown status".into(), |s| s.to_string()),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            )));
        }
        serde_json::from_str(&line).map_err(|e| {
            CliError::other(format!(
                "bench: the {} reported {:?}: {e}",
                self.role,
                line.trim()
            ))
        })
    }

    /// Closes the peer's standard input (a server's signal to stop).
    fn close_stdin(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let id = self.child.id();
        peers().retain(|&p| p != id);
    }
}

/// Kills `pid`'s process when dropped late: every run ends by itself.
struct Watchdog {
    done: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn new(pid: u32, limit: Duration) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if wait.recv_timeout(limit).is_err() {
                eprintln!("mftq: bench: a run took over {limit:?}; stopping it");
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}

/// Runs one cell once.
fn run_once(
    exe: &Path,
    cell: &Cell,
    args: &BenchArgs,
    link: Option<&netem::Link>,
    store_root: &Path,
) -> Result<Row, CliError> {
    let dir = store_root.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store"))
        .map_err(|e| CliError::io(format!("bench: {}", dir.display()), e))?;
    let (server_identity, server_key) = peer::write_identity(&dir, "server.key")?;
    let (client_identity, client_key) = peer::write_identity(&dir, "client.key")?;
    if let (Some(link), Some(tcp)) = (link, &cell.tcp_congestion) {
        for side in [netem::Side::A, netem::Side::B] {
            link.set_tcp_congestion(side, tcp)
                .map_err(|e| CliError::usage(format!("--tcp-congestion {tcp}: {e}")))?;
        }
    }
    let command = |side: netem::Side| match link {
        Some(link) => link.command(side, exe),
        None => Command::new(exe),
    };
    let listen_host = link.map_or("127.0.0.1".to_string(), |l| {
        l.address(netem::Side::B).to_string()
    });
    let mode = match (cell.kind.is_raw(), args.batches.is_some()) {
        (true, _) => "raw",
        (false, false) => "mft",
        (false, true) => "small",
    };
    let tuning = |c: &mut Command| {
        if let Some(cc) = cell.congestion_control {
            c.args(["--congestion", cc.as_str()]);
        }
        if let Some(rate) = args.rate {
            c.args(["--rate", &rate.to_string()]);
        }
    };

    let mut server_cmd = command(netem::Side::B);
    server_cmd.args(["bench-peer", "server", "--mode", mode]);
    server_cmd
        .arg("--listen")
        .arg(format!("{}/{listen_host}:0", cell.kind.protocol()));
    server_cmd.arg("--key").arg(&server_key);
    server_cmd
        .arg("--allow")
        .arg(client_identity.public_key().to_string());
    server_cmd.arg("--store").arg(dir.join("store"));
    server_cmd
        .arg("--max-open")
        .arg((u32::from(args.concurrency) + 16).to_string());
    tuning(&mut server_cmd);
    let mut server = Peer::spawn(server_cmd, "server")?;
    let ready: ServerReady = server.line()?;

    let mut client_cmd = command(netem::Side::A);
    client_cmd.args(["bench-peer", "client", "--mode", mode]);
    client_cmd.arg("--to").arg(&ready.endpoint);
    client_cmd
        .arg("--server-key")
        .arg(server_identity.public_key().to_string());
    client_cmd.arg("--key").arg(&client_key);
    let size = if args.batches.is_some() {
        args.batch_size
    } else {
        args.size
    };
    client_cmd.arg("--size").arg(size.to_string());
    client_cmd.arg("--flows").arg(cell.flows.to_string());
    client_cmd.arg("--chunk").arg(cell.chunk.to_string());
    if let Some(mode) = clap::ValueEnum::to_possible_value(&args.compress) {
        client_cmd.arg("--compress").arg(mode.get_name());
    }
    if let Some(batches) = args.batches {
        client_cmd.arg("--batches").arg(batches.to_string());
        client_cmd
            .arg("--concurrency")
            .arg(args.concurrency.to_string());
    }
    tuning(&mut client_cmd);
    let relay_before = Usage::now().cpu_seconds;
    let link_before = link.map(netem::Link::stats);
    let mut client = Peer::spawn(client_cmd, "client")?;
    let watchdog = Watchdog::new(client.child.id(), RUN_TIMEOUT);
    let report: ClientReport = client.line()?;
    drop(watchdog);
    let _ = client.child.wait();
    let relay_cpu = link.map(|_| Usage::now().cpu_seconds - relay_before);
    let dropped = link.zip(link_before).map(|(link, before)| {
        let after = link.stats();
        let by = |f: fn(&netem::DirectionStats) -> u64| {
            f(&after.a_to_b) + f(&after.b_to_a) - f(&before.a_to_b) - f(&before.b_to_a)
        };
        (by(|d| d.dropped_loss), by(|d| d.dropped_queue))
    });
    server.close_stdin();
    let server_usage: Usage = server.line()?;
    let _ = server.child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let gib = report.bytes as f64 / f64::from(1u32 << 30);
    let per_gib = |cpu: f64| if gib > 0.0 { cpu / gib } else { 0.0 };
    Ok(Row {
        cell: cell.clone(),
        bytes: report.bytes,
        seconds: report.seconds,
        mb_per_s: report.bytes as f64 / report.seconds.max(1e-9) / 1e6,
        ratio: None,
        ratio_to: None,
        sender_cpu_s_per_gib: per_gib(report.usage.cpu_seconds),
        receiver_cpu_s_per_gib: per_gib(server_usage.cpu_seconds),
        sender_peak_rss: report.usage.peak_rss,
        receiver_peak_rss: server_usage.peak_rss,
        relay_cpu_seconds: relay_cpu,
        batches: report.batches,
        batches_per_s: report
            .p50_ms
            .map(|_| f64::from(report.batches) / report.seconds.max(1e-9)),
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        link_dropped_by_loss: dropped.map(|d| d.0),
        link_dropped_by_queue: dropped.map(|d| d.1),
        error: None,
    })
}

/// Ratios: to the link rate when emulated, else to the raw run of the same
/// transport, flows, chunk and controller in this run.
fn fill_ratios(rows: &mut [Row], link_rate: Option<u64>) {
    if let Some(rate) = link_rate {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            row.ratio = Some(row.mb_per_s * 8e6 / rate as f64);
            row.ratio_to = Some("link".into());
        }
        return;
    }
    let raw: Vec<(Cell, f64)> = rows
        .iter()
        .filter(|r| r.cell.kind.is_raw() && r.error.is_none())
        .map(|r| (r.cell.clone(), r.mb_per_s))
        .collect();
    for row in rows
        .iter_mut()
        .filter(|r| !r.cell.kind.is_raw() && r.batches <= 1)
    {
        let want = row.cell.kind.raw();
        if let Some((cell, mb)) = raw.iter().find(|(c, _)| {
            c.kind == want
                && c.flows == row.cell.flows
                && c.chunk == row.cell.chunk
                && c.congestion == row.cell.congestion
        }) {
            row.ratio = Some(row.mb_per_s / mb);
            row.ratio_to = Some(cell.transport.to_string());
        }
    }
}

fn chart_title(args: &BenchArgs, emulated: bool) -> String {
    let what = if let Some(n) = args.batches {
        format!("{n} batches of {}", human(args.batch_size))
    } else {
        human(args.size)
    };
    if !emulated {
        return format!("mftq bench: {what} on loopback");
    }
    let mut link = Vec::new();
    if let Some(rate) = args.rate {
        link.push(format!("{} Mbit/s", rate / 1_000_000));
    }
    if let Some(rtt) = args.rtt {
        link.push(format!("{} ms RTT", rtt.as_millis()));
    }
    if let Some(loss) = args.loss {
        link.push(format!("{}% loss", loss * 100.0));
    }
    if let Some(jitter) = args.jitter {
        link.push(format!("{} ms jitter", jitter.as_millis()));
    }
    format!("mftq bench: {what}, emulated link {}", link.join(", "))
}

fn print_table(title: &str, rows: &[Row]) {
    println!("{title}");
    let small = rows.iter().any(|r| r.batches_per_s.is_some());
    if small {
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>12} {:>12}",
            "run", "batches/s", "p50 ms", "p99 ms", "snd CPU s", "rcv CPU s"
        );
        for r in rows {
            if let Some(error) = &r.error {
                println!("{:<28} failed: {error}", r.cell.label());
                continue;
            }
            let gib = r.bytes as f64 / f64::from(1u32 << 30);
            println!(
                "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>12.2} {:>12.2}",
                r.cell.label(),
                r.batches_per_s.unwrap_or(0.0),
                r.p50_ms.unwrap_or(0.0),
                r.p99_ms.unwrap_or(0.0),
                r.sender_cpu_s_per_gib * gib,
                r.receiver_cpu_s_per_gib * gib,
            );
        }
        return;
    }
    println!(
        "{:<28} {:>9} {:>14} {:>9} {:>9} {:>9} {:>9}",
        "run", "MB/s", "ratio", "snd s/GiB", "rcv s/GiB", "snd RSS", "rcv RSS"
    );
    for r in rows {
        if let Some(error) = &r.error {
            println!("{:<28} failed: {error}", r.cell.label());
            continue;
        }
        let ratio = match (r.ratio, &r.ratio_to) {
            (Some(x), Some(to)) => format!("{x:.2}× {to}"),
            _ => "-".into(),
        };
        println!(
            "{:<28} {:>9.1} {:>14} {:>9.2} {:>9.2} {:>9} {:>9}",
            r.cell.label(),
            r.mb_per_s,
            ratio,
            r.sender_cpu_s_per_gib,
            r.receiver_cpu_s_per_gib,
            mib(r.sender_peak_rss),
            mib(r.receiver_peak_rss),
        );
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// What machine this ran on, for the report.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .ok();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "kernel": kernel,
    })
}

fn with_extension(prefix: &Path, extension: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::io(format!("writing {}", path.display()), e))
}

/// The progress line: a bar on a terminal, a line per run otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: std::cell::Cell<usize>,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_draw_target(ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("bench [{bar:20}] {pos}/{len} {msg} {elapsed}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            done: std::cell::Cell::new(0),
        }
    }

    fn start(&self, label: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(label.to_string());
        }
    }

    fn finish(&self, label: &str, row: &Row) {
        self.done.set(self.done.get() + 1);
        let line = match &row.error {
            Some(error) => format!(
                "bench {}/{}: {label}: failed: {error}",
                self.done.get(),
                self.total
            ),
            None => format!(
                "bench {}/{}: {label}: {:.1} MB/s in {:.2} s",
                self.done.get(),
                self.total,
                row.mb_per_s,
                row.seconds
            ),
        };
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
