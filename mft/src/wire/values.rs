//! The protocol's values as types, not bare byte arrays: a transfer id cannot be
//! passed where a tag is wanted, a chain hash is compared in constant time, and a
//! data key never prints and is wiped when dropped.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::MAX_BATCH_ID;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Defines a fixed-size public value: its bytes, hex for people, and `Debug`
/// naming the type.
macro_rules! fixed_value {
    ($(#[doc = $doc:literal])* $name:ident, $len:literal) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Its length in bytes.
            pub const LEN: usize = $len;

            /// Its bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, two digits per byte.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

fixed_value! {
    /// The opaque random identifier the server gives a transfer; it names the
    /// transfer in segments and storage instead of the batch id. Its hex (32
    /// digits) is safe as a file name.
    TransferId, 16
}

fixed_value! {
    /// An Ed25519 signature (see [`Signed`](super::Signed)).
    Signature, 64
}

fixed_value! {
    /// The AES-GCM tag at the end of a segment's ciphertext: what the chain hash
    /// and the segment signature cover of it.
    Tag, 16
}

fixed_value! {
    /// The chain hash over a batch's segments in order (`docs/PROTOCOL.md` §9): it
    /// catches omission, duplication, reordering and substitution. Compare two with
    /// [`ChainHash::matches`], in constant time.
    ChainHash, 64
}

impl TransferId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        crate::crypto::fill_random(&mut id);
        TransferId(id)
    }
}

impl ChainHash {
    /// Whether `other` is the same hash, compared in constant time.
    pub fn matches(&self, other: &ChainHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// A transfer's AES-256 data key. It has no `Debug` or `Display`, so it never
/// reaches a log, and its bytes are overwritten when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// A fresh random key.
    pub fn random() -> Self {
        DataKey(crate::crypto::random32())
    }

    /// Its bytes, for the cipher and for sealing it at rest.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A batch id: 1 to [`MAX_BATCH_ID`] opaque bytes, never interpreted (not a path,
/// not text). Shown to people escaped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(Bytes);

/// Why bytes are not a batch id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a batch id has 1 to {MAX_BATCH_ID} bytes, not {0}")]
pub struct BadBatchId(pub usize);

impl BatchId {
    /// `bytes` as a batch id, if it has 1 to [`MAX_BATCH_ID`] bytes.
    ///
    /// ```
    /// use mft::wire::BatchId;
    /// let id = BatchId::new(&b"../etc/passwd"[..]).unwrap();
    /// assert_eq!(&id[..], b"../etc/passwd");
    /// assert!(BatchId::new(Vec::new()).is_err());
    /// assert!(BatchId::new(vec![0; 257]).is_err());
    /// ```
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self, BadBatchId> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_BATCH_ID {
            return Err(BadBatchId(bytes.len()));
        }
        Ok(BatchId(bytes))
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for BatchId {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for BatchId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8]> for BatchId {
    fn eq(&self, other: &[u8]) -> bool {
        self.0[..] == *other
    }
}

impl PartialEq<&[u8]> for BatchId {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0[..] == **other
    }
}

impl fmt::Debug for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchId({self})")
    }
}

/// Escaped, and cut after 64 bytes: batch ids are untrusted bytes.
impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > SHOWN {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_as_hex_named_by_their_type() {
        let id = TransferId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(
            format!("{id:?}"),
            format!("TransferId({})", "ab".repeat(16))
        );
        assert!(format!("{:?}", Tag([1; 16])).starts_with("Tag(0101"));
    }

    #[test]
    fn chain_hashes_match_only_when_equal() {
        let a = ChainHash([7; 64]);
        let mut b = a;
        assert!(a.matches(&b));
        b.0[63] ^= 1;
        assert!(!a.matches(&b));
    }

    #[test]
    fn batch_ids_are_bounded_bytes_shown_escaped() {
        assert_eq!(BatchId::new(Vec::new()), Err(BadBatchId(0)));
        assert!(BatchId::new(vec![b'a'; MAX_BATCH_ID]).is_ok());
        assert_eq!(
            BatchId::new(vec![b'a'; MAX_BATCH_ID + 1]),
            Err(BadBatchId(MAX_BATCH_ID + 1))
        );
        let id = BatchId::new(&b"a\n\xff"[..]).unwrap();
        assert_eq!(id.to_string(), r#""a\n\xff""#);
        assert!(
            BatchId::new(vec![b'x'; 100])
                .unwrap()
                .to_string()
                .ends_with('…')
        );
    }

    #[test]
    fn a_data_key_cannot_be_printed() {
        // Compiles only if `DataKey` has no `Debug`: with one, both impls apply
        // and the call is ambiguous (the static_assertions trick).
        trait AmbiguousIfDebug<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfDebug<()> for T {}
        impl<T: ?Sized + fmt::Debug> AmbiguousIfDebug<u8> for T {}
        <DataKey as AmbiguousIfDebug<_>>::check();
        let key = DataKey::from_bytes([9; 32]);
        assert_eq!(key.expose(), &[9; 32]);
    }
}

/// How a transfer's segments may be encoded before they are sealed, as its
/// handshake settled (PROTOCOL.md §14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Every segment seals its plaintext as it is.
    #[default]
    None,
    /// A segment seals a zstd frame of its plaintext when that is shorter, and
    /// its plaintext as it is otherwise; the retriever tells the two apart by
    /// length alone.
    Zstd,
}

impl Compression {
    /// Its byte in secrets and records: 0 for none, 1 for zstd.
    pub fn to_byte(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    /// The compression of `byte`, if it names one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        })
    }
}
