//! Key schedule, segment sealing and opening, signatures and the chain hash.
//!
//! Sans-IO and normative: `docs/PROTOCOL.md` §8 describes exactly this. Every
//! signature is over a context string that names its role and message, followed by
//! the bytes it covers, so no signature can be lifted from one place to another.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use flow::{Identity, PeerKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::{ChainHash, Tag, TransferId};

/// Context strings: one per signature and derivation, never reused.
pub mod context {
    /// Signature of a [`Hello`](crate::wire::Hello) by the sender.
    pub const HELLO: &[u8] = b"mftq/v1 hello\0";
    /// Signature of an [`Accept`](crate::wire::Accept) for a push, by the server.
    pub const ACCEPT: &[u8] = b"mftq/v1 accept\0";
    /// Signature of a [`PullHello`](crate::wire::PullHello) by the retriever.
    pub const PULL_HELLO: &[u8] = b"mftq/v1 pull hello\0";
    /// Signature of an [`Accept`](crate::wire::Accept) for a pull, by the server.
    pub const PULL_ACCEPT: &[u8] = b"mftq/v1 pull accept\0";
    /// Signature of a [`Segment`](crate::wire::Segment) by the sender.
    pub const SEGMENT: &[u8] = b"mftq/v1 segment\0";
    /// Signature of a [`Complete`](crate::wire::Complete) by the sender.
    pub const COMPLETE: &[u8] = b"mftq/v1 complete\0";
    /// Signature of a [`Receipt`](crate::wire::Receipt) by the server.
    pub const RECEIPT: &[u8] = b"mftq/v1 receipt\0";
    /// HKDF salt of every handshake.
    pub const SALT: &[u8] = b"mftq/v1";
    /// HKDF info prefix of the push handshake key.
    pub const PUSH_KEY: &[u8] = b"mftq/v1 push handshake key\0";
    /// HKDF info prefix of the pull handshake key.
    pub const PULL_KEY: &[u8] = b"mftq/v1 pull handshake key\0";
    /// AAD of the sealed handshake secret.
    pub const SEALED_SECRET: &[u8] = b"mftq/v1 sealed secret\0";
    /// AAD prefix of segments.
    pub const SEGMENT_AAD: &[u8] = b"mftq/v1 segment aad\0";
    /// AAD prefix of metadata.
    pub const METADATA_AAD: &[u8] = b"mftq/v1 metadata aad\0";
    /// Chain hash initial value prefix.
    pub const CHAIN: &[u8] = b"mftq/v1 chain\0";
    /// What the server signs to derive its at-rest key.
    pub const AT_REST: &[u8] = b"mftq/v1 at-rest key\0";
    /// AAD prefix of secrets sealed at rest.
    pub const AT_REST_AAD: &[u8] = b"mftq/v1 at-rest aad\0";
}

/// A cryptographic check failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The peer's X25519 key is a low-order point: the shared secret would be known.
    #[error("the peer's X25519 key is not contributory (low-order point)")]
    NonContributory,
    /// AES-GCM authentication failed: wrong key, nonce, AAD or tampered bytes.
    #[error("authentication failed")]
    Unauthentic,
    /// A sealed value has the wrong length.
    #[error("sealed value malformed: {0}")]
    Malformed(&'static str),
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    // Without randomness no key can be made; there is nothing sensible to fall back to.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// 32 fresh random bytes.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    b
}

/// A one-time X25519 key pair for one handshake.
pub struct Ephemeral {
    secret: StaticSecret,
    public: [u8; 32],
}

impl Ephemeral {
    /// A fresh key pair.
    pub fn generate() -> Self {
        Self::from_secret(random32())
    }

    /// The key pair of a given secret: for test vectors, which need fixed keys.
    pub(crate) fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Ephemeral { secret, public }
    }

    /// The public half, sent to the peer.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The shared secret with `peer`, refusing low-order points.
    pub fn agree(&self, peer: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(CryptoError::NonContributory);
        }
        Ok(shared.to_bytes())
    }
}

/// SHA-512 of `parts` concatenated.
pub fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The handshake key: HKDF-SHA512 with salt `mftq/v1` over the ECDH secret, info =
/// `label` ‖ SHA-512(client hello) ‖ server ephemeral key ‖ server key.
pub fn handshake_key(
    shared: &[u8; 32],
    label: &[u8],
    hello_hash: &[u8; 64],
    server_ephemeral: &[u8; 32],
    server: &[u8; 32],
) -> [u8; 32] {
    let hk = Hkdf::<Sha512>::new(Some(context::SALT), shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA512's 16 320-byte limit.
    let _ = hk.expand_multi_info(&[label, hello_hash, server_ephemeral, server], &mut key);
    key
}

/// The AEAD behind segments and sealed secrets: one small trait so a faster backend
/// can replace the reference one; every backend must produce identical bytes.
pub trait SegmentCipher: Send + Sync {
    /// Encrypts `buf` in place and returns the tag.
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16];
    /// Decrypts `buf` in place if `tag` authenticates it.
    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError>;
}

/// AES-256-GCM from the `aes-gcm` crate: the reference backend.
#[derive(Clone)]
pub struct AesGcm(Aes256Gcm);

impl AesGcm {
    /// A cipher with `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        AesGcm(Aes256Gcm::new(key.into()))
    }
}

impl SegmentCipher for AesGcm {
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        // Fails only for buffers beyond GCM's 64 GiB limit, far above any segment.
        self.0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into())
            .map(|tag| tag.into())
            .unwrap_or([0u8; 16])
    }

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError> {
        self.0
            .decrypt_inout_detached(
                &Nonce::from(*nonce),
                aad,
                buf.into(),
                &aes_gcm::Tag::from(*tag),
            )
            .map_err(|_| CryptoError::Unauthentic)
    }
}

/// AES-256-GCM from *ring*: the backend the protocol uses. Its assembly picks the
/// fastest code the processor runs (VAES with AVX2, AES-NI with CLMUL, ARMv8
/// crypto), several times the speed of the portable reference backend, and its
/// bytes are identical to [`AesGcm`]'s (tested below).
#[derive(Clone)]
pub struct RingAesGcm(std::sync::Arc<ring::aead::LessSafeKey>);

impl RingAesGcm {
    /// A cipher with `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        // A 32-byte key is exactly what AES-256-GCM takes: `new` cannot fail.
        #[allow(clippy::expect_used)]
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .expect("AES-256-GCM takes a 32-byte key");
        RingAesGcm(std::sync::Arc::new(ring::aead::LessSafeKey::new(unbound)))
    }
}

impl SegmentCipher for RingAesGcm {
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        // Fails only for buffers beyond GCM's 64 GiB limit, far above any segment.
        self.0
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .ok()
            .and_then(|tag| tag.as_ref().try_into().ok())
            .unwrap_or([0u8; 16])
    }

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError> {
        self.0
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::Unauthentic)
    }
}

impl std::fmt::Debug for RingAesGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingAesGcm(..)")
    }
}

/// The AEAD backend the protocol uses for segments, metadata and sealed secrets.
pub type Cipher = RingAesGcm;

/// The nonce of segment `index`: four zero bytes, then the index. Indices are unique
/// within a transfer and every transfer has its own data key, so no nonce repeats
/// under a key.
pub fn segment_nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// Segments up to this many bytes are sealed (sender) or authenticated (server) on
/// the task that handles them. Below this, a hop to the blocking pool and back
/// costs more than the AES-GCM pass it would move: 64 KiB seal in about 10 µs
/// (`cargo bench --bench crypto`), while a hop costs two task switches and often a
/// thread wake-up.
pub const INLINE_CRYPTO_MAX: usize = 64 << 10;

/// The nonce of the metadata: distinct from every segment nonce.
pub const METADATA_NONCE: [u8; 12] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];

/// The AAD of segment `index` of `transfer_id`: binds the ciphertext to its place.
pub fn segment_aad(transfer_id: &TransferId, index: u64) -> [u8; 44] {
    let mut aad = [0u8; 44];
    aad[..20].copy_from_slice(context::SEGMENT_AAD);
    aad[20..36].copy_from_slice(&transfer_id.0);
    aad[36..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// Encrypts `buf` (a whole chunk) in place under the data key and appends the tag:
/// the segment's ciphertext. `buf` is a `Vec<u8>` or a `bytes::BytesMut`.
pub fn seal_segment<B>(
    cipher: &dyn SegmentCipher,
    transfer_id: &TransferId,
    index: u64,
    buf: &mut B,
) -> Tag
where
    B: AsMut<[u8]> + for<'a> Extend<&'a u8>,
{
    let tag = cipher.seal_in_place(
        &segment_nonce(index),
        &segment_aad(transfer_id, index),
        buf.as_mut(),
    );
    buf.extend(&tag);
    Tag(tag)
}

/// Decrypts a segment's `ciphertext` (tag at the end) in place, leaving the plaintext
/// in `buf[..len - 16]`.
pub fn open_segment(
    cipher: &dyn SegmentCipher,
    transfer_id: &TransferId,
    index: u64,
    buf: &mut [u8],
) -> Result<usize, CryptoError> {
    let body = buf
        .len()
        .checked_sub(16)
        .ok_or(CryptoError::Malformed("segment shorter than its tag"))?;
    let (data, tag) = buf.split_at_mut(body);
    let tag: [u8; 16] = (&*tag)
        .try_into()
        .map_err(|_| CryptoError::Malformed("tag"))?;
    cipher.open_in_place(
        &segment_nonce(index),
        &segment_aad(transfer_id, index),
        data,
        &tag,
    )?;
    Ok(body)
}

/// Seals `plaintext` as `ciphertext ‖ tag` with a fixed nonce (for values sealed once
/// under a single-use key).
pub fn seal(cipher: &dyn SegmentCipher, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = plaintext.to_vec();
    let tag = cipher.seal_in_place(nonce, aad, &mut buf);
    buf.extend_from_slice(&tag);
    buf
}

/// Opens what [`seal`] made.
pub fn open(
    cipher: &dyn SegmentCipher,
    nonce: &[u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let body = sealed
        .len()
        .checked_sub(16)
        .ok_or(CryptoError::Malformed("shorter than its tag"))?;
    let mut buf = sealed[..body].to_vec();
    let tag: [u8; 16] = sealed[body..]
        .try_into()
        .map_err(|_| CryptoError::Malformed("tag"))?;
    cipher.open_in_place(nonce, aad, &mut buf, &tag)?;
    Ok(buf)
}

/// The metadata AAD: binds it to its transfer.
pub fn metadata_aad(transfer_id: &TransferId) -> Vec<u8> {
    [context::METADATA_AAD, &transfer_id.0].concat()
}

/// The chain hash: links every segment in order, so omission, duplication,
/// reordering and substitution change the final value.
///
/// `C₀ = SHA-512(CHAIN ‖ transfer id ‖ batch id)`,
/// `Cᵢ₊₁ = SHA-512(Cᵢ ‖ index ‖ ciphertext length ‖ tag)`.
#[derive(Clone, Debug)]
pub struct Chain {
    state: [u8; 64],
    next: u64,
}

impl Chain {
    /// The initial value for a transfer.
    pub fn new(transfer_id: &TransferId, batch_id: &[u8]) -> Self {
        Chain {
            state: sha512(&[context::CHAIN, &transfer_id.0, batch_id]),
            next: 0,
        }
    }

    /// Adds the next segment (by index order).
    pub fn push(&mut self, len: u32, tag: &Tag) {
        self.state = sha512(&[
            &self.state,
            &self.next.to_be_bytes(),
            &len.to_be_bytes(),
            &tag.0,
        ]);
        self.next += 1;
    }

    /// The value after the segments pushed so far.
    pub fn value(&self) -> ChainHash {
        ChainHash(self.state)
    }
}

/// Constant-time equality of secrets.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Signs `context ‖ body` as `identity`.
pub fn sign(identity: &Identity, context: &[u8], body: &[&[u8]]) -> [u8; 64] {
    let mut m = context.to_vec();
    for part in body {
        m.extend_from_slice(part);
    }
    identity.sign(&m)
}

/// Verifies a signature by `key` over `context ‖ body`, strictly.
pub fn verify(key: &[u8; 32], context: &[u8], body: &[&[u8]], signature: &[u8; 64]) -> bool {
    let Ok(key) = PeerKey::from_bytes(*key) else {
        return false;
    };
    let mut m = context.to_vec();
    for part in body {
        m.extend_from_slice(part);
    }
    key.verify_strict(&m, signature)
}

/// The server's key for sealing secrets at rest, derived from its identity: Ed25519
/// signatures are deterministic, so signing a fixed context yields the same 64
/// secret bytes every time, and only the holder of the private key can produce them.
pub fn at_rest_key(identity: &Identity) -> [u8; 32] {
    let ikm = identity.sign(context::AT_REST);
    let hk = Hkdf::<Sha512>::new(Some(context::SALT), &ikm);
    let mut key = [0u8; 32];
    let _ = hk.expand(context::AT_REST, &mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_are_bound_to_their_place() {
        let cipher = AesGcm::new(&[7; 32]);
        let transfer = TransferId([1; 16]);
        let mut buf = b"hello segment".to_vec();
        let tag = seal_segment(&cipher, &transfer, 3, &mut buf);
        assert_eq!(&buf[buf.len() - 16..], &tag.0);

        let mut ok = buf.clone();
        let n = open_segment(&cipher, &transfer, 3, &mut ok).unwrap();
        assert_eq!(&ok[..n], b"hello segment");

        let mut moved = buf.clone();
        assert_eq!(
            open_segment(&cipher, &transfer, 4, &mut moved),
            Err(CryptoError::Unauthentic)
        );
        let mut other_transfer = buf.clone();
        assert_eq!(
            open_segment(&cipher, &TransferId([2; 16]), 3, &mut other_transfer),
            Err(CryptoError::Unauthentic)
        );
        let mut tampered = buf.clone();
        tampered[0] ^= 1;
        assert_eq!(
            open_segment(&cipher, &transfer, 3, &mut tampered),
            Err(CryptoError::Unauthentic)
        );
        let mut other_key = buf.clone();
        assert_eq!(
            open_segment(&AesGcm::new(&[8; 32]), &transfer, 3, &mut other_key),
            Err(CryptoError::Unauthentic)
        );
        assert!(open_segment(&cipher, &transfer, 3, &mut [0u8; 5]).is_err());
    }

    #[test]
    fn aes_gcm_matches_a_known_answer() {
        // NIST GCM test vector (gcmEncryptExtIV256, Count 0 with empty plaintext):
        // all-zero key and nonce, empty plaintext and AAD.
        let tag = AesGcm::new(&[0; 32]).seal_in_place(&[0; 12], &[], &mut []);
        assert_eq!(
            tag,
            [
                0x53, 0x0f, 0x8a, 0xfb, 0xc7, 0x45, 0x36, 0xb9, 0xa9, 0x63, 0xb4, 0xf1, 0xc4, 0xcb,
                0x73, 0x8b
            ]
        );
    }

    #[test]
    fn ring_and_the_reference_backend_produce_identical_bytes() {
        // Sizes around the AES block, the 64-byte and VAES strides, and segment sizes.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            63,
            64,
            65,
            255,
            256,
            257,
            4096,
            65_536,
            1 << 20,
        ] {
            let key: [u8; 32] = std::array::from_fn(|_| next() as u8);
            let nonce: [u8; 12] = std::array::from_fn(|_| next() as u8);
            let aad: Vec<u8> = (0..(len % 50)).map(|_| next() as u8).collect();
            let plain: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let (reference, fast) = (AesGcm::new(&key), RingAesGcm::new(&key));
            let mut a = plain.clone();
            let mut b = plain.clone();
            let tag_a = reference.seal_in_place(&nonce, &aad, &mut a);
            let tag_b = fast.seal_in_place(&nonce, &aad, &mut b);
            assert_eq!((&a, tag_a), (&b, tag_b), "{len} bytes");
            // Each opens what the other sealed, and both refuse a flipped bit.
            fast.open_in_place(&nonce, &aad, &mut a, &tag_a).unwrap();
            reference
                .open_in_place(&nonce, &aad, &mut b, &tag_b)
                .unwrap();
            assert_eq!((&a, &b), (&plain, &plain));
            let mut bad_tag = tag_a;
            bad_tag[len % 16] ^= 1;
            let mut c = plain.clone();
            fast.seal_in_place(&nonce, &aad, &mut c);
            assert_eq!(
                fast.open_in_place(&nonce, &aad, &mut c.clone(), &bad_tag),
                Err(CryptoError::Unauthentic)
            );
            assert_eq!(
                reference.open_in_place(&nonce, &aad, &mut c, &bad_tag),
                Err(CryptoError::Unauthentic)
            );
        }
        let zero = RingAesGcm::new(&[0; 32]).seal_in_place(&[0; 12], &[], &mut []);
        assert_eq!(
            zero,
            AesGcm::new(&[0; 32]).seal_in_place(&[0; 12], &[], &mut [])
        );
    }

    #[test]
    fn ecdh_agrees_and_refuses_low_order_points() {
        let a = Ephemeral::generate();
        let b = Ephemeral::generate();
        assert_eq!(a.agree(&b.public()).unwrap(), b.agree(&a.public()).unwrap());
        // The identity point and another small-order point (RFC 7748 test set).
        assert_eq!(a.agree(&[0; 32]), Err(CryptoError::NonContributory));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(a.agree(&one), Err(CryptoError::NonContributory));
    }

    #[test]
    fn chain_detects_order_and_substitution() {
        let t = TransferId([9; 16]);
        let mut a = Chain::new(&t, b"batch");
        a.push(10, &Tag([1; 16]));
        a.push(10, &Tag([2; 16]));
        let mut swapped = Chain::new(&t, b"batch");
        swapped.push(10, &Tag([2; 16]));
        swapped.push(10, &Tag([1; 16]));
        assert_ne!(a.value(), swapped.value());
        let mut other_batch = Chain::new(&t, b"batcH");
        other_batch.push(10, &Tag([1; 16]));
        other_batch.push(10, &Tag([2; 16]));
        assert_ne!(a.value(), other_batch.value());
    }

    #[test]
    fn signatures_are_bound_to_their_context() {
        let id = Identity::generate();
        let key = *id.public_key().as_bytes();
        let sig = sign(&id, context::HELLO, &[b"body"]);
        assert!(verify(&key, context::HELLO, &[b"bo", b"dy"], &sig));
        assert!(!verify(&key, context::COMPLETE, &[b"body"], &sig));
        assert!(!verify(&key, context::HELLO, &[b"body!"], &sig));
    }

    #[test]
    fn at_rest_key_is_stable_per_identity() {
        let id = Identity::generate();
        assert_eq!(at_rest_key(&id), at_rest_key(&id));
        assert_ne!(at_rest_key(&id), at_rest_key(&Identity::generate()));
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal(&[1, 2, 3], &[1, 2, 3]));
        assert!(!secrets_equal(&[1, 2, 3], &[1, 2, 4]));
        assert!(!secrets_equal(&[1, 2, 3], &[1, 2]));
    }
}
