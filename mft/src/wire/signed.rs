//! Signed messages: each type carries the context string its signature is made
//! under, so no caller picks one, and a signature made for one message type never
//! verifies as another (`docs/PROTOCOL.md` §10).

use flow::Identity;

use super::codec::EncodeError;
use super::{Complete, Hello, PullHello, Receipt, Segment, Signature, Tag, TransferId};
use crate::crypto::{self, context};

/// A message signed by one party under a context string fixed by its type.
///
/// ```
/// use bytes::Bytes;
/// use flow::Identity;
/// use mft::wire::{BatchId, Compression, Hello, Signature, Signed};
/// let sender = Identity::generate();
/// let mut hello = Hello {
///     batch_id: BatchId::new(&b"b"[..]).unwrap(),
///     client_ephemeral: [1; 32],
///     sender: *sender.public_key().as_bytes(),
///     chunk_size: 1 << 20,
///     voucher: Bytes::new(),
///     replace: false,
///     compression: Compression::None,
///     signature: Signature([0; 64]),
/// };
/// hello.sign(&sender).unwrap();
/// assert!(hello.verify(sender.public_key().as_bytes()));
/// hello.chunk_size += 1;
/// assert!(!hello.verify(sender.public_key().as_bytes()));
/// ```
pub trait Signed {
    /// The context string the signature is made under.
    const CONTEXT: &'static [u8];

    /// What the signature covers, after the context.
    fn signed_body(&self) -> Result<Vec<u8>, EncodeError>;

    /// The signature the message carries.
    fn signature(&self) -> &Signature;

    /// Replaces the signature the message carries.
    fn set_signature(&mut self, signature: Signature);

    /// Signs the message as `identity`, returning the bytes signed (what
    /// [`Signed::signed_body`] gives), for callers that hash them too.
    fn sign(&mut self, identity: &Identity) -> Result<Vec<u8>, EncodeError> {
        let body = self.signed_body()?;
        self.set_signature(Signature(crypto::sign(identity, Self::CONTEXT, &[&body])));
        Ok(body)
    }

    /// Whether `key` signed the message as it stands (strict Ed25519).
    fn verify(&self, key: &[u8; 32]) -> bool {
        self.signed_body()
            .is_ok_and(|body| self.verify_body(key, &body))
    }

    /// [`Signed::verify`] for a caller that has `body`, the message's
    /// [`Signed::signed_body`], already.
    fn verify_body(&self, key: &[u8; 32], body: &[u8]) -> bool {
        crypto::verify(key, Self::CONTEXT, &[body], &self.signature().0)
    }
}

/// Implements [`Signed`] for a message whose body is its `signed_bytes`.
macro_rules! signed_by_its_bytes {
    ($($message:ty => $context:expr,)*) => {
        $(
            impl Signed for $message {
                const CONTEXT: &'static [u8] = $context;

                fn signed_body(&self) -> Result<Vec<u8>, EncodeError> {
                    self.signed_bytes()
                }

                fn signature(&self) -> &Signature {
                    &self.signature
                }

                fn set_signature(&mut self, signature: Signature) {
                    self.signature = signature;
                }
            }
        )*
    };
}

signed_by_its_bytes! {
    Hello => context::HELLO,
    PullHello => context::PULL_HELLO,
    Complete => context::COMPLETE,
    Receipt => context::RECEIPT,
}

/// A segment's signature covers its transfer, index, ciphertext length and tag:
/// what places it, not its whole ciphertext (the tag authenticates that).
impl Signed for Segment {
    const CONTEXT: &'static [u8] = context::SEGMENT;

    fn signed_body(&self) -> Result<Vec<u8>, EncodeError> {
        let len = super::push::ciphertext_len(&self.ciphertext)?;
        Ok(Segment::signed_parts(
            &self.transfer_id,
            self.index,
            len,
            &self.tag(),
        ))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn set_signature(&mut self, signature: Signature) {
        self.signature = signature;
    }
}

impl Segment {
    /// What a segment's signature covers, from its parts: transfer id ‖ index ‖
    /// ciphertext length ‖ tag.
    pub fn signed_parts(transfer_id: &TransferId, index: u64, len: u32, tag: &Tag) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 8 + 4 + 16);
        m.extend_from_slice(&transfer_id.0);
        m.extend_from_slice(&index.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&tag.0);
        m
    }

    /// The signature of a segment made from its parts, without building the
    /// message: what a sender sealing segments in place uses.
    pub fn sign_parts(
        identity: &Identity,
        transfer_id: &TransferId,
        index: u64,
        len: u32,
        tag: &Tag,
    ) -> Signature {
        let body = Self::signed_parts(transfer_id, index, len, tag);
        Signature(crypto::sign(
            identity,
            <Segment as Signed>::CONTEXT,
            &[&body],
        ))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_signature_for_one_message_type_never_verifies_as_another() {
        let id = Identity::generate();
        let key = *id.public_key().as_bytes();
        let mut complete = Complete {
            transfer_id: TransferId([1; 16]),
            segment_count: 1,
            size: 1,
            completion_id: [2; 32],
            chain: crate::wire::ChainHash([3; 64]),
            sealed_metadata: Bytes::new(),
            content_digest: [0; 32],
            replace: false,
            signature: Signature([0; 64]),
        };
        complete.sign(&id).unwrap();
        assert!(complete.verify(&key));
        // The same bytes under another type's context do not verify.
        let body = complete.signed_body().unwrap();
        assert!(!crypto::verify(
            &key,
            context::RECEIPT,
            &[&body],
            &complete.signature.0
        ));
        assert!(!complete.verify(Identity::generate().public_key().as_bytes()));
    }

    #[test]
    fn a_segment_signed_from_its_parts_verifies_as_a_message() {
        let id = Identity::generate();
        let mut ciphertext = vec![9u8; 40];
        ciphertext[24..].copy_from_slice(&[7; 16]);
        let signature = Segment::sign_parts(&id, &TransferId([4; 16]), 3, 40, &Tag([7; 16]));
        let segment = Segment {
            transfer_id: TransferId([4; 16]),
            index: 3,
            ciphertext: Bytes::from(ciphertext),
            signature,
        };
        assert!(segment.verify(id.public_key().as_bytes()));
        let moved = Segment {
            index: 4,
            ..segment
        };
        assert!(!moved.verify(id.public_key().as_bytes()));
    }
}
