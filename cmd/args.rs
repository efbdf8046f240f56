//! The command line, as clap derives it, and the value parsers its flags share.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Secure managed file transfer over QUIC, with an HTTPS fallback.
#[derive(Debug, Parser)]
#[command(
    name = "mftq",
    version,
    after_help = "\
Examples:
  mftq keygen --out server.key            # prints the server's public key
  mftq serve --key server.key --data ./data --senders senders.txt --retrievers senders.txt
  mftq send report.pdf --to mftq://host:4433 --server-key HEX --key me.key
  mftq get report.pdf --from mftq://host:4433 --server-key HEX --key me.key -o report.pdf
  mftq demo                               # everything on loopback, QUIC and HTTPS

Exit codes: 0 success, 2 usage or bad input, 3 authentication or trust refused,
4 network unreachable, 5 integrity failure, 1 anything else.
Logs: RUST_LOG=debug (to stderr)."
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// -v prints an error's cause chain; -vv also logs at debug level.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Say nothing but errors (and what --json asks for): no progress bar, no
    /// notices, no summary.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
    /// Draw no progress bar.
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_progress: bool,
    /// Log lines (stderr) as text or JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a private key file and print its public key.
    Keygen(KeygenArgs),
    /// Print the public key of a key file.
    Pubkey(PubkeyArgs),
    /// Run a server: listen, store batches, serve them back.
    Serve(ServeArgs),
    /// Push a file (or stdin) to a server as a batch.
    Send(SendArgs),
    /// Pull a batch back into a file (or stdout), verified.
    Get(GetArgs),
    /// List the batches this key may retrieve.
    List(ListArgs),
    /// List this key's open (interrupted or running) transfers on a server.
    Transfers(TransfersArgs),
    /// Abort this key's open transfer of a batch: the server deletes what it holds.
    Abort(AbortArgs),
    /// Delete a stored batch: it is no longer listed or retrievable, and its
    /// storage is freed.
    Rm(RmArgs),
    /// Check a receipt file written by `send --receipt`, offline.
    VerifyReceipt(VerifyReceiptArgs),
    /// Run everything on loopback over QUIC and HTTPS and compare them.
    Demo(DemoArgs),
    /// Measure throughput over loopback or an emulated WAN link, as a matrix.
    Bench(BenchArgs),
    /// Print a shell completion script: `mftq completions bash > /etc/bash_completion.d/mftq`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `mftq man | man -l -`.
    Man,
    /// One side of a `bench` run (started by `mftq bench` itself).
    #[command(hide = true)]
    BenchPeer(crate::bench::peer::PeerArgs),
}

impl Command {
    /// Whether the command was asked for JSON output, so its error comes as
    /// JSON too.
    pub fn wants_json(&self) -> bool {
        match self {
            Command::Send(a) => a.client.json,
            Command::Get(a) => a.client.json,
            Command::List(a) => a.client.json,
            Command::Transfers(a) => a.client.json,
            Command::Abort(a) => a.client.json,
            Command::Rm(a) => a.client.json,
            Command::VerifyReceipt(a) => a.json,
            Command::Demo(a) => a.json,
            Command::Bench(a) => a.json,
            _ => false,
        }
    }
}

/// How QUIC and HTTPS connections are tuned: the congestion controller, and
/// windows sized for a target rate.
#[derive(Clone, Debug, Default, Args)]
pub struct TuningArgs {
    /// QUIC congestion controller: model (ours: model-based, loss-tolerant), bbr
    /// (quinn's), cubic or newreno. The sender of the data is the one whose
    /// controller matters: the client on a push, the server on a pull.
    #[arg(long, value_name = "NAME", value_parser = parse_congestion)]
    pub congestion: Option<flow::CongestionControl>,
    /// The fastest the path is expected to carry, e.g. 200Mbit or 1Gbit (default
    /// 1Gbit): sizes windows and data in flight with the measured round trip; it is
    /// a hint, never a limit.
    #[arg(long = "rate", value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<u64>,
}

/// `mftq completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells `mftq completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `mftq keygen`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq keygen --out me.key                 # prints: <64 hex digits>
  PUB=$(mftq keygen --out server.key)      # the public key for --server-key and allow-lists

The key file is PKCS#8 PEM, readable only by its owner (mode 0600). The public key
is printed on stdout as 64 hex digits, the form every flag and file accepts.")]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600); `-` writes it to stdout (and
    /// the public key to stderr).
    #[arg(long, short, value_name = "FILE", default_value = "mftq.key")]
    pub out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `mftq pubkey`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq pubkey me.key           # the 64 hex digits to give a server's allow-list
  mftq pubkey server.key       # the --server-key clients need")]
pub struct PubkeyArgs {
    /// A private key file (refused if others may read it), or a public key file.
    #[arg(value_name = "KEYFILE")]
    pub file: PathBuf,
}

/// `mftq serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq serve --key server.key --data ./data --senders senders.txt --retrievers retrievers.txt
  mftq serve --config mftq.toml --listen quic/127.0.0.1:0
  mftq serve --config mftq.toml --log-format json

Allow-list files hold one public key (64 hex digits) per line, optionally followed by
a comment; lines starting with # and blank lines are ignored.

A config file (TOML) may set any of: listen = [\"quic/0.0.0.0:4433\"], data, key,
senders, retrievers, max_chunk = \"4MiB\", max_metadata = \"64KiB\",
max_transfers_per_key = 16, compression = false, grace = 5. Relative paths are relative to the config
file. Flags override it.

On start it prints `listening on <endpoint>` for each listener and
`public key <hex>`. SIGINT or SIGTERM stops listening, lets open flows finish for
the grace period, then exits.")]
pub struct ServeArgs {
    /// A TOML file with any of these settings; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen, as protocol/address; repeat for more
    /// (default quic/0.0.0.0:4433 and https/0.0.0.0:4433).
    #[arg(long, value_name = "PROTO/ADDR")]
    pub listen: Vec<String>,
    /// The directory of the embedded store (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The server's private key file (from `mftq keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Public keys allowed to send, one per line.
    #[arg(long, value_name = "FILE")]
    pub senders: Option<PathBuf>,
    /// Public keys allowed to retrieve and list, one per line.
    #[arg(long, value_name = "FILE")]
    pub retrievers: Option<PathBuf>,
    /// The largest segment a sender may use (default 4MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_chunk: Option<u64>,
    /// The largest metadata accepted (default 64KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_metadata: Option<u64>,
    /// Open (incomplete) transfers one key may have at once (default 16).
    #[arg(long, value_name = "N")]
    pub max_transfers_per_key: Option<usize>,
    /// Bytes one key's open transfers may hold together (default 1TiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_open_bytes_per_key: Option<u64>,
    /// Bytes one key may hold in all, open and completed (default 16TiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes_per_key: Option<u64>,
    /// Connections each listener holds at once, handshakes included (default 4096).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections one source address holds at once, per listener (default 64).
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Seconds open flows get to finish after SIGINT/SIGTERM (default 5).
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u64>,
    /// Settle every transfer on no compression, even when its sender offers
    /// zstd: ciphertext lengths then show nothing of how compressible the data
    /// is (PROTOCOL.md §14).
    #[arg(long)]
    pub no_compression: bool,
    /// Transport tuning (the server sends on a pull, so its controller matters there).
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Which transport a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// QUIC first, HTTPS beside it if QUIC does not answer (`mftq://`); an endpoint
    /// that names its protocol keeps it.
    Auto,
    /// QUIC only.
    Quic,
    /// HTTPS only.
    Https,
}

/// What every client command needs: its key, the server's key, and a transport.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's public key: 64 hex digits (as `mftq serve` or `mftq pubkey`
    /// print it), or @FILE holding them. Default: $MFTQ_SERVER_KEY, the remote's
    /// `server_key`, or the key known_servers holds for the endpoint.
    #[arg(long, value_name = "PUB")]
    pub server_key: Option<String>,
    /// Our private key file. Default: $MFTQ_KEY, the remote's `key`, or
    /// ~/.config/mftq/id.key (created on first use).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With no server key given or known, trust the key the server presents
    /// this once and remember it in ~/.config/mftq/known_servers (a key that
    /// changes later is refused, as ssh does).
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// Transport: auto (QUIC, HTTPS fallback), quic or https.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds each dial may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub dial_timeout: f64,
    /// Network failures to retry (with backoff) before giving up. A server that
    /// refuses the first connection (nothing listens) is not retried.
    /// (default 5, or the remote's `retries`).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Seconds QUIC still gets to answer once HTTPS was refused (mftq://), before
    /// the server counts as down; raise it for a QUIC-only server far away.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub probe: f64,
}

/// `mftq send`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq send report.pdf --to mftq://files.example:4433 --server-key HEX --key me.key
  mftq send big.iso --to quic://10.0.0.5:4433 --server-key HEX --key me.key --streams 32
  mftq send -r photos/ --to mftq://files.example:4433 --server-key HEX --key me.key
  mftq send a.csv b.csv notes/ -r --batch-id monday --to mftq://files.example:4433 ...
  tar c dir | mftq send - --batch-id dir.tar --to https://host:4433 --server-key HEX --key me.key

Several files, or a directory with -r, go as one tree batch: the files' bytes, then
a manifest of every entry's relative path, kind, size, mode, mtime and SHA-256
(symbolic links are kept as links; ones leading out of what is sent, and sockets
or devices, are left out with a warning). `mftq get` restores the tree.

The default metadata is JSON with the file's name, size, mtime and SHA-256; the
checksum is computed while the segments are sealed, so the file is read once, and
a file whose size, mtime or inode changes during the send is refused before the
batch completes (exit 5). For stdin there is no size or checksum. Running the same
command again after an interruption resumes the batch: the server keeps the segments
it stored and only the rest are sent; if the file changed since, the interrupted
transfer is aborted and the file sent afresh. Sending a batch id this key holds
already succeeds without sending if the content is the same (same size and SHA-256),
and is refused otherwise unless --replace.

--compress auto (the default) compresses with zstd what compresses, if the server
agrees: text, logs, CSV and the like travel and are stored smaller, while media,
archives and encrypted input cost little CPU and go as they are. A segment that
would not shrink is always sent as it is. zstd tries every segment; off sends all
as they are (compressed lengths tell an observer how compressible the data is).

--congestion picks the QUIC controller of this side, which is the one that
matters on a push (default model); --rate sizes windows for the path's speed.")]
pub struct SendArgs {
    /// The file to send, or - for stdin; several files or directories (with -r)
    /// go as one tree batch.
    #[arg(value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<String>,
    /// Send directories with everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: Option<String>,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The batch id (default: the file's name).
    #[arg(long, value_name = "ID")]
    pub batch_id: Option<String>,
    /// On Ctrl-C, abort the transfer (the server deletes what it received)
    /// instead of keeping it for a resume.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    /// Replace a batch of this id that this key holds: the old one stays
    /// retrievable until the new one is complete, then is swapped out at once.
    #[arg(long)]
    pub replace: bool,
    /// Compress segments with zstd before sealing them: auto (what compresses),
    /// zstd (try every segment) or off.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// Write the server's signed receipt to FILE (JSON), to check later with
    /// `mftq verify-receipt`.
    #[arg(long, value_name = "FILE")]
    pub receipt: Option<PathBuf>,
    /// Metadata as JSON text, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub metadata: Option<String>,
    /// Segment flows in parallel.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub streams: usize,
    /// Plaintext bytes per segment (the server may lower it).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub chunk: u64,
    /// Transport tuning.
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// `mftq get`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq get report.pdf --from mftq://files.example:4433 --server-key HEX --key me.key
  mftq get report.pdf --from mftq://files.example:4433 ... -o archive/ --force
  mftq get dir.tar --from https://host:4433 --server-key HEX --key me.key -o - | tar x
  mftq get monday --from mftq://files.example:4433 ... -o restored/
  mftq get monday --from mftq://files.example:4433 ... --list
  mftq get monday --from mftq://files.example:4433 ... --file reports/q3.csv -o -
  mftq get big.iso --from mftq://files.example:4433 ... --range 0-1048575 -o head.bin

A file is written to a part file beside the output (.NAME.mftq-part) and renamed into
place only once every segment and its SHA-256 verified, with its mode and mtime
restored. A get that is cut off keeps the verified part: run the same command again
and it fetches only the rest. With -o - the data goes to stdout as it verifies (a
failure then ends it early with an error).

A tree batch (sent as several files, or a directory with -r) is restored into -o DIR
(created if missing) or the current directory: its manifest is checked first, and one
with an absolute path, a .., a duplicate, a control character or a link leading out of
the target is refused before anything is written. Each file's SHA-256 is checked, and
entries appear only once all of them verified. An existing entry is not replaced
without --force. The files are staged in DIR/.mftq-tree-<id>.part, synced every 32
MiB: a tree get that is cut off keeps them, and the same command run again checks
them and fetches only the rest.")]
pub struct GetArgs {
    /// The batch id.
    #[arg(value_name = "BATCH_ID")]
    pub batch_id: String,
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: Option<String>,
    /// The sender whose batch it is (64 hex digits). Batch ids are per sender;
    /// without this the server picks the one sender's batch of that id this key
    /// may retrieve, and refuses if there are several.
    #[arg(long, value_name = "KEY")]
    pub sender: Option<String>,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Where to write the batch: a file, a directory (`DIR/`: the batch's file name
    /// inside it), or - for stdout. Default: the file name its metadata gives,
    /// made safe, in the current directory.
    #[arg(short, long, value_name = "FILE|DIR/|-")]
    pub output: Option<String>,
    /// Replace an existing file, or a tree's existing entries (only once the
    /// batch verified).
    #[arg(long)]
    pub force: bool,
    /// Of a tree batch, fetch only this file (its path in the tree, as `mftq get`
    /// lists it with --list): -o names the file or the directory it goes in.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["list", "range"])]
    pub file: Option<String>,
    /// Of a tree batch, print the manifest (path, kind, size, mode, mtime) and
    /// fetch nothing else.
    #[arg(long, conflicts_with = "range")]
    pub list: bool,
    /// Refuse a tree whose names collide when case is ignored (for
    /// case-insensitive file systems).
    #[arg(long)]
    pub case_insensitive: bool,
    /// Only these bytes of the batch: START-END (END included, as in HTTP) or
    /// START- (to its end). Each segment is verified; the batch's SHA-256 is not
    /// checked (it covers the whole), nor its mode and mtime restored.
    #[arg(long, value_name = "START-END")]
    pub range: Option<String>,
    /// Transport tuning (on a pull the server sends, so its controller matters most).
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// `mftq transfers`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq transfers --to mftq://files.example:4433 --server-key HEX --key me.key")]
pub struct TransfersArgs {
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: Option<String>,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `mftq abort`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq abort big.iso --to mftq://files.example:4433 --server-key HEX --key me.key")]
pub struct AbortArgs {
    /// The batch id of the open transfer.
    #[arg(value_name = "BATCH_ID")]
    pub batch_id: String,
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: Option<String>,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `mftq rm`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq rm report.pdf --to mftq://files.example:4433 --server-key HEX --key me.key

A key deletes its own batches (when the server lets it send); another sender's batch
only where the server's policy says so (--sender). Retrievals already under way
finish; the storage is freed when they have.")]
pub struct RmArgs {
    /// The batch id.
    #[arg(value_name = "BATCH_ID")]
    pub batch_id: String,
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: Option<String>,
    /// The sender whose batch it is (64 hex digits; default: this key).
    #[arg(long, value_name = "KEY")]
    pub sender: Option<String>,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `mftq verify-receipt`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq send report.pdf --to mftq://files.example:4433 --server-key HEX --key me.key --receipt report.receipt
  mftq verify-receipt report.receipt --server-key HEX --file report.pdf

Offline: no server is contacted. Exit 0 if the server's signature verifies and every
field says what the signed bytes say, 3 if another server signed it, 5 if it was
tampered with or --file is not the content it receipts.")]
pub struct VerifyReceiptArgs {
    /// The receipt file.
    #[arg(value_name = "FILE")]
    pub receipt: PathBuf,
    /// The server's public key (64 hex digits): the signer the receipt must name.
    #[arg(long, value_name = "HEX")]
    pub server_key: String,
    /// Also check that this file is the content the receipt receipts (its SHA-256).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mftq list`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq list --from mftq://files.example:4433 --server-key HEX --key me.key
  mftq list --from quic://127.0.0.1:4433 --server-key HEX --key me.key --json")]
pub struct ListArgs {
    /// The server: mftq://host:port, quic://host:port, https://host:port, or a
    /// remote named in ~/.config/mftq/config.toml. Default: $MFTQ_ENDPOINT.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: Option<String>,
    /// Only this sender's batches (64 hex digits).
    #[arg(long, value_name = "KEY", conflicts_with = "open")]
    pub sender: Option<String>,
    /// This key's open (interrupted or running) transfers instead, as
    /// `mftq transfers` shows them: held bytes, segments, age and deadline.
    #[arg(long)]
    pub open: bool,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `mftq demo`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq demo
  mftq demo --size 1GiB --flows 32
  mftq demo --size 8MiB --json

A server with a fresh key and an embedded store in a temporary directory listens on
QUIC and HTTPS; a client with a fresh key pushes a generated batch over each, pulls
both back, checks every byte and the metadata, and prints the throughput of each.")]
pub struct DemoArgs {
    /// Batch size, e.g. 64MiB, 1GiB, 1000000.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    pub size: u64,
    /// Concurrent segment flows over the one connection.
    #[arg(long, alias = "streams", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub flows: u16,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A transport `mftq bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum BenchTransport {
    /// mft (handshake, sealed and signed segments, completion, receipt) over QUIC.
    Quic,
    /// mft over HTTPS (HTTP/2 over TLS over TCP).
    Https,
    /// Bytes over QUIC flows, no mft layer: the ceiling mft over QUIC is compared to.
    RawQuic,
    /// Bytes over HTTPS flows, no mft layer.
    RawHttps,
}

impl BenchTransport {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchTransport::Quic => "quic",
            BenchTransport::Https => "https",
            BenchTransport::RawQuic => "raw-quic",
            BenchTransport::RawHttps => "raw-https",
        }
    }

    /// The flow protocol underneath.
    pub fn protocol(self) -> &'static str {
        match self {
            BenchTransport::Quic | BenchTransport::RawQuic => "quic",
            BenchTransport::Https | BenchTransport::RawHttps => "https",
        }
    }

    /// Whether the mft layer runs on top.
    pub fn is_raw(self) -> bool {
        matches!(self, BenchTransport::RawQuic | BenchTransport::RawHttps)
    }

    /// The raw transport an mft transport is compared with.
    pub fn raw(self) -> BenchTransport {
        match self {
            BenchTransport::Quic | BenchTransport::RawQuic => BenchTransport::RawQuic,
            BenchTransport::Https | BenchTransport::RawHttps => BenchTransport::RawHttps,
        }
    }
}

/// `mftq bench`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq bench                                          # loopback: quic, https and their raw modes
  mftq bench --size 1GiB --flows 1,8,32 --chunk 256KiB,1MiB,4MiB
  mftq bench --transports quic,raw-quic --rtt 50ms --loss 1% --rate 200Mbit --congestion model,bbr,cubic
  mftq bench --transports quic,https --rtt 100ms --rate 1Gbit --loss 0.1% --tcp-congestion cubic,bbr
  mftq bench --transports quic,https --batches 5000 --batch-size 4KiB   # many small batches

Every run is a separate server process and client process (in two network
namespaces joined by the user-space link emulator when --rtt, --loss, --rate or
--jitter is given; that needs root), moving one whole batch: connection, handshake,
every segment stored, completion and receipt. The raw modes move the same bytes
over the same flows with no mft layer, so the mft overhead is a ratio within one run.

The table gives MB/s (10^6 bytes per second of payload), the ratio to the link rate
(emulated) or to the raw mode of the same transport (loopback), and the CPU seconds
the sender and the receiver spent per GiB. The results are also written as
PREFIX.json and an SVG chart PREFIX.svg (--output PREFIX, default mftq-bench).")]
pub struct BenchArgs {
    /// Transports to measure: quic, https, raw-quic, raw-https (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "quic,https,raw-quic,raw-https"
    )]
    pub transports: Vec<BenchTransport>,
    /// Bytes per run.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    pub size: u64,
    /// Concurrent flows over the one connection (comma-separated values).
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_value = "8",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub flows: Vec<u16>,
    /// Segment (mft) or write (raw) size (comma-separated values).
    #[arg(long, value_name = "SIZE,…", value_delimiter = ',', value_parser = parse_size, default_value = "1MiB")]
    pub chunk: Vec<u64>,
    /// QUIC congestion controllers (comma-separated; default: the built-in default).
    #[arg(long, value_name = "NAME,…", value_delimiter = ',', value_parser = parse_congestion)]
    pub congestion: Vec<flow::CongestionControl>,
    /// TCP congestion controllers for HTTPS on an emulated link, set inside its
    /// namespaces (comma-separated, e.g. cubic,bbr; default: the kernel's default).
    #[arg(long, value_name = "NAME,…", value_delimiter = ',')]
    pub tcp_congestion: Vec<String>,
    /// Emulated round-trip time, e.g. 50ms (half each way).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub rtt: Option<std::time::Duration>,
    /// Emulated random loss per packet, each way, e.g. 1% or 0.01.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub loss: Option<f64>,
    /// Emulated bottleneck rate, each way, e.g. 200Mbit or 1Gbit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Emulated jitter: a random extra delay up to this, each way (no reordering).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jitter: Option<std::time::Duration>,
    /// The emulated bottleneck's queue, as time at the rate.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "100ms")]
    pub queue: std::time::Duration,
    /// Instead of one large batch, send this many small batches per run and report
    /// batches per second with p50 and p99 latency (mft transports only).
    #[arg(long, value_name = "N")]
    pub batches: Option<u32>,
    /// Size of each small batch.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4KiB")]
    pub batch_size: u64,
    /// Small batches in progress at once over the one connection.
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Runs of each cell of the matrix; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
    /// The sender's compression, as `send --compress` (the benchmark's data does
    /// not compress, so this measures what trying costs).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// Where the server's store lives (default: a fresh directory in /dev/shm, or
    /// the temporary directory).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Prefix of the result files: PREFIX.json and PREFIX.svg.
    #[arg(long, value_name = "PREFIX", default_value = "mftq-bench")]
    pub output: PathBuf,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Parses a congestion controller's name.
pub fn parse_congestion(text: &str) -> Result<flow::CongestionControl, String> {
    text.parse()
        .map_err(|e: flow::Error| e.reason().to_string())
}

/// Parses a rate in bits per second: `200Mbit`, `1Gbit`, `500kbit`, `1000000`
/// (also `Mbps`, `Gbps`, `kbps`; bits, powers of ten).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bad = || format!("rate {text:?}: expected a number and a unit such as 200Mbit or 1Gbit");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        _ => return Err(bad()),
    };
    let rate = number * multiplier;
    if !(rate.is_finite() && (1e3..=1e12).contains(&rate)) {
        return Err(format!("rate {text:?}: expected 1kbit to 1000Gbit"));
    }
    Ok(rate as u64)
}

/// Parses a duration: `50ms`, `1.5s`, `250us`, `0`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("duration {text:?}: expected a number and a unit: us, ms or s");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "" if number == 0.0 => 0.0,
        _ => return Err(bad()),
    };
    if !(seconds.is_finite() && (0.0..=3600.0).contains(&seconds)) {
        return Err(format!("duration {text:?}: expected 0 to 3600 s"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// Parses a fraction: `1%`, `0.5%`, `0.01`.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?}: expected a fraction such as 1% or 0.01");
    let value = match text.trim().strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
        None => text.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?}: expected 0% to 100%"));
    }
    Ok(value)
}

/// Parses `123`, `64KiB`, `1MiB`, `2GiB` (also `KB`, `MB`, `GB` as powers of ten).
pub fn parse_size(text: &str) -> Result<u64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
    fn rates_durations_and_fractions_parse() {
        assert_eq!(parse_rate("200Mbit"), Ok(200_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1.5gbps"), Ok(1_500_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        for bad in ["", "fast", "10MiB", "0Mbit", "-1Mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("50ms"),
            Ok(std::time::Duration::from_millis(50))
        );
        assert_eq!(
            parse_duration("1.5s"),
            Ok(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("250us"),
            Ok(std::time::Duration::from_micros(250))
        );
        assert_eq!(parse_duration("0"), Ok(std::time::Duration::ZERO));
        for bad in ["", "50", "5 min", "-1ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_fraction("1%"), Ok(0.01));
        assert_eq!(parse_fraction("0.05"), Ok(0.05));
        for bad in ["", "101%", "-1%", "lots"] {
            assert!(parse_fraction(bad).is_err(), "{bad:?}");
        }
        assert!(parse_congestion("MODEL").is_ok());
        let unknown = parse_congestion("reno2").unwrap_err();
        assert!(unknown.contains("cubic"), "{unknown}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_defaults_and_flags() {
        let cli = Cli::try_parse_from(["mftq", "demo"]).expect("parses");
        let Command::Demo(d) = cli.command else {
            panic!("not demo")
        };
        assert_eq!((d.size, d.flows), (256 << 20, 8));
        let cli = Cli::try_parse_from(["mftq", "demo", "--size", "8MiB", "--flows", "3"])
            .expect("parses");
        let Command::Demo(d) = cli.command else {
            panic!("not demo")
        };
        assert_eq!((d.size, d.flows), (8 << 20, 3));
        assert!(Cli::try_parse_from(["mftq", "demo", "--flows", "0"]).is_err());
        assert!(Cli::try_parse_from(["mftq", "demo", "--size", "lots"]).is_err());
    }
}

/// `send --compress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// What compresses, if the server agrees.
    Auto,
    /// Try every segment.
    Zstd,
    /// Send every segment as it is.
    Off,
}

impl From<CompressArg> for mft::Compress {
    fn from(arg: CompressArg) -> Self {
        match arg {
            CompressArg::Auto => mft::Compress::Auto,
            CompressArg::Zstd => mft::Compress::Zstd,
            CompressArg::Off => mft::Compress::Off,
        }
    }
}
