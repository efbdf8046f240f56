//! What the client commands share: loading our key, trusting the server's, choosing
//! the transport, and making the flow manager and transfer configuration.

use std::time::Duration;

use std::path::Path;

use flow::{Endpoint, Manager, ManagerConfig, PeerKey};

use crate::args::{ClientArgs, Transport};
use crate::error::{CliError, Exit};
use crate::tuning::Tuning;

/// A ready client: its manager and the transfer configuration for one server.
pub struct Client {
    /// Dials the server.
    pub manager: Manager,
    /// The endpoint and server key.
    pub config: mft::ClientConfig,
    /// Network failures retried before giving up.
    pub retries: u32,
}

/// Network failures retried before giving up, unless told otherwise.
const DEFAULT_RETRIES: u32 = 5;

impl Client {
    /// Checks every client flag (naming the bad one), fills what they leave
    /// out from the environment and the config directory (see `profile`), and
    /// builds the client. A server key that comes from known_servers, or is
    /// trusted on first use, is checked against the key the server presents
    /// (a dial whose connection the command then uses).
    pub async fn new(
        args: &ClientArgs,
        tuning: Tuning,
        endpoint_flag: &str,
        endpoint: Option<&str>,
    ) -> Result<Self, CliError> {
        let resolved = crate::profile::resolve(args, endpoint_flag, endpoint)?;
        let transport = if args.transport == Transport::Auto {
            resolved.transport.unwrap_or(Transport::Auto)
        } else {
            args.transport
        };
        let endpoint = endpoint_for(endpoint_flag, &resolved.endpoint, transport)?;
        for (flag, value) in [
            ("--dial-timeout", args.dial_timeout),
            ("--probe", args.probe),
        ] {
            if !(value.is_finite() && value > 0.0 && value < 1e6) {
                return Err(CliError::usage(format!(
                    "{flag} {value}: expected seconds above zero"
                )));
            }
        }
        let identity = load_identity(&resolved.key)?;
        let mut manager_config = ManagerConfig::default();
        manager_config.probe_after_refusal(Duration::from_secs_f64(args.probe));
        let manager = Manager::new(identity, tuning.registry(), manager_config)
            .map_err(|e| CliError::flow("starting the client", e))?;
        let dial_timeout = Duration::from_secs_f64(args.dial_timeout);
        let server_key = match resolved.server_key {
            Some(key) => key,
            None => {
                trusted_key(
                    &manager,
                    &endpoint,
                    dial_timeout,
                    resolved.known_servers.as_deref(),
                    resolved.trust_on_first_use,
                )
                .await?
            }
        };
        let mut config = mft::ClientConfig::new(endpoint, server_key);
        tuning.apply(&mut config);
        let retries = args.retries.or(resolved.retries).unwrap_or(DEFAULT_RETRIES);
        config.retries(retries).dial_timeout(dial_timeout);
        config
            .validate()
            .map_err(|e| CliError::usage(format!("--retries/--dial-timeout: {e}")))?;
        Ok(Client {
            manager,
            config,
            retries,
        })
    }
}

/// The server key for `endpoint` when none was given: the one known_servers
/// holds for its address, checked against the key the server presents (a
/// different one is refused loudly, as ssh does), or, trusting on first use,
/// the one it presents, remembered.
async fn trusted_key(
    manager: &Manager,
    endpoint: &Endpoint,
    timeout: Duration,
    known_servers: Option<&Path>,
    trust_on_first_use: bool,
) -> Result<PeerKey, CliError> {
    let address = endpoint.address().to_string();
    let known = match known_servers {
        Some(file) => crate::profile::known_server(file, &address)?,
        None => None,
    };
    if known.is_none() && !trust_on_first_use {
        return Err(CliError::usage(
            "--server-key: needed: the server's public key (64 hex digits, as `mftq serve` \
             or `mftq pubkey` print it, or @FILE); or set MFTQ_SERVER_KEY, name a remote \
             that has one, or pass --trust-on-first-use",
        ));
    }
    let flow = manager
        .dial(endpoint, flow::Authorizer::any(), timeout)
        .await
        .map_err(|e| CliError::flow(&format!("connecting to {endpoint}"), e))?;
    let presented = flow.conn().remote_identity();
    drop(flow);
    match (known, known_servers) {
        (Some((key, _)), _) if key == presented => Ok(key),
        (Some((key, line)), Some(file)) => Err(CliError::new(
            Exit::Auth,
            format!(
                "THE SERVER'S KEY HAS CHANGED: the server at {address} presents {presented}, \
                 but {} line {line} trusts {key} for it. Someone may be impersonating it; \
                 if its key was replaced on purpose, remove that line",
                file.display()
            ),
        )),
        (_, Some(file)) => {
            crate::profile::remember_server(file, &address, &presented)?;
            crate::output::notice(format!(
                "trusting the server at {address} on first use: its key is {presented} \
                 (remembered in {})",
                file.display()
            ));
            Ok(presented)
        }
        (_, None) => Err(CliError::usage(
            "--trust-on-first-use: there is no HOME to keep known_servers in",
        )),
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
