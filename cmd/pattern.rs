//! The data `demo` and `bench` send: a fixed block of varied bytes, copied out as
//! fast as memory allows, so generating the input costs about what reading a cached
//! file does and never dominates what is measured, and any byte can be checked
//! without holding the batch in memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Length of the repeated pattern: a prime, so segments (powers of two) do not
/// line up with it and misplaced data would show.
const PERIOD: usize = 1_048_573;

/// `len` bytes of the pattern, from its start.
pub fn pattern_block(len: usize) -> Vec<u8> {
    period().iter().copied().cycle().take(len).collect()
}

/// The pattern's byte at `offset`.
pub fn byte_at(offset: u64) -> u8 {
    period()[(offset % PERIOD as u64) as usize]
}

/// One period of the pattern, made once per process.
fn period() -> &'static [u8] {
    static PERIOD_BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PERIOD_BYTES.get_or_init(|| {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..PERIOD)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

/// An `AsyncRead` of `len` bytes of the pattern.
pub struct PatternReader {
    period: &'static [u8],
    offset: u64,
    len: u64,
}

impl PatternReader {
    /// A reader of `len` bytes.
    pub fn new(len: u64) -> Self {
        PatternReader {
            period: period(),
            offset: 0,
            len,
        }
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 && this.offset < this.len {
            let at = (this.offset % PERIOD as u64) as usize;
            let n = (PERIOD - at)
                .min(buf.remaining())
                .min((this.len - this.offset) as usize);
            buf.put_slice(&this.period[at..at + n]);
            this.offset += n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_reader_yields_the_block_exactly() {
        let len = PERIOD + 12_345;
        let mut out = Vec::new();
        PatternReader::new(len as u64)
            .read_to_end(&mut out)
            .await
            .expect("reads");
        assert_eq!(out, pattern_block(len));
        assert!(out.iter().enumerate().all(|(i, &b)| b == byte_at(i as u64)));
        // The pattern repeats only after a full period.
        assert_eq!(out[..100], out[PERIOD..PERIOD + 100]);
        assert_ne!(out[..100], out[1 << 20..(1 << 20) + 100]);
    }
}
