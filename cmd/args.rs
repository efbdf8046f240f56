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
    /// Print the cause chain of an error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Log lines (stderr) as text or JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
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
    /// Run a server: listen, store batches, serve them back.
    Serve(ServeArgs),
    /// Push a file (or stdin) to a server as a batch.
    Send(SendArgs),
    /// Pull a batch back into a file (or stdout), verified.
    Get(GetArgs),
    /// List the batches this key may retrieve.
    List(ListArgs),
    /// Run everything on loopback over QUIC and HTTPS and compare them.
    Demo(DemoArgs),
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
    /// Where to write the private key.
    #[arg(long, short, value_name = "FILE", default_value = "mftq.key")]
    pub out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
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
max_transfers_per_key = 16, grace = 5. Relative paths are relative to the config
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
    /// Seconds open flows get to finish after SIGINT/SIGTERM (default 5).
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u64>,
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
    /// The server's public key (64 hex digits, as `mftq keygen` or `mftq serve` print it).
    #[arg(long, value_name = "PUB")]
    pub server_key: String,
    /// Our private key file (from `mftq keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Transport: auto (QUIC, HTTPS fallback), quic or https.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    pub transport: Transport,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds each dial may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub dial_timeout: f64,
    /// Network failures to retry (with backoff) before giving up.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
}

/// `mftq send`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq send report.pdf --to mftq://files.example:4433 --server-key HEX --key me.key
  mftq send big.iso --to quic://10.0.0.5:4433 --server-key HEX --key me.key --streams 32
  tar c dir | mftq send - --batch-id dir.tar --to https://host:4433 --server-key HEX --key me.key

The default metadata is JSON with the file's name, size, mtime and SHA-256. The
sender takes the metadata when the transfer starts, so the file is hashed in a first
pass before it is sent (for stdin there is no size or checksum). Running the same
command again after an interruption resumes the batch: the server keeps the segments
it stored and only the rest are sent.")]
pub struct SendArgs {
    /// The file to send, or - for stdin.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// The server's endpoint: mftq://host:port, quic://host:port or https://host:port.
    #[arg(long, value_name = "ENDPOINT")]
    pub to: String,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The batch id (default: the file's name).
    #[arg(long, value_name = "ID")]
    pub batch_id: Option<String>,
    /// Metadata as JSON text, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub metadata: Option<String>,
    /// Segment flows in parallel.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub streams: usize,
    /// Plaintext bytes per segment (the server may lower it).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub chunk: u64,
}

/// `mftq get`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq get report.pdf --from mftq://files.example:4433 --server-key HEX --key me.key -o report.pdf
  mftq get dir.tar --from https://host:4433 --server-key HEX --key me.key -o - | tar x

The batch is written to a temporary file beside the output and renamed only once
every segment and the whole batch verified; on any failure nothing is left behind.
With -o - the data goes to stdout as it verifies (a failure then ends it early with
an error).")]
pub struct GetArgs {
    /// The batch id.
    #[arg(value_name = "BATCH_ID")]
    pub batch_id: String,
    /// The server's endpoint: mftq://host:port, quic://host:port or https://host:port.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: String,
    /// The client settings.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Where to write the batch, or - for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: String,
}

/// `mftq list`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mftq list --from mftq://files.example:4433 --server-key HEX --key me.key
  mftq list --from quic://127.0.0.1:4433 --server-key HEX --key me.key --json")]
pub struct ListArgs {
    /// The server's endpoint: mftq://host:port, quic://host:port or https://host:port.
    #[arg(long, value_name = "ENDPOINT")]
    pub from: String,
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
