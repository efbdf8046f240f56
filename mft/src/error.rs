//! The transfer protocol's error, with a stable kind for callers and exit codes.

use std::time::Duration;

use crate::store::StoreError;
use crate::wire::{DecodeError, EncodeError, RefuseCode};

/// What class of failure, for code that reacts (retry, exit code, message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value or argument is invalid.
    BadArg,
    /// The peer does not trust us or we do not trust it (keys, signatures, vouchers).
    Auth,
    /// The network failed or the peer went away.
    Network,
    /// The peer refused the request (see [`Error::Refused`] for the code).
    Refused,
    /// Data failed verification: never returned as if it were good.
    Integrity,
    /// The peer broke the protocol.
    Protocol,
    /// Local storage or I/O failed.
    Io,
    /// The caller cancelled the work.
    Cancelled,
}

/// Errors of senders, retrievers and the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is invalid.
    #[error("invalid {field}: {problem}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The flow layer failed.
    #[error(transparent)]
    Flow(#[from] flow::Error),
    /// The peer refused, with a code, its message and an optional delay to retry after.
    #[error("refused by server ({code}): {message}")]
    Refused {
        /// Why.
        code: RefuseCode,
        /// The server's words.
        message: String,
        /// When a retry may succeed.
        retry_after: Option<Duration>,
    },
    /// A server signature did not verify, or the server key is not the expected one.
    #[error("server authentication failed: {0}")]
    ServerAuth(String),
    /// A message did not decode or arrived out of order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Data failed verification.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The input changed while it was being sent, so the data sent may not be what
    /// the metadata describes: the batch was not completed.
    #[error("the input changed while it was sent: {0}")]
    InputChanged(String),
    /// A resumed transfer held segments of other content than the input's (the
    /// input changed since the send was interrupted). That transfer was aborted
    /// on the server; sending the input again, from its start, opens a fresh one.
    #[error(
        "the input is not what the interrupted transfer was sending: {0}; \
         that transfer was aborted, so sending again starts afresh"
    )]
    ContentChanged(String),
    /// Reading the source or writing the output failed.
    #[error("i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The owner cancelled the send or the retrieval
    /// ([`Sender::cancel`](crate::Sender::cancel),
    /// [`Retriever::cancel`](crate::Retriever::cancel)). A cancelled send's
    /// transfer was aborted on the server.
    #[error("cancelled")]
    Cancelled,
    /// Server storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Retries did not help.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
}

impl Error {
    /// The stable class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::BadArg,
            Error::Flow(e) => match e.kind() {
                flow::ErrorKind::Auth | flow::ErrorKind::NotTrusted => ErrorKind::Auth,
                flow::ErrorKind::BadArg => ErrorKind::BadArg,
                _ => ErrorKind::Network,
            },
            Error::Refused { code, .. } => match code {
                RefuseCode::NotAuthorized
                | RefuseCode::IdentityMismatch
                | RefuseCode::BadSignature => ErrorKind::Auth,
                RefuseCode::BadSegment | RefuseCode::ChainMismatch => ErrorKind::Integrity,
                RefuseCode::BadRange => ErrorKind::BadArg,
                _ => ErrorKind::Refused,
            },
            Error::ServerAuth(_) => ErrorKind::Auth,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Integrity(_) | Error::InputChanged(_) | Error::ContentChanged(_) => {
                ErrorKind::Integrity
            }
            Error::Io(_) | Error::Store(_) => ErrorKind::Io,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::RetriesExhausted { last, .. } => last.kind(),
        }
    }

    /// The refusal code, when the server refused.
    pub fn refuse_code(&self) -> Option<RefuseCode> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            Error::RetriesExhausted { last, .. } => last.refuse_code(),
            _ => None,
        }
    }

    /// Whether trying again (after a delay) may succeed: the network failed, or the
    /// server asked us to come back later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Flow(e) => matches!(
                e.kind(),
                flow::ErrorKind::Network | flow::ErrorKind::Aborted | flow::ErrorKind::DialFailed
            ),
            Error::Refused { code, .. } => matches!(code, RefuseCode::Busy | RefuseCode::Internal),
            _ => false,
        }
    }

    /// Whether nothing listens at the server's address: the connection was
    /// refused (and no QUIC answer came). Not retryable on its own: see
    /// [`Error::is_retryable_after`].
    pub fn is_refused(&self) -> bool {
        match self {
            Error::Flow(e) => e.kind() == flow::ErrorKind::Refused,
            Error::RetriesExhausted { last, .. } => last.is_refused(),
            _ => false,
        }
    }

    /// Whether retrying may help an operation that has made `progress`
    /// (segments stored, bytes read): [`Error::is_retryable`], or a refused
    /// connection once the operation got somewhere, since a server that took
    /// part of it and now refuses is restarting. A refused first connection
    /// means nothing is there, and is final at once.
    pub fn is_retryable_after(&self, progress: u64) -> bool {
        self.is_retryable() || (progress > 0 && self.is_refused())
    }

    pub(crate) fn config(field: &'static str, problem: impl Into<String>) -> Self {
        Error::Config {
            field,
            problem: problem.into(),
        }
    }
}

/// A value too long (or otherwise impossible) to send is the caller's to fix.
impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::TooLong { field, len, max } => Error::Config {
                field,
                problem: format!("{len} exceeds the protocol's limit of {max}"),
            },
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
