//! Endpoints: where a peer can be reached, as `protocol://address`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Reason, Result};

/// A protocol name and an address in that protocol's own syntax.
///
/// Written `quic://host:port`, `https://host:port`, `mem://name`, or with a slash,
/// `quic/host:port`, as command lines and configuration files like to. An address
/// with no protocol (`host:port`) has the empty protocol, which the registry hands to
/// the protocol registered with [`Registry::register_unknown`](crate::Registry::register_unknown).
///
/// ```
/// use flow::Endpoint;
/// let ep: Endpoint = "quic://127.0.0.1:4433".parse().unwrap();
/// assert_eq!(ep.protocol(), "quic");
/// assert_eq!(ep.address(), "127.0.0.1:4433");
/// assert_eq!("quic/127.0.0.1:4433".parse::<Endpoint>().unwrap(), ep);
/// assert_eq!(ep.to_string(), "quic://127.0.0.1:4433");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    protocol: String,
    address: String,
}

/// The longest endpoint text we accept; real ones are far shorter.
const MAX_ENDPOINT_LEN: usize = 1024;

impl Endpoint {
    /// An endpoint from its parts, validated as [`FromStr`] does.
    pub fn new(protocol: &str, address: &str) -> Result<Self> {
        let input = if protocol.is_empty() {
            address.to_string()
        } else {
            format!("{protocol}://{address}")
        };
        let bad = |why| {
            Error::new(Reason::MalformedEndpoint {
                input: input.clone(),
                why,
            })
        };
        if input.len() > MAX_ENDPOINT_LEN {
            return Err(bad("longer than 1024 bytes"));
        }
        if !protocol
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
        {
            return Err(bad("protocol names use only a-z, 0-9, '+', '-' and '.'"));
        }
        if address.is_empty() {
            return Err(bad("the address is empty"));
        }
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the address contains whitespace or control characters"));
        }
        if address.contains("://") {
            return Err(bad("the address contains a second '://'"));
        }
        if protocol.is_empty()
            && address
                .split_once('/')
                .is_some_and(|(head, _)| looks_like_protocol(head))
        {
            // It would print as `head/...` and read back as protocol `head`.
            return Err(bad(
                "an address without a protocol may not start with a protocol name and '/'",
            ));
        }
        Ok(Endpoint {
            protocol: protocol.to_string(),
            address: address.to_string(),
        })
    }

    /// An endpoint as a protocol reported it, without validation (for display only).
    pub(crate) fn unchecked(protocol: &str, address: &str) -> Self {
        Endpoint {
            protocol: protocol.to_string(),
            address: address.to_string(),
        }
    }

    /// The protocol name (may be an alias, or empty).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The address, in the protocol's own syntax.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some((protocol, address)) = s.split_once("://") {
            if protocol.is_empty() {
                return Err(Error::new(Reason::MalformedEndpoint {
                    input: s.to_string(),
                    why: "the protocol before '://' is empty",
                }));
            }
            return Endpoint::new(protocol, address);
        }
        // `proto/address`: only when the part before the slash names a protocol, so a
        // bare address that contains a slash (a Unix socket path) stays whole.
        if let Some((protocol, address)) = s.split_once('/')
            && looks_like_protocol(protocol)
        {
            return Endpoint::new(protocol, address);
        }
        Endpoint::new("", s)
    }
}

/// Whether `head` (the text before a '/') reads as a protocol name in
/// `proto/address` form.
fn looks_like_protocol(head: &str) -> bool {
    !head.is_empty()
        && head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-".contains(&b))
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.protocol.is_empty() {
            f.write_str(&self.address)
        } else {
            write!(f, "{}://{}", self.protocol, self.address)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parses_both_spellings_and_bare_addresses() {
        let a: Endpoint = "https://example.org:443".parse().unwrap();
        assert_eq!((a.protocol(), a.address()), ("https", "example.org:443"));
        let b: Endpoint = "mem/server-1".parse().unwrap();
        assert_eq!((b.protocol(), b.address()), ("mem", "server-1"));
        let c: Endpoint = "[::1]:4433".parse().unwrap();
        assert_eq!((c.protocol(), c.address()), ("", "[::1]:4433"));
        assert_eq!(c.to_string(), "[::1]:4433");
        let d: Endpoint = "/tmp/sock".parse().unwrap();
        assert_eq!((d.protocol(), d.address()), ("", "/tmp/sock"));
    }

    #[test]
    fn malformed_endpoints_are_bad_args() {
        let long = format!("quic://{}", "a".repeat(2000));
        for bad in [
            "",
            "quic://",
            "QUIC://host:1",
            "qu ic://host:1",
            "quic://host :1",
            "quic://a://b",
            "quic://host\n:1",
            // Found by fuzzing: an empty protocol, which printed back as another.
            "://o//",
            long.as_str(),
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadArg, "{bad:?}");
        }
        // Nor can one be built that would print as `proto/...`.
        assert!(Endpoint::new("", "o//").is_err());
        assert!(Endpoint::new("", "/run/mftq.sock").is_ok());
    }
}
