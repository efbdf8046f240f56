//! The protocol's rules as pure values, sans-IO as `quinn-proto` sits under
//! `quinn`: nothing here touches a socket, a file or a clock (time comes in as an
//! argument), so every rule is a function with a unit test. The server and client
//! are the shells around it: they read messages, ask the core, and write what it
//! decides.

pub(crate) mod completion;
pub(crate) mod layout;
#[cfg(test)]
mod model;
pub(crate) mod quota;
pub(crate) mod retry;
pub(crate) mod send_plan;
pub(crate) mod transfer;
