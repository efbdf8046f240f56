//! The handshake, sans-IO: building and checking [`Hello`]/[`PullHello`] and
//! [`Accept`], and the secrets an accept carries.
//!
//! Client: make a hello with a fresh X25519 key, signed. Server: check it, make its
//! own one-time key, derive the handshake key from the ECDH secret and the
//! transcript, seal the secret under it and sign the whole transcript. Client: check
//! the server's signature and key, derive the same key, open the secret.

use bytes::Bytes;
use flow::{Identity, PeerKey};

use crate::crypto::{self, Cipher, Ephemeral, context};
use crate::error::{Error, Result};
use crate::wire::{self, Accept, Hello, PullHello};

/// The nonce of the sealed handshake secret: the handshake key is used once.
const SECRET_NONCE: [u8; 12] = [0; 12];

/// What the server gives a sender in an [`Accept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSecret {
    /// The transfer's opaque id.
    pub transfer_id: [u8; 16],
    /// The secret that must accompany the completion.
    pub completion_id: [u8; 32],
    /// The AES-256 key of this transfer's segments and metadata.
    pub data_key: [u8; 32],
    /// The negotiated chunk size.
    pub chunk_size: u32,
    /// The largest metadata (plaintext bytes) the server accepts.
    pub max_metadata: u32,
    /// Whether the server opened this transfer for this hello. A new transfer holds
    /// no segments yet, so the sender starts sending at once instead of asking with
    /// `Resume` what is stored: one round trip less per push. Meaningful in an
    /// [`Accept`] only; a reopened transfer is never new.
    pub new_transfer: bool,
}

impl PushSecret {
    const LEN: usize = 16 + 32 + 32 + 4 + 4 + 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.transfer_id);
        out.extend_from_slice(&self.completion_id);
        out.extend_from_slice(&self.data_key);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.max_metadata.to_be_bytes());
        out.push(u8::from(self.new_transfer));
        out
    }

    fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != Self::LEN {
            return Err(Error::Protocol(format!(
                "push secret of {} bytes, expected {}",
                b.len(),
                Self::LEN
            )));
        }
        let mut s = PushSecret {
            transfer_id: [0; 16],
            completion_id: [0; 32],
            data_key: [0; 32],
            chunk_size: 0,
            max_metadata: 0,
            new_transfer: false,
        };
        s.transfer_id.copy_from_slice(&b[..16]);
        s.completion_id.copy_from_slice(&b[16..48]);
        s.data_key.copy_from_slice(&b[48..80]);
        s.chunk_size = u32::from_be_bytes([b[80], b[81], b[82], b[83]]);
        s.max_metadata = u32::from_be_bytes([b[84], b[85], b[86], b[87]]);
        s.new_transfer = match b[88] {
            0 => false,
            1 => true,
            other => {
                return Err(Error::Protocol(format!(
                    "push secret's new-transfer flag is {other}, not 0 or 1"
                )));
            }
        };
        Ok(s)
    }
}

/// What the server gives a retriever in a pull [`Accept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSecret {
    /// The transfer that delivered the batch.
    pub transfer_id: [u8; 16],
    /// The batch's data key.
    pub data_key: [u8; 32],
    /// Plaintext bytes per segment.
    pub chunk_size: u32,
    /// Number of segments.
    pub segment_count: u64,
    /// Plaintext size.
    pub size: u64,
    /// The chain hash the segments must reproduce.
    pub chain: [u8; 64],
    /// Who sent the batch.
    pub sender: [u8; 32],
    /// The metadata, sealed under the data key.
    pub sealed_metadata: Vec<u8>,
}

impl PullSecret {
    const FIXED: usize = 16 + 32 + 4 + 8 + 8 + 64 + 32;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED + self.sealed_metadata.len());
        out.extend_from_slice(&self.transfer_id);
        out.extend_from_slice(&self.data_key);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.segment_count.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.chain);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.sealed_metadata);
        out
    }

    fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < Self::FIXED {
            return Err(Error::Protocol("pull secret truncated".into()));
        }
        let mut s = PullSecret {
            transfer_id: [0; 16],
            data_key: [0; 32],
            chunk_size: 0,
            segment_count: 0,
            size: 0,
            chain: [0; 64],
            sender: [0; 32],
            sealed_metadata: b[Self::FIXED..].to_vec(),
        };
        s.transfer_id.copy_from_slice(&b[..16]);
        s.data_key.copy_from_slice(&b[16..48]);
        s.chunk_size = u32::from_be_bytes([b[48], b[49], b[50], b[51]]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[52..60]);
        s.segment_count = u64::from_be_bytes(n);
        n.copy_from_slice(&b[60..68]);
        s.size = u64::from_be_bytes(n);
        s.chain.copy_from_slice(&b[68..132]);
        s.sender.copy_from_slice(&b[132..164]);
        Ok(s)
    }
}

/// Which handshake: the labels and types that keep push and pull apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sending a batch.
    Push,
    /// Retrieving a batch.
    Pull,
}

impl Kind {
    fn key_label(self) -> &'static [u8] {
        match self {
            Kind::Push => context::PUSH_KEY,
            Kind::Pull => context::PULL_KEY,
        }
    }

    fn accept_context(self) -> &'static [u8] {
        match self {
            Kind::Push => context::ACCEPT,
            Kind::Pull => context::PULL_ACCEPT,
        }
    }
}

/// The client's half of a handshake in progress.
pub struct ClientHandshake {
    kind: Kind,
    ephemeral: Ephemeral,
    hello_hash: [u8; 64],
}

impl ClientHandshake {
    /// Starts a push: the signed [`Hello`] to send.
    pub fn push(
        identity: &Identity,
        batch_id: &[u8],
        chunk_size: u32,
        voucher: &[u8],
    ) -> (Self, Hello) {
        Self::push_with(
            identity,
            batch_id,
            chunk_size,
            voucher,
            Ephemeral::generate(),
        )
    }

    /// [`ClientHandshake::push`] with a given one-time key (fixed in test vectors).
    pub(crate) fn push_with(
        identity: &Identity,
        batch_id: &[u8],
        chunk_size: u32,
        voucher: &[u8],
        ephemeral: Ephemeral,
    ) -> (Self, Hello) {
        let mut hello = Hello {
            batch_id: Bytes::copy_from_slice(batch_id),
            client_ephemeral: ephemeral.public(),
            sender: *identity.public_key().as_bytes(),
            chunk_size,
            voucher: Bytes::copy_from_slice(voucher),
            signature: [0; 64],
        };
        let signed = hello.signed_bytes();
        hello.signature = crypto::sign(identity, context::HELLO, &[&signed]);
        let hello_hash = crypto::sha512(&[&signed, &hello.signature]);
        (
            ClientHandshake {
                kind: Kind::Push,
                ephemeral,
                hello_hash,
            },
            hello,
        )
    }

    /// Starts a pull: the signed [`PullHello`] to send.
    pub fn pull(identity: &Identity, batch_id: &[u8], voucher: &[u8]) -> (Self, PullHello) {
        Self::pull_with(identity, batch_id, voucher, Ephemeral::generate())
    }

    /// [`ClientHandshake::pull`] with a given one-time key (fixed in test vectors).
    pub(crate) fn pull_with(
        identity: &Identity,
        batch_id: &[u8],
        voucher: &[u8],
        ephemeral: Ephemeral,
    ) -> (Self, PullHello) {
        let mut hello = PullHello {
            batch_id: Bytes::copy_from_slice(batch_id),
            client_ephemeral: ephemeral.public(),
            retriever: *identity.public_key().as_bytes(),
            voucher: Bytes::copy_from_slice(voucher),
            signature: [0; 64],
        };
        let signed = hello.signed_bytes();
        hello.signature = crypto::sign(identity, context::PULL_HELLO, &[&signed]);
        let hello_hash = crypto::sha512(&[&signed, &hello.signature]);
        (
            ClientHandshake {
                kind: Kind::Pull,
                ephemeral,
                hello_hash,
            },
            hello,
        )
    }

    /// Checks the server's accept (its key must be `server`) and opens the secret.
    fn open(&self, accept: &Accept, server: &PeerKey) -> Result<Vec<u8>> {
        if accept.server != *server.as_bytes() {
            return Err(Error::ServerAuth(format!(
                "the server signed as {}, expected {server}",
                PeerKey::from_bytes(accept.server)
                    .map(|k| k.to_string())
                    .unwrap_or_else(|_| "an invalid key".into())
            )));
        }
        let pull = self.kind == Kind::Pull;
        let body = accept.signed_bytes(wire::accept_type(pull));
        if !crypto::verify(
            &accept.server,
            self.kind.accept_context(),
            &[&self.hello_hash, &body],
            &accept.signature,
        ) {
            return Err(Error::ServerAuth(
                "the server's handshake signature does not verify".into(),
            ));
        }
        let shared = self
            .ephemeral
            .agree(&accept.server_ephemeral)
            .map_err(|e| Error::ServerAuth(e.to_string()))?;
        let key = crypto::handshake_key(
            &shared,
            self.kind.key_label(),
            &self.hello_hash,
            &accept.server_ephemeral,
            &accept.server,
        );
        crypto::open(
            &Cipher::new(&key),
            &SECRET_NONCE,
            context::SEALED_SECRET,
            &accept.sealed,
        )
        .map_err(|e| Error::ServerAuth(format!("sealed secret: {e}")))
    }

    /// Finishes a push handshake.
    pub fn finish_push(self, accept: &Accept, server: &PeerKey) -> Result<PushSecret> {
        PushSecret::decode(&self.open(accept, server)?)
    }

    /// Finishes a pull handshake.
    pub fn finish_pull(self, accept: &Accept, server: &PeerKey) -> Result<PullSecret> {
        PullSecret::decode(&self.open(accept, server)?)
    }
}

/// Why a hello is refused before any state exists.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloProblem {
    /// The key in the hello is not the connection's TLS identity.
    IdentityMismatch,
    /// The signature does not verify.
    BadSignature,
}

/// Server: checks a push hello's signature and that it comes from `peer`.
pub fn check_hello(hello: &Hello, peer: &PeerKey) -> Result<[u8; 64], HelloProblem> {
    if hello.sender != *peer.as_bytes() {
        return Err(HelloProblem::IdentityMismatch);
    }
    let signed = hello.signed_bytes();
    if !crypto::verify(&hello.sender, context::HELLO, &[&signed], &hello.signature) {
        return Err(HelloProblem::BadSignature);
    }
    Ok(crypto::sha512(&[&signed, &hello.signature]))
}

/// Server: checks a pull hello's signature and that it comes from `peer`.
pub fn check_pull_hello(hello: &PullHello, peer: &PeerKey) -> Result<[u8; 64], HelloProblem> {
    if hello.retriever != *peer.as_bytes() {
        return Err(HelloProblem::IdentityMismatch);
    }
    let signed = hello.signed_bytes();
    if !crypto::verify(
        &hello.retriever,
        context::PULL_HELLO,
        &[&signed],
        &hello.signature,
    ) {
        return Err(HelloProblem::BadSignature);
    }
    Ok(crypto::sha512(&[&signed, &hello.signature]))
}

/// Server: the signed accept carrying `secret`, for a checked hello.
fn accept(
    identity: &Identity,
    kind: Kind,
    hello_hash: &[u8; 64],
    client_ephemeral: &[u8; 32],
    secret: &[u8],
    ephemeral: Ephemeral,
) -> std::result::Result<Accept, crypto::CryptoError> {
    let shared = ephemeral.agree(client_ephemeral)?;
    let server = *identity.public_key().as_bytes();
    let key = crypto::handshake_key(
        &shared,
        kind.key_label(),
        hello_hash,
        &ephemeral.public(),
        &server,
    );
    let sealed = crypto::seal(
        &Cipher::new(&key),
        &SECRET_NONCE,
        context::SEALED_SECRET,
        secret,
    );
    let mut accept = Accept {
        server_ephemeral: ephemeral.public(),
        server,
        sealed: Bytes::from(sealed),
        signature: [0; 64],
    };
    let body = accept.signed_bytes(wire::accept_type(kind == Kind::Pull));
    accept.signature = crypto::sign(identity, kind.accept_context(), &[hello_hash, &body]);
    Ok(accept)
}

/// Server: the accept of a push.
pub fn accept_push(
    identity: &Identity,
    hello: &Hello,
    hello_hash: &[u8; 64],
    secret: &PushSecret,
) -> std::result::Result<Accept, crypto::CryptoError> {
    accept_push_with(identity, hello, hello_hash, secret, Ephemeral::generate())
}

/// [`accept_push`] with a given one-time key (fixed in test vectors).
pub(crate) fn accept_push_with(
    identity: &Identity,
    hello: &Hello,
    hello_hash: &[u8; 64],
    secret: &PushSecret,
    ephemeral: Ephemeral,
) -> std::result::Result<Accept, crypto::CryptoError> {
    accept(
        identity,
        Kind::Push,
        hello_hash,
        &hello.client_ephemeral,
        &secret.encode(),
        ephemeral,
    )
}

/// Server: the accept of a pull.
pub fn accept_pull(
    identity: &Identity,
    hello: &PullHello,
    hello_hash: &[u8; 64],
    secret: &PullSecret,
) -> std::result::Result<Accept, crypto::CryptoError> {
    accept_pull_with(identity, hello, hello_hash, secret, Ephemeral::generate())
}

/// [`accept_pull`] with a given one-time key (fixed in test vectors).
pub(crate) fn accept_pull_with(
    identity: &Identity,
    hello: &PullHello,
    hello_hash: &[u8; 64],
    secret: &PullSecret,
    ephemeral: Ephemeral,
) -> std::result::Result<Accept, crypto::CryptoError> {
    accept(
        identity,
        Kind::Pull,
        hello_hash,
        &hello.client_ephemeral,
        &secret.encode(),
        ephemeral,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> PushSecret {
        PushSecret {
            transfer_id: [1; 16],
            completion_id: [2; 32],
            data_key: [3; 32],
            chunk_size: 1 << 20,
            max_metadata: 4096,
            new_transfer: true,
        }
    }

    #[test]
    fn push_secret_round_trips_and_refuses_a_bad_flag() {
        for new_transfer in [false, true] {
            let s = PushSecret {
                new_transfer,
                ..secret()
            };
            assert_eq!(PushSecret::decode(&s.encode()).unwrap(), s);
        }
        let mut bytes = secret().encode();
        *bytes.last_mut().unwrap() = 2;
        assert!(PushSecret::decode(&bytes).is_err());
        assert!(PushSecret::decode(&bytes[..PushSecret::LEN - 1]).is_err());
    }

    #[test]
    fn push_handshake_agrees() {
        let client = Identity::generate();
        let server = Identity::generate();
        let (hs, hello) = ClientHandshake::push(&client, b"batch", 1 << 20, b"token");
        let hash = check_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_push(&server, &hello, &hash, &secret()).unwrap();
        assert_eq!(
            hs.finish_push(&accept, &server.public_key()).unwrap(),
            secret()
        );
    }

    #[test]
    fn hello_from_another_identity_or_tampered_is_refused() {
        let client = Identity::generate();
        let (_, mut hello) = ClientHandshake::push(&client, b"batch", 1 << 20, b"");
        assert_eq!(
            check_hello(&hello, &Identity::generate().public_key()),
            Err(HelloProblem::IdentityMismatch)
        );
        hello.chunk_size += 1;
        assert_eq!(
            check_hello(&hello, &client.public_key()),
            Err(HelloProblem::BadSignature)
        );
    }

    #[test]
    fn accept_for_another_hello_or_server_is_refused() {
        let client = Identity::generate();
        let server = Identity::generate();
        let (hs, _hello) = ClientHandshake::push(&client, b"batch", 1 << 20, b"");
        // An accept made for a different hello (another handshake) cannot be replayed.
        let (_, other_hello) = ClientHandshake::push(&client, b"batch", 1 << 20, b"");
        let other_hash = check_hello(&other_hello, &client.public_key()).unwrap();
        let replayed = accept_push(&server, &other_hello, &other_hash, &secret()).unwrap();
        assert!(matches!(
            hs.finish_push(&replayed, &server.public_key()),
            Err(Error::ServerAuth(_))
        ));

        let (hs, hello) = ClientHandshake::push(&client, b"batch", 1 << 20, b"");
        let hash = check_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_push(&server, &hello, &hash, &secret()).unwrap();
        let stranger = Identity::generate().public_key();
        assert!(matches!(
            hs.finish_push(&accept, &stranger),
            Err(Error::ServerAuth(_))
        ));
    }

    #[test]
    fn pull_handshake_agrees_and_is_not_a_push() {
        let client = Identity::generate();
        let server = Identity::generate();
        let pull_secret = PullSecret {
            transfer_id: [4; 16],
            data_key: [5; 32],
            chunk_size: 65536,
            segment_count: 3,
            size: 150_000,
            chain: [6; 64],
            sender: [7; 32],
            sealed_metadata: vec![8; 40],
        };
        let (hs, hello) = ClientHandshake::pull(&client, b"batch", b"");
        let hash = check_pull_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_pull(&server, &hello, &hash, &pull_secret).unwrap();
        assert_eq!(
            hs.finish_pull(&accept, &server.public_key()).unwrap(),
            pull_secret
        );
    }
}
