//! Making a flow fail when its connection closes, for protocols whose flows are not
//! closed by the transport itself (in-memory pipes, HTTP bodies, a stream per flow).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::Error;

/// Wraps one half of a flow so that every operation fails, with the error `why`
/// gives, once `closed` is cancelled — and wakes a pending read or write when that
/// happens. Closing a connection thereby fails its open flows on this side, as QUIC
/// does by itself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use tokio::io::AsyncReadExt;
/// use tokio_util::sync::CancellationToken;
/// use flow::{AbortOnClose, Error, Reason};
///
/// let closed = CancellationToken::new();
/// let (pipe, _other_end) = tokio::io::duplex(64);
/// let why = Arc::new(|| Error::new(Reason::ClosedLocally("closed".into())));
/// let mut half = AbortOnClose::new(pipe, &closed, why);
/// closed.cancel();
/// let err = half.read(&mut [0u8; 8]).await.unwrap_err();
/// assert_eq!(Error::from_io(err).kind(), flow::ErrorKind::Aborted);
/// # }
/// ```
pub struct AbortOnClose<T> {
    inner: T,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    why: Arc<dyn Fn() -> Error + Send + Sync>,
}

impl<T> AbortOnClose<T> {
    /// Wraps `inner`; after `closed` is cancelled, operations fail with `why()`.
    pub fn new(
        inner: T,
        closed: &CancellationToken,
        why: Arc<dyn Fn() -> Error + Send + Sync>,
    ) -> Self {
        AbortOnClose {
            inner,
            closed: Box::pin(closed.clone().cancelled_owned()),
            why,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err((self.why)().into_io()),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T> std::fmt::Debug for AbortOnClose<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AbortOnClose")
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AbortOnClose<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AbortOnClose<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
