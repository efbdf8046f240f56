//! Compression before sealing (PROTOCOL.md §14). In a transfer that settled on
//! zstd, a segment seals a zstd frame of its plaintext when the frame is shorter
//! than the plaintext, and the plaintext as it is otherwise. Every segment's
//! plaintext length is known from its place (a full chunk, or the rest of the
//! batch for the last), so an opened segment shorter than that is a frame and
//! one of exactly that length is stored: no flag is needed, and none can lie.

use crate::wire::Compression;

/// The zstd level: zstd's own default, a few hundred MB/s per core, which keeps
/// ahead of the WAN links compression is for.
const LEVEL: i32 = 3;

/// A segment that saves less than this fraction (1/32) of its plaintext
/// counts as incompressible for [`Compress::Auto`].
const WORTH_IT: usize = 32;

/// Bytes from a segment's start that [`Compress::Auto`] compresses, after an
/// incompressible segment, to judge whether the whole is worth trying.
const SAMPLE: usize = 4096;

/// Whether a sender compresses its segments
/// ([`ClientConfig::compress`](crate::ClientConfig::compress)). Any of them
/// sends a segment as it is when compressing it would not make it shorter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compress {
    /// Offer zstd, and compress what compresses: every segment is tried until
    /// one does not shrink by 1/32 or more; after that, a segment is tried only
    /// if its first 4 KiB shrink that much, until one does again. Input that
    /// does not compress (media, archives, ciphertext) costs about 1/16 of the
    /// CPU of compressing it, and compressible parts of mixed input are found
    /// at once.
    #[default]
    Auto,
    /// Offer zstd, and try every segment.
    Zstd,
    /// Do not offer compression: every segment is sent as it is.
    Off,
}

/// Compresses a sender's segments, reusing one zstd context.
pub(crate) struct Shrinker {
    context: zstd::bulk::Compressor<'static>,
    mode: Compress,
    /// Whether the last segment tried was worth compressing.
    worth_it: bool,
    /// Segments tried whole so far.
    tried: u64,
    scratch: Vec<u8>,
}

impl Shrinker {
    /// A compressor, if the transfer settled on zstd and `mode` compresses.
    pub(crate) fn new(compression: Compression, mode: Compress) -> Option<Self> {
        if compression != Compression::Zstd || mode == Compress::Off {
            return None;
        }
        Some(Shrinker {
            context: zstd::bulk::Compressor::new(LEVEL).ok()?,
            mode,
            worth_it: true,
            tried: 0,
            scratch: Vec::new(),
        })
    }

    /// Replaces `plaintext` by its zstd frame if that is shorter (and this
    /// segment is tried at all); returns whether it did.
    pub(crate) fn shrink(&mut self, plaintext: &mut bytes::BytesMut) -> bool {
        let len = plaintext.len();
        if len == 0 {
            return false;
        }
        if self.mode == Compress::Auto && !self.worth_it && !self.sample_shrinks(plaintext) {
            return false;
        }
        self.tried += 1;
        // A frame must be shorter than the plaintext to be sent; zstd stops with
        // an error once it would not be.
        self.scratch.clear();
        self.scratch.reserve(len);
        let shrunk = match self
            .context
            .compress_to_buffer(&plaintext[..], &mut self.scratch)
        {
            Ok(n) if n < len => n,
            _ => {
                self.worth_it = false;
                return false;
            }
        };
        self.worth_it = worth_it(len, shrunk);
        plaintext.clear();
        plaintext.extend_from_slice(&self.scratch[..shrunk]);
        true
    }

    /// Whether the start of `plaintext` compresses well enough to try the whole.
    fn sample_shrinks(&mut self, plaintext: &[u8]) -> bool {
        let sample = &plaintext[..plaintext.len().min(SAMPLE)];
        self.scratch.clear();
        self.scratch.reserve(sample.len());
        match self.context.compress_to_buffer(sample, &mut self.scratch) {
            Ok(n) => worth_it(sample.len(), n),
            Err(_) => false,
        }
    }
}

/// Whether `len` bytes compressed to `shrunk` saved enough.
fn worth_it(len: usize, shrunk: usize) -> bool {
    shrunk < len && len - shrunk >= len / WORTH_IT
}

/// The plaintext of an opened segment whose plaintext has `expected` bytes:
/// itself if it has that many, its zstd frame expanded if it is shorter (and the
/// transfer settled on zstd). Never expands past `expected` bytes.
pub(crate) fn expand(
    compression: Compression,
    opened: Vec<u8>,
    expected: usize,
) -> Result<Vec<u8>, String> {
    if opened.len() == expected {
        return Ok(opened);
    }
    if compression != Compression::Zstd || opened.len() > expected {
        return Err(format!(
            "has {} bytes of plaintext where its place holds {expected}",
            opened.len()
        ));
    }
    let expanded = zstd::bulk::decompress(&opened, expected)
        .map_err(|e| format!("is not a zstd frame of its {expected} bytes: {e}"))?;
    if expanded.len() != expected {
        return Err(format!(
            "expands to {} bytes where its place holds {expected}",
            expanded.len()
        ));
    }
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn text(len: usize) -> Vec<u8> {
        b"a line of a log file, much like the one before it\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_shrinks_and_comes_back() {
        let mut shrinker = Shrinker::new(Compression::Zstd, Compress::Zstd).unwrap();
        let original = text(65536);
        let mut segment = BytesMut::from(&original[..]);
        assert!(shrinker.shrink(&mut segment));
        assert!(segment.len() < original.len() / 10, "{}", segment.len());
        let back = expand(Compression::Zstd, segment.to_vec(), original.len()).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn noise_is_sent_as_it_is() {
        let mut shrinker = Shrinker::new(Compression::Zstd, Compress::Zstd).unwrap();
        let original = noise(65536, 3);
        let mut segment = BytesMut::from(&original[..]);
        assert!(!shrinker.shrink(&mut segment));
        assert_eq!(&segment[..], &original[..]);
        let back = expand(Compression::Zstd, segment.to_vec(), original.len()).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn no_compressor_without_zstd() {
        assert!(Shrinker::new(Compression::None, Compress::Zstd).is_none());
        assert!(Shrinker::new(Compression::Zstd, Compress::Off).is_none());
    }

    #[test]
    fn incompressible_input_is_probed_then_tried_again() {
        let mut shrinker = Shrinker::new(Compression::Zstd, Compress::Auto).unwrap();
        for i in 0..40 {
            let mut segment = BytesMut::from(&noise(4096 * 4, i)[..]);
            assert!(!shrinker.shrink(&mut segment));
        }
        // The first whole; the rest judged by a sample and skipped.
        assert_eq!(shrinker.tried, 1, "noise segments tried whole");
        // Text after noise is compressed at once.
        let mut segment = BytesMut::from(&text(4096 * 4)[..]);
        assert!(shrinker.shrink(&mut segment), "text after noise");
        assert_eq!(shrinker.tried, 2);
    }

    #[test]
    fn hostile_frames_are_refused() {
        // A frame that expands past its place.
        let big = zstd::bulk::compress(&text(10_000), 3).unwrap();
        let error = expand(Compression::Zstd, big, 5000).unwrap_err();
        assert!(error.contains("5000"), "{error}");
        // Too short after expanding.
        let small = zstd::bulk::compress(&text(100), 3).unwrap();
        assert!(expand(Compression::Zstd, small, 4000).is_err());
        // Not a frame at all.
        assert!(expand(Compression::Zstd, vec![7; 10], 4000).is_err());
        // A short segment in a transfer without compression.
        let frame = zstd::bulk::compress(&text(4000), 3).unwrap();
        assert!(expand(Compression::None, frame, 4000).is_err());
        // Longer than its place.
        assert!(expand(Compression::Zstd, vec![0; 4001], 4000).is_err());
    }
}
