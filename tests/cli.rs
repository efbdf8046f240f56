//! The `mftq` binary end to end: keys, a server on loopback (QUIC and HTTPS), send,
//! get, list, refusals and bad input with their exit codes. Every child process is
//! bounded in time and killed if a test fails.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{sha256_hex, stored_bytes};

const BIN: &str = env!("CARGO_BIN_EXE_mftq");

/// What a finished command printed.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn explain(&self) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `mftq args` in `dir`, failing the test if it takes longer than `limit`.
/// Its config directory is `dir/config`, and the MFTQ_* variables are unset.
fn mftq_in(dir: &Path, args: &[&str], limit: Duration) -> Out {
    mftq_env(dir, args, &[], limit)
}

/// [`mftq_in`] with the environment variables `envs` set too.
fn mftq_env(dir: &Path, args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Out {
    let mut command = Command::new(BIN);
    command
        .env("MFTQ_CONFIG_DIR", dir.join("config"))
        .env_remove("MFTQ_KEY")
        .env_remove("MFTQ_SERVER_KEY")
        .env_remove("MFTQ_ENDPOINT");
    for (name, value) in envs {
        command.env(name, value);
    }
    let child = command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mftq starts");
    let mut guard = Guard(child);
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = drain(guard.0.stdout.take().map(|s| Box::new(s) as _));
    let stderr = drain(guard.0.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("waits") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mftq {args:?} took longer than {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A private key file in `dir`; returns its public key.
fn keygen(dir: &Path, name: &str) -> String {
    let out = mftq_in(dir, &["keygen", "--out", name], Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let key = out.stdout.trim().to_string();
    assert_eq!(key.len(), 64, "{key:?}");
    key
}

/// Pseudo-random bytes (xorshift), so each file is different and incompressible.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A running `mftq serve` and what it printed on start.
struct Server {
    child: Guard,
    quic: String,
    https: String,
    key: String,
}

fn serve(dir: &Path, extra: &[&str]) -> Server {
    serve_logging(dir, extra, None)
}

/// [`serve`], its log (at `info`) written to `log` if given.
fn serve_logging(dir: &Path, extra: &[&str], log: Option<&Path>) -> Server {
    let mut args = vec![
        "serve",
        "--listen",
        "quic/127.0.0.1:0",
        "--listen",
        "https/127.0.0.1:0",
        "--data",
        "data",
        "--key",
        "server.key",
    ];
    args.extend_from_slice(extra);
    let (level, stderr) = match log {
        Some(path) => (
            "info",
            Stdio::from(std::fs::File::create(path).expect("creates the log")),
        ),
        // Warnings and errors only: the test output stays readable.
        None => ("warn", Stdio::inherit()),
    };
    let child = Command::new(BIN)
        .args(&args)
        .current_dir(dir)
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("mftq serve starts");
    let mut child = Guard(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut quic, mut https, mut key) = (None, None, None);
    while quic.is_none() || https.is_none() || key.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve prints its endpoints and key");
        if let Some(ep) = line.strip_prefix("listening on ") {
            if ep.starts_with("quic://") {
                quic = Some(ep.to_string());
            } else if ep.starts_with("https://") {
                https = Some(ep.to_string());
            }
        } else if let Some(k) = line.strip_prefix("public key ") {
            key = Some(k.to_string());
        }
    }
    Server {
        child,
        quic: quic.unwrap_or_default(),
        https: https.unwrap_or_default(),
        key: key.unwrap_or_default(),
    }
}

/// Files in `dir` whose names contain `part`.
fn files_containing(dir: &Path, part: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("reads dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(part))
        .collect()
}

const LONG: Duration = Duration::from_secs(120);
const SHORT: Duration = Duration::from_secs(30);

/// The allow-list flags for `allowed.txt`, which [`serve_one_client`] writes.
const CLIENT_LISTS: [&str; 4] = ["--senders", "allowed.txt", "--retrievers", "allowed.txt"];

/// A server in `dir` with a fresh key and `client.key` (also fresh) on both its
/// lists.
fn serve_one_client(dir: &Path) -> Server {
    keygen(dir, "server.key");
    let client = keygen(dir, "client.key");
    std::fs::write(dir.join("allowed.txt"), format!("{client}\n")).expect("writes the list");
    serve(dir, &CLIENT_LISTS)
}

#[test]
fn serve_send_get_list_over_quic_and_https() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server_pub = keygen(dir, "server.key");
    let client_pub = keygen(dir, "client.key");
    let outsider_pub = keygen(dir, "outsider.key");
    std::fs::write(
        dir.join("allowed.txt"),
        format!("# who may send and retrieve\n\n{client_pub}  the test client\n"),
    )
    .expect("writes allow-list");
    let server = serve(
        dir,
        &["--senders", "allowed.txt", "--retrievers", "allowed.txt"],
    );
    assert_eq!(server.key, server_pub);

    for (n, endpoint) in [&server.quic, &server.https].into_iter().enumerate() {
        let name = format!("input-{n}.bin");
        let data = random_bytes(20 << 20, 0x5eed + n as u64);
        std::fs::write(dir.join(&name), &data).expect("writes input");
        let send = mftq_in(
            dir,
            &[
                "send",
                &name,
                "--to",
                endpoint,
                "--server-key",
                &server.key,
                "--key",
                "client.key",
                "--json",
            ],
            LONG,
        );
        assert_eq!(
            send.code(),
            Some(0),
            "send over {endpoint}: {}",
            send.explain()
        );
        let receipt: serde_json::Value = serde_json::from_str(&send.stdout).expect("JSON receipt");
        assert_eq!(receipt["batch_id"], name.as_str());
        assert_eq!(receipt["size"], 20 << 20);
        assert_eq!(receipt["server"], server.key.as_str());
        assert_eq!(receipt["signature"].as_str().map(str::len), Some(128));

        let output = format!("output-{n}.bin");
        let get = mftq_in(
            dir,
            &[
                "get",
                &name,
                "--from",
                endpoint,
                "--server-key",
                &server.key,
                "--key",
                "client.key",
                "-o",
                &output,
            ],
            LONG,
        );
        assert_eq!(
            get.code(),
            Some(0),
            "get over {endpoint}: {}",
            get.explain()
        );
        let back = std::fs::read(dir.join(&output)).expect("reads output");
        assert!(back == data, "the bytes retrieved over {endpoint} differ");
        assert!(
            get.stdout.contains("metadata {")
                && get.stdout.contains(&format!("\"name\":\"{name}\""))
                && get
                    .stdout
                    .contains(&format!("\"sha256\":\"{}\"", sha256_hex(&data))),
            "{}",
            get.explain()
        );
    }

    // An unknown batch: a clear error, and no output file (or temporary) left behind.
    let get = mftq_in(
        dir,
        &[
            "get",
            "no-such-batch",
            "--from",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
            "-o",
            "missing.bin",
        ],
        SHORT,
    );
    assert_eq!(get.code(), Some(1), "{}", get.explain());
    assert!(
        get.stderr.contains("no batch \"no-such-batch\""),
        "{}",
        get.explain()
    );
    assert!(files_containing(dir, "missing").is_empty());
    assert!(files_containing(dir, "mftq-part").is_empty());

    // A key the server does not authorise: exit 3, naming the refusal.
    let refused = mftq_in(
        dir,
        &[
            "send",
            "input-0.bin",
            "--batch-id",
            "outsider",
            "--to",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "outsider.key",
        ],
        SHORT,
    );
    // Trust at the door (issue 10): refused in the TLS handshake, before any
    // protocol state, and `list` by that key is refused too, not "no batches".
    assert_eq!(refused.code(), Some(3), "{}", refused.explain());
    assert!(
        refused.stderr.contains("does not trust our key"),
        "{}",
        refused.explain()
    );
    let outsider_list = |dir: &Path| {
        mftq_in(
            dir,
            &[
                "list",
                "--from",
                &server.https,
                "--server-key",
                &server.key,
                "--key",
                "outsider.key",
            ],
            SHORT,
        )
    };
    let listed = outsider_list(dir);
    assert_eq!(listed.code(), Some(3), "{}", listed.explain());

    // SIGHUP reloads the lists: once named, the outsider gets in, with no restart.
    std::fs::write(
        dir.join("allowed.txt"),
        format!("{client_pub}  the test client\n{outsider_pub}  now allowed\n"),
    )
    .expect("rewrites allow-list");
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let deadline = Instant::now() + SHORT;
    let listed = loop {
        let listed = outsider_list(dir);
        if listed.code() == Some(0) || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed.code(), Some(0), "after SIGHUP: {}", listed.explain());

    // The wrong server key: exit 3.
    let pinned = mftq_in(
        dir,
        &[
            "send",
            "input-0.bin",
            "--batch-id",
            "pinned",
            "--to",
            &server.https,
            "--server-key",
            &outsider_pub,
            "--key",
            "client.key",
        ],
        SHORT,
    );
    assert_eq!(pinned.code(), Some(3), "{}", pinned.explain());
    assert!(
        pinned.stderr.contains("--server-key"),
        "{}",
        pinned.explain()
    );

    // Bad input: exit 2 naming the problem, before anything is sent.
    std::fs::write(dir.join("bad.key"), "not a key\n").expect("writes bad key");
    let ep = server.quic.as_str();
    let key = server.key.as_str();
    for (args, needle) in [
        (
            vec![
                "send",
                "absent.bin",
                "--to",
                ep,
                "--server-key",
                key,
                "--key",
                "client.key",
            ],
            "absent.bin",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b1",
                "--to",
                ep,
                "--server-key",
                key,
                "--key",
                "bad.key",
            ],
            "bad.key",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b2",
                "--to",
                "quic://no-port",
                "--server-key",
                key,
                "--key",
                "client.key",
            ],
            "--to",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b3",
                "--to",
                "ftp://127.0.0.1:21",
                "--server-key",
                key,
                "--key",
                "client.key",
            ],
            "ftp",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b4",
                "--to",
                ep,
                "--server-key",
                key,
                "--key",
                "client.key",
                "--chunk",
                "huge",
            ],
            "huge",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b5",
                "--to",
                ep,
                "--server-key",
                "abc",
                "--key",
                "client.key",
            ],
            "--server-key",
        ),
        (
            vec![
                "send",
                "input-0.bin",
                "--batch-id",
                "b6",
                "--to",
                ep,
                "--server-key",
                key,
                "--key",
                "client.key",
                "--metadata",
                "{oops",
            ],
            "--metadata",
        ),
    ] {
        let out = mftq_in(dir, &args, SHORT);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.explain());
        assert!(
            out.stderr.starts_with("mftq: "),
            "{args:?}: {}",
            out.explain()
        );
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.explain());
    }

    // `list` shows exactly the two batches: nothing else was sent.
    let list = mftq_in(
        dir,
        &[
            "list",
            "--from",
            &server.https,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
            "--json",
        ],
        SHORT,
    );
    assert_eq!(list.code(), Some(0), "{}", list.explain());
    let batches: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON list");
    assert_eq!(batches["schema"], "mftq-list/1");
    let mut ids: Vec<_> = batches["batches"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| {
            assert_eq!(b["size"], 20 << 20);
            assert_eq!(b["sender"], client_pub.as_str());
            b["batch_id"].as_str().unwrap_or("").to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["input-0.bin", "input-1.bin"]);
    let table = mftq_in(
        dir,
        &[
            "list",
            "--from",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
        ],
        SHORT,
    );
    assert!(
        table.stdout.contains("input-0.bin") && table.stdout.contains("20.0 MiB"),
        "{}",
        table.explain()
    );

    // SIGTERM: the server stops cleanly.
    let mut child = server.child;
    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waits") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn keygen_writes_a_private_file_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let first = keygen(dir, "me.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("me.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = mftq_in(dir, &["keygen", "--out", "me.key"], SHORT);
    assert_eq!(again.code(), Some(2), "{}", again.explain());
    assert!(again.stderr.contains("--force"), "{}", again.explain());
    let forced = mftq_in(dir, &["keygen", "--out", "me.key", "--force"], SHORT);
    assert_eq!(forced.code(), Some(0), "{}", forced.explain());
    assert_ne!(forced.stdout.trim(), first);
}

#[test]
fn serve_refuses_a_malformed_allow_list_naming_file_and_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let client = keygen(dir, "server.key");
    std::fs::write(dir.join("senders.txt"), format!("# ok\n{client}\nbogus\n"))
        .expect("writes list");
    let out = mftq_in(
        dir,
        &[
            "serve",
            "--listen",
            "quic/127.0.0.1:0",
            "--data",
            "data",
            "--key",
            "server.key",
            "--senders",
            "senders.txt",
        ],
        SHORT,
    );
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(
        out.stderr.contains("senders.txt line 3"),
        "{}",
        out.explain()
    );
    // A config file with an unknown setting is named too.
    std::fs::write(dir.join("mftq.toml"), "listn = []\n").expect("writes config");
    let out = mftq_in(dir, &["serve", "--config", "mftq.toml"], SHORT);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("mftq.toml"), "{}", out.explain());
}

#[test]
fn an_unreachable_server_exits_4() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = keygen(dir, "server.key");
    keygen(dir, "client.key");
    // Nothing listens on this port (we bound it and let it go).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let to = format!("https://127.0.0.1:{port}");
    let out = mftq_in(
        dir,
        &[
            "list",
            "--from",
            &to,
            "--server-key",
            &server,
            "--key",
            "client.key",
            "--retries",
            "0",
            "--dial-timeout",
            "3",
        ],
        SHORT,
    );
    assert_eq!(out.code(), Some(4), "{}", out.explain());
}

#[test]
fn demo_runs_over_both_transports() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = mftq_in(tmp.path(), &["demo", "--size", "8MiB"], LONG);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("quic ") || l.starts_with("https "))
        .collect();
    assert_eq!(rows.len(), 2, "{}", out.explain());
    assert!(out.stdout.contains("verified"), "{}", out.explain());
}

#[test]
fn send_resumes_an_interrupted_batch() {
    interrupted_send_resumes(false);
}

/// The server killed with SIGKILL mid-batch and restarted on the same data
/// directory and key: nothing it acknowledged is lost, and the sender resumes.
#[test]
fn send_resumes_after_the_server_is_killed() {
    interrupted_send_resumes(true);
}

fn interrupted_send_resumes(kill_server: bool) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mut server = serve_one_client(dir);
    let data = random_bytes(24 << 20, 7);
    std::fs::write(dir.join("big.bin"), &data).expect("writes input");
    // Small segments, one at a time: slow enough to interrupt part way.
    let send_args = |server: &Server| -> Vec<String> {
        [
            "send",
            "big.bin",
            "--to",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
            "--chunk",
            "4KiB",
            "--streams",
            "1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let mut first = Guard(
        Command::new(BIN)
            .args(send_args(&server))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("send starts"),
    );
    // Interrupt it once the server holds some of the batch.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if stored_bytes(dir) >= 1 << 20 {
            break;
        }
        assert!(
            first.0.try_wait().expect("waits").is_none(),
            "the first send finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the first send made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    if kill_server {
        // SIGKILL: no shutdown code runs; the store must hold what was acknowledged.
        let _ = server.child.0.kill();
        let _ = server.child.0.wait();
    }
    let _ = first.0.kill();
    let _ = first.0.wait();
    if kill_server {
        server = serve(dir, &CLIENT_LISTS);
    }
    let args = send_args(&server);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = mftq_in(dir, &args, LONG);
    assert_eq!(again.code(), Some(0), "{}", again.explain());
    assert!(
        again.stderr.contains("resuming: the server holds"),
        "{}",
        again.explain()
    );
    let get = mftq_in(
        dir,
        &[
            "get",
            "big.bin",
            "--from",
            &server.https,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
            "-o",
            "back.bin",
        ],
        LONG,
    );
    assert_eq!(get.code(), Some(0), "{}", get.explain());
    assert!(std::fs::read(dir.join("back.bin")).expect("output") == data);
}

/// Batch ids are per sender: two senders send the same file name, a retriever
/// that may see both must name one with `--sender` (exit 2 without), and
/// `list --sender` shows one namespace.
#[test]
fn get_and_list_name_the_sender_when_ids_collide() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "server.key");
    let (a, b, r) = (
        keygen(dir, "a.key"),
        keygen(dir, "b.key"),
        keygen(dir, "r.key"),
    );
    std::fs::write(dir.join("senders.txt"), format!("{a}\n{b}\n")).expect("writes");
    std::fs::write(dir.join("retrievers.txt"), format!("{r}\n")).expect("writes");
    let server = serve(
        dir,
        &["--senders", "senders.txt", "--retrievers", "retrievers.txt"],
    );
    let common = ["--server-key", server.key.as_str()];
    for (key, body) in [("a.key", "from a"), ("b.key", "from b")] {
        std::fs::write(dir.join("same.txt"), body).expect("writes");
        let mut args = vec!["send", "same.txt", "--to", &server.quic, "--key", key];
        args.extend_from_slice(&common);
        let out = mftq_in(dir, &args, LONG);
        assert_eq!(out.code(), Some(0), "send with {key}: {}", out.explain());
    }
    let get = |extra: &[&str], output: &str| {
        let mut args = vec!["get", "same.txt", "--from", &server.quic, "--key", "r.key"];
        args.extend_from_slice(&common);
        args.extend_from_slice(&["-o", output]);
        args.extend_from_slice(extra);
        mftq_in(dir, &args, LONG)
    };
    let ambiguous = get(&[], "x.txt");
    assert_eq!(ambiguous.code(), Some(2), "{}", ambiguous.explain());
    assert!(
        ambiguous.stderr.contains("--sender"),
        "{}",
        ambiguous.explain()
    );
    let named = get(&["--sender", &b], "from-b.txt");
    assert_eq!(named.code(), Some(0), "{}", named.explain());
    assert_eq!(
        std::fs::read_to_string(dir.join("from-b.txt")).expect("reads"),
        "from b"
    );

    let mut args = vec!["list", "--from", &server.quic, "--key", "r.key", "--json"];
    args.extend_from_slice(&common);
    args.extend_from_slice(&["--sender", &a]);
    let list = mftq_in(dir, &args, LONG);
    assert_eq!(list.code(), Some(0), "{}", list.explain());
    let listed: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON list");
    let listed = listed["batches"].as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["sender"], a.as_str());
    drop(server);
}

/// `get` as cp and scp behave (issue 11): without `-o` the file takes the batch's
/// name, made safe; `-o DIR/` writes inside the directory; an existing file is
/// replaced only with `--force` (exit 2 otherwise); mode and mtime come back; and
/// content whose SHA-256 is not the one its metadata claims is refused (exit 5)
/// with nothing left behind.
#[test]
fn get_names_the_file_restores_its_attributes_and_never_overwrites_silently() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    let data = random_bytes(300_000, 77);
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, &data).expect("writes");
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&notes)
        .and_then(|f| f.set_modified(mtime))
        .expect("touch");
    let send = |name: &str, metadata: Option<&str>| {
        let mut args = vec![
            "send",
            name,
            "--to",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "client.key",
        ];
        if let Some(m) = metadata {
            args.extend_from_slice(&["--metadata", m]);
        }
        let out = mftq_in(dir, &args, LONG);
        assert_eq!(out.code(), Some(0), "send {name}: {}", out.explain());
    };
    send("notes.txt", None);
    let out_dir = dir.join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let get = |batch: &str, extra: &[&str]| {
        let mut args = vec![
            "get",
            batch,
            "--from",
            &server.quic,
            "--server-key",
            &server.key,
            "--key",
            "../client.key",
        ];
        args.extend_from_slice(extra);
        mftq_in(&out_dir, &args, LONG)
    };

    // No -o: the batch's name, its bytes, its mode and mtime.
    let first = get("notes.txt", &[]);
    assert_eq!(first.code(), Some(0), "{}", first.explain());
    let got = out_dir.join("notes.txt");
    assert!(std::fs::read(&got).expect("the file") == data);
    let meta = std::fs::metadata(&got).expect("metadata");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.modified().expect("mtime"), mtime);
    // Again: refused without --force, the file untouched; replaced with it.
    std::fs::write(&got, b"mine").expect("writes");
    let again = get("notes.txt", &[]);
    assert_eq!(again.code(), Some(2), "{}", again.explain());
    assert!(again.stderr.contains("--force"), "{}", again.explain());
    assert_eq!(std::fs::read(&got).expect("the file"), b"mine");
    let forced = get("notes.txt", &["--force"]);
    assert_eq!(forced.code(), Some(0), "{}", forced.explain());
    assert!(std::fs::read(&got).expect("the file") == data);
    // -o DIR/ writes inside it.
    std::fs::create_dir(out_dir.join("sub")).expect("mkdir");
    let into = get("notes.txt", &["-o", "sub/"]);
    assert_eq!(into.code(), Some(0), "{}", into.explain());
    assert!(std::fs::read(out_dir.join("sub/notes.txt")).expect("the file") == data);

    // A name that tries to leave the directory stays in it.
    std::fs::write(dir.join("escape.bin"), b"escaping").expect("writes");
    send("escape.bin", Some(r#"{"name":"../escape.txt"}"#));
    let escaped = get("escape.bin", &[]);
    assert_eq!(escaped.code(), Some(0), "{}", escaped.explain());
    assert_eq!(
        std::fs::read(out_dir.join("escape.txt")).expect("inside"),
        b"escaping"
    );
    assert!(!dir.join("escape.txt").exists(), "nothing written outside");

    // Metadata that lies about the content: refused, nothing left behind.
    std::fs::write(dir.join("liar.bin"), b"the real content").expect("writes");
    let zeros = "0".repeat(64);
    send(
        "liar.bin",
        Some(&format!(r#"{{"name":"liar.txt","sha256":"{zeros}"}}"#)),
    );
    let lied = get("liar.bin", &[]);
    assert_eq!(lied.code(), Some(5), "{}", lied.explain());
    assert!(lied.stderr.contains("SHA-256"), "{}", lied.explain());
    assert!(!out_dir.join("liar.txt").exists());
    assert!(
        files_containing(&out_dir, "mftq-part").is_empty(),
        "no part file left"
    );
}

/// Ctrl-C on `send` (issue 11): by default the server keeps what it received, the
/// CLI exits 130 printing how to resume or abort, `mftq transfers` lists the
/// transfer and `mftq abort` deletes it; with `--cancel-on-interrupt` it is
/// aborted at once.
#[test]
fn an_interrupted_send_is_kept_listed_and_aborted_on_request() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    std::fs::write(dir.join("big.bin"), random_bytes(64 << 20, 5)).expect("writes");
    let common = ["--server-key", server.key.as_str(), "--key", "client.key"];
    let interrupt = |extra: &[&str]| {
        let before = stored_bytes(dir);
        let mut args = vec!["send", "big.bin", "--to", &server.quic, "--chunk", "4KiB"];
        args.extend_from_slice(&["--streams", "1"]);
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        let mut child = Guard(
            Command::new(BIN)
                .args(&args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("send starts"),
        );
        let deadline = Instant::now() + LONG;
        while stored_bytes(dir) < before + (1 << 20) {
            assert!(
                child.0.try_wait().expect("waits").is_none(),
                "finished too soon"
            );
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = child.0.id().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let mut stderr = String::new();
        child
            .0
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("reads");
        let code = child.0.wait().expect("waits").code();
        (code, stderr)
    };
    let transfers = || {
        let mut args = vec!["transfers", "--to", &server.quic, "--json"];
        args.extend_from_slice(&common);
        let out = mftq_in(dir, &args, LONG);
        assert_eq!(out.code(), Some(0), "{}", out.explain());
        let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        listed["transfers"].as_array().expect("an array").clone()
    };

    let (code, stderr) = interrupt(&[]);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("resume") && stderr.contains("mftq abort"),
        "{stderr}"
    );
    let open = transfers();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["batch_id"], "big.bin");
    assert!(open[0]["stored_bytes"].as_u64().unwrap_or(0) >= 1 << 20);
    let mut args = vec!["abort", "big.bin", "--to", &server.quic];
    args.extend_from_slice(&common);
    let aborted = mftq_in(dir, &args, LONG);
    assert_eq!(aborted.code(), Some(0), "{}", aborted.explain());
    assert!(transfers().is_empty());
    let again = mftq_in(dir, &args, LONG);
    assert_eq!(again.code(), Some(1), "{}", again.explain());

    let (code, stderr) = interrupt(&["--cancel-on-interrupt"]);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("aborted"), "{stderr}");
    assert!(transfers().is_empty(), "cancelled at once");
}

/// Issue 11: a re-send of the same file succeeds without sending, other content
/// under the id is refused unless `--replace`, the receipt file verifies offline
/// (and a tampered one does not), and `rm` deletes a batch.
#[test]
fn resend_replace_receipt_and_rm() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    let file = dir.join("ledger.csv");
    std::fs::write(&file, random_bytes(200_000, 81)).expect("writes");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&["--server-key", &server.key, "--key", "client.key"]);
        mftq_in(dir, &args, LONG)
    };
    let to = ["--to", server.quic.as_str()];
    let send = |extra: &[&str]| {
        let mut args = vec!["send", "ledger.csv"];
        args.extend_from_slice(&to);
        args.extend_from_slice(extra);
        run(&args)
    };

    let out = send(&["--receipt", "first.receipt"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let out = send(&[]);
    assert_eq!(
        out.code(),
        Some(0),
        "the same file again: {}",
        out.explain()
    );
    assert!(out.stdout.contains("already stored"), "{}", out.explain());

    // The receipt verifies offline, also against the file it receipts.
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify-receipt",
            "first.receipt",
            "--server-key",
            &server.key,
        ];
        args.extend_from_slice(extra);
        mftq_in(dir, &args, SHORT)
    };
    let out = verify(&["--file", "ledger.csv"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(out.stdout.contains("receipt verified"), "{}", out.explain());

    // Other content under the id: refused (exit 2, naming --replace), then replaced.
    std::fs::write(&file, random_bytes(150_000, 82)).expect("writes");
    let out = send(&[]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("--replace"), "{}", out.explain());
    let out = send(&["--replace"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let got = dir.join("got.csv");
    let out = run(&["get", "ledger.csv", "--from", &server.quic, "-o", "got.csv"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(std::fs::read(&got).expect("reads") == std::fs::read(&file).expect("reads"));
    // The first receipt is not for the file as it is now.
    let out = verify(&["--file", "ledger.csv"]);
    assert_eq!(out.code(), Some(5), "{}", out.explain());

    // A tampered receipt is refused.
    let text = std::fs::read_to_string(dir.join("first.receipt")).expect("reads");
    let tampered = text.replace("\"size\": 200000", "\"size\": 200001");
    assert_ne!(tampered, text);
    std::fs::write(dir.join("first.receipt"), tampered).expect("writes");
    let out = verify(&[]);
    assert_eq!(out.code(), Some(5), "{}", out.explain());
    assert!(out.stderr.contains("tampered"), "{}", out.explain());

    // rm deletes it; a second rm finds nothing (exit 2).
    let out = run(&["rm", "ledger.csv", "--to", &server.quic]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(
        out.stdout.contains("deleted batch ledger.csv"),
        "{}",
        out.explain()
    );
    let out = run(&[
        "get",
        "ledger.csv",
        "--from",
        &server.quic,
        "-o",
        "again.csv",
    ]);
    assert_ne!(out.code(), Some(0), "{}", out.explain());
    let out = run(&["rm", "ledger.csv", "--to", &server.quic]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
}

#[test]
fn get_resumes_its_part_file_cleans_stale_ones_and_fetches_ranges() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    let data = random_bytes(3_000_000, 91);
    std::fs::write(dir.join("big.bin"), &data).expect("writes");
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&["--server-key", &server.key, "--key", "client.key"]);
        mftq_in(dir, &args, LONG)
    };
    let get = |extra: &[&str]| {
        let mut args = vec!["get", "big.bin", "--from", server.quic.as_str(), "--json"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let summary: serde_json::Value = if out.code() == Some(0) {
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.explain()))
        } else {
            serde_json::Value::Null
        };
        (out, summary)
    };
    let out = run(&["send", "big.bin", "--to", &server.quic]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let (out, full) = get(&["-o", "full.bin"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(full["resumed_from"], 0);
    assert_eq!(full["fetched"], data.len());

    // A part file as an interrupted get leaves it: a verified start recorded in
    // its state, and bytes after it that may not have reached the disk.
    let part = dir.join(".resumed.bin.mftq-part");
    let state = dir.join(".resumed.bin.mftq-part.state");
    let verified = 1_048_576 + 100;
    let leave_part = |prefix: &[u8], chain: &str| {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&[0xee; 500]);
        std::fs::write(&part, bytes).expect("writes the part");
        let record = serde_json::json!({
            "schema": "mftq-part/1",
            "sender": full["sender"],
            "batch_id": "big.bin",
            "chain": chain,
            "size": data.len(),
            "verified": prefix.len(),
        });
        std::fs::write(&state, record.to_string()).expect("writes the state");
    };
    let chain = full["chain"]
        .as_str()
        .expect("the chain is named")
        .to_string();
    leave_part(&data[..verified], &chain);
    let old_style = dir.join(".resumed.bin.0123456789ab.mftq-part");
    std::fs::write(&old_style, b"an earlier attempt").expect("writes");
    let (out, resumed) = get(&["-o", "resumed.bin"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(resumed["resumed_from"], verified, "{}", out.explain());
    assert_eq!(resumed["fetched"], data.len() - verified);
    assert!(std::fs::read(dir.join("resumed.bin")).expect("reads") == data);
    for gone in [&part, &state, &old_style] {
        assert!(!gone.exists(), "{} is removed", gone.display());
    }

    // A part file whose start is wrong fails the SHA-256, and is fetched afresh.
    let mut spoiled = data[..verified].to_vec();
    spoiled[10] ^= 1;
    leave_part(&spoiled, &chain);
    let (out, again) = get(&["-o", "resumed.bin", "--force"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(out.stderr.contains("did not verify"), "{}", out.explain());
    assert_eq!(again["resumed_from"], 0);
    assert!(std::fs::read(dir.join("resumed.bin")).expect("reads") == data);

    // One for other content (the batch was replaced since) is not resumed.
    leave_part(&data[..verified], &"00".repeat(64));
    let (out, fresh) = get(&["-o", "resumed.bin", "--force"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(fresh["resumed_from"], 0);
    assert!(
        !out.stderr.contains("resuming"),
        "not even tried: {}",
        out.explain()
    );
    assert!(!part.exists() && !state.exists());

    // Ranges: inclusive ends, open ends, and one past the batch refused.
    let (out, ranged) = get(&["--range", "1000-1999", "-o", "range.bin"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(ranged["range"]["start"], 1000);
    assert!(std::fs::read(dir.join("range.bin")).expect("reads") == data[1000..2000]);
    let (out, _) = get(&["--range", "2999000-", "-o", "tail.bin"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(std::fs::read(dir.join("tail.bin")).expect("reads") == data[2_999_000..]);
    let (out, _) = get(&["--range", "0-3000000", "-o", "past.bin"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    // Asked for JSON, the error is a JSON document on stdout.
    let error: serde_json::Value = serde_json::from_str(&out.stdout).expect("a JSON error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("3000000 bytes")),
        "{}",
        out.explain()
    );
    assert!(!dir.join("past.bin").exists());
    let (out, _) = get(&["--range", "9-3"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
}

/// Trees (issue 11): several files and a directory with -r go as one batch;
/// `get` restores it into a directory with modes, mtimes and links, refuses to
/// replace without --force, lists the manifest, fetches one file alone (to a
/// directory or stdout), and refuses a hostile manifest with nothing written.
#[test]
fn send_and_get_a_tree_of_files_and_directories() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    let photos = dir.join("photos");
    std::fs::create_dir_all(photos.join("sub")).expect("mkdir");
    let big = random_bytes(700_000, 5);
    std::fs::write(photos.join("a.jpg"), &big).expect("writes");
    std::fs::write(photos.join("sub/b.txt"), b"bee").expect("writes");
    std::fs::write(photos.join("empty"), b"").expect("writes");
    std::os::unix::fs::symlink("a.jpg", photos.join("latest")).expect("symlink");
    std::fs::set_permissions(photos.join("a.jpg"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for file in ["a.jpg", "sub/b.txt"] {
        std::fs::File::options()
            .write(true)
            .open(photos.join(file))
            .and_then(|f| f.set_modified(mtime))
            .expect("touch");
    }
    std::fs::write(dir.join("notes.txt"), b"notes").expect("writes");
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend_from_slice(&["--server-key", &server.key, "--key", "client.key"]);
        mftq_in(dir, &args, LONG)
    };
    let send = |args: &[&str]| {
        let mut all = vec!["send", "--to", server.quic.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    let get = |args: &[&str]| {
        let mut all = vec!["get", "--from", server.quic.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };

    // A directory needs -r; several inputs need a batch id.
    let out = send(&["photos"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("-r"), "{}", out.explain());
    let out = send(&["photos", "notes.txt", "-r"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("--batch-id"), "{}", out.explain());
    let out = send(&["photos", "-r"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let out = send(&["photos", "notes.txt", "-r", "--batch-id", "both"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());

    // Restored into a new directory: bytes, modes, mtimes, the link.
    let out = get(&["both", "-o", "restored"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(
        out.stdout.contains("restored 7 entries"),
        "{}",
        out.explain()
    );
    let restored = dir.join("restored");
    assert!(std::fs::read(restored.join("photos/a.jpg")).expect("a.jpg") == big);
    assert_eq!(
        std::fs::read(restored.join("photos/sub/b.txt")).expect("b"),
        b"bee"
    );
    assert_eq!(
        std::fs::read(restored.join("notes.txt")).expect("notes"),
        b"notes"
    );
    assert_eq!(
        std::fs::read(restored.join("photos/empty")).expect("empty"),
        b""
    );
    let meta = std::fs::metadata(restored.join("photos/a.jpg")).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.modified().expect("mtime"), mtime);
    let b = std::fs::metadata(restored.join("photos/sub/b.txt")).expect("meta");
    assert_eq!(b.modified().expect("mtime"), mtime);
    assert_eq!(
        std::fs::read_link(restored.join("photos/latest")).expect("a link"),
        Path::new("a.jpg")
    );

    // Again: refused without --force and nothing touched; replaced with it.
    std::fs::write(restored.join("notes.txt"), b"mine").expect("writes");
    let out = get(&["both", "-o", "restored"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("--force"), "{}", out.explain());
    assert_eq!(
        std::fs::read(restored.join("notes.txt")).expect("notes"),
        b"mine"
    );
    let out = get(&["both", "-o", "restored", "--force"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(
        std::fs::read(restored.join("notes.txt")).expect("notes"),
        b"notes"
    );

    // The manifest, as lines and as JSON.
    let out = get(&["both", "--list"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(out.stdout.contains("-rw-r-----"), "{}", out.explain());
    assert!(out.stdout.contains("photos/sub/b.txt"), "{}", out.explain());
    assert!(
        out.stdout.contains("photos/latest -> a.jpg"),
        "{}",
        out.explain()
    );
    let out = get(&["both", "--list", "--json"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(7));

    // One file alone: into a directory (mode kept), or to stdout.
    std::fs::create_dir(dir.join("one")).expect("mkdir");
    let out = get(&["both", "--file", "photos/a.jpg", "-o", "one/"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(std::fs::read(dir.join("one/a.jpg")).expect("a.jpg") == big);
    let meta = std::fs::metadata(dir.join("one/a.jpg")).expect("meta");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let out = get(&["both", "--file", "photos/sub/b.txt", "-o", "-"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(out.stdout, "bee");
    let out = get(&["both", "--file", "photos/nothing", "-o", "one/"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("photos/nothing"), "{}", out.explain());
    // --list of a batch that is one file is a usage error.
    assert_eq!(
        run(&["send", "notes.txt", "--to", &server.quic]).code(),
        Some(0)
    );
    let out = get(&["notes.txt", "--list"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("not a tree"), "{}", out.explain());

    // A hostile manifest (made with the library, sent as if it were a tree) is
    // refused with exit 5, and nothing is written, not even the new directory.
    let content = b"escaped";
    let manifest = mft::tree::Manifest {
        entries: vec![mft::tree::Entry {
            path: "../escaped.txt".into(),
            mode: 0o644,
            mtime: mft::tree::Timestamp::default(),
            kind: mft::tree::EntryKind::File {
                size: content.len() as u64,
                sha256: <sha2::Sha256 as sha2::Digest>::digest(content).into(),
            },
        }],
    };
    let mut hostile = content.to_vec();
    hostile.extend_from_slice(&manifest.encode_tail().expect("encodes"));
    std::fs::write(dir.join("hostile.bin"), hostile).expect("writes");
    let out = send(&[
        "hostile.bin",
        "--batch-id",
        "hostile",
        "--metadata",
        r#"{"name":"hostile","kind":"tree"}"#,
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let out = get(&["hostile", "-o", "victim"]);
    assert_eq!(out.code(), Some(5), "{}", out.explain());
    assert!(out.stderr.contains(".."), "{}", out.explain());
    assert!(!dir.join("victim").exists(), "nothing created");
    assert!(!dir.join("escaped.txt").exists(), "nothing written outside");

    // A file whose bytes are not the ones its manifest names fails when it is
    // fetched alone to stdout too.
    let manifest = mft::tree::Manifest {
        entries: vec![mft::tree::Entry {
            path: "x.txt".into(),
            mode: 0o644,
            mtime: mft::tree::Timestamp::default(),
            kind: mft::tree::EntryKind::File {
                size: content.len() as u64,
                sha256: [7; 32],
            },
        }],
    };
    let mut lying = content.to_vec();
    lying.extend_from_slice(&manifest.encode_tail().expect("encodes"));
    std::fs::write(dir.join("lying.bin"), lying).expect("writes");
    let out = send(&[
        "lying.bin",
        "--batch-id",
        "lying",
        "--metadata",
        r#"{"name":"lying","kind":"tree"}"#,
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let out = get(&["lying", "--file", "x.txt", "-o", "-"]);
    assert_eq!(out.code(), Some(5), "{}", out.explain());
    assert!(out.stderr.contains("SHA-256"), "{}", out.explain());
}

/// Issue 11: the server's events feed its log. Each step of a batch's life (opened,
/// completed, retrieved, deleted, refused) is one JSON line naming the batch or
/// transfer and the peer.
#[test]
fn serve_logs_each_step_of_a_transfer() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "server.key");
    let client = keygen(dir, "client.key");
    std::fs::write(dir.join("allowed.txt"), format!("{client}\n")).expect("writes the list");
    let log = dir.join("serve.log");
    let mut extra = CLIENT_LISTS.to_vec();
    extra.extend_from_slice(&["--log-format", "json"]);
    let mut server = serve_logging(dir, &extra, Some(&log));
    std::fs::write(dir.join("events.bin"), random_bytes(300_000, 91)).expect("writes");
    let key = ["--server-key", server.key.as_str(), "--key", "client.key"];
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend_from_slice(&key);
        mftq_in(dir, &args, LONG)
    };
    let sent = run(&["send", "events.bin", "--to", &server.quic]);
    assert_eq!(sent.code(), Some(0), "{}", sent.explain());
    let got = run(&[
        "get",
        "events.bin",
        "--from",
        &server.quic,
        "-o",
        "back.bin",
    ]);
    assert_eq!(got.code(), Some(0), "{}", got.explain());
    let missing = run(&["get", "nothing-here", "--from", &server.quic, "-o", "x"]);
    assert_eq!(missing.code(), Some(1), "{}", missing.explain());
    let removed = run(&["rm", "events.bin", "--to", &server.quic]);
    assert_eq!(removed.code(), Some(0), "{}", removed.explain());
    let _ = server.child.0.kill();
    let _ = server.child.0.wait();

    let text = std::fs::read_to_string(&log).expect("reads the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{text}"))
    };
    let opened = &find("transfer opened")["fields"];
    assert_eq!(opened["batch"], "\"events.bin\"", "{opened}");
    assert_eq!(opened["peer"], client.as_str(), "{opened}");
    let transfer = opened["transfer"]
        .as_str()
        .expect("a transfer id")
        .to_string();
    let completed = &find("batch completed")["fields"];
    assert_eq!(completed["transfer"], transfer.as_str(), "{completed}");
    assert_eq!(completed["bytes"], 300_000, "{completed}");
    let retrieved = &find("batch retrieved")["fields"];
    assert_eq!(retrieved["transfer"], transfer.as_str(), "{retrieved}");
    assert_eq!(retrieved["ranged"], false, "{retrieved}");
    let refused = &find("refused")["fields"];
    assert_eq!(refused["peer"], client.as_str(), "{refused}");
    let deleted = &find("batch deleted")["fields"];
    assert_eq!(deleted["transfer"], transfer.as_str(), "{deleted}");
    assert_eq!(deleted["owner"], client.as_str(), "{deleted}");
}

/// A `get` killed mid-way (SIGKILL, so nothing of its own tidies up) resumes
/// when run again from its verified part file, and the server's log shows it
/// fetched only the missing segments: one retrieval, of a range, of fewer
/// segments than the batch has.
#[test]
fn a_killed_get_resumes_and_fetches_only_what_it_lacks() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "server.key");
    let client = keygen(dir, "client.key");
    std::fs::write(dir.join("allowed.txt"), format!("{client}\n")).expect("writes the list");
    let log = dir.join("serve.log");
    let mut extra = CLIENT_LISTS.to_vec();
    extra.extend_from_slice(&["--log-format", "json"]);
    let mut server = serve_logging(dir, &extra, Some(&log));
    // Two checkpoints' worth (32 MiB each) and a bit: the get records its
    // progress once well before it ends.
    let data = random_bytes((64 << 20) + 12_345, 17);
    std::fs::write(dir.join("large.bin"), &data).expect("writes");
    let key = ["--server-key", server.key.as_str(), "--key", "client.key"];
    let get_args = [
        "get",
        "large.bin",
        "--from",
        server.quic.as_str(),
        "-o",
        "back.bin",
    ];
    let sent = mftq_in(
        dir,
        &[
            &["send", "large.bin", "--to", server.quic.as_str()],
            &key[..],
        ]
        .concat(),
        LONG,
    );
    assert_eq!(sent.code(), Some(0), "{}", sent.explain());

    let mut first = Guard(
        Command::new(BIN)
            .args(get_args.iter().chain(&key))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("get starts"),
    );
    // Killed as soon as its first checkpoint is recorded.
    let state = dir.join(".back.bin.mftq-part.state");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.exists() {
        assert!(
            first.0.try_wait().expect("waits").is_none(),
            "the get ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the get made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = first.0.kill();
    let _ = first.0.wait();
    assert!(
        !dir.join("back.bin").exists(),
        "a killed get leaves no output"
    );

    let again = mftq_in(dir, &[&get_args[..], &key[..], &["--json"]].concat(), LONG);
    assert_eq!(again.code(), Some(0), "{}", again.explain());
    let summary: serde_json::Value =
        serde_json::from_str(&again.stdout).unwrap_or_else(|e| panic!("{e}: {}", again.explain()));
    let resumed_from = summary["resumed_from"].as_u64().expect("resumed_from");
    assert!(resumed_from >= 32 << 20, "{}", again.explain());
    assert_eq!(summary["fetched"], data.len() as u64 - resumed_from);
    assert!(std::fs::read(dir.join("back.bin")).expect("reads") == data);
    let _ = server.child.0.kill();
    let _ = server.child.0.wait();

    let text = std::fs::read_to_string(&log).expect("reads the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["fields"].clone())
        .collect();
    let total = lines
        .iter()
        .find(|f| f["message"] == "batch completed")
        .and_then(|f| f["segments"].as_u64())
        .unwrap_or_else(|| panic!("no completion in:\n{text}"));
    let retrievals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|f| f["message"] == "batch retrieved")
        .collect();
    assert_eq!(
        retrievals.len(),
        1,
        "only the resumed get finished:\n{text}"
    );
    let resumed = retrievals[0];
    assert_eq!(resumed["ranged"], true, "{resumed}");
    let segments = resumed["segments"].as_u64().expect("segments");
    let chunk = (data.len() as u64).div_ceil(total);
    let missing = (data.len() as u64 - resumed_from).div_ceil(chunk) + 1;
    assert!(
        segments < total && segments <= missing,
        "{segments} of {total} segments fetched again, {missing} at most lacked"
    );
}

/// A server that is down (issue 12): `send`, `get` and `list` to `mftq://`
/// and `https://` where nothing listens exit 4 at the first attempt, naming
/// what refused and what stayed silent, instead of retrying for a minute.
#[test]
fn a_down_server_is_reported_at_the_first_attempt() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "client.key");
    let server_key = keygen(dir, "server.key");
    std::fs::write(dir.join("f.txt"), b"hello").expect("writes");
    // A port nothing listens on, for TCP or UDP.
    let port = {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        tcp.local_addr().expect("address").port()
    };
    let key = ["--server-key", server_key.as_str(), "--key", "client.key"];
    for scheme in ["mftq", "https"] {
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        let commands: [Vec<&str>; 3] = [
            vec!["send", "f.txt", "--to", &endpoint],
            vec!["get", "f.txt", "--from", &endpoint, "-o", "back.txt"],
            vec!["list", "--from", &endpoint],
        ];
        for command in commands {
            let out = mftq_in(dir, &[&command[..], &key[..]].concat(), LONG);
            assert_eq!(out.code(), Some(4), "{}", out.explain());
            assert!(
                out.stderr.contains("nothing is listening"),
                "{}",
                out.explain()
            );
            assert!(
                out.stderr
                    .contains(&format!("https://127.0.0.1:{port} refused")),
                "{}",
                out.explain()
            );
            if scheme == "mftq" {
                assert!(
                    out.stderr
                        .contains(&format!("quic://127.0.0.1:{port} gave no answer")),
                    "{}",
                    out.explain()
                );
            }
            assert!(
                !out.stderr.contains("reconnecting"),
                "a single attempt: {}",
                out.explain()
            );
        }
    }

    // Something else listens there (a web server, say): not retried either.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = other.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in other.incoming().flatten() {
            let mut conn = conn;
            let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    for scheme in ["mftq", "https"] {
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        let out = mftq_in(
            dir,
            &[&["send", "f.txt", "--to", endpoint.as_str()][..], &key[..]].concat(),
            LONG,
        );
        assert_eq!(out.code(), Some(4), "{}", out.explain());
        assert!(
            out.stderr.contains("not an mftq server"),
            "{}",
            out.explain()
        );
        assert!(!out.stderr.contains("reconnecting"), "{}", out.explain());
    }
}

/// A server that dies mid-send (issue 12): each retry says "stalled,
/// reconnecting (n/N)", a refused reconnection is retried too (the server took
/// part of the batch, so it may be restarting), and the send gives up after N
/// with exit 4.
#[test]
fn a_server_lost_mid_send_is_reported_as_stalled_and_reconnecting() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mut server = serve_one_client(dir);
    std::fs::write(dir.join("big.bin"), random_bytes(24 << 20, 9)).expect("writes");
    let errors = dir.join("send.err");
    let mut send = Guard(
        Command::new(BIN)
            .args([
                "send",
                "big.bin",
                "--to",
                &server.https,
                "--server-key",
                &server.key,
                "--key",
                "client.key",
                "--chunk",
                "4KiB",
                "--streams",
                "1",
                "--retries",
                "2",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).expect("creates"))
            .spawn()
            .expect("send starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_bytes(dir) < 1 << 20 {
        assert!(
            send.0.try_wait().expect("waits").is_none(),
            "the send ended early"
        );
        assert!(Instant::now() < deadline, "the send made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = server.child.0.kill();
    let _ = server.child.0.wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = send.0.try_wait().expect("waits") {
            break status;
        }
        assert!(Instant::now() < deadline, "the send did not give up");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&errors).expect("reads");
    assert_eq!(status.code(), Some(4), "{stderr}");
    for line in [
        "mftq: stalled, reconnecting (1/2)",
        "mftq: stalled, reconnecting (2/2)",
    ] {
        assert!(stderr.contains(line), "{line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("nothing is listening"), "{stderr}");
}

/// Key files as ssh users expect (issue 12): `pubkey` prints a key file's
/// public key; a private key others may read is refused with the `chmod` to
/// run; a public key or another file given as `--key` is named for what it is;
/// `keygen --out -` writes to stdout; and the key files are the RFC 8410 form
/// that OpenSSL reads (and OpenSSL's are read), checked when `openssl` is here.
#[test]
fn key_files_behave_as_ssh_users_expect() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let public = keygen(dir, "me.key");
    let run = |args: &[&str]| mftq_in(dir, args, Duration::from_secs(20));
    let out = run(&["pubkey", "me.key"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(out.stdout.trim(), public);
    std::fs::write(dir.join("me.pub"), format!("{public}\n")).expect("writes");
    assert_eq!(run(&["pubkey", "me.pub"]).stdout.trim(), public);

    // Open to others: refused, with the fix.
    std::fs::set_permissions(dir.join("me.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let endpoint = "https://127.0.0.1:1";
    for args in [
        &["pubkey", "me.key"][..],
        &[
            "list",
            "--from",
            endpoint,
            "--server-key",
            &public,
            "--key",
            "me.key",
        ][..],
    ] {
        let out = run(args);
        assert_eq!(out.code(), Some(2), "{}", out.explain());
        assert!(out.stderr.contains("chmod 600 me.key"), "{}", out.explain());
    }
    std::fs::set_permissions(dir.join("me.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");

    // The wrong file as --key.
    std::fs::write(dir.join("notes.txt"), b"shopping list").expect("writes");
    for (file, says) in [
        ("me.pub", "holds a public key"),
        ("notes.txt", "not a key file"),
    ] {
        let out = run(&[
            "list",
            "--from",
            endpoint,
            "--server-key",
            &public,
            "--key",
            file,
        ]);
        assert_eq!(out.code(), Some(2), "{}", out.explain());
        assert!(out.stderr.contains(says), "{says:?}: {}", out.explain());
    }

    // To stdout: the private key there, the public key on stderr.
    let out = run(&["keygen", "--out", "-"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(
        out.stdout.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{}",
        out.explain()
    );
    assert!(!dir.join("-").exists(), "no file named -");
    let printed = out
        .stderr
        .trim()
        .strip_prefix("mftq: public key ")
        .expect("the public key on stderr")
        .to_string();
    let piped = dir.join("piped.key");
    std::fs::write(&piped, &out.stdout).expect("writes");
    std::fs::set_permissions(&piped, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(run(&["pubkey", "piped.key"]).stdout.trim(), printed);

    // OpenSSL reads ours, and we read OpenSSL's. A DER public key ends with
    // the 32 bytes of the key.
    let key_of = |der: &[u8]| -> String {
        der[der.len().saturating_sub(32)..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
    };
    let Some(version) = openssl(&["version"]) else {
        eprintln!("openssl is not installed: its half of this test is skipped");
        return;
    };
    assert!(version.status.success());
    let theirs = openssl(&["pkey", "-in", "me.key", "-pubout", "-outform", "DER"]).expect("runs");
    assert!(
        theirs.status.success(),
        "openssl pkey refused our key file: {}",
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(
        key_of(&theirs.stdout),
        public,
        "openssl finds the same public key"
    );
    let made = openssl(&["genpkey", "-algorithm", "ed25519", "-out", "openssl.key"]).expect("runs");
    assert!(made.status.success());
    std::fs::set_permissions(
        dir.join("openssl.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let theirs =
        openssl(&["pkey", "-in", "openssl.key", "-pubout", "-outform", "DER"]).expect("runs");
    let hex = key_of(&theirs.stdout);
    let out = run(&["pubkey", "openssl.key"]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(out.stdout.trim(), hex);
}

/// Less to type (issue 12): a default identity made on first use; the
/// endpoint and server key from MFTQ_ENDPOINT and MFTQ_SERVER_KEY, or
/// `--server-key @FILE`; a named remote from config.toml; and trust on first
/// use into known_servers, whose key, once changed, is refused loudly.
#[test]
fn defaults_remotes_and_trust_on_first_use() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let config = dir.join("config");
    std::fs::write(dir.join("f.txt"), b"first").expect("writes");
    std::fs::write(dir.join("g.txt"), b"second").expect("writes");
    let run = |args: &[&str], envs: &[(&str, &str)]| mftq_env(dir, args, envs, LONG);

    // No key anywhere: the default identity is made, with a notice; no server
    // key anywhere is a usage error saying where one may come from.
    let out = run(&["list", "--from", "https://127.0.0.1:1"], &[]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("created your key"), "{}", out.explain());
    assert!(
        out.stderr.contains("--trust-on-first-use"),
        "{}",
        out.explain()
    );
    let id = config.join("id.key");
    let mode = std::fs::metadata(&id).expect("made").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let me = run(&["pubkey", id.to_str().expect("utf-8")], &[])
        .stdout
        .trim()
        .to_string();
    std::fs::write(dir.join("allowed.txt"), format!("{me}\n")).expect("writes");
    let server_key = keygen(dir, "server.key");
    let server = serve(dir, &CLIENT_LISTS);
    std::fs::write(dir.join("server.pub"), format!("{server_key}\n")).expect("writes");

    // From the environment, and from a file.
    let envs = [
        ("MFTQ_ENDPOINT", server.https.as_str()),
        ("MFTQ_SERVER_KEY", server_key.as_str()),
    ];
    let out = run(&["send", "f.txt"], &envs);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(
        !out.stderr.contains("created your key"),
        "made once: {}",
        out.explain()
    );
    let out = run(
        &[
            "list",
            "--from",
            &server.quic,
            "--server-key",
            "@server.pub",
        ],
        &[],
    );
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(out.stdout.contains("f.txt"), "{}", out.explain());

    // A named remote.
    std::fs::write(
        config.join("config.toml"),
        format!(
            "[remotes.backup]\nendpoint = \"{}\"\nserver_key = \"{server_key}\"\n",
            server.quic
        ),
    )
    .expect("writes");
    let out = run(&["send", "g.txt", "--to", "backup"], &[]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let out = run(&["list", "--from", "backup"], &[]);
    assert!(out.stdout.contains("g.txt"), "{}", out.explain());
    let out = run(&["list", "--from", "bakcup"], &[]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(out.stderr.contains("it names backup"), "{}", out.explain());

    // Trust on first use: remembered, then used without the flag.
    let out = run(
        &["list", "--from", &server.https, "--trust-on-first-use"],
        &[],
    );
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(
        out.stderr.contains("trusting the server"),
        "{}",
        out.explain()
    );
    assert!(out.stderr.contains(&server_key), "{}", out.explain());
    let known = std::fs::read_to_string(config.join("known_servers")).expect("remembered");
    let address = server.https.trim_start_matches("https://");
    assert_eq!(known, format!("{address} {server_key}\n"));
    let out = run(&["list", "--from", &server.https], &[]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(!out.stderr.contains("trusting"), "{}", out.explain());

    // The key it knows changed: refused, loudly, and known_servers kept.
    let other = run(&["keygen", "--out", "-"], &[]).stderr;
    let other = other.trim().trim_start_matches("mftq: public key ");
    std::fs::write(config.join("known_servers"), format!("{address} {other}\n")).expect("writes");
    let out = run(
        &["list", "--from", &server.https, "--trust-on-first-use"],
        &[],
    );
    assert_eq!(out.code(), Some(3), "{}", out.explain());
    assert!(
        out.stderr.contains("THE SERVER'S KEY HAS CHANGED"),
        "{}",
        out.explain()
    );
    assert!(out.stderr.contains("line 1"), "{}", out.explain());
    let kept = std::fs::read_to_string(config.join("known_servers")).expect("kept");
    assert_eq!(kept, format!("{address} {other}\n"));
}

/// Output as the tools people like (issue 12): typo suggestions, global
/// options listed after a command's own, errors as JSON under `--json` (with
/// a schema, as every JSON document has), `-q`, and completions and a man page.
#[test]
fn the_command_line_helps_and_speaks_json_when_asked() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let run = |args: &[&str]| mftq_in(dir, args, Duration::from_secs(20));
    let out = run(&["sned", "f.txt"]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());
    assert!(
        out.stderr.contains("similar subcommand exists: 'send'"),
        "{}",
        out.explain()
    );

    let help = run(&["send", "--help"]).stdout;
    let own = help.find("--batch-id").expect("its own options");
    let global = help.find("Global options:").expect("a global heading");
    assert!(own < global, "own options first:\n{help}");
    assert!(help[global..].contains("--quiet"), "{help}");

    // Errors as JSON: a bad flag value, and a clap error alike.
    for args in [
        &[
            "list",
            "--from",
            "https://127.0.0.1:1",
            "--server-key",
            "abc",
            "--json",
        ][..],
        &["list", "--from", "https://127.0.0.1:1", "--bogus", "--json"][..],
    ] {
        let out = run(args);
        assert_eq!(out.code(), Some(2), "{}", out.explain());
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.explain()));
        assert_eq!(doc["schema"], "mftq-error/1");
        assert_eq!(doc["error"]["kind"], "usage");
        assert_eq!(doc["error"]["exit_code"], 2);
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // -q: nothing but the result.
    let server = serve_one_client(dir);
    std::fs::write(dir.join("f.txt"), b"quiet please").expect("writes");
    let key = ["--server-key", server.key.as_str(), "--key", "client.key"];
    let out = run(&[&["send", "f.txt", "--to", &server.quic, "-q"][..], &key[..]].concat());
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{}",
        out.explain()
    );
    let out = run(&[
        &["send", "f.txt", "--to", &server.quic, "--json"][..],
        &key[..],
    ]
    .concat());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(doc["schema"], "mftq-send/1");
    let out = run(&[
        &["get", "f.txt", "--from", &server.quic, "-o", "-", "-q"][..],
        &key[..],
    ]
    .concat());
    assert_eq!(out.stdout, "quiet please");
    assert_eq!(out.stderr, "", "{}", out.explain());

    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.code(), Some(0), "{}", out.explain());
        assert!(
            out.stdout.contains("mftq") && out.stdout.contains("server-key"),
            "{shell}"
        );
    }
    let man = run(&["man"]).stdout;
    assert!(
        man.contains(".TH mftq") && man.contains(".TH mftq-send"),
        "{}",
        &man[..200.min(man.len())]
    );
}

/// The bar as a person sees it (issue 12), driven under a pseudo-terminal of
/// 80 columns by `script` (skipped where it is missing): every frame fits in
/// 80 columns, shows a percentage, the rate and the ETA in the units of the
/// sizes, and the run ends with a one-line summary in those units too.
#[test]
fn the_progress_bar_fits_an_80_column_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("script is not installed: this test is skipped");
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    std::fs::write(dir.join("big.bin"), random_bytes(96 << 20, 3)).expect("writes");
    let typescript = dir.join("typescript");
    let command = format!(
        "stty cols 80 rows 24; {BIN} send big.bin --to {} --server-key {} --key client.key",
        server.quic, server.key
    );
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(&typescript)
        .current_dir(dir)
        .env("MFTQ_CONFIG_DIR", dir.join("config"))
        .stdin(Stdio::null())
        .output()
        .expect("script runs");
    let text =
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    assert!(out.status.success(), "{text}");
    // What the terminal shows, frame by frame: text between carriage returns,
    // newlines and escape sequences.
    let mut frames = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => frames.push(std::mem::take(&mut current)),
            '\u{1b}' => {
                frames.push(std::mem::take(&mut current));
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => current.push(c),
        }
    }
    frames.push(current);
    let bars: Vec<&String> = frames
        .iter()
        .filter(|f| f.starts_with("sending") && f.contains('%'))
        .collect();
    assert!(!bars.is_empty(), "no bar drawn:\n{text}");
    for bar in &bars {
        assert!(
            bar.chars().count() <= 80,
            "{} columns: {bar:?}",
            bar.chars().count()
        );
        assert!(bar.contains("B/s ") && bar.contains("ETA"), "{bar:?}");
    }
    let summary = frames
        .iter()
        .find(|f| f.starts_with("sent \"big.bin\""))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(
        summary.contains("96.0 MiB") && summary.contains("MiB/s)"),
        "{summary}"
    );
    assert!(!text.contains("MB/s"), "one unit family: {text}");
}

/// A tree `get` killed once it has recorded a checkpoint (issue 11) is run
/// again: it verifies what it staged, fetches only the rest, and restores the
/// tree whole; the server's log shows the second get's data pulled as one
/// ranged retrieval of fewer segments than the batch holds.
#[test]
fn a_killed_tree_get_resumes_from_its_staging_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    keygen(dir, "server.key");
    let client = keygen(dir, "client.key");
    std::fs::write(dir.join("allowed.txt"), format!("{client}\n")).expect("writes the list");
    let log = dir.join("serve.log");
    let mut extra = CLIENT_LISTS.to_vec();
    extra.extend_from_slice(&["--log-format", "json"]);
    let mut server = serve_logging(dir, &extra, Some(&log));
    // More than a checkpoint's worth (32 MiB) of file data in two files.
    let files = [
        ("album/one.bin", random_bytes(40 << 20, 21)),
        ("album/two.bin", random_bytes((20 << 20) + 777, 22)),
    ];
    std::fs::create_dir(dir.join("album")).expect("mkdir");
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).expect("writes");
    }
    let key = ["--server-key", server.key.as_str(), "--key", "client.key"];
    let sent = mftq_in(
        dir,
        &[
            &["send", "album", "-r", "--to", server.quic.as_str()],
            &key[..],
        ]
        .concat(),
        LONG,
    );
    assert_eq!(sent.code(), Some(0), "{}", sent.explain());
    let get_args = ["get", "album", "--from", server.quic.as_str(), "-o", "out"];

    let mut first = Guard(
        Command::new(BIN)
            .args(get_args.iter().chain(&key))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("get starts"),
    );
    // Killed as soon as its state records durable bytes.
    let out = dir.join("out");
    let checkpointed = || {
        let entries = std::fs::read_dir(&out).ok()?;
        entries.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".part.state") {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            let durable: u64 = text
                .lines()
                .last()?
                .strip_prefix("durable ")?
                .parse()
                .ok()?;
            (durable > 0).then_some(durable)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpointed().is_none() {
        assert!(
            first.0.try_wait().expect("waits").is_none(),
            "the get ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the get made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = first.0.kill();
    let _ = first.0.wait();
    assert!(!out.join("album").exists(), "a killed get restores nothing");
    let lines_before = std::fs::read_to_string(&log)
        .expect("reads the log")
        .lines()
        .count();

    let again = mftq_in(dir, &[&get_args[..], &key[..], &["--json"]].concat(), LONG);
    assert_eq!(again.code(), Some(0), "{}", again.explain());
    let summary: serde_json::Value =
        serde_json::from_str(&again.stdout).unwrap_or_else(|e| panic!("{e}: {}", again.explain()));
    let resumed_from = summary["resumed_from"].as_u64().expect("resumed_from");
    let data_len: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert!(resumed_from >= 32 << 20, "{}", again.explain());
    assert_eq!(summary["fetched"], data_len - resumed_from);
    assert!(
        again.stderr.contains("resuming the tree"),
        "{}",
        again.explain()
    );
    for (name, bytes) in &files {
        assert!(
            std::fs::read(out.join(name)).expect("reads") == *bytes,
            "{name}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("lists")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["album"], "no staging is left");
    // Stopped as an operator stops it: its JSON log holds nothing but JSON,
    // to its last line.
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.0.id().to_string()])
        .status();
    let _ = server.child.0.wait();

    let text = std::fs::read_to_string(&log).expect("reads the log");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line:?}"
        );
    }
    assert!(text.contains("\"stopped\""), "the stop is logged:\n{text}");
    // Each batch event names its batch, and says where its flow came from.
    let completed: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "batch completed")
        .unwrap_or_else(|| panic!("no completion in:\n{text}"));
    // Batch ids are logged quoted, control characters escaped.
    assert_eq!(completed["fields"]["batch"], "\"album\"", "{completed}");
    assert_eq!(completed["span"]["protocol"], "quic", "{completed}");
    assert!(
        completed["span"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{completed}"
    );
    assert_eq!(completed["span"]["client"].as_str().map(str::len), Some(12));
    let fields: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["fields"].clone())
        .collect();
    let total = fields
        .iter()
        .find(|f| f["message"] == "batch completed")
        .and_then(|f| f["segments"].as_u64())
        .unwrap_or_else(|| panic!("no completion in:\n{text}"));
    let largest = text
        .lines()
        .skip(lines_before)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["fields"].clone())
        .filter(|f| f["message"] == "batch retrieved")
        .filter_map(|f| f["segments"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("the second get retrieved nothing:\n{text}"));
    assert!(
        largest < total * 3 / 4,
        "the second get pulled {largest} of {total} segments at once"
    );
}

/// `send --compress` (issue 11): text is stored compressed by default and comes
/// back byte for byte; `--compress off` stores it as it is; a bad mode is a
/// usage error.
#[test]
fn send_compresses_what_compresses_unless_told_not_to() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let server = serve_one_client(dir);
    let mut text = String::new();
    for i in 0..100_000u32 {
        text.push_str(&format!(
            "{i:08},sensor-{},{}.{}\n",
            i % 31,
            i % 997,
            i % 10
        ));
    }
    std::fs::write(dir.join("readings.csv"), &text).expect("writes");
    let size = text.len() as u64;
    let run = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--server-key", &server.key, "--key", "client.key"]);
        mftq_in(dir, &args, LONG)
    };
    let sent = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "readings.csv",
            "--to",
            server.quic.as_str(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_eq!(out.code(), Some(0), "{}", out.explain());
        let summary: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.explain()));
        summary["sealed_bytes"].as_u64().expect("sealed bytes")
    };
    let compressed = sent(&[]);
    assert!(
        compressed < size / 3,
        "{compressed} bytes sealed for {size}"
    );
    let out = run(&[
        "get",
        "readings.csv",
        "--from",
        &server.https,
        "-o",
        "back.csv",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(std::fs::read(dir.join("back.csv")).expect("reads") == text.as_bytes());
    // And in words, without --json.
    let out = run(&[
        "send",
        "readings.csv",
        "--batch-id",
        "words.csv",
        "--to",
        &server.quic,
    ]);
    assert!(out.stdout.contains("compressed to"), "{}", out.explain());

    let plain = sent(&["--batch-id", "plain.csv", "--compress", "off"]);
    assert!(
        plain > size,
        "{plain} bytes sealed for {size}: stored as it is"
    );
    let out = run(&[
        "get",
        "plain.csv",
        "--from",
        &server.quic,
        "-o",
        "plain.csv",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    assert!(std::fs::read(dir.join("plain.csv")).expect("reads") == text.as_bytes());

    let out = run(&[
        "send",
        "readings.csv",
        "--compress",
        "lz4",
        "--to",
        &server.quic,
    ]);
    assert_eq!(out.code(), Some(2), "{}", out.explain());

    // A server run with --no-compression settles every transfer on none.
    let tmp2 = tempfile::tempdir().expect("temp dir");
    let dir2 = tmp2.path();
    keygen(dir2, "server.key");
    std::fs::copy(dir.join("client.key"), dir2.join("client.key")).expect("copies the key");
    std::fs::copy(dir.join("allowed.txt"), dir2.join("allowed.txt")).expect("copies the list");
    std::fs::copy(dir.join("readings.csv"), dir2.join("readings.csv")).expect("copies");
    let mut extra = CLIENT_LISTS.to_vec();
    extra.push("--no-compression");
    let plain_server = serve(dir2, &extra);
    let out = mftq_in(
        dir2,
        &[
            "send",
            "readings.csv",
            "--to",
            &plain_server.quic,
            "--json",
            "--server-key",
            &plain_server.key,
            "--key",
            "client.key",
        ],
        LONG,
    );
    assert_eq!(out.code(), Some(0), "{}", out.explain());
    let summary: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.explain()));
    assert!(summary["sealed_bytes"].as_u64().expect("sealed bytes") > size);
}
