//! The `mftq` command: keys, a server, and the client commands that push batches to
//! it and pull them back, over QUIC with an HTTPS fallback.
//!
//! This file parses the command line, starts logging and the async runtime,
//! dispatches to one module per subcommand, and turns the outcome into an exit code
//! (see [`error::Exit`]): 0 success, 2 usage or bad input, 3 authentication or trust
//! refused, 4 network unreachable, 5 integrity failure, 1 anything else.

mod abort;
mod access;
mod args;
mod bench;
mod client;
mod config;
mod config_file;
mod demo;
mod error;
mod get;
mod help_files;
mod keygen;
mod list;
mod output;
mod pattern;
mod profile;
mod receipt;
mod send;
mod serve;
mod tuning;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, LogFormat};
use crate::error::{CliError, Exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return error::clap_exit(e),
    };
    let verbose = cli.verbose > 0;
    let json = cli.command.wants_json();
    output::configure(cli.quiet, cli.no_progress);
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            e.print_json();
            ExitCode::from(e.exit as u8)
        }
        Err(e) => {
            e.print(verbose);
            ExitCode::from(e.exit as u8)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: `info` for `serve`, `warn`
/// otherwise), as text or JSON lines.
fn init_logging(cli: &Cli) {
    let default = match (&cli.command, cli.verbose) {
        (_, 2..) => "debug",
        (Command::Serve(_), _) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    // `keygen` needs no runtime, and `bench` runs its sides as processes of their own.
    let command = match cli.command {
        Command::Keygen(args) => return keygen::run(args),
        Command::Pubkey(args) => return keygen::pubkey(args),
        Command::Completions(args) => return help_files::completions(args.shell),
        Command::Man => return help_files::man(),
        Command::Bench(args) => return bench::run(args),
        Command::VerifyReceipt(args) => return receipt::verify(args),
        other => other,
    };
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(Exit::Other, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        match command {
            Command::Keygen(_)
            | Command::Pubkey(_)
            | Command::Completions(_)
            | Command::Man
            | Command::Bench(_)
            | Command::VerifyReceipt(_) => Ok(()),
            Command::BenchPeer(args) => bench::peer::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Send(args) => send::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::List(args) => list::run(args).await,
            Command::Transfers(args) => abort::list(args).await,
            Command::Abort(args) => abort::run(args).await,
            Command::Rm(args) => abort::remove(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    })
}
