//! One binary codec for everything mftq puts on the wire or on disk: protocol
//! messages, the handshake secrets sealed inside accepts, and store records.
//!
//! Integers are big-endian; byte strings carry a u16 or u32 length prefix and an
//! upper bound that both sides check: the decoder before it allocates, the encoder
//! before it writes, so nothing is ever silently truncated. A decode of a whole
//! value refuses trailing bytes.

use bytes::Bytes;

/// A value with one binary encoding.
///
/// ```
/// use bytes::Bytes;
/// use mft::wire::{Codec, DecodeError, Message, SegmentAck};
/// let ack = Message::SegmentAck(SegmentAck { index: 7 });
/// let bytes = ack.to_bytes().unwrap();
/// assert_eq!(Message::from_bytes(Bytes::from(bytes.clone())).unwrap(), ack);
/// let mut longer = bytes;
/// longer.push(0);
/// assert_eq!(Message::from_bytes(Bytes::from(longer)), Err(DecodeError::TrailingBytes(1)));
/// ```
pub trait Codec: Sized {
    /// Appends the encoding to `w`, refusing a field it cannot represent.
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError>;

    /// Reads one value from `r`, which may hold more after it.
    fn read_from(r: &mut Reader) -> Result<Self, DecodeError>;

    /// The encoding as bytes.
    fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        self.write_to(&mut w)?;
        Ok(w.into_vec())
    }

    /// Decodes exactly one value from `bytes`: trailing bytes are an error.
    fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let value = Self::read_from(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended before a field.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// A length field exceeds its bound.
    #[error("{field} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes remained after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The type byte names no message.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// A message of another type was expected here.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expects at this point.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A version this code does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A field's value is out of range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Why a value could not be encoded: a field longer than the protocol allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A byte string or list exceeds its bound.
    #[error("{field} of {len} exceeds the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// Checks `len` against `max` before a field is written.
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::TooLong { field, len, max });
    }
    Ok(())
}

/// Reads fields from a buffer, never past its end.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader over `buf`.
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated(field));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A flag byte: 0 or 1, anything else refused.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(field)),
        }
    }

    /// A u16-length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes16(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub(crate) fn bytes32(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// Everything left, at most `max` bytes: a last field without a length.
    pub(crate) fn rest(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let len = self.buf.len() - self.pos;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len, field)
    }

    /// Refuses bytes left over.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A writer whose buffer starts with `first` (a type or version byte).
    pub(crate) fn starting_with(first: u8) -> Self {
        Writer(vec![first])
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.put(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_be_bytes())
    }

    /// A u16 length and the bytes, refused beyond `max` (the decoder's bound).
    pub(crate) fn bytes16(
        &mut self,
        field: &'static str,
        b: &[u8],
        max: usize,
    ) -> Result<&mut Self, EncodeError> {
        check_len(field, b.len(), max.min(usize::from(u16::MAX)))?;
        Ok(self.u16(b.len() as u16).put(b))
    }

    /// A u32 length and the bytes, refused beyond `max` (the decoder's bound).
    pub(crate) fn bytes32(
        &mut self,
        field: &'static str,
        b: &[u8],
        max: usize,
    ) -> Result<&mut Self, EncodeError> {
        check_len(field, b.len(), max.min(u32::MAX as usize))?;
        Ok(self.u32(b.len() as u32).put(b))
    }

    /// The bytes without a length, refused beyond `max`: a last field.
    pub(crate) fn rest(
        &mut self,
        field: &'static str,
        b: &[u8],
        max: usize,
    ) -> Result<&mut Self, EncodeError> {
        check_len(field, b.len(), max)?;
        Ok(self.put(b))
    }

    /// The bytes written.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_refuse_what_decoders_would_refuse() {
        let mut w = Writer::default();
        assert_eq!(
            w.bytes16("batch id", &[0; 257], 256).err(),
            Some(EncodeError::TooLong {
                field: "batch id",
                len: 257,
                max: 256
            })
        );
        assert!(w.bytes32("metadata", &[0; 11], 10).is_err());
        assert!(w.rest("metadata", &[0; 11], 10).is_err());
        assert!(w.into_vec().is_empty(), "a refused field writes nothing");
        // At the bound, both sides agree.
        let mut w = Writer::default();
        w.bytes16("batch id", &[7; 256], 256).unwrap();
        let mut r = Reader::new(Bytes::from(w.into_vec()));
        assert_eq!(r.bytes16("batch id", 256).unwrap().len(), 256);
        r.finish().unwrap();
    }

    #[test]
    fn a_u16_length_can_never_wrap() {
        let mut w = Writer::default();
        assert!(w.bytes16("field", &vec![0; 70_000], usize::MAX).is_err());
    }

    #[test]
    fn flags_are_zero_or_one() {
        let mut r = Reader::new(Bytes::from_static(&[0, 1, 2]));
        assert_eq!(r.bool("flag"), Ok(false));
        assert_eq!(r.bool("flag"), Ok(true));
        assert_eq!(r.bool("flag"), Err(DecodeError::Invalid("flag")));
    }
}
