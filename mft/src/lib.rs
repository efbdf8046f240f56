//! # mft: the mftq transfer protocol
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod client;
pub mod crypto;
mod error;
pub mod handshake;
mod server;
mod session;
pub mod store;
mod stream;
pub mod wire;

pub use crate::client::{ClientConfig, Event, Receipt, Retriever, Sender};
pub use crate::error::{Error, ErrorKind, Result};
pub use crate::server::{Authorize, Server, ServerConfig};
pub use crate::stream::{BatchInfo, BatchReader, SegmentSource};
