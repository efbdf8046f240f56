//! What the client commands share: loading our key, trusting the server's, choosing
//! the transport, and making the flow manager and transfer configuration.

use std::time::Duration;

use flow::{Endpoint, Manager, ManagerConfig, PeerKey};

use crate::args::{ClientArgs, Transport};
use crate::error::CliError;
use crate::tuning::Tuning;

/// A ready client: its manager and the transfer configuration for one server.
pub struct Client {
    /// Dials the server.
    pub manager: Manager,
    /// The endpoint and server key.
    pub config: mft::ClientConfig,
}

impl Client {
    /// Checks every client flag (naming the bad one) and builds the client.
    pub fn new(
        args: &ClientArgs,
        tuning: Tuning,
        endpoint_flag: &str,
        endpoint: &str,
    ) -> Result<Self, CliError> {
        let endpoint = endpoint_for(endpoint_flag, endpoint, args.transport)?;
        if !(args.dial_timeout.is_finite() && args.dial_timeout > 0.0 && args.dial_timeout < 1e6) {
            return Err(CliError::usage(format!(
                "--dial-timeout {}: expected seconds above zero",
                args.dial_timeout
            )));
        }
        if !(args.probe.is_finite() && args.probe > 0.0 && args.probe < 1e6) {
            return Err(CliError::usage(format!(
                "--probe {}: expected seconds above zero",
                args.probe
            )));
        }
        let server_key = parse_key("--server-key", &args.server_key)?;
        let identity = load_identity(&args.key)?;
        let mut manager_config = ManagerConfig::default();
        manager_config.probe_after_refusal(Duration::from_secs_f64(args.probe));
        let manager = Manager::new(identity, tuning.registry(), manager_config)
            .map_err(|e| CliError::flow("starting the client", e))?;
        let mut config = mft::ClientConfig::new(endpoint, server_key);
        tuning.apply(&mut config);
        config
            .retries(args.retries)
            .dial_timeout(Duration::from_secs_f64(args.dial_timeout));
        config
            .validate()
            .map_err(|e| CliError::usage(format!("--retries/--dial-timeout: {e}")))?;
        Ok(Client { manager, config })
    }
}

/// Parses a public key given by `flag`.
pub fn parse_key(flag: &str, text: &str) -> Result<PeerKey, CliError> {
    text.parse()
        .map_err(|e: flow::Error| CliError::usage(format!("{flag} {text:?}: {}", e.reason())))
}

pub use crate::keygen::load_identity;

/// The endpoint to dial: `text` as given (a bare `host:port` meaning `mftq://`),
/// with its protocol replaced when `transport` names one.
pub fn endpoint_for(flag: &str, text: &str, transport: Transport) -> Result<Endpoint, CliError> {
    let bad = |why: String| CliError::usage(format!("{flag} {text:?}: {why}"));
    let endpoint: Endpoint = text
        .parse()
        .map_err(|e: flow::Error| bad(e.reason().to_string()))?;
    let protocol = match (transport, endpoint.protocol()) {
        (Transport::Quic, _) => "quic",
        (Transport::Https, _) => "https",
        (Transport::Auto, "") => "mftq",
        (Transport::Auto, p) => p,
    };
    if !["mftq", "quic", "https"].contains(&protocol) {
        return Err(bad(format!(
            "unknown protocol {protocol:?}; use mftq://, quic:// or https://"
        )));
    }
    let address = endpoint.address();
    if address
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(bad("expected host:port after the protocol".into()));
    }
    Endpoint::new(protocol, address).map_err(|e| bad(e.reason().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_transport() {
        let ep = |t, tr| endpoint_for("--to", t, tr).map(|e| e.to_string());
        assert_eq!(
            ep("host:1", Transport::Auto).ok().as_deref(),
            Some("mftq://host:1")
        );
        assert_eq!(
            ep("mftq://host:1", Transport::Quic).ok().as_deref(),
            Some("quic://host:1")
        );
        assert_eq!(
            ep("quic://host:1", Transport::Https).ok().as_deref(),
            Some("https://host:1")
        );
        assert_eq!(
            ep("https://h:2", Transport::Auto).ok().as_deref(),
            Some("https://h:2")
        );
        for bad in ["ftp://h:1", "quic://", "quic://host", "host:port", "a b:1"] {
            let e = ep(bad, Transport::Auto).expect_err(bad);
            assert!(e.message.contains("--to"), "{}", e.message);
        }
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        let key = flow::Identity::generate().public_key();
        assert_eq!(parse_key("--server-key", &key.to_string()).ok(), Some(key));
        assert!(parse_key("--server-key", "abc").is_err());
    }
}
