//! Idle deadlines on a flow's halves: a read or write that makes no progress for
//! the flow's idle timeout fails with [`Reason::Stalled`], so a peer that stops
//! sending or stops reading cannot pin a task, its buffers and its slot forever.
//!
//! The clock starts when an operation first has to wait and restarts whenever it
//! moves bytes, so a slow but steady peer is never cut off, whatever the size of
//! its messages. Whole-buffer writes ([`FlowSend::write_chunks`]) are handed on
//! in zero-copy slices of at most [`PROGRESS_STEP`] bytes, each with its own
//! deadline, for the same reason.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::{Error, Reason};
use crate::registry::FlowSend;

/// The most bytes of a whole-buffer write that must go out within one idle
/// timeout: at the default of a minute, a peer must take at least 4 KiB/s.
const PROGRESS_STEP: usize = 256 << 10;

/// The running deadline of one half.
///
/// Cheap on the hot path: progress only clears `waiting_since`, and the one
/// timer is armed when a wait starts and re-armed only when it fires early (the
/// wait it was armed for ended meanwhile), not once per wait.
#[derive(Default)]
struct Deadline {
    idle: Option<Duration>,
    /// When the current wait began; `None` while the operation is making progress.
    waiting_since: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn set(&mut self, idle: Option<Duration>) {
        self.idle = idle;
        self.waiting_since = None;
        self.sleep = None;
    }

    /// The operation moved bytes (or finished): the clock restarts.
    fn progressed(&mut self) {
        self.waiting_since = None;
    }

    /// The operation has to wait: an error once it has waited the idle timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(idle) = self.idle else {
            return Poll::Pending;
        };
        let due = *self.waiting_since.get_or_insert_with(Instant::now) + idle;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                self.waiting_since = None;
                self.sleep = None;
                return Poll::Ready(Error::new(Reason::Stalled(idle)).into_io());
            }
            // Armed for an earlier wait that has ended: wait for this one's due time.
            sleep.as_mut().reset(due);
        }
    }

    /// `inner`'s result, or the deadline's error if it waits too long.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        inner: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match inner {
            Poll::Ready(result) => {
                self.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }
}

/// A flow's receiving stream under an idle deadline.
pub(crate) struct IdleRead<R> {
    inner: R,
    deadline: Deadline,
}

impl<R> IdleRead<R> {
    pub(crate) fn new(inner: R) -> Self {
        IdleRead {
            inner,
            deadline: Deadline::default(),
        }
    }

    pub(crate) fn set_idle_timeout(&mut self, idle: Option<Duration>) {
        self.deadline.set(idle);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.deadline.watch(cx, polled)
    }
}

/// A flow's sending stream under an idle deadline.
pub(crate) struct IdleSend {
    inner: Pin<Box<dyn FlowSend>>,
    deadline: Deadline,
}

impl IdleSend {
    pub(crate) fn new(inner: Pin<Box<dyn FlowSend>>) -> Self {
        IdleSend {
            inner,
            deadline: Deadline::default(),
        }
    }

    pub(crate) fn set_idle_timeout(&mut self, idle: Option<Duration>) {
        self.deadline.set(idle);
    }

    /// Writes every chunk whole and in order, each step of at most
    /// [`PROGRESS_STEP`] bytes within the idle timeout.
    pub(crate) async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> io::Result<()> {
        if self.deadline.idle.is_none() {
            return self.inner.as_mut().write_chunks(chunks).await;
        }
        for chunk in chunks.iter_mut() {
            let mut rest = std::mem::take(chunk);
            while !rest.is_empty() {
                let mut step = [rest.split_to(rest.len().min(PROGRESS_STEP))];
                // A step done is progress; one that waits too long is stalled, as
                // for every other write, under the same deadline.
                let (inner, deadline) = (&mut self.inner, &mut self.deadline);
                let mut write = inner.as_mut().write_chunks(&mut step);
                std::future::poll_fn(|cx| {
                    let polled = write.as_mut().poll(cx);
                    deadline.watch(cx, polled)
                })
                .await?;
            }
        }
        Ok(())
    }
}

impl AsyncWrite for IdleSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_write(cx, buf);
        this.deadline.watch(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_flush(cx);
        this.deadline.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = this.inner.as_mut().poll_shutdown(cx);
        this.deadline.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_silent_peer_stalls_a_read_and_a_steady_one_never_does() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut read = IdleRead::new(ours);
        read.set_idle_timeout(Some(IDLE));
        // A byte every 100 ms: slow, but never idle for 300 ms, though the whole
        // read takes longer than that.
        let steady = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(IDLE / 3).await;
                peer.write_all(b"x").await.unwrap();
            }
            peer
        });
        let mut got = [0u8; 5];
        read.read_exact(&mut got).await.unwrap();
        let _peer = steady.await.unwrap();
        let err = read.read_u8().await.unwrap_err();
        let err = Error::from_io(err);
        assert_eq!(err.reason(), &Reason::Stalled(IDLE));
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_stalls_a_write() {
        let (_peer, ours) = tokio::io::duplex(1024);
        let mut send = IdleSend::new(crate::registry::RawFlow::new(tokio::io::empty(), ours).send);
        send.set_idle_timeout(Some(IDLE));
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let err = send.write_chunks(&mut [big]).await.unwrap_err();
        assert!(matches!(Error::from_io(err).reason(), Reason::Stalled(_)));
        let err = send.write_all(&[0u8; 4096]).await.unwrap_err();
        assert!(matches!(Error::from_io(err).reason(), Reason::Stalled(_)));
    }
}
