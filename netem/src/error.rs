//! The emulator's errors.

use std::io;

/// Why the link emulator could not start or do what was asked.
///
/// The first three variants are the environment checks of [`preflight`]: each says
/// what is missing, so a bench or test can print it as is.
///
/// [`preflight`]: crate::preflight
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process is not root (effective uid 0), which creating network namespaces
    /// and TUN devices needs.
    #[error(
        "the link emulator needs root (CAP_NET_ADMIN) to create network namespaces and TUN devices; run it as root"
    )]
    NotRoot,
    /// `/dev/net/tun` is missing or cannot be opened (no `tun` module, or a container
    /// without the device).
    #[error("the link emulator needs the TUN device {path} (kernel module `tun`): {source}")]
    NoTun {
        /// The device path tried.
        path: &'static str,
        /// Why it could not be opened.
        source: io::Error,
    },
    /// The `ip` command (iproute2) is not on `PATH`.
    #[error("the link emulator needs the `ip` command (iproute2) on PATH: {0}")]
    NoIp(io::Error),
    /// An `ip` command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line that was run.
        command: String,
        /// Its standard error, or how it ended.
        message: String,
    },
    /// A configuration value is out of range (loss outside 0..=1, a zero rate, an MTU
    /// out of 68..=65535).
    #[error("invalid link configuration: {0}")]
    InvalidConfig(String),
    /// A TCP congestion control algorithm cannot be chosen.
    #[error("cannot use TCP congestion control `{name}`: {reason}")]
    CongestionControl {
        /// The algorithm asked for.
        name: String,
        /// Why not, and what to do about it.
        reason: String,
    },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the emulator was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A relay thread has stopped (it met an I/O error on a TUN device).
    #[error("the link emulator's relay thread for {0} has stopped")]
    RelayStopped(&'static str),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
