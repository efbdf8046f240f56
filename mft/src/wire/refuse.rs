//! Refusals: the codes, from one table, and the message that carries them.

use std::fmt;

use super::MAX_REFUSE_MESSAGE;
use super::codec::{Codec, DecodeError, EncodeError, Reader, Writer};

/// Defines [`RefuseCode`] from one table of names, numbers and meanings, so the
/// name, the number on the wire and the documentation cannot drift apart.
macro_rules! refuse_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $number:literal,)*) => {
        /// Refusal codes: what the peer did wrong, or why the server cannot serve now.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RefuseCode {
            $($(#[doc = $doc])* $name,)*
            /// A code this version does not know (a newer peer's), kept as it was
            /// sent. Decoding never makes one of a known number.
            Unknown(u16),
        }

        impl RefuseCode {
            /// Every code this version knows, in the order of their numbers.
            pub const KNOWN: &'static [RefuseCode] = &[$(RefuseCode::$name,)*];

            /// The number on the wire.
            pub fn as_u16(self) -> u16 {
                match self {
                    $(RefuseCode::$name => $number,)*
                    RefuseCode::Unknown(number) => number,
                }
            }

            /// The code for a number; one this version does not know is kept as
            /// [`RefuseCode::Unknown`].
            pub fn from_u16(number: u16) -> Self {
                match number {
                    $($number => RefuseCode::$name,)*
                    other => RefuseCode::Unknown(other),
                }
            }
        }
    };
}

refuse_codes! {
    /// A message did not decode or came out of order.
    BadMessage = 1,
    /// The protocol version is not spoken here.
    UnsupportedVersion = 2,
    /// The key (or voucher) is not authorised for this.
    NotAuthorized = 3,
    /// The key in the message is not the connection's TLS identity.
    IdentityMismatch = 4,
    /// A signature did not verify.
    BadSignature = 5,
    /// A per-peer or server limit was reached; retry later.
    Busy = 6,
    /// A segment exceeds the negotiated size.
    SegmentTooLarge = 7,
    /// The metadata exceeds the server's limit.
    MetadataTooLarge = 8,
    /// No open transfer has that id (or it expired).
    UnknownTransfer = 9,
    /// That segment index is already stored.
    DuplicateSegment = 10,
    /// A segment failed authentication (tampered, replayed, or misplaced).
    BadSegment = 11,
    /// The completion id is wrong.
    WrongCompletionId = 12,
    /// The segment count or size does not match what is stored.
    WrongSegmentCount = 13,
    /// The chain hash does not match the stored segments.
    ChainMismatch = 14,
    /// A batch with that id exists already.
    BatchExists = 15,
    /// No such batch (or not visible to this key).
    NotFound = 16,
    /// The server failed internally (storage); the transfer may be retried.
    Internal = 17,
    /// A retrieval named no sender, and several senders the requester may see
    /// hold a batch of that id: name one.
    Ambiguous = 18,
    /// The key would hold more bytes than its quota allows (in open transfers, or
    /// in all); retrying does not help until it completes, aborts or deletes.
    QuotaExceeded = 19,
    /// A pull asked for bytes the batch does not hold (its range ends past the
    /// batch's size); not retried.
    BadRange = 20,
}

impl fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseCode::Unknown(number) => write!(f, "code {number}"),
            known => fmt::Debug::fmt(known, f),
        }
    }
}

/// A refusal, with an optional delay after which a retry may succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    /// What went wrong.
    pub code: RefuseCode,
    /// Milliseconds to wait before retrying (0: do not retry).
    pub retry_after_ms: u32,
    /// Text for people (UTF-8, at most [`MAX_REFUSE_MESSAGE`] bytes).
    pub message: String,
}

impl Refuse {
    /// A refusal with `code` and `message`, cut at a character boundary to fit
    /// [`MAX_REFUSE_MESSAGE`] bytes; not to be retried.
    ///
    /// ```
    /// use mft::wire::{Refuse, RefuseCode};
    /// let refuse = Refuse::new(RefuseCode::Busy, "é".repeat(600));
    /// assert_eq!(refuse.message.len(), 1024);
    /// ```
    pub fn new(code: RefuseCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_REFUSE_MESSAGE {
            let mut end = MAX_REFUSE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Refuse {
            code,
            retry_after_ms: 0,
            message,
        }
    }
}

impl Codec for Refuse {
    fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u16(self.code.as_u16()).u32(self.retry_after_ms).bytes16(
            "refuse message",
            self.message.as_bytes(),
            MAX_REFUSE_MESSAGE,
        )?;
        Ok(())
    }

    fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
        let code = RefuseCode::from_u16(r.u16("refuse code")?);
        let retry_after_ms = r.u32("retry after")?;
        let message = r.bytes16("refuse message", MAX_REFUSE_MESSAGE)?;
        let message = String::from_utf8(message.to_vec())
            .map_err(|_| DecodeError::Invalid("refuse message (not UTF-8)"))?;
        Ok(Refuse {
            code,
            retry_after_ms,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_its_own_number_and_round_trips() {
        let numbers: Vec<u16> = RefuseCode::KNOWN.iter().map(|c| c.as_u16()).collect();
        assert_eq!(numbers, (1..=20).collect::<Vec<_>>());
        for &code in RefuseCode::KNOWN {
            assert_eq!(RefuseCode::from_u16(code.as_u16()), code);
        }
    }

    #[test]
    fn a_refusal_that_is_not_utf8_is_refused() {
        // Found by fuzzing: it decoded lossily, so it did not encode back.
        let bytes = [0x7f, 0x00, 0x06, 0, 0, 0, 0, 0x00, 0x01, 0xf9];
        assert!(matches!(
            crate::wire::Message::from_bytes(bytes::Bytes::copy_from_slice(&bytes)),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn an_unknown_code_is_kept_as_sent() {
        assert_eq!(RefuseCode::from_u16(0), RefuseCode::Unknown(0));
        assert_eq!(RefuseCode::from_u16(999), RefuseCode::Unknown(999));
        assert_eq!(RefuseCode::Unknown(999).as_u16(), 999);
        assert_eq!(RefuseCode::Unknown(999).to_string(), "code 999");
        let refuse = Refuse::new(RefuseCode::Unknown(40), "from a newer server");
        let back = Refuse::from_bytes(refuse.to_bytes().unwrap().into()).unwrap();
        assert_eq!(back, refuse);
    }

    #[test]
    fn an_over_long_message_is_refused_by_the_encoder() {
        let mut refuse = Refuse::new(RefuseCode::Busy, "");
        refuse.message = "x".repeat(MAX_REFUSE_MESSAGE + 1);
        assert!(refuse.to_bytes().is_err());
    }
}
