//! Byte ranges of a batch through the library: only the segments that hold the
//! range are read and sent, every segment is still verified, and a range past
//! the end is refused with its own code.

#[macro_use]
mod common;

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use common::mft_harness::*;
use common::{Transport, bounded, init_tracing};
use mft::store::{MemoryStore, SegmentStore, Store, StoreResult, TransferId};
use mft::wire::RefuseCode;
use mft::{ErrorKind, Pull};
use tokio::io::AsyncReadExt;

on_every_transport!(
    ranges_read_only_the_segments_that_hold_them,
    a_range_past_the_end_is_refused,
    a_tampered_segment_fails_the_range_that_holds_it,
);

const SIZE: usize = 6 * CHUNK as usize + 321;

/// A memory store that records which segments are read, and can corrupt one.
#[derive(Debug, Default)]
struct Watched {
    inner: MemoryStore,
    /// Offsets read, in order.
    reads: Mutex<Vec<u64>>,
    /// The offset of a segment to hand out with one bit flipped.
    corrupt: Mutex<Option<u64>>,
}

impl Watched {
    /// The segment indices read since the last call.
    fn take_reads(&self) -> Vec<u64> {
        let full = u64::from(CHUNK) + 16;
        let reads = std::mem::take(&mut *self.reads.lock().unwrap());
        reads.into_iter().map(|offset| offset / full).collect()
    }
}

#[async_trait::async_trait]
impl SegmentStore for Watched {
    async fn put_segment(
        &self,
        t: TransferId,
        info: mft::store::SegmentInfo,
        offset: u64,
        data: bytes::Bytes,
    ) -> StoreResult<()> {
        self.inner.put_segment(t, info, offset, data).await
    }
    async fn segments(&self, t: TransferId) -> StoreResult<Vec<mft::store::SegmentInfo>> {
        self.inner.segments(t).await
    }
    async fn read_segment(
        &self,
        t: TransferId,
        offset: u64,
        len: u32,
    ) -> StoreResult<bytes::Bytes> {
        self.reads.lock().unwrap().push(offset);
        let data = self.inner.read_segment(t, offset, len).await?;
        if *self.corrupt.lock().unwrap() == Some(offset) {
            let mut bad = data.to_vec();
            bad[0] ^= 1;
            return Ok(bad.into());
        }
        Ok(data)
    }
    async fn delete_segments(&self, t: TransferId) -> StoreResult<()> {
        self.inner.delete_segments(t).await
    }
}

delegate_store!(Watched, inner, without);

#[async_trait::async_trait]
impl Store for Watched {}

async fn pull(h: &Harness, request: Pull) -> mft::Result<(Vec<u8>, mft::BatchInfo)> {
    let (mut reader, info) = bounded("pull", h.retriever().pull(&request)).await?;
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await?;
    Ok((got, info))
}

async fn ranges_read_only_the_segments_that_hold_them(t: Transport) {
    let store = Arc::new(Watched::default());
    let h = Harness::over(t, store.clone()).await;
    let plain = data(7, SIZE);
    bounded(
        "send",
        h.sender()
            .send(Cursor::new(plain.clone()), b"ranged", b"{}"),
    )
    .await
    .unwrap();
    store.take_reads();
    let chunk = u64::from(CHUNK);
    let size = SIZE as u64;
    // (range, the segments that hold it)
    let cases: [(std::ops::Range<u64>, Vec<u64>); 6] = [
        (0..size, (0..7).collect()),
        (0..1, vec![0]),
        (chunk - 1..chunk + 1, vec![0, 1]),
        (2 * chunk..3 * chunk, vec![2]),
        (3 * chunk + 5..5 * chunk + 9, vec![3, 4, 5]),
        (size - 1..size, vec![6]),
    ];
    for (range, segments) in cases {
        let request = Pull::batch(b"ranged")
            .sender(h.client_key())
            .range(range.clone());
        let (got, info) = pull(&h, request).await.unwrap();
        assert_eq!(
            got,
            plain[range.start as usize..range.end as usize],
            "{range:?}"
        );
        assert_eq!(info.range, range);
        assert_eq!(info.size, size, "the info describes the whole batch");
        assert_eq!(store.take_reads(), segments, "segments read for {range:?}");
    }
    // The whole batch names the same content as any range of it.
    let (_, whole) = pull(&h, Pull::batch(b"ranged")).await.unwrap();
    assert_eq!(whole.range, 0..size);
    let (_, part) = pull(&h, Pull::batch(b"ranged").range(5..6)).await.unwrap();
    assert_eq!(whole.chain, part.chain);
}

async fn a_range_past_the_end_is_refused(t: Transport) {
    let h = Harness::new(t, mft::ServerConfig::default()).await;
    bounded(
        "send",
        h.sender().send(Cursor::new(data(8, SIZE)), b"short", b"{}"),
    )
    .await
    .unwrap();
    let size = SIZE as u64;
    for range in [0..size + 1, size..size + 10, u64::MAX - 1..u64::MAX] {
        let err = pull(&h, Pull::batch(b"short").range(range.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            err.refuse_code(),
            Some(RefuseCode::BadRange),
            "{range:?}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::BadArg);
        assert!(err.to_string().contains(&format!("{size} bytes")), "{err}");
    }
    // An empty range is refused before anything is sent.
    #[allow(clippy::reversed_empty_ranges)]
    for range in [5..5, 9..3] {
        let err = pull(&h, Pull::batch(b"short").range(range))
            .await
            .unwrap_err();
        assert!(
            matches!(err, mft::Error::Config { field: "range", .. }),
            "{err}"
        );
    }
    // An empty batch has no byte to ask for.
    bounded(
        "send",
        h.sender().send(Cursor::new(Vec::new()), b"empty", b"{}"),
    )
    .await
    .unwrap();
    let err = pull(&h, Pull::batch(b"empty").range(0..1))
        .await
        .unwrap_err();
    assert_eq!(err.refuse_code(), Some(RefuseCode::BadRange), "{err}");
}

async fn a_tampered_segment_fails_the_range_that_holds_it(t: Transport) {
    let store = Arc::new(Watched::default());
    let h = Harness::over(t, store.clone()).await;
    let plain = data(9, SIZE);
    bounded(
        "send",
        h.sender()
            .send(Cursor::new(plain.clone()), b"spoiled", b"{}"),
    )
    .await
    .unwrap();
    let full = u64::from(CHUNK) + 16;
    *store.corrupt.lock().unwrap() = Some(2 * full);
    let chunk = u64::from(CHUNK);
    // A range that touches segment 2 fails as invalid data.
    let err = pull(&h, Pull::batch(b"spoiled").range(chunk + 10..2 * chunk + 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        err.to_string().contains("segment 2 fails authentication"),
        "{err}"
    );
    // One beside it does not.
    let (got, _) = pull(&h, Pull::batch(b"spoiled").range(3 * chunk..4 * chunk))
        .await
        .unwrap();
    assert_eq!(got, plain[3 * CHUNK as usize..4 * CHUNK as usize]);
}
