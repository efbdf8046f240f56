//! The built-in protocols, and helpers for writing your own.

pub mod abort;
pub mod admission;

pub mod https;
pub mod mem;
pub mod quic;
