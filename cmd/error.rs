//! Errors of the command line and the exit codes they map to.

use std::fmt;
use std::process::ExitCode;

/// The process exit code: what class of failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Anything not classed below.
    Other = 1,
    /// A bad flag, file or value on the command line.
    Usage = 2,
    /// Authentication or trust refused (our key, the server's key, an allow-list).
    Auth = 3,
    /// The network or the server was unreachable.
    Network = 4,
    /// Data failed verification.
    Integrity = 5,
    /// Interrupted (SIGINT), as shells report it: 128 + 2.
    Interrupted = 130,
}

impl Exit {
    /// One word for the class of failure, as `--json` errors name it.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Other => "other",
            Exit::Usage => "usage",
            Exit::Auth => "auth",
            Exit::Network => "network",
            Exit::Integrity => "integrity",
            Exit::Interrupted => "interrupted",
        }
    }
}

/// A failure to report: one line of message, the exit code, and the cause chain
/// (printed with `-v`).
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub exit: Exit,
    /// The one-line message.
    pub message: String,
    /// The underlying error, if any.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CliError {
    /// An error with a message and no underlying cause.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            source: None,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// A failure of anything else (exit 1).
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Other, message)
    }

    /// A transfer-protocol failure while `doing` something, classed by its kind.
    pub fn mft(doing: &str, e: mft::Error) -> Self {
        use mft::ErrorKind as K;
        let exit = match e.kind() {
            K::BadArg => Exit::Usage,
            K::Auth => Exit::Auth,
            K::Network => Exit::Network,
            K::Integrity => Exit::Integrity,
            _ => Exit::Other,
        };
        let mut message = format!("{doing}: {e}");
        if let mft::Error::Flow(f) = &e
            && matches!(f.reason(), flow::Reason::PinMismatch { .. })
        {
            message.push_str(" (the server's key is not --server-key)");
        }
        if e.refuse_code() == Some(mft::wire::RefuseCode::NotAuthorized) {
            message.push_str(" (the server does not authorise this key; add its public key to the server's list)");
        }
        CliError {
            exit,
            message,
            source: Some(Box::new(e)),
        }
    }

    /// A flow-layer failure while `doing` something, classed by its kind.
    pub fn flow(doing: &str, e: flow::Error) -> Self {
        CliError {
            exit: flow_exit(e.kind()),
            message: format!("{doing}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    /// An I/O failure on `what` (a file, a directory), classed as usage when the file
    /// is missing or unreadable (the command line named it) or another mftq holds
    /// it (`WouldBlock`), other otherwise.
    pub fn io(what: impl fmt::Display, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let exit = match e.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::IsADirectory
            | K::AlreadyExists
            | K::WouldBlock => Exit::Usage,
            K::InvalidData => Exit::Integrity,
            _ => Exit::Other,
        };
        CliError {
            exit,
            message: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        }
    }

    /// A tree that could not be sent or restored: a hostile manifest, a file that
    /// fails its SHA-256 or changed while it was sent is an integrity failure;
    /// something in the way or an unusable input is bad input.
    pub fn tree(doing: &str, e: mft::tree::TreeError) -> Self {
        use mft::tree::TreeError as T;
        let exit = match e {
            T::Transfer(inner) => return Self::mft(doing, inner),
            T::Io { path, source } => return Self::io(path.display(), source),
            T::Hostile(_) | T::Integrity(_) | T::Changed(_) => Exit::Integrity,
            T::Exists(_) | T::InTheWay { .. } | T::BadInput { .. } | T::Invalid(_) => Exit::Usage,
            _ => Exit::Other,
        };
        CliError {
            exit,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// Prints `mftq: <message>`, and the cause chain when `verbose`.
    /// The error as the JSON document `--json` asks for, on stdout:
    /// `{"schema": "mftq-error/1", "error": {"kind", "message", "exit_code"}}`.
    pub fn print_json(&self) {
        println!(
            "{}",
            serde_json::json!({
                "schema": "mftq-error/1",
                "error": {
                    "kind": self.exit.kind(),
                    "message": self.message,
                    "exit_code": self.exit as u8,
                }
            })
        );
    }

    pub fn print(&self, verbose: bool) {
        eprintln!("mftq: {}", self.message);
        if verbose {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = match &self.source {
                Some(s) => s.source(),
                None => None,
            };
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
        }
    }
}

/// The exit code for a flow-layer error kind.
pub fn flow_exit(kind: flow::ErrorKind) -> Exit {
    use flow::ErrorKind as K;
    match kind {
        K::Auth | K::NotTrusted => Exit::Auth,
        K::Network | K::DialFailed | K::Refused | K::NotMftq | K::ResolveFailed => Exit::Network,
        K::BadArg => Exit::Usage,
        _ => Exit::Other,
    }
}

/// Reports a clap error: help and version on stdout with exit 0, usage errors as
/// `mftq: …` with exit 2.
pub fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(Exit::Usage as u8)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            if std::env::args().any(|a| a == "--json") {
                let first = text.lines().next().unwrap_or_default();
                CliError::usage(first).print_json();
            } else {
                eprint!("mftq: {text}");
            }
            ExitCode::from(Exit::Usage as u8)
        }
    }
}
