//! The handshake, sans-IO: building and checking [`Hello`]/[`PullHello`] and
//! [`Accept`], and the secrets an accept carries.
//!
//! Client: make a hello with a fresh X25519 key, signed. Server: check it, make its
//! own one-time key, derive the handshake key from the ECDH secret and the
//! transcript, seal the secret under it and sign the whole transcript. Client: check
//! the server's signature and key, derive the same key, open the secret.

use std::fmt;

use bytes::Bytes;
use flow::{Identity, PeerKey};

use crate::crypto::{self, Cipher, Ephemeral, context};
use crate::error::{Error, Result};
use crate::wire::{
    self, Accept, BatchId, ByteRange, ChainHash, Codec, Compression, DataKey, DecodeError,
    EncodeError, Hello, PullHello, Reader, Signature, Signed, TransferId, Writer,
};

/// The nonce of the sealed handshake secret: the handshake key is used once.
const SECRET_NONCE: [u8; 12] = [0; 12];

/// What the server gives a sender in an [`Accept`]. Its `Debug` leaves out the
/// data key and the completion id.
#[derive(Clone, PartialEq, Eq)]
pub struct PushSecret {
    /// The transfer's opaque id.
    pub transfer_id: TransferId,
    /// The secret that must accompany the completion.
    pub completion_id: [u8; 32],
    /// The AES-256 key of this transfer's segments and metadata.
    pub data_key: DataKey,
    /// The negotiated chunk size.
    pub chunk_size: u32,
    /// The largest metadata (plaintext bytes) the server accepts.
    pub max_metadata: u32,
    /// Whether the server opened this transfer for this hello. A new transfer holds
    /// no segments yet, so the sender starts sending at once instead of asking with
    /// `Resume` what is stored: one round trip less per push. Meaningful in an
    /// [`Accept`] only; a reopened transfer is never new.
    pub new_transfer: bool,
    /// The compression the transfer settled on: none, or zstd if the hello
    /// offered it and the server takes it (a reopened transfer keeps what it
    /// settled on when it opened; sending a segment as it is is always allowed).
    pub compression: Compression,
}

impl PushSecret {
    /// Its encoded length: fixed.
    const LEN: usize = 16 + 32 + 32 + 4 + 4 + 1 + 1;

    fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != Self::LEN {
            return Err(Error::Protocol(format!(
                "push secret of {} bytes, expected {}",
                b.len(),
                Self::LEN
            )));
        }
        Self::from_bytes(Bytes::copy_from_slice(b))
            .map_err(|e| Error::Protocol(format!("push secret: {e}")))
    }
}

impl fmt::Debug for PushSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSecret")
            .field("transfer_id", &self.transfer_id)
            .field("chunk_size", &self.chunk_size)
            .field("max_metadata", &self.max_metadata)
            .field("new_transfer", &self.new_transfer)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Codec for PushSecret {
    fn write_to(&self, w: &mut Writer) -> std::result::Result<(), EncodeError> {
        w.put(&self.transfer_id.0)
            .put(&self.completion_id)
            .put(self.data_key.expose())
            .u32(self.chunk_size)
            .u32(self.max_metadata)
            .u8(u8::from(self.new_transfer))
            .u8(self.compression.to_byte());
        Ok(())
    }

    fn read_from(r: &mut Reader) -> std::result::Result<Self, DecodeError> {
        Ok(PushSecret {
            transfer_id: TransferId(r.array("transfer id")?),
            completion_id: r.array("completion id")?,
            data_key: DataKey::from_bytes(r.array("data key")?),
            chunk_size: r.u32("chunk size")?,
            max_metadata: r.u32("metadata limit")?,
            new_transfer: r.bool("new-transfer flag")?,
            compression: read_compression(r)?,
        })
    }
}

/// What the server gives a retriever in a pull [`Accept`]. Its `Debug` leaves out
/// the data key.
#[derive(Clone, PartialEq, Eq)]
pub struct PullSecret {
    /// The transfer that delivered the batch.
    pub transfer_id: TransferId,
    /// The batch's data key.
    pub data_key: DataKey,
    /// Plaintext bytes per segment.
    pub chunk_size: u32,
    /// Number of segments.
    pub segment_count: u64,
    /// Plaintext size.
    pub size: u64,
    /// The chain hash the segments must reproduce.
    pub chain: ChainHash,
    /// Who sent the batch.
    pub sender: [u8; 32],
    /// How the batch's segments are encoded before they are sealed.
    pub compression: Compression,
    /// The metadata, sealed under the data key.
    pub sealed_metadata: Vec<u8>,
}

/// A secret's compression byte, refused if it names none.
fn read_compression(r: &mut Reader) -> std::result::Result<Compression, DecodeError> {
    Compression::from_byte(r.u8("compression")?).ok_or(DecodeError::Invalid("compression"))
}

impl PullSecret {
    fn decode(b: &[u8]) -> Result<Self> {
        Self::from_bytes(Bytes::copy_from_slice(b))
            .map_err(|e| Error::Protocol(format!("pull secret: {e}")))
    }
}

impl fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullSecret")
            .field("transfer_id", &self.transfer_id)
            .field("chunk_size", &self.chunk_size)
            .field("segment_count", &self.segment_count)
            .field("size", &self.size)
            .field("chain", &self.chain)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Codec for PullSecret {
    fn write_to(&self, w: &mut Writer) -> std::result::Result<(), EncodeError> {
        w.put(&self.transfer_id.0)
            .put(self.data_key.expose())
            .u32(self.chunk_size)
            .u64(self.segment_count)
            .u64(self.size)
            .put(&self.chain.0)
            .put(&self.sender)
            .u8(self.compression.to_byte())
            .rest(
                "sealed metadata",
                &self.sealed_metadata,
                wire::MAX_METADATA + wire::TAG_LEN,
            )?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> std::result::Result<Self, DecodeError> {
        Ok(PullSecret {
            transfer_id: TransferId(r.array("transfer id")?),
            data_key: DataKey::from_bytes(r.array("data key")?),
            chunk_size: r.u32("chunk size")?,
            segment_count: r.u64("segment count")?,
            size: r.u64("size")?,
            chain: ChainHash(r.array("chain hash")?),
            sender: r.array("sender key")?,
            compression: read_compression(r)?,
            sealed_metadata: r
                .rest("sealed metadata", wire::MAX_METADATA + wire::TAG_LEN)?
                .to_vec(),
        })
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
    /// The compression the hello offered.
    offered: Compression,
}

impl ClientHandshake {
    /// Starts a push: the signed [`Hello`] to send.
    pub fn push(
        identity: &Identity,
        batch_id: &BatchId,
        chunk_size: u32,
        voucher: &[u8],
    ) -> Result<(Self, Hello)> {
        Self::push_offering(
            identity,
            batch_id,
            chunk_size,
            voucher,
            false,
            Compression::None,
        )
    }

    /// Starts a push that replaces the sender's batch `batch_id` if it holds one
    /// (its hello and completion say so): the old batch stays visible until the
    /// new one completes, and is swapped out then in one step.
    pub fn replace(
        identity: &Identity,
        batch_id: &BatchId,
        chunk_size: u32,
        voucher: &[u8],
    ) -> Result<(Self, Hello)> {
        Self::push_offering(
            identity,
            batch_id,
            chunk_size,
            voucher,
            true,
            Compression::None,
        )
    }

    /// Starts a push, replacing the batch if `replace`, and offering
    /// `compression`: the server's accept says whether the transfer uses it.
    pub fn push_offering(
        identity: &Identity,
        batch_id: &BatchId,
        chunk_size: u32,
        voucher: &[u8],
        replace: bool,
        compression: Compression,
    ) -> Result<(Self, Hello)> {
        let ephemeral = Ephemeral::generate();
        let mut hello = Self::hello(identity, batch_id, chunk_size, voucher, replace, &ephemeral);
        hello.compression = compression;
        Self::signed_push(identity, hello, ephemeral)
    }

    /// [`ClientHandshake::push_offering`] with a given one-time key (fixed in
    /// test vectors).
    #[cfg(test)]
    pub(crate) fn push_with(
        identity: &Identity,
        batch_id: &BatchId,
        chunk_size: u32,
        voucher: &[u8],
        compression: Compression,
        ephemeral: Ephemeral,
    ) -> Result<(Self, Hello)> {
        let mut hello = Self::hello(identity, batch_id, chunk_size, voucher, false, &ephemeral);
        hello.compression = compression;
        Self::signed_push(identity, hello, ephemeral)
    }

    /// An unsigned push hello offering no compression.
    fn hello(
        identity: &Identity,
        batch_id: &BatchId,
        chunk_size: u32,
        voucher: &[u8],
        replace: bool,
        ephemeral: &Ephemeral,
    ) -> Hello {
        Hello {
            batch_id: batch_id.clone(),
            client_ephemeral: ephemeral.public(),
            sender: *identity.public_key().as_bytes(),
            chunk_size,
            voucher: Bytes::copy_from_slice(voucher),
            replace,
            compression: Compression::None,
            signature: Signature([0; 64]),
        }
    }

    /// Signs `hello` and keeps what the accept is checked against.
    fn signed_push(
        identity: &Identity,
        mut hello: Hello,
        ephemeral: Ephemeral,
    ) -> Result<(Self, Hello)> {
        let signed = hello.sign(identity)?;
        let hello_hash = crypto::sha512(&[&signed, &hello.signature.0]);
        Ok((
            ClientHandshake {
                kind: Kind::Push,
                ephemeral,
                hello_hash,
                offered: hello.compression,
            },
            hello,
        ))
    }

    /// Starts a pull of `batch_id` from `owner`'s namespace (`None`: the server
    /// resolves it), of the whole batch or of `range`: the signed [`PullHello`]
    /// to send.
    pub fn pull(
        identity: &Identity,
        owner: Option<[u8; 32]>,
        batch_id: &BatchId,
        voucher: &[u8],
        range: Option<ByteRange>,
    ) -> Result<(Self, PullHello)> {
        Self::pull_with(
            identity,
            owner,
            batch_id,
            voucher,
            range,
            Ephemeral::generate(),
        )
    }

    /// [`ClientHandshake::pull`] with a given one-time key (fixed in test vectors).
    pub(crate) fn pull_with(
        identity: &Identity,
        owner: Option<[u8; 32]>,
        batch_id: &BatchId,
        voucher: &[u8],
        range: Option<ByteRange>,
        ephemeral: Ephemeral,
    ) -> Result<(Self, PullHello)> {
        let mut hello = PullHello {
            batch_id: batch_id.clone(),
            owner,
            client_ephemeral: ephemeral.public(),
            retriever: *identity.public_key().as_bytes(),
            voucher: Bytes::copy_from_slice(voucher),
            range,
            signature: Signature([0; 64]),
        };
        let signed = hello.sign(identity)?;
        let hello_hash = crypto::sha512(&[&signed, &hello.signature.0]);
        Ok((
            ClientHandshake {
                kind: Kind::Pull,
                ephemeral,
                hello_hash,
                offered: Compression::None,
            },
            hello,
        ))
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
        let body = accept.signed_bytes(wire::accept_type(pull))?;
        if !crypto::verify(
            &accept.server,
            self.kind.accept_context(),
            &[&self.hello_hash, &body],
            &accept.signature.0,
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

    /// Finishes a push handshake. A secret settling on a compression the hello
    /// did not offer is refused.
    pub fn finish_push(self, accept: &Accept, server: &PeerKey) -> Result<PushSecret> {
        let secret = PushSecret::decode(&self.open(accept, server)?)?;
        if secret.compression != Compression::None && secret.compression != self.offered {
            return Err(Error::Protocol(format!(
                "the server settled on {} compression, which was not offered",
                secret.compression
            )));
        }
        Ok(secret)
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
    let signed = hello
        .signed_bytes()
        .map_err(|_| HelloProblem::BadSignature)?;
    if !hello.verify_body(&hello.sender, &signed) {
        return Err(HelloProblem::BadSignature);
    }
    Ok(crypto::sha512(&[&signed, &hello.signature.0]))
}

/// Server: checks a pull hello's signature and that it comes from `peer`.
pub fn check_pull_hello(hello: &PullHello, peer: &PeerKey) -> Result<[u8; 64], HelloProblem> {
    if hello.retriever != *peer.as_bytes() {
        return Err(HelloProblem::IdentityMismatch);
    }
    let signed = hello
        .signed_bytes()
        .map_err(|_| HelloProblem::BadSignature)?;
    if !hello.verify_body(&hello.retriever, &signed) {
        return Err(HelloProblem::BadSignature);
    }
    Ok(crypto::sha512(&[&signed, &hello.signature.0]))
}

/// Server: the signed accept carrying `secret`, for a checked hello.
fn accept(
    identity: &Identity,
    kind: Kind,
    hello_hash: &[u8; 64],
    client_ephemeral: &[u8; 32],
    secret: &[u8],
    ephemeral: Ephemeral,
) -> Result<Accept> {
    let shared = ephemeral
        .agree(client_ephemeral)
        .map_err(|e| Error::Protocol(format!("the client's one-time key: {e}")))?;
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
        signature: Signature([0; 64]),
    };
    let body = accept.signed_bytes(wire::accept_type(kind == Kind::Pull))?;
    accept.signature = Signature(crypto::sign(
        identity,
        kind.accept_context(),
        &[hello_hash, &body],
    ));
    Ok(accept)
}

/// Server: the accept of a push.
pub fn accept_push(
    identity: &Identity,
    hello: &Hello,
    hello_hash: &[u8; 64],
    secret: &PushSecret,
) -> Result<Accept> {
    accept_push_with(identity, hello, hello_hash, secret, Ephemeral::generate())
}

/// [`accept_push`] with a given one-time key (fixed in test vectors).
pub(crate) fn accept_push_with(
    identity: &Identity,
    hello: &Hello,
    hello_hash: &[u8; 64],
    secret: &PushSecret,
    ephemeral: Ephemeral,
) -> Result<Accept> {
    accept(
        identity,
        Kind::Push,
        hello_hash,
        &hello.client_ephemeral,
        &secret.to_bytes()?,
        ephemeral,
    )
}

/// Server: the accept of a pull.
pub fn accept_pull(
    identity: &Identity,
    hello: &PullHello,
    hello_hash: &[u8; 64],
    secret: &PullSecret,
) -> Result<Accept> {
    accept_pull_with(identity, hello, hello_hash, secret, Ephemeral::generate())
}

/// [`accept_pull`] with a given one-time key (fixed in test vectors).
pub(crate) fn accept_pull_with(
    identity: &Identity,
    hello: &PullHello,
    hello_hash: &[u8; 64],
    secret: &PullSecret,
    ephemeral: Ephemeral,
) -> Result<Accept> {
    accept(
        identity,
        Kind::Pull,
        hello_hash,
        &hello.client_ephemeral,
        &secret.to_bytes()?,
        ephemeral,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> BatchId {
        BatchId::new(&b"batch"[..]).unwrap()
    }

    fn secret() -> PushSecret {
        PushSecret {
            transfer_id: TransferId([1; 16]),
            completion_id: [2; 32],
            data_key: DataKey::from_bytes([3; 32]),
            chunk_size: 1 << 20,
            max_metadata: 4096,
            new_transfer: true,
            compression: Compression::Zstd,
        }
    }

    #[test]
    fn push_secret_round_trips_and_refuses_a_bad_flag() {
        for new_transfer in [false, true] {
            let s = PushSecret {
                new_transfer,
                ..secret()
            };
            assert_eq!(PushSecret::decode(&s.to_bytes().unwrap()).unwrap(), s);
        }
        let mut bytes = secret().to_bytes().unwrap();
        *bytes.last_mut().unwrap() = 2;
        assert!(PushSecret::decode(&bytes).is_err());
        assert!(PushSecret::decode(&bytes[..PushSecret::LEN - 1]).is_err());
    }

    #[test]
    fn push_handshake_agrees() {
        let client = Identity::generate();
        let server = Identity::generate();
        let start = |offer| {
            ClientHandshake::push_offering(&client, &batch(), 1 << 20, b"token", false, offer)
                .unwrap()
        };
        let (hs, hello) = start(Compression::Zstd);
        assert_eq!(hello.compression, Compression::Zstd);
        let hash = check_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_push(&server, &hello, &hash, &secret()).unwrap();
        assert_eq!(
            hs.finish_push(&accept, &server.public_key()).unwrap(),
            secret()
        );
        // Settling on compression the hello did not offer is refused.
        let (hs, hello) = start(Compression::None);
        let hash = check_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_push(&server, &hello, &hash, &secret()).unwrap();
        assert!(matches!(
            hs.finish_push(&accept, &server.public_key()),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn hello_from_another_identity_or_tampered_is_refused() {
        let client = Identity::generate();
        let (_, mut hello) = ClientHandshake::push(&client, &batch(), 1 << 20, b"").unwrap();
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
        let (hs, _hello) = ClientHandshake::push(&client, &batch(), 1 << 20, b"").unwrap();
        // An accept made for a different hello (another handshake) cannot be replayed.
        let (_, other_hello) = ClientHandshake::push(&client, &batch(), 1 << 20, b"").unwrap();
        let other_hash = check_hello(&other_hello, &client.public_key()).unwrap();
        let replayed = accept_push(&server, &other_hello, &other_hash, &secret()).unwrap();
        assert!(matches!(
            hs.finish_push(&replayed, &server.public_key()),
            Err(Error::ServerAuth(_))
        ));

        let (hs, hello) = ClientHandshake::push(&client, &batch(), 1 << 20, b"").unwrap();
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
            transfer_id: TransferId([4; 16]),
            data_key: DataKey::from_bytes([5; 32]),
            chunk_size: 65536,
            segment_count: 3,
            size: 150_000,
            chain: ChainHash([6; 64]),
            sender: [7; 32],
            compression: Compression::Zstd,
            sealed_metadata: vec![8; 40],
        };
        let (hs, hello) = ClientHandshake::pull(&client, None, &batch(), b"", None).unwrap();
        let hash = check_pull_hello(&hello, &client.public_key()).unwrap();
        let accept = accept_pull(&server, &hello, &hash, &pull_secret).unwrap();
        assert_eq!(
            hs.finish_pull(&accept, &server.public_key()).unwrap(),
            pull_secret
        );
    }
}
