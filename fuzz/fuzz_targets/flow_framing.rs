//! Flow message framing: any byte stream yields whole messages within the size
//! limit, then a clean end or an error; never a panic or an allocation beyond
//! what arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit, so short and long limits are both explored.
    let Some((&limit, stream)) = data.split_first() else {
        return;
    };
    let max = 1usize << (limit % 24);
    let (frames, _end) = flow::fuzzing::read_frames(stream, max);
    let mut consumed = 0;
    for frame in &frames {
        assert!(frame.len() <= max);
        consumed += 4 + frame.len();
    }
    assert!(consumed <= stream.len());
});
