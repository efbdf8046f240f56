//! The transfer protocol's messages and their explicit binary encoding.
//!
//! Sans-IO: nothing here touches a socket. Each message is one flow message (see the
//! flow layer's framing): a 1-byte type, then fixed-order fields, written and read
//! by one [`Codec`] (big-endian integers; byte strings with a u16 or u32 length and
//! an upper bound that both encoder and decoder enforce; trailing bytes an error).
//! Signed messages are [`Signed`], which fixes each one's signature context.
//! `docs/PROTOCOL.md` §8 is the normative description and names the types as here.

pub(crate) mod codec;
mod manage;
mod pull;
mod push;
mod refuse;
mod signed;
#[cfg(test)]
mod tests;
pub(crate) mod values;

pub use codec::{Codec, DecodeError, EncodeError, Reader, Writer};
pub use manage::{
    Abort, Aborted, Confirm, Delete, Deleted, ListOpen, MAX_OPEN_ENTRIES, OpenEntry, OpenTransfers,
    Pause, PauseNoted,
};
pub use pull::{
    ByteRange, List, Listing, ListingEntry, PULL_SEGMENT_HEADER_LEN, Position, PullHello,
    PullSegment,
};
pub use push::{
    Accept, Complete, Hello, Receipt, Resume, SEGMENT_HEADER_LEN, Segment, SegmentAck, Stored,
};
pub use refuse::{Refuse, RefuseCode};
pub use signed::Signed;
pub use values::{
    BadBatchId, BatchId, ChainHash, Compression, DataKey, Signature, Tag, TransferId,
};

/// The protocol version this code speaks; others are refused, never downgraded.
/// Version 2 added the new-transfer flag to the push secret; version 3 put batches
/// in their senders' namespaces, so a pull hello and a list name the sender;
/// version 4 added replacing and deleting batches, the declared content digest of
/// a completion and its receipt, and confirming a re-send; version 5 added byte
/// ranges to the pull hello and the `BadRange` refusal; version 6 added zstd
/// compression, offered in the hello's flags and settled in the secrets, and
/// the sender's pause notice (`docs/PROTOCOL.md`).
pub const VERSION: u8 = 6;

/// Longest batch id, in bytes.
pub const MAX_BATCH_ID: usize = 256;
/// Longest voucher (application token), in bytes.
pub const MAX_VOUCHER: usize = 8 << 10;
/// Smallest chunk size a peer may propose.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size the protocol allows.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest segment ciphertext on the wire (a full chunk plus its tag).
pub const MAX_SEGMENT_WIRE: usize = MAX_CHUNK_SIZE as usize + TAG_LEN;
/// Largest metadata the protocol allows (servers set lower limits).
pub const MAX_METADATA: usize = 1 << 20;
/// Longest refusal message, in bytes.
pub const MAX_REFUSE_MESSAGE: usize = 1024;
/// Most entries in one [`Listing`].
pub const MAX_LISTING_ENTRIES: usize = 1024;
/// Most runs in a [`Stored`] message.
pub const MAX_STORED_RUNS: usize = 1 << 16;
/// Longest sealed handshake secret (a pull's carries the sealed metadata).
pub const MAX_SEALED_SECRET: usize = MAX_METADATA + 1024;

/// Message type bytes.
mod ty {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const ACCEPT: u8 = 0x02;
    pub(super) const SEGMENT: u8 = 0x10;
    pub(super) const SEGMENT_ACK: u8 = 0x11;
    pub(super) const COMPLETE: u8 = 0x20;
    pub(super) const RECEIPT: u8 = 0x21;
    pub(super) const CONFIRM: u8 = 0x22;
    pub(super) const RESUME: u8 = 0x30;
    pub(super) const STORED: u8 = 0x31;
    pub(super) const PULL_HELLO: u8 = 0x40;
    pub(super) const PULL_ACCEPT: u8 = 0x41;
    pub(super) const PULL_SEGMENT: u8 = 0x42;
    pub(super) const LIST: u8 = 0x50;
    pub(super) const LISTING: u8 = 0x51;
    pub(super) const LIST_OPEN: u8 = 0x60;
    pub(super) const OPEN_TRANSFERS: u8 = 0x61;
    pub(super) const ABORT: u8 = 0x62;
    pub(super) const ABORTED: u8 = 0x63;
    pub(super) const DELETE: u8 = 0x64;
    pub(super) const DELETED: u8 = 0x65;
    pub(super) const PAUSE: u8 = 0x66;
    pub(super) const PAUSE_NOTED: u8 = 0x67;
    pub(super) const REFUSE: u8 = 0x7f;
}

/// A message kind: a marker type that names one [`Message`] variant, so code that
/// waits for a reply says which one by type, and gets its body back, not a
/// `Message` to match again.
pub trait Kind: Copy {
    /// The body the variant carries.
    type Body;
    /// The variant's name, for errors and logs.
    const NAME: &'static str;
    /// The body, if `message` is this variant; else the message back.
    fn take(message: Message) -> Result<Self::Body, Box<Message>>;
}

/// Defines [`Message`], its kinds and its codec from one table: variant, body
/// type and type byte.
macro_rules! messages {
    ($($(#[doc = $doc:literal])* $variant:ident($body:ident) = $ty:ident,)*) => {
        /// Every message of the protocol.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $($(#[doc = $doc])* $variant($body),)*
        }

        /// One marker type per [`Message`] variant (see [`Kind`]).
        pub mod kind {
            $(
                #[doc = concat!("The [`Message::", stringify!($variant), "`](super::Message::", stringify!($variant), ") kind.")]
                #[derive(Clone, Copy, Debug, PartialEq, Eq)]
                pub struct $variant;

                impl super::Kind for $variant {
                    type Body = super::$body;
                    const NAME: &'static str = stringify!($variant);
                    fn take(
                        message: super::Message,
                    ) -> Result<super::$body, Box<super::Message>> {
                        match message {
                            super::Message::$variant(body) => Ok(body),
                            other => Err(Box::new(other)),
                        }
                    }
                }
            )*
        }

        impl Message {
            /// The message's name, for errors and logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Message::$variant(_) => stringify!($variant),)*
                }
            }

            /// Its type byte on the wire.
            pub fn type_byte(&self) -> u8 {
                match self {
                    $(Message::$variant(_) => ty::$ty,)*
                }
            }
        }

        impl Codec for Message {
            fn write_to(&self, w: &mut Writer) -> Result<(), EncodeError> {
                w.u8(self.type_byte());
                match self {
                    $(Message::$variant(body) => body.write_to(w),)*
                }
            }

            fn read_from(r: &mut Reader) -> Result<Self, DecodeError> {
                Ok(match r.u8("message type")? {
                    $(ty::$ty => Message::$variant(<$body>::read_from(r)?),)*
                    other => return Err(DecodeError::UnknownType(other)),
                })
            }
        }
    };
}

messages! {
    /// See [`Hello`].
    Hello(Hello) = HELLO,
    /// See [`Accept`] (answering a [`Hello`]).
    Accept(Accept) = ACCEPT,
    /// See [`Segment`].
    Segment(Segment) = SEGMENT,
    /// See [`SegmentAck`].
    SegmentAck(SegmentAck) = SEGMENT_ACK,
    /// See [`Complete`].
    Complete(Complete) = COMPLETE,
    /// See [`Receipt`].
    Receipt(Receipt) = RECEIPT,
    /// See [`Confirm`].
    Confirm(Confirm) = CONFIRM,
    /// See [`Resume`].
    Resume(Resume) = RESUME,
    /// See [`Stored`].
    Stored(Stored) = STORED,
    /// See [`PullHello`].
    PullHello(PullHello) = PULL_HELLO,
    /// See [`Accept`] (answering a [`PullHello`]).
    PullAccept(Accept) = PULL_ACCEPT,
    /// See [`PullSegment`].
    PullSegment(PullSegment) = PULL_SEGMENT,
    /// See [`List`].
    List(List) = LIST,
    /// See [`Listing`].
    Listing(Listing) = LISTING,
    /// See [`ListOpen`].
    ListOpen(ListOpen) = LIST_OPEN,
    /// See [`OpenTransfers`].
    OpenTransfers(OpenTransfers) = OPEN_TRANSFERS,
    /// See [`Abort`].
    Abort(Abort) = ABORT,
    /// See [`Aborted`].
    Aborted(Aborted) = ABORTED,
    /// See [`Delete`].
    Delete(Delete) = DELETE,
    /// See [`Deleted`].
    Deleted(Deleted) = DELETED,
    /// See [`Pause`].
    Pause(Pause) = PAUSE,
    /// See [`PauseNoted`].
    PauseNoted(PauseNoted) = PAUSE_NOTED,
    /// See [`Refuse`].
    Refuse(Refuse) = REFUSE,
}

/// The type byte of an accept answering a push (`false`) or a pull (`true`).
pub fn accept_type(pull: bool) -> u8 {
    if pull { ty::PULL_ACCEPT } else { ty::ACCEPT }
}
