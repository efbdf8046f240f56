//! The built-in protocols.

pub mod mem;
pub mod quic;
