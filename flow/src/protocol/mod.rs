//! The built-in protocols.

pub mod https;
pub mod mem;
pub mod quic;
