//! # mft: the mftq transfer protocol
//!
//! Moves a **batch** (any `AsyncRead` plus metadata bytes) over the flows of a
//! [`flow::Manager`]: a signed handshake with fresh X25519 keys, many AES-256-GCM
//! segments in parallel, each acknowledged once stored durably, and a signed
//! completion whose chain hash catches omission, duplication, reordering and
//! substitution; the server answers with a signed [`Receipt`]. A [`Retriever`] pulls
//! a batch back, verified segment by segment.
//!
//! The parts, sans-IO first as in quinn: [`wire`] (messages, their one bounded
//! [`wire::Codec`], the [`wire::Signed`] contexts and the typed values),
//! [`crypto`] (key schedule, sealing, signatures, chain), [`handshake`], and the
//! protocol's rules as pure functions of their inputs and the time (the transfer
//! state machine, the batch layout, the sender's plan, the retry policy); then the
//! shells around them, [`Server`] (built with [`Server::builder`], asking an
//! [`Authorize`]), [`Sender`] and [`Retriever`], and the four storage traits in
//! [`store`] with [`store::MemoryStore`] and the embedded default
//! [`store::FsStore`].
//! `docs/PROTOCOL.md` is the normative description.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use flow::{Identity, Manager, ManagerConfig, MemProtocol, Registry};
//! use tokio::io::AsyncReadExt;
//!
//! // Two managers on an in-process network (QUIC works the same way).
//! let network = MemProtocol::new();
//! let mut registry = Registry::default();
//! registry.register("mem", Arc::new(network), &[]);
//! let server_manager = Manager::new(Identity::generate(), registry.clone(), ManagerConfig::default())?;
//! let endpoint = server_manager.listen("mem", "server").await?.endpoint().clone();
//! let client_manager = Manager::new(Identity::generate(), registry, ManagerConfig::default())?;
//!
//! let client_key = client_manager.identity().public_key();
//! let server = mft::Server::builder(
//!     server_manager.identity().clone(),
//!     Arc::new(mft::store::MemoryStore::new()),
//! )
//! .authorize(move |request: &mft::Request<'_>| *request.key == client_key)
//! .build();
//! tokio::spawn({
//!     let server = server.clone();
//!     async move { server.serve(server_manager).await }
//! });
//!
//! let config = mft::ClientConfig::new(endpoint, server.identity().public_key());
//! let sender = mft::Sender::new(client_manager.clone(), config.clone())?;
//! let receipt = sender.send(&b"hello, batch"[..], b"greeting", b"{}").await?;
//! assert_eq!(receipt.size, 12);
//!
//! let (mut data, info) = mft::Retriever::new(client_manager, config)?.get(b"greeting").await?;
//! let mut back = Vec::new();
//! data.read_to_end(&mut back).await?;
//! assert_eq!((&back[..], &info.metadata[..]), (&b"hello, batch"[..], &b"{}"[..]));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod client;
mod compress;
pub mod crypto;
mod error;
#[cfg(test)]
mod golden;
pub mod handshake;
mod proto;
mod server;
mod session;
pub mod store;
mod stream;
pub mod tree;
pub mod wire;

pub use crate::client::{
    BatchSummary, ClientConfig, Content, DEFAULT_TARGET_RATE, Event, InFlight, MAX_BYTES_IN_FLIGHT,
    MAX_SEGMENTS_IN_FLIGHT, MIN_BYTES_IN_FLIGHT, Pull, Receipt, Retriever, Sender,
};
pub use crate::compress::Compress;
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::server::{
    Authorize, CancelReason, DenyAll, Direction, Request, Server, ServerBuilder, ServerConfig,
    ServerEvent,
};
pub use crate::stream::{BatchInfo, BatchReader, SegmentSource};
