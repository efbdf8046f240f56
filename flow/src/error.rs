//! The one error type of the crate: a stable [`ErrorKind`] for callers to branch on,
//! a detailed [`Reason`] for people to read, the endpoint involved and the source.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::PeerKey;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable classes of failure. Code that reacts to errors matches on these, never
/// on message text; the set follows vanadium's flow errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer could not prove its identity (bad TLS signature, not an Ed25519 key,
    /// no certificate).
    Auth,
    /// The peer proved its identity, but the key is not trusted (not allowed by the
    /// authorizer, or not the pinned key).
    NotTrusted,
    /// An established connection or flow failed on the network.
    Network,
    /// A connection could not be set up (timeout, unreachable).
    DialFailed,
    /// Something answered, but not an mftq peer: it does not speak TLS 1.3,
    /// offers none of our application protocols, or is another service
    /// altogether. Retrying will not help: the endpoint is wrong.
    NotMftq,
    /// Nothing listens at the destination: it refused the connection at once
    /// (and, dialing by preference, no UDP candidate answered either). Retrying
    /// soon will not help, unless a server is starting there.
    Refused,
    /// An address could not be resolved.
    ResolveFailed,
    /// A proxy between us and the peer failed.
    Proxy,
    /// The caller passed something malformed (endpoint, key file, size, name).
    BadArg,
    /// The operation does not fit the current state (manager closed, not listening,
    /// nothing cached).
    BadState,
    /// The flow or connection was closed or cancelled, locally or by the peer.
    Aborted,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Auth => "authentication failed",
            ErrorKind::NotTrusted => "peer not trusted",
            ErrorKind::Network => "network error",
            ErrorKind::DialFailed => "dial failed",
            ErrorKind::Refused => "connection refused",
            ErrorKind::NotMftq => "not an mftq peer",
            ErrorKind::ResolveFailed => "resolve failed",
            ErrorKind::Proxy => "proxy error",
            ErrorKind::BadArg => "bad argument",
            ErrorKind::BadState => "bad state",
            ErrorKind::Aborted => "aborted",
        })
    }
}

/// What exactly went wrong. Each variant maps to one [`ErrorKind`]; the mapping is
/// computed in [`Reason::kind`], never chosen by whoever wraps the error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// An endpoint string did not parse.
    MalformedEndpoint {
        /// The text that was given.
        input: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// No protocol of that name (or alias) is registered.
    UnknownProtocol(String),
    /// A key or key file could not be read or parsed.
    MalformedKey(String),
    /// A configuration value is out of range.
    BadConfig(String),
    /// The peer presented no certificate, or one that does not carry an Ed25519 key.
    NoPeerKey(String),
    /// The peer's TLS handshake signature did not verify.
    BadSignature,
    /// The peer's key is not allowed by the authorizer.
    NotAuthorized(PeerKey),
    /// The dialer pinned a key and the peer presented another.
    PinMismatch {
        /// The key the dialer asked for.
        expected: PeerKey,
        /// The key the peer proved.
        actual: PeerKey,
    },
    /// The peer refused our identity during the handshake.
    RefusedByPeer,
    /// The operation did not finish in time.
    Timeout(Duration),
    /// A flow's read or write made no progress for its idle timeout.
    Stalled(Duration),
    /// Connecting failed before a connection existed.
    ConnectFailed(String),
    /// The destination refused the connection: nothing listens there.
    Refused(String),
    /// The destination answered in something other than our protocol.
    NotMftq(String),
    /// Name resolution failed or found no address.
    Resolve(String),
    /// The connection failed or was lost.
    ConnectionLost(String),
    /// The connection was closed by this side.
    ClosedLocally(String),
    /// The peer closed the connection or the flow.
    ClosedByPeer(String),
    /// An I/O error on a flow.
    Io(String),
    /// A message frame was longer than the reader allows.
    MessageTooLarge {
        /// The length announced by the peer (or asked for by the writer).
        len: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The manager has been closed.
    ManagerClosed,
    /// The manager is not listening (or has stopped).
    NotListening,
    /// `dial_cached` found no usable cached connection.
    NotCached,
    /// The peer is over a limit and asks us to retry after this delay.
    Busy(Duration),
    /// The peer spoke an incompatible version of the flow layer.
    IncompatibleVersion(String),
    /// A failure reported by a user-registered protocol, with the kind it chose.
    Protocol(ErrorKind, String),
}

impl Reason {
    /// The stable kind of this reason.
    pub fn kind(&self) -> ErrorKind {
        use Reason::*;
        match self {
            MalformedEndpoint { .. } | UnknownProtocol(_) | MalformedKey(_) | BadConfig(_) => {
                ErrorKind::BadArg
            }
            NoPeerKey(_) | BadSignature | IncompatibleVersion(_) => ErrorKind::Auth,
            NotAuthorized(_) | PinMismatch { .. } | RefusedByPeer => ErrorKind::NotTrusted,
            Timeout(_) | ConnectFailed(_) => ErrorKind::DialFailed,
            Refused(_) => ErrorKind::Refused,
            NotMftq(_) => ErrorKind::NotMftq,
            Resolve(_) => ErrorKind::ResolveFailed,
            ConnectionLost(_) | Io(_) | MessageTooLarge { .. } | Busy(_) | Stalled(_) => {
                ErrorKind::Network
            }
            ClosedLocally(_) | ClosedByPeer(_) => ErrorKind::Aborted,
            ManagerClosed | NotListening | NotCached => ErrorKind::BadState,
            Protocol(kind, _) => *kind,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Reason::*;
        match self {
            MalformedEndpoint { input, why } => write!(f, "malformed endpoint {input:?}: {why}"),
            UnknownProtocol(p) => write!(f, "no protocol named {p:?} is registered"),
            MalformedKey(why) => write!(f, "malformed key: {why}"),
            BadConfig(why) => write!(f, "bad configuration: {why}"),
            NoPeerKey(why) => write!(f, "peer presented no usable Ed25519 key: {why}"),
            BadSignature => f.write_str("peer's handshake signature did not verify"),
            NotAuthorized(key) => write!(f, "peer key {key} is not authorized"),
            PinMismatch { expected, actual } => {
                write!(f, "expected peer key {expected}, peer proved {actual}")
            }
            RefusedByPeer => f.write_str("the peer does not trust our key"),
            Timeout(d) => write!(f, "timed out after {d:?}"),
            Stalled(d) => write!(f, "the flow made no progress for {d:?}"),
            ConnectFailed(why) => write!(f, "could not connect: {why}"),
            Refused(why) => write!(f, "nothing is listening: {why}"),
            NotMftq(why) => write!(f, "not an mftq server: {why}"),
            Resolve(why) => write!(f, "could not resolve: {why}"),
            ConnectionLost(why) => write!(f, "connection lost: {why}"),
            ClosedLocally(why) => write!(f, "closed locally: {why}"),
            ClosedByPeer(why) => write!(f, "closed by peer: {why}"),
            Io(why) => write!(f, "i/o error: {why}"),
            MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            ManagerClosed => f.write_str("the manager is closed"),
            NotListening => f.write_str("not listening"),
            NotCached => f.write_str("no cached connection to that endpoint"),
            IncompatibleVersion(v) => write!(f, "incompatible flow version: {v}"),
            Busy(d) => write!(f, "the peer is busy; retry after {d:?}"),
            Protocol(_, why) => f.write_str(why),
        }
    }
}

/// The error of every fallible operation in this crate.
///
/// Cheap to clone (the source is shared), so one failed dial can be reported to every
/// caller that waited on it.
#[derive(Clone, Debug)]
pub struct Error {
    reason: Reason,
    endpoint: Option<String>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl Error {
    /// An error for `reason`, with no endpoint or source yet.
    pub fn new(reason: Reason) -> Self {
        Error {
            reason,
            endpoint: None,
            source: None,
        }
    }

    /// An error raised by a user-registered protocol: `kind` is what callers will see.
    ///
    /// ```
    /// use flow::{Error, ErrorKind};
    /// let err = Error::protocol(ErrorKind::DialFailed, "serial line busy");
    /// assert_eq!(err.kind(), ErrorKind::DialFailed);
    /// ```
    pub fn protocol(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::new(Reason::Protocol(kind, message.into()))
    }

    /// Attaches the endpoint the operation was about.
    pub fn with_endpoint(mut self, endpoint: impl fmt::Display) -> Self {
        self.endpoint = Some(endpoint.to_string());
        self
    }

    /// Attaches the lower-level error that caused this one.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The stable class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.reason.kind()
    }

    /// The detailed reason.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The endpoint involved, when there is one.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Converts an I/O error from a flow, recovering the flow error carried inside it
    /// when there is one (flows report their errors through `io::Error`).
    pub fn from_io(err: std::io::Error) -> Self {
        if let Some(inner) = err.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return inner.clone();
        }
        let reason = match err.kind() {
            std::io::ErrorKind::TimedOut => Reason::ConnectionLost(err.to_string()),
            _ => Reason::Io(err.to_string()),
        };
        Error::new(reason).with_source(err)
    }

    /// Wraps this error into an `io::Error` so `AsyncRead`/`AsyncWrite` can return it;
    /// [`Error::from_io`] recovers it.
    pub fn into_io(self) -> std::io::Error {
        let kind = match self.kind() {
            ErrorKind::Aborted => std::io::ErrorKind::ConnectionAborted,
            ErrorKind::BadArg => std::io::ErrorKind::InvalidInput,
            ErrorKind::DialFailed => std::io::ErrorKind::NotConnected,
            ErrorKind::Auth | ErrorKind::NotTrusted => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::BrokenPipe,
        };
        std::io::Error::new(kind, self)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::from_io(err)
    }
}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        err.into_io()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(endpoint) = &self.endpoint {
            write!(f, " ({endpoint})")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<Reason> for Error {
    fn from(reason: Reason) -> Self {
        Error::new(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_reason() {
        let err = Error::new(Reason::ClosedByPeer("bye".into())).with_endpoint("quic://x:1");
        let back = Error::from_io(err.clone().into_io());
        assert_eq!(back.reason(), err.reason());
        assert_eq!(back.endpoint(), Some("quic://x:1"));
        assert_eq!(back.kind(), ErrorKind::Aborted);
    }

    #[test]
    fn plain_io_errors_are_network_errors() {
        let err = Error::from_io(std::io::Error::other("boom"));
        assert_eq!(err.kind(), ErrorKind::Network);
    }
}
