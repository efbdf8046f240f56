//! A batch's layout: how its plaintext is cut into segments, where each segment
//! sits in storage, and the chain hash that binds them in order. The server checks
//! a completion against it and the retriever checks every segment it reads against
//! it, so both sides agree on one definition of a well-formed batch.

use crate::crypto::Chain;
use crate::store::SegmentInfo;
use crate::wire::{ByteRange, ChainHash, Compression, TAG_LEN, TransferId};

/// The segment layout of one transfer: every segment but the last holds one full
/// chunk of plaintext; the last holds the rest. Without compression a segment is
/// its plaintext sealed (chunk size plus the tag, and at least the tag for the
/// last); with zstd a segment may be shorter, down to one byte and its tag, and
/// the server, which cannot open it, checks no more than that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchLayout {
    chunk_size: u32,
    compression: Compression,
}

/// Why segments do not make a well-formed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LayoutError {
    /// A segment is larger than a sealed chunk.
    TooLarge {
        /// Its index.
        index: u64,
        /// Its ciphertext length.
        len: usize,
        /// A sealed chunk's length.
        max: u64,
    },
    /// A segment is shorter than its tag, or a segment before the last is not a
    /// full chunk.
    WrongLength {
        /// Its index.
        index: u64,
        /// Its ciphertext length.
        len: usize,
    },
    /// The segments held are not the ones claimed.
    Mismatch {
        /// Segments claimed.
        claimed_count: u64,
        /// Plaintext bytes claimed.
        claimed_size: u64,
        /// Segments held.
        held: u64,
        /// Of those, how many run contiguously from index 0.
        contiguous: u64,
        /// Plaintext bytes held.
        size: u64,
    },
}

impl LayoutError {
    /// Text for the peer or the log.
    pub(crate) fn message(&self) -> String {
        match self {
            LayoutError::TooLarge { index, len, max } => {
                format!("segment {index} of {len} bytes exceeds the negotiated {max}")
            }
            LayoutError::WrongLength { index, len } => {
                format!("segment {index} has {len} bytes, which is not its place in the batch")
            }
            LayoutError::Mismatch {
                claimed_count,
                claimed_size,
                held,
                contiguous,
                size,
            } => format!(
                "completion claims {claimed_count} segments and {claimed_size} bytes; the server holds {held} segments ({contiguous} contiguous from 0) and {size} bytes"
            ),
        }
    }
}

/// The segments a byte range lies in: see [`BatchLayout::covering`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Covering {
    /// Their indices.
    pub(crate) segments: std::ops::Range<u64>,
    /// Plaintext bytes of the first segment before the range starts.
    pub(crate) skip: u64,
}

/// What stored segments add up to, once they check out against a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Segments.
    pub(crate) count: u64,
    /// Plaintext bytes.
    pub(crate) size: u64,
    /// The chain hash over them in order.
    pub(crate) chain: ChainHash,
}

impl BatchLayout {
    /// The layout of a transfer with `chunk_size` plaintext bytes per segment,
    /// sealed after `compression`.
    pub(crate) fn new(chunk_size: u32, compression: Compression) -> Self {
        BatchLayout {
            chunk_size,
            compression,
        }
    }

    /// Plaintext bytes of segment `index` of a batch of `count` segments and
    /// `size` bytes: a chunk, or the rest for the last.
    pub(crate) fn plaintext_len(&self, index: u64, count: u64, size: u64) -> u64 {
        let chunk = u64::from(self.chunk_size);
        if index + 1 == count {
            size.saturating_sub(index.saturating_mul(chunk))
        } else {
            chunk
        }
    }

    /// Plaintext bytes of every segment but the last.
    pub(crate) fn chunk_size(&self) -> u64 {
        u64::from(self.chunk_size)
    }

    /// Ciphertext bytes of a full segment: a chunk and its tag.
    pub(crate) fn segment_wire(&self) -> u64 {
        u64::from(self.chunk_size) + TAG_LEN as u64
    }

    /// Where segment `index` sits in the transfer's stored data: segments never
    /// overlap, and storing them in any order leaves each in its place.
    pub(crate) fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.segment_wire())
    }

    /// Whether a segment of `len` ciphertext bytes may be stored at all: not larger
    /// than a sealed chunk, not shorter than its tag. (Whether it is the right
    /// length for its place is known only at completion.)
    pub(crate) fn admit(&self, index: u64, len: usize) -> Result<(), LayoutError> {
        if len as u64 > self.segment_wire() {
            return Err(LayoutError::TooLarge {
                index,
                len,
                max: self.segment_wire(),
            });
        }
        if len < TAG_LEN {
            return Err(LayoutError::WrongLength { index, len });
        }
        Ok(())
    }

    /// Whether segment `index` of `len` bytes fits its place in a batch of `count`
    /// segments: a full chunk, or for the last one anything from its tag up; with
    /// compression, anything from one byte and its tag up to a full chunk.
    pub(crate) fn check_place(
        &self,
        index: u64,
        len: usize,
        count: u64,
    ) -> Result<(), LayoutError> {
        self.admit(index, len)?;
        let last = index + 1 == count;
        let fits = match self.compression {
            Compression::None => last || len as u64 == self.segment_wire(),
            Compression::Zstd => last || len > TAG_LEN,
        };
        if !fits {
            return Err(LayoutError::WrongLength { index, len });
        }
        Ok(())
    }

    /// Whether `count` segments holding `held` bytes of sealed plaintext (their
    /// ciphertext less the tags, with the last, of `last` such bytes) can make a
    /// batch of `size` plaintext bytes: exactly, without compression; with it,
    /// when `size` fills every segment but the last, and the last holds no more
    /// than its share.
    fn adds_up(&self, count: u64, held: u64, last: u64, size: u64) -> bool {
        match self.compression {
            Compression::None => held == size,
            Compression::Zstd => {
                let chunk = u64::from(self.chunk_size);
                if count == 0 {
                    return size == 0;
                }
                let before_last = (count - 1).saturating_mul(chunk);
                size > before_last
                    && size <= count.saturating_mul(chunk)
                    && last <= size - before_last
            }
        }
    }

    /// The segments that hold `range` of a batch of `size` plaintext bytes, as a
    /// range of indices, and how many bytes of the first of them come before the
    /// range; `None` if the range ends past the batch. Every segment but the last
    /// holds a full chunk, so this needs no more than the chunk size.
    pub(crate) fn covering(&self, range: ByteRange, size: u64) -> Option<Covering> {
        if range.end > size || self.chunk_size == 0 {
            return None;
        }
        let chunk = u64::from(self.chunk_size);
        let first = range.start / chunk;
        Some(Covering {
            segments: first..(range.end - 1) / chunk + 1,
            skip: range.start - first * chunk,
        })
    }

    /// Checks stored `segments` (sorted by index) against a completion's claim of
    /// `claimed_count` segments and `claimed_size` bytes: they must run from 0
    /// without a gap, every one but the last a full chunk, and add up to the claim.
    /// Returns their tally, with the chain hash of `transfer_id` and `batch_id`
    /// over them, for the caller to compare with the claimed one.
    pub(crate) fn tally(
        &self,
        transfer_id: &TransferId,
        batch_id: &[u8],
        segments: &[SegmentInfo],
        claimed_count: u64,
        claimed_size: u64,
    ) -> Result<Tally, LayoutError> {
        let held = segments.len() as u64;
        let size: u64 = segments
            .iter()
            .map(|s| u64::from(s.len).saturating_sub(TAG_LEN as u64))
            .sum();
        let contiguous = segments
            .iter()
            .enumerate()
            .take_while(|(i, s)| s.index == *i as u64)
            .count() as u64;
        let last = segments
            .last()
            .map_or(0, |s| u64::from(s.len).saturating_sub(TAG_LEN as u64));
        if held != claimed_count
            || !self.adds_up(held, size, last, claimed_size)
            || contiguous != held
        {
            return Err(LayoutError::Mismatch {
                claimed_count,
                claimed_size,
                held,
                contiguous,
                size,
            });
        }
        let mut chain = Chain::new(transfer_id, batch_id);
        for s in segments {
            self.check_place(s.index, s.len as usize, held)?;
            chain.push(s.len, &s.tag);
        }
        Ok(Tally {
            count: held,
            size: claimed_size,
            chain: chain.value(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 4096;
    const FULL: u32 = CHUNK + TAG_LEN as u32;

    fn segment(index: u64, len: u32) -> SegmentInfo {
        SegmentInfo {
            index,
            len,
            tag: crate::wire::Tag([index as u8; 16]),
        }
    }

    fn layout() -> BatchLayout {
        BatchLayout::new(CHUNK, Compression::None)
    }

    fn range(start: u64, end: u64) -> ByteRange {
        ByteRange::new(start, end).expect("a range that is not empty")
    }

    #[test]
    fn a_range_is_covered_by_the_segments_it_touches() {
        let chunk = u64::from(CHUNK);
        let size = 3 * chunk + 10;
        let cover = |start, end| layout().covering(range(start, end), size);
        assert_eq!(
            cover(0, size).map(|c| (c.segments, c.skip)),
            Some((0..4, 0))
        );
        assert_eq!(cover(0, 1).map(|c| (c.segments, c.skip)), Some((0..1, 0)));
        // The last byte of a chunk, and the first of the next.
        assert_eq!(
            cover(chunk - 1, chunk + 1).map(|c| (c.segments, c.skip)),
            Some((0..2, chunk - 1))
        );
        assert_eq!(
            cover(chunk, 2 * chunk).map(|c| (c.segments, c.skip)),
            Some((1..2, 0))
        );
        assert_eq!(
            cover(size - 1, size).map(|c| (c.segments, c.skip)),
            Some((3..4, 10 - 1))
        );
        assert_eq!(cover(0, size + 1), None);
        assert_eq!(cover(size, size + 1), None);
    }

    #[test]
    fn segments_sit_one_sealed_chunk_apart() {
        assert_eq!(layout().segment_wire(), u64::from(FULL));
        assert_eq!(layout().offset(3), 3 * u64::from(FULL));
        assert_eq!(
            layout().offset(u64::MAX),
            u64::MAX,
            "saturates, never wraps"
        );
    }

    #[test]
    fn a_segment_is_admitted_from_its_tag_to_a_full_chunk() {
        assert_eq!(layout().admit(0, TAG_LEN), Ok(()));
        assert_eq!(layout().admit(0, FULL as usize), Ok(()));
        assert!(matches!(
            layout().admit(0, FULL as usize + 1),
            Err(LayoutError::TooLarge { .. })
        ));
        assert!(matches!(
            layout().admit(0, TAG_LEN - 1),
            Err(LayoutError::WrongLength { .. })
        ));
    }

    #[test]
    fn only_the_last_segment_may_be_short() {
        assert_eq!(layout().check_place(0, FULL as usize, 2), Ok(()));
        assert_eq!(layout().check_place(1, 100, 2), Ok(()));
        assert_eq!(
            layout().check_place(0, 100, 2),
            Err(LayoutError::WrongLength { index: 0, len: 100 })
        );
    }

    #[test]
    fn compressed_segments_may_be_short_anywhere_but_not_empty() {
        let zstd = BatchLayout::new(CHUNK, Compression::Zstd);
        assert!(
            zstd.check_place(0, TAG_LEN + 1, 3).is_ok(),
            "a short middle"
        );
        assert!(
            zstd.check_place(0, FULL as usize, 3).is_ok(),
            "stored as is"
        );
        assert!(
            zstd.check_place(0, TAG_LEN, 3).is_err(),
            "nothing but a tag"
        );
        assert!(
            zstd.check_place(0, FULL as usize + 1, 3).is_err(),
            "too long"
        );
        assert!(
            layout().check_place(0, TAG_LEN + 1, 3).is_err(),
            "not without zstd"
        );
        assert_eq!(
            zstd.plaintext_len(1, 3, 2 * u64::from(CHUNK) + 5),
            u64::from(CHUNK)
        );
        assert_eq!(zstd.plaintext_len(2, 3, 2 * u64::from(CHUNK) + 5), 5);
    }

    #[test]
    fn a_compressed_tally_bounds_the_claimed_size() {
        let zstd = BatchLayout::new(CHUNK, Compression::Zstd);
        let held = [segment(0, 100), segment(1, 200), segment(2, 20)];
        let chunk = u64::from(CHUNK);
        let tally = |size| zstd.tally(&TransferId([1; 16]), b"z", &held, 3, size);
        // The last holds 4 bytes sealed: its share must be at least that.
        assert_eq!(tally(2 * chunk + 4).map(|t| t.size), Ok(2 * chunk + 4));
        assert_eq!(tally(3 * chunk).map(|t| t.size), Ok(3 * chunk));
        assert!(
            tally(2 * chunk + 3).is_err(),
            "the last holds more than its share"
        );
        assert!(tally(2 * chunk).is_err(), "the last would hold nothing");
        assert!(tally(3 * chunk + 1).is_err(), "more than three chunks");
        assert!(
            layout()
                .tally(&TransferId([1; 16]), b"z", &held, 3, 2 * chunk + 4)
                .is_err()
        );
    }

    #[test]
    fn a_tally_matches_the_claim_or_says_what_is_held() {
        let held = [segment(0, FULL), segment(1, FULL), segment(2, 116)];
        let size = 2 * u64::from(CHUNK) + 100;
        let tally = layout()
            .tally(&TransferId([1; 16]), b"b", &held, 3, size)
            .unwrap();
        assert_eq!((tally.count, tally.size), (3, size));
        let mut chain = Chain::new(&TransferId([1; 16]), b"b");
        for s in &held {
            chain.push(s.len, &s.tag);
        }
        assert_eq!(tally.chain, chain.value());
        // Another batch id or transfer makes another chain.
        let other = layout()
            .tally(&TransferId([1; 16]), b"c", &held, 3, size)
            .unwrap();
        assert_ne!(other.chain, tally.chain);

        assert_eq!(
            layout().tally(&TransferId([1; 16]), b"b", &held, 4, size),
            Err(LayoutError::Mismatch {
                claimed_count: 4,
                claimed_size: size,
                held: 3,
                contiguous: 3,
                size
            })
        );
        assert!(
            layout()
                .tally(&TransferId([1; 16]), b"b", &held, 3, size + 1)
                .is_err()
        );
    }

    #[test]
    fn a_gap_or_a_short_middle_segment_is_no_batch() {
        let gap = [segment(0, FULL), segment(2, FULL)];
        match layout().tally(&TransferId([1; 16]), b"b", &gap, 2, 2 * u64::from(CHUNK)) {
            Err(LayoutError::Mismatch { contiguous: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let short = [segment(0, 116), segment(1, FULL)];
        assert_eq!(
            layout().tally(
                &TransferId([1; 16]),
                b"b",
                &short,
                2,
                u64::from(CHUNK) + 100
            ),
            Err(LayoutError::WrongLength { index: 0, len: 116 })
        );
    }
}
