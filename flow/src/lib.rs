//! # flow: the mftq flow manager
//!
//! A [`Manager`] listens and dials on the protocols of a [`Registry`] (QUIC built in,
//! your own registered beside it) and multiplexes many [`Flow`]s over one mutually
//! authenticated connection per peer, after vanadium's `v23/flow`.
//!
//! The model, in the order a reader meets it:
//! - Identities: an [`Identity`] is our Ed25519 key pair, and a peer *is* its
//!   [`PeerKey`]. TLS 1.3 on both sides proves each key; a [`PeerAuthorizer`] (such as
//!   [`Authorizer`]) decides trust.
//! - Addresses: an [`Endpoint`] is `protocol://address`.
//! - Transports: a [`Protocol`] dials and listens, giving [`Conn`]s and
//!   [`Listener`]s; a [`Registry`] names them, with aliases.
//! - The [`Manager`] listens, accepts, dials through a connection cache, reports its
//!   status, and closes.
//! - A [`Flow`] is `AsyncRead + AsyncWrite` plus length-prefixed messages.
//! - Every failure is an [`Error`] with a stable [`ErrorKind`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> flow::Result<()> {
//! use std::time::Duration;
//! use flow::{Authorizer, Identity, Manager, ManagerConfig, Registry};
//!
//! let server = Manager::new(Identity::generate(), Registry::default(), ManagerConfig::default())?;
//! let listening = server.listen("quic", "127.0.0.1:0").await?;
//! let client = Manager::new(Identity::generate(), Registry::default(), ManagerConfig::default())?;
//!
//! let trust_server = Authorizer::pinned(server.identity().public_key());
//! let mut to_server = client.dial(listening.endpoint(), trust_server, Duration::from_secs(5)).await?;
//! to_server.write_msg(&[b"hello"]).await?;
//!
//! let mut at_server = server.accept().await?;
//! assert_eq!(at_server.remote_identity(), client.identity().public_key());
//! let hello = at_server.read_msg().await?.expect("a message");
//! at_server.write_msg_and_close(&[&hello, b" back"]).await?;
//! assert_eq!(to_server.read_msg().await?.as_deref(), Some(&b"hello back"[..]));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod conn_cache;
mod endpoint;
mod error;
mod flow;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod identity;
mod idle;
mod manager;
pub mod protocol;
mod registry;
mod select;

pub use crate::conn_cache::ManagedConn;
pub use crate::endpoint::Endpoint;
pub use crate::error::{Error, ErrorKind, Reason, Result};
pub use crate::flow::{DEFAULT_MAX_MSG_SIZE, Flow, FlowReader, FlowWriter};
pub use crate::identity::{Authorizer, Identity, PeerAuthorizer, PeerKey};
pub use crate::manager::{ListenHandle, Manager, ManagerConfig, Status};
pub use crate::protocol::abort::AbortOnClose;
pub use crate::protocol::admission::ListenLimits;
pub use crate::protocol::https::{HttpsConfig, HttpsProtocol};
pub use crate::protocol::mem::MemProtocol;
pub use crate::protocol::quic::{CongestionControl, QuicConfig, QuicProtocol};
pub use crate::registry::{
    CloseCode, Conn, DialContext, FlowSend, ListenContext, Listener, Properties, Protocol, RawFlow,
    Registry, resolve_socket_addr, resolve_socket_addrs,
};
pub use crate::select::{Property, Selection};
