//! Faults on an emulated WAN link (RELIABILITY.md, "Faults"): `mftq serve` in one
//! network namespace, `mftq send` and `get` in the other, joined only by the
//! project's link emulator. Over QUIC and over HTTPS, a batch sent through 2%
//! loss, through a 2 s blackhole in the middle, and through a send killed part
//! way and run again, comes back byte-identical.
//!
//! Needs root, `/dev/net/tun` and `ip` (CI has them); elsewhere it says it was
//! skipped.

mod common;

use common::payload;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netem::{Direction, Link, LinkConditions, LinkConfig, Side};

const BIN: &str = env!("CARGO_BIN_EXE_mftq");
const LIMIT: Duration = Duration::from_secs(120);

/// Kills the process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(dir: &Path, name: &str) -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--out", name])
        .current_dir(dir)
        .output()
        .expect("keygen runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a finished command left.
#[derive(Debug)]
struct Out {
    status: std::process::ExitStatus,
    stderr: String,
}

/// Runs `mftq args` in side A's namespace, within the limit.
fn mftq_in_a(link: &Link, dir: &Path, args: &[&str]) -> Out {
    let mut child = Guard(
        link.command(Side::A, BIN)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mftq starts"),
    );
    let mut stderr = child.0.stderr.take().expect("stderr");
    let reading = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waits") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mftq {args:?} took over {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        status,
        stderr: reading.join().unwrap_or_default(),
    }
}

/// `mftq serve` in side B on both protocols; its public key.
fn serve(link: &Link, dir: &Path) -> (Guard, String) {
    let b = link.address(Side::B);
    let mut child = Guard(
        link.command(Side::B, BIN)
            .args(["serve", "--data", "data", "--key", "server.key"])
            .args(["--senders", "allowed.txt", "--retrievers", "allowed.txt"])
            .args(["--listen", &format!("quic/{b}:4433")])
            .args(["--listen", &format!("https/{b}:4433")])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut key, mut listening) = (None, 0);
    while key.is_none() || listening < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve prints its endpoints and key");
        if let Some(k) = line.strip_prefix("public key ") {
            key = Some(k.to_string());
        } else if line.starts_with("listening on ") {
            listening += 1;
        }
    }
    (child, key.unwrap_or_default())
}

fn set_both(link: &Link, conditions: LinkConditions) {
    for direction in Direction::BOTH {
        link.set_conditions(direction, conditions)
            .expect("set conditions");
    }
}

struct Run<'a> {
    link: &'a Link,
    dir: &'a Path,
    server_key: String,
}

impl Run<'_> {
    fn endpoint(&self, protocol: &str) -> String {
        format!("{protocol}://{}:4433", self.link.address(Side::B))
    }

    fn send_args(&self, protocol: &str, name: &str) -> Vec<String> {
        let mut args: Vec<String> = ["send", name, "--to"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(self.endpoint(protocol));
        for a in ["--server-key", &self.server_key, "--key", "client.key"] {
            args.push(a.to_string());
        }
        args
    }

    fn send(&self, protocol: &str, name: &str) -> Out {
        let args = self.send_args(protocol, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mftq_in_a(self.link, self.dir, &args)
    }

    /// Gets `name` back (over the same protocol) and checks it byte for byte.
    fn check(&self, protocol: &str, name: &str, data: &[u8]) {
        let back = format!("{name}.back");
        let endpoint = self.endpoint(protocol);
        let out = mftq_in_a(
            self.link,
            self.dir,
            &[
                "get",
                name,
                "--from",
                &endpoint,
                "--server-key",
                &self.server_key,
                "--key",
                "client.key",
                "-o",
                &back,
            ],
        );
        assert!(out.status.success(), "get {name} over {protocol}: {out:?}");
        let got = std::fs::read(self.dir.join(&back)).expect("the output");
        assert!(got == data, "{name} over {protocol} came back different");
    }

    /// Bytes the server holds in segment files.
    fn stored(&self) -> u64 {
        common::stored_bytes(self.dir)
    }
}

#[test]
fn transfers_survive_loss_a_blackhole_and_a_killed_send_over_both_protocols() {
    if let Err(e) = netem::preflight() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the link emulator cannot run: {e}"
        );
        eprintln!("skipped: needs root (and /dev/net/tun, ip): {e}");
        return;
    }
    // A 20 ms path at 100 Mbit/s: long enough for faults to land mid-transfer.
    let path = LinkConditions {
        rate_bits_per_sec: Some(100_000_000),
        ..LinkConditions::from_rtt(Duration::from_millis(20))
    };
    let link = Link::start(LinkConfig::symmetric(path)).expect("the link starts");
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "server.key");
    let client = keygen(dir, "client.key");
    std::fs::write(dir.join("allowed.txt"), format!("{client}\n")).expect("allow-list");
    let (_server, server_key) = serve(&link, dir);
    let run = Run {
        link: &link,
        dir,
        server_key,
    };

    for (n, protocol) in ["quic", "https"].into_iter().enumerate() {
        let seed = 10 * n as u64;

        // 2% loss each way.
        set_both(&link, LinkConditions { loss: 0.02, ..path });
        let name = format!("lossy-{protocol}.bin");
        let data = payload(8 << 20, seed + 1);
        std::fs::write(dir.join(&name), &data).expect("input");
        let out = run.send(protocol, &name);
        assert!(
            out.status.success(),
            "send through 2% loss over {protocol}: {out:?}"
        );
        set_both(&link, path);
        run.check(protocol, &name, &data);

        // A 2 s blackhole in the middle.
        let name = format!("blackhole-{protocol}.bin");
        let data = payload(16 << 20, seed + 2);
        std::fs::write(dir.join(&name), &data).expect("input");
        let before = (run.stored(), link.stats().a_to_b.dropped_blackhole);
        let cut = std::thread::scope(|scope| {
            let sending = scope.spawn(|| run.send(protocol, &name));
            let start = Instant::now();
            while run.stored() < before.0 + (2 << 20) {
                assert!(
                    !sending.is_finished(),
                    "the send ended before the blackhole"
                );
                assert!(start.elapsed() < LIMIT, "no progress");
                std::thread::sleep(Duration::from_millis(10));
            }
            set_both(
                &link,
                LinkConditions {
                    blackhole: true,
                    ..path
                },
            );
            std::thread::sleep(Duration::from_secs(2));
            set_both(&link, path);
            sending.join().expect("the send thread")
        });
        assert!(
            cut.status.success(),
            "send through a 2 s blackhole over {protocol}: {cut:?}"
        );
        assert!(
            link.stats().a_to_b.dropped_blackhole > before.1,
            "the blackhole cut the transfer"
        );
        run.check(protocol, &name, &data);

        // The send killed part way, then run again: it resumes.
        let name = format!("killed-{protocol}.bin");
        let data = payload(24 << 20, seed + 3);
        std::fs::write(dir.join(&name), &data).expect("input");
        let before = run.stored();
        let args = run.send_args(protocol, &name);
        let mut first = Guard(
            link.command(Side::A, BIN)
                .args(&args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("send starts"),
        );
        let start = Instant::now();
        while run.stored() < before + (4 << 20) {
            assert!(
                first.0.try_wait().expect("waits").is_none(),
                "finished too soon"
            );
            assert!(start.elapsed() < LIMIT, "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = first.0.kill();
        let _ = first.0.wait();
        let again = run.send(protocol, &name);
        assert!(
            again.status.success(),
            "the resumed send over {protocol}: {again:?}"
        );
        assert!(
            again.stderr.contains("resuming: the server holds"),
            "{}",
            again.stderr
        );
        run.check(protocol, &name, &data);
    }
    let stats = link.stats();
    assert!(
        stats.a_to_b.dropped_loss > 0,
        "the link dropped packets: {stats:?}"
    );
}
