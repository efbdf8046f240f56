//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a
//! stable API): the parts a peer's bytes reach, callable on plain byte slices.

use bytes::Bytes;

use crate::error::Result;
use crate::flow::MessageBuffer;

/// Reads length-prefixed messages from `stream` as a flow reader with the limit
/// `max` would: the messages, then how the stream ended (`Ok` at a clean end
/// between messages, else the error).
pub fn read_frames(stream: &[u8], max: usize) -> (Vec<Bytes>, Result<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => return (Vec::new(), Err(crate::Error::from_io(e))),
    };
    runtime.block_on(async {
        let mut reader = stream;
        let mut buffer = MessageBuffer::default();
        let mut frames = Vec::new();
        loop {
            match buffer.read_frame(&mut reader, max).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return (frames, Ok(())),
                Err(e) => return (frames, Err(e)),
            }
        }
    })
}
