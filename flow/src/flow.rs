//! Flows: one bidirectional byte stream over a managed connection, with optional
//! length-prefixed messages on top.
//!
//! Message framing (normative; see `docs/PROTOCOL.md`): a message is a 4-byte
//! big-endian length `n` followed by `n` bytes. A reader refuses a length above its
//! limit before allocating, and grows its buffer only as bytes actually arrive,
//! beyond the largest message the peer has already sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::conn_cache::{FlowGuard, ManagedConn};
use crate::endpoint::Endpoint;
use crate::error::{Error, Reason, Result};
use crate::identity::PeerKey;
use crate::idle::{IdleRead, IdleSend};
use crate::registry::RawFlow;

/// The default largest message [`Flow::read_msg`] accepts: 32 MiB.
pub const DEFAULT_MAX_MSG_SIZE: usize = 32 << 20;

/// How much a reader reserves up front for a message, whatever length the peer
/// announced: a peer has to send bytes to make us hold them.
const INITIAL_MSG_RESERVATION: usize = 64 << 10;

/// Reads one length-prefixed message; `Ok(None)` at a clean end of stream.
#[cfg(test)]
pub(crate) async fn read_frame<R>(reader: &mut R, max: usize) -> Result<Option<Bytes>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    MessageBuffer::default().read_frame(reader, max).await
}

/// Where a reader's messages land: one buffer reused for every message, and the
/// largest message this peer has sent so far.
///
/// Once the message handed out is dropped, the next one reuses the same memory, so
/// a flow of large messages costs no allocation, copy or page fault per message.
/// The first message of a size grows the buffer only as its bytes arrive; later
/// ones up to that size get their whole length up front, since the peer has shown
/// it sends them. (Growing a buffer copies what it holds: doing that for every
/// message was a whole extra copy of each segment.)
#[derive(Default)]
pub(crate) struct MessageBuffer {
    buf: BytesMut,
    largest: usize,
    /// A length prefix already read by [`MessageBuffer::read_len`], whose body
    /// the next [`MessageBuffer::read_frame`] reads.
    announced: Option<usize>,
    /// How often a message outgrew the buffer (tests check it stays put).
    #[cfg(test)]
    grows: usize,
}

impl MessageBuffer {
    /// Reads the next message's length prefix, unless it was read already;
    /// `Ok(None)` at a clean end of stream. A length above `max` is an error.
    pub(crate) async fn read_len<R>(&mut self, reader: &mut R, max: usize) -> Result<Option<usize>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if let Some(len) = self.announced {
            return Ok(Some(len));
        }
        let mut header = [0u8; 4];
        let mut filled = 0;
        while filled < header.len() {
            let n = reader
                .read(&mut header[filled..])
                .await
                .map_err(Error::from_io)?;
            if n == 0 {
                if filled == 0 {
                    return Ok(None);
                }
                return Err(Error::new(Reason::ClosedByPeer(
                    "flow ended inside a message header".into(),
                )));
            }
            filled += n;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > max {
            return Err(Error::new(Reason::MessageTooLarge {
                len: len as u64,
                max: max as u64,
            }));
        }
        self.announced = Some(len);
        Ok(Some(len))
    }

    /// Reads one length-prefixed message; `Ok(None)` at a clean end of stream.
    pub(crate) async fn read_frame<R>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> Result<Option<Bytes>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let Some(len) = self.read_len(reader, max).await? else {
            return Ok(None);
        };
        self.announced = None;
        let buf = &mut self.buf;
        buf.clear();
        // Reclaims the memory of earlier messages once they are dropped.
        buf.reserve(len.min(self.largest.max(INITIAL_MSG_RESERVATION)));
        while buf.len() < len {
            if buf.len() == buf.capacity() {
                #[cfg(test)]
                {
                    self.grows += 1;
                }
                // Double as data arrives, never beyond the announced length.
                buf.reserve((len - buf.len()).min(buf.len().max(INITIAL_MSG_RESERVATION)));
            }
            let want = (len - buf.len()) as u64;
            let n = (&mut *reader)
                .take(want)
                .read_buf(&mut *buf)
                .await
                .map_err(Error::from_io)?;
            if n == 0 {
                return Err(Error::new(Reason::ClosedByPeer(format!(
                    "flow ended after {} of {len} message bytes",
                    buf.len()
                ))));
            }
        }
        self.largest = self.largest.max(len);
        Ok(Some(buf.split().freeze()))
    }
}

/// Writes one message made of `parts`, concatenated, behind its length prefix.
pub(crate) async fn write_frame<W>(writer: &mut W, parts: &[&[u8]]) -> Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let header = frame_header(parts.iter().map(|p| p.len()).sum())?;
    writer.write_all(&header).await.map_err(Error::from_io)?;
    for part in parts {
        writer.write_all(part).await.map_err(Error::from_io)?;
    }
    // A message is a unit: push it through writers that buffer (TLS, BufWriter).
    writer.flush().await.map_err(Error::from_io)
}

/// The length prefix of a message of `len` bytes.
fn frame_header(len: usize) -> Result<[u8; 4]> {
    let len32 = u32::try_from(len).map_err(|_| {
        Error::new(Reason::MessageTooLarge {
            len: len as u64,
            max: u64::from(u32::MAX),
        })
    })?;
    Ok(len32.to_be_bytes())
}

/// A bidirectional stream to a peer over a managed connection.
///
/// Use it as a tokio `AsyncRead + AsyncWrite`, or exchange whole messages with
/// [`write_msg`](Flow::write_msg) / [`read_msg`](Flow::read_msg). Dropping a flow ends
/// it gracefully on the sending side; [`Flow::into_split`] gives halves for two tasks.
///
/// ```no_run
/// # async fn demo(manager: flow::Manager, peer: flow::Endpoint) -> flow::Result<()> {
/// let mut f = manager.dial(&peer, flow::Authorizer::any(), std::time::Duration::from_secs(5)).await?;
/// f.write_msg(&[b"hello ", b"world"]).await?;
/// let reply = f.read_msg().await?;
/// # Ok(()) }
/// ```
pub struct Flow {
    reader: FlowReader,
    writer: FlowWriter,
}

impl Flow {
    pub(crate) fn new(raw: RawFlow, conn: ManagedConn, max_msg_size: usize) -> Self {
        let guard = FlowGuard::new(conn);
        Flow {
            reader: FlowReader {
                recv: IdleRead::new(raw.recv),
                guard: guard.clone(),
                max_msg_size,
                buf: MessageBuffer::default(),
            },
            writer: FlowWriter {
                send: IdleSend::new(raw.send),
                guard,
            },
        }
    }

    /// Sends one message: the concatenation of `parts`, behind a length prefix.
    pub async fn write_msg(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.writer.write_msg(parts).await
    }

    /// Sends one message of `Bytes` parts; see [`FlowWriter::write_msg_bytes`].
    pub async fn write_msg_bytes(&mut self, parts: &mut [Bytes]) -> Result<()> {
        self.writer.write_msg_bytes(parts).await
    }

    /// Sends one message, then ends our sending side.
    pub async fn write_msg_and_close(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.writer.write_msg_and_close(parts).await
    }

    /// Receives one message, or `None` when the peer ended the flow cleanly between
    /// messages. A length above [`Flow::max_msg_size`] is an error.
    pub async fn read_msg(&mut self) -> Result<Option<Bytes>> {
        self.reader.read_msg().await
    }

    /// Sets both halves' idle timeouts: see [`FlowReader::set_idle_timeout`] and
    /// [`FlowWriter::set_idle_timeout`].
    pub fn set_idle_timeout(&mut self, idle: Option<std::time::Duration>) {
        self.reader.set_idle_timeout(idle);
        self.writer.set_idle_timeout(idle);
    }

    /// The largest message [`Flow::read_msg`] accepts.
    pub fn max_msg_size(&self) -> usize {
        self.reader.max_msg_size()
    }

    /// Changes the largest message [`Flow::read_msg`] accepts.
    pub fn set_max_msg_size(&mut self, max: usize) {
        self.reader.set_max_msg_size(max);
    }

    /// Our end of the connection.
    pub fn local_endpoint(&self) -> &Endpoint {
        self.conn().local_endpoint()
    }

    /// The peer's end of the connection.
    pub fn remote_endpoint(&self) -> &Endpoint {
        self.conn().remote_endpoint()
    }

    /// The peer's proven key.
    pub fn remote_identity(&self) -> PeerKey {
        self.conn().remote_identity()
    }

    /// The connection this flow runs on.
    pub fn conn(&self) -> &ManagedConn {
        self.writer.guard.conn()
    }

    /// Resolves when the connection under this flow closes, with why.
    pub async fn closed(&self) -> Error {
        self.conn().closed().await
    }

    /// Splits the flow so one task can read while another writes.
    pub fn into_split(self) -> (FlowReader, FlowWriter) {
        (self.reader, self.writer)
    }
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("local", self.local_endpoint())
            .field("remote", self.remote_endpoint())
            .field("remote_identity", &self.remote_identity())
            .finish()
    }
}

impl AsyncRead for Flow {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Flow {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// The receiving half of a [`Flow`].
pub struct FlowReader {
    recv: IdleRead<Pin<Box<dyn AsyncRead + Send>>>,
    guard: FlowGuard,
    max_msg_size: usize,
    /// Reused for every message.
    buf: MessageBuffer,
}

impl FlowReader {
    /// Receives one message; see [`Flow::read_msg`].
    pub async fn read_msg(&mut self) -> Result<Option<Bytes>> {
        let endpoint = self.guard.conn().remote_endpoint().clone();
        self.buf
            .read_frame(&mut self.recv, self.max_msg_size)
            .await
            .map_err(|e| e.with_endpoint(endpoint))
    }

    /// Waits for the next message's length prefix and returns the length (`None`
    /// at a clean end of the flow) without reading the body: the next
    /// [`FlowReader::read_msg`] returns that message. A server can then reserve
    /// memory for the message, or refuse it, before the peer makes it hold any.
    pub async fn peek_msg_len(&mut self) -> Result<Option<usize>> {
        let endpoint = self.guard.conn().remote_endpoint().clone();
        self.buf
            .read_len(&mut self.recv, self.max_msg_size)
            .await
            .map_err(|e| e.with_endpoint(endpoint))
    }

    /// The largest message [`FlowReader::read_msg`] accepts.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// Changes the largest message [`FlowReader::read_msg`] accepts.
    pub fn set_max_msg_size(&mut self, max: usize) {
        self.max_msg_size = max;
    }

    /// Fails a read that gets no bytes for `idle` with [`Reason::Stalled`] (`None`,
    /// the default, waits for ever). The clock restarts whenever bytes arrive, so
    /// slow but steady peers are never cut off.
    pub fn set_idle_timeout(&mut self, idle: Option<std::time::Duration>) {
        self.recv.set_idle_timeout(idle);
    }

    /// The connection this half runs on.
    pub fn conn(&self) -> &ManagedConn {
        self.guard.conn()
    }
}

impl AsyncRead for FlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

/// The sending half of a [`Flow`].
pub struct FlowWriter {
    send: IdleSend,
    guard: FlowGuard,
}

impl FlowWriter {
    /// Sends one message; see [`Flow::write_msg`].
    pub async fn write_msg(&mut self, parts: &[&[u8]]) -> Result<()> {
        let endpoint = self.guard.conn().remote_endpoint().clone();
        write_frame(&mut self.send, parts)
            .await
            .map_err(|e| e.with_endpoint(endpoint))
    }

    /// Writes `chunks` as bytes of the stream (no message framing), handing them to
    /// protocols that can take whole buffers without copying them.
    pub async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<()> {
        let endpoint = self.guard.conn().remote_endpoint().clone();
        self.send
            .write_chunks(chunks)
            .await
            .map_err(|e| Error::from_io(e).with_endpoint(endpoint))
    }

    /// Sends one message made of `parts`, handing them to protocols that can take
    /// whole buffers (QUIC) without copying them: for large messages, such as
    /// segments, that are already in `Bytes`.
    pub async fn write_msg_bytes(&mut self, parts: &mut [Bytes]) -> Result<()> {
        let endpoint = self.guard.conn().remote_endpoint().clone();
        let header = frame_header(parts.iter().map(Bytes::len).sum())?;
        let io = async {
            self.send.write_all(&header).await?;
            self.send.write_chunks(parts).await?;
            self.send.flush().await
        };
        io.await
            .map_err(|e| Error::from_io(e).with_endpoint(endpoint))
    }

    /// Sends one message, then ends our sending side.
    pub async fn write_msg_and_close(&mut self, parts: &[&[u8]]) -> Result<()> {
        self.write_msg(parts).await?;
        let endpoint = self.guard.conn().remote_endpoint().clone();
        self.send
            .shutdown()
            .await
            .map_err(|e| Error::from_io(e).with_endpoint(endpoint))
    }

    /// Fails a write that the peer takes no bytes of for `idle` with
    /// [`Reason::Stalled`] (`None`, the default, waits for ever): a peer that stops
    /// reading cannot hold our buffers.
    pub fn set_idle_timeout(&mut self, idle: Option<std::time::Duration>) {
        self.send.set_idle_timeout(idle);
    }

    /// The connection this half runs on.
    pub fn conn(&self) -> &ManagedConn {
        self.guard.conn()
    }
}

impl AsyncWrite for FlowWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &[b"ab", b"", b"cde"]).await.unwrap();
            write_frame(&mut a, &[]).await.unwrap();
        });
        assert_eq!(
            read_frame(&mut b, 10).await.unwrap().unwrap(),
            &b"abcde"[..]
        );
        assert_eq!(read_frame(&mut b, 10).await.unwrap().unwrap(), &b""[..]);
        writer.await.unwrap();
        assert!(read_frame(&mut b, 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_reused_buffer_holds_each_message_in_the_same_memory() {
        // A size just past a power of two, as a 1 MiB segment with its header,
        // tag and signature is.
        const LEN: usize = (1 << 20) + 109;
        let mut wire = Vec::new();
        for fill in [1u8, 2, 3, 4, 5] {
            write_frame(&mut wire, &[&vec![fill; LEN]]).await.unwrap();
        }
        let mut r = &wire[..];
        let mut buf = MessageBuffer::default();
        let first = buf.read_frame(&mut r, 2 << 20).await.unwrap().unwrap();
        assert!(first.iter().all(|&b| b == 1));
        let at = first.as_ptr();
        let grown = buf.grows;
        assert!(grown > 0, "the first message grows as it arrives");
        drop(first);
        // Dropped before the next read: the next message lands where it was, and
        // in one piece: growing a buffer copies it.
        for fill in [2u8, 3] {
            let next = buf.read_frame(&mut r, 2 << 20).await.unwrap().unwrap();
            assert!(next.len() == LEN && next.iter().all(|&b| b == fill));
            assert_eq!(next.as_ptr(), at, "the buffer was not reused");
            assert_eq!(buf.grows, grown, "message {fill} grew the buffer");
        }
        // Still held: the next message gets fresh memory and both stay intact.
        let fourth = buf.read_frame(&mut r, 2 << 20).await.unwrap().unwrap();
        let fifth = buf.read_frame(&mut r, 2 << 20).await.unwrap().unwrap();
        assert_ne!(fifth.as_ptr(), fourth.as_ptr());
        assert!(fourth.iter().all(|&b| b == 4) && fifth.iter().all(|&b| b == 5));
    }

    #[tokio::test]
    async fn a_peer_must_send_a_size_before_it_is_reserved_up_front() {
        // Announcing 1 MiB and sending 10 bytes holds 64 KiB, not 1 MiB.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        a.write_all(&[0u8; 10]).await.unwrap();
        let mut buf = MessageBuffer::default();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            buf.read_frame(&mut b, 2 << 20),
        )
        .await;
        assert!(read.is_err(), "the message cannot be complete");
        assert_eq!(buf.buf.capacity(), INITIAL_MSG_RESERVATION);
    }

    #[tokio::test]
    async fn a_peeked_length_is_the_next_message_s() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[b"first"]).await.unwrap();
        write_frame(&mut wire, &[b"second!"]).await.unwrap();
        let mut r = &wire[..];
        let mut buf = MessageBuffer::default();
        assert_eq!(buf.read_len(&mut r, 64).await.unwrap(), Some(5));
        // Peeking again reads nothing more.
        assert_eq!(buf.read_len(&mut r, 64).await.unwrap(), Some(5));
        assert_eq!(
            buf.read_frame(&mut r, 64).await.unwrap().unwrap(),
            &b"first"[..]
        );
        assert_eq!(
            buf.read_frame(&mut r, 64).await.unwrap().unwrap(),
            &b"second!"[..]
        );
        assert_eq!(buf.read_len(&mut r, 64).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b, 1024).await.unwrap_err();
        assert!(matches!(
            err.reason(),
            Reason::MessageTooLarge { len, max: 1024 } if *len == u64::from(u32::MAX)
        ));
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        for bytes in [&[0u8, 0][..], &[0, 0, 0, 5, 1, 2][..]] {
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(bytes).await.unwrap();
            drop(a);
            let err = read_frame(&mut b, 1024).await.unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Aborted, "{bytes:?}");
        }
    }
}
